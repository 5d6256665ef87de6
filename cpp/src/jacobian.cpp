// jacobian.cpp — the MLP linearised at given inputs (gradchain/jacobian.h): a primal
// forward pass into the linearisation's own workspace, then tangent rows pushed forward
// (forward mode: per layer one GEMM and one elementwise pass through the kernel table's
// tangent rows) or cotangent rows pulled back (reverse mode, with every row's squared norm
// at every layer: the probes' per-layer factors).
//
// Parallel structure as in mlp.cpp: GEMMs over the fixed blocks of gemm_split, elementwise
// work over fixed row blocks, every reduction within one row: no number depends on the
// thread count. One OpenMP region per primal layer (a custom activation calls back into
// Python between them), one region for a whole tangent pass. Threads from the runtime's
// pass_threads (these passes do not teach the governor).
#include "gradchain/jacobian.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gradchain/blas.h"
#include "gradchain/cancel.h"
#include "gradchain/dispatch.h"
#include "gradchain/governor.h"
#include "gradchain/parallel.h"
#include "gemm_block.h"

namespace gradchain {

using detail::gemm_block;

template <class T>
MlpLinearization<T>::MlpLinearization(MlpChain<T>& c, const T* x, int64_t B, bool forward_only,
                                      T* pre, T* y)
    : c_(c),
      B_(B),
      L_(c.L_),
      in_(c.cfg_.sizes.front()),
      out_(c.cfg_.sizes.back()),
      maxw_(c.maxw_),
      forward_only_(forward_only) {
  std::lock_guard<std::mutex> lock(c.mu_);
  const MlpConfig& cfg = c.cfg_;
  if (B < 1) throw std::invalid_argument("batch size must be >= 1");
  if (B > kBlasIntMax)
    throw std::invalid_argument("batch size " + std::to_string(B) +
                                " exceeds the BLAS's 32-bit limit (2^31-1)");
  if (cfg.norm == NormKind::Batch && c.training && !forward_only)
    throw std::invalid_argument(
        "batch norm in training mode normalises with the batch's own statistics, so its "
        "Jacobian couples the samples of the batch; put the model in eval mode "
        "(model.eval()) to linearise it with its running statistics");
  norm_check_batch(cfg.norm, c.training, B);
  const bool custom = cfg.act.kind == Act::Custom;
  if (custom && !c.custom_) throw std::logic_error("custom activation has no callable");

  // The primal's workspace: a_0..a_L, m_0..m_{L-1} (act', then times the norm's factor),
  // each norm's xhat and statistics; the row passes' scratch.
  int64_t total = B * in_ + 3 * maxw_;
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = c.layers_[size_t(l)].out;
    total += 2 * B * h + norm_workspace_values(cfg.norm, B, h);
  }
  ws_ = Buffer<T>(total, "the primal pass of a linearisation");
  const int64_t nrb = ceil_div(B, kRowBlock);
  Buffer<double> dbl(3 * nrb * maxw_ + 2 * nrb + 4 * maxw_, "the primal pass of a linearisation");
  WorkspaceCarver<T> ws(ws_.data());
  A_.assign(size_t(L_ + 1), nullptr);
  M_.assign(size_t(L_), nullptr);
  views_.assign(c.norms_.begin(), c.norms_.end());
  A_[0] = ws.take(B * in_);
  double* part = dbl.data();
  double* blk = part + 3 * nrb * maxw_;
  double* fchk = blk + nrb;
  double* colsum0 = fchk + nrb;
  double* colsum1 = colsum0 + maxw_;
  double* bstat = colsum1 + maxw_;  // a training-mode batch norm's statistics (never committed)
  for (int64_t l = 0; l < L_; ++l) {
    const int64_t h = c.layers_[size_t(l)].out;
    A_[size_t(l) + 1] = ws.take(B * h);
    M_[size_t(l)] = ws.take(B * h);
    NormLayerView<T>& nv = views_[size_t(l)];
    norm_carve(cfg.norm, ws, B, nv);
    if (nv.batch_mean) {
      nv.batch_mean = bstat;
      nv.batch_var = bstat + maxw_;
    }
  }
  RowPass<T> rp;
  rp.B = B;
  rp.nrb = nrb;
  rp.maxw = maxw_;
  rp.part = part;
  rp.blk = blk;
  rp.colsum0 = colsum0;
  rp.colsum1 = colsum1;
  rp.coef = ws.take(3 * maxw_);
  std::memcpy(A_[0], x, size_t(B * in_) * sizeof(T));

