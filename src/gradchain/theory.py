"""Mean-field theory of signal and gradient propagation (docs/CONVENTIONS.md, "Mean-field theory").

For an MLP without norm layers or residuals, with ``W ~ N(0, sigma_w^2 / fan_in)`` and
``b ~ N(0, sigma_b^2)`` (``gc.init.normal(sigma_w, sigma_b)``), in the infinitely wide limit
the pre-activation variance follows

    q_l = sigma_w^2 E[act(sqrt(q_{l-1}) u)^2] + sigma_b^2,        u ~ N(0, 1),

to a fixed point ``q*`` (the limit of the iteration from ``q_0 = 1``), and the squared
gradient norm changes by the same factor at every layer on its way down:

    E||dL/da_{l-1}||^2 = chi_1 E||dL/da_l||^2,    chi_1 = sigma_w^2 E[act'(sqrt(q*) u)^2].

``chi_1 < 1`` is the ordered phase (gradients vanish), ``chi_1 > 1`` the chaotic one
(they explode) and ``chi_1 = 1`` the critical line between them; the gradient depth scale
is ``xi = -1 / log(chi_1)``.

    import gradchain as gc
    gc.theory.fixed_point("tanh", 1.5, 0.05)       # q*
    gc.theory.chi1("tanh", 1.5, 0.05)              # per-layer factor of ||dL/da||^2
    pd = gc.theory.phase_diagram("tanh", np.linspace(0.5, 4, 40), np.linspace(0, 1, 40))
    pd.plot(path="phase.png")
    gc.theory.compare(report, model=mlp).table()   # theory vs a measured GradReport

Expectations are computed by composite Gauss-Legendre quadrature over pieces that end at
the activation's kinks, so they are accurate to about 1e-15 relative for every built-in
activation (plain Gauss-Hermite is not accurate at kinks). Derivatives are PyTorch's
(``gc.Activation.grad``); kinks have measure zero, so their values there never matter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import activations as _acts
from ._plotting import axes, check_path
from .linearize import ProbeReport
from .report import GradReport

__all__ = [
    "Comparison", "PhaseDiagram", "Propagation", "chi1", "compare",
    "correlation_fixed_point", "depth_scale", "fixed_point", "gaussian_expectation",
    "jacobian_moments", "phase_diagram", "propagate",
]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


# ------------------------------------------------------------------------------- quadrature
# E[h(sqrt(q) u)] is integrated in x = sqrt(q) u against the N(0, q) density, piece by piece
# with 16-point Gauss-Legendre. The pieces end at the union of
#   * Gaussian-scale points sqrt(q) * (0, +-0.75, ..., +-10, +-40): the density is smooth on
#     each piece at its own scale, and beyond |u| = 40 its weight is below 1e-347;
#   * activation-scale points scale * (+-0.5, ..., +-64): where the activation changes shape
#     (tanh saturates near |x| ~ 2, its tails decay like exp(-2|x|)); and
#   * the activation's kinks (relu 0, hardtanh min/max, softplus threshold/beta, ...),
# so each piece is smooth at both scales whatever q is, and no piece straddles a kink.
# Against 30-digit mpmath quadrature this is within 5e-16 (relative) for tanh, relu,
# sigmoid, elu, hardtanh, gelu and silu' at q from 1e-6 to 1e8.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_U_BPS = np.array([0.75, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0, 40.0])
_U_ALL = np.concatenate([-_U_BPS[::-1], [0.0], _U_BPS])
_X_BPS = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0])
_X_ALL = np.concatenate([-_X_BPS[::-1], _X_BPS])
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_CHUNK = 128  # q values per block (bounds the temporaries to a few MB)

# The limits q -> 0+ and q -> infinity are evaluated at these q (the corrections are of
# order sqrt(q) and 1/sqrt(q): far below double precision).
_Q_ZERO = 1e-200
_Q_INF = 1e60

# Fixed-point search (see _solve_q).
_G_TOL = 1e-13      # |F(q)/q - 1| below this is "no clean sign": quadrature noise is ~1e-15
_SCAN = 8.0         # geometric scan factor (grows during long scans)
_TINY = 1e-13       # q* = 0 when no fixed point is found above _TINY * q0 (F(0) = 0)
_HUGE = 1e13        # q* = inf when none below _HUGE * max(q0, sigma_b^2, sigma_w^2 * bound^2)
_Q_FLOOR = 1e-280   # below this (F(0) > 0 but tiny) q* is reported as 0
_SIGMA_MAX = 1e8
_Q0_RANGE = (1e-100, 1e100)


def _expect(h: Callable[[np.ndarray], np.ndarray], q: np.ndarray, xbps: np.ndarray
            ) -> np.ndarray:
    """``E[h(sqrt(q) u)]`` for each entry of q (1-D, float64, >= 0; q = 0 gives h(0)).

    ``xbps`` (k,) are breakpoints in x (activation scale and kinks); ``h`` maps a 2-D float64
    array to an array of the same shape.
    """
    out = np.empty(q.shape, dtype=np.float64)
    zero = q == 0.0
    with np.errstate(all="ignore"):
        if zero.any():
            out[zero] = float(_call(h, np.zeros((1, 1)))[0, 0])
        idx = np.flatnonzero(~zero)
        for start in range(0, idx.size, _CHUNK):
            sel = idx[start:start + _CHUNK]
            s = np.sqrt(q[sel])[:, None]                                   # (m, 1)
            lim = _U_BPS[-1] * s
            bps = np.sort(np.concatenate(
                [s * _U_ALL, np.clip(xbps[None, :], -lim, lim)], axis=1), axis=1)  # (m, P+1)
            half = 0.5 * np.diff(bps, axis=1)                              # (m, P)
            mid = 0.5 * (bps[:, 1:] + bps[:, :-1])
            x = mid[..., None] + half[..., None] * _GL_NODES               # (m, P, n)
            z = x / s[..., None]
            w = (half[..., None] * _GL_WEIGHTS) * np.exp(-0.5 * z * z) * (
                _INV_SQRT_2PI / s[..., None])
            fx = _call(h, x.reshape(sel.size, -1)).reshape(x.shape)
            # a zero weight (far tail) times an overflowed h is 0, not NaN
            out[sel] = np.where(w > 0.0, w * fx, 0.0).sum(axis=(1, 2))
    return out


def _call(h: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    y = np.asarray(h(x), dtype=np.float64)
    if y.shape != x.shape:
        raise ValueError(f"f: returned shape {y.shape} for input of shape {x.shape}; "
                         "expected an elementwise (vectorised) function")
    return y


def gaussian_expectation(f: Callable[[np.ndarray], np.ndarray], q: Any, *,
                         kinks: Sequence[float] = (), scale: float = 1.0) -> Any:
    """``E[f(sqrt(q) u)]``, ``u ~ N(0, 1)``, by piecewise Gauss-Legendre quadrature.

    Parameters
    ----------
    f : callable
        Vectorised elementwise function of a float64 array (it is called with 2-D arrays
        and must return the same shape).
    q : float or array_like of float, any shape
        Variances, finite and >= 0 (``q = 0`` gives ``f(0)``).
    kinks : sequence of float
        Points in x where f or a derivative jumps (``0`` is always a breakpoint). The
        integral is split there; without them the accuracy near a kink is lost.
    scale : float
        The length scale of f's features in x (1 for the usual activations; ``1/beta``
        for a softplus).

    Returns
    -------
    float for a scalar q, else an array of q's shape. Accurate to ~1e-15 (relative) for
    smooth pieces with features at ``scale`` and Gaussian-tailed growth at most polynomial.
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable, got {type(f).__name__}")
    qa = _real_array(q, "q")
    if (qa < 0).any():
        raise ValueError(f"q: expected values >= 0, got {qa.min()}")
    if isinstance(kinks, (str, bytes)) or not isinstance(kinks, Sequence | np.ndarray):
        raise TypeError(f"kinks: expected a sequence of numbers, got {type(kinks).__name__}")
    k = _real_array(list(kinks), "kinks").ravel() if len(kinks) else np.zeros(0)
    sc = _sigma(scale, "scale")
    if sc == 0.0:
        raise ValueError("scale: expected a number > 0, got 0")
    xb = np.concatenate([sc * _X_ALL, k])
    res = _expect(f, qa.ravel(), xb).reshape(qa.shape)
    return float(res) if res.ndim == 0 else res


