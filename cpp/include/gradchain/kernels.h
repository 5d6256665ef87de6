// gradchain/kernels.h — the elementwise kernel table: every fused pass that runs
// between two GEMMs, as plain functions over raw, contiguous, row-major buffers.
//
// The same sources (cpp/src/simd/*-inl.h: math, activations, epilogues, gemm,
// reductions, assembled by table-inl.h) are compiled once per ISA (scalar / AVX2+FMA /
// AVX-512) into their own namespace; dispatch.cpp picks one table at runtime. Every
// function processes `rows` rows of width `n` and is called by one thread on its own
// block of rows (or, for the column passes, its own rows of the partial-sum arrays), so
// the result never depends on how many threads there are. The activation of a fused pass
// is a runtime ActParams (gradchain/activation.h); the table has no entry per activation.
#pragma once

#include <cstdint>

#include "gradchain/activation.h"

namespace gradchain {

// Arguments of the fused forward epilogue  a = [resid +] alpha_or_1 * act(Norm(z + b)).
template <class T>
struct FwdArgs {
  ActParams act;
  const T* bias = nullptr;       // (n) added to z (None / Layer modes), or null
  const T* col_shift = nullptr;  // batch mode: xhat = (z - col_shift) * col_scale   (n)
  const T* col_scale = nullptr;
  const T* gamma = nullptr;      // norm affine weight (n), null = 1
  const T* beta = nullptr;       // norm affine bias (n), null = 0
  const T* resid = nullptr;      // (rows, n) residual input a_{l-1}, or null
  T alpha = 1;                   // residual scale
  T eps = 1e-5;                  // layer norm epsilon
  double* abs_sum = nullptr;     // the report's mean |a|: *abs_sum = sum |a| over the rows
                                 // this call writes (float64), or null

  // The same arguments for the row block starting at row r0 of width n (the residual input
  // moves with it).
  FwdArgs rows_from(int64_t r0, int64_t n) const {
    FwdArgs a = *this;
    if (a.resid) a.resid += r0 * n;
    return a;
  }
  // rows_from for row block rb starting at row r0, with abs_sum the base of one entry per
  // block (moved to entry rb).
  FwdArgs block(int64_t rb, int64_t r0, int64_t n) const {
    FwdArgs a = rows_from(r0, n);
    if (a.abs_sum) a.abs_sum += rb;
    return a;
  }
};

// What the health statistics of a backward pass take from one block of rows of an incoming
// gradient g = dL/da, its activation's derivative d and the resulting dz = dL/dz (the
// report's dead / saturated units, zero and subnormal fractions, and where a non-finite
// dz was born). Filled by bwd_plain_health, bwd_bn1 / bwd_bn2 (batch norm) and grad_health;
// each entry is added to.
template <class T>
struct GradHealth {
  T* dmax = nullptr;      // (n): max |d| per column over the rows (NaN ignored); null: skip
  double zeros = 0;       // entries of g equal to 0
  double subnormals = 0;  // entries of g with 0 < |g| < the smallest normal number
  double dz_check = 0;    // sum(dz * 0): NaN when dz holds NaN/Inf
};

// The RNN's health statistics of one block of rows of one step (bwd_step_health): per unit
// (column) c, bit c % 64 of word c / 64 of `live` is set when max |act'| over the rows is
// > 0 and of `unsat` when it is >= thr (both assigned, ceil(n / 64) words each; a NaN
// act' is left out of the maximum), and the zero / subnormal counts of g (added to). thr
// is the double threshold rounded up to T: max >= thr in T exactly when double(max) >= the
// double threshold.
template <class T>
struct StepHealth {
  uint64_t* live = nullptr;
  uint64_t* unsat = nullptr;
  T thr = 0;
  double zeros = 0, subnormals = 0;
};

// The gated cells' health statistics of one block of rows of one step (gates-inl.h), each
// entry added to; a null GateHealth skips them. Forward: umax (H) the per-unit maximum over
// the rows of the unit's largest normalised gate derivative max_k d_k / sup d_k (sigmoid'
// / 0.25, tanh' / 1; NaN left out: the report's dead and saturated units), the sums of
// |h_t| and (LSTM) |c_t|. Backward: the zero and subnormal entries of dL/dh_t and (LSTM)
// dL/dc_t.
template <class T>
struct GateHealth {
  T* umax = nullptr;
  double abs_h = 0, abs_c = 0;
  double zeros = 0, subnormals = 0, c_zeros = 0, c_subnormals = 0;
};

template <class T>
struct KernelTable {
  const char* isa;
  // --- forward -------------------------------------------------------------
  // z (rows, n) -> a (rows, n) [may alias z], d = act'(pre-activation) (rows, n).
  // xhat (rows, n) is written in the norm modes. Returns sum(a * 0): 0 when every
  // a is finite, NaN otherwise (cheap, vectorised non-finite detection).
  double (*fwd_plain)(const FwdArgs<T>& args, const T* z, T* a, T* d, int64_t rows, int64_t n);
  double (*fwd_batchnorm)(const FwdArgs<T>& args, const T* z, T* xhat, T* a, T* d, int64_t rows,
                          int64_t n);
  // Layer norm: also writes the per-row mean and 1/sqrt(var + eps) (rows).
  double (*fwd_layernorm)(const FwdArgs<T>& args, const T* z, T* xhat, T* a, T* d, T* row_mean,
                          T* row_istd, int64_t rows, int64_t n);
  // Column sums over a block of rows: acc[c] += z[r, c] (float64).
  void (*col_sum)(const T* z, int64_t rows, int64_t n, double* acc);
  // One-pass shifted moments: s1[c] += z - shift[c], s2[c] += (z - shift[c])^2 (float64).
  // With shift = one row of z the variance S2/B - (S1/B)^2 does not cancel.
  void (*col_moments)(const T* z, const T* shift, int64_t rows, int64_t n, double* s1,
                      double* s2);
  // y += b row by row; returns sum(y * 0) (non-finite detection).
  double (*add_bias)(T* y, const T* b, int64_t rows, int64_t n);

