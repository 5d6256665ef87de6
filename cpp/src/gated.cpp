// gated.cpp — the gated recurrent drivers: LSTM (torch.nn.LSTM) and GRU (torch.nn.GRU),
// one layer, optional readout. One class for both cells: they share the layout, the
// workspace plan, the threading and the merged GEMMs; the cell picks the fused step
// kernels (kernel table: lstm_fwd / lstm_bwd, gru_fwd / gru_bwd) and a few buffers.
//
// As in rnn.cpp, the time loops are parallel over fixed blocks of batch rows: sample
// b's chain only ever touches row b, so each thread runs the whole loop for its rows
// with no barrier per step. Everything over all T*B rows at once (input projection,
// readout, weight gradients, dL/dx) is one GEMM split by gemm_split. Every number is
// therefore identical for any thread count.
#include "gradchain/gated.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "gemm_block.h"
#include "gradchain/blas.h"
#include "gradchain/dispatch.h"
#include "gradchain/governor.h"
#include "gradchain/parallel.h"
#include "gradchain/report.h"

namespace gradchain {

using detail::gemm_block;

namespace {
// Rows per block of the time loops (a function of B only, never of the thread count).
inline int64_t step_rows(int64_t B) { return B <= 16 ? 8 : 16; }
// The per-step products run on the panel kernel with W_hh (G*H x H) packed once per
// pass while it stays cache-sized (the RNN's bound: 512 x 512 values); above, OpenBLAS.
inline bool panel_steps(int64_t GH, int64_t H) { return GH * H <= 512 * 512; }

// Forward step: C (rows x GH) (+)= A (rows x H) W_hh^T. Wp: W_hh^T packed (panel path) or
// W_hh itself.
template <class T>
inline void step_fwd_gemm(const KernelTable<T>& K, bool panel, int64_t rows, int64_t GH,
                          int64_t H, const T* A, const T* Wp, T* C, bool accumulate) {
  if (panel)
    K.gemm_panels(rows, GH, H, A, H, 1, Wp, C, GH, accumulate);
  else
    gemm(false, true, rows, GH, H, T(1), A, H, Wp, H, accumulate ? T(1) : T(0), C, GH);
}
// Backward step: C (rows x H) += A (rows x GH) W_hh. Wp: W_hh packed or W_hh itself.
template <class T>
inline void step_bwd_gemm(const KernelTable<T>& K, bool panel, int64_t rows, int64_t GH,
                          int64_t H, const T* A, const T* Wp, T* C) {
  if (panel)
    K.gemm_panels(rows, H, GH, A, GH, 1, Wp, C, H, true);
  else
    gemm(false, false, rows, H, GH, T(1), A, GH, Wp, H, T(1), C, H);
}
}  // namespace

template <class T>
std::string GatedChain<T>::describe() const {
  return std::string(lstm() ? "an LSTM" : "a GRU") +
         " with input_size=" + std::to_string(cfg_.input_size) +
         ", hidden_size=" + std::to_string(cfg_.hidden_size) +
         ", output_size=" + std::to_string(cfg_.output_size) + " (" +
         (sizeof(T) == 4 ? "float32" : "float64") + ")";
}

template <class T>
GatedChain<T>::GatedChain(GatedConfig cfg)
    : ChainBase<T>([this] { return describe(); }, false), cfg_(cfg), G_(cell_gates(cfg.cell)) {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t lim = int64_t(1) << 22;
  if (cfg_.cell != Cell::Lstm && cfg_.cell != Cell::Gru)
    throw std::invalid_argument("cell must be LSTM or GRU");
  if (I < 1 || I > lim) throw std::invalid_argument("input_size must be in [1, 2^22]");
  if (H < 1 || H > lim) throw std::invalid_argument("hidden_size must be in [1, 2^22]");
  if (K < 0 || K > lim) throw std::invalid_argument("output_size must be in [0, 2^22]");
  // (4H x 2^22 at most: no tensor can overflow the offsets)
  const int64_t GH = G_ * H;
  auto add = [this](const char* name, std::vector<int64_t> shape) {
    return this->add_tensor(name, std::move(shape), 0);
  };
  w_ih_ = add("weight_ih_l0", {GH, I});
  w_hh_ = add("weight_hh_l0", {GH, H});
  if (cfg_.bias) {
    b_ih_ = add("bias_ih_l0", {GH});
    b_hh_ = add("bias_hh_l0", {GH});
  }
  if (K > 0) {
    w_out_ = add("readout.weight", {K, H});
    if (cfg_.bias) b_out_ = add("readout.bias", {K});
  }
  this->allocate_tensors("the parameters and gradients of");
}

template <class T>
int64_t GatedChain<T>::workspace_values(int64_t steps, int64_t B) const {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, GH = G_ * H;
  const int64_t BH = B * H, TBH = steps * BH;
  // W_hh packed either way round, for any ISA's panels
  int64_t wp = H * detail::panel_round<T>(GH);
  const int64_t wb = GH * detail::panel_round<T>(H);
  if (wb > wp) wp = wb;
  int64_t n = steps * B * I + 2 * (TBH + BH) + 2 * steps * B * GH + 2 * GH + wp;  // X HS G A DZ
  if (lstm())
    n += (TBH + BH) + TBH + TBH;  // CS TC DC
  else
    n += TBH + B * GH + steps * B * GH;  // HN HB DHB
  return n;
}

template <class T>
int64_t GatedChain<T>::part_values(int64_t steps, int64_t B) const {
  const int64_t GH = G_ * cfg_.hidden_size, K = cfg_.output_size;
  const int64_t nrb = ceil_div(B, step_rows(B)), nrb_all = ceil_div(steps * B, kRowBlock);
  const int64_t a = nrb * 2 * GH, b = nrb_all * (K > 1 ? K : 1);
  return a > b ? a : b;
}

template <class T>
int64_t GatedChain<T>::stat_values(int64_t steps, int64_t B) const {
  const int64_t nrb = ceil_div(B, step_rows(B));
  return steps * nrb * (2 * G_ + 1) + steps * nrb * 2;
}

template <class T>
int64_t GatedChain<T>::slot_values(int64_t steps, int64_t B) const {
  // panel GEMM slots: inner dimensions I, G*H, K (or T*B for the weight gradients), packed
  // widths up to max(I, G*H, K)
  const int64_t I = cfg_.input_size, GH = G_ * cfg_.hidden_size, K = cfg_.output_size;
  int64_t maxk = I > GH ? I : GH, maxn = maxk;
  if (K > maxk) maxk = maxn = K;
  if (steps * B > maxk) maxk = steps * B;
  return detail::pack_slot<T>(maxk, maxn);
}

template <class T>
int64_t GatedChain<T>::pass_bytes(int64_t steps, int64_t B) const {
  if (steps < 1 || B < 1 || steps > kBlasIntMax / B) return 0;  // refused before allocating
  int64_t need = 0;
  if (steps != T_ || B != B_) {
    const int64_t fresh = workspace_values(steps, B) * int64_t(sizeof(T)) +
                          (part_values(steps, B) + stat_values(steps, B)) *
                              int64_t(sizeof(double));
    const int64_t held = ws_.size() * int64_t(sizeof(T)) +
                         (part_.size() + int64_t(fstat_.size() + bss_.size())) *
                             int64_t(sizeof(double));
    need = fresh > held ? fresh - held : 0;
  }
  const int64_t GH = G_ * cfg_.hidden_size;
  return need + detail::pack_scratch_bytes(pack_, slot_values(steps, B),
                                           max_threads_for(steps * B * GH * 4));
}

template <class T>
void GatedChain<T>::plan(int64_t steps, int64_t B) {
  if (steps == T_ && B == B_) return;
  if (steps > kBlasIntMax / B)  // the merged GEMMs run over all T*B rows
    throw std::invalid_argument("T*B = " + std::to_string(steps) + "*" + std::to_string(B) +
                                " rows exceed the BLAS's 32-bit limit (2^31-1)");
  has_forward_ = false;
  T_ = B_ = 0;
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, GH = G_ * H;
  const int64_t BH = B * H, TBH = steps * BH;
  const int64_t total = workspace_values(steps, B);
  const int64_t nrb = ceil_div(B, step_rows(B));
  // the old workspace goes first: the peak is the new one, not old + new
  ws_ = Buffer<T>();
  part_ = Buffer<double>();
  fstat_.clear();
  fstat_.shrink_to_fit();
  bss_.clear();
  bss_.shrink_to_fit();
  try {
    ws_ = Buffer<T>(total);
    part_ = Buffer<double>(part_values(steps, B));
    fstat_.assign(size_t(steps * nrb * (2 * G_ + 1)), 0.0);
    bss_.assign(size_t(steps * nrb * 2), 0.0);
  } catch (const std::bad_alloc&) {
    ws_ = Buffer<T>();
    part_ = Buffer<double>();
    throw AllocError(alloc_message(
        "the workspace for a sequence of T=" + std::to_string(steps) + " steps, batch " +
            std::to_string(B) + " of " + describe(),
        double(total) * double(sizeof(T)) +
            double(part_values(steps, B) + stat_values(steps, B)) * double(sizeof(double))));
  }
  int64_t wp = H * detail::panel_round<T>(GH);
  const int64_t wb = GH * detail::panel_round<T>(H);
  if (wb > wp) wp = wb;
  WorkspaceCarver<T> ws(ws_.data());
  X_ = ws.take(steps * B * I);
  HS_ = ws.take(TBH + BH);
  G_t_ = ws.take(TBH + BH);
  A_ = ws.take(steps * B * GH);
  DZ_ = ws.take(steps * B * GH);
  bias_ = ws.take(2 * GH);
  WT_ = ws.take(wp);
  if (lstm()) {
    CS_ = ws.take(TBH + BH);
    TC_ = ws.take(TBH);
    DC_ = ws.take(TBH);
    HN_ = HB_ = DHB_ = nullptr;
  } else {
    HN_ = ws.take(TBH);
    HB_ = ws.take(B * GH);
    DHB_ = ws.take(steps * B * GH);
    CS_ = TC_ = DC_ = nullptr;
  }
  nrb_ = nrb;
  pack_slot_ = slot_values(steps, B);
  T_ = steps;
  B_ = B;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
// y = h W_out^T + b_out over all T*B rows, with the bias pass's non-finite check per row
// block in part_. Called by every thread of a region (orphaned work-sharing loops).
template <class T>
void GatedChain<T>::readout_forward(T* ys) {
  const auto& Kt = kernels<T>();
  const int64_t H = cfg_.hidden_size, K = cfg_.output_size, TB = T_ * B_;
  const GemmSplit go = gemm_split(TB, K, H);
#pragma omp for schedule(static)
  for (int64_t blk = 0; blk < go.count; ++blk)
    if (!stopping())
      gemm_block(go, blk, false, true, TB, K, H, HS_ + B_ * H, H, params_.data() + w_out_, H,
                 T(0), ys, K, packs());
  const T* bo = b_out_ >= 0 ? params_.data() + b_out_ : nullptr;
  const int64_t nrb_all = ceil_div(TB, kRowBlock);
#pragma omp for schedule(static)
  for (int64_t rb = 0; rb < nrb_all; ++rb)
    part_.data()[rb] = Kt.add_bias(ys + rb * kRowBlock * K, bo, rows_in_block(rb, TB), K);
}

template <class T>
void GatedChain<T>::forward(const T* x, const T* h0, const T* c0, int64_t steps, int64_t B,
                            T* hs, T* cs, T* ys) {
  std::lock_guard<std::mutex> lock(mu_);
  if (steps < 1 || B < 1) throw std::invalid_argument("T and B must be >= 1");
  if (c0 && !lstm()) throw std::invalid_argument("c0: a GRU has no cell state");
  plan(steps, B);
  has_forward_ = false;
  const auto& Kt = kernels<T>();
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t GH = G_ * H, BH = B * H, BG = B * GH, TB = steps * B;
  const int64_t ns = 2 * G_ + 1;  // statistics per (step, row block)
  const T* W_ih = params_.data() + w_ih_;
  const T* W_hh = params_.data() + w_hh_;
  const bool is_lstm = lstm();
  std::memcpy(X_, x, size_t(TB * I) * sizeof(T));
  if (h0)
    std::memcpy(HS_, h0, size_t(BH) * sizeof(T));
  else
    std::memset(HS_, 0, size_t(BH) * sizeof(T));
  if (is_lstm) {
    if (c0)
      std::memcpy(CS_, c0, size_t(BH) * sizeof(T));
    else
      std::memset(CS_, 0, size_t(BH) * sizeof(T));
  }
  const T* bi = cfg_.bias ? params_.data() + b_ih_ : nullptr;
  const T* bh = cfg_.bias ? params_.data() + b_hh_ : nullptr;
  for (int64_t c = 0; c < GH; ++c) {
    if (is_lstm) {  // both biases add to every gate: one vector
      bias_[c] = bi ? T(bi[c] + bh[c]) : T(0);
    } else {  // the GRU's b_hn sits inside r * (W_hn h + b_hn): kept apart
      bias_[c] = bi ? bi[c] : T(0);
      bias_[GH + c] = bh ? bh[c] : T(0);
    }
  }
  const bool panel = panel_steps(GH, H);
  const T* Wp = W_hh;
  if (panel) {  // op(B) = W_hh^T (H x GH), packed once for all steps
    Kt.pack_panels(H, GH, W_hh, H, true, WT_);
    Wp = WT_;
  }
  const int64_t sr = step_rows(B);
  const int cap = work_threads(TB * GH * 2);
  GovernedRegion region(cap);
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  const int64_t nrb_all = ceil_div(TB, kRowBlock);
  stop_ = cancel_flag();  // cancelled: as in rnn.cpp (each thread skips its remaining work)

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    // x_t W_ih^T for all t and every gate block at once, into A
    const GemmSplit gi = gemm_split(TB, GH, I);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < gi.count; ++blk)
      if (!stopping())
        gemm_block(gi, blk, false, true, TB, GH, I, X_, I, W_ih, I, T(0), A_, GH, packs());

    // the time loop, each thread on its own rows
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      for (int64_t t = 1; t <= steps && !stopping(); ++t) {
        T* at = A_ + (t - 1) * BG + r0 * GH;
        const T* hp = HS_ + (t - 1) * BH + r0 * H;
        T* ht = HS_ + t * BH + r0 * H;
        double* st = fstat_.data() + ((t - 1) * nrb_ + rb) * ns;
        if (is_lstm) {
          // z_t = x_t W_ih^T + h_{t-1} W_hh^T, then the gates, c_t, h_t
          step_fwd_gemm(Kt, panel, rows, GH, H, hp, Wp, at, true);
          st[2 * G_] = Kt.lstm_fwd(at, bias_, CS_ + (t - 1) * BH + r0 * H, at,
                                   CS_ + t * BH + r0 * H, ht, TC_ + (t - 1) * BH + r0 * H, st,
                                   rows, H);
        } else {
          // h_{t-1} W_hh^T apart (b_hn sits inside the reset gate's product)
          T* hb = HB_ + r0 * GH;
          step_fwd_gemm(Kt, panel, rows, GH, H, hp, Wp, hb, false);
          st[2 * G_] = Kt.gru_fwd(at, hb, bias_, bias_ + GH, hp, at,
                                  HN_ + (t - 1) * BH + r0 * H, ht, st, rows, H);
        }
      }
    }
    if (K > 0) readout_forward(ys);
    region.leave();
  }
  region.done();
  if (stopping()) throw Cancelled();  // has_forward_ stays false
  fwd_nonfinite_ = -1;
  for (int64_t t = 1; t <= steps && fwd_nonfinite_ < 0; ++t)
    for (int64_t rb = 0; rb < nrb_; ++rb)
      if (std::isnan(fstat_[size_t(((t - 1) * nrb_ + rb) * ns + 2 * G_)])) {
        fwd_nonfinite_ = int(t);
        break;
      }
  if (K > 0 && fwd_nonfinite_ < 0)
    for (int64_t rb = 0; rb < nrb_all; ++rb)
      if (std::isnan(part_.data()[rb])) {
        fwd_nonfinite_ = int(steps + 1);
        break;
      }
  std::memcpy(hs, HS_ + BH, size_t(TB * H) * sizeof(T));
  if (cs && is_lstm) std::memcpy(cs, CS_ + BH, size_t(TB * H) * sizeof(T));
  has_forward_ = true;
}

