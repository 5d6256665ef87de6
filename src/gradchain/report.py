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

__all__ = ["GatedGradReport", "GradReport", "RNNGradReport"]


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
             threshold: float) -> str:
    if first is not None or forward_first is not None:
        at = first if first is not None else forward_first
        return f"non-finite: NaN/Inf first at {where} {at}"
    if math.isnan(r):
        return "no gradient: every norm is 0"
    kind = "vanishing" if r < 1.0 / threshold else "exploding" if r > threshold else "healthy"
    return f"{kind}: {label} = {r:.2e}"


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

    @classmethod
    def _from_core(cls, d: dict[str, Any], layer_names: list[str]) -> GradReport:
        return cls(
            weight_grad_norms=d["weight_grad_norms"],
            bias_grad_norms=d["bias_grad_norms"],
            activation_grad_norms=d["activation_grad_norms"],
            norm_weight_grad_norms=d["norm_weight_grad_norms"],
            norm_bias_grad_norms=d["norm_bias_grad_norms"],
            global_norm=float(d["global_norm"]),
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
            layer_names=layer_names,
        )

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
        """A one-line reading: vanishing, exploding, non-finite or healthy."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "layer",
                        "||dL/da_0|| / ||dL/da_L||", threshold)

    def table(self) -> str:
        """A readable per-layer table (str): layer l's weights and the gradient at its input."""
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
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             which: str | Sequence[str] = ("activation", "weight"),
             label: str | None = None, **line_kwargs: Any) -> tuple[Any, Any]:
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
        """
        from .plots import grad_report  # the drawing lives in the lab (needs matplotlib)

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

    _NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
              "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
              "h0_grad_norm", "global_norm")

    @classmethod
    def _from_core(cls, d: dict[str, Any], h0_grad: np.ndarray) -> RNNGradReport:
        return cls(
            timestep_grad_norms=d["timestep_grad_norms"],
            **{k: float(d[k]) for k in cls._NORMS},
            h0_grad=h0_grad,
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
        )

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
        """A one-line reading: vanishing, exploding, non-finite or healthy."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "step",
                        "||dL/dh_1|| / ||dL/dh_T||", threshold)

    def table(self, rows: int = 12) -> str:
        """A summary of the decay along time: ``||dL/dh_t||`` at a few steps, the
        parameter gradient norms, the fitted per-step factor and the verdict (str)."""
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
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             label: str | None = None, **line_kwargs: Any) -> tuple[Any, Any]:
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
        from .plots import rnn_grad_report  # the drawing lives in the lab (needs matplotlib)

        return rnn_grad_report(self, ax, path, label, line_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-ready); ``h0_grad`` is left out (use the attribute)."""
        out: dict[str, Any] = {
            "timestep_grad_norms": [float(x) for x in np.asarray(self.timestep_grad_norms)],
        }
        out.update({k: float(getattr(self, k)) for k in self._NORMS})
        out.update(first_nonfinite=self.first_nonfinite,
                   forward_first_nonfinite=self.forward_first_nonfinite, loss=self.loss)
        return out

    def __repr__(self) -> str:
        return (f"RNNGradReport(T={self.steps}, global_norm={self.global_norm:.3e}, "
                f"ratio={self.ratio:.3e}, first_nonfinite={self.first_nonfinite})")


_GATED_NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
                "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
                "h0_grad_norm", "c0_grad_norm", "global_norm")
_GATED_ARRAYS = ("timestep_grad_norms", "cell_grad_norms", "gate_means", "gate_saturation",
                 "weight_ih_gate_grad_norms", "weight_hh_gate_grad_norms",
                 "bias_ih_gate_grad_norms", "bias_hh_gate_grad_norms")


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
    """

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

    @classmethod
    def _from_core(cls, d: dict[str, Any], cell: str, gates: tuple[str, ...],
                   h0_grad: np.ndarray, c0_grad: np.ndarray | None) -> GatedGradReport:
        return cls(
            cell=cell, gates=gates,
            **{k: np.asarray(d[k]) for k in _GATED_ARRAYS},
            **{k: float(d[k]) for k in _GATED_NORMS},
            h0_grad=h0_grad, c0_grad=c0_grad,
            first_nonfinite=d["first_nonfinite"],
            forward_first_nonfinite=d["forward_first_nonfinite"],
        )

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
        non-finite or healthy."""
        return _verdict(self.ratio, self.first_nonfinite, self.forward_first_nonfinite, "step",
                        "||dL/dh_1|| / ||dL/dh_T||", threshold)

    def gate(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(means, saturated fractions)`` of gate ``name`` (one of :attr:`gates`), (T,) each."""
        if name not in self.gates:
            raise ValueError(f"gate: expected one of {', '.join(self.gates)}, got {name!r}")
        k = self.gates.index(name)
        return self.gate_means[k], self.gate_saturation[k]

    def table(self, rows: int = 12) -> str:
        """A summary along time: ``||dL/dh_t||`` (and ``||dL/dc_t||``) at a few steps with
        each gate's mean value and saturated fraction, the per-gate weight-gradient norms,
        the fitted per-step factor and the verdict (str)."""
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
        return "\n".join(lines)

    def plot(self, ax: Any = None, path: str | os.PathLike[str] | None = None, *,
             label: str | None = None, cell_state: bool = True,
             **line_kwargs: Any) -> tuple[Any, Any]:
        """``||dL/dh_t||`` per timestep on a log scale and, for an LSTM with
        ``cell_state``, ``||dL/dc_t||`` dashed in the same colour (needs matplotlib).

        Draw several models' reports into one ``ax`` (``label`` each) to compare how far
        back their gradients reach; an :class:`RNNGradReport`'s plot overlays the same
        way. Conventions, returns and errors as :meth:`RNNGradReport.plot`.
        """
        from .plots import gated_grad_report  # the drawing lives in the lab

        return gated_grad_report(self, ax, path, label, cell_state, line_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-ready); ``h0_grad`` / ``c0_grad`` are left out."""
        out: dict[str, Any] = {"cell": self.cell, "gates": list(self.gates)}
        out.update({k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
                    for k in _GATED_ARRAYS})
        out.update({k: float(getattr(self, k)) for k in _GATED_NORMS})
        out.update(first_nonfinite=self.first_nonfinite,
                   forward_first_nonfinite=self.forward_first_nonfinite, loss=self.loss)
        return out

    def __repr__(self) -> str:
        return (f"GatedGradReport(cell={self.cell!r}, T={self.steps}, "
                f"global_norm={self.global_norm:.3e}, ratio={self.ratio:.3e}, "
                f"first_nonfinite={self.first_nonfinite})")
