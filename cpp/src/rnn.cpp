// rnn.cpp — the vanilla RNN driver (torch.nn.RNN, one layer, optional readout).
//
// The time loops are parallel over fixed blocks of batch rows: sample b's chain
// h_0 -> h_1 -> ... -> h_T only ever touches row b, so each thread runs the
// whole loop for its own rows with no barrier per step (rows of the recurrent
// GEMM and of the fused epilogue stay in one thread). Everything over all T*B
// rows at once (input projection, readout, weight gradients, dL/dx) is one
// GEMM split by gemm_split.
#include "gradchain/rnn.h"

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

using recurrent::step_rows;

namespace {
// The per-step products (recurrent.h) run on gradchain's panel kernel with the recurrent
// weight packed once per pass (see KernelTable::gemm_panels) while the packed matrix stays
// cache-sized (H <= 512); above that, OpenBLAS on the plain matrix.
inline bool panel_steps(int64_t H) { return recurrent::panel_steps(H, H); }
// Steps per block of the report's per-step entries (after the time loop, in the region).
constexpr int64_t kStepBlock = 256;
// Prefetching the next step's rows pays on narrow hidden sizes only (measured).
inline bool prefetch_pays(int64_t H) { return H <= 128 && H % 64 == 0; }
// Touch the next step's rows (rows x H values at p) ahead of time: the time loop walks
// buffers of T*B*H values (far beyond the caches) one step (B*H apart) at a time, and
// each step is too short for the hardware prefetcher to catch the stride alone.
template <class T>
inline void prefetch_rows(const T* p, int64_t n, bool write) {
  for (int64_t i = 0; i < n; i += 64 / int64_t(sizeof(T))) {
    if (write)
      __builtin_prefetch(p + i, 1, 3);
    else
      __builtin_prefetch(p + i, 0, 3);
  }
}
// C (rows x H) += A (rows x H) op(W): Wp is op(W) packed (panel path) or plain (H x H).
template <class T>
inline void step_gemm(const KernelTable<T>& K, int64_t rows, int64_t H, const T* A, const T* Wp,
                      T* C) {
  recurrent::step_bwd_gemm(K, panel_steps(H), rows, H, H, A, Wp, C);
}
}  // namespace

// (shapes up to 2^24 x 2^24: no tensor can overflow the offsets)
template <class T>
RnnChain<T>::RnnChain(RnnConfig cfg)
    : RecurrentChain<T>("an RNN", 1, cfg.input_size, cfg.hidden_size, cfg.output_size,
                        cfg.bias, 24),
      cfg_(cfg) {}

template <class T>
int64_t RnnChain<T>::workspace_values(int64_t steps, int64_t B) const {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size;
  const int64_t wp = H * detail::panel_round<T>(H);  // W_hh packed for any ISA's panels
  return steps * B * I + (steps + 1) * B * H * 2 + steps * B * H * 2 + H + wp;
}

template <class T>
int64_t RnnChain<T>::part_values(int64_t steps, int64_t B) const {
  const int64_t H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t nrb = ceil_div(B, step_rows(B)), nrb_all = ceil_div(steps * B, kRowBlock);
  return (nrb > nrb_all ? nrb : nrb_all) * (H > K ? H : K);
}

template <class T>
int64_t RnnChain<T>::blk_values(int64_t steps, int64_t B) const {
  const int64_t nrb = ceil_div(B, step_rows(B)), nrb_all = ceil_div(steps * B, kRowBlock);
  // blk_, and the forensics' hcnt_, fabs_ and hbits_ (3 doubles and 2 x ceil(H / 64)
  // 8-byte words per step and row block)
  return (steps * nrb > nrb_all ? steps * nrb : nrb_all) +
         (3 + 2 * ceil_div(cfg_.hidden_size, 64)) * steps * nrb;
}

