"""Drawing the gradient reports (the lab's plots; needs matplotlib, extra ``plot``).

:meth:`gradchain.GradReport.plot` and :meth:`gradchain.RNNGradReport.plot` are thin
delegates to :func:`grad_report` and :func:`rnn_grad_report` here, imported when
something is drawn: the numeric face (:mod:`gradchain.report`) imports no matplotlib
code. The matplotlib plumbing (headless backend, path checks, PNG saving) is
:mod:`gradchain._plotting`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._plotting import axes, check_path

if TYPE_CHECKING:
    from .report import GatedGradReport, GradReport, RNNGradReport

__all__ = ["gated_grad_report", "grad_report", "health_panel", "rnn_grad_report",
           "with_health"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


# Each plotted quantity: (attribute, legend text, marker, line style).
_QUANTITIES = {
    "activation": ("activation_grad_norms", "||dL/da_l||", "o", "-"),
    "weight": ("weight_grad_norms", "||dL/dW_l||", "s", "--"),
    "bias": ("bias_grad_norms", "||dL/db_l||", "^", ":"),
}


def _check_label(label: Any) -> str | None:
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label: expected a str or None, got {type(label).__name__}")
    return label


def _check_which(which: Any) -> tuple[str, ...]:
    if isinstance(which, str):
        which = (which,)
    if not isinstance(which, Sequence) or not all(isinstance(w, str) for w in which):
        raise TypeError(f"which: expected a str or a sequence of str, got {which!r}")
    bad = [w for w in which if w not in _QUANTITIES]
    if bad or not which:
        raise ValueError(f"which: expected one or more of {tuple(_QUANTITIES)}, got {which!r}")
    return tuple(dict.fromkeys(which))  # unique, in order


def _log_series(ax: Any, x: np.ndarray, v: np.ndarray, **style: Any) -> Any:
    """Plot ``v`` against ``x`` on a log scale with gaps at zero / non-finite entries,
    which are marked at the bottom of the axes instead (0: a ``v`` in the line's colour,
    NaN/Inf: a red ``x``; one legend key each per axes). Returns the Line2D."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    ax.set_yscale("log")  # before the data: an all-gap series then keeps valid log limits
    # NaN makes matplotlib break the line: a gap, never a log of 0 (which would warn)
    (line,) = ax.plot(x, np.where(ok, v, np.nan), **style)
    bottom = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    zero = v == 0
    bad = ~np.isfinite(v)
    if zero.any():
        ax.plot(x[zero], np.full(int(zero.sum()), 0.02), linestyle="none", marker="v",
                color=line.get_color(), alpha=0.6, transform=bottom)
        _legend_key(ax, "v", "grey", _ZERO_KEY)
    if bad.any():
        ax.plot(x[bad], np.full(int(bad.sum()), 0.02), linestyle="none", marker="x",
                color="red", transform=bottom)
        _legend_key(ax, "x", "red", _BAD_KEY)
    return line


_ZERO_KEY = "norm = 0 (gap)"
_BAD_KEY = "NaN/Inf (gap)"


def _legend_key(ax: Any, marker: str, color: str, text: str) -> None:
    """One empty (data-free) line per axes that puts ``text`` in the legend."""
    if not any(ln.get_label() == text for ln in ax.lines):
        ax.plot([], [], linestyle="none", marker=marker, color=color, label=text)


def _finish(ax: Any, xlabel: str, ylabel: str, title: str | None, has_label: bool) -> None:
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if title is not None:
        ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if has_label or len(handles) > 1:
        # the gap keys last, whatever order the series were drawn in
        keys = [i for i, t in enumerate(labels) if t in (_ZERO_KEY, _BAD_KEY)]
        order = [i for i in range(len(labels)) if i not in keys] + keys
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)


