// gradchain/recurrent.h — what the recurrent chains share: RecurrentChain<T>, the base of
// RnnChain (rnn.h) and GatedChain (gated.h), and RecurrentReport, the base of their reports.
//
// Both run in the oneDNN shape: one GEMM for the input projection of all T steps, a time
// loop per fixed block of batch rows (the recurrent product with W_hh packed once per pass,
// then the cell's fused pass), a readout over all T*B rows; backward the readout's
// gradients, the recurrent chain t = T..1 per row block, then merged GEMMs over all T*B
// rows for dW_ih, dW_hh and dL/dx. The base holds the parameter layout (torch's names, G
// gate blocks stacked: G = 1 for the RNN), the workspace's shared part and its planning
// steps, the readout (forward and backward), the merged weight-gradient GEMMs, the forward
// non-finite scan and the report's global norm; the drivers keep their time loops (the
// cell's kernels) and their own buffers.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gradchain/blas.h"
#include "gradchain/chain_base.h"
#include "gradchain/kernels.h"
#include "gradchain/report.h"

namespace gradchain {

// The report entries every recurrent chain has.
struct RecurrentReport {
  std::vector<double> timestep;  // T: ||dL/dh_t||, total derivative, t = 1..T
  double weight_ih = 0, weight_hh = 0, bias_ih = 0, bias_hh = 0;
  double readout_weight = 0, readout_bias = 0;
  double h0 = 0;                     // ||dL/dh_0||
  double global_norm = 0;
  int first_nonfinite = -1;          // first t scanning T..1 with NaN/Inf in dL/dh_t
  int forward_first_nonfinite = -1;  // first t in 1..T with NaN/Inf in h_t (T+1: readout only)
  // per_example (per_example_rnn.h): kExTensors x B squared norms of example i's share of
  // each tensor's gradient, and steps x B squared norms ||dL/dh_{t,i}||^2
  std::vector<double> example_tensor, example_step;
};

namespace recurrent {
// Rows per block of the time loops (a function of B only, never of the thread count).
inline int64_t step_rows(int64_t B) { return B <= 16 ? 8 : 16; }
// The per-step products run on the panel kernel with W_hh (GH x H, GH = G*H) packed once
// per pass while the packed matrix stays cache-sized (512 x 512 values); above, OpenBLAS.
inline bool panel_steps(int64_t GH, int64_t H) { return GH * H <= 512 * 512; }
// C (rows x GH) (+)= A (rows x H) W_hh^T. Wp: W_hh^T packed (panel path) or W_hh itself.
template <class T>
inline void step_fwd_gemm(const KernelTable<T>& K, bool panel, int64_t rows, int64_t GH,
                          int64_t H, const T* A, const T* Wp, T* C, bool accumulate) {
  if (panel)
    K.gemm_panels(rows, GH, H, A, H, 1, Wp, C, GH, accumulate);
  else
    gemm(false, true, rows, GH, H, T(1), A, H, Wp, H, accumulate ? T(1) : T(0), C, GH);
}
// C (rows x H) += A (rows x GH) W. Wp: W packed (panel path) or W itself (GH x H, plain).
// The backward step (W = W_hh), and the RNN's forward step (W = W_hh^T, GH = H).
template <class T>
inline void step_bwd_gemm(const KernelTable<T>& K, bool panel, int64_t rows, int64_t GH,
                          int64_t H, const T* A, const T* Wp, T* C) {
  if (panel)
    K.gemm_panels(rows, H, GH, A, GH, 1, Wp, C, H, true);
  else
    gemm(false, false, rows, H, GH, T(1), A, GH, Wp, H, T(1), C, H);
}
}  // namespace recurrent

// The protected names of RecurrentChain (and ChainBase) in a driver deriving from it.
#define GRADCHAIN_RECURRENT_NAMES(Base)                                                   \
  GRADCHAIN_CHAIN_BASE_NAMES(Base);                                                       \
  using Base::B_;                                                                         \
  using Base::GH_;                                                                        \
  using Base::HS_;                                                                        \
  using Base::H_;                                                                         \
  using Base::I_;                                                                         \
  using Base::K_;                                                                         \
  using Base::T_;                                                                         \
  using Base::X_;                                                                         \
  using Base::b_hh_;                                                                      \
  using Base::b_ih_;                                                                      \
  using Base::b_out_;                                                                     \
  using Base::fwd_nonfinite_;                                                             \
  using Base::nrb_;                                                                       \
  using Base::part_;                                                                      \
  using Base::pe_ws_;                                                                     \
  using Base::pe_wsd_;                                                                    \
  using Base::w_hh_;                                                                      \
  using Base::w_ih_;                                                                      \
  using Base::w_out_;                                                                     \
  using Base::ws_

template <class T>
class RecurrentChain : public ChainBase<T> {
 public:
  int64_t forward_steps() const { return T_; }
  int64_t forward_batch() const { return B_; }
  // dW's and per_example's path (ExamplePath, per_example_rnn.h): 0 by the shape, 1 Gram
  // matrices, 2 per-example gradients (both with merged dW GEMMs), 3 dW as the examples' sum
  int example_path = 0;

 protected:
  using Base = ChainBase<T>;
  GRADCHAIN_CHAIN_BASE_NAMES(Base);