template <class T>
int64_t RnnChain<T>::pass_bytes(int64_t steps, int64_t B) const {
  if (steps < 1 || B < 1 || steps > kBlasIntMax / B) return 0;  // refused before allocating
  const int64_t fresh = workspace_values(steps, B) * int64_t(sizeof(T)) +
                        (part_values(steps, B) + blk_values(steps, B)) * int64_t(sizeof(double));
  const int64_t held = ws_.size() * int64_t(sizeof(T)) +
                       (part_.size() + int64_t(blk_.size() + hcnt_.size() + fabs_.size() +
                                               hbits_.size())) *
                           int64_t(sizeof(double));
  int64_t bytes = this->pass_bytes_for(steps, B, fresh, held, this->slot_for(steps, B),
                                       steps * B * H_ * 4);
  if (rnn_example_fuses(this->example_path, steps, B, I_, H_, 1)) {  // dW's block sums, the slots
    const int64_t pe = rnn_example_sum_values(B, I_, H_, 1) +
                       rnn_example_workspace(false, steps, I_, H_, K_) *
                           max_threads_for(steps * B * H_ * (I_ + H_));
    if (pe > pe_ws_.size()) bytes += (pe - pe_ws_.size()) * int64_t(sizeof(T));
  }
  return bytes;
}

template <class T>
void RnnChain<T>::plan(int64_t steps, int64_t B) {
  if (steps == T_ && B == B_) return;
  this->begin_plan(steps, B);
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size;
  const int64_t wp = H * detail::panel_round<T>(H);
  const int64_t total = workspace_values(steps, B);
  try {
    ws_ = Buffer<T>(total);
    part_ = Buffer<double>(part_values(steps, B));
    const int64_t nrb = ceil_div(B, step_rows(B)), words = ceil_div(H, 64);
    blk_.assign(size_t(blk_values(steps, B) - (3 + 2 * words) * steps * nrb), 0.0);
    hcnt_.assign(size_t(2 * steps * nrb), 0.0);
    fabs_.assign(size_t(steps * nrb), 0.0);
    hbits_.assign(size_t(2 * words * steps * nrb), 0);
  } catch (const std::bad_alloc&) {
    this->plan_failed(steps, B,
                      double(total) * double(sizeof(T)) +
                          double(part_values(steps, B) + blk_values(steps, B)) *
                              double(sizeof(double)));
  }
  WorkspaceCarver<T> ws(ws_.data());
  X_ = ws.take(steps * B * I);
  HS_ = ws.take((steps + 1) * B * H);
  D_ = ws.take(steps * B * H);
  G_ = ws.take((steps + 1) * B * H);
  DZ_ = ws.take(steps * B * H);
  bias_ = ws.take(H);
  WT_ = ws.take(wp);
  nrb_ = ceil_div(B, step_rows(B));
  hwords_ = ceil_div(H, 64);
  pack_slot_ = this->slot_for(steps, B);
  T_ = steps;
  B_ = B;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
// The time loop with a custom activation (serial, outside any OpenMP region: the callback
// takes the GIL and may throw). The recurrent products use the same row blocks and kernels
// as the built-in loop, so z_t is bitwise the one the built-in path would see; then
// h_t, act'(z_t) = callback(z_t + b), and the step's non-finite check.
template <class T>
void RnnChain<T>::custom_steps() {
  if (!custom_) throw std::logic_error("custom activation has no callable");
  const auto& Kt = kernels<T>();
  const int64_t H = cfg_.hidden_size, B = B_, BH = B * H;
  const int64_t sr = step_rows(B);
  FwdArgs<T> args;  // identity + bias: z_t + b in place
  args.act.kind = Act::Identity;
  args.bias = bias_;
  for (int64_t t = 1; t <= T_; ++t) {
    if (stopping()) throw Cancelled();
    T* zt = HS_ + t * BH;
    T* dt = D_ + (t - 1) * BH;
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      step_gemm(Kt, rows, H, HS_ + (t - 1) * BH + r0 * H, WT_, zt + r0 * H);
      Kt.fwd_plain(args, zt + r0 * H, zt + r0 * H, dt + r0 * H, rows, H);
    }
    custom_(zt, zt, dt, B, H);
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      bool bad = false;
      double s = 0.0;
      for (int64_t i = r0 * H; i < (r0 + rows) * H; ++i) {
        bad = bad || !std::isfinite(zt[i]);
        s += double(std::abs(zt[i]));
      }
      blk_[size_t((t - 1) * nrb_ + rb)] = bad ? std::numeric_limits<double>::quiet_NaN() : 0.0;
      fabs_[size_t((t - 1) * nrb_ + rb)] = s;
    }
  }
}

