// gates-inl.h — the gated cells' fused passes (LSTM, GRU), compiled once per ISA
// (table-inl.h): per step, everything between the recurrent product and the next one.
//
// Forward: the gate nonlinearities (sigmoid / tanh functors of activations-inl.h), the
// cell update, h_t, the non-finite check and the report's gate statistics (per gate: the
// sum of its values and the count of saturated units) in one sweep over the rows.
// Backward: the gate derivatives from the stored gate values (as PyTorch's backward:
// sigmoid' = s (1 - s), tanh' = 1 - t^2), the pre-activation gradients dz, the bias
// partials and the report's sums of squares of dL/dh_t (and dL/dc_t).
//
// Layout: a row of gates is [block 0 | block 1 | ...], each block H wide (torch's order:
// LSTM i, f, g, o; GRU r, z, n). Each loop runs over the H units of a row with the blocks
// at fixed offsets, so it vectorises like the plain epilogues.
#pragma once

#include "gradchain/kernels.h"
#include "activations-inl.h"

#include <limits>

namespace gradchain {
namespace GC_ISA_NS {

// A unit is saturated where its gate's derivative is below 1e-3 of the maximum
// (sigmoid' <= 1/4, tanh' <= 1): the report's "saturated fraction".
template <class T>
static inline T sat_sigmoid() { return T(0.25e-3); }
template <class T>
static inline T sat_tanh() { return T(1e-3); }

// The health report's unit maximum: m = max(m, d0, d1, d2[, d3]) with NaN left out (a
// comparison with NaN is false, so NaN is never selected). The d_k are the unit's gate
// derivatives over their maxima (sigmoid' * 4, tanh').
template <class T>
static inline void unit_max(T& m, T d0, T d1, T d2) {
  T u = m;
  u = d0 > u ? d0 : u;
  u = d1 > u ? d1 : u;
  u = d2 > u ? d2 : u;
  m = u;
}
template <class T>
static inline void unit_max(T& m, T d0, T d1, T d2, T d3) {
  unit_max(m, d0, d1, d2);
  m = d3 > m ? d3 : m;
}

// The zero and subnormal entries of a gradient value (the health report), added to z, s.
template <class T>
static inline void count_tiny(T v, T& z, T& s) {
  const T av = v < T(0) ? -v : v;
  z += av == T(0) ? T(1) : T(0);
  s += (av > T(0) && av < std::numeric_limits<T>::min()) ? T(1) : T(0);
}

// ---------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------
// z (rows, 4H): x_t W_ih^T + h_{t-1} W_hh^T; bias (4H): b_ih + b_hh (or zeros).
// a (rows, 4H) gate values i, f, g, o (may alias z); c = f c_prev + i g; tc = tanh(c);
// h = o tc. stats[2k] = sum of gate k's values, stats[2k+1] = its saturated units
// (assigned). Returns sum(h * 0) + sum(c * 0): 0 unless h or c holds NaN/Inf.
// kHealth: also hl's unit maxima of the normalised gate derivatives and sums of |h|, |c|.
template <class T, bool kHealth>
static double lstm_fwd_rows(const T* z, const T* bias, const T* c_prev, T* a, T* c, T* h,
                            T* tc, double* stats, int64_t rows, int64_t H, GateHealth<T>* hl) {
  const ActSigmoid<T> sg{ActParams{}};
  const ActTanh<T> th{ActParams{}};
  const T ss = sat_sigmoid<T>(), st = sat_tanh<T>();
  double chk = 0.0;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  double n0 = 0, n1 = 0, n2 = 0, n3 = 0;
  double ah = 0, ac = 0;
  T* um = kHealth ? hl->umax : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * 4 * H;
    T* ar = a + r * 4 * H;
    const T* cp = c_prev + r * H;
    T* cr = c + r * H;
    T* hr = h + r * H;
    T* tr = tc + r * H;
    T rowchk = 0;
    T m0 = 0, m1 = 0, m2 = 0, m3 = 0;  // saturated counts of this row (exact in T)
    double v0 = 0, v1 = 0, v2 = 0, v3 = 0, rh = 0, rc = 0;
#pragma omp simd reduction(+ : rowchk, m0, m1, m2, m3, v0, v1, v2, v3, rh, rc)
    for (int64_t j = 0; j < H; ++j) {
      T i, f, g, o, di, df, dg, dO;
      sg(zr[j] + bias[j], i, di);
      sg(zr[H + j] + bias[H + j], f, df);
      th(zr[2 * H + j] + bias[2 * H + j], g, dg);
      sg(zr[3 * H + j] + bias[3 * H + j], o, dO);
      const T cv = f * cp[j] + i * g;
      T t, dt;
      th(cv, t, dt);
      const T hv = o * t;
      ar[j] = i;
      ar[H + j] = f;
      ar[2 * H + j] = g;
      ar[3 * H + j] = o;
      cr[j] = cv;
      tr[j] = t;
      hr[j] = hv;
      rowchk += hv * T(0) + cv * T(0);
      v0 += double(i);
      v1 += double(f);
      v2 += double(g);
      v3 += double(o);
      m0 += di < ss ? T(1) : T(0);
      m1 += df < ss ? T(1) : T(0);
      m2 += dg < st ? T(1) : T(0);
      m3 += dO < ss ? T(1) : T(0);
      if constexpr (kHealth) {
        unit_max(um[j], T(4) * di, T(4) * df, dg, T(4) * dO);
        rh += double(hv < T(0) ? -hv : hv);
        rc += double(cv < T(0) ? -cv : cv);
      }
    }
    chk += double(rowchk);
    s0 += v0, s1 += v1, s2 += v2, s3 += v3;
    n0 += double(m0), n1 += double(m1), n2 += double(m2), n3 += double(m3);
    ah += rh, ac += rc;
  }
  stats[0] = s0, stats[1] = n0, stats[2] = s1, stats[3] = n1;
  stats[4] = s2, stats[5] = n2, stats[6] = s3, stats[7] = n3;
  if constexpr (kHealth) hl->abs_h += ah, hl->abs_c += ac;
  return chk;
}

template <class T>
static double lstm_fwd(const T* z, const T* bias, const T* c_prev, T* a, T* c, T* h, T* tc,
                       double* stats, int64_t rows, int64_t H, GateHealth<T>* hl) {
  return hl ? lstm_fwd_rows<T, true>(z, bias, c_prev, a, c, h, tc, stats, rows, H, hl)
            : lstm_fwd_rows<T, false>(z, bias, c_prev, a, c, h, tc, stats, rows, H, hl);
}

// g (rows, H): the total dL/dh_t; a (rows, 4H): the gates of step t; c_prev, tc (rows, H):
// c_{t-1} and tanh(c_t); dc_next, a_next: dL/dc_{t+1} and the gates of step t+1 (kNext;
// the last step has none). Writes dc = g o (1 - tc^2) + dc_next f_next (the total
// dL/dc_t) and dz (rows, 4H); db_acc (4H) += dz. ss[0] = sum(g^2), ss[1] = sum(dc^2)
// (float64; when kSS).
// kHealth: also the zero / subnormal counts of g and dc into hl.
template <class T, bool kNext, bool kSS, bool kHealth>
static void lstm_bwd_rows(const T* g, const T* a, const T* c_prev, const T* tc,
                          const T* dc_next, const T* a_next, T* dc, T* dz, double* db_acc,
                          double* ss, int64_t rows, int64_t H, GateHealth<T>* hl) {
  double sg = 0.0, sc = 0.0;
  double zc = 0, sbc = 0, czc = 0, csc = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * H;
    const T* ar = a + r * 4 * H;
    const T* cp = c_prev + r * H;
    const T* tr = tc + r * H;
    const T* dn = kNext ? dc_next + r * H : nullptr;
    const T* fn = kNext ? a_next + r * 4 * H + H : nullptr;
    T* dcr = dc + r * H;
    T* dzr = dz + r * 4 * H;
    double rg = 0.0, rc = 0.0;
    T rz = 0, rs = 0, cz = 0, cs = 0;  // counts of this row (exact in T)
#pragma omp simd reduction(+ : rg, rc, rz, rs, cz, cs)
    for (int64_t j = 0; j < H; ++j) {
      const T gv = gr[j];
      const T i = ar[j], f = ar[H + j], gg = ar[2 * H + j], o = ar[3 * H + j];
      const T t = tr[j];
      T d = gv * o * (T(1) - t * t);
      if constexpr (kNext) d += dn[j] * fn[j];
      dcr[j] = d;
      const T zi = d * gg * (i * (T(1) - i));
      const T zf = d * cp[j] * (f * (T(1) - f));
      const T zg = d * i * (T(1) - gg * gg);
      const T zo = gv * t * (o * (T(1) - o));
      dzr[j] = zi;
      dzr[H + j] = zf;
      dzr[2 * H + j] = zg;
      dzr[3 * H + j] = zo;
      db_acc[j] += double(zi);
      db_acc[H + j] += double(zf);
      db_acc[2 * H + j] += double(zg);
      db_acc[3 * H + j] += double(zo);
      if constexpr (kSS) {
        rg += double(gv) * double(gv);
        rc += double(d) * double(d);
      }
      if constexpr (kHealth) {
        count_tiny(gv, rz, rs);
        count_tiny(d, cz, cs);
      }
    }
    sg += rg;
    sc += rc;
    if constexpr (kHealth) zc += double(rz), sbc += double(rs), czc += double(cz), csc += double(cs);
  }
  if constexpr (kSS) {
    ss[0] = sg;
    ss[1] = sc;
  }
  if constexpr (kHealth) {
    hl->zeros += zc, hl->subnormals += sbc;
    hl->c_zeros += czc, hl->c_subnormals += csc;
  }
}