# ----------------------------------------------------------------------------- validation
def _sigma(v: Any, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                             np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    x = float(v)
    if not math.isfinite(x) or x < 0 or x > _SIGMA_MAX:
        raise ValueError(f"{name}: expected a finite number in [0, {_SIGMA_MAX:g}], got {v!r}")
    return x


def _real_array(v: Any, name: str) -> np.ndarray:
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name}: expected numbers, got {type(v).__name__}")
    try:
        a = np.asarray(v)
    except Exception as e:  # ragged nested lists
        raise TypeError(f"{name}: cannot be read as an array of numbers ({e})") from None
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite numbers, got NaN or Inf")
    return a


def _grid(v: Any, name: str) -> np.ndarray:
    a = _real_array(v, name)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D grid, got shape {a.shape}")
    if (a < 0).any() or (a > _SIGMA_MAX).any():
        raise ValueError(f"{name}: expected values in [0, {_SIGMA_MAX:g}], got "
                         f"[{a.min()}, {a.max()}]")
    if a.size > 1 and not (np.diff(a) > 0).all():
        raise ValueError(f"{name}: expected strictly increasing values")
    return a


# ---------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class _ActInfo:
    """An activation with what the quadrature needs: breakpoints and the squared maps."""

    act: _acts.Activation
    xbps: np.ndarray      # activation-scale breakpoints and kinks, in x
    f0sq: float           # act(0)^2
    bound: float          # a rough size of act at |x| ~ 1 (caps the q* = inf decision)

    @property
    def name(self) -> str:
        return self.act.name

    def sq(self, x: np.ndarray) -> np.ndarray:
        return np.square(self.act(x))

    def dsq(self, x: np.ndarray) -> np.ndarray:
        return np.square(self.act.grad(x))


def _info(activation: Any) -> _ActInfo:
    act = _acts.resolve(activation)  # TypeError / ValueError listing the valid names
    scale, kinks, bound = 1.0, [0.0], 1.0
    spec, p = act.spec, act.params
    if spec is not None:  # the table's scale, size and kinks; 0 is a breakpoint anyway
        scale, bound = spec.scale(p), spec.bound(p)
        kinks += [k.where(p) for k in spec.kinks
                  if k.applies(p) and (k.moves or k.where(p) != 0.0)]
    f0 = float(_call(act, np.zeros((1, 1)))[0, 0])
    if not math.isfinite(f0):
        raise ValueError(f"activation: {act!r} is not finite at 0")
    xb = np.concatenate([scale * _X_ALL, np.asarray(kinks, dtype=np.float64)])
    return _ActInfo(act, xb, f0 * f0, max(bound, abs(f0)))


