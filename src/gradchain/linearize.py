"""A model linearised at its inputs: Jacobian products and loss-independent probes
(docs/CONVENTIONS.md, "Signal propagation").

:class:`Linearization` (``MLP.linearize(x)``) holds the core's primal pass at ``x`` and
pushes batches of tangents forward through it (``jvp``: forward mode, a chain of GEMMs)
or pulls cotangents back (``vjp``), without touching the model's saved forward pass, its
gradients or its running statistics. :class:`ProbeReport` (``model.probe(x, n)``) is what
``n`` Gaussian probe vectors at the output measure: the per-layer (RNN: per-step) factor
``E||J_l^T u||^2 / E||u||^2`` with its spread over the probes, the loss-independent
quantity the mean-field ``chi_1`` predicts per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validate import float_array, positive_int, shape_str

__all__ = ["Linearization", "ProbeReport", "check_at", "probe_vectors"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


class Linearization:
    """A model linearised at inputs ``x (B, in)`` (what ``MLP.linearize(x)`` returns).

    ``jvp(V)``: tangents ``V (R, in)`` -> ``J V`` rows ``(R, out)``, ``R`` a multiple of
    ``B`` (row ``r`` is a tangent at sample ``r % B``); ``record=[l, ...]`` also returns
    the tangents of the hidden activations ``a_l`` (``l = 0..L``, ``a_0 = x``).
    ``vjp(U)``: cotangents ``U (R, out)`` -> ``J^T U`` rows ``(R, in)``, and with
    ``norms=True`` every row's squared norm at every ``a_l`` (``(L+1, R)``, float64).

    The products use the parameters the model had when it was linearised: a call after
    they changed (an optimiser step, ``load_state_dict``, a write to a view) raises
    ``gc.StateError``. Batch norm is linearised in eval mode (running statistics).
    """

    def __init__(self, model: Any, handle: Any, x: np.ndarray) -> None:
        self._model = model
        self._handle = handle
        self._params = model.flat_parameters().copy()
        core = model._core
        self._buffers = core.buffer_array().copy() if hasattr(core, "buffer_array") else None
        self.x = x
        self.sizes = list(model.sizes)

    @property
    def batch(self) -> int:
        """``B``, the number of inputs linearised at."""
        return int(self._handle.batch)

    @property
    def depth(self) -> int:
        """``L``, the hidden layers."""
        return len(self.sizes) - 2

    def _check_current(self, what: str) -> None:
        from .models import StateError

        core = self._model._core
        if not np.array_equal(self._model.flat_parameters(), self._params, equal_nan=True) or (
                self._buffers is not None
                and not np.array_equal(core.buffer_array(), self._buffers, equal_nan=True)):
            raise StateError(f"{what}: the model's parameters (or running statistics) "
                             "changed since it was linearised; call model.linearize(x) "
                             "again")

    def _rows(self, a: Any, name: str, width: int) -> np.ndarray:
        arr = float_array(a, name, self._model.dtype, ("R", width))
        if arr.shape[0] % self.batch:
            raise ValueError(f"{name}: expected a multiple of the batch ({self.batch}) of rows "
                             f"(row r at sample r % {self.batch}), got shape "
                             f"{shape_str(arr.shape)}")
        return arr

    def jvp(self, tangents: Any, record: Sequence[int] = ()
            ) -> np.ndarray | tuple[np.ndarray, dict[int, np.ndarray]]:
        """``J v`` for each row ``v`` of ``tangents (R, in)``: ``(R, out)``.

        With ``record`` (hidden activations ``l`` in ``0..L``) also ``{l: (R, h_l)}``, the
        tangents of ``a_l``: rows of the partial Jacobians' products ``(da_l/dx) v``.
        """
        with self._model.lock:
            self._check_current("jvp")
            V = self._rows(tangents, "tangents", self.sizes[0])
            rec = check_layers(record, self.depth, "record")
            _need(V.shape[0] * (3 * max(self.sizes) + self.sizes[-1]
                                + sum(self.sizes[i] for i in rec)) * V.itemsize,
                  f"jvp: {V.shape[0]} tangent rows of {self._model._describe()}")
            out, recd = self._handle.jvp(V, rec)
        if rec:
            return out, {int(k): v for k, v in recd.items()}
        return out

    def vjp(self, cotangents: Any, *, norms: bool = False
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``J^T u`` for each row ``u`` of ``cotangents (R, out)``: ``(R, in)``; with
        ``norms=True`` also ``(L+1, R)`` float64, row ``r``'s ``||J_l^T u||^2`` at
        ``a_l``, ``l = 0..L``."""
        with self._model.lock:
            self._check_current("vjp")
            U = self._rows(cotangents, "cotangents", self.sizes[-1])
            _need(U.shape[0] * (3 * max(self.sizes) + self.sizes[0]) * U.itemsize
                  + U.shape[0] * (self.depth + 1) * 8,
                  f"vjp: {U.shape[0]} cotangent rows of {self._model._describe()}")
            ss, dx = self._handle.vjp(U, True)
        return (dx, ss) if norms else dx

    def __repr__(self) -> str:
        return f"Linearization({self._model._describe()}, batch={self.batch})"


def _need(nbytes: int, what: str) -> None:
    from .models import require

    require(int(nbytes), what)


def check_layers(at: Any, depth: int, name: str, top: int | None = None) -> list[int]:
    """``at`` (an int or a sequence of ints, each in ``0..top``, ``top`` default
    ``depth``) as a list."""
    top = depth if top is None else top
    items = [at] if isinstance(at, (int, np.integer)) and not isinstance(at, bool) else at
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence | np.ndarray):
        raise TypeError(f"{name}: expected an int or a sequence of ints, got "
                        f"{type(at).__name__}")
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}[{i}]: expected an int, got {type(v).__name__}")
        if not 0 <= int(v) <= top:
            raise ValueError(f"{name}: expected layers in 0..{top}, got {int(v)}")
        out.append(int(v))
    return out