  // --- backward ------------------------------------------------------------
  // dz = g * scale * d;  db_acc[c] += dz;  returns sum(g^2) (float64; 0 unless want_ss).
  // `select`: where d == 0 the result is 0 even for an infinite g (PyTorch's relu and
  // hardtanh backward select instead of multiplying).
  double (*bwd_plain)(const T* g, const T* d, T scale, bool select, bool want_ss, T* dz,
                      double* db_acc, int64_t rows, int64_t n);
  // Batch norm, pass 1: dn = g * scale * d -> dn_out;  acc0 += dn;  acc1 += dn * xhat;  returns sum(g^2).
  // With h (the report's health, else null) in the same sweep: h's column maxima of |d|
  // (h->dmax, n) and the zero and subnormal counts of g.
  double (*bwd_bn1)(const T* g, const T* d, const T* xhat, T scale, bool select, T* dn_out,
                    double* acc0, double* acc1, int64_t rows, int64_t n, GradHealth<T>* h);
  // Batch norm, pass 2 (in place): dz = k[c] * (dn - m1[c] - xhat * m2[c]);  db_acc += dz.
  // With h (else null): dz's non-finite check (h->dz_check).
  void (*bwd_bn2)(T* dn_dz, const T* xhat, const T* k, const T* m1, const T* m2, double* db_acc,
                  int64_t rows, int64_t n, GradHealth<T>* h);
  // Layer norm: dn = g*scale*d; dgamma_acc += dn*xhat; dbeta_acc += dn; dxh = dn*gamma;
  // dz = istd_r * (dxh - mean(dxh) - xhat * mean(dxh * xhat)); db_acc += dz. Returns sum(g^2).
  double (*bwd_layernorm)(const T* g, const T* d, const T* xhat, const T* gamma,
                          const T* row_istd, T scale, bool select, T* dz, double* dgamma_acc,
                          double* dbeta_acc, double* db_acc, int64_t rows, int64_t n);

