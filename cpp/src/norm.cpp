// norm.cpp — the norm layers' passes: one NormLayer<T, kind> per row of
// gradchain/norm_list.h, and the dispatch from a runtime NormKind (generated from the list).
//
// Each NormLayer has: workspace_values / carve (its xhat and statistics), reset (initial
// parameters), check_batch, forward, commit (running statistics) and backward. The passes
// call the kernel table's fused epilogues over fixed row blocks (work-sharing loops of the
// caller's OpenMP region) and reduce the block partials in block order.
#include "gradchain/norm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "gradchain/dispatch.h"
#include "gradchain/parallel.h"
#include "gradchain/report.h"

namespace gradchain {

namespace {

template <class T, NormKind K>
struct NormLayer;

// ||g|| (B*n values) into the report, and whether it is where a NaN/Inf first showed
// (inside omp single).
template <class T>
void record_grad(const NormBackwardReport& out, const T* g, int64_t numel, double ss) {
  const double nrm = norm_from_sumsq(g, numel, ss);
  if (out.grad_norm) *out.grad_norm = nrm;
  if (out.first_nonfinite && has_nonfinite(ss, nrm) && *out.first_nonfinite < 0)
    *out.first_nonfinite = out.index;
}

// The health statistics of row block rb (NormBackwardReport::health), zeroed: dmax
// starts at 0 (no |act'| is below it).
template <class T>
GradHealth<T> health_block(const NormBackwardReport& out, int64_t rb, int64_t n) {
  GradHealth<T> h;
  T* dm = static_cast<T*>(out.health_dmax);
  if (dm) {
    h.dmax = dm + rb * n;
    std::fill(h.dmax, h.dmax + n, T(0));
  }
  return h;
}
// Adds block rb's counts to the report's entries.
template <class T>
void health_store(const NormBackwardReport& out, int64_t rb, const GradHealth<T>& h) {
  out.health[3 * rb] += h.zeros;
  out.health[3 * rb + 1] += h.subnormals;
  out.health[3 * rb + 2] += h.dz_check;
}

// ---------------------------------------------------------------------------
// None: the plain epilogue, a = [resid + alpha *] act(z + b).
// ---------------------------------------------------------------------------
template <class T>
struct NormLayer<T, NormKind::None> {
  static int64_t workspace_values(int64_t, int64_t) { return 0; }
  static void carve(WorkspaceCarver<T>&, int64_t, NormLayerView<T>&) {}
  static void reset(const NormLayerView<T>&) {}
  static void check_batch(bool, int64_t) {}
  static void commit(const NormLayerView<T>&, const T*, bool, int64_t, double) {}

  static void forward(const NormLayerView<T>& nv, const FwdArgs<T>& args0, const T* bias, bool,
                      double, T* z, T* d, const RowPass<T>& rp, double* fchk) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n;
    FwdArgs<T> args = args0;
    args.bias = bias;
#pragma omp for schedule(static)  // fused bias + activation + derivative, over row blocks
    for (int64_t rb = 0; rb < rp.nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
      fchk[rb] = K.fwd_plain(args.block(rb, r0, n), z + r0 * n, z + r0 * n, d + r0 * n, rows, n);
    }
  }

  static void backward(const NormLayerView<T>& nv, const T* g, const T* d, T scale, bool select,
                       bool want_ss, bool, bool accumulate, T* dz, T* db, const RowPass<T>& rp,
                       const NormBackwardReport& out) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n, nrb = rp.nrb;
    double* p0 = rp.part;
    double* blk = rp.blk;
    const bool bias = db != nullptr;
#pragma omp for schedule(static)  // dz = g * scale * act'; db partials; sum g^2
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock;
      if (bias) std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
      if (out.health) {  // the report's health statistics in the same sweep
        GradHealth<T> h = health_block<T>(out, rb, n);
        blk[rb] = K.bwd_plain_health(g + r0 * n, d + r0 * n, scale, select, dz + r0 * n,
                                     bias ? p0 + rb * n : nullptr, rows_in_block(rb, B), n, &h);
        health_store(out, rb, h);
      } else {
        blk[rb] = K.bwd_plain(g + r0 * n, d + r0 * n, scale, select, want_ss, dz + r0 * n,
                              bias ? p0 + rb * n : nullptr, rows_in_block(rb, B), n);
      }
    }
#pragma omp single
    {
      double ss = 0.0;
      for (int64_t rb = 0; rb < nrb; ++rb) ss += blk[rb];
      record_grad(out, g, B * n, ss);
      if (bias) {
        const double nb = norm_from_sumsq(db, n, reduce_store(p0, nrb, n, db, accumulate));
        if (out.bias_norm) *out.bias_norm = nb;
      }
    }
  }
};

