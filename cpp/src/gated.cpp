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

#include <algorithm>
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
#include "gradchain/per_example_rnn.h"
#include "gradchain/report.h"

namespace gradchain {

using detail::gemm_block;

using recurrent::panel_steps;
using recurrent::step_bwd_gemm;
using recurrent::step_fwd_gemm;
using recurrent::step_rows;

namespace {
// The cell's gate count; refuses an unknown cell before anything is laid out.
int checked_gates(Cell c) {
  if (c != Cell::Lstm && c != Cell::Gru) throw std::invalid_argument("cell must be LSTM or GRU");
  return cell_gates(c);
}
}  // namespace

// (4H x 2^22 at most: no tensor can overflow the offsets)
template <class T>
GatedChain<T>::GatedChain(GatedConfig cfg)
    : RecurrentChain<T>(cfg.cell == Cell::Lstm ? "an LSTM" : "a GRU", checked_gates(cfg.cell),
                        cfg.input_size, cfg.hidden_size, cfg.output_size, cfg.bias, 22),
      cfg_(cfg),
      G_(cell_gates(cfg.cell)) {}

template <class T>
int64_t GatedChain<T>::workspace_values(int64_t steps, int64_t B) const {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, GH = G_ * H;
  const int64_t BH = B * H, TBH = steps * BH;
  // W_hh packed either way round, for any ISA's panels
  int64_t wp = H * detail::panel_round<T>(GH);
  const int64_t wb = GH * detail::panel_round<T>(H);
  if (wb > wp) wp = wb;
  int64_t n = steps * B * I + 2 * (TBH + BH) + 2 * steps * B * GH + 2 * GH + wp;  // X HS G A DZ
  n += steps * ceil_div(B, step_rows(B)) * H;  // UM (the health report's unit maxima)
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
  return steps * nrb * (2 * G_ + 1) + steps * nrb * 2 + steps * nrb * 6;  // + hfwd_, hbwd_
}

template <class T>
int64_t GatedChain<T>::pass_bytes(int64_t steps, int64_t B) const {
  if (steps < 1 || B < 1 || steps > kBlasIntMax / B) return 0;  // refused before allocating
  const int64_t fresh = workspace_values(steps, B) * int64_t(sizeof(T)) +
                        (part_values(steps, B) + stat_values(steps, B)) * int64_t(sizeof(double));
  const int64_t held = ws_.size() * int64_t(sizeof(T)) +
                       (part_.size() +
                        int64_t(fstat_.size() + bss_.size() + hfwd_.size() + hbwd_.size())) *
                           int64_t(sizeof(double));
  int64_t bytes = this->pass_bytes_for(steps, B, fresh, held, this->slot_for(steps, B),
                                       steps * B * GH_ * 4);
  const int64_t I = I_, H = H_;
  if (rnn_example_fuses(this->example_path, steps, B, I, H, G_)) {  // dW's block sums, slots
    const int64_t pe = rnn_example_sum_values(B, I, H, G_) +
                       rnn_example_workspace(false, steps, I, H, K_, G_) *
                           max_threads_for(steps * B * GH_ * (I + H));
    if (pe > pe_ws_.size()) bytes += (pe - pe_ws_.size()) * int64_t(sizeof(T));
  }
  return bytes;
}

template <class T>
void GatedChain<T>::plan(int64_t steps, int64_t B) {
  if (steps == T_ && B == B_) return;
  this->begin_plan(steps, B);
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, GH = G_ * H;
  const int64_t BH = B * H, TBH = steps * BH;
  const int64_t total = workspace_values(steps, B);
  const int64_t nrb = ceil_div(B, step_rows(B));
  fstat_.clear();
  fstat_.shrink_to_fit();
  bss_.clear();
  bss_.shrink_to_fit();
  hfwd_.clear();
  hfwd_.shrink_to_fit();
  hbwd_.clear();
  hbwd_.shrink_to_fit();
  fwd_health_ = false;
  try {
    ws_ = Buffer<T>(total);
    part_ = Buffer<double>(part_values(steps, B));
    fstat_.assign(size_t(steps * nrb * (2 * G_ + 1)), 0.0);
    bss_.assign(size_t(steps * nrb * 2), 0.0);
    hfwd_.assign(size_t(steps * nrb * 2), 0.0);
    hbwd_.assign(size_t(steps * nrb * 4), 0.0);
  } catch (const std::bad_alloc&) {
    this->plan_failed(steps, B,
                      double(total) * double(sizeof(T)) +
                          double(part_values(steps, B) + stat_values(steps, B)) *
                              double(sizeof(double)));
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
  UM_ = ws.take(steps * nrb * H);
  nrb_ = nrb;
  pack_slot_ = this->slot_for(steps, B);
  T_ = steps;
  B_ = B;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
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
  this->load_inputs(x, h0, steps, B);
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
  const bool health = forensics;  // the forward's health statistics (unit maxima, |h|, |c|)
  fwd_health_ = false;
  const int cap = work_threads(TB * GH * 2);
  GovernedRegion region(cap);
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
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
        const int64_t hi = (t - 1) * nrb_ + rb;
        GateHealth<T> hl;
        if (health) {
          hl.umax = UM_ + hi * H;
          std::fill(hl.umax, hl.umax + H, T(0));
        }
        if (is_lstm) {
          // z_t = x_t W_ih^T + h_{t-1} W_hh^T, then the gates, c_t, h_t
          step_fwd_gemm(Kt, panel, rows, GH, H, hp, Wp, at, true);
          st[2 * G_] = Kt.lstm_fwd(at, bias_, CS_ + (t - 1) * BH + r0 * H, at,
                                   CS_ + t * BH + r0 * H, ht, TC_ + (t - 1) * BH + r0 * H, st,
                                   rows, H, health ? &hl : nullptr);
        } else {
          // h_{t-1} W_hh^T apart (b_hn sits inside the reset gate's product)
          T* hb = HB_ + r0 * GH;
          step_fwd_gemm(Kt, panel, rows, GH, H, hp, Wp, hb, false);
          st[2 * G_] = Kt.gru_fwd(at, hb, bias_, bias_ + GH, hp, at,
                                  HN_ + (t - 1) * BH + r0 * H, ht, st, rows, H,
                                  health ? &hl : nullptr);
        }
        if (health) {
          hfwd_[size_t(2 * hi)] = hl.abs_h;
          hfwd_[size_t(2 * hi + 1)] = hl.abs_c;
        }
      }
    }
    if (K > 0) this->readout_forward(ys);
    region.leave();
  }
  region.done();
  if (stopping()) throw Cancelled();  // has_forward_ stays false
  fwd_nonfinite_ = this->scan_forward(fstat_.data() + 2 * G_, ns);
  fwd_health_ = health;
  fwd_stage_ = NonfiniteStage::None;
  if (fwd_nonfinite_ > 0 && forensics) fwd_stage_ = diagnose_forward(fwd_nonfinite_);
  std::memcpy(hs, HS_ + BH, size_t(TB * H) * sizeof(T));
  if (cs && is_lstm) std::memcpy(cs, CS_ + BH, size_t(TB * H) * sizeof(T));
  has_forward_ = true;
}