  const auto& K = kernels<T>();
  const int nt = pass_threads(c.work_cap(B));
  const int64_t slot = detail::pack_slot<T>(std::max(B, maxw_), maxw_);
  const PackScratch<T> ps{detail::pack_scratch(pack_, slot, nt), slot};
  const std::atomic<bool>* stop = cancel_flag();
  T* pre_at = pre;
  for (int64_t l = 0; l < L_; ++l) {
    if (is_set(stop)) throw Cancelled();
    const auto& ly = c.layers_[size_t(l)];
    const int64_t n = ly.out, k = ly.in;
    const T* W = c.params_.data() + ly.w;
    const T* b = ly.b >= 0 ? c.params_.data() + ly.b : nullptr;
    const T* in = A_[size_t(l)];
    T* out = A_[size_t(l) + 1];
    T* d = M_[size_t(l)];
    const bool res = cfg.residual[size_t(l)] != 0;
    FwdArgs<T> args;
    args.act = cfg.act;
    if (custom) args.act.kind = Act::Identity;  // the callback finishes the layer below
    args.resid = (!custom && res) ? in : nullptr;
    args.alpha = T(cfg.residual_scale);
    args.eps = T(cfg.eps);
    const GemmSplit gs = gemm_split(B, n, k);
    T* pre_l = pre_at;
    const NormLayerView<T>& nv = views_[size_t(l)];
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)  // z = a_l W^T over fixed GEMM blocks
      for (int64_t i = 0; i < gs.count; ++i)
        gemm_block(gs, i, false, true, B, n, k, in, k, W, k, T(0), out, n, ps);
      if (pre_l) {  // keep z + b: the bias goes in here, not in the norm's pass
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb; ++rb) {
          const int64_t r0 = rb * kRowBlock, rows = rows_in_block(rb, B);
          K.add_bias(out + r0 * n, b, rows, n);
          std::memcpy(pre_l + r0 * n, out + r0 * n, size_t(rows * n) * sizeof(T));
        }
      }
      norm_forward(cfg.norm, nv, args, pre_l ? nullptr : b, c.training, cfg.eps, out, d, rp, fchk);
    }
    if (pre_at) pre_at += B * n;
    if (custom) {  // serial, outside the region: the callback takes the GIL
      c.custom_(out, out, d, B, n);
      if (res) {
        const T alpha = T(cfg.residual_scale);
        for (int64_t i = 0; i < B * n; ++i) out[i] = in[i] + alpha * out[i];
      }
    }
  }
  if (y) {
    const auto& ly = c.layers_[size_t(L_)];
    const int64_t n = ly.out, k = ly.in;
    const T* W = c.params_.data() + ly.w;
    const T* b = ly.b >= 0 ? c.params_.data() + ly.b : nullptr;
    const GemmSplit gs = gemm_split(B, n, k);
    const T* a = A_[size_t(L_)];
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < gs.count; ++i)
        gemm_block(gs, i, false, true, B, n, k, a, k, W, k, T(0), y, n, ps);
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb)
        K.add_bias(y + rb * kRowBlock * n, b, rows_in_block(rb, B), n);
    }
  }
  if (is_set(stop)) throw Cancelled();
  // m_l = act' x the norm's per-feature factor: gamma / sqrt(running_var + eps) (batch norm,
  // eval mode), gamma (layer norm; its projection is applied per row), 1 (none).
  if (!forward_only && cfg.norm != NormKind::None) {
    for (int64_t l = 0; l < L_; ++l) {
      const NormLayerView<T>& nv = views_[size_t(l)];
      const int64_t n = nv.n;
      T* m = M_[size_t(l)];
      for (int64_t s = 0; s < B; ++s)
        for (int64_t j = 0; j < n; ++j)
          m[s * n + j] *= cfg.norm == NormKind::Batch ? T(nv.gamma[j] * nv.col_istd[j])
                                                       : nv.gamma[j];
    }
  }
}

