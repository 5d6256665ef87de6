// dispatch.cpp — CPU detection, the GRADCHAIN_ISA override and the thread setting.
#include "gradchain/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gradchain {

#define GC_DECLARE_ISA(ns)                          \
  namespace ns {                                    \
  const KernelTable<float>* kernels_f32();          \
  const KernelTable<double>* kernels_f64();         \
  }
GC_DECLARE_ISA(scalar)
#ifdef GRADCHAIN_HAVE_X86_ISAS
GC_DECLARE_ISA(avx2)
GC_DECLARE_ISA(avx512)
#endif
#undef GC_DECLARE_ISA

namespace {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"scalar", "avx2", "avx512"};

bool cpu_supports(int isa) {
  if (isa == kScalar) return true;
#ifdef GRADCHAIN_HAVE_X86_ISAS
  __builtin_cpu_init();
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return false;
}

int best_isa() {
  for (int i = kAvx512; i > kScalar; --i)
    if (cpu_supports(i)) return i;
  return kScalar;
}

int parse_isa(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kIsaNames[i]) {
      if (!cpu_supports(i))
        throw std::invalid_argument("ISA '" + name +
                                    "' is not supported by this CPU or build; available: " +
                                    [] {
                                      std::string s;
                                      for (auto& n : available_isas()) s += (s.empty() ? "" : ", ") + n;
                                      return s;
                                    }());
      return i;
    }
  throw std::invalid_argument("unknown ISA '" + name + "'; expected one of scalar, avx2, avx512");
}

int initial_isa() {
  const char* env = std::getenv("GRADCHAIN_ISA");
  if (env && *env) {
    try {
      return parse_isa(env);
    } catch (const std::invalid_argument&) {
      // An unusable override falls back to the best ISA; the Python layer warns.
    }
  }
  return best_isa();
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{initial_isa()};
  return isa;
}

int initial_threads() {
#ifdef _OPENMP
  int n = omp_get_max_threads();
  return n > 0 ? n : 1;
#else
  return 1;
#endif
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (int i = kAvx512; i >= kScalar; --i)
    if (cpu_supports(i)) out.emplace_back(kIsaNames[i]);
  return out;
}

std::string current_isa() { return kIsaNames[active_isa().load()]; }

void set_isa(const std::string& name) { active_isa().store(parse_isa(name)); }

template <>
const KernelTable<float>& kernels<float>() {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef GRADCHAIN_HAVE_X86_ISAS
    case kAvx512: return *avx512::kernels_f32();
    case kAvx2: return *avx2::kernels_f32();
#endif
    default: return *scalar::kernels_f32();
  }
}

template <>
const KernelTable<double>& kernels<double>() {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef GRADCHAIN_HAVE_X86_ISAS
    case kAvx512: return *avx512::kernels_f64();
    case kAvx2: return *avx2::kernels_f64();
#endif
    default: return *scalar::kernels_f64();
  }
}

int get_num_threads() { return thread_setting().load(); }

int64_t gemm_blocks() {
  static const int64_t n = [] {
#ifdef _OPENMP
    const int64_t p = omp_get_num_procs();
#else
    const int64_t p = 2;
#endif
    return p < 2 ? int64_t(2) : (p > 16 ? int64_t(16) : p);
  }();
  return n;
}

namespace {
std::atomic<bool>& panel_setting() {
  static std::atomic<bool> on{true};
  return on;
}
}  // namespace

bool panel_gemm() { return panel_setting().load(std::memory_order_relaxed); }
void set_panel_gemm(bool on) { panel_setting().store(on); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("number of threads must be >= 1");
  thread_setting().store(n);
}

}  // namespace gradchain
