// gradchain/per_example_rnn.h — per-example gradient norms of a recurrent chain whose
// weights are shared over time (the vanilla RNN, G = 1 gate block, and the LSTM / GRU,
// G = 4 / 3: dz_t then has G*H columns). Example i's gradient of a weight fed by the rows
// a_{t,i} is G_i = sum_t dz_{t,i} a_{t,i}^T (not a rank-one product, so the MLP's
// ||dz_i|| * ||a_i|| does not apply); its squared norm is computed exactly either as
//   ||G_i||_F^2 = sum_{s,t} (dz_s . dz_t)(a_s . a_t)   (two T x T Gram matrices: O(T^2 (n+k)))
// or by forming G_i in a per-thread workspace and summing its squares (O(T n k)), whichever
// costs fewer flops (the same number to rounding). Examples are independent and each is
// computed whole by one thread: the result does not depend on the thread count.
//
// The same routine forms the batch's dW_ih, dW_hh as the sum of the examples' own
// gradients in fixed blocks of examples (rnn_example_fuses: a function of the shape and
// the path only), for a plain backward too (norms off): per_example=true and false then
// give the same bits, and per_example only adds the norms of gradients already formed.
#pragma once

#include <cstdint>
#include <vector>

#include "gradchain/chain_base.h"

namespace gradchain {

// Views into a recurrent chain's saved pass (time-major, batch B; GH = G*H).
template <class T>
struct RnnExampleInputs {
  int64_t steps = 0, B = 0, I = 0, H = 0, K = 0;  // K = 0: no readout
  int64_t G = 1;           // gate blocks: 1 RNN, 4 LSTM, 3 GRU
  const T* x = nullptr;    // (T, B, I)
  const T* hs = nullptr;   // (T+1, B, H): h_0, h_1, ..., h_T
  const T* dz = nullptr;   // (T, B, GH): dL/dz_t (W_ih's and b_ih's rows)
  const T* dh = nullptr;   // (T, B, GH): W_hh's and b_hh's rows when they differ (the GRU's
                           // r * dn in the n block), else null (= dz)
  const T* g = nullptr;    // (T+1, B, H): dL/dh_t (total), slot 0 = dL/dh_0
  const T* gy = nullptr;   // (T, B, K): dL/dy_t, or null (the readout has zero gradient)
  bool bias = true;        // b_ih and b_hh
  bool readout_bias = false;
  bool steps_norms = true; // the steps' ||dL/dh_{t,i}||^2 (per_example)
  bool tensors = true;     // the tensors' norms (false: plain backward, or the batched probe)
  // Set on the fused path (rnn_example_fuses): the batch's dW_ih, dW_hh (assigned, or
  // added with accumulate) as the sum of the examples' own gradients, in fixed blocks of
  // examples summed in block order, instead of the backward's merged GEMMs.
  T* dw_ih = nullptr;
  T* dw_hh = nullptr;
  bool accumulate = false;
};

// How the weight terms are computed: by the shape (fused where the examples' own
// gradients summed cost about what the merged GEMMs do, else Gram or Direct by the flop
// count), or forced (tests, benchmarks): Gram and Direct keep the merged GEMMs for dW,
// DirectSum always forms dW as the sum of the examples' own gradients. The path applies
// to the plain backward too, so per_example never changes dW's bits.
enum class ExamplePath : int { Auto = 0, Gram = 1, Direct = 2, DirectSum = 3 };

// The tensors of the report's example_tensor, in this order (rows of B values each);
// kExBiasHh equals kExBias unless RnnExampleInputs::dh is set.
enum RnnExampleTensor : int {
  kExWeightIh = 0, kExWeightHh, kExBias, kExReadoutWeight, kExReadoutBias, kExBiasHh,
  kExTensors
};

// Whether the Gram path costs fewer flops than forming the per-example gradients
// (apart: dh differs from dz, one more Gram matrix).
bool rnn_example_gram(int64_t steps, int64_t I, int64_t H, int64_t K, int64_t G = 1,
                      bool apart = false);
// Whether a backward (per_example or not) forms dW_ih, dW_hh as the sum of the examples'
// own gradients (RnnExampleInputs::dw_ih): path DirectSum, or Auto on a shape where that
// is about as fast as the merged GEMMs (the RNN's long sequences, bounded block sums; never
// the gated cells, G > 1, where the merged GEMMs are faster). A function
// of the path and the shape only (never of the thread count or timing).
constexpr int64_t kExampleFuseSteps = 256;  // Auto fuses from this many steps on
bool rnn_example_fuses(int path, int64_t steps, int64_t B, int64_t I, int64_t H, int64_t G);

// Values (T) of the fused path's block sums (ceil(B / example block) x G*H*(I + H)).
int64_t rnn_example_sum_values(int64_t B, int64_t I, int64_t H, int64_t G);
// Per-thread workspace values (T) of a path for the shape.
int64_t rnn_example_workspace(bool gram, int64_t steps, int64_t I, int64_t H, int64_t K,
                              int64_t G = 1, bool apart = false);

// tensor: kExTensors x B squared norms of example i's share sum_t (...) of each tensor's
// gradient; step: steps x B, ||dL/dh_{t,i}||^2 for t = 1..T (each assigned only when
// asked for). ws (and wsd, float64) grow to the threads' slots when too small (once per
// shape and thread count). Runs its own OpenMP region; throws Cancelled when cancelled.
template <class T>
void rnn_per_example(const RnnExampleInputs<T>& in, ExamplePath path, Buffer<T>& ws,
                     Buffer<double>& wsd, std::vector<double>& tensor, std::vector<double>& step);

}  // namespace gradchain