template <class T>
void MlpLinearization<T>::tangent_space(int64_t R) {
  if (R <= tw_rows_) return;
  tw_ = Buffer<T>();  // released first: the peak is the new size, not old + new
  tw_ = Buffer<T>(3 * R * maxw_, "the tangent rows of a linearisation");
  tw_rows_ = R;
}

template <class T>
int MlpLinearization<T>::tangent_threads(int64_t R) const {
  return pass_threads(c_.work_cap(R));
}

namespace {
void check_rows(int64_t R, int64_t B) {
  if (R < 1 || R % B != 0)
    throw std::invalid_argument("expected a positive multiple of the linearisation's batch (" +
                                std::to_string(B) + ") of rows, got " + std::to_string(R));
  if (R > kBlasIntMax)
    throw std::invalid_argument(std::to_string(R) +
                                " rows exceed the BLAS's 32-bit limit (2^31-1)");
}
}  // namespace

template <class T>
void MlpLinearization<T>::jvp(const T* V, int64_t R, T* out,
                              const std::vector<std::pair<int64_t, T*>>& rec) {
  std::lock_guard<std::mutex> lock(c_.mu_);
  if (forward_only_) throw std::logic_error("this linearisation kept its forward pass only");
  check_rows(R, B_);
  std::vector<T*> dest(size_t(L_ + 1), nullptr);
  for (const auto& p : rec) {
    if (p.first < 0 || p.first > L_)
      throw std::invalid_argument("record: layer " + std::to_string(p.first) +
                                  " is not in 0.." + std::to_string(L_));
    dest[size_t(p.first)] = p.second;
  }
  tangent_space(R);
  const MlpConfig& cfg = c_.cfg_;
  T* P = tw_.data();
  T* Q = P + R * maxw_;
  std::memcpy(P, V, size_t(R * in_) * sizeof(T));
  if (dest[0]) std::memcpy(dest[0], V, size_t(R * in_) * sizeof(T));
  const auto& K = kernels<T>();
  const int nt = tangent_threads(R);
  const int64_t slot = detail::pack_slot<T>(std::max(R, maxw_), maxw_);
  const PackScratch<T> ps{detail::pack_scratch(pack_, slot, nt), slot};
  const std::atomic<bool>* stop = cancel_flag();
  const int64_t nrb = ceil_div(R, kRowBlock);
  const bool ln = cfg.norm == NormKind::Layer;
#pragma omp parallel num_threads(nt)
  {
    T* p = P;  // every thread swaps its own copies identically
    T* q = Q;
    for (int64_t l = 0; l < L_; ++l) {
      const auto& ly = c_.layers_[size_t(l)];
      const int64_t n = ly.out, k = ly.in;
      const T* W = c_.params_.data() + ly.w;
      const bool res = cfg.residual[size_t(l)] != 0;
      const T scale = res ? T(cfg.residual_scale) : T(1);
      const GemmSplit gs = gemm_split(R, n, k);
#pragma omp for schedule(static)  // u = t_l W^T: the tangents of z
      for (int64_t i = 0; i < gs.count; ++i)
        if (!is_set(stop)) gemm_block(gs, i, false, true, R, n, k, p, k, W, k, T(0), q, n, ps);
      const T* m = M_[size_t(l)];
      const NormLayerView<T>& nv = views_[size_t(l)];
#pragma omp for schedule(static)  // t_{l+1} = [t_l +] scale * m * (norm's Jacobian) u
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t r0 = rb * kRowBlock, r1 = r0 + rows_in_block(rb, R);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t s = r % B_;
          const T* resid = res ? p + r * k : nullptr;
          if (ln)
            K.tan_fwd_ln(q + r * n, m + s * n, nv.xhat + s * n, nv.row_istd[s], scale, resid,
                         q + r * n, n);
          else
            K.tan_fwd(q + r * n, m + s * n, scale, resid, q + r * n, n);
        }
      }
      std::swap(p, q);
      if (T* d = dest[size_t(l) + 1]) {
#pragma omp for schedule(static)
        for (int64_t rb = 0; rb < nrb; ++rb)
          std::memcpy(d + rb * kRowBlock * n, p + rb * kRowBlock * n,
                      size_t(rows_in_block(rb, R) * n) * sizeof(T));
      }
    }
    const auto& ly = c_.layers_[size_t(L_)];
    const int64_t n = ly.out, k = ly.in;
    const T* W = c_.params_.data() + ly.w;
    const GemmSplit gs = gemm_split(R, n, k);