def _integer_ticks(ax: Any, names: dict[int, str], last: int | None = None) -> None:
    """Integer x ticks; with ``last``, ticks 0 and ``last`` are always there (named by
    ``names``) and the automatic ones too close to ``last`` are dropped."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    auto = MaxNLocator(integer=True, nbins=10)
    if last is None:
        ax.xaxis.set_major_locator(auto)
    else:
        ticks = [int(t) for t in auto.tick_values(0, last) if 0 <= t <= last - last / 12]
        ax.xaxis.set_major_locator(FixedLocator(sorted({0, last, *ticks})))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _pos: names.get(int(round(v)), str(int(round(v))))
        if abs(v - round(v)) < 1e-9 else ""))


def _check_line_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """The keywords with matplotlib's aliases resolved (``lw`` -> ``linewidth``);
    TypeError for one that is not a Line2D property. Runs before anything is drawn."""
    from ._plotting import pyplot

    pyplot()  # ImportError with the install command when matplotlib is missing
    from matplotlib.cbook import normalize_kwargs
    from matplotlib.lines import Line2D

    for k in kw:
        if k in ("label", "transform", "data") or not callable(
                getattr(Line2D, f"set_{k}", None)):
            raise TypeError(f"line_kwargs: {k!r} is not a line property Axes.plot takes here")
    try:
        return dict(normalize_kwargs(kw, Line2D))
    except TypeError as e:  # the same property twice under two aliases
        raise TypeError(f"line_kwargs: {e}") from None


def _short_verdict(verdict: str) -> str:
    return verdict.split(":")[0]


def _short_verdict(verdict: str) -> str:
    return verdict.split(":")[0]


def grad_report(rep: GradReport, ax: Any, path: str | os.PathLike[str] | None,
                which: str | Sequence[str], label: str | None,
                line_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Draw ``rep`` (a :class:`~gradchain.GradReport`): what ``rep.plot(ax, path,
    which=which, label=label, **line_kwargs)`` does (see there for the figure and the
    errors). Returns ``(fig, ax)``."""
    qs = _check_which(which)
    label = _check_label(label)
    p = check_path(path)
    line_kwargs = _check_line_kwargs(line_kwargs)
    fig, ax = axes(ax)
    L = rep.depth
    x = np.arange(L + 1)
    verdict = rep.verdict()
    color = line_kwargs.pop("color", None)
    for q in qs:
        attr, text, marker, ls = _QUANTITIES[q]
        # the verdict reads ||dL/da_l||: appended to the legend only where it is drawn
        tag = f" ({_short_verdict(verdict)})" if q == "activation" else ""
        name = text if label is None else (
            f"{label}{tag}" if len(qs) == 1 else f"{label}: {text}{tag}")
        style = {"marker": marker, "markersize": 3, "linestyle": ls, "label": name,
                 **line_kwargs}
        if color is not None:
            style["color"] = color
        line = _log_series(ax, x, getattr(rep, attr), **style)
        color = line.get_color()  # one colour per report, one style per quantity
    if rep.first_nonfinite is not None:
        ax.axvline(rep.first_nonfinite, color="red", linestyle=":", lw=1)
    _integer_ticks(ax, {0: "input", L: "out"}, last=L)
    ylabel = _QUANTITIES[qs[0]][1] if len(qs) == 1 else "gradient norm"
    _finish(ax, "layer l", ylabel, verdict if label is None else None,
            label is not None or len(qs) > 1)
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, ax


