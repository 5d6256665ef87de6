"""``gradchain demo``: gradients vanishing in deep sigmoid/tanh MLPs, and the fixes.

Each configuration runs one forward/backward pass of a deep MLP on the same data
(an MSE loss against a random teacher's targets) and shows ``||dL/da_l||``, the
gradient entering each layer, from the top of the chain down to the input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._plotting import check_path
from .models import MLP
from .report import GradReport

Progress = Callable[[str], None]


@dataclass
class DemoCase:
    label: str
    short: str  # column header
    kwargs: dict[str, Any]
    kind: str  # "problem" or "fix"


def mlp_cases() -> list[DemoCase]:
    """The classic problems and their fixes (names as in docs/CONVENTIONS.md)."""
    return [
        DemoCase("sigmoid, standard init", "sigmoid", {"activation": "sigmoid",
                                                        "init": "torch_default"}, "problem"),
        DemoCase("tanh, standard init", "tanh", {"activation": "tanh", "init": "torch_default"},
                 "problem"),
        DemoCase("relu + He init", "relu+He", {"activation": "relu", "init": "kaiming_normal"},
                 "fix"),
        DemoCase("tanh + Glorot init", "tanh+Glorot", {"activation": "tanh",
                                                       "init": "xavier_normal"}, "fix"),
        DemoCase("sigmoid + batch norm", "sigmoid+BN", {"activation": "sigmoid",
                                                        "init": "torch_default",
                                                        "norm": "batch"}, "fix"),
        DemoCase("tanh + residual", "tanh+resid", {"activation": "tanh", "init": "torch_default",
                                                   "residual": True}, "fix"),
    ]


def run_mlp(depth: int = 50, width: int = 256, batch: int = 128, seed: int = 0,
            dtype: Any = np.float32, progress: Progress | None = None,
            ) -> list[tuple[DemoCase, GradReport]]:
    """One MSE backward pass per :func:`mlp_cases` configuration on the same data;
    ``progress(label)`` is called after each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, width)).astype(dtype)
    target = np.tanh(x @ rng.normal(size=(width, 10)).astype(dtype) / math.sqrt(width))
    out = []
    for case in mlp_cases():
        model = MLP([width] + [width] * depth + [10], dtype=dtype, seed=seed, **case.kwargs)
        _, rep = model.loss_and_grad(x, target.astype(dtype), loss="mse")
        out.append((case, rep))
        if progress is not None:
            progress(case.label)
    return out


def mlp_table(results: list[tuple[DemoCase, GradReport]], rows: int = 11) -> str:
    """A layer x configuration table of ||dL/da_l|| (every few layers), then one line per
    configuration: the ratio first/last layer, the per-layer log10 slope and a verdict."""
    depth = results[0][1].depth
    layers = sorted(set(np.linspace(depth, 0, rows).round().astype(int).tolist()), reverse=True)
    width = 13
    head = f"{'layer':>6} " + "".join(f"{c.short:>{width}}" for c, _ in results)
    lines = ["||dL/da_l||: the gradient entering layer l (l = 0 is the input)", head]
    for layer in layers:
        cells = "".join(f"{r.activation_grad_norms[layer]:>{width}.2e}" for _, r in results)
        lines.append(f"{layer:>6} {cells}")
    lines.append("")
    lines.append(f"  {'':<24} {'first/last':>10} {'per layer':>10}")
    for case, rep in results:
        slope = rep.log10_slope()
        per_layer = f"x{10 ** slope:.3f}" if math.isfinite(slope) else "n/a"
        verdict = rep.verdict().split(":")[0]
        if rep.activation_grad_norms[0] == 0:
            verdict += " (underflowed to 0 in float32)"
        lines.append(f"  {case.label:<24} {rep.ratio:10.2e} {per_layer:>10}   {verdict}")
    return "\n".join(lines)


@dataclass
class RnnDemoResult:
    label: str
    short: str
    kind: str
    report: Any  # RNNGradReport
    clipped_norm: float | None = None