# ---------------------------------------------------------------------------- fixed point
def _solve_q(info: _ActInfo, sw2: np.ndarray, sb2: np.ndarray, q0: float, tol: float,
             max_iter: int) -> np.ndarray:
    """q* for each (sigma_w^2, sigma_b^2) pair: the limit of q <- F(q) from q0.

    With ``g(q) = F(q)/q - 1`` (F nondecreasing, true for every built-in activation), the
    iteration moves towards the nearest root of g in the direction of sign(g(q0)). We scan
    geometrically in that direction until g changes sign cleanly (|g| > _G_TOL), then solve
    for the root in log q by Illinois regula falsi with a bisection safeguard. When no sign
    change appears the iteration runs off to 0 (F(0) = 0 and no root above _TINY * q0;
    e.g. tanh at sigma_b = 0, sigma_w <= 1, where q_l ~ 1/l) or to infinity (none below
    _HUGE * max(q0, sigma_b^2, sigma_w^2 bound^2); e.g. relu with sigma_w^2 >= 2, sigma_b > 0).
    """
    m = sw2.size
    F0 = sw2 * info.f0sq + sb2

    def g(q: np.ndarray, sel: np.ndarray) -> np.ndarray:
        val = sw2[sel] * (_expect(info.sq, q, info.xbps) / q) - 1.0 + sb2[sel] / q
        if np.isnan(val).any():
            raise ValueError(f"activation {info.act!r}: E[act^2] is not finite")
        return val

    everyone = np.arange(m)
    q_star = np.full(m, np.nan)
    g0 = g(np.full(m, q0), everyone)
    fixed = np.abs(g0) <= _G_TOL
    q_star[fixed] = q0
    d = np.sign(g0)                     # -1: q_l decreases, +1: it increases
    near_q = np.full(m, q0)             # last point with a clean g of the starting sign
    near_g = g0.copy()
    far_q = np.full(m, np.nan)          # first point with a clean g of the other sign
    far_g = np.full(m, np.nan)
    cursor = np.full(m, q0)
    huge = _HUGE * np.maximum.reduce([np.full(m, q0), sb2, sw2 * info.bound ** 2])
    scanning = ~fixed
    for step in range(max_iter):
        if not scanning.any():
            break
        sel = np.flatnonzero(scanning)
        # the log-step doubles every 8 steps: any range of q is covered in < 50 steps
        q_try = cursor[sel] * (_SCAN ** min(2 ** (step // 8), 64)) ** d[sel]
        to_zero = (d[sel] < 0) & (((F0[sel] == 0) & (q_try < _TINY * q0)) | (q_try < _Q_FLOOR))
        to_inf = (d[sel] > 0) & (q_try > huge[sel])
        q_star[sel[to_zero]] = 0.0
        q_star[sel[to_inf]] = math.inf
        scanning[sel[to_zero | to_inf]] = False
        keep = ~(to_zero | to_inf)
        sel, q_try = sel[keep], q_try[keep]
        if sel.size == 0:
            continue
        gt = g(q_try, sel)
        cursor[sel] = q_try
        same = gt * d[sel] > _G_TOL
        near_q[sel[same]] = q_try[same]
        near_g[sel[same]] = gt[same]
        crossed = gt * d[sel] < -_G_TOL
        far_q[sel[crossed]] = q_try[crossed]
        far_g[sel[crossed]] = gt[crossed]
        scanning[sel[crossed]] = False
    else:
        if scanning.any():
            raise RuntimeError(f"fixed_point: no bracket after max_iter={max_iter} steps")

    # Illinois regula falsi in t = log q on the brackets [near, far].
    br = np.flatnonzero(np.isnan(q_star))
    ta, ga = np.log(near_q[br]), near_g[br]
    tb, gb = np.log(far_q[br]), far_g[br]
    width = np.abs(tb - ta)
    w1, w2 = width.copy(), width.copy()  # the widths one and two steps ago
    todo = width > tol
    for _ in range(max_iter):
        if not todo.any():
            break
        i = np.flatnonzero(todo)
        lo, hi = np.minimum(ta[i], tb[i]), np.maximum(ta[i], tb[i])
        with np.errstate(all="ignore"):
            tc = tb[i] - gb[i] * (tb[i] - ta[i]) / (gb[i] - ga[i])
        bisect = ~((tc > lo) & (tc < hi)) | (np.abs(tb[i] - ta[i]) > 0.5 * w2[i])
        tc = np.where(bisect, 0.5 * (lo + hi), tc)
        gc_ = g(np.exp(tc), br[i])
        flip = gc_ * gb[i] < 0  # the root lies between c and b: b becomes the other end
        ta[i] = np.where(flip, tb[i], ta[i])
        ga[i] = np.where(flip, gb[i], 0.5 * ga[i])  # Illinois: halve the stale end
        tb[i], gb[i] = tc, gc_
        w2[i], w1[i] = w1[i], np.abs(tb[i] - ta[i])
        exact = gc_ == 0.0
        ta[i[exact]] = tc[exact]
        todo[i] = (np.abs(tb[i] - ta[i]) > tol) & ~exact
    else:
        if todo.any():
            raise RuntimeError(f"fixed_point: not converged after max_iter={max_iter} steps")
    q_star[br] = np.exp(0.5 * (ta + tb))
    return q_star


def _chi1_at(info: _ActInfo, sw2: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sigma_w^2 E[act'(sqrt(q) u)^2], with the limits at q = 0 and q = inf."""
    qe = np.where(q == 0.0, _Q_ZERO, np.where(np.isinf(q), _Q_INF, q))
    e = _expect(info.dsq, qe, info.xbps)
    if np.isnan(e).any():
        raise ValueError(f"activation {info.act!r}: E[act'^2] is not finite")
    return sw2 * e


def _controls(q0: Any, tol: Any, max_iter: Any) -> tuple[float, float, int]:
    if isinstance(q0, (bool, np.bool_)) or not isinstance(q0, (int, float, np.integer,
                                                               np.floating)):
        raise TypeError(f"q0: expected a real number, got {type(q0).__name__}")
    q0f = float(q0)
    if not (_Q0_RANGE[0] <= q0f <= _Q0_RANGE[1]):
        raise ValueError(f"q0: expected a number in [{_Q0_RANGE[0]:g}, {_Q0_RANGE[1]:g}], "
                         f"got {q0!r}")
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float, np.integer,
                                                                 np.floating)):
        raise TypeError(f"tol: expected a real number, got {type(tol).__name__}")
    tolf = float(tol)
    if not (1e-15 <= tolf <= 0.1):
        raise ValueError(f"tol: expected a number in [1e-15, 0.1], got {tol!r}")
    if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, (int, np.integer)):
        raise TypeError(f"max_iter: expected an int, got {type(max_iter).__name__}")
    if max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter}")
    return q0f, tolf, int(max_iter)


def fixed_point(activation: str | _acts.Activation, sigma_w: float, sigma_b: float, *,
                q0: float = 1.0, tol: float = 1e-13, max_iter: int = 200) -> float:
    """The fixed point ``q*`` of ``q_l = sigma_w^2 E[act(sqrt(q_{l-1}) u)^2] + sigma_b^2``.

    ``q*`` is the limit of the iteration from ``q_0 = q0``; ``0.0`` when it goes to 0
    (e.g. tanh at ``sigma_b = 0``, ``sigma_w <= 1``, where ``q_l ~ 1/l`` at ``sigma_w = 1``),
    ``math.inf`` when it diverges (e.g. relu with ``sigma_w^2 > 2``, or ``= 2`` and
    ``sigma_b > 0``). Found by bracketing and root finding, not by iterating, so slow
    convergence near critical points does not matter; relative accuracy ~``tol``.

    Parameters
    ----------
    activation : str or gc.Activation
        A name from docs/CONVENTIONS.md (with its parameters through ``gc.Activation``), or
        ``gc.Activation.custom(f, df)`` (best effort: breakpoints only at 0, and F must be
        nondecreasing in q for the limit to be the nearest root).
    sigma_w, sigma_b : float
        Weight and bias scales of ``gc.init.normal``: finite, in ``[0, 1e8]``.
    q0 : float
        The starting variance, in ``[1e-100, 1e100]``.
    tol : float
        Relative tolerance on ``q*`` (in ``[1e-15, 0.1]``).
    max_iter : int
        Cap on the scan steps and on the root-finding steps (RuntimeError beyond).

    Notes
    -----
    Where ``|F(q0)/q0 - 1| <= 1e-13`` q0 itself is returned (e.g. relu at
    ``sigma_w^2 = 2``, ``sigma_b = 0``, where every q is a fixed point). A fixed point
    below ``1e-13 q0`` with ``F(0) = 0`` is reported as 0, one above
    ``1e13 max(q0, sigma_b^2, sigma_w^2)`` as inf.
    """
    info = _info(activation)
    sw = _sigma(sigma_w, "sigma_w")
    sb = _sigma(sigma_b, "sigma_b")
    q0f, tolf, mi = _controls(q0, tol, max_iter)
    return float(_solve_q(info, np.array([sw * sw]), np.array([sb * sb]), q0f, tolf, mi)[0])


def chi1(activation: str | _acts.Activation, sigma_w: float, sigma_b: float, *,
         q0: float = 1.0) -> float:
    """The mean-field per-layer gradient factor ``chi_1 = sigma_w^2 E[act'(sqrt(q*) u)^2]``.

    ``E||dL/da_{l-1}||^2 = chi_1 E||dL/da_l||^2`` in the wide limit: below 1 gradients
    vanish (ordered phase), above 1 they explode (chaotic phase). ``q*`` is
    :func:`fixed_point` (from ``q0``); at ``q* = 0`` the value is the limit ``q -> 0+``
    (``sigma_w^2 act'(0)^2`` for a smooth activation, ``sigma_w^2 (act'(0-)^2 +
    act'(0+)^2) / 2`` at a kink, e.g. relu ``sigma_w^2 / 2``), at ``q* = inf`` the limit
    ``q -> inf`` (relu ``sigma_w^2 / 2``, identity ``sigma_w^2``).
    """
    info = _info(activation)
    sw = _sigma(sigma_w, "sigma_w")
    sb = _sigma(sigma_b, "sigma_b")
    q0f, tolf, mi = _controls(q0, 1e-13, 200)
    q = _solve_q(info, np.array([sw * sw]), np.array([sb * sb]), q0f, tolf, mi)
    return float(_chi1_at(info, np.array([sw * sw]), q)[0])


def _xi(c: float) -> float:
    if math.isnan(c):
        return math.nan
    if c == 1.0:
        return math.inf
    if c == 0.0:
        return 0.0
    return -1.0 / math.log(c)


def depth_scale(activation: str | _acts.Activation, sigma_w: float, sigma_b: float, *,
                q0: float = 1.0) -> float:
    """The gradient depth scale ``xi = -1 / log(chi_1)``: ``||dL/da_l||^2`` changes by a
    factor e every ``|xi|`` layers.

    Positive in the ordered phase (``chi_1 < 1``: the gradient vanishes with that
    e-folding depth), ``+inf`` on the critical line (``chi_1 = 1``), negative in the
    chaotic phase (``chi_1 > 1``: the gradient grows by e every ``-xi`` layers), and 0
    when ``chi_1 = 0``.
    """
    return _xi(chi1(activation, sigma_w, sigma_b, q0=q0))


# ---------------------------------------------------------------------------- phase diagram
def _measured_points(measured: Any) -> np.ndarray:
    """(k, 3) array of (sigma_w, sigma_b, measured chi_1) from the accepted forms."""
    if measured is None:
        return np.zeros((0, 3))
    if isinstance(measured, (str, bytes)) or not isinstance(measured, Sequence | np.ndarray):
        raise TypeError("measured: expected a sequence of (sigma_w, sigma_b, chi_1 or "
                        f"GradReport) triples or Comparisons, got {type(measured).__name__}")
    rows = []
    for i, item in enumerate(measured):
        if isinstance(item, Comparison):
            rows.append((item.sigma_w, item.sigma_b, item.chi1_measured))
            continue
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence | np.ndarray) or (
                len(item) != 3):
            raise TypeError(f"measured[{i}]: expected a (sigma_w, sigma_b, chi_1 or "
                            f"GradReport) triple or a Comparison, got {item!r}")
        sw = _sigma(item[0], f"measured[{i}][0] (sigma_w)")
        sb = _sigma(item[1], f"measured[{i}][1] (sigma_b)")
        v = item[2]
        if isinstance(v, ProbeReport) and v.axis == "layer":
            v = _ProbeAsReport(v)
        if isinstance(v, (GradReport, _ProbeAsReport)):
            try:
                pair = _skip(_DEFAULT_SKIP, v.depth)
            except ValueError as e:
                raise ValueError(f"measured[{i}][2]: the GradReport is too shallow to fit "
                                 f"({e})") from None
            c = 10.0 ** (2.0 * _fit(v, pair)[0])
        elif isinstance(v, (bool, np.bool_)) or not isinstance(
                v, (int, float, np.integer, np.floating)):
            raise TypeError(f"measured[{i}][2]: expected a measured chi_1 (number) or a "
                            f"GradReport, got {type(v).__name__}")
        else:
            c = float(v)
            if math.isnan(c) or c < 0:
                raise ValueError(f"measured[{i}][2]: expected a chi_1 >= 0, got {v!r}")
        rows.append((sw, sb, c))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