def rnn_grad_report(rep: RNNGradReport, ax: Any, path: str | os.PathLike[str] | None,
                    label: str | None, line_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Draw ``rep`` (a :class:`~gradchain.RNNGradReport`): what ``rep.plot(ax, path,
    label=label, **line_kwargs)`` does (see there). Returns ``(fig, ax)``."""
    label = _check_label(label)
    p = check_path(path)
    line_kwargs = _check_line_kwargs(line_kwargs)
    fig, ax = axes(ax)
    T = rep.steps
    verdict = rep.verdict()
    style = {"marker": "o" if T <= 60 else None, "markersize": 3, "linestyle": "-",
             "label": "||dL/dh_t||" if label is None
             else f"{label} ({_short_verdict(verdict)})", **line_kwargs}
    _log_series(ax, np.arange(1, T + 1), rep.timestep_grad_norms, **style)
    if rep.first_nonfinite is not None:
        ax.axvline(rep.first_nonfinite, color="red", linestyle=":", lw=1)
    _integer_ticks(ax, {})
    _finish(ax, "timestep t", "||dL/dh_t||", verdict if label is None else None,
            label is not None)
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, ax


def health_panel(rep: GradReport | RNNGradReport | GatedGradReport, ax: Any,
                 path: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """Draw the health statistics of ``rep`` (``rep.plot_health(ax, path)``): per layer
    (MLP, x = l) or step (RNN, x = t) the dead and saturated unit fractions, the zero and
    subnormal fractions of the backpropagated gradient (left axis, 0..1) and the mean
    ``|activation|`` (right axis, dashed). ValueError when the report has no health
    statistics (computed with ``report=True`` only). Returns ``(fig, ax)``."""
    p = check_path(path)
    if not np.asarray(rep.zero_grad_fractions).size:
        raise ValueError("rep: this report has no health statistics (backward with "
                         "report=False, or the forensics switched off)")
    fig, ax = axes(ax)
    rnn = hasattr(rep, "timestep_grad_norms")
    n_g = len(rep.zero_grad_fractions)
    xg = np.arange(1, n_g + 1) if rnn else np.arange(n_g)       # dL/dh_t, t = 1..T / dL/da_l
    xu = np.arange(1, len(rep.dead_unit_fractions) + 1)         # units: t = 1..T / l = 1..L
    ax.plot(xu, rep.dead_unit_fractions, "-", marker="v", markersize=3, label="dead units")
    ax.plot(xu, rep.saturated_unit_fractions, "-", marker="^", markersize=3,
            label="saturated units")
    ax.plot(xg, rep.zero_grad_fractions, ":", marker="o", markersize=3,
            label="zeros in dL/dh_t" if rnn else "zeros in dL/da_l")
    ax.plot(xg, rep.subnormal_grad_fractions, ":", marker="s", markersize=3,
            label="subnormals")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("fraction")
    ax.set_xlabel("timestep t" if rnn else "layer l")
    right = ax.twinx()
    right.plot(xu, rep.mean_abs_activations, "--", color="grey", lw=1, label="mean |a|")
    right.set_ylabel("mean |h_t|" if rnn else "mean |a_l|")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, ax


def gated_grad_report(rep: GatedGradReport, ax: Any, path: str | os.PathLike[str] | None,
                      label: str | None, cell_state: bool, line_kwargs: dict[str, Any]
                      ) -> tuple[Any, Any]:
    """Draw ``rep`` (a :class:`~gradchain.GatedGradReport`): what ``rep.plot(ax, path,
    label=label, cell_state=cell_state, **line_kwargs)`` does. Returns ``(fig, ax)``."""
    label = _check_label(label)
    if not isinstance(cell_state, (bool, np.bool_)):
        raise TypeError(f"cell_state: expected a bool, got {type(cell_state).__name__}")
    p = check_path(path)
    line_kwargs = _check_line_kwargs(line_kwargs)
    fig, ax = axes(ax)
    T = rep.steps
    verdict = rep.verdict()
    x = np.arange(1, T + 1)
    name = (f"{rep.cell.upper()} ||dL/dh_t||" if label is None
            else f"{label} ({_short_verdict(verdict)})")
    style = {"marker": "o" if T <= 60 else None, "markersize": 3, "linestyle": "-",
             "label": name, **line_kwargs}
    line = _log_series(ax, x, rep.timestep_grad_norms, **style)
    drew_c = cell_state and len(rep.cell_grad_norms) == T and T > 0
    if drew_c:
        cstyle = {**style, "linestyle": "--", "color": line.get_color(),
                  "label": ("||dL/dc_t||" if label is None else f"{label}: ||dL/dc_t||")}
        _log_series(ax, x, rep.cell_grad_norms, **cstyle)
    if rep.first_nonfinite is not None:
        ax.axvline(rep.first_nonfinite, color="red", linestyle=":", lw=1)
    _integer_ticks(ax, {})
    _finish(ax, "timestep t", "gradient norm" if drew_c else "||dL/dh_t||",
            verdict if label is None else None, label is not None or drew_c)
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, ax


def with_health(rep: GradReport | RNNGradReport | GatedGradReport, ax: Any,
                path: str | os.PathLike[str] | None,
                draw: Callable[[Any], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``rep.plot(..., health=True)``: a figure of two panels, the norms (``draw(ax)``) on
    top and :func:`health_panel` below (``fig.axes[1]``). ``ax`` must be None (the figure
    is new). Returns ``(fig, top_ax)``."""
    if ax is not None:
        raise ValueError("ax: health=True draws a new figure of two panels; pass ax=None "
                         "(or call rep.plot_health(ax) on an axes of your own)")
    p = check_path(path)
    from ._plotting import pyplot

    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(7.0, 7.0), sharex=False)
    draw(top)
    health_panel(rep, bottom, None)
    if p is not None:
        from ._plotting import save

        save(fig, p)
    return fig, top