def rnn_cases() -> list[DemoCase]:
    """The RNN configurations: the default init's decay along time, two fixes, and an
    exploding one (kind ``"exploding"``) that gradient clipping tames."""
    from . import init as gc_init

    return [
        DemoCase("tanh, torch default init", "tanh",
                 dict(activation="tanh", init="torch_default"), "problem"),
        DemoCase("tanh + orthogonal W_hh", "tanh+orth",
                 dict(activation="tanh", init="orthogonal"), "fix"),
        DemoCase("IRNN: relu + identity W_hh", "IRNN",
                 dict(activation="relu", init="identity", input_init=gc_init.normal(0.1)),
                 "fix"),
        DemoCase("relu, W_hh = 1.6 x orthogonal", "relu x1.6",
                 dict(activation="relu", init=gc_init.orthogonal(gain=1.6),
                      input_init=gc_init.normal(0.1)), "exploding"),
    ]


def run_rnn(T: int = 200, batch: int = 32, hidden: int = 128, seed: int = 0,
            dtype: Any = np.float32, progress: Progress | None = None,
            ) -> list[RnnDemoResult]:
    """A tanh RNN over T steps of the adding problem (loss on the last step): the
    default init's per-timestep decay next to orthogonal init and the IRNN, and
    gradient clipping taming an exploding configuration (:func:`rnn_cases`);
    ``progress(label)`` is called after each."""
    from .clip import clip_grad_norm
    from .data import adding
    from .models import RNN

    x, y = adding(T, batch, seed=seed, dtype=dtype)
    out = []
    for case in rnn_cases():
        label, short, kind, kw = case.label, case.short, case.kind, case.kwargs
        model = RNN(2, hidden, output_size=1, dtype=dtype, seed=seed, **kw)
        _, rep = model.loss_and_grad(x, y, loss="mse", on="last")
        res = RnnDemoResult(label, short, kind, rep)
        if kind == "exploding":
            clip_grad_norm(model, max_norm=1.0)
            res.clipped_norm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                  for g in model.grads())))
        out.append(res)
        if progress is not None:
            progress(label)
    return out


def rnn_table(results: list[RnnDemoResult], rows: int = 9) -> str:
    T = results[0].report.steps
    steps = sorted(set(np.linspace(T, 1, rows).round().astype(int).tolist()), reverse=True)
    width = 13
    lines = ["||dL/dh_t||: the gradient reaching step t from the loss at step T",
             f"{'step':>6} " + "".join(f"{r.short:>{width}}" for r in results)]
    for t in steps:
        lines.append(f"{t:>6} " + "".join(
            f"{r.report.timestep_grad_norms[t - 1]:>{width}.2e}" for r in results))
    lines.append("")
    lines.append(f"  {'':<30} {'h_1/h_T':>10} {'per step':>10}")
    for r in results:
        slope = r.report.log10_slope()
        per = f"x{10 ** slope:.4f}" if math.isfinite(slope) else "n/a"
        verdict = r.report.verdict().split(":")[0]
        if r.clipped_norm is not None:
            verdict += (f"; clip_grad_norm(max_norm=1): global norm "
                        f"{r.report.global_norm:.2e} -> {r.clipped_norm:.2f}")
        lines.append(f"  {r.label:<30} {r.report.ratio:10.2e} {per:>10}   {verdict}")
    return "\n".join(lines)


def line_style(kind: str, verdict: str) -> str:
    """The figure's line style of one case: solid where the measured verdict is healthy,
    dash-dot for a fix that is not healthy here, dashed for a problem."""
    if verdict.startswith("healthy"):
        return "-"
    return "-." if kind == "fix" else "--"


def _style_key(styles: list[str]) -> str:
    words = {"-": "solid: healthy", "--": "dashed: vanishing or exploding",
             "-.": "dash-dot: a fix that falls short here"}
    return ", ".join(words[k] for k in ("--", "-.", "-") if k in styles)