@dataclass
class PhaseDiagram:
    """The mean-field order/chaos phase diagram of one activation.

    Attributes
    ----------
    sigma_w : (n_w,) float64
    sigma_b : (n_b,) float64
    q_star : (n_b, n_w) float64
        ``q*`` at ``(sigma_b[i], sigma_w[j])`` (0 or inf where the iteration goes there).
    chi1 : (n_b, n_w) float64
        ``chi_1`` at the same points.
    activation : str
        The activation's name.
    """

    sigma_w: np.ndarray
    sigma_b: np.ndarray
    q_star: np.ndarray
    chi1: np.ndarray
    activation: str

    @property
    def depth_scale(self) -> np.ndarray:
        """``-1 / log(chi_1)``, (n_b, n_w) (+inf at chi_1 = 1, negative where it explodes)."""
        return np.vectorize(_xi, otypes=[np.float64])(self.chi1)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None,
             measured: Any = None) -> tuple[Any, Any]:
        """``log10 chi_1`` over the ``(sigma_w, sigma_b)`` plane (needs matplotlib).

        A diverging colour map centred on ``chi_1 = 1`` (blue: ordered, gradients vanish;
        red: chaotic, they explode), the critical line ``chi_1 = 1`` as a black contour, the
        two phases labelled, and optional measured points on top, filled with their measured
        ``chi_1`` in the same colour scale.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Draw into it; None makes a new figure.
        path : str or os.PathLike or None
            Also save the figure there as a PNG; the folder must exist.
        measured : sequence or None
            Items ``(sigma_w, sigma_b, chi_1_measured)``, ``(sigma_w, sigma_b, GradReport)``
            (chi_1 fitted as :func:`compare` does, default ``skip``) or :class:`Comparison`.

        Returns
        -------
        (fig, ax) : the matplotlib Figure and Axes.
        """
        p = check_path(path)
        pts = _measured_points(measured)
        fig, ax = axes(ax, (7.0, 5.0))
        from matplotlib.colors import Normalize

        with np.errstate(divide="ignore"):
            lc = np.log10(self.chi1)
            lm = np.log10(pts[:, 2])
        finite = np.concatenate([lc[np.isfinite(lc)], lm[np.isfinite(lm)]])
        vmax = max(float(np.max(np.abs(finite))) if finite.size else 1.0, 1e-3)
        norm = Normalize(-vmax, vmax)
        cmap = "RdBu_r"
        mesh = ax.pcolormesh(self.sigma_w, self.sigma_b, np.clip(lc, -vmax, vmax),
                             cmap=cmap, norm=norm, shading="nearest")
        fig.colorbar(mesh, ax=ax, label=r"$\log_{10}\chi_1$ (per-layer factor of "
                     r"$\|dL/da_l\|^2$)")
        if min(lc.shape) >= 2 and np.nanmin(lc) < 0 < np.nanmax(lc):
            cs = ax.contour(self.sigma_w, self.sigma_b, np.clip(lc, -vmax, vmax), levels=[0.0],
                            colors="k", linewidths=1.5)
            ax.clabel(cs, fmt={0.0: r"$\chi_1 = 1$"}, fontsize=8)
        # each phase's label: on the row nearest 3/4 of the sigma_b range that has it,
        # centred on that row's stretch of the phase
        sb = self.sigma_b
        rows = np.argsort(np.abs(sb - (sb[0] + 0.75 * (sb[-1] - sb[0]))), kind="stable")
        for mask, text in ((lc < 0, "ordered (vanishing)"), (lc > 0, "chaotic (exploding)")):
            row = next((r for r in rows if mask[r].any()), None)
            if row is not None:
                ax.text(float(self.sigma_w[mask[row]].mean()), float(sb[row]), text,
                        ha="center", va="center", fontsize=10, zorder=4,
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.75})
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], c=np.clip(np.nan_to_num(lm, nan=0.0,
                                                                      neginf=-vmax), -vmax,
                                                        vmax),
                       cmap=cmap, norm=norm, edgecolors="k", s=60, zorder=3,
                       label=r"measured $\chi_1$ (same colours)")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xlabel(r"$\sigma_w$")
        ax.set_ylabel(r"$\sigma_b$")
        ax.set_title(f"{self.activation}: mean-field gradient phase diagram", fontsize=10)
        if p is not None:
            from ._plotting import save

            save(fig, p)
        return fig, ax

    def __repr__(self) -> str:
        return (f"PhaseDiagram(activation={self.activation!r}, sigma_w: {self.sigma_w.size} "
                f"in [{self.sigma_w[0]:g}, {self.sigma_w[-1]:g}], sigma_b: "
                f"{self.sigma_b.size} in [{self.sigma_b[0]:g}, {self.sigma_b[-1]:g}])")


def phase_diagram(activation: str | _acts.Activation, sigma_w_grid: Any, sigma_b_grid: Any
                  ) -> PhaseDiagram:
    """``q*`` and ``chi_1`` on the grid ``sigma_b_grid x sigma_w_grid`` (vectorised).

    Parameters
    ----------
    activation : str or gc.Activation
    sigma_w_grid : (n_w,) array_like
        Strictly increasing, finite, in ``[0, 1e8]``.
    sigma_b_grid : (n_b,) array_like
        The same.

    Returns
    -------
    PhaseDiagram with ``q_star`` and ``chi1`` of shape ``(n_b, n_w)``.
    """
    info = _info(activation)
    sw = _grid(sigma_w_grid, "sigma_w_grid")
    sb = _grid(sigma_b_grid, "sigma_b_grid")
    W, B = np.meshgrid(sw, sb)
    sw2, sb2 = (W * W).ravel(), (B * B).ravel()
    q = _solve_q(info, sw2, sb2, 1.0, 1e-13, 200)
    c = _chi1_at(info, sw2, q)
    return PhaseDiagram(sw, sb, q.reshape(W.shape), c.reshape(W.shape), info.name)


# ------------------------------------------------------------------------- measured vs theory
_DEFAULT_SKIP = (2, 5)


def _skip(skip: Any, depth: int) -> tuple[int, int]:
    if isinstance(skip, (bool, np.bool_)):
        raise TypeError(f"skip: expected an int or a pair of ints, got {skip!r}")
    if isinstance(skip, (int, np.integer)):
        pair = (int(skip), int(skip))
    elif isinstance(skip, Sequence) and not isinstance(skip, (str, bytes)) and len(skip) == 2 \
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in skip):
        pair = (int(skip[0]), int(skip[1]))
    else:
        raise TypeError(f"skip: expected an int or a pair of ints, got {skip!r}")
    if min(pair) < 0:
        raise ValueError(f"skip: expected counts >= 0, got {skip!r}")
    if depth - pair[0] - pair[1] < 1:
        raise ValueError(f"skip: {pair} leaves fewer than 2 layers of a depth-{depth} report "
                         "to fit (need skip[0] + skip[1] <= depth - 1)")
    return pair


def _norms(report: Any) -> np.ndarray:
    """The per-layer norms a report measures: ``||dL/da_l||`` of a GradReport, or
    ``sqrt(E||J_l^T u||^2 / E||u||^2)`` of an MLP's ProbeReport."""
    if isinstance(report, ProbeReport):
        return np.sqrt(report.factor)
    return np.asarray(report.activation_grad_norms, dtype=np.float64)


def _fit(report: Any, pair: tuple[int, int]) -> tuple[float, int, int]:
    """(slope of log10 ||dL/da_l|| per layer going down, lo, hi) over l = lo..hi."""
    a = _norms(report)
    L = a.size - 1
    hi, lo = L - pair[0], pair[1]
    seg = a[lo:hi + 1]
    down = (hi - np.arange(lo, hi + 1)).astype(np.float64)
    ok = np.isfinite(seg) & (seg > 0)
    if ok.sum() < 2:
        return math.nan, lo, hi
    return float(np.polyfit(down[ok], np.log10(seg[ok]), 1)[0]), lo, hi


