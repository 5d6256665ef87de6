// gradchain/per_example_rnn.h — per-example gradient norms of a recurrent chain whose
// weights are shared over time. Example i's gradient of a weight fed by the rows a_{t,i}
// is G_i = sum_t dz_{t,i} a_{t,i}^T (not a rank-one product, so the MLP's
// ||dz_i|| * ||a_i|| does not apply); its squared norm is computed exactly either as
//   ||G_i||_F^2 = sum_{s,t} (dz_s . dz_t)(a_s . a_t)   (two T x T Gram matrices: O(T^2 (n+k)))
// or by forming G_i in a per-thread workspace and summing its squares (O(T n k)), whichever
// costs fewer flops (the same number to rounding). Examples are independent and each is
// computed whole by one thread: the result does not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "gradchain/chain_base.h"

namespace gradchain {

// Views into a vanilla RNN's saved pass (time-major, batch B).
template <class T>
struct RnnExampleInputs {
  int64_t steps = 0, B = 0, I = 0, H = 0, K = 0;  // K = 0: no readout
  const T* x = nullptr;    // (T, B, I)
  const T* hs = nullptr;   // (T+1, B, H): h_0, h_1, ..., h_T
  const T* dz = nullptr;   // (T, B, H): dL/dz_t
  const T* g = nullptr;    // (T+1, B, H): dL/dh_t (total), slot 0 = dL/dh_0
  const T* gy = nullptr;   // (T, B, K): dL/dy_t, or null (the readout has zero gradient)
  bool bias = true;        // b_ih and b_hh (their gradients are equal)
  bool readout_bias = false;
  bool tensors = true;     // false: the steps' ||dL/dh_{t,i}||^2 only (the batched probe)
  // Set on the per-example-gradient path (rnn_example_fuses): the batch's dW_ih, dW_hh
  // (assigned, or added with accumulate) as the sum of the examples' own gradients, in
  // fixed blocks of examples summed in block order, instead of the backward's merged GEMMs.
  T* dw_ih = nullptr;
  T* dw_hh = nullptr;
  bool accumulate = false;
};

// How the weight terms are computed: by the flop count, or forced (tests, benchmarks).
// DirectSum: the per-example gradients, and their sum is the batch's dW_ih, dW_hh (the
// merged GEMMs skipped: cheaper, but dW then differs from per_example=false to rounding,
// so opt-in: gc.train's recorded steps must not change the trajectory).
enum class ExamplePath : int { Auto = 0, Gram = 1, Direct = 2, DirectSum = 3 };

// The tensors of RnnExampleSums::tensor, in this order (rows of B values each).
enum RnnExampleTensor : int {
  kExWeightIh = 0, kExWeightHh, kExBias, kExReadoutWeight, kExReadoutBias, kExTensors
};

// Whether the Gram path costs fewer flops than forming the per-example gradients.
bool rnn_example_gram(int64_t steps, int64_t I, int64_t H, int64_t K);
// Whether a per_example backward sums the examples' own gradients into the batch's dW_ih,
// dW_hh (RnnExampleInputs::dw_ih): path DirectSum only.
bool rnn_example_fuses(int path, int64_t steps, int64_t I, int64_t H, int64_t K);

// Per-thread workspace values (T) of a path for the shape.
int64_t rnn_example_workspace(bool gram, int64_t steps, int64_t I, int64_t H, int64_t K);

// tensor: kExTensors x B squared norms of example i's share sum_t (...) of each tensor's
// gradient (bias: of b_ih, equal to b_hh's); step: steps x B, ||dL/dh_{t,i}||^2 for
// t = 1..T. ws (and wsd, float64) grow to the threads' slots when too small (once per
// shape and thread count). Runs its own OpenMP region; throws Cancelled when cancelled.
template <class T>
void rnn_per_example(const RnnExampleInputs<T>& in, ExamplePath path, Buffer<T>& ws,
                     Buffer<double>& wsd, std::vector<double>& tensor, std::vector<double>& step);

}  // namespace gradchain