// The affine parameters' initial values (every affine norm).
template <class T>
void reset_affine(const NormLayerView<T>& nv) {
  for (int64_t c = 0; c < nv.n; ++c) {
    nv.gamma[c] = T(1);
    nv.beta[c] = T(0);
  }
}

// ---------------------------------------------------------------------------
// Batch: statistics per feature over the batch (training) or the running ones (eval).
// ---------------------------------------------------------------------------
template <class T>
struct NormLayer<T, NormKind::Batch> {
  static int64_t workspace_values(int64_t B, int64_t n) { return B * n + 2 * n; }
  static void carve(WorkspaceCarver<T>& ws, int64_t B, NormLayerView<T>& nv) {
    nv.xhat = ws.take(B * nv.n);
    nv.col_shift = ws.take(nv.n);
    nv.col_istd = ws.take(nv.n);
  }
  static void reset(const NormLayerView<T>& nv) {
    reset_affine(nv);
    for (int64_t c = 0; c < nv.n; ++c) {
      nv.running_mean[c] = T(0);
      nv.running_var[c] = T(1);
    }
  }
  static void check_batch(bool training, int64_t B) {
    if (training && B == 1)
      throw std::invalid_argument(
          "Expected more than 1 value per channel when training with batch norm, got batch "
          "size 1");
  }

  static void forward(const NormLayerView<T>& nv, const FwdArgs<T>& args0, const T* b,
                      bool training, double eps, T* z, T* d, const RowPass<T>& rp,
                      double* fchk) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n, nrb = rp.nrb;
    T* shift = nv.col_shift;
    T* istd = nv.col_istd;
    double* mean = nv.batch_mean;
    double* var = nv.batch_var;
    double* p0 = rp.part;
    double* p1 = p0 + nrb * rp.maxw;
    if (training) {
      // Batch statistics of z (without b: the bias cancels in xhat) in one pass:
      // float64 moments shifted by the batch's first row (so S2/B - (S1/B)^2 does
      // not cancel), partials per row block, reduced in block order.
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb) {
        std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
        std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
        K.col_moments(z + rb * kRowBlock * n, z, rows_in_block(rb, B), n, p0 + rb * n,
                      p1 + rb * n);
      }
#pragma omp single
      for (int64_t c = 0; c < n; ++c) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t r = 0; r < nrb; ++r) {
          s1 += p0[r * n + c];
          s2 += p1[r * n + c];
        }
        const double dm = s1 / double(B);
        mean[c] = double(z[c]) + dm;
        var[c] = std::max(s2 / double(B) - dm * dm, 0.0);
        shift[c] = T(mean[c]);
        istd[c] = T(1.0 / std::sqrt(var[c] + eps));
      }
    } else {
      const T* rm = nv.running_mean;
      const T* rv = nv.running_var;
#pragma omp single
      for (int64_t c = 0; c < n; ++c) {
        shift[c] = T(double(rm[c]) - (b ? double(b[c]) : 0.0));
        istd[c] = T(1.0 / std::sqrt(double(rv[c]) + eps));
      }
    }
    FwdArgs<T> args = args0;
    args.col_shift = shift;
    args.col_scale = istd;
    args.gamma = nv.gamma;
    args.beta = nv.beta;
    T* xh = nv.xhat;