@dataclass
class Comparison:
    """Measured per-layer gradient factor next to the mean-field prediction.

    Attributes
    ----------
    activation : str
    sigma_w, sigma_b, q_star : float
    chi1 : float
        Predicted per-layer factor of ``||dL/da_l||^2``.
    chi1_measured : float
        ``10 ** (2 * log10_factor_measured)``.
    log10_factor, log10_factor_measured : float
        Per-layer change of ``log10 ||dL/da_l||`` going down: predicted
        ``log10 sqrt(chi_1)``, measured as the least-squares slope over ``layers``.
    depth_scale, depth_scale_measured : float
        ``-1 / log(chi_1)`` of each.
    layers : (int, int)
        The fitted range ``lo..hi`` of ``l`` (``a_0 = x`` is the input, ``a_L`` the last
        hidden layer).
    log10_norms : (L+1,) float64
        Measured ``log10 ||dL/da_l||`` (NaN where 0 or not finite).
    log10_norms_predicted : (L+1,) float64
        The prediction, anchored at the measured value at ``l = hi``.
    """

    activation: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi1: float
    chi1_measured: float
    log10_factor: float
    log10_factor_measured: float
    depth_scale: float
    depth_scale_measured: float
    layers: tuple[int, int]
    log10_norms: np.ndarray = field(repr=False)
    log10_norms_predicted: np.ndarray = field(repr=False)

    @property
    def relative_error(self) -> float:
        """``chi1_measured / chi1 - 1``."""
        if self.chi1 == 0:
            return math.inf if self.chi1_measured != 0 else 0.0
        return self.chi1_measured / self.chi1 - 1.0

    def table(self) -> str:
        """A readable summary and a per-layer table (str)."""
        lo, hi = self.layers
        lines = [
            f"mean field vs measured: {self.activation}, sigma_w={self.sigma_w:g}, "
            f"sigma_b={self.sigma_b:g}, q*={self.q_star:.4g}; fit over l = {hi}..{lo}",
            f"{'':24}{'predicted':>12}{'measured':>12}",
            f"{'chi_1':24}{self.chi1:>12.5g}{self.chi1_measured:>12.5g}"
            f"   ({100 * self.relative_error:+.2f}%)",
            f"{'log10 factor per layer':24}{self.log10_factor:>12.5f}"
            f"{self.log10_factor_measured:>12.5f}",
            f"{'depth scale xi':24}{self.depth_scale:>12.4g}{self.depth_scale_measured:>12.4g}",
            "",
            f"{'layer':>6}  {'log10||dL/da_l||':>17}  {'predicted':>10}  {'diff':>8}",
        ]
        L = self.log10_norms.size - 1
        for layer in range(L, -1, -1):
            m, p = self.log10_norms[layer], self.log10_norms_predicted[layer]
            name = "input" if layer == 0 else str(layer)
            mark = "" if lo <= layer <= hi else "  (not fitted)"
            lines.append(f"{name:>6}  {m:>17.4f}  {p:>10.4f}  {m - p:>8.4f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (floats, ints, lists, str): JSON-ready."""
        return {
            "activation": self.activation, "sigma_w": self.sigma_w, "sigma_b": self.sigma_b,
            "q_star": self.q_star, "chi1": self.chi1, "chi1_measured": self.chi1_measured,
            "relative_error": self.relative_error, "log10_factor": self.log10_factor,
            "log10_factor_measured": self.log10_factor_measured,
            "depth_scale": self.depth_scale, "depth_scale_measured": self.depth_scale_measured,
            "layers": list(self.layers),
            "log10_norms": [float(v) for v in self.log10_norms],
            "log10_norms_predicted": [float(v) for v in self.log10_norms_predicted],
        }


class _ProbeAsReport:
    """A ProbeReport read as compare() reads a GradReport: ``sqrt(factor)`` per layer."""

    def __init__(self, probe: ProbeReport) -> None:
        self.activation_grad_norms = np.sqrt(probe.factor)
        self.depth = probe.factor.size - 1


def _from_model(model: Any) -> tuple[_acts.Activation, float, float, int]:
    """The mean-field setting of a model whose kind the theory describes (its lab's
    ``mean_field``); TypeError for any other object."""
    from .models import Model, describe_kinds

    if not isinstance(model, Model) or not model.lab.mean_field_theory:
        kinds = describe_kinds("gc.", where=lambda c: c.lab.mean_field_theory)
        raise TypeError(f"model: expected a {kinds}, got {type(model).__name__}")
    return model.lab.mean_field(model)


def compare(report: GradReport, activation: str | _acts.Activation | None = None,
            sigma_w: float | None = None, sigma_b: float | None = None, *,
            model: Any = None, skip: int | tuple[int, int] = _DEFAULT_SKIP) -> Comparison:
    """Compare a measured :class:`GradReport` with the mean-field prediction.

    The measured per-layer factor is the least-squares slope of ``log10 ||dL/da_l||``
    (``report.activation_grad_norms``) going down from ``l = L - skip[0]`` to
    ``l = skip[1]``. Layers near the input are left out because their pre-activation
    variance has not yet reached ``q*`` (the first one sees the data's variance) and
    ``a_0 = x`` is not a hidden layer; a few near the output because the loss gradient
    enters there. The prediction is ``log10 sqrt(chi_1)`` per layer.

    Parameters
    ----------
    report : GradReport or ProbeReport
        From ``MLP.backward`` / ``loss_and_grad`` (or ``MLP.probe``: its
        ``sqrt(factor)`` per layer) of a model with ``init=gc.init.normal(sigma_w,
        sigma_b)`` (or ``gc.init.orthogonal(gain)``: ``sigma_w = gain``, ``sigma_b = 0``),
        no norm layers, no residuals.
    activation, sigma_w, sigma_b :
        The model's; or give ``model=`` instead (not both).
    model : gc.MLP
        Takes activation and sigmas from it (``sigma_b = 0`` when it has no biases).
        ValueError when it has norm layers or residuals, or an init other than ``normal``,
        or its depth differs from the report's.
    skip : int or (int, int)
        Layers left out near the output and near the input (an int: both); default (2, 5).
        Leaves at least 2 layers.

    Returns
    -------
    Comparison
    """
    if isinstance(report, ProbeReport) and report.axis == "layer":
        report = _ProbeAsReport(report)
    if not isinstance(report, (GradReport, _ProbeAsReport)):
        raise TypeError(f"report: expected a gc.GradReport or a ProbeReport (from an MLP), "
                        f"got {type(report).__name__}")
    if model is not None:
        if activation is not None or sigma_w is not None or sigma_b is not None:
            raise ValueError("compare: give model= or activation/sigma_w/sigma_b, not both")
        act, sw, sb, depth = _from_model(model)
        if depth != report.depth:
            raise ValueError(f"model: depth {depth} does not match the report's "
                             f"{report.depth}")
    else:
        if activation is None or sigma_w is None or sigma_b is None:
            raise TypeError("compare: give activation, sigma_w and sigma_b, or model=")
        act, sw, sb = activation, sigma_w, sigma_b
    info = _info(act)
    sw = _sigma(sw, "sigma_w")
    sb = _sigma(sb, "sigma_b")
    pair = _skip(skip, report.depth)
    q = _solve_q(info, np.array([sw * sw]), np.array([sb * sb]), 1.0, 1e-13, 200)
    c = float(_chi1_at(info, np.array([sw * sw]), q)[0])
    slope, lo, hi = _fit(report, pair)
    c_meas = 10.0 ** (2.0 * slope) if math.isfinite(slope) else math.nan
    with np.errstate(divide="ignore"):
        f_pred = 0.5 * math.log10(c) if c > 0 else -math.inf
    a = _norms(report)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(a) & (a > 0), np.log10(np.where(a > 0, a, 1.0)), np.nan)
    L = a.size - 1
    with np.errstate(invalid="ignore"):
        pred = logs[hi] + (hi - np.arange(L + 1)) * f_pred
    return Comparison(
        activation=info.name, sigma_w=sw, sigma_b=sb, q_star=float(q[0]), chi1=c,
        chi1_measured=c_meas, log10_factor=f_pred, log10_factor_measured=slope,
        depth_scale=_xi(c), depth_scale_measured=_xi(c_meas), layers=(lo, hi),
        log10_norms=logs, log10_norms_predicted=pred)


