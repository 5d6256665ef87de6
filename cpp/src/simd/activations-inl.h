// activations-inl.h — one functor per built-in activation, compiled once per ISA
// (table-inl.h), and the dispatch from a runtime ActParams to the functor, generated from
// the list in gradchain/activation_list.h.
//
// Adding an activation: its row in activation_list.h and its functor here, named
// Act<Enum> (the row's enumerator), with a constructor from ActParams (p0, p1 in the
// row's parameter order) and operator()(T x, T& f, T& d) giving f = act(x), d = act'(x).
// Write it with plain arithmetic, ternaries and M<T> (math-inl.h), no branches or calls
// that block vectorisation: every fused pass (epilogues-inl.h) inlines it into its loop,
// for scalar, AVX2 and AVX-512 alike.
#pragma once

#include "gradchain/activation.h"
#include "math-inl.h"

namespace gradchain {
namespace GC_ISA_NS {

// ---------------------------------------------------------------------------
// Activations: eval(x, f, d) gives f = act(x) and d = act'(x) with PyTorch
// autograd's values at the kinks (relu'(0)=0, hardtanh'(+-1)=0,
// leaky_relu'(0)=slope, elu'(0)/selu'(0) left branch, softplus'=1 past threshold).
// ---------------------------------------------------------------------------
template <class T> struct ActIdentity {
  explicit ActIdentity(const ActParams&) {}
  void operator()(T x, T& f, T& d) const { f = x; d = T(1); }
};
// Derivatives are written without cancellation where the function saturates:
// sigmoid' = s (1 - s) = s * (e s) with e = exp(-x); tanh' = 4e / (1 + e)^2 with
// e = exp(-2|x|); exp-based branches use exp(x) itself rather than expm1(x) + 1.
template <class T> struct ActSigmoid {
  explicit ActSigmoid(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T e = M<T>::exp(-x);
    T s = T(1) / (T(1) + e);
    T one_minus_s = x >= T(0) ? e * s : T(1) - s;  // e may be inf for x << 0
    f = s;
    d = s * one_minus_s;
  }
};
// tanh from one exponential: with em = expm1(-2|x|) and e = em + 1,
// tanh|x| = -em / (2 + em) and tanh' = 4 e / (1 + e)^2 (no cancellation anywhere).
// float32 uses an odd polynomial x P(x^2) below 0.55 (least-squares fit to relative
// error 1.1e-9, made for gradchain with numpy; then tanh' = 1 - t^2 >= 0.7)
// and exp there, where 1 - e does not cancel.
template <class T> struct ActTanh {
  explicit ActTanh(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T ax = x < T(0) ? -x : x;
    if constexpr (std::is_same_v<T, float>) {
      float z = x * x;
      float p = -0.0062643244015684815f;
      p = p * z + 0.02106410793302981f;
      p = p * z - 0.053850289738423776f;
      p = p * z + 0.13332564390684656f;
      p = p * z - 0.33333316797341306f;
      p = p * z + 1.0f;
      float t_small = x * p;
      float e = exp_f(-2.0f * ax);
      float r = 1.0f / (1.0f + e);
      float t_big = (1.0f - e) * r;
      t_big = x < 0 ? -t_big : t_big;
      bool small = ax < 0.55f;
      f = small ? t_small : t_big;
      d = small ? 1.0f - t_small * t_small : 4.0f * e * r * r;
    } else {
      // one division (1 + e = 2 + em): a second one for t cost about 1.5 % of
      // mlp-tanh-f64's pass (the divider was the forward epilogue's bottleneck)
      T em = M<T>::expm1(T(-2) * ax);
      T e = em + T(1);
      T r = T(1) / (T(2) + em);
      T t = -em * r;
      f = x < T(0) ? -t : t;
      d = T(4) * e * r * r;
    }
  }
};
template <class T> struct ActRelu {
  explicit ActRelu(const ActParams&) {}
  // NaN as PyTorch: relu(nan) = nan, and its gradient passes (threshold_backward: x <= 0 ? 0 : g)
  void operator()(T x, T& f, T& d) const { f = x < T(0) ? T(0) : x; d = x <= T(0) ? T(0) : T(1); }
};
template <class T> struct ActLeakyRelu {
  T slope;
  explicit ActLeakyRelu(const ActParams& p) : slope(T(p.p0)) {}
  void operator()(T x, T& f, T& d) const { f = x > T(0) ? x : x * slope; d = x > T(0) ? T(1) : slope; }
};
template <class T> struct ActElu {
  T alpha;
  explicit ActElu(const ActParams& p) : alpha(T(p.p0)) {}
  void operator()(T x, T& f, T& d) const {
    T neg = x > T(0) ? T(0) : x;  // keep exp's argument <= 0
    T em1 = M<T>::expm1(neg);
    f = x > T(0) ? x : alpha * em1;
    d = x > T(0) ? T(1) : alpha * M<T>::exp(neg);  // NaN -> NaN (PyTorch's vectorised kernel)
  }
};
template <class T> struct ActSelu {
  static constexpr T kAlpha = T(1.6732632423543772848170429916717);
  static constexpr T kScale = T(1.0507009873554804934193349852946);
  explicit ActSelu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T neg = x > T(0) ? T(0) : x;
    T em1 = M<T>::expm1(neg);
    f = x > T(0) ? kScale * x : kScale * kAlpha * em1;
    d = x > T(0) ? kScale : kScale * kAlpha * M<T>::exp(neg);
  }
};
template <class T> struct ActGelu {  // exact: x * Phi(x)
  explicit ActGelu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T cdf = M<T>::phi(x);  // as erfc: no 1 + erf(x) cancellation for x < 0
    T pdf = M<T>::pdf(x);
    f = x * cdf;
    d = cdf + x * pdf;
  }
};
// PyTorch approximate="tanh": 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// With 1 + tanh(u) = 2 s, s = sigmoid(2u), and 1 - tanh(u)^2 = 4 s (1 - s), 1 - s = e s
// (e = exp(-2u)): f = x s, f' = s + 2 x s (e s) u' — the same function and derivative
// as PyTorch's formula, without its cancellation for negative x.
template <class T> struct ActGeluTanh {
  explicit ActGeluTanh(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    const T kBeta = T(0.79788456080286535588);  // sqrt(2/pi)
    const T kKappa = T(0.044715);
    T u = kBeta * (x + kKappa * x * x * x);
    T e = M<T>::exp(T(-2) * u);
    T s = T(1) / (T(1) + e);
    T du = kBeta * (T(1) + T(3) * kKappa * x * x);
    T one_minus_s = u >= T(0) ? e * s : T(1) - s;
    f = x * s;
    d = s + T(2) * x * s * one_minus_s * du;
  }
};
template <class T> struct ActSoftplus {
  T beta, threshold;
  explicit ActSoftplus(const ActParams& p) : beta(T(p.p0)), threshold(T(p.p1)) {}
  void operator()(T x, T& f, T& d) const {
    T bx = beta * x;
    bool lin = bx > threshold;
    T bxc = lin ? T(0) : bx;  // keep exp finite on the linear branch
    T e = M<T>::exp(bxc);
    f = lin ? x : M<T>::log1p(e) / beta;
    d = lin ? T(1) : e / (e + T(1));
  }
};
template <class T> struct ActSilu {
  explicit ActSilu(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    T e = M<T>::exp(-x);
    T s = T(1) / (T(1) + e);
    T one_minus_s = x >= T(0) ? e * s : T(1) - s;  // = e s without cancellation
    f = x * s;
    d = s * (T(1) + x * one_minus_s);
  }
};
template <class T> struct ActHardtanh {
  T lo, hi;
  explicit ActHardtanh(const ActParams& p) : lo(T(p.p0)), hi(T(p.p1)) {}
  void operator()(T x, T& f, T& d) const {
    T c = x < lo ? lo : x;
    f = c > hi ? hi : c;
    d = (x > lo && x < hi) ? T(1) : T(0);  // NaN -> 0 (PyTorch's vectorised kernel)
  }
};
// mish = x tanh(softplus(x)) (PyTorch's: no softplus threshold). With e = exp(x) and
// n = e (e + 2) = (1 + e)^2 - 1: t = tanh(log1p(e)) = n / (n + 2) and
// 1 - t^2 = 4 (n + 1) / (n + 2)^2, so neither t nor mish' = t + x sigmoid(x) (1 - t^2)
// cancels. Past x = 20, t and mish' are 1 in either precision (e is clamped to stay
// finite); x - x keeps PyTorch's NaN derivative at +inf (inf * 1 * 0 there).
template <class T> struct ActMish {
  explicit ActMish(const ActParams&) {}
  void operator()(T x, T& f, T& d) const {
    bool big = x > T(20);
    T e = M<T>::exp(big ? T(20) : x);
    T n = e * (e + T(2));
    T r = T(1) / (n + T(2));
    T t = n * r;
    T s = e / (T(1) + e);
    f = big ? x : x * t;
    d = big ? (x - x) + T(1) : t + x * s * (T(4) * (n + T(1)) * r * r);
  }
};

// Calls body(act_functor) with the functor type matching p.kind; each
// instantiation is a separate, fully inlined and vectorised loop. The cases are the
// rows of gradchain/activation_list.h.
template <class T, class Body>
static inline auto with_act(const ActParams& p, Body&& body) {
  switch (p.kind) {
#define GC_ACT_CASE(E, name, selects, n_params)                                  \
  case Act::E:                                                                   \
    if constexpr (!std::is_same_v<Act##E<T>, ActIdentity<T>>) return body(Act##E<T>(p)); \
    break;
    GC_ACTIVATION_LIST(GC_ACT_CASE)
#undef GC_ACT_CASE
    default:  // Custom: the driver applies custom activations itself, after an identity pass
      break;
  }
  return body(ActIdentity<T>(p));  // one instance of the identity loop, for both
}

// f, d = act(x), act'(x) over n contiguous values (the table's act_apply).
template <class T>
static void act_apply(const ActParams& p, const T* x, T* f, T* d, int64_t n) {
  with_act<T>(p, [&](auto act) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T fv, dv;
      act(x[i], fv, dv);
      f[i] = fv;
      d[i] = dv;
    }
    return 0;
  });
}

}  // namespace GC_ISA_NS
}  // namespace gradchain