// ---------------------------------------------------------------------------
// Backward (BPTT)
// ---------------------------------------------------------------------------
template <class T>
GatedReport GatedChain<T>::backward(const T* grad_hs, const T* grad_ys, T* dx, T* dh0, T* dc0,
                                    bool accumulate, bool report, bool per_example) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("backward() called before forward()");
  if (per_example && !report)
    throw std::invalid_argument("per_example: the per-example norms need report=True");
  const auto& Kt = kernels<T>();
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t GH = G_ * H, steps = T_, B = B_, BH = B * H, BG = B * GH, TB = steps * B;
  const int64_t ns = 2 * G_ + 1;
  const T* W_hh = params_.data() + w_hh_;
  T* grads = grads_.data();
  const bool is_lstm = lstm();
  const int64_t sr = step_rows(B);
  GovernedRegion region(work_threads(TB * GH * 2));
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  const bool readout = K > 0 && grad_ys != nullptr;
  double* part = part_.data();
  const int64_t pw = is_lstm ? GH : 2 * GH;  // bias partials per row block
  const bool health = report && forensics && fwd_health_;
  stop_ = cancel_flag();
  GatedReport rep;
  double ss_w_out = 0, ss_b_out = 0;
  // dW_ih, dW_hh as the sum of the examples' own gradients on the shapes where that is
  // about as fast as the merged GEMMs, per_example or not (per_example_rnn.h)
  const bool fused = rnn_example_fuses(this->example_path, steps, B, I, H, G_);

  // G[1..T] = grad_hs (direct gradients), G[0] = 0; the readout adds grad_ys W_out below.
  // Without a readout, G[t] for t < T is loaded step by step in the loop below.
  const bool by_step = this->stepwise_grad_hs(grad_hs);
  this->load_grad_hs(grad_hs, G_t_, by_step);
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
    if (K > 0) this->readout_backward(readout ? grad_ys : nullptr, G_t_, accumulate, ss_w_out,
                                      ss_b_out);

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
        GateHealth<T> hl;  // the zero / subnormal counts of dL/dh_t, dL/dc_t (health)
        if (by_step && t > 1) this->load_grad_rows(grad_hs, G_t_, t - 1, r0, rows);
        if (is_lstm) {
          const bool next = t < steps;
          Kt.lstm_bwd(gt, A_ + og, CS_ + o1, TC_ + o1, next ? DC_ + o1 + BH : nullptr,
                      next ? A_ + og + BG : nullptr, DC_ + o1, DZ_ + og, db, report, ss, rows,
                      H, health ? &hl : nullptr);
          step_bwd_gemm(Kt, panel, rows, GH, H, DZ_ + og, Wp, gp);
        } else {
          ss[0] = Kt.gru_bwd(gt, A_ + og, HN_ + o1, HS_ + o1, DZ_ + og, DHB_ + og, gp, db,
                             db + GH, report, rows, H, health ? &hl : nullptr);
          ss[1] = 0.0;
          step_bwd_gemm(Kt, panel, rows, GH, H, DHB_ + og, Wp, gp);
        }
        if (health) {
          double* hc = hbwd_.data() + ((t - 1) * nrb_ + rb) * 4;
          hc[0] = hl.zeros, hc[1] = hl.subnormals, hc[2] = hl.c_zeros, hc[3] = hl.c_subnormals;
        }
      }
    }

    // Merged over all T*B rows: dW_ih = dz^T x, dW_hh = dz_h^T h_{t-1}, dx = dz W_ih.
    const T* DH = is_lstm ? DZ_ : DHB_;
    this->weight_grads(DZ_, DH, dx, accumulate, /*weights=*/!fused);
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
  if (per_example || fused) {  // per_example_rnn.cpp: dz (the GRU's W_hh side apart)
    RnnExampleInputs<T> in;
    in.steps = steps, in.B = B, in.I = I, in.H = H, in.K = K, in.G = G_;
    in.x = X_, in.hs = HS_, in.dz = DZ_, in.dh = is_lstm ? nullptr : DHB_, in.g = G_t_;
    in.gy = readout ? grad_ys : nullptr;
    in.bias = cfg_.bias, in.readout_bias = b_out_ >= 0;
    in.steps_norms = in.tensors = per_example;
    if (fused) in.dw_ih = grads + w_ih_, in.dw_hh = grads + w_hh_, in.accumulate = accumulate;
    rnn_per_example(in, ExamplePath(this->example_path), pe_ws_, pe_wsd_, rep.example_tensor,
                    rep.example_step);
  }
  rep.forward_first_nonfinite = fwd_nonfinite_;
  rep.forward_stage = fwd_nonfinite_ > 0 ? fwd_stage_ : NonfiniteStage::None;
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
  this->finish_global_norm(rep);
  if (health) fill_health(rep);
  return rep;
}