template <class T>
static void lstm_bwd(const T* g, const T* a, const T* c_prev, const T* tc, const T* dc_next,
                     const T* a_next, T* dc, T* dz, double* db_acc, bool want_ss, double* ss,
                     int64_t rows, int64_t H, GateHealth<T>* hl) {
#define GC_LSTM_B(N, S, K) \
  lstm_bwd_rows<T, N, S, K>(g, a, c_prev, tc, dc_next, a_next, dc, dz, db_acc, ss, rows, H, hl)
  if (hl) {  // the health statistics come with the report's sums of squares
    if (dc_next)
      GC_LSTM_B(true, true, true);
    else
      GC_LSTM_B(false, true, true);
  } else if (dc_next) {
    want_ss ? GC_LSTM_B(true, true, false) : GC_LSTM_B(true, false, false);
  } else {
    want_ss ? GC_LSTM_B(false, true, false) : GC_LSTM_B(false, false, false);
  }
#undef GC_LSTM_B
}

// ---------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------
// xa (rows, 3H): x_t W_ih^T; hb (rows, 3H): h_{t-1} W_hh^T; b_ih, b_hh (3H) (or zeros);
// h_prev (rows, H). a (rows, 3H) gate values r, z, n (may alias xa); hn = hb_n + b_hn
// (rows, H), kept for the backward; h = (1 - z) n + z h_prev. Stats and return as lstm_fwd
// (three gates).
template <class T, bool kHealth>
static double gru_fwd_rows(const T* xa, const T* hb, const T* b_ih, const T* b_hh,
                           const T* h_prev, T* a, T* hn, T* h, double* stats, int64_t rows,
                           int64_t H, GateHealth<T>* hl) {
  const ActSigmoid<T> sg{ActParams{}};
  const ActTanh<T> th{ActParams{}};
  const T ss = sat_sigmoid<T>(), st = sat_tanh<T>();
  double chk = 0.0;
  double s0 = 0, s1 = 0, s2 = 0, n0 = 0, n1 = 0, n2 = 0;
  double ah = 0;
  T* um = kHealth ? hl->umax : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xa + r * 3 * H;
    const T* br = hb + r * 3 * H;
    const T* hp = h_prev + r * H;
    T* ar = a + r * 3 * H;
    T* nr = hn + r * H;
    T* hr = h + r * H;
    T rowchk = 0;
    T m0 = 0, m1 = 0, m2 = 0;
    double v0 = 0, v1 = 0, v2 = 0, rh = 0;
#pragma omp simd reduction(+ : rowchk, m0, m1, m2, v0, v1, v2, rh)
    for (int64_t j = 0; j < H; ++j) {
      T rv, zv, nv, dr, dz, dn;
      sg((xr[j] + b_ih[j]) + (br[j] + b_hh[j]), rv, dr);
      sg((xr[H + j] + b_ih[H + j]) + (br[H + j] + b_hh[H + j]), zv, dz);
      const T bn = br[2 * H + j] + b_hh[2 * H + j];
      th((xr[2 * H + j] + b_ih[2 * H + j]) + rv * bn, nv, dn);
      const T hv = (T(1) - zv) * nv + zv * hp[j];
      ar[j] = rv;
      ar[H + j] = zv;
      ar[2 * H + j] = nv;
      nr[j] = bn;
      hr[j] = hv;
      rowchk += hv * T(0);
      v0 += double(rv);
      v1 += double(zv);
      v2 += double(nv);
      m0 += dr < ss ? T(1) : T(0);
      m1 += dz < ss ? T(1) : T(0);
      m2 += dn < st ? T(1) : T(0);
      if constexpr (kHealth) {
        unit_max(um[j], T(4) * dr, T(4) * dz, dn);
        rh += double(hv < T(0) ? -hv : hv);
      }
    }
    chk += double(rowchk);
    s0 += v0, s1 += v1, s2 += v2;
    n0 += double(m0), n1 += double(m1), n2 += double(m2);
    ah += rh;
  }
  stats[0] = s0, stats[1] = n0, stats[2] = s1, stats[3] = n1, stats[4] = s2, stats[5] = n2;
  if constexpr (kHealth) hl->abs_h += ah;
  return chk;
}

