// gradchain/mlp.h — the MLP chain: configuration, its parameters laid out in the
// chain's flat store (chain_base.h), a workspace planned once per batch size, and
// forward/backward drivers that call the layer pairs (the product, then the norm
// layer's fused pass, norm.h).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "gradchain/chain_base.h"
#include "gradchain/kernels.h"
#include "gradchain/norm.h"
#include "gradchain/report.h"

namespace gradchain {

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

template <class T>
class MlpLinearization;  // jacobian.h: the chain linearised at given inputs

template <class T>
class MlpChain : public ChainBase<T> {
  friend class MlpLinearization<T>;  // reads the layout, config and norm views

 public:
  // Throws std::invalid_argument on a bad config (a size past the BLAS's 32-bit range
  // included) and AllocError when the flat buffers cannot be allocated.
  explicit MlpChain(MlpConfig cfg);

  const MlpConfig& config() const { return cfg_; }
  int64_t num_hidden() const { return L_; }

  bool training = true;
  // The health report's saturation threshold: a hidden unit is saturated when |act'| is
  // below it for every example of the batch (set by the Python model from the activation's
  // table row: 1e-3 of act's largest |act'|; NaN: not defined, the fraction is NaN).
  double health_threshold = 0.0;
  // Whether a backward with report = true also computes the health statistics and the
  // non-finite stages (on; the benchmark's A/B switch measures their cost).
  bool forensics = true;

  // x (B, in) -> y (B, out). Keeps what backward needs. Running statistics are
  // updated only once the whole pass has succeeded. Both passes poll the calling
  // thread's cancel flag (cancel.h) and throw Cancelled once it is set.
  void forward(const T* x, int64_t B, T* y);
  // gy (B, out) = dL/dy -> fills (or, with accumulate, adds to) every parameter
  // gradient; writes dL/dx (B, in) to dx when it is not null.
  // report = false: gradients only; the report's own passes (sums of squares of every
  // dL/da_l and dW_l) are skipped and its norms are left 0 (the benchmark's baseline).
  // per_example: also example i's share of each layer's gradient (MlpReport::example_layer;
  // std::invalid_argument with batch norm in training mode, whose examples are coupled).
  MlpReport backward(const T* gy, T* dx, bool accumulate, bool report = true,
                     bool per_example = false);

  int64_t forward_batch() const { return fwd_B_; }
  // Bytes a pass over a batch of B rows would allocate now, beyond what the chain holds
  // (its workspace is replanned when B changes: the old one is released first), with
  // the current thread setting. 0 when the workspace for B is in place.
  int64_t pass_bytes(int64_t B) const;
  // Forward passes completed (running statistics committed) since construction.
  int64_t forward_count() const { return forwards_; }

 private:
  using Base = ChainBase<T>;
  GRADCHAIN_CHAIN_BASE_NAMES(Base);

  struct Layer {  // offsets of one linear layer's tensors (+ its norm's) in the flat store
    int64_t in, out;
    int64_t w, b, gamma, beta;  // into params_/grads_ (-1 when absent)
    int64_t rmean, rvar;        // into buffers_ (-1 when absent)
  };
  void plan(int64_t B);
  int64_t workspace_values(int64_t B) const;  // T values in ws_ for batch B
  bool workspace_huge(int64_t B) const;       // past 2^60 bytes (int64 sizes could overflow)
  int64_t held_workspace_bytes() const;
  std::string describe() const;  // "an MLP with sizes [...] (float32)", for messages
  RowPass<T> row_pass() const;   // the row blocks of the planned batch and their scratch
  void layer_forward(int64_t l, bool skip_act);
  void layer_forward_custom_tail(int64_t l);
  void output_forward(T* y);
  void layer_backward(int64_t l, bool accumulate, T*& g, T*& g_other, MlpReport& rep);
  // The most threads a pass over a batch of B can feed (parallel.h's mlp_work_threads).
  int work_cap(int64_t B) const;
  // Forensics: the stage of layer l (0-based; L the output layer) whose inputs were finite
  // and whose output was not (recomputed after the pass, in DZ_ and G0_/G1_), and the
  // health statistics and per-example norms of a backward into its report.
  NonfiniteStage diagnose_forward(int64_t l);
  void fill_forensics(MlpReport& rep, bool health, bool per_example);

  MlpConfig cfg_;
  int64_t L_;
  std::vector<Layer> layers_;
  std::vector<NormLayerView<T>> norms_;        // hidden layer l's norm (workspace: plan(B))
  std::vector<double> bmean_, bvar_;           // batch statistics per layer (running-stats norms)

  // workspace (plan(B))
  int64_t B_ = 0;
  int64_t forwards_ = 0;
  bool report_ = true;  // the current backward computes the report (set per call)
  int64_t fwd_B_ = 0;
  int64_t maxw_ = 0;
  double layer_macs_ = 0.0;                    // multiply-adds per sample, mean over the layers
  int64_t nrb_ = 0;                           // number of row blocks of B
  Buffer<T> ws_;                               // activations, derivatives, xhat, gradients
  std::vector<T*> A_, D_;                      // A_[0] = x, A_[l+1] = a_{l+1}; D_[l] = act'
  T* G0_ = nullptr;
  T* G1_ = nullptr;
  T* DZ_ = nullptr;
  T* scratch_ = nullptr;                       // 3 x maxw: the norms' per-feature coefficients
  Buffer<double> part_;                        // column partial sums: 3 x nrb x maxw
  std::vector<double> blk_;                    // per-block scalars (norm partials)
  std::vector<double> fchk_;                   // (L+1) x blocks: forward non-finite checks
  std::vector<double> colsum_[2];              // the norms' column totals (maxw each)
  std::vector<double> chunk_ss_;
  int fwd_nonfinite_ = -1;
  NonfiniteStage fwd_stage_ = NonfiniteStage::None;
  // forensics (plan(B)): HD_ (in ws_) L x nrb x maxw column maxima of |act'|; hcnt_
  // (L+1) x nrb x 3 (zeros, subnormals of dL/da_l; dz check of hidden layer l-1); fabs_
  // L x nrb sums |a_{l+1}| of the forward; pe_ 4 x (L+1) x B per-example sums of squares
  // (dz rows, a rows, layer-norm gamma and beta terms)
  T* HD_ = nullptr;
  std::vector<double> hcnt_, fabs_, pe_;
  bool per_example_ = false;  // the current backward computes per-example norms
};

}  // namespace gradchain
