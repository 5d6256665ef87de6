"""The gradient report: per-layer (and, for RNNs, LSTMs and GRUs, per-timestep) gradient
norms.

All norms are Frobenius/L2 norms over whole tensors (batch included), accumulated
in float64 by the C++ backward pass, identical whatever the thread count
(docs/CONVENTIONS.md, "Gradient report").

This module is the numbers only: ``plot()`` is a thin delegate to the lab's
:mod:`gradchain.plots`, imported when something is drawn, so nothing here imports
matplotlib code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GatedGradReport", "GradReport", "NonFiniteOrigin", "RNNGradReport"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3e}"


def _ratio(a: np.ndarray) -> float:
    """first / last entry: inf when only the last is 0, NaN when both are."""
    if a[-1] == 0:
        return math.nan if a[0] == 0 else math.inf
    return float(a[0]) / float(a[-1])  # Python floats: inf/inf is NaN without a warning


def _log10_slope(a: np.ndarray) -> float:
    """Least-squares slope of log10(a) per step from the last entry back to the first,
    over the finite positive entries; NaN when fewer than two remain."""
    a = np.asarray(a, dtype=np.float64)
    back = np.arange(len(a))[::-1]
    ok = np.isfinite(a) & (a > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(back[ok], np.log10(a[ok]), 1)[0])


def _verdict(r: float, first: int | None, forward_first: int | None, where: str, label: str,
             threshold: float, origin: NonFiniteOrigin | None = None) -> str:
    if first is not None or forward_first is not None:
        at = first if first is not None else forward_first
        born = f" (born in {origin})" if origin is not None else ""
        return f"non-finite: NaN/Inf first at {where} {at}{born}"
    if math.isnan(r):
        return "no gradient: every norm is 0"
    kind = "vanishing" if r < 1.0 / threshold else "exploding" if r > threshold else "healthy"
    return f"{kind}: {label} = {r:.2e}"


# ----------------------------------------------------------------------------- forensics
_STAGE_TEXT = {
    "parameter": "a parameter (weight, bias or norm parameter) already held NaN/Inf",
    "linear": "the linear product z = a W^T + b overflowed",
    "norm": "the norm layer's normalisation (its statistics) gave NaN/Inf",
    "activation": "the activation gave NaN/Inf",
    "residual": "the residual sum a + alpha * act(n) overflowed",
    "loss": "the loss value is NaN/Inf (e.g. the log of a zero probability)",
    "loss_gradient": "the loss gradient dL/dy is NaN/Inf",
    "activation_backward": "dL/dz = dL/da * act' overflowed",
    "norm_backward": "the norm layer's backward (dL/dz) gave NaN/Inf",
    "product": "the product dL/dz W (dL/da of the layer below) overflowed",
    "weight_gradient": "a parameter gradient (dL/dz^T a summed over the batch) overflowed",
}


@dataclass(frozen=True)
class NonFiniteOrigin:
    """Where the first NaN/Inf of a pass was *born*: the first layer (or step) whose inputs
    were finite and whose output was not, as distinct from those that only inherited it
    (docs/CONVENTIONS.md, "Gradient report").

    Attributes
    ----------
    phase : str
        ``"forward"``, ``"loss"`` or ``"backward"``.
    index : int or None
        Forward: the hidden layer ``l`` in ``1..L`` (``L+1``: the output layer), RNN the
        step ``t`` in ``1..T`` (``T+1``: the readout), as ``forward_first_nonfinite``;
        backward: the ``l`` of ``dL/da_l`` (RNN the ``t`` of ``dL/dh_t``) as
        ``first_nonfinite``, or for ``"weight_gradient"`` the linear layer ``l`` of
        ``weight_grad_norms``; None for the loss.
    stage : str
        ``"parameter"``, ``"linear"``, ``"norm"``, ``"activation"``, ``"residual"``
        (forward); ``"loss"``, ``"loss_gradient"``; ``"activation_backward"``,
        ``"norm_backward"``, ``"product"``, ``"weight_gradient"`` (backward).
    where : str
        ``"layer"`` or ``"step"``.
    """

    phase: str
    index: int | None
    stage: str
    where: str = "layer"

    def __str__(self) -> str:
        at = "" if self.index is None else f" {self.where} {self.index}"
        return f"the {self.phase} pass{at}: {_STAGE_TEXT.get(self.stage, self.stage)}"


def _origin(where: str, forward_first: int | None, forward_stage: str | None,
            loss_stage: str | None, first: int | None, backward_stage: str | None,
            param_first: int | None) -> NonFiniteOrigin | None:
    """The birth of the pass's first NaN/Inf from the core's indices and stages: the forward
    pass first (everything after inherits), then the loss, then the backward pass."""
    if forward_first is not None:
        return NonFiniteOrigin("forward", forward_first, forward_stage or "activation", where)
    if loss_stage is not None:
        return NonFiniteOrigin("loss", None, loss_stage, where)
    if first is not None:
        return NonFiniteOrigin("backward", first, backward_stage or "product", where)
    if param_first is not None:  # -1: a parameter without a layer index (the RNN's)
        return NonFiniteOrigin("backward", None if param_first < 0 else param_first,
                               "weight_gradient", where)
    return None


def _arr(d: dict[str, Any], key: str) -> np.ndarray:
    v = d.get(key)
    return np.zeros(0) if v is None else np.asarray(v, dtype=np.float64)


def _runs(frac: np.ndarray, level: float) -> tuple[int, int] | None:
    """The longest run of consecutive entries >= level (first, last, 0-based), or None."""
    best, start = None, None
    for i, v in enumerate(list(frac) + [-1.0]):
        if v >= level and start is None:
            start = i
        elif not v >= level and start is not None:
            if best is None or i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    return best


def _health_note(dead: np.ndarray, sat: np.ndarray, where: str, first: int,
                 level: float = 0.5) -> str:
    """``"; layers 12-40: 85 % of units saturated"`` for the longest run of layers (steps)
    where at least ``level`` of the units are dead (else saturated), or ``""``."""
    for frac, word in ((dead, "dead"), (sat, "saturated")):
        f = np.nan_to_num(np.asarray(frac, dtype=np.float64), nan=0.0)
        run = _runs(f, level) if f.size else None
        if run is not None:
            a, b = run
            span = f"{where} {a + first}" if a == b else f"{where}s {a + first}-{b + first}"
            return f"; {span}: {100 * float(np.mean(f[a:b + 1])):.0f} % of units {word}"
    return ""


def _noise_scale(per_example: np.ndarray, global_norm: float) -> float:
    """The gradient noise scale ``B_simple = tr(Sigma) / ||G||^2`` (McCandlish et al. 2018)
    from the per-example gradient norms ``||G_i||`` (B,) of a batch and the norm of its
    gradient ``G = mean_i G_i``: ``tr(Sigma) = (sum_i ||G_i||^2 - B ||G||^2) / (B - 1)``
    (the unbiased per-example variance). NaN for B < 2 or ``G = 0``."""
    g = np.asarray(per_example, dtype=np.float64)
    B = g.size
    G2 = float(global_norm) ** 2
    if B < 2 or not G2 > 0 or not math.isfinite(G2):
        return math.nan
    tr = (float(np.sum(g * g)) - B * G2) / (B - 1)
    return max(tr, 0.0) / G2


def _health_lines(rows: list[tuple[str, float, float, float, float, float]]) -> list[str]:
    """The health table: one line per layer (step)."""
    out = [f"{'':>6}  {'dead':>6}  {'satur.':>6}  {'zeros':>6}  {'subn.':>6}  {'mean|a|':>10}"]
    for name, dead, sat, zer, sub, ma in rows:
        def pc(v: float) -> str:
            return "   -  " if not math.isfinite(v) else f"{100 * v:5.1f}%"
        out.append(f"{name:>6}  {pc(dead):>6}  {pc(sat):>6}  {pc(zer):>6}  {pc(sub):>6}  "
                   f"{_fmt(ma) if math.isfinite(ma) or math.isnan(ma) else str(ma):>10}")
    return out


@dataclass
class GradReport:
    """Gradient norms of one backward pass of an MLP.

    Attributes
    ----------
    weight_grad_norms : (L+1,) float64
        ``||dL/dW_l||`` for each linear layer, the output layer last.
    bias_grad_norms : (L+1,) float64
        ``||dL/db_l||`` (zeros for a model without biases).
    activation_grad_norms : (L+1,) float64
        ``||dL/da_l||`` for ``l = 0..L`` (``a_0 = x``): the signal entering each
        layer from above, the quantity that vanishes or explodes.
    norm_weight_grad_norms, norm_bias_grad_norms : (L,) float64
        Gradients of the norm layers' ``gamma`` / ``beta`` (empty without norm).
    global_norm : float
        L2 norm of all parameter gradients together (as ``clip_grad_norm``'s total).
    first_nonfinite : int or None
        The first ``l`` scanning ``l = L..0`` whose ``dL/da_l`` holds NaN/Inf.
    forward_first_nonfinite : int or None
        The first hidden layer ``l`` in ``1..L`` whose output ``a_l`` holds NaN/Inf
        in the forward pass (``L+1``: only the output ``y``).
    loss : float or None
        The loss value when the report comes from ``loss_and_grad``.
    dead_unit_fractions, saturated_unit_fractions : (L,) float64
        Health of hidden layer ``l = 1..L`` (entry ``l-1``): the fraction of its units
        whose ``act'`` is exactly 0 (dead) / below the activation's saturation threshold
        (saturated) for every example of the batch (empty with ``report`` off).
    zero_grad_fractions, subnormal_grad_fractions : (L+1,) float64
        The fraction of exact zeros / of subnormal numbers among the entries of
        ``dL/da_l``, ``l = 0..L`` (underflow).
    mean_abs_activations : (L,) float64
        ``mean |a_l|`` over the batch and the units of hidden layer ``l = 1..L``.
    nonfinite_origin : NonFiniteOrigin or None
        Where the first NaN/Inf was born (forward, loss or backward, which layer, which
        stage); None when everything is finite.
    per_example_grad_norms : (B,) float64 or None
        ``||grad l_i||`` of every example's own loss (``backward(..., per_example=True)``).
    per_example_layer_grad_norms : (L+1, B) float64 or None
        The same per linear layer ``l`` (its weight and bias, with its norm layer's
        ``gamma``, ``beta``).
    noise_scale : float or None
        The gradient noise scale ``B_simple = tr(Sigma) / ||G||^2`` of the batch.
    """

    weight_grad_norms: np.ndarray
    bias_grad_norms: np.ndarray
    activation_grad_norms: np.ndarray
    norm_weight_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    norm_bias_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    global_norm: float = 0.0
    first_nonfinite: int | None = None
    forward_first_nonfinite: int | None = None
    loss: float | None = None
    layer_names: list[str] = field(default_factory=list)
    dead_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    saturated_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zero_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    subnormal_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_abs_activations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nonfinite_origin: NonFiniteOrigin | None = None
    per_example_grad_norms: np.ndarray | None = None
    per_example_layer_grad_norms: np.ndarray | None = None
    noise_scale: float | None = None

    @classmethod
    def _from_core(cls, d: dict[str, Any], layer_names: list[str],
                   loss_stage: str | None = None, batch: int = 1) -> GradReport:
        rep = cls(
            weight_grad_norms=d["weight_grad_norms"],
            bias_grad_norms=d["bias_grad_norms"],
            activation_grad_norms=d["activation_grad_norms"],
            norm_weight_grad_norms=d["norm_weight_grad_norms"],
            norm_bias_grad_norms=d["norm_bias_grad_norms"],
            global_norm=float(d["global_norm"]),
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
            layer_names=layer_names,
            dead_unit_fractions=_arr(d, "dead_unit_fractions"),
            saturated_unit_fractions=_arr(d, "saturated_unit_fractions"),
            zero_grad_fractions=_arr(d, "zero_grad_fractions"),
            subnormal_grad_fractions=_arr(d, "subnormal_grad_fractions"),
            mean_abs_activations=_arr(d, "mean_abs_activations"),
        )
        # the first linear layer (from the output down) whose parameter gradients are NaN/Inf
        L = rep.depth
        param_first = None
        if not math.isfinite(rep.global_norm):  # a finite global norm: every norm is finite
            bad = ~np.isfinite(rep.weight_grad_norms) | ~np.isfinite(rep.bias_grad_norms)
            if rep.norm_weight_grad_norms.size:
                bad[:L] |= ~np.isfinite(rep.norm_weight_grad_norms) | ~np.isfinite(
                    rep.norm_bias_grad_norms)
            param_first = next((lay for lay in range(L, -1, -1) if bad[lay]), None)
        rep.nonfinite_origin = _origin("layer", rep.forward_first_nonfinite,
                                       d.get("forward_nonfinite_stage"), loss_stage,
                                       rep.first_nonfinite, d.get("backward_nonfinite_stage"),
                                       param_first)
        shares = d.get("example_layer_shares")
        if shares is not None:
            # example i's own loss l_i (L = mean_i l_i): B times its share of the gradient
            layer = np.asarray(shares, dtype=np.float64) * float(batch)
            rep.per_example_layer_grad_norms = layer
            m = np.max(np.abs(layer), axis=0, initial=0.0)
            with np.errstate(all="ignore"):  # rescaled: no overflow of finite squares
                scaled = np.where(m > 0, layer / np.where(m > 0, m, 1.0), 0.0)
                rep.per_example_grad_norms = m * np.sqrt(np.sum(scaled * scaled, axis=0))
            rep.noise_scale = _noise_scale(rep.per_example_grad_norms, rep.global_norm)
        return rep

    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.activation_grad_norms) - 1

    @property
    def ratio(self) -> float:
        """``||dL/da_0|| / ||dL/da_L||``: below 1 the signal shrinks on its way down."""
        return _ratio(self.activation_grad_norms)

    def log10_slope(self) -> float:
        """Least-squares slope of ``log10 ||dL/da_l||`` per layer, going down (l = L..0).

        Negative: the gradient shrinks by ``10**slope`` per layer on its way to the
        input (vanishing); positive: it grows (exploding). Layers whose norm is 0 or
        not finite are left out; NaN when fewer than two remain.
        """
        return _log10_slope(self.activation_grad_norms)

    def verdict(self, threshold: float = 1e2) -> str:
        """A one-line reading: vanishing, exploding, non-finite or healthy; then, where a
        run of hidden layers has at least half of its units dead (else saturated), that
        run (``"; layers 12-40: 85 % of units saturated"``)."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "layer",
                        "||dL/da_0|| / ||dL/da_L||", threshold, self.nonfinite_origin) + \
            _health_note(self.dead_unit_fractions, self.saturated_unit_fractions, "layer", 1)

    def health_table(self) -> str:
        """The health statistics per layer (str): for hidden layer ``l = 1..L`` the dead
        and saturated units and ``mean |a_l|``, and for every ``l = 0..L`` the zero and
        subnormal fractions of ``dL/da_l`` (empty string when not computed)."""
        if not self.zero_grad_fractions.size:
            return ""
        L = self.depth

        def get(a: np.ndarray, i: int) -> float:  # hidden layer i + 1's entry, NaN for a_0
            return float(a[i]) if 0 <= i < len(a) else math.nan

        rows = []
        for layer in range(L + 1):
            rows.append((str(layer), get(self.dead_unit_fractions, layer - 1),
                         get(self.saturated_unit_fractions, layer - 1),
                         float(self.zero_grad_fractions[layer]),
                         float(self.subnormal_grad_fractions[layer]),
                         get(self.mean_abs_activations, layer - 1)))
        return "\n".join(_health_lines(rows))

    def table(self, health: bool = False) -> str:
        """A readable per-layer table (str): layer l's weights and the gradient at its input;
        with ``health=True`` also :meth:`health_table`, the per-example norms' summary and
        where a NaN/Inf was born."""
        a = self.activation_grad_norms
        w = self.weight_grad_norms
        b = self.bias_grad_norms
        L = self.depth
        lines = [f"{'layer':>6}  {'||dL/dW||':>10}  {'||dL/db||':>10}  {'||dL/da_in||':>12}  log10"]
        finite = a[np.isfinite(a) & (a > 0)]
        top = float(np.log10(finite.max())) if finite.size else 0.0
        for layer in range(L + 1):
            name = "out" if layer == L else str(layer)
            av = float(a[layer])
            if math.isfinite(av) and av > 0:
                lg = math.log10(av)
                bar = "#" * max(0, min(40, int(round(40 + 2 * (lg - top)))))
                lgs = f"{lg:6.1f} {bar}"
            else:
                lgs = "   nan" if not math.isfinite(av) else "  -inf"
            lines.append(
                f"{name:>6}  {_fmt(float(w[layer])):>10}  {_fmt(float(b[layer])):>10}  "
                f"{_fmt(av):>12}  {lgs}"
            )
        lines.append(f"global grad norm {_fmt(self.global_norm)};  {self.verdict()}")
        if not health:
            return "\n".join(lines)
        text = self.health_table()
        if text:
            lines += ["health (hidden layer l: units; dL/da_l: entries)", text]
        if self.per_example_grad_norms is not None:
            g = self.per_example_grad_norms
            lines.append(f"per-example ||grad l_i||: min {_fmt(float(g.min()))}, median "
                         f"{_fmt(float(np.median(g)))}, max {_fmt(float(g.max()))};  noise "
                         f"scale B_simple {_fmt(float(self.noise_scale or math.nan))}")
        if self.nonfinite_origin is not None:
            lines.append(f"NaN/Inf born in {self.nonfinite_origin}")
        return "\n".join(lines)

    def plot_health(self, ax: Any = None, path: str | os.PathLike[str] | None = None
                    ) -> tuple[Any, Any]:
        """The health panel (needs matplotlib): per layer the dead and saturated unit
        fractions, the zero and subnormal fractions of ``dL/da_l`` (linear scale, 0..1)
        and ``mean |a_l|`` (right axis). Returns ``(fig, ax)``."""
        from .plots import health_panel

        return health_panel(self, ax, path)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             which: str | Sequence[str] = ("activation", "weight"),
             label: str | None = None, health: bool = False,
             **line_kwargs: Any) -> tuple[Any, Any]:
        """Per-layer gradient norms on a log scale (needs matplotlib, extra ``plot``).

        x is the layer index ``l = 0..L`` (``L = depth``; tick 0 reads "input", tick L
        "out"); y is ``||dL/da_l||`` (``activation_grad_norms``, (L+1,)), the weight
        gradient norms ``||dL/dW_l||`` of layer l (``weight_grad_norms``, (L+1,), the
        output layer at L) and, when asked, ``||dL/db_l||``. A zero or non-finite norm
        leaves a gap in its line and is marked at the bottom of the axes (grey ``v``:
        0, e.g. underflow; red ``x``: NaN/Inf); a dotted red line marks
        ``first_nonfinite``.

        Parameters
        ----------
        ax : matplotlib Axes or None
            Draw into it (overlay several reports on one ax); None makes a new figure.
        path : str or os.PathLike or None
            Also save the figure there as a PNG; the folder must exist.
        which : str or sequence of str
            Any of ``"activation"``, ``"weight"``, ``"bias"``.
        label : str or None
            Legend text for this report (the verdict kind, e.g. "vanishing", is
            appended to the ``||dL/da_l||`` entry); without a label the verdict becomes
            the axes title.
        **line_kwargs
            Passed to ``Axes.plot`` for every line (``color``, ``linestyle``, ``lw``...).

        Returns
        -------
        (fig, ax) : the matplotlib Figure and Axes.

        Raises
        ------
        TypeError
            ``ax`` not an Axes, ``path`` not a path, ``label`` not a str, ``which``
            not strs, a line property matplotlib does not know.
        ValueError
            An unknown ``which`` entry; ``path``'s folder does not exist.
        ImportError
            matplotlib is not installed.

        With ``health=True`` (and ``ax`` None) the figure has a second panel below, the
        health panel of :meth:`plot_health` (``fig.axes[1]``).
        """
        from .plots import grad_report, with_health  # the drawing lives in the lab

        if health:
            return with_health(self, ax, path, lambda a: grad_report(
                self, a, None, which, label, line_kwargs))
        return grad_report(self, ax, path, which, label, line_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (lists, floats, ints, None): JSON-ready."""
        def lst(v: np.ndarray) -> list[float]:
            return [float(x) for x in np.asarray(v)]

        return {
            "weight_grad_norms": lst(self.weight_grad_norms),
            "bias_grad_norms": lst(self.bias_grad_norms),
            "activation_grad_norms": lst(self.activation_grad_norms),
            "norm_weight_grad_norms": lst(self.norm_weight_grad_norms),
            "norm_bias_grad_norms": lst(self.norm_bias_grad_norms),
            "global_norm": float(self.global_norm),
            "first_nonfinite": self.first_nonfinite,
            "forward_first_nonfinite": self.forward_first_nonfinite,
            "loss": self.loss,
            **_forensics_dict(self),
        }

    def __repr__(self) -> str:
        return (
            f"GradReport(depth={self.depth}, global_norm={self.global_norm:.3e}, "
            f"ratio={self.ratio:.3e}, first_nonfinite={self.first_nonfinite})"
        )


@dataclass
class RNNGradReport:
    """Gradient norms of one backpropagation-through-time pass of an RNN.

    Attributes
    ----------
    timestep_grad_norms : (T,) float64
        ``||dL/dh_t||`` for ``t = 1..T``: the *total* derivative (through every later
        step), the quantity that vanishes or explodes along time.
    weight_ih_grad_norm, weight_hh_grad_norm, bias_ih_grad_norm, bias_hh_grad_norm : float
    readout_weight_grad_norm, readout_bias_grad_norm : float
        0.0 for parameters the model does not have.
    h0_grad : (B, H) array
        ``dL/dh_0``; ``h0_grad_norm`` is its norm.
    global_norm : float
        L2 norm of all parameter gradients (as ``clip_grad_norm``'s total).
    first_nonfinite : int or None
        The first ``t`` scanning ``t = T..1`` whose ``dL/dh_t`` holds NaN/Inf.
    forward_first_nonfinite : int or None
        The first ``t`` in ``1..T`` whose ``h_t`` holds NaN/Inf (``T+1``: only the readout).
    dead_unit_fractions, saturated_unit_fractions, zero_grad_fractions,
    subnormal_grad_fractions, mean_abs_activations : (T,) float64
        The health of step ``t = 1..T``, as :class:`GradReport`'s: the units of ``h_t``
        (dead / saturated for every example), the entries of ``dL/dh_t``, ``mean |h_t|``.
    nonfinite_origin : NonFiniteOrigin or None
        Where the first NaN/Inf was born (``where="step"``).
    per_example_grad_norms : (B,) float64 or None
        ``||grad l_i||`` of every example's own loss (``backward(..., per_example=True)``;
        ``L = mean_i l_i``), exact: the weights are shared over time, so example i's
        gradient ``sum_t dz_{t,i} a_{t,i}^T`` is not rank one (``per_example_rnn.h``).
    per_example_tensor_grad_norms : dict[str, (B,) float64] or None
        The same per parameter tensor (``weight_ih_l0``, ``weight_hh_l0``, the biases, the
        readout's).
    per_example_timestep_grad_norms : (T, B) float64 or None
        ``||dl_i/dh_{t,i}||``: every example's own ``dL/dh_t`` row (times B).
    noise_scale : float or None
        The gradient noise scale ``B_simple = tr(Sigma) / ||G||^2`` of the batch.
    """

    timestep_grad_norms: np.ndarray
    weight_ih_grad_norm: float = 0.0
    weight_hh_grad_norm: float = 0.0
    bias_ih_grad_norm: float = 0.0
    bias_hh_grad_norm: float = 0.0
    readout_weight_grad_norm: float = 0.0
    readout_bias_grad_norm: float = 0.0
    h0_grad: np.ndarray | None = None
    h0_grad_norm: float = 0.0
    global_norm: float = 0.0
    first_nonfinite: int | None = None
    forward_first_nonfinite: int | None = None
    loss: float | None = None
    dead_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    saturated_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zero_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    subnormal_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_abs_activations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nonfinite_origin: NonFiniteOrigin | None = None
    per_example_grad_norms: np.ndarray | None = None
    per_example_tensor_grad_norms: dict[str, np.ndarray] | None = None
    per_example_timestep_grad_norms: np.ndarray | None = None
    noise_scale: float | None = None

    # the rows of the core's per-example sums (per_example_rnn.h's RnnExampleTensor)
    _EXAMPLE_ROWS = {"weight_ih_l0": 0, "weight_hh_l0": 1, "bias_ih_l0": 2, "bias_hh_l0": 2,
                     "readout.weight": 3, "readout.bias": 4}

    _NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
              "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
              "h0_grad_norm", "global_norm")

    @classmethod
    def _from_core(cls, d: dict[str, Any], h0_grad: np.ndarray,
                   loss_stage: str | None = None,
                   tensors: list[str] | None = None) -> RNNGradReport:
        rep = cls(
            timestep_grad_norms=d["timestep_grad_norms"],
            **{k: float(d[k]) for k in cls._NORMS},
            h0_grad=h0_grad,
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
            dead_unit_fractions=_arr(d, "dead_unit_fractions"),
            saturated_unit_fractions=_arr(d, "saturated_unit_fractions"),
            zero_grad_fractions=_arr(d, "zero_grad_fractions"),
            subnormal_grad_fractions=_arr(d, "subnormal_grad_fractions"),
            mean_abs_activations=_arr(d, "mean_abs_activations"),
        )
        params_bad = not all(math.isfinite(float(d[k])) for k in cls._NORMS
                             if k not in ("h0_grad_norm", "global_norm"))
        rep.nonfinite_origin = _origin("step", rep.forward_first_nonfinite,
                                       d.get("forward_nonfinite_stage"), loss_stage,
                                       rep.first_nonfinite, d.get("backward_nonfinite_stage"),
                                       -1 if params_bad else None)
        ss = d.get("example_tensor_sumsq")
        if ss is not None and tensors is not None:
            rep._add_per_example(np.asarray(ss, dtype=np.float64),
                                 np.asarray(d["example_step_sumsq"], dtype=np.float64), tensors)
        return rep

    def _add_per_example(self, ss: np.ndarray, step: np.ndarray, tensors: list[str]) -> None:
        """The per-example fields from the core's squared shares ``ss (5, B)`` (rows as
        ``_EXAMPLE_ROWS``) and ``step (T, B)``: example i's own loss ``l_i`` (``L = mean_i
        l_i``) has B times its share of the gradient."""
        B = ss.shape[1]
        per = {n: float(B) * np.sqrt(ss[self._EXAMPLE_ROWS[n]]) for n in tensors}
        self.per_example_tensor_grad_norms = per
        self.per_example_grad_norms = float(B) * np.sqrt(
            np.sum([ss[self._EXAMPLE_ROWS[n]] for n in tensors], axis=0))
        self.per_example_timestep_grad_norms = float(B) * np.sqrt(step)
        self.noise_scale = _noise_scale(self.per_example_grad_norms, self.global_norm)

    @property
    def steps(self) -> int:
        return len(self.timestep_grad_norms)

    @property
    def ratio(self) -> float:
        """``||dL/dh_1|| / ||dL/dh_T||``: below 1 the signal shrinks going back in time."""
        return _ratio(self.timestep_grad_norms)

    def log10_slope(self) -> float:
        """Least-squares slope of ``log10 ||dL/dh_t||`` per step back in time (t = T..1);
        ``10**slope`` is the fitted factor per step. Steps whose norm is 0 or not finite
        are left out; NaN when fewer than two remain."""
        return _log10_slope(self.timestep_grad_norms)

    def verdict(self, threshold: float = 1e2) -> str:
        """A one-line reading: vanishing, exploding, non-finite or healthy; then, where a
        run of steps has at least half of the units of ``h_t`` dead (else saturated),
        that run (``"; steps 3-40: 90 % of units saturated"``)."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "step",
                        "||dL/dh_1|| / ||dL/dh_T||", threshold, self.nonfinite_origin) + \
            _health_note(self.dead_unit_fractions, self.saturated_unit_fractions, "step", 1)

    def health_table(self, rows: int = 12) -> str:
        """The health statistics at a few steps ``t`` (as :meth:`table` picks them): dead
        and saturated units of ``h_t``, zero and subnormal fractions of ``dL/dh_t``,
        ``mean |h_t|`` (empty string when not computed)."""
        if not self.zero_grad_fractions.size:
            return ""
        T = self.steps
        ts = sorted(set(np.linspace(T, 1, min(rows, T)).round().astype(int).tolist()),
                    reverse=True)
        return "\n".join(_health_lines([
            (str(t), float(self.dead_unit_fractions[t - 1]),
             float(self.saturated_unit_fractions[t - 1]),
             float(self.zero_grad_fractions[t - 1]),
             float(self.subnormal_grad_fractions[t - 1]),
             float(self.mean_abs_activations[t - 1])) for t in ts]))

    def plot_health(self, ax: Any = None, path: str | os.PathLike[str] | None = None
                    ) -> tuple[Any, Any]:
        """The health panel per step (as :meth:`GradReport.plot_health`). Returns
        ``(fig, ax)``."""
        from .plots import health_panel

        return health_panel(self, ax, path)

    def table(self, rows: int = 12, health: bool = False) -> str:
        """A summary of the decay along time: ``||dL/dh_t||`` at a few steps, the
        parameter gradient norms, the fitted per-step factor and the verdict (str); with
        ``health=True`` also :meth:`health_table` and where a NaN/Inf was born."""
        a = np.asarray(self.timestep_grad_norms)
        T = len(a)
        ts = sorted(set(np.linspace(T, 1, min(rows, T)).round().astype(int).tolist()),
                    reverse=True)
        lines = [f"{'step t':>7}  {'||dL/dh_t||':>12}  log10"]
        for t in ts:
            v = float(a[t - 1])
            lg = f"{math.log10(v):6.1f}" if math.isfinite(v) and v > 0 else "   n/a"
            lines.append(f"{t:>7}  {_fmt(v):>12}  {lg}")
        lines.append(f"{'h_0':>7}  {_fmt(self.h0_grad_norm):>12}")
        slope = self.log10_slope()
        factor = f"x{10 ** slope:.4f} per step back" if math.isfinite(slope) else "n/a"
        lines.append(
            f"||dL/dW_ih|| {_fmt(self.weight_ih_grad_norm)}  ||dL/dW_hh|| "
            f"{_fmt(self.weight_hh_grad_norm)}  ||dL/db|| {_fmt(self.bias_hh_grad_norm)}"
            + (f"  ||dL/dW_out|| {_fmt(self.readout_weight_grad_norm)}"
               if self.readout_weight_grad_norm else ""))
        lines.append(f"global grad norm {_fmt(self.global_norm)};  fitted {factor};  "
                     f"{self.verdict()}")
        if not health:
            return "\n".join(lines)
        text = self.health_table(rows)
        if text:
            lines += ["health (step t: units of h_t; dL/dh_t: entries)", text]
        if self.per_example_grad_norms is not None:
            g = self.per_example_grad_norms
            lines.append(f"per-example ||grad l_i||: min {_fmt(float(g.min()))}, median "
                         f"{_fmt(float(np.median(g)))}, max {_fmt(float(g.max()))};  noise "
                         f"scale B_simple {_fmt(float(self.noise_scale or math.nan))}")
        if self.nonfinite_origin is not None:
            lines.append(f"NaN/Inf born in {self.nonfinite_origin}")
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             label: str | None = None, health: bool = False,
             **line_kwargs: Any) -> tuple[Any, Any]:
        """``||dL/dh_t||`` per timestep ``t = 1..T`` on a log scale (needs matplotlib).

        Same conventions as :meth:`GradReport.plot`: zero / non-finite norms leave gaps
        and are marked at the bottom of the axes; ``first_nonfinite`` is a dotted red
        line; without ``label`` the verdict is the title, with one it is appended to the
        legend entry.

        Parameters
        ----------
        ax : matplotlib Axes or None
        path : str or os.PathLike or None
            Also save the figure as a PNG there; the folder must exist.
        label : str or None
        **line_kwargs
            Passed to ``Axes.plot`` (``color``, ``linestyle``, ...).

        Returns
        -------
        (fig, ax)

        Raises
        ------
        TypeError, ValueError, ImportError
            As :meth:`GradReport.plot`.
        """
        from .plots import rnn_grad_report, with_health  # the drawing lives in the lab

        if health:  # a second panel below: plot_health's (fig.axes[1])
            return with_health(self, ax, path, lambda a: rnn_grad_report(
                self, a, None, label, line_kwargs))
        return rnn_grad_report(self, ax, path, label, line_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-ready); ``h0_grad`` is left out (use the attribute)."""
        out: dict[str, Any] = {
            "timestep_grad_norms": [float(x) for x in np.asarray(self.timestep_grad_norms)],
        }
        out.update({k: float(getattr(self, k)) for k in self._NORMS})
        out.update(first_nonfinite=self.first_nonfinite,
                   forward_first_nonfinite=self.forward_first_nonfinite, loss=self.loss)
        out.update(_forensics_dict(self))
        return out

    def __repr__(self) -> str:
        return (f"RNNGradReport(T={self.steps}, global_norm={self.global_norm:.3e}, "
                f"ratio={self.ratio:.3e}, first_nonfinite={self.first_nonfinite})")


def _forensics_dict(rep: Any) -> dict[str, Any]:
    """The health, origin and per-example entries of ``to_dict`` (plain types)."""
    def lst(v: Any) -> Any:  # NaN (not defined, e.g. a custom activation's saturation) as None
        if v is None:
            return None
        a = np.asarray(v, dtype=np.float64)
        out = a.astype(object)
        out[np.isnan(a)] = None
        return out.tolist()

    o = rep.nonfinite_origin
    out: dict[str, Any] = {k: lst(getattr(rep, k)) for k in (
        "dead_unit_fractions", "saturated_unit_fractions", "zero_grad_fractions",
        "subnormal_grad_fractions", "mean_abs_activations")}
    out["nonfinite_origin"] = None if o is None else {
        "phase": o.phase, "index": o.index, "stage": o.stage, "where": o.where,
        "text": str(o)}
    for k in ("per_example_grad_norms", "per_example_layer_grad_norms",
              "per_example_timestep_grad_norms"):
        if hasattr(rep, k):
            out[k] = lst(getattr(rep, k))
    per = getattr(rep, "per_example_tensor_grad_norms", None)
    if per is not None:
        out["per_example_tensor_grad_norms"] = {n: lst(v) for n, v in per.items()}
    if hasattr(rep, "noise_scale"):
        ns = rep.noise_scale
        out["noise_scale"] = None if ns is None or math.isnan(ns) else float(ns)
    return out


_GATED_NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
                "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
                "h0_grad_norm", "c0_grad_norm", "global_norm")
_GATED_ARRAYS = ("timestep_grad_norms", "cell_grad_norms", "gate_means", "gate_saturation",
                 "weight_ih_gate_grad_norms", "weight_hh_gate_grad_norms",
                 "bias_ih_gate_grad_norms", "bias_hh_gate_grad_norms")
# the health fields of the RNN's names, then the LSTM's cell-state ones (empty for a GRU)
_GATED_HEALTH = ("dead_unit_fractions", "saturated_unit_fractions", "zero_grad_fractions",
                 "subnormal_grad_fractions", "mean_abs_activations",
                 "cell_zero_grad_fractions", "cell_subnormal_grad_fractions",
                 "mean_abs_cell_states")


@dataclass
class GatedGradReport:
    """Gradient norms and gate statistics of one backpropagation-through-time pass of an
    LSTM or a GRU (``cell``: ``"lstm"`` / ``"gru"``; ``gates``: the gate blocks in torch's
    order, ``("i", "f", "g", "o")`` / ``("r", "z", "n")``; G = len(gates)).

    Attributes
    ----------
    timestep_grad_norms : (T,) float64
        ``||dL/dh_t||`` for ``t = 1..T``: the total derivative through every later step.
    cell_grad_norms : (T,) float64
        LSTM: ``||dL/dc_t||``, the total derivative through the cell state (the additive
        path the forget gate keeps open); empty for a GRU.
    gate_means : (G, T) float64
        The mean value of each gate at each step, over the batch and the hidden units.
    gate_saturation : (G, T) float64
        The fraction of units of each gate at each step whose derivative is below 1e-3 of
        its maximum (``sigmoid'(z) < 2.5e-4``, ``tanh'(z) < 1e-3``): saturated units pass
        almost no gradient to their pre-activation.
    weight_ih_grad_norm, weight_hh_grad_norm, bias_ih_grad_norm, bias_hh_grad_norm : float
    readout_weight_grad_norm, readout_bias_grad_norm : float
        Per tensor (0.0 for parameters the model does not have).
    weight_ih_gate_grad_norms, weight_hh_gate_grad_norms : (G,) float64
    bias_ih_gate_grad_norms, bias_hh_gate_grad_norms : (G,) float64
        Per gate block of each stacked tensor (rows ``k*H .. (k+1)*H``).
    h0_grad, c0_grad : (B, H) arrays
        ``dL/dh_0`` and (LSTM) ``dL/dc_0``; ``h0_grad_norm``, ``c0_grad_norm`` their norms.
    global_norm : float
        L2 norm of all parameter gradients (as ``clip_grad_norm``'s total).
    first_nonfinite : int or None
        The first ``t`` scanning ``t = T..1`` whose ``dL/dh_t`` (or ``dL/dc_t``) holds NaN/Inf.
    forward_first_nonfinite : int or None
        The first ``t`` in ``1..T`` whose ``h_t`` (or ``c_t``) holds NaN/Inf (``T+1``: only
        the readout).
    dead_unit_fractions, saturated_unit_fractions : (T,) float64
        The hidden units of step ``t`` whose gate derivatives are all exactly 0 (dead: only
        by underflow for sigmoid/tanh gates) / all below 1e-3 of their maxima (saturated:
        no gradient enters the unit's pre-activations), for every example
        (docs/CONVENTIONS.md, "Gradient report").
    zero_grad_fractions, subnormal_grad_fractions : (T,) float64
        The fractions of the entries of ``dL/dh_t`` that are exactly 0 / subnormal.
    mean_abs_activations : (T,) float64
        ``mean |h_t|``.
    cell_zero_grad_fractions, cell_subnormal_grad_fractions, mean_abs_cell_states : (T,)
        LSTM: the same for ``dL/dc_t`` and ``mean |c_t|`` (empty for a GRU).
    nonfinite_origin : NonFiniteOrigin or None
        Where the first NaN/Inf was born (``where="step"``), as :class:`RNNGradReport`'s.
    per_example_grad_norms : (B,) float64 or None
        ``||grad l_i||`` of every example's own loss (``backward(..., per_example=True)``;
        ``L = mean_i l_i``), exact (``per_example_rnn.h``, G gate blocks).
    per_example_tensor_grad_norms : dict[str, (B,) float64] or None
        The same per parameter tensor (the GRU's ``bias_hh_l0`` has its own: the n gate's
        hidden bias sits inside ``r * (W_hn h + b_hn)``).
    per_example_timestep_grad_norms : (T, B) float64 or None
        ``||dl_i/dh_{t,i}||``: every example's own ``dL/dh_t`` row (times B).
    noise_scale : float or None
        The gradient noise scale ``B_simple`` (as :class:`RNNGradReport`'s); None without
        ``per_example``.
    """

    _EXAMPLE_ROWS = {"weight_ih_l0": 0, "weight_hh_l0": 1, "bias_ih_l0": 2, "bias_hh_l0": 5,
                     "readout.weight": 3, "readout.bias": 4}

    cell: str
    gates: tuple[str, ...]
    timestep_grad_norms: np.ndarray
    cell_grad_norms: np.ndarray
    gate_means: np.ndarray
    gate_saturation: np.ndarray
    weight_ih_grad_norm: float = 0.0
    weight_hh_grad_norm: float = 0.0
    bias_ih_grad_norm: float = 0.0
    bias_hh_grad_norm: float = 0.0
    readout_weight_grad_norm: float = 0.0
    readout_bias_grad_norm: float = 0.0
    weight_ih_gate_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight_hh_gate_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bias_ih_gate_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bias_hh_gate_grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    h0_grad: np.ndarray | None = None
    h0_grad_norm: float = 0.0
    c0_grad: np.ndarray | None = None
    c0_grad_norm: float = 0.0
    global_norm: float = 0.0
    first_nonfinite: int | None = None
    forward_first_nonfinite: int | None = None
    loss: float | None = None
    dead_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    saturated_unit_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    zero_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    subnormal_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_abs_activations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cell_zero_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cell_subnormal_grad_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_abs_cell_states: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nonfinite_origin: NonFiniteOrigin | None = None
    per_example_grad_norms: np.ndarray | None = None
    per_example_tensor_grad_norms: dict[str, np.ndarray] | None = None
    per_example_timestep_grad_norms: np.ndarray | None = None
    noise_scale: float | None = None

    @classmethod
    def _from_core(cls, d: dict[str, Any], cell: str, gates: tuple[str, ...],
                   h0_grad: np.ndarray, c0_grad: np.ndarray | None,
                   loss_stage: str | None = None,
                   tensors: list[str] | None = None) -> GatedGradReport:
        rep = cls(
            cell=cell, gates=gates,
            **{k: np.asarray(d[k]) for k in _GATED_ARRAYS},
            **{k: float(d[k]) for k in _GATED_NORMS},
            h0_grad=h0_grad, c0_grad=c0_grad,
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
            **{k: _arr(d, k) for k in _GATED_HEALTH},
        )
        params_bad = not all(math.isfinite(float(d[k])) for k in _GATED_NORMS
                             if k not in ("h0_grad_norm", "c0_grad_norm", "global_norm"))
        rep.nonfinite_origin = _origin("step", rep.forward_first_nonfinite,
                                       d.get("forward_nonfinite_stage"), loss_stage,
                                       rep.first_nonfinite, d.get("backward_nonfinite_stage"),
                                       -1 if params_bad else None)
        ss = d.get("example_tensor_sumsq")
        if ss is not None and tensors is not None:
            rep._add_per_example(np.asarray(ss, dtype=np.float64),
                                 np.asarray(d["example_step_sumsq"], dtype=np.float64), tensors)
        return rep

    _add_per_example = RNNGradReport._add_per_example

    @property
    def steps(self) -> int:
        return len(self.timestep_grad_norms)

    @property
    def ratio(self) -> float:
        """``||dL/dh_1|| / ||dL/dh_T||``: below 1 the signal shrinks going back in time."""
        return _ratio(self.timestep_grad_norms)

    def log10_slope(self) -> float:
        """Least-squares slope of ``log10 ||dL/dh_t||`` per step back in time (as
        :meth:`RNNGradReport.log10_slope`)."""
        return _log10_slope(self.timestep_grad_norms)

    def verdict(self, threshold: float = 1e2) -> str:
        """A one-line reading of ``||dL/dh_1|| / ||dL/dh_T||``: vanishing, exploding,
        non-finite (where it was born) or healthy; then, as :meth:`RNNGradReport.verdict`,
        the longest run of steps with at least half of the hidden units saturated."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "step",
                        "||dL/dh_1|| / ||dL/dh_T||", threshold, self.nonfinite_origin) + \
            _health_note(self.dead_unit_fractions, self.saturated_unit_fractions, "step", 1)

    def health_table(self, rows: int = 12) -> str:
        """The health statistics at a few steps ``t`` (as :meth:`table` picks them): dead
        and saturated hidden units, zero and subnormal fractions of ``dL/dh_t``, ``mean
        |h_t|`` and, LSTM, the zero fraction of ``dL/dc_t`` and ``mean |c_t|`` (empty string
        when not computed)."""
        if not self.zero_grad_fractions.size:
            return ""
        T = self.steps
        ts = sorted(set(np.linspace(T, 1, min(rows, T)).round().astype(int).tolist()),
                    reverse=True)
        lines = _health_lines([
            (str(t), float(self.dead_unit_fractions[t - 1]),
             float(self.saturated_unit_fractions[t - 1]),
             float(self.zero_grad_fractions[t - 1]),
             float(self.subnormal_grad_fractions[t - 1]),
             float(self.mean_abs_activations[t - 1])) for t in ts])
        if len(self.cell_zero_grad_fractions) == T:  # the LSTM's cell state
            lines[0] += f"  {'dc zeros':>8}  {'dc subn.':>8}  {'mean|c|':>10}"
            for i, t in enumerate(ts, start=1):
                lines[i] += (f"  {100 * float(self.cell_zero_grad_fractions[t - 1]):7.1f}%"
                             f"  {100 * float(self.cell_subnormal_grad_fractions[t - 1]):7.1f}%"
                             f"  {_fmt(float(self.mean_abs_cell_states[t - 1])):>10}")
        return "\n".join(lines)

    def plot_health(self, ax: Any = None, path: str | os.PathLike[str] | None = None
                    ) -> tuple[Any, Any]:
        """The health panel per step (as :meth:`RNNGradReport.plot_health`). Returns
        ``(fig, ax)``."""
        from .plots import health_panel

        return health_panel(self, ax, path)

    def gate(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(means, saturated fractions)`` of gate ``name`` (one of :attr:`gates`), (T,) each."""
        if name not in self.gates:
            raise ValueError(f"gate: expected one of {', '.join(self.gates)}, got {name!r}")
        k = self.gates.index(name)
        return self.gate_means[k], self.gate_saturation[k]

    def table(self, rows: int = 12, health: bool = False) -> str:
        """A summary along time: ``||dL/dh_t||`` (and ``||dL/dc_t||``) at a few steps with
        each gate's mean value and saturated fraction, the per-gate weight-gradient norms,
        the fitted per-step factor and the verdict (str); with ``health=True`` also
        :meth:`health_table` and where a NaN/Inf was born."""
        a = np.asarray(self.timestep_grad_norms)
        T = len(a)
        lstm = len(self.cell_grad_norms) == T and T > 0
        ts = sorted(set(np.linspace(T, 1, min(rows, T)).round().astype(int).tolist()),
                    reverse=True)
        head = f"{'step t':>7}  {'||dL/dh_t||':>12}"
        if lstm:
            head += f"  {'||dL/dc_t||':>12}"
        head += "".join(f"  {g + ' mean/sat':>14}" for g in self.gates)
        lines = [head]
        for t in ts:
            line = f"{t:>7}  {_fmt(float(a[t - 1])):>12}"
            if lstm:
                line += f"  {_fmt(float(self.cell_grad_norms[t - 1])):>12}"
            for k in range(len(self.gates)):
                line += (f"  {float(self.gate_means[k, t - 1]):>6.3f}/"
                         f"{float(self.gate_saturation[k, t - 1]):<7.3f}")
            lines.append(line)
        h0 = f"{'h_0':>7}  {_fmt(self.h0_grad_norm):>12}"
        if lstm:
            h0 += f"  {_fmt(self.c0_grad_norm):>12}"
        lines.append(h0)
        lines.append("per gate " + "  ".join(
            f"{g}: ||dW_ih|| {_fmt(float(wi))} ||dW_hh|| {_fmt(float(wh))}"
            for g, wi, wh in zip(self.gates, self.weight_ih_gate_grad_norms,
                                 self.weight_hh_gate_grad_norms, strict=True)))
        slope = self.log10_slope()
        factor = f"x{10 ** slope:.4f} per step back" if math.isfinite(slope) else "n/a"
        lines.append(f"global grad norm {_fmt(self.global_norm)};  fitted {factor};  "
                     f"{self.verdict()}")
        if self.per_example_grad_norms is not None:
            g = self.per_example_grad_norms
            lines.append(f"per-example ||grad l_i||: min {_fmt(float(g.min()))}, median "
                         f"{_fmt(float(np.median(g)))}, max {_fmt(float(g.max()))};  noise "
                         f"scale B_simple {_fmt(float(self.noise_scale or math.nan))}")
        if not health:
            return "\n".join(lines)
        text = self.health_table(rows)
        if text:
            lines += ["health (step t: hidden units; dL/dh_t: entries)", text]
        if self.nonfinite_origin is not None:
            lines.append(f"NaN/Inf born in {self.nonfinite_origin}")
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             label: str | None = None, cell_state: bool = True, health: bool = False,
             **line_kwargs: Any) -> tuple[Any, Any]:
        """``||dL/dh_t||`` per timestep on a log scale and, for an LSTM with
        ``cell_state``, ``||dL/dc_t||`` dashed in the same colour (needs matplotlib).

        Draw several models' reports into one ``ax`` (``label`` each) to compare how far
        back their gradients reach; an :class:`RNNGradReport`'s plot overlays the same
        way. Conventions, returns and errors as :meth:`RNNGradReport.plot`; ``health=True``
        (and ``ax`` None) adds the health panel of :meth:`plot_health` below
        (``fig.axes[1]``).
        """
        from .plots import gated_grad_report, with_health  # the drawing lives in the lab

        if health:
            return with_health(self, ax, path, lambda a: gated_grad_report(
                self, a, None, label, cell_state, line_kwargs))
        return gated_grad_report(self, ax, path, label, cell_state, line_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-ready); ``h0_grad`` / ``c0_grad`` are left out."""
        out: dict[str, Any] = {"cell": self.cell, "gates": list(self.gates)}
        out.update({k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
                    for k in _GATED_ARRAYS})
        out.update({k: float(getattr(self, k)) for k in _GATED_NORMS})
        out.update(first_nonfinite=self.first_nonfinite,
                   forward_first_nonfinite=self.forward_first_nonfinite, loss=self.loss)
        out.update(_forensics_dict(self))
        out.update({k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
                    for k in _GATED_HEALTH[5:]})
        if self.per_example_grad_norms is not None:  # NaN (undefined) as None
            def lst(v: Any) -> Any:
                a = np.asarray(v, dtype=np.float64)
                o = a.astype(object)
                o[np.isnan(a)] = None
                return o.tolist()

            out["per_example_grad_norms"] = lst(self.per_example_grad_norms)
            out["per_example_timestep_grad_norms"] = lst(self.per_example_timestep_grad_norms)
            out["per_example_tensor_grad_norms"] = {
                n: lst(v) for n, v in (self.per_example_tensor_grad_norms or {}).items()}
            ns = self.noise_scale
            out["noise_scale"] = None if ns is None or math.isnan(ns) else float(ns)
        return out

    def __repr__(self) -> str:
        return (f"GatedGradReport(cell={self.cell!r}, T={self.steps}, "
                f"global_norm={self.global_norm:.3e}, ratio={self.ratio:.3e}, "
                f"first_nonfinite={self.first_nonfinite})")