template <class T>
void RnnChain<T>::forward(const T* x, const T* h0, int64_t steps, int64_t B, T* hs, T* ys) {
  std::lock_guard<std::mutex> lock(mu_);
  if (steps < 1 || B < 1) throw std::invalid_argument("T and B must be >= 1");
  plan(steps, B);
  has_forward_ = false;
  const auto& Kt = kernels<T>();
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t BH = B * H, TB = steps * B;
  const T* W_ih = params_.data() + w_ih_;
  const T* W_hh = params_.data() + w_hh_;
  this->load_inputs(x, h0, steps, B);
  for (int64_t c = 0; c < H; ++c)
    bias_[c] = cfg_.bias ? T(params_.data()[b_ih_ + c] + params_.data()[b_hh_ + c]) : T(0);
  if (panel_steps(H))  // op(B) = W_hh^T, packed once for all steps
    Kt.pack_panels(H, H, W_hh, H, true, WT_);
  else  // W_hh^T, so each step is a plain row-major product
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < H; ++j) WT_[j * H + i] = W_hh[i * H + j];
  FwdArgs<T> args;
  args.act = cfg_.act;
  args.bias = bias_;
  const int64_t sr = step_rows(B);
  const bool pf = prefetch_pays(H);
  const bool custom = cfg_.act.kind == Act::Custom;
  // the custom path runs its time loop (Python) between two regions: they do not teach
  const int cap = work_threads(TB * H * 4);
  GovernedRegion region(custom ? 1 : cap);
  const int nt = custom ? pass_threads(cap) : region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  // Cancelled (cancel.h): each thread skips its remaining GEMM blocks and time steps (no
  // loop below has a barrier inside), and the pass throws after the region.
  stop_ = cancel_flag();

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    // z_t = x_t W_ih^T for all t at once, into slots 1..T of HS
    const GemmSplit gi = gemm_split(TB, H, I);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < gi.count; ++blk)
      if (!stopping())
        gemm_block(gi, blk, false, true, TB, H, I, X_, I, W_ih, I, T(0), HS_ + BH, H,
                   packs());

    // the time loop, each thread on its own rows: z_t += h_{t-1} W_hh^T; h_t = act(z_t + b)
    // (a custom activation runs its own loop below, outside the region: it calls Python)
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < (custom ? 0 : nrb_); ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      for (int64_t t = 1; t <= steps && !stopping(); ++t) {
        T* zt = HS_ + t * BH + r0 * H;
        if (pf && t < steps) {  // z_{t+1} (read, then overwritten), act'(z_{t+1}) (written)
          prefetch_rows(zt + BH, rows * H, true);
          prefetch_rows(D_ + t * BH + r0 * H, rows * H, true);
        }
        step_gemm(Kt, rows, H, HS_ + (t - 1) * BH + r0 * H, WT_, zt);
        FwdArgs<T> at = args;  // sum |h_t| of the block (the report's mean |activation|)
        if (forensics) at.abs_sum = fabs_.data() + (t - 1) * nrb_ + rb;
        blk_[size_t((t - 1) * nrb_ + rb)] =
            Kt.fwd_plain(at, zt, zt, D_ + (t - 1) * BH + r0 * H, rows, H);
      }
    }
    if (K > 0 && !custom) this->readout_forward(ys);
    region.leave();
  }
  region.done();
  if (custom) {
    custom_steps();  // may throw (the callback's error): has_forward_ stays false
    if (K > 0) {
#pragma omp parallel num_threads(nt)
      this->readout_forward(ys);
    }
  }
  if (stopping()) throw Cancelled();  // has_forward_ stays false
  fwd_stage_ = NonfiniteStage::None;
  fwd_nonfinite_ = this->scan_forward(blk_.data(), 1);
  if (fwd_nonfinite_ > 0 && forensics) fwd_stage_ = diagnose_forward(fwd_nonfinite_);
  std::memcpy(hs, HS_ + BH, size_t(TB * H) * sizeof(T));
  has_forward_ = true;
}