def figure(mlp: list[tuple[DemoCase, GradReport]], rnn: list[RnnDemoResult],
           path: str | os.PathLike[str] | None = None, axes: Any = None,
           title: str | None = None) -> tuple[Any, Any]:
    """The demo's figure: two log-scale panels, the MLP cases' ``||dL/da_l||`` per layer
    ``l = 0..L`` and the RNN cases' ``||dL/dh_t||`` per step ``t = 1..T``; each legend
    entry ends with its measured verdict and the line style agrees with it
    (:func:`line_style`: healthy solid, vanishing / exploding dashed, a fix that falls
    short dash-dot), one legend per panel (needs matplotlib).

    Parameters
    ----------
    mlp : list of (DemoCase, GradReport)
        What :func:`run_mlp` returns.
    rnn : list of RnnDemoResult
        What :func:`run_rnn` returns.
    path : str or os.PathLike or None
        Also save the figure as a PNG there (the folder must exist).
    axes : sequence of two matplotlib Axes, or None
        Draw into them; None makes a new 13 x 4.8 inch figure.
    title : str or None
        The figure's title (a default one naming the sizes when None).

    Returns
    -------
    (fig, axes) : the Figure and the two Axes.
    """
    from ._plotting import pyplot, save

    p = check_path(path)
    if not isinstance(mlp, list) or not all(
            isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], GradReport) for m in mlp):
        raise TypeError("mlp: expected the list of (DemoCase, GradReport) run_mlp returns")
    if not isinstance(rnn, list) or not all(isinstance(r, RnnDemoResult) for r in rnn):
        raise TypeError("rnn: expected the list of RnnDemoResult run_rnn returns")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title: expected a str or None, got {type(title).__name__}")
    plt = pyplot()  # ImportError with the install command when matplotlib is missing
    from matplotlib.axes import Axes

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(13.0, 4.8))
    else:
        if (not hasattr(axes, "__len__") or len(axes) != 2
                or not all(isinstance(a, Axes) for a in axes)):
            raise TypeError("axes: expected two matplotlib Axes or None")
        fig = axes[0].get_figure()
    ax_mlp, ax_rnn = axes[0], axes[1]
    # the line style follows the measured verdict that the legend shows, so that a fix
    # that falls short at this depth / length (tanh + orthogonal W_hh over 200 steps
    # still vanishes, only more slowly) is not drawn as working
    styles = []
    for case, rep in mlp:
        styles.append(line_style(case.kind, rep.verdict()))
        rep.plot(ax=ax_mlp, which="activation", label=case.label, marker=None,
                 linestyle=styles[-1], linewidth=1.8)
    mlp_styles, styles = styles, []
    for r in rnn:
        styles.append(line_style(r.kind, r.report.verdict()))
        r.report.plot(ax=ax_rnn, label=r.label, marker=None, linestyle=styles[-1],
                      linewidth=1.8)
    if mlp:
        L = mlp[0][1].depth
        ax_mlp.set_title(f"deep MLP, {L} hidden layers: gradient entering layer l\n"
                         f"({_style_key(mlp_styles)})", fontsize=10)
    if rnn:
        T = rnn[0].report.steps
        ax_rnn.set_title(f"vanilla RNN, T = {T} steps: gradient reaching step t\n"
                         f"({_style_key(styles)})", fontsize=10)
    fig.suptitle(title if title is not None else
                 "gradchain demo: vanishing and exploding gradients, and their fixes",
                 fontsize=12)
    fig.tight_layout()
    save(fig, p)
    return fig, axes


# --------------------------------------------------------------------- gradchain demo --cells
@dataclass
class CellResult:
    """One recurrent cell on the adding problem at one length T: the report of one
    backward pass at initialisation, the training run's curves and the report after it."""

    label: str
    short: str
    steps: int  # T
    report: Any  # RNNGradReport or GatedGradReport at initialisation
    trained: Any  # the same report after training (on the same batch)
    lr: float  # the Adam learning rate it was trained with
    loss: np.ndarray  # (S,) float64: the training loss of every step (before its update)
    val_curve: list[tuple[int, float]]  # (steps taken, validation MSE) every eval_every steps
    baseline: float  # the validation MSE of predicting 1

    @property
    def val_mse(self) -> float:
        """The validation MSE after training (NaN without any training step)."""
        return self.val_curve[-1][1] if self.val_curve else math.nan

    @property
    def reach(self) -> float:
        """``||dL/dh_1|| / ||dL/dh_T||`` at initialisation: how much of the gradient at the
        last step reaches the first."""
        return float(self.report.ratio)

    @property
    def reach_trained(self) -> float:
        """``||dL/dh_1|| / ||dL/dh_T||`` after training (the gates may have learnt to keep
        the path open)."""
        return float(self.trained.ratio)

    @property
    def learned(self) -> bool:
        """Whether training brought the validation MSE below a tenth of the baseline."""
        return self.val_mse < 0.1 * self.baseline

    def steps_to_learn(self) -> int | None:
        """The first evaluation (in training steps) where the validation MSE was below a
        tenth of the baseline; None if it never was."""
        return next((s for s, v in self.val_curve if v < 0.1 * self.baseline), None)


