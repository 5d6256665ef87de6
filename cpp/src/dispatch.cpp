// dispatch.cpp — CPU detection, the GRADCHAIN_ISA override and the thread setting.
#include "gradchain/dispatch.h"

#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gradchain/governor.h"

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

int processors() {
#ifdef _OPENMP
  const int p = omp_get_num_procs();  // the CPUs this process may run on (affinity mask)
  return p > 0 ? p : 1;
#else
  return 1;
#endif
}

// OMP_NUM_THREADS (through omp_get_max_threads), or all processors when it asks for more
// than max_threads() (the Python layer warns).
int initial_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();  // below 1 when a huge value overflowed its int
  if (n >= 1 && n <= max_threads()) return n;
  return processors() < max_threads() ? processors() : max_threads();
#else
  return 1;
#endif
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

// fork: libgomp's thread pool does not survive it. The child inherits a pool that
// believes its threads exist, so its first region with more than one thread waits for
// ever at the first barrier. A region with num_threads(1) does not use the pool (measured
// with gcc 12's libgomp: a forked child runs such regions normally), so a child forked
// after the core had started threads runs every region on one thread.
std::atomic<bool> g_pool_started{false};  // a region with more than one thread has run
std::atomic<bool> g_forked{false};        // this process was forked after that

void after_fork_child() {
  if (g_pool_started.load(std::memory_order_relaxed)) g_forked.store(true);
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  return pthread_atfork(nullptr, nullptr, after_fork_child) == 0;
}();

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

int get_num_threads() {
  return g_forked.load(std::memory_order_relaxed) ? 1 : thread_setting().load();
}

void note_region_threads(int nt) {
  if (nt > 1 && !g_pool_started.load(std::memory_order_relaxed)) g_pool_started.store(true);
}

bool forked_single_threaded() { return g_forked.load(); }

int max_threads() {
  static const int n = [] {
    const int p = processors();
    return p > kMinThreadCap / kThreadsPerProcessor ? kThreadsPerProcessor * p : kMinThreadCap;
  }();
  return n;
}

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
#ifndef GC_PANEL_F64
#define GC_PANEL_F64 1
#endif
bool panel_gemm_f64() {
  return GC_PANEL_F64 && panel_gemm() && active_isa().load(std::memory_order_relaxed) == kAvx512;
}
void set_panel_gemm(bool on) { panel_setting().store(on); }

void set_num_threads(int n) {
  if (n < 1 || n > max_threads())
    throw std::invalid_argument("number of threads must be in [1, " +
                                std::to_string(max_threads()) + "], got " + std::to_string(n));
  const int old = thread_setting().exchange(n);
  governor_setting_changed(old, n);  // a busy machine stays busy when the count changes
}

}  // namespace gradchain