// ---------------------------------------------------------------------------
// Forensics: where a forward NaN/Inf was born, the health statistics per step
// ---------------------------------------------------------------------------
// Step t's output h_t (or c_t) is the first non-finite one: its inputs x_t, h_{t-1},
// c_{t-1} are finite. A parameter of the cell holds NaN/Inf, or the products overflowed
// (LSTM z_t = x_t W_ih^T + h_{t-1} W_hh^T + b; GRU either side, x_t W_ih^T + b_ih or
// h_{t-1} W_hh^T + b_hh), else the gates and the cell update ("activation"; with bounded
// gates and |c_t| <= |c_{t-1}| + 1 only a NaN product gets here in IEEE arithmetic).
// Recomputed after the pass, only when it produced NaN/Inf (DZ_, DHB_ are free then).
template <class T>
NonfiniteStage GatedChain<T>::diagnose_forward(int64_t t) {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, B = B_;
  const int64_t GH = G_ * H;
  const T* P = params_.data();
  if (t > T_) return this->diagnose_readout();  // only y = h W_out^T + b_out
  if (this->cell_params_nonfinite()) return NonfiniteStage::Parameter;
  const T* xt = X_ + (t - 1) * B * I;
  const T* hp = HS_ + (t - 1) * B * H;
  T* z = DZ_;
  gemm(false, true, B, GH, I, T(1), xt, I, P + w_ih_, I, T(0), z, GH);
  if (lstm()) {
    gemm(false, true, B, GH, H, T(1), hp, H, P + w_hh_, H, T(1), z, GH);
    for (int64_t r = 0; r < B; ++r)
      for (int64_t c = 0; c < GH; ++c) z[r * GH + c] += bias_[c];
    return any_nonfinite(z, B * GH) ? NonfiniteStage::Linear : NonfiniteStage::Activation;
  }
  T* hb = DHB_;
  gemm(false, true, B, GH, H, T(1), hp, H, P + w_hh_, H, T(0), hb, GH);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < GH; ++c) {
      z[r * GH + c] += bias_[c];
      hb[r * GH + c] += bias_[GH + c];
    }
  return any_nonfinite(z, B * GH) || any_nonfinite(hb, B * GH) ? NonfiniteStage::Linear
                                                               : NonfiniteStage::Activation;
}