# ============================================================== signal propagation (issue 15)
# Two correlated pre-activations (u_a, u_b), variances qa, qb and correlation c:
#   u_a = sqrt(qa) z1,  u_b = sqrt(qb) (c z1 + s z2),  s = sqrt(1 - c^2),
#   E[h(u_a) h(u_b)] = E_x1[ h(x1) g(x1) ],  g(x1) = E_z2[ h(beta x1 + sig z2) ],
# beta = c sqrt(qb / qa), sig = s sqrt(qb). The inner expectation is the piecewise
# Gauss-Legendre rule of _expect around a shifted centre; the outer one adds breakpoints
# where g changes shape: g is h smoothed at scale sig, so each kink k of h becomes a feature
# of width sig / |beta| at x1 = k / beta (the pieces (k + sig U) / beta cover it), and the
# activation-scale points move to x / beta. Near c = +-1 (s < 1e-7) the pair is one
# variable: E[h(sqrt(qa) z) h(+-sqrt(qb) z)].
_C_ONE = 1e-7


def _expect_shift(h: Callable[[np.ndarray], np.ndarray], m: np.ndarray, sig: float,
                  xbps: np.ndarray) -> np.ndarray:
    """``E[h(m + sig u)]`` for each entry of ``m`` (1-D float64), ``sig > 0``."""
    out = np.empty(m.shape, dtype=np.float64)
    with np.errstate(all="ignore"):
        for start in range(0, m.size, _CHUNK):
            mm = m[start:start + _CHUNK][:, None]                          # (k, 1)
            lim = _U_BPS[-1] * sig
            bps = np.sort(np.concatenate(
                [mm + sig * _U_ALL[None, :], np.clip(xbps[None, :], mm - lim, mm + lim)],
                axis=1), axis=1)
            half = 0.5 * np.diff(bps, axis=1)
            mid = 0.5 * (bps[:, 1:] + bps[:, :-1])
            x = mid[..., None] + half[..., None] * _GL_NODES               # (k, P, n)
            z = (x - mm[..., None]) / sig
            w = (half[..., None] * _GL_WEIGHTS) * np.exp(-0.5 * z * z) * (_INV_SQRT_2PI / sig)
            fx = _call(h, x.reshape(x.shape[0], -1)).reshape(x.shape)
            out[start:start + mm.shape[0]] = np.where(w > 0.0, w * fx, 0.0).sum(axis=(1, 2))
    return out