template <class T>
static double gru_fwd(const T* xa, const T* hb, const T* b_ih, const T* b_hh, const T* h_prev,
                      T* a, T* hn, T* h, double* stats, int64_t rows, int64_t H,
                      GateHealth<T>* hl) {
  return hl ? gru_fwd_rows<T, true>(xa, hb, b_ih, b_hh, h_prev, a, hn, h, stats, rows, H, hl)
            : gru_fwd_rows<T, false>(xa, hb, b_ih, b_hh, h_prev, a, hn, h, stats, rows, H, hl);
}

// g (rows, H): the total dL/dh_t; a, hn, h_prev: step t's gates, b_n and h_{t-1}.
// Writes da (rows, 3H) = [dz_r, dz_z, dz_n] (the input side) and dhb (rows, 3H) =
// [dz_r, dz_z, dz_n r] (the recurrent side); g_prev (rows, H) += g z (the direct path to
// h_{t-1}; the product dhb W_hh follows). dbi (3H) += da, dbh (3H) += dhb. Returns
// sum(g^2) (float64; 0 unless want_ss).
template <class T, bool kSS, bool kHealth>
static double gru_bwd_rows(const T* g, const T* a, const T* hn, const T* h_prev, T* da, T* dhb,
                           T* g_prev, double* dbi, double* dbh, int64_t rows, int64_t H,
                           GateHealth<T>* hl) {
  double sg = 0.0, zc = 0, sbc = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * H;
    const T* ar = a + r * 3 * H;
    const T* nr = hn + r * H;
    const T* hp = h_prev + r * H;
    T* dar = da + r * 3 * H;
    T* dbr = dhb + r * 3 * H;
    T* gp = g_prev + r * H;
    double rs = 0.0;
    T rz = 0, rsb = 0;  // counts of this row (exact in T)
#pragma omp simd reduction(+ : rs, rz, rsb)
    for (int64_t j = 0; j < H; ++j) {
      const T gv = gr[j];
      const T rv = ar[j], zv = ar[H + j], nv = ar[2 * H + j];
      const T zn = gv * (T(1) - zv) * (T(1) - nv * nv);
      const T zz = gv * (hp[j] - nv) * (zv * (T(1) - zv));
      const T zr = zn * nr[j] * (rv * (T(1) - rv));
      const T zhn = zn * rv;
      dar[j] = zr;
      dar[H + j] = zz;
      dar[2 * H + j] = zn;
      dbr[j] = zr;
      dbr[H + j] = zz;
      dbr[2 * H + j] = zhn;
      gp[j] += gv * zv;
      dbi[j] += double(zr);
      dbi[H + j] += double(zz);
      dbi[2 * H + j] += double(zn);
      dbh[j] += double(zr);
      dbh[H + j] += double(zz);
      dbh[2 * H + j] += double(zhn);
      if constexpr (kSS) rs += double(gv) * double(gv);
      if constexpr (kHealth) count_tiny(gv, rz, rsb);
    }
    sg += rs;
    if constexpr (kHealth) zc += double(rz), sbc += double(rsb);
  }
  if constexpr (kHealth) hl->zeros += zc, hl->subnormals += sbc;
  return sg;
}

template <class T>
static double gru_bwd(const T* g, const T* a, const T* hn, const T* h_prev, T* da, T* dhb,
                      T* g_prev, double* dbi, double* dbh, bool want_ss, int64_t rows,
                      int64_t H, GateHealth<T>* hl) {
#define GC_GRU_B(S, K) \
  gru_bwd_rows<T, S, K>(g, a, hn, h_prev, da, dhb, g_prev, dbi, dbh, rows, H, hl)
  if (hl) return GC_GRU_B(true, true);  // with the report's sum of squares
  return want_ss ? GC_GRU_B(true, false) : GC_GRU_B(false, false);
#undef GC_GRU_B
}

}  // namespace GC_ISA_NS
}  // namespace gradchain