// ---------------------------------------------------------------------------
// Backward (BPTT)
// ---------------------------------------------------------------------------
template <class T>
GatedReport GatedChain<T>::backward(const T* grad_hs, const T* grad_ys, T* dx, T* dh0, T* dc0,
                                    bool accumulate, bool report) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("backward() called before forward()");
  const auto& Kt = kernels<T>();
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t GH = G_ * H, steps = T_, B = B_, BH = B * H, BG = B * GH, TB = steps * B;
  const int64_t ns = 2 * G_ + 1;
  const T* W_ih = params_.data() + w_ih_;
  const T* W_hh = params_.data() + w_hh_;
  T* grads = grads_.data();
  const bool is_lstm = lstm();
  const int64_t sr = step_rows(B);
  GovernedRegion region(work_threads(TB * GH * 2));
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  const int64_t nrb_all = ceil_div(TB, kRowBlock);
  const bool readout = K > 0 && grad_ys != nullptr;
  double* part = part_.data();
  const int64_t pw = is_lstm ? GH : 2 * GH;  // bias partials per row block
  stop_ = cancel_flag();
  GatedReport rep;
  double ss_w_out = 0, ss_b_out = 0;

  // G[1..T] = grad_hs (direct gradients), G[0] = 0; the readout adds grad_ys W_out below.
  if (grad_hs)
    std::memcpy(G_t_ + BH, grad_hs, size_t(TB * H) * sizeof(T));
  else
    std::memset(G_t_ + BH, 0, size_t(TB * H) * sizeof(T));
  std::memset(G_t_, 0, size_t(BH) * sizeof(T));
  // op(B) = W_hh (G*H x H) for G_{t-1} += dz_t W_hh: packed once for all steps
  const bool panel = panel_steps(GH, H);
  const T* Wp = W_hh;
  if (panel) {
    Kt.pack_panels(GH, H, W_hh, H, false, WT_);
    Wp = WT_;
  }

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    if (K > 0) {
      T* dWo = grads + w_out_;
      if (readout) {
        // dW_out = gy^T h (K x H over all T*B rows), G += gy W_out
        const GemmSplit sw = gemm_split(K, H, TB);
        const GemmSplit sg = gemm_split(TB, H, K);
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < sw.count + sg.count; ++i) {
          if (stopping()) continue;
          if (i < sw.count)
            gemm_block(sw, i, true, false, K, H, TB, grad_ys, K, HS_ + BH, H,
                       accumulate ? T(1) : T(0), dWo, H, packs());
          else
            gemm_block(sg, i - sw.count, false, false, TB, H, K, grad_ys, K,
                       params_.data() + w_out_, H, T(1), G_t_ + BH, H, packs());
        }
        if (b_out_ >= 0) {
#pragma omp for schedule(static)
          for (int64_t rb = 0; rb < nrb_all; ++rb) {
            std::memset(part + rb * K, 0, size_t(K) * sizeof(double));
            Kt.col_sum(grad_ys + rb * kRowBlock * K, rows_in_block(rb, TB), K, part + rb * K);
          }
#pragma omp single
          ss_b_out = reduce_store(part, nrb_all, K, grads + b_out_, accumulate);
        }
      } else {
#pragma omp single
        {  // no readout gradient: its parameters get zero (or keep theirs when accumulating)
          if (!accumulate) {
            std::memset(dWo, 0, size_t(K * H) * sizeof(T));
            if (b_out_ >= 0) std::memset(grads + b_out_, 0, size_t(K) * sizeof(T));
          }
          ss_w_out = Kt.sumsq(dWo, K * H);
          if (b_out_ >= 0) ss_b_out = Kt.sumsq(grads + b_out_, K);
        }
      }
    }

    // The recurrent chain, each thread on its own rows, t = T..1: the fused gate pass
    // (dz, the bias partials, the sums of squares of the total dL/dh_t and dL/dc_t), then
    // G_{t-1} += dz_t W_hh (for t = 1 this is dL/dh_0).
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      double* db = part + rb * pw;
      std::memset(db, 0, size_t(pw) * sizeof(double));
      for (int64_t t = steps; t >= 1 && !stopping(); --t) {
        const int64_t o1 = (t - 1) * BH + r0 * H, og = (t - 1) * BG + r0 * GH;
        T* gt = G_t_ + t * BH + r0 * H;
        T* gp = G_t_ + (t - 1) * BH + r0 * H;
        double* ss = bss_.data() + ((t - 1) * nrb_ + rb) * 2;
        if (is_lstm) {
          const bool next = t < steps;
          Kt.lstm_bwd(gt, A_ + og, CS_ + o1, TC_ + o1, next ? DC_ + o1 + BH : nullptr,
                      next ? A_ + og + BG : nullptr, DC_ + o1, DZ_ + og, db, report, ss, rows,
                      H);
          step_bwd_gemm(Kt, panel, rows, GH, H, DZ_ + og, Wp, gp);
        } else {
          ss[0] = Kt.gru_bwd(gt, A_ + og, HN_ + o1, HS_ + o1, DZ_ + og, DHB_ + og, gp, db,
                             db + GH, report, rows, H);
          ss[1] = 0.0;
          step_bwd_gemm(Kt, panel, rows, GH, H, DHB_ + og, Wp, gp);
        }
      }
    }

    // Merged over all T*B rows: dW_ih = dz^T x, dW_hh = dz_h^T h_{t-1}, dx = dz W_ih.
    const T* DH = is_lstm ? DZ_ : DHB_;
    const GemmSplit s1 = gemm_split(GH, I, TB);
    const GemmSplit s2 = gemm_split(GH, H, TB);
    const GemmSplit s3 = gemm_split(TB, I, GH);
    const T beta = accumulate ? T(1) : T(0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < s1.count + s2.count + (dx ? s3.count : 0); ++i) {
      if (stopping()) continue;
      if (i < s1.count)
        gemm_block(s1, i, true, false, GH, I, TB, DZ_, GH, X_, I, beta, grads + w_ih_, I,
                   packs());
      else if (i < s1.count + s2.count)
        gemm_block(s2, i - s1.count, true, false, GH, H, TB, DH, GH, HS_, H, beta,
                   grads + w_hh_, H, packs());
      else
        gemm_block(s3, i - s1.count - s2.count, false, false, TB, I, GH, DZ_, GH, W_ih, I,
                   T(0), dx, I, packs());
    }
