"""The agreement check: every peer against gradchain, and gradchain (float32) against the
float64 reference, with float32 rounding at ReLU kinks told apart from bugs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..activations import SPECS
from .cases import Outputs
from .workloads import Workload


@dataclass
class Agreement:
    """The outcome of comparing one implementation's outputs with another's.

    ``errors`` holds one error per checked quantity (``y``, each gradient, the norm
    vectors); ``failed`` the quantities beyond ``tolerance`` that nothing explains, and
    ``excused`` those beyond it that the float64 reference explains as float32 rounding
    at ReLU kinks (:func:`kink_explained`).
    """

    ok: bool
    max_err: float
    worst: str
    tolerance: float
    checked: int
    errors: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    excused: dict[str, str] = field(default_factory=dict)
    against: str = "gradchain"

    def summary(self) -> str:
        if not self.ok:
            return f"DISAGREE {self.max_err:.1e} ({', '.join(self.failed[:3])})"
        s = f"ok {self.max_err:.1e}"
        if self.excused:
            s += f", {len(self.excused)} excused by f64 ref*"
        return s


def _rel_to_max(got: np.ndarray, ref: np.ndarray) -> float:
    """``max|got - ref| / max|ref|`` (absolute when ref is all zero); inf on shape mismatch
    or non-finite values."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    diff = float(np.max(np.abs(got - ref)))
    if not math.isfinite(diff):
        return math.inf
    scale = float(np.max(np.abs(ref)))
    return diff / scale if scale > 0 else diff