// ---------------------------------------------------------------------------
// Backward (BPTT)
// ---------------------------------------------------------------------------
template <class T>
RnnReport RnnChain<T>::backward(const T* grad_hs, const T* grad_ys, T* dx, T* dh0,
                                bool accumulate, bool report, bool per_example) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_forward_) throw std::logic_error("backward() called before forward()");
  if (per_example && !report)
    throw std::invalid_argument("per_example: the per-example norms need report=True");
  const auto& Kt = kernels<T>();
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, K = cfg_.output_size;
  const int64_t steps = T_, B = B_, BH = B * H, TB = steps * B;
  const T* W_hh = params_.data() + w_hh_;
  T* grads = grads_.data();
  const bool select = act_selects(cfg_.act.kind);  // the activation's kink rule
  const int64_t sr = step_rows(B);
  const bool pf = prefetch_pays(H);
  GovernedRegion region(work_threads(TB * H * 4));
  const int nt = region.threads();
  pack_base_ = detail::pack_scratch(pack_, pack_slot_, nt);
  const bool readout = K > 0 && grad_ys != nullptr;
  double* part = part_.data();
  const bool health = report && forensics;
  stop_ = cancel_flag();  // cancelled: as in forward, then the report is not computed
  RnnReport rep;
  rep.timestep.assign(size_t(steps), 0.0);
  if (health) {  // filled by step_entries inside the region
    for (auto* v : {&rep.dead, &rep.saturated, &rep.zeros, &rep.subnormals, &rep.mean_abs})
      v->assign(size_t(steps), 0.0);
  }
  // the saturation threshold in T, rounded up: max >= thr_t in T iff double(max) >= thr
  T thr_t = T(health_threshold);
  if (thr_t == thr_t && double(thr_t) < health_threshold)
    thr_t = std::nextafter(thr_t, std::numeric_limits<T>::infinity());
  // dW_ih, dW_hh as the sum of the examples' own gradients (per_example_rnn.cpp) on the
  // shapes where that is about as fast as the merged GEMMs, per_example or not (the same
  // bits either way; per_example then only adds their norms)
  const bool fused = rnn_example_fuses(this->example_path, steps, B, I, H, 1);
  double ss_w_ih = 0, ss_w_hh = 0, ss_w_out = 0, ss_b = 0, ss_b_out = 0;

  // G[1..T] = grad_hs (direct gradients), G[0] = 0; the readout adds grad_ys W_out below.
  // Without a readout, G[t] for t < T is loaded step by step in the loop below.
  const bool by_step = this->stepwise_grad_hs(grad_hs);
  this->load_grad_hs(grad_hs, G_, by_step);
  // op(B) = W_hh for G_{t-1} += dz_t W_hh: packed once for all steps (the buffer held
  // W_hh^T for the forward steps; the next forward packs it again)
  const T* Wp = W_hh;
  if (panel_steps(H)) {
    Kt.pack_panels(H, H, W_hh, H, false, WT_);
    Wp = WT_;
  }

#pragma omp parallel num_threads(nt)
  {
    region.enter();
    if (K > 0) this->readout_backward(readout ? grad_ys : nullptr, G_, accumulate, ss_w_out,
                                      ss_b_out);

    // The recurrent chain, each thread on its own rows, t = T..1:
    //   dz_t = G_t * act'(z_t) (G_t is the total dL/dh_t: its sum of squares is the report's);
    //   G_{t-1} += dz_t W_hh (the recurrence; for t = 1 this is dL/dh_0).
#pragma omp for schedule(static)
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      const int64_t r0 = rb * sr, rows = rows_in_block(rb, B, sr);
      double* db = part + rb * H;
      std::memset(db, 0, size_t(H) * sizeof(double));
      for (int64_t t = steps; t >= 1 && !stopping(); --t) {
        T* dzt = DZ_ + (t - 1) * BH + r0 * H;
        if (pf && t > 1) {  // step t-1's act' (read), dL/dh (updated) and dz (written)
          prefetch_rows(D_ + (t - 2) * BH + r0 * H, rows * H, false);
          if (by_step)
            prefetch_rows(grad_hs + (t - 2) * BH + r0 * H, rows * H, false);
          else
            prefetch_rows(G_ + (t - 1) * BH + r0 * H, rows * H, true);
          prefetch_rows(dzt - BH, rows * H, true);
        }
        const size_t hb = size_t((t - 1) * nrb_ + rb);
        if (health) {  // the step's health statistics in the same sweep
          StepHealth<T> h;
          h.live = hbits_.data() + 2 * int64_t(hb) * hwords_;
          h.unsat = h.live + hwords_;
          h.thr = thr_t;
          blk_[hb] = Kt.bwd_step_health(G_ + t * BH + r0 * H, D_ + (t - 1) * BH + r0 * H, T(1),
                                        select, dzt, db, rows, H, &h);
          hcnt_[2 * hb] = h.zeros;
          hcnt_[2 * hb + 1] = h.subnormals;
        } else {
          blk_[hb] = Kt.bwd_plain(G_ + t * BH + r0 * H, D_ + (t - 1) * BH + r0 * H, T(1),
                                  select, report, dzt, db, rows, H);
        }
        if (by_step && t > 1) this->load_grad_rows(grad_hs, G_, t - 1, r0, rows);
        step_gemm(Kt, rows, H, dzt, Wp, G_ + (t - 1) * BH + r0 * H);
      }
    }
    // the report's per-step entries, over fixed blocks of steps (the loop above ended in a
    // barrier: every row block of every step is done; dL/dh_t for t >= 1 is final)
    if (report) {
      const int64_t nsb = ceil_div(steps, kStepBlock);
#pragma omp for schedule(static) nowait
      for (int64_t sb = 0; sb < nsb; ++sb)
        if (!stopping())
          step_entries(rep, sb * kStepBlock, std::min(steps, (sb + 1) * kStepBlock), health);
    }

    // Merged over all T*B rows: dW_ih = dz^T x, dW_hh = dz^T h_{t-1}, dx = dz W_ih (fused:
    // dW is formed by per_example_rnn.cpp from the examples' own gradients).
    this->weight_grads(DZ_, DZ_, dx, accumulate, /*weights=*/!fused);
