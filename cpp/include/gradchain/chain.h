// gradchain/chain.h — the MLP chain: configuration, one flat parameter buffer and
// one flat gradient buffer with named per-tensor views, a workspace planned once
// per batch size, and forward/backward drivers that call the layer pairs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gradchain/cancel.h"
#include "gradchain/kernels.h"
#include "gradchain/memory.h"
#include "gradchain/report.h"

namespace gradchain {

enum class NormKind : int { None = 0, Batch = 1, Layer = 2 };

struct MlpConfig {
  std::vector<int64_t> sizes;        // [in, h_1, ..., h_L, out]
  ActParams act;
  NormKind norm = NormKind::None;
  bool bias = true;
  std::vector<uint8_t> residual;     // L flags (validated: only on equal-width layers)
  double residual_scale = 1.0;
  double eps = 1e-5;
  double momentum = 0.1;
};

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

template <class T>
class MlpChain {
 public:
  // Throws std::invalid_argument on a bad config (a size past the BLAS's 32-bit range
  // included) and AllocError when the flat buffers cannot be allocated.
  explicit MlpChain(MlpConfig cfg);

  const MlpConfig& config() const { return cfg_; }
  int64_t num_hidden() const { return L_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  T* buffers() { return buffers_.data(); }
  int64_t num_params() const { return params_.size(); }
  int64_t num_buffers() const { return buffers_.size(); }

  bool training = true;

  void set_custom_activation(CustomActFn<T> fn) { custom_ = std::move(fn); }

  // x (B, in) -> y (B, out). Keeps what backward needs. Running statistics are
  // updated only once the whole pass has succeeded. Both passes poll the calling
  // thread's cancel flag (cancel.h) and throw Cancelled once it is set.
  void forward(const T* x, int64_t B, T* y);
  // gy (B, out) = dL/dy -> fills (or, with accumulate, adds to) every parameter
  // gradient; writes dL/dx (B, in) to dx when it is not null.
  // report = false: gradients only; the report's own passes (sums of squares of every
  // dL/da_l and dW_l) are skipped and its norms are left 0 (the benchmark's baseline).
  MlpReport backward(const T* gy, T* dx, bool accumulate, bool report = true);

  bool has_forward() const { return has_forward_; }
  int64_t forward_batch() const { return fwd_B_; }
  // Bytes a pass over a batch of B rows would allocate now, beyond what the chain holds
  // (its workspace is replanned when B changes: the old one is released first), with
  // the current thread setting. 0 when the workspace for B is in place.
  int64_t pass_bytes(int64_t B) const;
  // Forward passes completed (running statistics committed) since construction.
  int64_t forward_count() const { return forwards_; }
  // Forget the saved forward pass (parameters were replaced).
  void invalidate() { has_forward_ = false; }
  std::mutex& mutex() { return mu_; }

  // Per-tensor views of the gradients (parameters only, in tensors() order).
  std::vector<std::pair<T*, int64_t>> grad_spans();

 private:
  struct Layer {  // views into params_/grads_ for one linear layer (+ its norm)
    int64_t in, out;
    int64_t w, b, gamma, beta;  // offsets (-1 when absent)
    int64_t rmean, rvar;        // offsets into buffers_ (-1 when absent)
  };
  void plan(int64_t B);
  int64_t workspace_values(int64_t B) const;  // T values in ws_ for batch B
  bool workspace_huge(int64_t B) const;       // past 2^60 bytes (int64 sizes could overflow)
  int64_t held_workspace_bytes() const;
  std::string describe() const;  // "an MLP with sizes [...] (float32)", for messages
  void layer_forward(int64_t l, bool skip_act);
  void layer_forward_custom_tail(int64_t l);
  void output_forward(T* y);
  void layer_backward(int64_t l, bool accumulate, T*& g, T*& g_other, MlpReport& rep);

  MlpConfig cfg_;
  int64_t L_;
  std::vector<Layer> layers_;
  std::vector<TensorInfo> tensors_;
  Buffer<T> params_, grads_, buffers_;
  CustomActFn<T> custom_;
  std::mutex mu_;

  // workspace (plan(B))
  int64_t B_ = 0;
  bool has_forward_ = false;
  int64_t forwards_ = 0;
  bool report_ = true;  // the current backward computes the report (set per call)
  int64_t fwd_B_ = 0;
  int64_t maxw_ = 0;
  int64_t nrb_ = 0;                           // number of row blocks of B
  Buffer<T> ws_;                               // activations, derivatives, xhat, gradients
  std::vector<T*> A_, D_, XH_;                 // A_[0] = x, A_[l+1] = a_{l+1}
  std::vector<T*> shift_, istd_, rowmean_, rowistd_;
  std::vector<double> bmean_, bvar_;           // batch statistics per BN layer (for the commit)
  T* G0_ = nullptr;
  T* G1_ = nullptr;
  T* DZ_ = nullptr;
  T* scratch_ = nullptr;                       // 3 x maxw: batch-norm backward coefficients
  Buffer<double> part_;                        // column partial sums: 3 x nrb x maxw
  std::vector<double> blk_;                    // per-block scalars (norm partials)
  std::vector<double> fchk_;                   // (L+1) x blocks: forward non-finite checks
  std::vector<double> colsum_[2];  // batch-norm backward: sum dn, sum dn * xhat
  std::vector<double> chunk_ss_;
  int fwd_nonfinite_ = -1;
  Buffer<T> pack_;              // the panel GEMM's packed op(B): one slot per thread
  int64_t pack_slot_ = 0;       // values per slot (plan(B)); 0: OpenBLAS for every product
  T* pack_base_ = nullptr;      // set at the start of each pass, for its thread count
  const std::atomic<bool>* stop_ = nullptr;  // the pass's cancel flag (set at its start)
  bool stopping() const { return is_set(stop_); }
};

}  // namespace gradchain