  // bwd_plain (report on) with the health statistics of its rows in one sweep: h's column
  // maxima of |d| (h->dmax, n), the zero and subnormal counts of g and dz's non-finite
  // check. Returns sum(g^2).
  double (*bwd_plain_health)(const T* g, const T* d, T scale, bool select, T* dz,
                             double* db_acc, int64_t rows, int64_t n, GradHealth<T>* h);
  // The RNN's backward step with the report: bwd_plain (report on) and h's statistics in
  // one sweep (dz's non-finite check is not taken: rnn.cpp rereads dz where it needs it).
  // Returns sum(g^2).
  double (*bwd_step_health)(const T* g, const T* d, T scale, bool select, T* dz,
                            double* db_acc, int64_t rows, int64_t n, StepHealth<T>* h);
  // The same statistics as a pass of its own (layer norm's backward, dL/dx): each of g (its
  // counts), d (h->dmax) and dz (its check) may be null, then skipped.
  void (*grad_health)(const T* g, const T* d, const T* dz, int64_t rows, int64_t n,
                      GradHealth<T>* h);
  // Per-example gradient norms: out[r] = sum_c x[r, c]^2 (float64), r < rows.
  void (*row_sumsq)(const T* x, int64_t rows, int64_t n, double* out);
  // Layer norm's per-example parameter gradients: dn = g * scale * d (the kink rule);
  // out_gamma[r] = sum_c (dn * xhat)^2, out_beta[r] = sum_c dn^2 (float64).
  void (*ln_example_ss)(const T* g, const T* d, const T* xhat, T scale, bool select,
                        int64_t rows, int64_t n, double* out_gamma, double* out_beta);
  // --- gated cells (simd/gates-inl.h): one recurrent step's fused passes ------------
  // Gate rows are [block 0 | block 1 | ...], H wide each (LSTM i, f, g, o; GRU r, z, n).
  // stats (2 per gate, assigned): the sum of the gate's values and the count of its units
  // whose derivative is below 1e-3 of its maximum. The forward passes return sum(out * 0)
  // (non-finite detection), the backward ones fill / return float64 sums of squares.
  // LSTM forward: z (rows, 4H) + bias -> gates a (may alias z), c = f c_prev + i g,
  // tc = tanh(c), h = o tc.
  // hl (GateHealth, may be null): the health statistics in the same sweep (forward and
  // backward passes of both cells).
  double (*lstm_fwd)(const T* z, const T* bias, const T* c_prev, T* a, T* c, T* h, T* tc,
                     double* stats, int64_t rows, int64_t H, GateHealth<T>* hl);
  // LSTM backward: dc = g o (1 - tc^2) [+ dc_next f_next] (the total dL/dc_t), dz (rows, 4H),
  // db_acc (4H) += dz; ss[0] = sum(g^2), ss[1] = sum(dc^2) when want_ss. dc_next and a_next
  // (the next step's dL/dc and gates) are null at the last step.
  void (*lstm_bwd)(const T* g, const T* a, const T* c_prev, const T* tc, const T* dc_next,
                   const T* a_next, T* dc, T* dz, double* db_acc, bool want_ss, double* ss,
                   int64_t rows, int64_t H, GateHealth<T>* hl);
  // GRU forward: xa (rows, 3H) = x W_ih^T, hb (rows, 3H) = h_prev W_hh^T, biases (3H) ->
  // gates a (may alias xa), hn = hb_n + b_hn, h = (1 - z) n + z h_prev.
  double (*gru_fwd)(const T* xa, const T* hb, const T* b_ih, const T* b_hh, const T* h_prev,
                    T* a, T* hn, T* h, double* stats, int64_t rows, int64_t H,
                    GateHealth<T>* hl);
  // GRU backward: da = [dz_r, dz_z, dz_n], dhb = [dz_r, dz_z, dz_n r] (rows, 3H),
  // g_prev += g z; dbi += da, dbh += dhb; returns sum(g^2) (0 unless want_ss).
  double (*gru_bwd)(const T* g, const T* a, const T* hn, const T* h_prev, T* da, T* dhb,
                    T* g_prev, double* dbi, double* dbh, bool want_ss, int64_t rows, int64_t H,
                    GateHealth<T>* hl);

  // --- panel GEMM (the RNN's per-step products; float32 layer products) ----------
  // op(B) (K x N) is packed into panels of two vector widths of columns (pack_panels,
  // into K * N rounded up to the panel width; trans: B is N x K), then
  // C (m x N) += A (m x K) op(B) (or C = with accumulate false). Each C element
  // is C + (the k-ordered sum), independent of m: row blocks give the same numbers
  // for any thread count.
  void (*pack_panels)(int64_t K, int64_t N, const T* B, int64_t ldb, bool trans, T* out);
  // A[i, k] is A[i * ars + k * acs]; accumulate: C += ..., else C = ...
  void (*gemm_panels)(int64_t m, int64_t N, int64_t K, const T* A, int64_t ars, int64_t acs,
                      const T* Bp, T* C, int64_t ldc, bool accumulate);
  // gemm_panels, returning the float64 sum of squares of C as stored (panel strip by strip)
  double (*gemm_panels_ss)(int64_t m, int64_t N, int64_t K, const T* A, int64_t ars,
                           int64_t acs, const T* Bp, T* C, int64_t ldc, bool accumulate);

  // --- reductions and gradient edits -----------------------------------------
  double (*sumsq)(const T* x, int64_t n);          // sum(x^2) in float64
  // sum(x^2) in float64 over rows x n values with leading dimension ld (a GEMM block)
  double (*sumsq_rows)(const T* x, int64_t ld, int64_t rows, int64_t n);
  double (*maxabs)(const T* x, int64_t n);         // max |x| (NaN if any NaN)
  void (*scale)(T* x, int64_t n, T s);             // x *= s
  void (*clamp)(T* x, int64_t n, T lo, T hi);      // x = clamp(x, lo, hi), NaN kept
  void (*act_apply)(const ActParams& act, const T* x, T* f, T* d, int64_t n);  // f, d = act(x), act'(x)

  // --- tangents: one row through a linearised hidden layer (cpp/src/jacobian.cpp) ----
  // m (n): the primal's act' times the norm's per-feature factor. Forward mode:
  // out = scale * m * u [+ resid] (out may alias u); layer norm: out = scale * m * istd *
  // (u - mean(u) - xhat * mean(u * xhat)) [+ resid]. Reverse mode: dz = scale * m * g (layer
  // norm: projected as in bwd_layernorm), returning sum(g^2) in float64.
  void (*tan_fwd)(const T* u, const T* m, T scale, const T* resid, T* out, int64_t n);
  void (*tan_fwd_ln)(const T* u, const T* m, const T* xhat, T istd, T scale, const T* resid,
                     T* out, int64_t n);
  double (*tan_bwd)(const T* g, const T* m, T scale, T* dz, int64_t n);
  double (*tan_bwd_ln)(const T* g, const T* m, const T* xhat, T istd, T scale, T* dz, int64_t n);
};

}  // namespace gradchain