#pragma omp sections
    {
#pragma omp section
      if (report && !fused) ss_w_ih = Kt.sumsq(grads + w_ih_, H * I);
#pragma omp section
      if (report && !fused) ss_w_hh = Kt.sumsq(grads + w_hh_, H * H);
#pragma omp section
      if (readout && report) ss_w_out = Kt.sumsq(grads + w_out_, K * H);
#pragma omp section
      if (cfg_.bias) {  // db_ih = db_hh = sum over t and b of dz
        ss_b = reduce_store(part, nrb_, H, grads + b_ih_, accumulate);
        if (accumulate) {
          for (int64_t c = 0; c < H; ++c) {
            double s = 0.0;
            for (int64_t b = 0; b < nrb_; ++b) s += part[b * H + c];
            grads[b_hh_ + c] = T(grads[b_hh_ + c] + T(s));
          }
        } else {
          std::memcpy(grads + b_hh_, grads + b_ih_, size_t(H) * sizeof(T));
        }
      }
    }
    region.leave();
  }
  region.done();

  if (stopping()) throw Cancelled();
  if (per_example || fused) {  // per_example_rnn.cpp, from the saved x, h, dz and dL/dh
    RnnExampleInputs<T> in;
    in.steps = steps, in.B = B, in.I = I, in.H = H, in.K = K;
    in.x = X_, in.hs = HS_, in.dz = DZ_, in.g = G_, in.gy = readout ? grad_ys : nullptr;
    in.bias = cfg_.bias, in.readout_bias = b_out_ >= 0;
    in.steps_norms = per_example, in.tensors = per_example && example_tensors;
    if (fused) in.dw_ih = grads + w_ih_, in.dw_hh = grads + w_hh_, in.accumulate = accumulate;
    rnn_per_example(in, ExamplePath(this->example_path), pe_ws_, pe_wsd_, rep.example_tensor,
                    rep.example_step);
    if (fused && report) {
      ss_w_ih = Kt.sumsq(grads + w_ih_, H * I);
      ss_w_hh = Kt.sumsq(grads + w_hh_, H * H);
    }
  }
  rep.forward_first_nonfinite = fwd_nonfinite_;
  rep.forward_stage = fwd_nonfinite_ > 0 ? fwd_stage_ : NonfiniteStage::None;
  if (!report) {  // gradients only: the report's norms stay 0
    if (dh0) std::memcpy(dh0, G_, size_t(BH) * sizeof(T));
    return rep;
  }
  for (int64_t t = steps; t >= 1; --t) {  // a non-finite norm is that of a non-finite sum
    if (!std::isfinite(rep.timestep[size_t(t - 1)])) {
      rep.first_nonfinite = int(t);
      break;
    }
  }
  rep.h0 = tensor_norm(G_, BH);
  rep.weight_ih = norm_from_sumsq(grads + w_ih_, H * I, ss_w_ih);
  rep.weight_hh = norm_from_sumsq(grads + w_hh_, H * H, ss_w_hh);
  if (cfg_.bias) {
    rep.bias_ih = norm_from_sumsq(grads + b_ih_, H, ss_b);
    rep.bias_hh = tensor_norm(grads + b_hh_, H);
  }
  if (K > 0) {
    rep.readout_weight = norm_from_sumsq(grads + w_out_, K * H, ss_w_out);
    if (b_out_ >= 0) rep.readout_bias = norm_from_sumsq(grads + b_out_, K, ss_b_out);
  }
  this->finish_global_norm(rep);
  rep.forward_first_nonfinite = fwd_nonfinite_;
  rep.forward_stage = fwd_nonfinite_ > 0 ? fwd_stage_ : NonfiniteStage::None;
  if (health) backward_origin(rep);
  if (dh0) std::memcpy(dh0, G_, size_t(BH) * sizeof(T));
  return rep;
}