def cell_cases() -> list[tuple[str, str, str, dict[str, Any], float]]:
    """The cells of the comparison: (label, short, model kind, constructor arguments,
    Adam learning rate)."""
    from . import init as gc_init

    return [
        ("tanh RNN (torch init)", "tanh RNN", "rnn", {"activation": "tanh"}, CELL_LR["rnn"]),
        ("IRNN (relu, identity W_hh)", "IRNN", "rnn",
         {"activation": "relu", "init": "identity", "input_init": gc_init.normal(0.1)},
         CELL_LR["irnn"]),
        ("LSTM (forget bias 1)", "LSTM", "lstm", {"forget_bias": 1.0}, CELL_LR["lstm"]),
        ("GRU (torch init)", "GRU", "gru", {}, CELL_LR["gru"]),
    ]


# The Adam learning rate of each cell in the comparison (gradient-norm clipping at 1)
# (Le et al. 2015 train the IRNN with small steps; the LSTM sits on the baseline's plateau
# for about 3300 steps at 3e-3 at T = 200 and 5500 at 1e-3, so it gets 3e-3, as the GRU)
CELL_LR: dict[str, float] = {"rnn": 1e-3, "irnn": 1e-3, "lstm": 3e-3, "gru": 3e-3}
# batch, hidden size, training steps, steps between validations, validation sequences
CELL_BATCH, CELL_HIDDEN, CELL_TRAIN_STEPS, CELL_EVAL_EVERY, CELL_VAL = 32, 64, 5000, 100, 500


def cell_lrs() -> str:
    """Each cell's learning rate, as the demo's header names them."""
    return ", ".join(f"{short} {lr:g}" for _, short, _, _, lr in cell_cases())