#pragma omp for schedule(static)  // the tangents of y (no bias: it is constant)
    for (int64_t i = 0; i < gs.count; ++i)
      if (!is_set(stop)) gemm_block(gs, i, false, true, R, n, k, p, k, W, k, T(0), out, n, ps);
  }
  if (is_set(stop)) throw Cancelled();
}

template <class T>
void MlpLinearization<T>::vjp(const T* U, int64_t R, T* dx, double* rowss) {
  std::lock_guard<std::mutex> lock(c_.mu_);
  if (forward_only_) throw std::logic_error("this linearisation kept its forward pass only");
  check_rows(R, B_);
  tangent_space(R);
  const MlpConfig& cfg = c_.cfg_;
  T* G = tw_.data();
  T* H = G + R * maxw_;
  T* DZ = H + R * maxw_;
  const auto& K = kernels<T>();
  const int nt = tangent_threads(R);
  const int64_t slot = detail::pack_slot<T>(std::max(R, maxw_), maxw_);
  const PackScratch<T> ps{detail::pack_scratch(pack_, slot, nt), slot};
  const std::atomic<bool>* stop = cancel_flag();
  const int64_t nrb = ceil_div(R, kRowBlock);
  const bool ln = cfg.norm == NormKind::Layer;
#pragma omp parallel num_threads(nt)
  {
    T* g = G;  // every thread swaps its own copies identically
    T* h = H;
    {
      const auto& ly = c_.layers_[size_t(L_)];
      const int64_t n = ly.out, k = ly.in;
      const T* W = c_.params_.data() + ly.w;
      const GemmSplit gs = gemm_split(R, k, n);
#pragma omp for schedule(static)  // g_L = u W_out
      for (int64_t i = 0; i < gs.count; ++i)
        if (!is_set(stop)) gemm_block(gs, i, false, false, R, k, n, U, n, W, k, T(0), g, k, ps);
    }
    for (int64_t l = L_ - 1; l >= 0; --l) {
      const auto& ly = c_.layers_[size_t(l)];
      const int64_t n = ly.out, k = ly.in;
      const T* W = c_.params_.data() + ly.w;
      const bool res = cfg.residual[size_t(l)] != 0;
      const T scale = res ? T(cfg.residual_scale) : T(1);
      const T* m = M_[size_t(l)];
      const NormLayerView<T>& nv = views_[size_t(l)];
      double* ss = rowss + (l + 1) * R;
#pragma omp for schedule(static)  // dz = scale * (norm's Jacobian)^T (m * g); ||g_row||^2
      for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t r0 = rb * kRowBlock, r1 = r0 + rows_in_block(rb, R);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t s = r % B_;
          ss[r] = ln ? K.tan_bwd_ln(g + r * n, m + s * n, nv.xhat + s * n, nv.row_istd[s], scale,
                                    DZ + r * n, n)
                     : K.tan_bwd(g + r * n, m + s * n, scale, DZ + r * n, n);
        }
      }
      T* gout = res ? g : h;
      const GemmSplit gs = gemm_split(R, k, n);
#pragma omp for schedule(static)  // g_l = dz W [+ g_{l+1}]
      for (int64_t i = 0; i < gs.count; ++i)
        if (!is_set(stop))
          gemm_block(gs, i, false, false, R, k, n, DZ, n, W, k, res ? T(1) : T(0), gout, k, ps);
      if (!res) std::swap(g, h);
    }
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRowBlock, r1 = r0 + rows_in_block(rb, R);
      for (int64_t r = r0; r < r1; ++r) rowss[r] = K.sumsq(g + r * in_, in_);
    }
    if (dx) {
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < nrb; ++rb)
        std::memcpy(dx + rb * kRowBlock * in_, g + rb * kRowBlock * in_,
                    size_t(rows_in_block(rb, R) * in_) * sizeof(T));
    }
  }
  if (is_set(stop)) throw Cancelled();
}

template class MlpLinearization<float>;
template class MlpLinearization<double>;

}  // namespace gradchain