def check_at(at: Any, top: int, name: str = "at") -> tuple[list[int], bool]:
    """``at`` as a list of ints in ``0..top`` and whether a single int was given."""
    single = isinstance(at, (int, np.integer)) and not isinstance(at, (bool, np.bool_))
    return check_layers(at, top, name), single


def probe_vectors(n: Any, rows: int, width: int, seed: Any, dtype: np.dtype) -> np.ndarray:
    """``n`` Gaussian probe batches of ``rows x width``, stacked probe-major: ``(n * rows,
    width)`` in ``dtype`` (drawn in float64 from ``default_rng(seed)``)."""
    k = positive_int(n, "n")
    if seed is not None:
        positive_int(seed, "seed", minimum=0)
    if k > 1 << 20:
        raise ValueError(f"n: expected at most {1 << 20} probes, got {k}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k * rows, width)).astype(dtype)


@dataclass
class ProbeReport:
    """What ``n`` Gaussian probe vectors ``u`` at the output measure on the way back.

    Each probe is a cotangent at the output (an MLP's ``y``, an RNN's last step); the
    backward pass gives ``J_k^T u`` at every entry ``k`` of the report's axis (MLP: the
    activations ``a_l``, ``l = 0..L``, ``a_0 = x``; RNN: the hidden states ``h_t``,
    ``t = 1..T``). The factor ``E||J_k^T u||^2 / E||u||^2`` is what ``chi_1`` predicts:
    ``factor[l-1] / factor[l] -> chi_1`` per layer in the wide limit.

    Attributes
    ----------
    axis : str
        "layer" or "timestep".
    labels : list of str
        The entries (``a0..aL`` or ``h1..hT``).
    sq_norms : (n, K) float64
        ``||J_k^T u_p||^2`` per probe ``p`` and entry ``k`` (summed over the batch).
    u_sq : (n,) float64
        ``||u_p||^2``.
    batch : int
        The inputs probed at.
    """

    axis: str
    labels: list[str]
    sq_norms: np.ndarray = field(repr=False)
    u_sq: np.ndarray = field(repr=False)
    batch: int = 1

    @property
    def n(self) -> int:
        """The number of probes."""
        return int(self.u_sq.size)

    @property
    def factor(self) -> np.ndarray:
        """``E||J_k^T u||^2 / E||u||^2`` per entry (K,): the mean over the probes."""
        return self.sq_norms.mean(axis=0) / self.u_sq.mean()

    @property
    def spread(self) -> np.ndarray:
        """The standard deviation over the probes of ``||J_k^T u_p||^2 / ||u_p||^2``
        (K,; ddof=1, NaN for one probe)."""
        r = self.sq_norms / self.u_sq[:, None]
        if self.n < 2:
            return np.full(r.shape[1], math.nan)
        return r.std(axis=0, ddof=1)

    @property
    def step_factor(self) -> np.ndarray:
        """``factor[k-1] / factor[k]`` (K-1,): the measured per-layer (per-step) factor of
        ``E||J^T u||^2`` going down, entry k-1 for the step from k to k-1."""
        f = self.factor
        with np.errstate(divide="ignore", invalid="ignore"):
            return f[:-1] / f[1:]

    def log10_slope(self, skip: tuple[int, int] = (0, 0)) -> float:
        """Least-squares slope of ``log10 factor`` per entry going down (from entry
        ``K-1-skip[0]`` to ``skip[1]``): ``10**slope`` is the fitted per-layer factor of
        ``E||J^T u||^2`` (compare ``chi_1``). NaN when fewer than two entries are finite
        and positive."""
        f = self.factor
        K = f.size
        lo, hi = int(skip[1]), K - 1 - int(skip[0])
        if hi - lo < 1:
            raise ValueError(f"skip: {skip} leaves fewer than 2 of {K} entries to fit")
        seg = f[lo:hi + 1]
        down = (hi - np.arange(lo, hi + 1)).astype(np.float64)
        ok = np.isfinite(seg) & (seg > 0)
        if ok.sum() < 2:
            return math.nan
        return float(np.polyfit(down[ok], np.log10(seg[ok]), 1)[0])

    def chi1_measured(self, skip: tuple[int, int] = (0, 0)) -> float:
        """``10 ** log10_slope(skip)``: the fitted per-layer factor (what ``chi_1``
        predicts)."""
        s = self.log10_slope(skip)
        return 10.0 ** s if math.isfinite(s) else math.nan

    def table(self) -> str:
        """A readable per-entry table (str)."""
        f, sp, st = self.factor, self.spread, self.step_factor
        lines = [f"probe: {self.n} Gaussian vectors at the output, batch {self.batch}; "
                 f"per-{self.axis} factor fitted {self.chi1_measured():.5g}",
                 f"{self.axis:>8}  {'E||J^T u||^2/E||u||^2':>22}  {'spread':>10}  "
                 f"{'step factor':>11}"]
        for k in range(f.size - 1, -1, -1):
            step = f"{st[k]:>11.5g}" if k < f.size - 1 else f"{'':>11}"
            lines.append(f"{self.labels[k]:>8}  {f[k]:>22.6g}  {sp[k]:>10.3g}  {step}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types: JSON-ready."""
        return {"axis": self.axis, "labels": list(self.labels), "n": self.n,
                "batch": self.batch, "factor": [float(v) for v in self.factor],
                "spread": [float(v) for v in self.spread],
                "chi1_measured": self.chi1_measured()}