#pragma omp single
    if (cfg_.bias) {  // the bias gradients: row-block partials summed in block order
      // LSTM: db_ih = db_hh = sum of dz; GRU: the input and recurrent sides apart
      const int64_t off_h = is_lstm ? 0 : GH;
      for (int64_t c = 0; c < GH; ++c) {
        double si = 0.0, sh = 0.0;
        for (int64_t b = 0; b < nrb_; ++b) {
          si += part[b * pw + c];
          sh += part[b * pw + off_h + c];
        }
        T* gi = grads + b_ih_ + c;
        T* gh = grads + b_hh_ + c;
        *gi = accumulate ? T(*gi + T(si)) : T(si);
        *gh = accumulate ? T(*gh + T(sh)) : T(sh);
      }
    }
    region.leave();
  }
  region.done();

  if (stopping()) throw Cancelled();
  rep.forward_first_nonfinite = fwd_nonfinite_;
  if (is_lstm && dc0) {  // dL/dc_0 = dL/dc_1 * f_1
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < H; ++j) dc0[i * H + j] = DC_[i * H + j] * A_[i * GH + H + j];
  }
  if (dh0) std::memcpy(dh0, G_t_, size_t(BH) * sizeof(T));
  // the gate statistics (forward quantities: kept with report = false too)
  rep.gate_mean.assign(size_t(G_ * steps), 0.0);
  rep.gate_sat.assign(size_t(G_ * steps), 0.0);
  const double per_step = double(B) * double(H);
  for (int64_t t = 1; t <= steps; ++t)
    for (int g = 0; g < G_; ++g) {
      double s = 0.0, n = 0.0;
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const double* st = fstat_.data() + ((t - 1) * nrb_ + rb) * ns;
        s += st[2 * g];
        n += st[2 * g + 1];
      }
      rep.gate_mean[size_t(g * steps + t - 1)] = s / per_step;
      rep.gate_sat[size_t(g * steps + t - 1)] = n / per_step;
    }
  if (!report) return rep;  // gradients only: the report's norms stay 0

  rep.timestep.assign(size_t(steps), 0.0);
  if (is_lstm) rep.cell.assign(size_t(steps), 0.0);
  for (int64_t t = steps; t >= 1; --t) {
    double sh = 0.0, sc = 0.0;
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      sh += bss_[size_t(((t - 1) * nrb_ + rb) * 2)];
      sc += bss_[size_t(((t - 1) * nrb_ + rb) * 2 + 1)];
    }
    const double nh = norm_from_sumsq(G_t_ + t * BH, BH, sh);
    rep.timestep[size_t(t - 1)] = nh;
    bool bad = has_nonfinite(sh, nh);
    if (is_lstm) {
      const double nc = norm_from_sumsq(DC_ + (t - 1) * BH, BH, sc);
      rep.cell[size_t(t - 1)] = nc;
      bad = bad || has_nonfinite(sc, nc);
    }
    if (rep.first_nonfinite < 0 && bad) rep.first_nonfinite = int(t);
  }
  rep.h0 = tensor_norm(G_t_, BH);
  if (is_lstm && dc0) rep.c0 = tensor_norm(dc0, BH);
  // per tensor and per gate block: block k is rows k*H..(k+1)*H of each stacked tensor
  auto blocks = [&](int64_t off, int64_t cols, std::vector<double>& out) {
    out.assign(size_t(G_), 0.0);
    std::vector<double> ss(static_cast<size_t>(G_), 0.0);
    double total = 0.0;
    for (int g = 0; g < G_; ++g) {
      const T* p = grads + off + int64_t(g) * H * cols;
      ss[size_t(g)] = Kt.sumsq(p, H * cols);
      out[size_t(g)] = norm_from_sumsq(p, H * cols, ss[size_t(g)]);
      total += ss[size_t(g)];
    }
    return std::isfinite(total) ? std::sqrt(total) : combine_norms(out);
  };
  rep.weight_ih = blocks(w_ih_, I, rep.w_ih_gate);
  rep.weight_hh = blocks(w_hh_, H, rep.w_hh_gate);
  if (cfg_.bias) {
    rep.bias_ih = blocks(b_ih_, 1, rep.b_ih_gate);
    rep.bias_hh = blocks(b_hh_, 1, rep.b_hh_gate);
  } else {
    rep.b_ih_gate.assign(size_t(G_), 0.0);
    rep.b_hh_gate.assign(size_t(G_), 0.0);
  }
  if (K > 0) {
    if (readout) ss_w_out = Kt.sumsq(grads + w_out_, K * H);
    rep.readout_weight = norm_from_sumsq(grads + w_out_, K * H, ss_w_out);
    if (b_out_ >= 0) rep.readout_bias = norm_from_sumsq(grads + b_out_, K, ss_b_out);
  }
  std::vector<double> all = {rep.weight_ih, rep.weight_hh};
  if (cfg_.bias) {
    all.push_back(rep.bias_ih);
    all.push_back(rep.bias_hh);
  }
  if (K > 0) {
    all.push_back(rep.readout_weight);
    if (b_out_ >= 0) all.push_back(rep.readout_bias);
  }
  rep.global_norm = combine_norms(all);
  return rep;
}

template class GatedChain<float>;
template class GatedChain<double>;

}  // namespace gradchain
