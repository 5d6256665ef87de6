// gradchain/gated.h — the gated recurrent chains: LSTM (torch.nn.LSTM) and GRU
// (torch.nn.GRU), one layer, with an optional linear readout, in the RNN's oneDNN shape:
//   forward:  one GEMM for the input projection of all T steps (all gate blocks at
//             once), then a time loop doing only the recurrent GEMM (W_hh packed once
//             per pass) and one fused gate pass (kernel table: lstm_fwd / gru_fwd);
//   backward: the recurrent chain (one fused pass + one GEMM per step, which also yields
//             ||dL/dh_t|| and, for the LSTM, ||dL/dc_t||), then merged GEMMs over all
//             T*B rows for dW_ih, dW_hh and dL/dx.
// Parameters (torch's names and layout): weight_ih_l0 (G*H, I), weight_hh_l0 (G*H, H),
// bias_ih_l0, bias_hh_l0 (G*H), the gate blocks stacked in torch's order (LSTM: G = 4,
// i f g o; GRU: G = 3, r z n); readout.weight (K, H), readout.bias (K).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "gradchain/kernels.h"
#include "gradchain/recurrent.h"
#include "gradchain/report.h"

namespace gradchain {

enum class Cell : int { Lstm = 0, Gru = 1 };

inline int cell_gates(Cell c) { return c == Cell::Lstm ? 4 : 3; }

struct GatedConfig {
  Cell cell = Cell::Lstm;
  int64_t input_size = 1;
  int64_t hidden_size = 1;
  int64_t output_size = 0;  // 0: no readout
  bool bias = true;
};

// The per-step ||dL/dh_t||, the per-tensor norms, ||dL/dh_0|| and the first non-finite
// steps (dL/dh_t or dL/dc_t; h_t or c_t) are RecurrentReport's (recurrent.h).
struct GatedReport : RecurrentReport {
  std::vector<double> cell;         // T: ||dL/dc_t|| (LSTM; empty for the GRU)
  std::vector<double> gate_mean;    // G x T: mean gate value over (B, H), per gate and step
  std::vector<double> gate_sat;     // G x T: fraction of saturated units
  std::vector<double> w_ih_gate, w_hh_gate, b_ih_gate, b_hh_gate;  // G: per gate block
  double c0 = 0;                    // ||dL/dc_0|| (LSTM)
  // health (report on), per step t = 1..T: the hidden units (dead: every gate derivative 0,
  // saturated: every gate derivative below 1e-3 of its maximum, for every example), the
  // entries of dL/dh_t, mean |h_t|; the LSTM's entries of dL/dc_t and mean |c_t|
  std::vector<double> dead, saturated, zeros, subnormals, mean_abs;
  std::vector<double> c_zeros, c_subnormals, mean_abs_c;
  NonfiniteStage forward_stage = NonfiniteStage::None;   // at forward_first_nonfinite
  NonfiniteStage backward_stage = NonfiniteStage::None;  // at first_nonfinite (forward finite)
};

template <class T>
class GatedChain : public RecurrentChain<T> {
 public:
  // Throws std::invalid_argument on a bad config and AllocError when the flat buffers
  // cannot be allocated.
  explicit GatedChain(GatedConfig cfg);

  const GatedConfig& config() const { return cfg_; }
  int gates() const { return G_; }
  // The switch of the health statistics and non-finite stages (as RnnChain's).
  bool forensics = true;

  // x (T, B, I), h0 and c0 (B, H) or null (c0: LSTM only) -> hs (T, B, H), the LSTM's
  // cs (T, B, H) when not null and, with a readout, ys (T, B, K). Polls the cancel flag.
  void forward(const T* x, const T* h0, const T* c0, int64_t steps, int64_t B, T* hs, T* cs,
               T* ys);
  // grad_hs (T, B, H) and/or grad_ys (T, B, K) (null = zeros) -> parameter gradients
  // (assigned, or added with accumulate), dx (T, B, I), dh0 and (LSTM) dc0 (B, H) when not
  // null. report = false: gradients only (norms left 0; the gate statistics are kept).
  // per_example (needs report): also each example's share of every tensor's gradient and
  // of every dL/dh_t (example_tensor, example_step; per_example_rnn.h).
  GatedReport backward(const T* grad_hs, const T* grad_ys, T* dx, T* dh0, T* dc0,
                       bool accumulate, bool report = true, bool per_example = false);

  // Bytes a pass over (steps, B) would allocate now beyond what the chain holds.
  int64_t pass_bytes(int64_t steps, int64_t B) const;

 private:
  using Base = RecurrentChain<T>;
  GRADCHAIN_RECURRENT_NAMES(Base);

  bool lstm() const { return cfg_.cell == Cell::Lstm; }
  void plan(int64_t steps, int64_t B);
  int64_t workspace_values(int64_t steps, int64_t B) const;  // T values in ws_
  int64_t part_values(int64_t steps, int64_t B) const;       // doubles in part_
  int64_t stat_values(int64_t steps, int64_t B) const;       // doubles in fstat_ + bss_ + ...
  NonfiniteStage diagnose_forward(int64_t t);  // t = 1..T (T+1: the readout)
  void fill_health(GatedReport& rep);

  GatedConfig cfg_;
  int G_;

  // workspace (plan(T, B), beside RecurrentChain's X_, HS_ and part_)
  T* CS_ = nullptr;   // LSTM (T+1, B, H): c_0, ..., c_T
  T* TC_ = nullptr;   // LSTM (T, B, H): tanh(c_t)
  T* A_ = nullptr;    // (T, B, G*H): the input projection, then the gate values
  T* HN_ = nullptr;   // GRU (T, B, H): W_hn h_{t-1} + b_hn
  T* HB_ = nullptr;   // GRU (B, G*H): the step's recurrent product
  T* G_t_ = nullptr;  // (T+1, B, H): dL/dh_t (total), slot 0 = dL/dh_0
  T* DC_ = nullptr;   // LSTM (T, B, H): dL/dc_t (total)
  T* DZ_ = nullptr;   // (T, B, G*H): dL/dz (LSTM), the input side's dz (GRU)
  T* DHB_ = nullptr;  // GRU (T, B, G*H): the recurrent side's dz
  T* bias_ = nullptr; // (2 G*H): LSTM b_ih + b_hh; GRU b_ih, b_hh (zeros without bias)
  T* WT_ = nullptr;   // W_hh packed for the time loop (forward: op = W_hh^T; backward: W_hh)
  std::vector<double> fstat_;  // per (step, row block): 2 G gate statistics + 1 check
  std::vector<double> bss_;    // per (step, row block): sum(dh^2), sum(dc^2)
  // forensics: UM_ (in ws_) T x nrb x H unit maxima of the normalised gate derivatives;
  // hfwd_ per (step, row block) sum |h_t|, sum |c_t|; hbwd_ the zero and subnormal counts
  // of dL/dh_t and dL/dc_t (4); fwd_health_: the forward computed them
  T* UM_ = nullptr;
  std::vector<double> hfwd_, hbwd_;
  bool fwd_health_ = false;
  NonfiniteStage fwd_stage_ = NonfiniteStage::None;
};

}  // namespace gradchain