  // what: "an RNN", "an LSTM", ... (for messages); gates: G (1 for the RNN). Checks the
  // sizes (input and hidden in [1, 2^max_log2], output in [0, 2^max_log2]) and lays out
  // weight_ih_l0 (G*H, I), weight_hh_l0 (G*H, H), bias_ih_l0, bias_hh_l0 (G*H),
  // readout.weight (K, H), readout.bias (K), then allocates them.
  RecurrentChain(const char* what, int gates, int64_t I, int64_t H, int64_t K, bool bias,
                 int max_log2);
  ~RecurrentChain() = default;

  // "an RNN with input_size=..., hidden_size=..., output_size=... (float32)"
  std::string describe() const;
  // plan()'s first steps: refuses T*B rows past the BLAS's limit, forgets the saved pass
  // and the planned shape, releases the shared workspace (the peak is the new one).
  void begin_plan(int64_t steps, int64_t B);
  // plan()'s failure: releases the shared workspace and throws AllocError for `bytes`.
  [[noreturn]] void plan_failed(int64_t steps, int64_t B, double bytes);
  // Bytes a pass over (steps, B) would allocate now: the workspace (fresh) beyond what is
  // held when the shape changes, and the packing scratch for `work`.
  int64_t pass_bytes_for(int64_t steps, int64_t B, int64_t fresh, int64_t held, int64_t slot,
                         int64_t work) const;
  // Panel GEMM slot values per thread: inner dimensions I, N, K (or T*B for the weight
  // gradients), packed widths up to max(I, N, K); N = G*H.
  int64_t slot_for(int64_t steps, int64_t B) const;
  // The forward's inputs: x (T, B, I) into X_, h0 (B, H) or zeros into HS_'s slot 0.
  void load_inputs(const T* x, const T* h0, int64_t steps, int64_t B);
  // The backward's start: G[1..T] = grad_hs (or zeros), G[0] = 0. by_step (no readout,
  // grad_hs given: stepwise_grad_hs): only G[T] and G[0]; G[t] for t < T is loaded by
  // load_grad_rows inside the backward's loop, each thread its rows right before the step
  // that adds into them (one pass over grad_hs from memory straight to L1, instead of a
  // copy of all T steps first and reading it back: rnn-mid's backward -2 ms).
  void load_grad_hs(const T* grad_hs, T* G, bool by_step = false) const;
  bool stepwise_grad_hs(const T* grad_hs) const { return grad_hs != nullptr && K_ == 0; }
  // G[t] rows r0..r0+rows = grad_hs[t-1]'s (1 <= t < T; by_step)
  void load_grad_rows(const T* grad_hs, T* G, int64_t t, int64_t r0, int64_t rows) const {
    const int64_t BH = B_ * H_;
    std::memcpy(G + t * BH + r0 * H_, grad_hs + (t - 1) * BH + r0 * H_,
                size_t(rows * H_) * sizeof(T));
  }

  // Called by every thread of a region (orphaned work-sharing loops):
  // y = h W_out^T + b_out over all T*B rows, with the bias pass's non-finite check per row
  // block in part_.
  void readout_forward(T* ys);
  // The readout's gradients: dW_out = gy^T h, G[1..T] += gy W_out, db_out (grad_ys null:
  // zeros, or kept when accumulating). ss_w_out is set only without grad_ys (the caller
  // takes dW_out's sum of squares), ss_b_out always.
  void readout_backward(const T* grad_ys, T* G, bool accumulate, double& ss_w_out,
                        double& ss_b_out);
  // Merged over all T*B rows: dW_ih = DZ^T x, dW_hh = DH^T h_{t-1}, dx = DZ W_ih (dx null:
  // skipped; weights false: dx only, the caller forms dW); DZ and DH are (T*B, G*H).
  void weight_grads(const T* DZ, const T* DH, T* dx, bool accumulate, bool weights = true);

  // After the forward region: the first step t whose check (checks[((t-1)*nrb_ + rb) *
  // stride]) is NaN, else T+1 if a readout row block's is, else -1.
  int scan_forward(const double* checks, int64_t stride) const;
  // diagnose_forward's common checks: the origin when only the readout's output is
  // non-finite (its parameters, else its product), and whether a parameter of the cell
  // (weight_ih_l0, weight_hh_l0, the biases) holds NaN/Inf.
  NonfiniteStage diagnose_readout() const;
  bool cell_params_nonfinite() const;
  // The report's global norm from its per-tensor norms.
  void finish_global_norm(RecurrentReport& rep) const;

  int64_t I_, H_, K_, GH_;  // input, hidden, output size, G*H
  int64_t w_ih_, w_hh_, b_ih_ = -1, b_hh_ = -1, w_out_ = -1, b_out_ = -1;

  // the shared workspace (plan(T, B)); nothing is allocated inside the time loop
  int64_t T_ = 0, B_ = 0, nrb_ = 0;
  Buffer<T> ws_;
  T* X_ = nullptr;   // (T, B, I) copy of x
  T* HS_ = nullptr;  // (T+1, B, H): h_0, h_1, ..., h_T
  Buffer<double> part_;  // bias partials per row block; the readout's checks
  int fwd_nonfinite_ = -1;
  Buffer<T> pe_ws_;  // per_example / fused dW: the threads' slots, the block sums (grown once)
  Buffer<double> pe_wsd_;

 private:
  const char* what_;
};

}  // namespace gradchain