def cell_data(T: int, chunk: int, batch: int = CELL_BATCH, eval_every: int = CELL_EVAL_EVERY,
              seed: int = 0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The training sequences of chunk ``chunk`` (steps ``chunk * eval_every`` on) of
    :func:`run_cells`: ``eval_every * batch`` fresh adding-problem sequences of length T,
    drawn with seed ``seed + 2 + chunk`` (the validation set has ``seed + 1``). Each chunk
    is drawn whole whatever the number of steps taken from it, so the first steps of a
    run do not depend on its length."""
    from .data import adding

    return adding(T, eval_every * batch, seed=seed + 2 + chunk, dtype=dtype)


def train_cell(case: tuple[str, str, str, dict[str, Any], float], T: int,
               train_steps: int = CELL_TRAIN_STEPS, batch: int = CELL_BATCH,
               hidden: int = CELL_HIDDEN, lr: float | None = None,
               eval_every: int = CELL_EVAL_EVERY, seed: int = 0, dtype: Any = np.float32,
               val: tuple[np.ndarray, np.ndarray] | None = None) -> CellResult:
    """One case of :func:`cell_cases` at length T (see :func:`run_cells`). ``val``: the
    validation set (``x (T, n, 2)``, ``y (n, 1)``), drawn if None."""
    from . import models
    from .data import adding
    from .optim import Adam
    from .training import train

    label, short, kind, kw, case_lr = case
    lr = case_lr if lr is None else lr
    xv, yv = adding(T, CELL_VAL, seed=seed + 1, dtype=dtype) if val is None else val
    base = float(np.mean((yv.astype(np.float64) - 1.0) ** 2))
    model = models.get(kind)(2, hidden, output_size=1, dtype=dtype, seed=seed, **kw)
    x0, y0 = cell_data(T, 0, batch, eval_every, seed, dtype)
    _, rep = model.loss_and_grad(x0[:, :batch], y0[:batch], loss="mse", on="last")
    opt = Adam(model, lr=lr)
    losses: list[np.ndarray] = []
    curve: list[tuple[int, float]] = []
    done, chunk = 0, 0
    while done < train_steps:
        n = min(eval_every, train_steps - done)
        x, y = (x0, y0) if chunk == 0 else cell_data(T, chunk, batch, eval_every, seed, dtype)
        hist = train(model, (x[:, :n * batch], y[:n * batch]), opt, epochs=1,
                     batch_size=batch, clip=1.0, val=(xv, yv), shuffle=False,
                     record_every=eval_every, progress=False)
        losses.append(hist.loss)
        done += n
        chunk += 1
        assert hist.val_loss is not None
        curve.append((done, float(hist.val_loss[-1])))
    _, after = model.loss_and_grad(x0[:, :batch], y0[:batch], loss="mse", on="last")
    loss = np.concatenate(losses) if losses else np.zeros(0)
    return CellResult(label, short, T, rep, after, lr, loss, curve, base)


def run_cells(steps: tuple[int, ...] = (200, 1000), batch: int = CELL_BATCH,
              hidden: int = CELL_HIDDEN, train_steps: int = CELL_TRAIN_STEPS,
              lr: float | None = None, seed: int = 0, dtype: Any = np.float32,
              eval_every: int = CELL_EVAL_EVERY,
              progress: Progress | None = None) -> list[CellResult]:
    """The adding problem (``gc.data.adding``) at each length T of ``steps`` through a tanh
    RNN, the IRNN, an LSTM and a GRU (:func:`cell_cases`; hidden ``hidden``, a linear
    readout, loss on the last step): one backward pass at initialisation (how far back
    the gradient reaches), then ``train_steps`` Adam steps (each cell's learning rate
    of :data:`CELL_LR`, or ``lr`` for all; gradient-norm clipping at 1; batches of
    ``batch`` fresh sequences, :func:`cell_data`), the validation MSE (500 sequences)
    every ``eval_every`` steps against the baseline of predicting 1 (0.167 in
    expectation), and the same backward pass again. Deterministic: the same numbers
    for the same arguments, ISA and OpenBLAS kernel. ``progress(label)`` is called after
    each run."""
    from .data import adding

    out = []
    for T in steps:
        val = adding(T, CELL_VAL, seed=seed + 1, dtype=dtype)
        for case in cell_cases():
            out.append(train_cell(case, T, train_steps, batch, hidden, lr, eval_every, seed,
                                  dtype, val))
            if progress is not None:
                progress(f"{case[1]}, T={T}")
    return out


def cells_table(results: list[CellResult]) -> str:
    """One row per cell, per length T: the gradient reaching step 1
    (``||dL/dh_1|| / ||dL/dh_T||``) at initialisation and after training, and the
    validation MSE after training against the baseline."""
    lengths = sorted({r.steps for r in results})
    cells = list(dict.fromkeys(r.label for r in results))
    by = {(r.label, r.steps): r for r in results}
    base = {T: next(r.baseline for r in results if r.steps == T) for T in lengths}
    lines = ["adding problem: the gradient reaching step 1, ||dL/dh_1|| / ||dL/dh_T||, at "
             "initialisation and after training, and the validation MSE after training",
             "(predicting 1 scores " + ", ".join(f"{base[T]:.3f} at T={T}" for T in lengths)
             + ")"]
    head = f"{'cell':<28}" + "".join(
        f"{'T=' + str(T) + ' reach':>14}{'trained':>10}{'val MSE':>10}" for T in lengths)
    lines += [head, "-" * len(head)]
    for c in cells:
        row = f"{c:<28}"
        for T in lengths:
            r = by[(c, T)]
            mark = " *" if r.learned else "  "
            row += f"{r.reach:>14.2e}{r.reach_trained:>10.1e}{r.val_mse:>8.3f}{mark}"
        lines.append(row)
    lines.append("* learned: validation MSE below a tenth of the baseline")
    return "\n".join(lines)


def cells_figure(results: list[CellResult], path: str | os.PathLike[str] | None = None
                 ) -> tuple[Any, Any]:
    """``||dL/dh_t||`` at initialisation of every cell, one panel per length T, on one log
    axis each (the LSTM's ``||dL/dc_t||`` dashed). Returns ``(fig, axes)``."""
    from ._plotting import pyplot, save

    p = check_path(path)
    plt = pyplot()
    lengths = sorted({r.steps for r in results})
    fig, axes = plt.subplots(1, len(lengths), figsize=(6.5 * len(lengths), 4.6), squeeze=False)
    for ax, T in zip(axes[0], lengths, strict=True):
        for r in results:
            if r.steps == T:
                r.report.plot(ax=ax, label=r.label, marker=None, linewidth=1.6)
        ax.set_title(f"adding problem, T = {T}: gradient reaching step t at init",
                     fontsize=10)
    fig.tight_layout()
    save(fig, p)
    return fig, axes
