// gradchain/chain_base.h — what every chain is built on: 64-byte aligned buffers, the
// named views of one flat parameter / gradient / buffer store (the parameter layout),
// workspace carving, and ChainBase, which holds them with the lock, the custom
// activation and the per-pass state (cancel flag, panel-GEMM packing scratch) that the
// MLP and the RNN drivers share.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "gradchain/cancel.h"
#include "gradchain/memory.h"

namespace gradchain {

// A named view into one of the flat buffers.
struct TensorInfo {
  std::string name;
  int64_t offset;              // in elements, into params/grads (kind 0) or buffers (kind 1)
  std::vector<int64_t> shape;
  int kind;                    // 0 = parameter (has a gradient), 1 = buffer (running statistics)
};

// f, d = act(x), act'(x) for `rows x cols` contiguous values; may throw.
template <class T>
using CustomActFn = std::function<void(const T* x, T* f, T* d, int64_t rows, int64_t cols)>;

// Owned, 64-byte aligned, uninitialised storage. A failed allocation throws
// AllocError naming `what` and the bytes asked for.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n, const char* what = "a buffer");
  T* data() const { return ptr_.get(); }
  int64_t size() const { return n_; }

 private:
  struct Free { void operator()(void* p) const; };
  std::unique_ptr<T, Free> ptr_;
  int64_t n_ = 0;
};

// Hands out consecutive views of one workspace buffer, in the order asked (the layout of a
// chain's workspace is the order of its take() calls).
template <class T>
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(T* base) : p_(base) {}
  T* take(int64_t n) {
    T* q = p_;
    p_ += n;
    return q;
  }

 private:
  T* p_;
};

// The panel GEMM's per-thread packing scratch for one pass: `slot` values for each thread
// of the region (indexed by omp_get_thread_num()); a null base when no product of the pass
// takes the panel path.
template <class T>
struct PackScratch {
  T* base = nullptr;
  int64_t slot = 0;
};

// The protected names of ChainBase in a driver that derives from it (a class template's
// base is dependent: its names need a using-declaration). Base: the driver's alias of it.
#define GRADCHAIN_CHAIN_BASE_NAMES(Base)                                                  \
  using Base::buffers_;                                                                   \
  using Base::custom_;                                                                    \
  using Base::grads_;                                                                     \
  using Base::has_forward_;                                                               \
  using Base::mu_;                                                                        \
  using Base::pack_;                                                                      \
  using Base::pack_base_;                                                                 \
  using Base::pack_slot_;                                                                 \
  using Base::packs;                                                                      \
  using Base::params_;                                                                    \
  using Base::stop_;                                                                      \
  using Base::stopping

// The shared part of a chain: the flat parameter, gradient and buffer store with its named
// views (built by add_tensor, allocated by allocate_tensors), the lock every pass holds, the
// custom activation's callback, whether a forward pass is saved, and the state of the pass
// in progress. The drivers (MlpChain, RnnChain) derive from it.
template <class T>
class ChainBase {
 public:
  static constexpr int64_t kMaxTensorValues = int64_t(1) << 40;

  ChainBase(const ChainBase&) = delete;
  ChainBase& operator=(const ChainBase&) = delete;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  T* buffers() { return buffers_.data(); }
  int64_t num_params() const { return params_.size(); }
  int64_t num_buffers() const { return buffers_.size(); }
  // Per-tensor views of the gradients (parameters only, in tensors() order).
  std::vector<std::pair<T*, int64_t>> grad_spans();

  bool has_forward() const { return has_forward_; }
  // Forget the saved forward pass (parameters were replaced).
  void invalidate() { has_forward_ = false; }
  std::mutex& mutex() { return mu_; }
  // The slow path for Act::Custom: called with a layer's (or step's) pre-activations, it
  // writes act and act'. Runs with the chain's mutex held, outside OpenMP regions.
  void set_custom_activation(CustomActFn<T> fn) { custom_ = std::move(fn); }

 protected:
  // describe: "an MLP with sizes [...] (float32)", for messages. bounded: a tensor of more
  // than kMaxTensorValues values throws AllocError (false: the caller bounds the shapes).
  ChainBase(std::function<std::string()> describe, bool bounded)
      : describe_(std::move(describe)), bounded_(bounded) {}
  ~ChainBase() = default;

  // The parameter layout: appends the tensor `name` of `shape` to the parameters (kind 0)
  // or the buffers (kind 1) and returns its offset there.
  int64_t add_tensor(std::string name, std::vector<int64_t> shape, int kind = 0);
  // Allocates the parameters and gradients (zeroed) and the buffers (uninitialised) for the
  // tensors added; on failure AllocError names "<what> <describe()>" and the bytes.
  void allocate_tensors(const std::string& what);

  PackScratch<T> packs() const { return {pack_base_, pack_slot_}; }
  bool stopping() const { return is_set(stop_); }

  std::vector<TensorInfo> tensors_;
  Buffer<T> params_, grads_, buffers_;
  std::mutex mu_;
  CustomActFn<T> custom_;
  bool has_forward_ = false;
  Buffer<T> pack_;              // the panel GEMM's packed op(B): one slot per thread
  int64_t pack_slot_ = 0;       // values per slot (planned); 0: OpenBLAS for every product
  T* pack_base_ = nullptr;      // set at the start of each pass, for its thread count
  const std::atomic<bool>* stop_ = nullptr;  // the pass's cancel flag (set at its start)

 private:
  std::function<std::string()> describe_;
  bool bounded_;
  int64_t np_ = 0, nb_ = 0;     // values laid out so far: parameters, buffers
};

}  // namespace gradchain