def _rel_elementwise(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest ``|got - ref| / |ref|`` over entries (for norm vectors spanning decades)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    m = float(np.max(err))
    return m if math.isfinite(m) else math.inf


def tolerance_for(dtype: str) -> float:
    """float32: 1e-3 relative; float64: 1e-9."""
    return 1e-3 if dtype == "float32" else 1e-9


def agreement_errors(ref: Outputs, got: Outputs, workload: Workload) -> dict[str, float]:
    """One error per quantity: ``y`` and every parameter gradient of ``ref`` relative to
    the largest magnitude of ``ref``'s tensor; the activation, weight and (RNN) timestep
    gradient norms (where both compute them) entry by entry. Skipped: the biases of linear layers
    followed by batch norm (their gradient is exactly 0 in exact arithmetic, so only
    rounding noise would be compared)."""
    errors: dict[str, float] = {"y": _rel_to_max(got.y, ref.y)}
    skip = workload.skipped_grads()
    for name, g in ref.grads.items():
        if name in skip:
            continue
        errors[name] = _rel_to_max(got.grads[name], g) if name in got.grads else math.inf
    for label, r, p in (("activation_grad_norms", ref.activation_grad_norms,
                         got.activation_grad_norms),
                        ("weight_grad_norms", ref.weight_grad_norms, got.weight_grad_norms),
                        ("timestep_grad_norms", ref.timestep_grad_norms,
                         got.timestep_grad_norms)):
        if r is not None and p is not None:
            errors[label] = _rel_elementwise(p, r)
    return errors


def _agreement(errors: dict[str, float], tol: float, excuse: Callable[[str, float], str | None],
               against: str) -> Agreement:
    failed: list[str] = []
    excused: dict[str, str] = {}
    for q, e in errors.items():
        if e <= tol:
            continue
        why = excuse(q, e)
        if why is None:
            failed.append(q)
        else:
            excused[q] = why
    failed.sort(key=lambda q: -errors[q])
    worst = max(errors, key=lambda k: errors[k])
    return Agreement(ok=not failed, max_err=errors[worst], worst=worst, tolerance=tol,
                     checked=len(errors), errors=errors, failed=failed, excused=excused,
                     against=against)


def check_agreement(ref: Outputs, got: Outputs, workload: Workload,
                    tolerance: float | None = None) -> Agreement:
    """Compare a peer's outputs with gradchain's directly (no float64 arbitration)."""
    tol = tolerance_for(workload.dtype) if tolerance is None else tolerance
    return _agreement(agreement_errors(ref, got, workload), tol, lambda q, e: None, "gradchain")


# activations whose derivative jumps somewhere (for some parameters): the table's kinks
KINKED_ACTIVATIONS = frozenset(n for n, spec in SPECS.items() if spec.kinks)
KINK_RANK = 8  # rank-one terms a gradient's departure from float64 may consist of (<= B/8)
KINK_MAX_ERR = 0.1  # and never more than this (relative to the largest magnitude)


def _residual_after_low_rank(d: np.ndarray, k: int) -> np.ndarray:
    """``d`` minus its projection on its (approximate) top-``k`` left singular subspace:
    a randomized range finder with ``k`` columns and three power iterations."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(d @ rng.standard_normal((d.shape[1], min(k, min(d.shape)))))
    for _ in range(3):
        q, _ = np.linalg.qr(d @ (d.T @ q))
    return d - q @ (q.T @ d)


def kink_explained(got: Outputs, truth: Outputs, name: str, errors: Mapping[str, float],
                   tol: float, rank: int = KINK_RANK) -> bool:
    """Whether ``got``'s departure from the float64 result in gradient ``name`` looks like
    float32 rounding at ReLU kinks rather than a bug.

    A ReLU input that is ~1e-7 in float64 can round to the other side in float32: that
    element's derivative flips, which changes one sample's contribution to each upstream
    weight gradient, a rank-one term (and spreads through batch norm's batch coupling). So
    a weight gradient is explained when it is within ``tol`` after removing at most ``rank``
    rank-one terms from its difference; a bias or norm-parameter gradient when the
    weight gradient of its layer agrees or is explained. Never beyond ``KINK_MAX_ERR``.
    """
    err = errors.get(name, math.inf)
    if not err <= KINK_MAX_ERR or name not in got.grads or name not in truth.grads:
        return False
    parts = name.split(".")
    g, t = got.grads[name], truth.grads[name]
    if parts[0] == "layers" and parts[-1] == "weight" and t.ndim == 2:
        scale = float(np.max(np.abs(t)))
        d = np.asarray(g, dtype=np.float64) - np.asarray(t, dtype=np.float64)
        rest = float(np.max(np.abs(_residual_after_low_rank(d, rank))))
        return rest <= tol * scale
    if len(parts) == 3 and parts[1].isdigit():
        partner = f"layers.{parts[1]}.weight"
        return errors.get(partner, math.inf) <= tol or kink_explained(
            got, truth, partner, errors, tol, rank)
    return False


def arbitrate(gc_out: Outputs, peer_outs: Mapping[str, Outputs], workload: Workload,
              truth: Outputs | None = None,
              tolerance: float | None = None,
              refit: Callable[[Outputs], Outputs | None] | None = None
              ) -> dict[str, Agreement]:
    """Check every peer against gradchain, and gradchain against the float64 reference.

    ``truth``: the NumPy reference run in float64 on the same (float32) weights and data.
    Without it this is :func:`check_agreement` for each peer. With it (float32 workloads),
    gradchain's own row (key ``"gradchain"``) compares it with ``truth``, and a quantity
    where two implementations differ beyond the tolerance is excused when the activation has
    a kink and every side that is also beyond the tolerance from ``truth`` there is
    :func:`kink_explained`: float32 rounding at ReLU kinks, which any float32
    implementation meets now and then in a deep or wide ReLU network (each one at other
    elements). Smooth activations (tanh, ...) excuse nothing.

    ``refit`` (:data:`gradchain.bench.cases.TRUTHS`): ``truth`` re-run with the near-kink
    units a side rounded to the other side flipped, from that side's own gradients. A flip
    changes everything computed below it, the report's norms too (``weight_grad_norms``,
    ``activation_grad_norms``), which no rank test can explain: a quantity a side departs on
    is also explained when that side agrees there, within the tolerance, with its re-fit.
    """
    tol = tolerance_for(workload.dtype) if tolerance is None else tolerance
    if truth is None:
        return {n: check_agreement(gc_out, o, workload, tol) for n, o in peer_outs.items()}
    all_outs = {"gradchain": gc_out, **peer_outs}
    dev = {n: agreement_errors(truth, o, workload) for n, o in all_outs.items()}
    kinks = getattr(workload, "activation", None) in KINKED_ACTIVATIONS
    memo: dict[tuple[str, str], bool] = {}

    # a weight gradient has rank <= B: allow few rank-one terms against it
    rank = min(KINK_RANK, max(1, int(getattr(workload, "batch", 8)) // 8))

    refits: dict[str, dict[str, float] | None] = {}

    def refit_errors(side: str) -> dict[str, float] | None:
        """The side's errors against its re-fitted float64 reference (None: no re-fit)."""
        if side not in refits:
            fitted = refit(all_outs[side]) if refit is not None else None
            refits[side] = (None if fitted is None
                            else agreement_errors(fitted, all_outs[side], workload))
        return refits[side]

    def explained(side: str, q: str) -> bool:
        if (side, q) not in memo:
            ok = kinks and kink_explained(all_outs[side], truth, q, dev[side], tol, rank)
            if kinks and not ok:
                fitted = refit_errors(side)
                ok = fitted is not None and fitted.get(q, math.inf) <= tol
            memo[side, q] = ok
        return memo[side, q]

    def excuser(sides: list[str]) -> Callable[[str, float], str | None]:
        def excuse(q: str, e: float) -> str | None:
            off = [s for s in sides if dev[s].get(q, math.inf) > tol]
            if not all(explained(s, q) for s in off):
                return None
            vs = ", ".join(f"{s} {dev[s].get(q, math.inf):.1e}" for s in sides)
            return f"{e:.1e}; from the float64 reference: {vs}"
        return excuse

    out = {n: _agreement(agreement_errors(gc_out, o, workload), tol,
                         excuser(["gradchain", n]), "gradchain")
           for n, o in peer_outs.items()}
    out["gradchain"] = _agreement(dev["gradchain"], tol, excuser(["gradchain"]),
                                  "float64 reference")
    return out
