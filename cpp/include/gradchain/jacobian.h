// gradchain/jacobian.h — an MLP linearised at given inputs: its own primal forward pass
// (the chain's saved pass, running statistics and gradients are left alone), then batches
// of tangents pushed forward through it (Jacobian-vector products: forward mode, a chain of
// GEMMs) or cotangents pulled back (vector-Jacobian products, with each row's squared norm
// at every layer). docs/CONVENTIONS.md, "Signal propagation".
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "gradchain/chain_base.h"
#include "gradchain/mlp.h"
#include "gradchain/norm.h"

namespace gradchain {

template <class T>
class MlpLinearization {
 public:
  // The primal pass at x (B, in) through `chain`, under its mutex. pre: null, or room for
  // sum_l B * h_l values: each hidden layer's pre-activation z_l + b_l (B, h_l) before its
  // norm, layer after layer. y: null or (B, out). A batch norm in training mode uses the
  // batch's statistics (never committed) and allows forward_only passes only: its
  // Jacobian couples the samples of the batch (std::invalid_argument otherwise).
  MlpLinearization(MlpChain<T>& chain, const T* x, int64_t B, bool forward_only, T* pre, T* y);

  int64_t batch() const { return B_; }
  bool forward_only() const { return forward_only_; }

  // Forward mode. V (R, in), R a multiple of B: row r is a tangent at sample r % B.
  // out (R, out) = the tangents of y. rec: (l, dest) pairs, dest (R, h_l) receives the
  // tangents of a_l (l = 0..L, a_0 = x; the partial Jacobians' products).
  void jvp(const T* V, int64_t R, T* out, const std::vector<std::pair<int64_t, T*>>& rec);
  // Reverse mode. U (R, out), row r a cotangent at sample r % B. dx (R, in) or null: the
  // cotangents of x. rowss ((L+1) x R, float64): sum of squares of row r of the cotangent
  // of a_l at [l * R + r], l = 0..L.
  void vjp(const T* U, int64_t R, T* dx, double* rowss);

 private:
  void tangent_space(int64_t R);  // the tangent buffers for R rows (grown, never per layer)
  int tangent_threads(int64_t R) const;

  MlpChain<T>& c_;
  int64_t B_, L_, in_, out_, maxw_;
  bool forward_only_;
  Buffer<T> ws_;                          // the primal: a_l, m_l (act' x norm factor), norms
  std::vector<T*> A_, M_;
  std::vector<NormLayerView<T>> views_;   // each layer's norm: the chain's tensors, our workspace
  Buffer<T> tw_;                          // tangent rows: three slabs of R x maxw
  int64_t tw_rows_ = 0;
  Buffer<T> pack_;                        // panel-GEMM packing scratch (ours: not the chain's)
};

}  // namespace gradchain