#pragma omp for schedule(static)  // fused normalise + affine + activation + derivative
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
      fchk[rb] = K.fwd_batchnorm(args.block(rb, r0, n), z + r0 * n, xh + r0 * n, z + r0 * n,
                                 d + r0 * n, rows, n);
    }
  }

  static void commit(const NormLayerView<T>& nv, const T* b, bool training, int64_t B,
                     double m) {
    if (!training) return;
    const double unbias = double(B) / double(B - 1);
    T* rm = nv.running_mean;
    T* rv = nv.running_var;
    const double* mean = nv.batch_mean;
    const double* var = nv.batch_var;
    for (int64_t c = 0; c < nv.n; ++c) {
      const double bm = mean[c] + (b ? double(b[c]) : 0.0);
      rm[c] = T((1.0 - m) * double(rm[c]) + m * bm);
      rv[c] = T((1.0 - m) * double(rv[c]) + m * var[c] * unbias);
    }
  }

  static void backward(const NormLayerView<T>& nv, const T* g, const T* d, T scale, bool select,
                       bool, bool training, bool accumulate, T* dz, T* db, const RowPass<T>& rp,
                       const NormBackwardReport& out) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n, nrb = rp.nrb, maxw = rp.maxw;
    const T* xh = nv.xhat;
    double* p0 = rp.part;
    double* p1 = p0 + nrb * maxw;
    double* p2 = p1 + nrb * maxw;
    double* blk = rp.blk;
    const bool bias = db != nullptr;
#pragma omp for schedule(static)  // dn = g * scale * act'; sum dn, sum dn * xhat; sum g^2
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock;
      std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
      std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
      if (out.health) {  // g's counts and act's maxima in the same sweep (dz's check: pass 2)
        GradHealth<T> h = health_block<T>(out, rb, n);
        blk[rb] = K.bwd_bn1(g + r0 * n, d + r0 * n, xh + r0 * n, scale, select, dz + r0 * n,
                            p0 + rb * n, p1 + rb * n, rows_in_block(rb, B), n, &h);
        health_store(out, rb, h);
      } else {
        blk[rb] = K.bwd_bn1(g + r0 * n, d + r0 * n, xh + r0 * n, scale, select, dz + r0 * n,
                            p0 + rb * n, p1 + rb * n, rows_in_block(rb, B), n, nullptr);
      }
    }
