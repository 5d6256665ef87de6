// gradchain/norm.h — norm layers as forward/backward pairs of plain functions over raw
// buffers: the layer between a hidden layer's product z = a W^T and its activation,
//   a = [resid + alpha *] act(Norm(z + b)),
// fused with the activation, its derivative, the residual and the non-finite check (one
// pass over the rows in forward, the matching reductions in backward). The kinds come from
// the list in gradchain/norm_list.h; NormKind::None is the plain epilogue (bias +
// activation). Any chain can call them: they know rows, features and buffers, not layers.
//
// The pass functions (norm_forward, norm_backward) are called by every thread of an OpenMP
// region: they run work-sharing loops over fixed row blocks (parallel.h) and reduce block
// partials in block order, so their numbers do not depend on the thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gradchain/chain_base.h"
#include "gradchain/kernels.h"
#include "gradchain/norm_list.h"

namespace gradchain {

enum class NormKind : int {
#define GC_NORM_ENUM(E, name, affine, running_stats) E,
  GC_NORM_LIST(GC_NORM_ENUM)
#undef GC_NORM_ENUM
};

// One row of the list, as data (the bindings export the names and ids from it).
struct NormRow {
  NormKind id;
  const char* name;
  bool affine;
  bool running_stats;
};

inline constexpr NormRow kNorms[] = {
#define GC_NORM_ROW(E, name, affine, running_stats) {NormKind::E, name, affine, running_stats},
    GC_NORM_LIST(GC_NORM_ROW)
#undef GC_NORM_ROW
};
inline constexpr std::size_t kNumNorms = sizeof(kNorms) / sizeof(kNorms[0]);

// Whether the norm has a per-feature affine weight and bias (gamma, beta).
constexpr bool norm_affine(NormKind k) { return kNorms[std::size_t(k)].affine; }
// Whether the norm keeps running statistics (running_mean, running_var).
constexpr bool norm_running_stats(NormKind k) { return kNorms[std::size_t(k)].running_stats; }

// One norm layer of n features: pointers into its chain's memory, null where the kind has
// no such thing. The parameters and buffers are set when the chain is built, the
// workspace by norm_carve when a pass is planned.
template <class T>
struct NormLayerView {
  int64_t n = 0;                       // features
  T* gamma = nullptr;                  // affine weight (n), and its gradient
  T* dgamma = nullptr;
  T* beta = nullptr;                   // affine bias (n), and its gradient
  T* dbeta = nullptr;
  T* running_mean = nullptr;           // running statistics (n)
  T* running_var = nullptr;
  double* batch_mean = nullptr;        // this pass's statistics in float64 (n), for the commit
  double* batch_var = nullptr;
  // workspace of the pass
  T* xhat = nullptr;                   // (B, n) normalised pre-activations
  T* col_shift = nullptr;              // per-feature mean and 1/sqrt(var + eps) (n)
  T* col_istd = nullptr;
  T* row_mean = nullptr;               // per-row mean and 1/sqrt(var + eps) (B)
  T* row_istd = nullptr;
};

// The row blocks of a pass over B rows (kRowBlock rows each) and the scratch the norm
// passes share with their chain (planned with the chain's workspace; maxw >= n).
template <class T>
struct RowPass {
  int64_t B = 0;                       // rows
  int64_t nrb = 0;                     // row blocks
  int64_t maxw = 0;                    // the width the scratch is planned for
  double* part = nullptr;              // column partial sums: 3 slabs of nrb x maxw
  double* blk = nullptr;               // per-block scalars (nrb)
  double* colsum0 = nullptr;           // column totals (maxw each)
  double* colsum1 = nullptr;
  T* coef = nullptr;                   // per-feature coefficients: 3 x maxw
};

// Where a norm layer's backward writes its share of the report (by one thread, read after
// the region); null pointers are not written.
struct NormBackwardReport {
  double* grad_norm = nullptr;         // ||g||: the incoming dL/da
  int* first_nonfinite = nullptr;      // set to `index` when g holds NaN/Inf (if still < 0)
  int index = 0;
  double* bias_norm = nullptr;         // ||db|| (with a bias)
  double* weight_norm = nullptr;       // ||dgamma||, ||dbeta|| (affine norms)
  double* shift_norm = nullptr;
  // The health statistics (kernels.h's GradHealth), per row block rb, or null (report off):
  // health[3 rb + 0..2] = zeros and subnormals of g, sum(dz * 0); health_dmax (T values,
  // rb * n + c) = max |act'| of column c over the block's rows.
  double* health = nullptr;
  void* health_dmax = nullptr;
};

// Workspace values a pass over B rows of n features needs (xhat and the statistics), and
// the views carved for them (in this order, after the chain's own).
int64_t norm_workspace_values(NormKind kind, int64_t B, int64_t n);
template <class T>
void norm_carve(NormKind kind, WorkspaceCarver<T>& ws, int64_t B, NormLayerView<T>& nv);
// The initial parameters and buffers (gamma 1, beta 0, running mean 0, running var 1).
template <class T>
void norm_reset(NormKind kind, const NormLayerView<T>& nv);
// Throws std::invalid_argument when the norm cannot run on a batch of B rows.
void norm_check_batch(NormKind kind, bool training, int64_t B);

// Forward (every thread of a region; ends with a barrier). z (B, n) holds the product
// without the bias; it becomes a = [resid + alpha *] act(Norm(z + b)) (args: the
// activation, the whole batch's residual input and alpha), d = act'(.), and nv's xhat and
// statistics are written. bias (n) or null. fchk[rb]: each row block's non-finite check
// (NaN when a has NaN/Inf).
template <class T>
void norm_forward(NormKind kind, const NormLayerView<T>& nv, const FwdArgs<T>& args,
                  const T* bias, bool training, double eps, T* z, T* d, const RowPass<T>& rp,
                  double* fchk);
// After a whole forward pass has succeeded: the running statistics take this pass's
// (training only; bias (n) or null, the one the forward saw).
template <class T>
void norm_commit(NormKind kind, const NormLayerView<T>& nv, const T* bias, bool training,
                 int64_t B, double momentum);

// Backward (every thread of a region; dz is complete on return, the report's numbers once
// the region ends). g (B, n) = dL/da, d = act'; dz = dL/dz (B, n) out; the parameter
// gradients db (n, null without a bias), nv's dgamma and dbeta are assigned, or added to
// with accumulate. scale: the residual scale (1 without). select: the activation's kink
// rule (act_selects). want_ss: the report's sum of squares of g (the plain epilogue skips
// it when false; the norms always take it).
template <class T>
void norm_backward(NormKind kind, const NormLayerView<T>& nv, const T* g, const T* d, T scale,
                   bool select, bool want_ss, bool training, bool accumulate, T* dz, T* db,
                   const RowPass<T>& rp, const NormBackwardReport& out);

}  // namespace gradchain