// ---------------------------------------------------------------------------
// Forensics: where a forward NaN/Inf was born, the health statistics per step
// ---------------------------------------------------------------------------
template <class T>
NonfiniteStage RnnChain<T>::diagnose_forward(int64_t t) {
  const int64_t I = cfg_.input_size, H = cfg_.hidden_size, B = B_;
  const T* P = params_.data();
  if (t > T_) return this->diagnose_readout();  // only y = h W_out^T + b_out
  if (this->cell_params_nonfinite()) return NonfiniteStage::Parameter;
  // z_t = x_t W_ih^T + h_{t-1} W_hh^T + b again (h_{t-1} is finite), into DZ_
  T* z = DZ_;
  gemm(false, true, B, H, I, T(1), X_ + (t - 1) * B * I, I, P + w_ih_, I, T(0), z, H);
  gemm(false, true, B, H, H, T(1), HS_ + (t - 1) * B * H, H, P + w_hh_, H, T(1), z, H);
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = 0; c < H; ++c) z[r * H + c] += bias_[c];
  return any_nonfinite(z, B * H) ? NonfiniteStage::Linear : NonfiniteStage::Activation;
}

template <class T>
void RnnChain<T>::step_entries(RnnReport& rep, int64_t t0, int64_t t1, bool health) const {
  const int64_t B = B_, H = cfg_.hidden_size, BH = B * H, words = hwords_;
  const double thr = health_threshold;
  const double numel = double(B) * double(H);
  for (int64_t t = t0 + 1; t <= t1; ++t) {
    const int64_t base = (t - 1) * nrb_;
    double ss = 0.0;
    for (int64_t rb = 0; rb < nrb_; ++rb) ss += blk_[size_t(base + rb)];
    rep.timestep[size_t(t - 1)] = norm_from_sumsq(G_ + t * BH, BH, ss);
    if (!health) continue;
    // a unit is dead when no row block has it live, saturated when none has it unsaturated
    int64_t live = 0, unsat = 0;
    for (int64_t w = 0; w < words; ++w) {
      uint64_t lv = 0, us = 0;
      for (int64_t rb = 0; rb < nrb_; ++rb) {
        const uint64_t* b = hbits_.data() + 2 * (base + rb) * words;
        lv |= b[w];
        us |= b[words + w];
      }
      live += __builtin_popcountll(lv);
      unsat += __builtin_popcountll(us);
    }
    double z = 0.0, sub = 0.0, a = 0.0;
    for (int64_t rb = 0; rb < nrb_; ++rb) {
      z += hcnt_[size_t(2 * (base + rb))];
      sub += hcnt_[size_t(2 * (base + rb) + 1)];
      a += fabs_[size_t(base + rb)];
    }
    rep.dead[size_t(t - 1)] = double(H - live) / double(H);
    rep.saturated[size_t(t - 1)] =
        thr == thr ? double(H - unsat) / double(H) : std::numeric_limits<double>::quiet_NaN();
    rep.zeros[size_t(t - 1)] = z / numel;
    rep.subnormals[size_t(t - 1)] = sub / numel;
    rep.mean_abs[size_t(t - 1)] = a / numel;
  }
}

template <class T>
void RnnChain<T>::backward_origin(RnnReport& rep) const {
  // where a NaN/Inf of the backward was born: dL/dh_t gets dz_{t+1} W_hh (and the readout's
  // and direct gradients); born at t when dL/dh_{t+1} was finite: in the activation's
  // backward when dz_{t+1} = dL/dh_{t+1} * act' already holds one (a finite product
  // otherwise). Only here is dz reread (the time loop takes no check of it).
  const int t = rep.first_nonfinite;
  if (t >= 1 && fwd_nonfinite_ < 0) {
    rep.backward_stage = NonfiniteStage::Product;
    const int64_t BH = B_ * cfg_.hidden_size;
    if (t < T_ && any_nonfinite(DZ_ + int64_t(t) * BH, BH))
      rep.backward_stage = NonfiniteStage::ActivationBackward;
  }
}

template class RnnChain<float>;
template class RnnChain<double>;

}  // namespace gradchain