template <class T>
void GatedChain<T>::fill_health(GatedReport& rep) {
  const int64_t steps = T_, B = B_, H = cfg_.hidden_size, BH = B * H, GH = G_ * H;
  const bool is_lstm = lstm();
  rep.dead.assign(size_t(steps), 0.0);
  rep.saturated.assign(size_t(steps), 0.0);
  rep.zeros.assign(size_t(steps), 0.0);
  rep.subnormals.assign(size_t(steps), 0.0);
  rep.mean_abs.assign(size_t(steps), 0.0);
  if (is_lstm) {
    rep.c_zeros.assign(size_t(steps), 0.0);
    rep.c_subnormals.assign(size_t(steps), 0.0);
    rep.mean_abs_c.assign(size_t(steps), 0.0);
  }
  const T thr = T(1e-3);  // of the normalised derivative (sigmoid' * 4, tanh')
  const double numel = double(B) * double(H);
  for (int64_t t = 1; t <= steps; ++t) {
    const int64_t base = (t - 1) * nrb_;
    int64_t dead = 0, sat = 0;
    for (int64_t c = 0; c < H; ++c) {
      T m = 0;
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const T v = UM_[(base + rb) * H + c];
        m = v > m ? v : m;
      }
      dead += m == T(0) ? 1 : 0;
      sat += m < thr ? 1 : 0;
    }
    double s[6] = {0, 0, 0, 0, 0, 0};  // zeros, subnormals (dh, dc), sum |h|, sum |c|
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      for (int k = 0; k < 4; ++k) s[k] += hbwd_[size_t(4 * (base + rb) + k)];
      s[4] += hfwd_[size_t(2 * (base + rb))];
      s[5] += hfwd_[size_t(2 * (base + rb) + 1)];
    }
    const size_t i = size_t(t - 1);
    rep.dead[i] = double(dead) / double(H);
    rep.saturated[i] = double(sat) / double(H);
    rep.zeros[i] = s[0] / numel;
    rep.subnormals[i] = s[1] / numel;
    rep.mean_abs[i] = s[4] / numel;
    if (is_lstm) {
      rep.c_zeros[i] = s[2] / numel;
      rep.c_subnormals[i] = s[3] / numel;
      rep.mean_abs_c[i] = s[5] / numel;
    }
  }
  // where a NaN/Inf of the backward was born (the forward finite): dL/dh_t gets
  // dz_{t+1} W_hh (GRU: dh_{t+1} z_{t+1} + the recurrent side's dz W_hh), the readout's and
  // the direct gradients; dL/dc_t (LSTM) gets dh_t o tanh'(c_t) + dc_{t+1} f_{t+1}. Born at
  // t when step t+1's were finite: the gates' backward ("activation_backward") when dz_{t+1}
  // holds NaN/Inf or, LSTM, when only dL/dc_t does; else the product.
  const int t = rep.first_nonfinite;
  if (t >= 1 && fwd_nonfinite_ < 0) {
    rep.backward_stage = NonfiniteStage::Product;
    const int64_t BG = B * GH;
    bool act = false;
    if (t < steps) {
      act = any_nonfinite(DZ_ + int64_t(t) * BG, BG);
      if (!is_lstm) act = act || any_nonfinite(DHB_ + int64_t(t) * BG, BG);
    }
    if (!act && is_lstm)  // dL/dh_t finite, dL/dc_t not: the cell's backward
      act = !any_nonfinite(G_t_ + int64_t(t) * BH, BH) &&
            any_nonfinite(DC_ + int64_t(t - 1) * BH, BH);
    if (act) rep.backward_stage = NonfiniteStage::ActivationBackward;
  }
}

template class GatedChain<float>;
template class GatedChain<double>;

}  // namespace gradchain