def _outer_rule(q: float, bps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``E[f(sqrt(q) z)]`` over the pieces ending at ``bps`` (x)."""
    s = math.sqrt(q)
    lim = _U_BPS[-1] * s
    b = np.unique(np.concatenate([s * _U_ALL, np.clip(bps, -lim, lim)]))
    half = 0.5 * np.diff(b)
    mid = 0.5 * (b[1:] + b[:-1])
    x = (mid[:, None] + half[:, None] * _GL_NODES).ravel()
    w = ((half[:, None] * _GL_WEIGHTS).ravel() * np.exp(-0.5 * (x / s) ** 2)
         * (_INV_SQRT_2PI / s))
    return x, w


def _expect_pair(h: Callable[[np.ndarray], np.ndarray], qa: float, qb: float, c: float,
                 info: _ActInfo) -> float:
    """``E[h(u_a) h(u_b)]`` for centred Gaussians of variances qa, qb, correlation c."""
    c = min(max(c, -1.0), 1.0)
    with np.errstate(all="ignore"):
        if qa == 0.0 or qb == 0.0:
            h0 = float(_call(h, np.zeros((1, 1)))[0, 0])
            q = qb if qa == 0.0 else qa
            return h0 * (h0 if q == 0.0 else float(_expect(h, np.array([q]), info.xbps)[0]))
        s = math.sqrt(max(1.0 - c * c, 0.0))
        pts = info.xbps  # activation-scale points, then the kinks
        kinks = pts[_X_ALL.size:]
        if s < _C_ONE:
            r = math.copysign(math.sqrt(qb / qa), c)
            bps = np.concatenate([pts, pts / r])
            x, w = _outer_rule(qa, bps)
            f = _call(h, x[None, :])[0] * _call(h, (r * x)[None, :])[0]
            return float(np.where(w > 0, w * f, 0.0).sum())
        beta = c * math.sqrt(qb / qa)
        sig = s * math.sqrt(qb)
        extra = [pts]
        if beta != 0.0:
            extra.append(pts / beta)
            extra += [(k + sig * _U_ALL) / beta for k in kinks]
        x, w = _outer_rule(qa, np.concatenate(extra))
        g = _expect_shift(h, beta * x, sig, info.xbps)
        f = _call(h, x[None, :])[0] * g
        return float(np.where(w > 0, w * f, 0.0).sum())


def _act_fn(info: _ActInfo) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(info.act(x), dtype=np.float64)


def _grad_fn(info: _ActInfo) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(info.act.grad(x), dtype=np.float64)


def _c_map(info: _ActInfo, sw2: float, sb2: float, q: float, c: float) -> float:
    """One layer of the c-map at the fixed variance q (both inputs at q)."""
    if q == 0.0 or not math.isfinite(q):
        return math.nan
    return (sw2 * _expect_pair(_act_fn(info), q, q, c, info) + sb2) / q


def _c_star(info: _ActInfo, sw2: float, sb2: float, q: float) -> float:
    """The stable fixed point of the c-map at q*: 1 in the ordered phase, below 1 in the
    chaotic one (bisection on g(c) = c_map(c) - c over [-1 + 1e-6, 1 - 1e-6], where g changes sign
    from + to - when c* < 1)."""
    if q == 0.0 or not math.isfinite(q):
        return 1.0
    hi = 1.0 - 1e-6
    if _c_map(info, sw2, sb2, q, hi) - hi >= 0.0:
        return 1.0  # c = 1 attracts: the ordered phase
    lo = -hi  # c = -1 is a fixed point too for an odd activation without bias (unstable)
    if _c_map(info, sw2, sb2, q, lo) - lo <= 0.0:
        return -1.0
    for _ in range(44):  # 2 / 2^44: 1e-13
        mid = 0.5 * (lo + hi)
        if _c_map(info, sw2, sb2, q, mid) - mid > 0.0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def _chi_c(info: _ActInfo, sw2: float, q: float, c: float) -> float:
    """``sigma_w^2 E[act'(u_a) act'(u_b)]`` at (q, q, c): the c-map's slope at c (c = 1:
    chi_1)."""
    if c >= 1.0:
        return float(_chi1_at(info, np.array([sw2]), np.array([q]))[0])
    qe = _Q_ZERO if q == 0.0 else (_Q_INF if math.isinf(q) else q)
    return sw2 * _expect_pair(_grad_fn(info), qe, qe, c, info)


def correlation_fixed_point(activation: str | _acts.Activation, sigma_w: float,
                            sigma_b: float) -> tuple[float, float, float]:
    """The c-map's stable fixed point and its slope: ``(c*, chi_c, xi_c)``.

    For two inputs at ``q*`` the correlation of their pre-activations follows
    ``c_{l+1} = (sigma_w^2 E[act(u_a) act(u_b)] + sigma_b^2) / q*`` (``u_a, u_b`` at
    correlation ``c_l``). ``c* = 1`` in the ordered phase (``chi_1 <= 1``: inputs become
    alike), ``c* < 1`` in the chaotic one. ``chi_c = sigma_w^2 E[act'(u_a) act'(u_b)]`` at
    ``c*`` (= ``chi_1`` when ``c* = 1``) and the correlation depth scale
    ``xi_c = -1 / log(chi_c)``, the e-folding depth of ``|c_l - c*|`` (Schoenholz et al.
    2017); it diverges on the critical line. Expectations to ~1e-12 (nested piecewise
    Gauss-Legendre), ``c*`` to ~1e-10.
    """
    info = _info(activation)
    sw = _sigma(sigma_w, "sigma_w")
    sb = _sigma(sigma_b, "sigma_b")
    q = float(_solve_q(info, np.array([sw * sw]), np.array([sb * sb]), 1.0, 1e-13, 200)[0])
    cs = _c_star(info, sw * sw, sb * sb, q)
    chic = _chi_c(info, sw * sw, q, cs)
    return cs, chic, _xi(chic)


def _pairs(pairs: Any, B: int) -> np.ndarray:
    if pairs is None:
        n = min(B // 2, 8)
        return np.array([(2 * i, 2 * i + 1) for i in range(n)], dtype=np.int64).reshape(-1, 2)
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence | np.ndarray):
        raise TypeError(f"pairs: expected a sequence of (i, j) index pairs, got "
                        f"{type(pairs).__name__}")
    out = []
    for k, p in enumerate(pairs):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence | np.ndarray) or len(p) != 2:
            raise TypeError(f"pairs[{k}]: expected an (i, j) pair, got {p!r}")
        ij = []
        for v in p:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"pairs[{k}]: expected two ints, got {p!r}")
            if not 0 <= int(v) < B:
                raise ValueError(f"pairs[{k}]: expected sample indices in 0..{B - 1}, got {p!r}")
            ij.append(int(v))
        if ij[0] == ij[1]:
            raise ValueError(f"pairs[{k}]: expected two different samples, got {p!r}")
        out.append(ij)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


@dataclass
class Propagation:
    """Forward signal propagation, measured layer by layer beside the mean-field maps.

    Layers ``l = 1..L`` are the hidden layers' pre-activations ``z_l`` (index ``l - 1``).
    Measured: ``q[l-1, b] = mean_i z_{l,i}^2`` of sample ``b`` and ``c[l-1, p] = z_a . z_b /
    (|z_a| |z_b|)`` of pair ``p = (a, b)``. Predicted: the q-map and c-map iterated from the
    measured input statistics (``q_1 = sigma_w^2 |x|^2 / in + sigma_b^2``, ``c_1`` from
    ``x_a . x_b`` likewise), not only their fixed points.

    Attributes
    ----------
    activation : str
    sigma_w, sigma_b : float
    q, q_predicted : (L, B) float64
    c, c_predicted : (L, P) float64
    pairs : (P, 2) int64
    q_step, c_step : (L, B), (L, P) float64
        The maps applied one layer at a time to the previous layer's measured q and c
        (layer 1: from the inputs). The iterated maps drift from a finite network by a
        random walk of about ``sqrt(2 l / width)`` (relu at criticality has no restoring
        force); one step is off by only that layer's own ``sqrt(2 / width)``.
    q_input : (B,) float64
        ``|x_b|^2 / in``.
    c_input : (P,) float64
        The inputs' own correlations.
    q_star, c_star, chi1, chi_c : float
        The fixed points, ``chi_1`` and the c-map's slope at ``c*``.
    xi_c, xi_grad : float
        Correlation depth scale ``-1/log chi_c`` and gradient depth scale ``-1/log chi_1``.
    """

    activation: str
    sigma_w: float
    sigma_b: float
    q: np.ndarray = field(repr=False)
    q_predicted: np.ndarray = field(repr=False)
    c: np.ndarray = field(repr=False)
    c_predicted: np.ndarray = field(repr=False)
    q_step: np.ndarray = field(repr=False)
    c_step: np.ndarray = field(repr=False)
    pairs: np.ndarray = field(repr=False)
    q_input: np.ndarray = field(repr=False)
    c_input: np.ndarray = field(repr=False)
    q_star: float
    c_star: float
    chi1: float
    chi_c: float
    xi_c: float
    xi_grad: float

    @property
    def depth(self) -> int:
        return int(self.q.shape[0])

    @property
    def q_error(self) -> float:
        """``max_l |mean_b (q / q_predicted) - 1|``: the largest relative error of a layer,
        averaged over the samples (one sample's q fluctuates by ``sqrt(2 / width)``)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.nanmax(np.abs(np.mean(self.q / self.q_predicted, axis=1) - 1.0)))

    @property
    def q_step_error(self) -> float:
        """``max_l |mean_b (q / q_step) - 1|``: the maps one layer at a time."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.nanmax(np.abs(np.mean(self.q / self.q_step, axis=1) - 1.0)))

    @property
    def c_step_error(self) -> float:
        """``max_l |mean_p (c - c_step)|`` (NaN without pairs)."""
        if self.c.size == 0:
            return math.nan
        return float(np.nanmax(np.abs(np.mean(self.c - self.c_step, axis=1))))

    @property
    def c_error(self) -> float:
        """``max_l |mean_p (c - c_predicted)|`` (NaN without pairs): one pair's c
        fluctuates by about ``1 / sqrt(width)``."""
        if self.c.size == 0:
            return math.nan
        return float(np.nanmax(np.abs(np.mean(self.c - self.c_predicted, axis=1))))

    def table(self) -> str:
        """Per-layer means of the measured and predicted q and c (str)."""
        lines = [
            f"signal propagation: {self.activation}, sigma_w={self.sigma_w:g}, "
            f"sigma_b={self.sigma_b:g}; q*={self.q_star:.5g}, c*={self.c_star:.6g}, "
            f"chi_1={self.chi1:.5g}, chi_c={self.chi_c:.5g}",
            f"depth scales: correlation xi_c={self.xi_c:.4g}, gradient xi_grad="
            f"{self.xi_grad:.4g}; {self.q.shape[1]} inputs, {self.pairs.shape[0]} pairs",
            f"{'layer':>6}  {'q':>11}  {'q predicted':>11}  {'c':>10}  {'c predicted':>11}",
        ]
        qi = float(np.mean(self.q_input))
        ci = float(np.mean(self.c_input)) if self.c_input.size else math.nan
        lines.append(f"{'input':>6}  {qi:>11.5g}  {'':>11}  {ci:>10.6f}  {'':>11}")
        for layer in range(self.depth):
            cm = float(np.mean(self.c[layer])) if self.c.shape[1] else math.nan
            cp = float(np.mean(self.c_predicted[layer])) if self.c.shape[1] else math.nan
            lines.append(f"{layer + 1:>6}  {float(np.mean(self.q[layer])):>11.5g}  "
                         f"{float(np.mean(self.q_predicted[layer])):>11.5g}  {cm:>10.6f}  "
                         f"{cp:>11.6f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types: JSON-ready."""
        return {
            "activation": self.activation, "sigma_w": self.sigma_w, "sigma_b": self.sigma_b,
            "q": self.q.tolist(), "q_predicted": self.q_predicted.tolist(),
            "c": self.c.tolist(), "c_predicted": self.c_predicted.tolist(),
            "q_step": self.q_step.tolist(), "c_step": self.c_step.tolist(),
            "pairs": self.pairs.tolist(), "q_input": self.q_input.tolist(),
            "c_input": self.c_input.tolist(), "q_star": self.q_star, "c_star": self.c_star,
            "chi1": self.chi1, "chi_c": self.chi_c, "xi_c": self.xi_c,
            "xi_grad": self.xi_grad,
        }

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None
             ) -> tuple[Any, Any]:
        """q_l (left axis, log) and c_l (right axis) measured (markers) against the maps
        (lines), the fixed points dashed (needs matplotlib). Returns ``(fig, ax)``."""
        p = check_path(path)
        fig, ax = axes(ax, (7.0, 4.5))
        layers = np.arange(1, self.depth + 1)
        ax.plot(layers, self.q.mean(axis=1), "o", color="C0", ms=4, label="q measured")
        ax.plot(layers, self.q_predicted.mean(axis=1), "-", color="C0", label="q-map")
        if math.isfinite(self.q_star) and self.q_star > 0:
            ax.axhline(self.q_star, color="C0", ls="--", lw=0.8, label="q*")
        ax.set_yscale("log")
        ax.set_xlabel("layer l")
        ax.set_ylabel(r"$q_l$ (mean squared pre-activation)")
        ax2 = ax.twinx()
        if self.c.shape[1]:
            ax2.plot(layers, self.c.mean(axis=1), "s", color="C3", ms=4, label="c measured")
            ax2.plot(layers, self.c_predicted.mean(axis=1), "-", color="C3", label="c-map")
            ax2.axhline(self.c_star, color="C3", ls="--", lw=0.8, label="c*")
        ax2.set_ylabel(r"$c_l$ (correlation of pairs)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
        ax.set_title(f"{self.activation}, sigma_w={self.sigma_w:g}, sigma_b={self.sigma_b:g}: "
                     f"xi_c={self.xi_c:.3g}, xi_grad={self.xi_grad:.3g}", fontsize=9)
        if p is not None:
            from ._plotting import save

            save(fig, p)
        return fig, ax


def propagate(model: Any, x: Any, *, pairs: Any = None) -> Propagation:
    """Measured forward propagation beside the mean-field q-map and c-map.

    Parameters
    ----------
    model : gc.MLP
        With ``init=gc.init.normal(sigma_w, sigma_b)`` (or ``gc.init.orthogonal(gain)``:
        ``sigma_w = gain``, ``sigma_b = 0``), no norm layers, no residuals.
    x : (B, in) array of the model's dtype
        The inputs; the maps start from their own statistics.
    pairs : sequence of (i, j) or None
        The input pairs whose correlation is followed; default ``(0, 1), (2, 3), ...``
        (at most 8 pairs).

    Returns
    -------
    Propagation (``table()``, ``plot()``, ``to_dict()``).
    """
    act, sw, sb, depth = _from_model(model)
    info = _info(act)
    z = model.preactivations(x)
    xa = np.asarray(x, dtype=np.float64)
    B, n_in = xa.shape
    pr = _pairs(pairs, B)
    sw2, sb2 = sw * sw, sb * sb
    q_in = (xa * xa).sum(axis=1) / n_in
    gram_in = xa @ xa.T / n_in
    qm = np.empty((depth, B))
    cm = np.empty((depth, pr.shape[0]))
    for layer, zl in enumerate(z):
        zz = np.asarray(zl, dtype=np.float64)
        sq = (zz * zz).sum(axis=1)
        qm[layer] = sq / zz.shape[1]
        for k, (a, b) in enumerate(pr):
            den = math.sqrt(sq[a] * sq[b])
            cm[layer, k] = float(zz[a] @ zz[b]) / den if den > 0 else math.nan
    # the maps from the inputs' own statistics
    qp = np.empty((depth, B))
    cp = np.empty((depth, pr.shape[0]))
    cov = sw2 * gram_in[pr[:, 0], pr[:, 1]] + sb2 if pr.size else np.zeros(0)
    q = sw2 * q_in + sb2
    fsq = _act_fn(info)
    for layer in range(depth):
        qp[layer] = q
        for k, (a, b) in enumerate(pr):
            den = math.sqrt(q[a] * q[b])
            cp[layer, k] = cov[k] / den if den > 0 else math.nan
        if layer + 1 < depth:
            cov = np.array([sw2 * _expect_pair(fsq, float(q[a]), float(q[b]),
                                               float(cp[layer, k]), info) + sb2
                            for k, (a, b) in enumerate(pr)])
            q = sw2 * _expect(info.sq, q, info.xbps) + sb2
    # one layer at a time: the maps applied to the previous layer's measurement (free of
    # the finite-width drift that accumulates along the iterated maps)
    qs_ = np.empty((depth, B))
    cs_ = np.empty((depth, pr.shape[0]))
    if depth:
        qs_[0], cs_[0] = qp[0], cp[0]
    for layer in range(1, depth):
        qs_[layer] = sw2 * _expect(info.sq, qm[layer - 1], info.xbps) + sb2
        for k, (a, b) in enumerate(pr):
            cv = sw2 * _expect_pair(fsq, float(qm[layer - 1, a]), float(qm[layer - 1, b]),
                                    float(cm[layer - 1, k]), info) + sb2
            cs_[layer, k] = cv / math.sqrt(qs_[layer, a] * qs_[layer, b])
    with np.errstate(invalid="ignore", divide="ignore"):
        c_in = np.array([gram_in[a, b] / math.sqrt(gram_in[a, a] * gram_in[b, b])
                         if gram_in[a, a] * gram_in[b, b] > 0 else math.nan for a, b in pr])
    qs = float(_solve_q(info, np.array([sw2]), np.array([sb2]), 1.0, 1e-13, 200)[0])
    c1 = float(_chi1_at(info, np.array([sw2]), np.array([qs]))[0])
    cs = _c_star(info, sw2, sb2, qs)
    chic = _chi_c(info, sw2, qs, cs)
    return Propagation(
        activation=info.name, sigma_w=sw, sigma_b=sb, q=qm, q_predicted=qp, c=cm,
        c_predicted=cp, q_step=qs_, c_step=cs_, pairs=pr, q_input=q_in, c_input=c_in,
        q_star=qs, c_star=cs,
        chi1=c1, chi_c=chic, xi_c=_xi(chic), xi_grad=_xi(c1))


# ------------------------------------------------------------------ Jacobian spectrum theory
_S1 = {"gaussian": -1.0, "orthogonal": 0.0}


def jacobian_moments(activation: str | _acts.Activation, sigma_w: float, sigma_b: float,
                     depth: int, weights: str = "gaussian") -> tuple[float, float]:
    """The predicted mean and variance of the squared singular values of the Jacobian
    ``J = D_L W_L ... D_1 W_1`` of ``depth`` layers at the fixed point ``q*`` (free
    probability: Pennington, Schoenholz & Ganguli 2017).

    ``mean = chi_1^L`` and ``variance = L mean^2 (mu_2 / mu_1^2 - 1 - s_1)``, with
    ``mu_k = E[act'(sqrt(q*) u)^(2k)]`` and ``s_1 = -1`` for Gaussian weights, 0 for
    orthogonal ones. The variance is the sum of the layers' relative variances (the
    factors are asymptotically free): each ``D^2`` contributes ``mu_2/mu_1^2 - 1``, each
    ``W W^T`` ``-s_1`` (Marchenko-Pastur: 1; orthogonal: 0). Exact cases: a linear network
    with Gaussian weights has mean 1 and second moment ``L + 1`` (the Fuss-Catalan
    moments), with orthogonal ones every singular value is 1. It describes
    ``da_L/dx`` of an MLP whose first layer's input has ``q_1 = q*``
    (``|x|^2 / in = (q* - sigma_b^2) / sigma_w^2``); the output layer multiplies the mean
    by ``sigma_w^2`` (no activation there).

    Parameters
    ----------
    activation : str or gc.Activation
    sigma_w, sigma_b : float
    depth : int
        ``L >= 1``, the number of layers ``D_l W_l``.
    weights : "gaussian" or "orthogonal"

    Returns
    -------
    (mean, variance) : floats.
    """
    info = _info(activation)
    sw = _sigma(sigma_w, "sigma_w")
    sb = _sigma(sigma_b, "sigma_b")
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth: expected an int, got {type(depth).__name__}")
    if depth < 1:
        raise ValueError(f"depth: expected an int >= 1, got {depth}")
    if not isinstance(weights, str) or weights not in _S1:
        raise ValueError(f"weights: expected 'gaussian' or 'orthogonal', got {weights!r}")
    sw2 = sw * sw
    q = _solve_q(info, np.array([sw2]), np.array([sb * sb]), 1.0, 1e-13, 200)
    qe = np.where(q == 0.0, _Q_ZERO, np.where(np.isinf(q), _Q_INF, q))
    mu1 = float(_expect(info.dsq, qe, info.xbps)[0])
    mu2 = float(_expect(lambda x: np.square(info.dsq(x)), qe, info.xbps)[0])
    L = int(depth)
    mean = (sw2 * mu1) ** L
    if mu1 == 0.0:
        return mean, 0.0
    var = L * mean * mean * (mu2 / (mu1 * mu1) - 1.0 - _S1[weights])
    return float(mean), float(max(var, 0.0))
