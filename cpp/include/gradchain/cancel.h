// gradchain/cancel.h — stopping a pass early from outside (Ctrl-C), without Python.
//
// A caller gives the passes it runs a flag to poll (a CancelScope around the call); anything
// may set the flag, including a signal handler (a lock-free atomic store). A pass started
// with a flag polls it at its layer / timestep / GEMM-block boundaries: once it is set, every
// thread of the pass's OpenMP regions skips its remaining blocks and leaves the region at
// the next common point, and the pass throws Cancelled. A cancelled forward leaves no saved
// forward pass and commits no running statistics (as any failed forward); a cancelled
// backward keeps the forward pass but leaves the gradients partly written.
#pragma once

#include <atomic>
#include <stdexcept>

namespace gradchain {

class Cancelled : public std::runtime_error {
 public:
  Cancelled() : std::runtime_error("the pass was cancelled") {}
};

// The flag the passes started on this thread poll (null: they run to the end).
const std::atomic<bool>* cancel_flag();

// Makes `flag` this thread's cancel flag for the scope's lifetime (scopes nest).
class CancelScope {
 public:
  explicit CancelScope(const std::atomic<bool>* flag);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  const std::atomic<bool>* prev_;
};

inline bool is_set(const std::atomic<bool>* flag) {
  return flag && flag->load(std::memory_order_relaxed);
}

}  // namespace gradchain
