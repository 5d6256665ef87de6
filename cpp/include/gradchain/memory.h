// gradchain/memory.h — what an allocation failure inside the core says, and the
// 32-bit range of the BLAS's integers.
//
// Every allocation the core makes (flat parameter / gradient buffers, the planned
// workspaces) is announced first: the Python layer asks the chain how many bytes
// the next call will allocate (MlpChain::pass_bytes, RnnChain::pass_bytes) and
// checks that against the process's real memory limit before calling in. Should an
// allocation still fail, the chain throws AllocError naming what it was allocating
// and how many bytes: a std::bad_alloc (pybind11 turns it into MemoryError with this
// text), never the bare "std::bad_alloc".
#pragma once

#include <cstdint>
#include <cstdio>
#include <new>
#include <string>
#include <utility>

namespace gradchain {

class AllocError : public std::bad_alloc {
 public:
  explicit AllocError(std::string msg) : msg_(std::move(msg)) {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

// scipy-openblas32 takes 32-bit integers: every GEMM dimension and leading dimension
// the core passes must fit (checked when a chain is built and when a pass is planned,
// so the GEMM calls themselves never see a larger value).
constexpr int64_t kBlasIntMax = 2147483647;  // 2^31 - 1

// "1.5 GiB" style, for messages.
inline std::string human_bytes(double b) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024.0 && u < 6) {
    b /= 1024.0;
    ++u;
  }
  if (u == 0) return std::to_string(int64_t(b)) + " bytes";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

// The message of an allocation failure: "gradchain: cannot allocate <what>: N bytes (1.5 GiB)".
inline std::string alloc_message(const std::string& what, double bytes) {
  return "gradchain: cannot allocate " + what + ": " +
         std::to_string(static_cast<unsigned long long>(bytes)) + " bytes (" +
         human_bytes(bytes) + ")";
}

}  // namespace gradchain