#pragma omp single
    {
      double ss = 0.0;
      for (int64_t rb = 0; rb < nrb; ++rb) ss += blk[rb];
      record_grad(out, g, B * n, ss);
      // dbeta = sum dn, dgamma = sum dn * xhat (the sums before storing, for the means)
      double* sb = rp.colsum0;
      double* sg = rp.colsum1;
      for (int64_t c = 0; c < n; ++c) {
        double a0 = 0.0, a1 = 0.0;
        for (int64_t r = 0; r < nrb; ++r) {
          a0 += p0[r * n + c];
          a1 += p1[r * n + c];
        }
        sb[c] = a0;
        sg[c] = a1;
      }
      T* dgamma = nv.dgamma;
      T* dbeta = nv.dbeta;
      double ssg = 0.0, ssb = 0.0;
      for (int64_t c = 0; c < n; ++c) {
        const T vg = accumulate ? T(dgamma[c] + T(sg[c])) : T(sg[c]);
        const T vb = accumulate ? T(dbeta[c] + T(sb[c])) : T(sb[c]);
        dgamma[c] = vg;
        dbeta[c] = vb;
        ssg += double(vg) * double(vg);
        ssb += double(vb) * double(vb);
      }
      const double nw = norm_from_sumsq(dgamma, n, ssg);
      const double nb = norm_from_sumsq(dbeta, n, ssb);
      if (out.weight_norm) *out.weight_norm = nw;
      if (out.shift_norm) *out.shift_norm = nb;
      // dz = gamma * istd * (dn - mean(dn) - xhat * mean(dn * xhat)) in training;
      // in eval mode the statistics are constants: dz = gamma * istd * dn.
      T* kv = rp.coef;
      T* m1 = kv + maxw;
      T* m2 = m1 + maxw;
      const T* gamma = nv.gamma;
      const T* istd = nv.col_istd;
      for (int64_t c = 0; c < n; ++c) {
        kv[c] = gamma[c] * istd[c];
        m1[c] = training ? T(sb[c] / double(B)) : T(0);
        m2[c] = training ? T(sg[c] / double(B)) : T(0);
      }
    }
    {
      const T* kv = rp.coef;
      const T* m1 = kv + maxw;
      const T* m2 = m1 + maxw;
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t r0 = rb * kRowBlock;
        if (bias) std::memset(p2 + rb * n, 0, size_t(n) * sizeof(double));
        GradHealth<T> h;  // dz's non-finite check in the same sweep (report on)
        K.bwd_bn2(dz + r0 * n, xh + r0 * n, kv, m1, m2, bias ? p2 + rb * n : nullptr,
                  rows_in_block(rb, B), n, out.health ? &h : nullptr);
        if (out.health) health_store(out, rb, h);
      }
    }
    if (bias) {
#pragma omp single nowait  // the caller's GEMMs do not read db
      {
        const double nb = norm_from_sumsq(db, n, reduce_store(p2, nrb, n, db, accumulate));
        if (out.bias_norm) *out.bias_norm = nb;
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Layer: statistics per row over the features of z + b.
// ---------------------------------------------------------------------------
template <class T>
struct NormLayer<T, NormKind::Layer> {
  static int64_t workspace_values(int64_t B, int64_t n) { return B * n + 2 * B; }
  static void carve(WorkspaceCarver<T>& ws, int64_t B, NormLayerView<T>& nv) {
    nv.xhat = ws.take(B * nv.n);
    nv.row_mean = ws.take(B);
    nv.row_istd = ws.take(B);
  }
  static void reset(const NormLayerView<T>& nv) { reset_affine(nv); }
  static void check_batch(bool, int64_t) {}
  static void commit(const NormLayerView<T>&, const T*, bool, int64_t, double) {}

  static void forward(const NormLayerView<T>& nv, const FwdArgs<T>& args0, const T* b, bool,
                      double, T* z, T* d, const RowPass<T>& rp, double* fchk) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n;
    FwdArgs<T> args = args0;
    args.bias = b;
    args.gamma = nv.gamma;
    args.beta = nv.beta;
    T* xh = nv.xhat;
#pragma omp for schedule(static)  // per-row statistics + fused epilogue
    for (int64_t rb = 0; rb < rp.nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
      fchk[rb] = K.fwd_layernorm(args.block(rb, r0, n), z + r0 * n, xh + r0 * n, z + r0 * n,
                                 d + r0 * n, nv.row_mean + r0, nv.row_istd + r0, rows, n);
    }
  }

  static void backward(const NormLayerView<T>& nv, const T* g, const T* d, T scale, bool select,
                       bool, bool, bool accumulate, T* dz, T* db, const RowPass<T>& rp,
                       const NormBackwardReport& out) {
    const auto& K = kernels<T>();
    const int64_t B = rp.B, n = nv.n, nrb = rp.nrb;
    const T* xh = nv.xhat;
    const T* gamma = nv.gamma;
    double* p0 = rp.part;
    double* p1 = p0 + nrb * rp.maxw;
    double* p2 = p1 + nrb * rp.maxw;
    double* blk = rp.blk;
    const bool bias = db != nullptr;
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock;
      std::memset(p0 + rb * n, 0, size_t(n) * sizeof(double));
      std::memset(p1 + rb * n, 0, size_t(n) * sizeof(double));
      if (bias) std::memset(p2 + rb * n, 0, size_t(n) * sizeof(double));
      blk[rb] = K.bwd_layernorm(g + r0 * n, d + r0 * n, xh + r0 * n, gamma, nv.row_istd + r0,
                                scale, select, dz + r0 * n, p0 + rb * n, p1 + rb * n,
                                bias ? p2 + rb * n : nullptr, rows_in_block(rb, B), n);
      if (out.health) {
        GradHealth<T> h = health_block<T>(out, rb, n);
        K.grad_health(g + r0 * n, d + r0 * n, dz + r0 * n, rows_in_block(rb, B), n, &h);
        health_store(out, rb, h);
      }
    }
#pragma omp single
    {
      double ss = 0.0;
      for (int64_t rb = 0; rb < nrb; ++rb) ss += blk[rb];
      record_grad(out, g, B * n, ss);
      T* dgamma = nv.dgamma;
      T* dbeta = nv.dbeta;
      const double nw = norm_from_sumsq(dgamma, n, reduce_store(p0, nrb, n, dgamma, accumulate));
      const double nb = norm_from_sumsq(dbeta, n, reduce_store(p1, nrb, n, dbeta, accumulate));
      if (out.weight_norm) *out.weight_norm = nw;
      if (out.shift_norm) *out.shift_norm = nb;
      if (bias) {
        const double nbias = norm_from_sumsq(db, n, reduce_store(p2, nrb, n, db, accumulate));
        if (out.bias_norm) *out.bias_norm = nbias;
      }
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// The dispatch: one case per row of gradchain/norm_list.h.
// ---------------------------------------------------------------------------
#define GC_NORM_DISPATCH(CALL)                                         \
  switch (kind) {                                                      \
    GC_NORM_LIST(CALL)                                                 \
  }                                                                    \
  throw std::invalid_argument("unknown norm kind " + std::to_string(int(kind)))

int64_t norm_workspace_values(NormKind kind, int64_t B, int64_t n) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<float, NormKind::E>::workspace_values(B, n);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

template <class T>
void norm_carve(NormKind kind, WorkspaceCarver<T>& ws, int64_t B, NormLayerView<T>& nv) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<T, NormKind::E>::carve(ws, B, nv);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

template <class T>
void norm_reset(NormKind kind, const NormLayerView<T>& nv) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<T, NormKind::E>::reset(nv);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

void norm_check_batch(NormKind kind, bool training, int64_t B) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<float, NormKind::E>::check_batch(training, B);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

template <class T>
void norm_forward(NormKind kind, const NormLayerView<T>& nv, const FwdArgs<T>& args,
                  const T* bias, bool training, double eps, T* z, T* d, const RowPass<T>& rp,
                  double* fchk) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<T, NormKind::E>::forward(nv, args, bias, training, eps, z, d, rp, fchk);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

template <class T>
void norm_commit(NormKind kind, const NormLayerView<T>& nv, const T* bias, bool training,
                 int64_t B, double momentum) {
#define GC_CASE(E, name, affine, running_stats) \
  case NormKind::E:                             \
    return NormLayer<T, NormKind::E>::commit(nv, bias, training, B, momentum);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

template <class T>
void norm_backward(NormKind kind, const NormLayerView<T>& nv, const T* g, const T* d, T scale,
                   bool select, bool want_ss, bool training, bool accumulate, T* dz, T* db,
                   const RowPass<T>& rp, const NormBackwardReport& out) {
#define GC_CASE(E, name, affine, running_stats)                                             \
  case NormKind::E:                                                                         \
    return NormLayer<T, NormKind::E>::backward(nv, g, d, scale, select, want_ss, training, \
                                               accumulate, dz, db, rp, out);
  GC_NORM_DISPATCH(GC_CASE);
#undef GC_CASE
}

#undef GC_NORM_DISPATCH

#define GC_NORM_INSTANTIATE(T)                                                                \
  template void norm_carve<T>(NormKind, WorkspaceCarver<T>&, int64_t, NormLayerView<T>&);    \
  template void norm_reset<T>(NormKind, const NormLayerView<T>&);                            \
  template void norm_forward<T>(NormKind, const NormLayerView<T>&, const FwdArgs<T>&,        \
                                const T*, bool, double, T*, T*, const RowPass<T>&, double*); \
  template void norm_commit<T>(NormKind, const NormLayerView<T>&, const T*, bool, int64_t,   \
                               double);                                                      \
  template void norm_backward<T>(NormKind, const NormLayerView<T>&, const T*, const T*, T,   \
                                 bool, bool, bool, bool, T*, T*, const RowPass<T>&,          \
                                 const NormBackwardReport&);
GC_NORM_INSTANTIATE(float)
GC_NORM_INSTANTIATE(double)
#undef GC_NORM_INSTANTIATE

}  // namespace gradchain
