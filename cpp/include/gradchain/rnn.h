// gradchain/rnn.h — the vanilla RNN chain (torch.nn.RNN, one layer) with an
// optional linear readout, run in the oneDNN shape:
//   forward:  one GEMM for the input projection of all T steps, then a time loop
//             doing only the recurrent GEMM and one fused elementwise pass;
//   backward: the recurrent chain (one fused pass + one GEMM per step, which also
//             yields ||dL/dh_t||), then merged GEMMs over all T*B rows for
//             dW_ih, dW_hh and dL/dx.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "gradchain/kernels.h"
#include "gradchain/recurrent.h"
#include "gradchain/report.h"

namespace gradchain {

struct RnnConfig {
  int64_t input_size = 1;
  int64_t hidden_size = 1;
  int64_t output_size = 0;  // 0: no readout
  ActParams act;
  bool bias = true;
};

// The per-step norms, the per-tensor norms and the first non-finite steps are
// RecurrentReport's (recurrent.h).
struct RnnReport : RecurrentReport {
  // health (report on), per step t = 1..T: the units of h_t, the entries of dL/dh_t, mean |h_t|
  std::vector<double> dead, saturated, zeros, subnormals, mean_abs;
  NonfiniteStage forward_stage = NonfiniteStage::None;   // at forward_first_nonfinite
  NonfiniteStage backward_stage = NonfiniteStage::None;  // at first_nonfinite (forward finite)
};

template <class T>
class RnnChain : public RecurrentChain<T> {
 public:
  // Throws std::invalid_argument on a bad config and AllocError when the flat buffers
  // cannot be allocated.
  explicit RnnChain(RnnConfig cfg);

  const RnnConfig& config() const { return cfg_; }
  // As MlpChain's: the saturation threshold of the health report (NaN: not defined) and
  // the switch of the health statistics and non-finite stages.
  double health_threshold = 0.0;
  bool forensics = true;

  // x (T, B, I), h0 (B, H) or null -> hs (T, B, H) and, with a readout, ys (T, B, K).
  // Both passes poll the calling thread's cancel flag (cancel.h) and throw Cancelled once
  // it is set.
  void forward(const T* x, const T* h0, int64_t steps, int64_t B, T* hs, T* ys);
  // grad_hs (T, B, H) and/or grad_ys (T, B, K) (null = zeros) -> parameter gradients
  // (assigned, or added with accumulate), dx (T, B, I) and dh0 (B, H) when not null.
  // report = false: gradients only (the report's sums of squares are skipped, norms left 0).
  // per_example (needs report): also each example's share of every tensor's gradient and
  // of every dL/dh_t (RnnReport::example_tensor, example_step; per_example_rnn.h).
  RnnReport backward(const T* grad_hs, const T* grad_ys, T* dx, T* dh0, bool accumulate,
                     bool report = true, bool per_example = false);
  // per_example's tensor norms (false: only the steps' ||dL/dh_{t,i}||^2, the batched probe)
  bool example_tensors = true;

  // The saved forward pass over (T, B) becomes that of (T, n*B) with the batch repeated n
  // times (copy c on rows c*B..(c+1)*B): n backward passes in one (the batched probe),
  // without running the forward n times (per_example_rnn.cpp). The workspace is replanned.
  void replicate_batch(int64_t n);

  // Bytes a pass over (steps, B) would allocate now beyond what the chain holds (the
  // workspace is replanned when the shape changes, the old one released first).
  int64_t pass_bytes(int64_t steps, int64_t B) const;
  // Act::Custom (set_custom_activation): the callback is called once per step with
  // z_t (B, H).

 private:
  using Base = RecurrentChain<T>;
  GRADCHAIN_RECURRENT_NAMES(Base);

  void plan(int64_t steps, int64_t B);
  int64_t workspace_values(int64_t steps, int64_t B) const;  // T values in ws_
  int64_t part_values(int64_t steps, int64_t B) const;       // doubles in part_
  int64_t blk_values(int64_t steps, int64_t B) const;        // doubles in blk_
  void custom_steps();
  NonfiniteStage diagnose_forward(int64_t t);  // t = 1..T (T+1: the readout)
  // The report's per-step entries of steps t0 < t <= t1 (inside the backward's region,
  // each step's from its own row blocks: the same bits for any thread count): the norm
  // ||dL/dh_t|| and, with health, the step's health fractions.
  void step_entries(RnnReport& rep, int64_t t0, int64_t t1, bool health) const;
  // After the region: where a backward NaN/Inf was born.
  void backward_origin(RnnReport& rep) const;

  RnnConfig cfg_;

  // workspace (plan(T, B), beside RecurrentChain's X_, HS_ and part_)
  T* D_ = nullptr;     // (T, B, H): act'(z_t)
  T* G_ = nullptr;     // (T+1, B, H): dL/dh_t (total), slot 0 = dL/dh_0
  T* DZ_ = nullptr;    // (T, B, H): dL/dz_t
  T* bias_ = nullptr;  // (H): b_ih + b_hh
  T* WT_ = nullptr;    // the recurrent weight of the time loop: W_hh^T (forward) or W_hh
                       // (backward), packed in panels (or plain H x H above the panel
                       // path), refreshed by every pass
  std::vector<double> blk_;  // per (step, row block): sums of squares / non-finite checks
  NonfiniteStage fwd_stage_ = NonfiniteStage::None;
  // forensics (plan): hbits_ T x nrb x 2 x ceil(H / 64) words, the units' bits (live:
  // max |act'| > 0, unsaturated: >= the threshold, StepHealth) per step and row block;
  // hcnt_ T x nrb x 2 (zeros and subnormals of dL/dh_t); fabs_ T x nrb sums |h_t|
  std::vector<uint64_t> hbits_;
  std::vector<double> hcnt_, fabs_;
  int64_t hwords_ = 0;  // ceil(H / 64)
};

}  // namespace gradchain
