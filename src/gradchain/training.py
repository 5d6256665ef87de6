"""A small training loop, :func:`train`, that records how the per-layer (MLP) or
per-timestep (RNN) gradient norms evolve while a model learns, in a :class:`History`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import losses as _losses
from . import models as _models
from ._validate import check_bool, positive_int, real
from .clip import clip_grad_norm
from .models import DataSet, Model
from .optim import Optimizer

__all__ = ["History", "train"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


_QUIET = {"over": "ignore", "invalid": "ignore", "divide": "ignore", "under": "ignore"}


@dataclass
class History:
    """What :func:`train` recorded.

    ``S`` steps were taken (one per mini-batch), ``E`` epochs run (the last one
    partial if training diverged), ``R`` steps recorded (every ``record_every``-th,
    from step 0, plus the step that diverged).

    Attributes
    ----------
    loss : (S,) float64
        Training loss of every step's mini-batch (before that step's update).
    epoch : (S,) int64
        The epoch (0-based) of every step.
    epoch_loss : (E,) float64
        Per epoch, the mean of its steps' losses weighted by batch size.
    steps : (R,) int64
        Indices into ``loss`` of the recorded steps.
    grad_norms : (R, n) float64
        MLP: ``activation_grad_norms`` (``||dL/da_l||``, ``l = 0..L``, input first);
        RNN: ``timestep_grad_norms`` (``||dL/dh_t||``, ``t = 1..T``).
    weight_grad_norms : (R, m) float64
        MLP: ``||dL/dW_l||`` per linear layer, output last; RNN: ``||dL/dW_ih||``,
        ``||dL/dW_hh||`` and, with a readout, ``||dL/dW_out||``.
    global_norm : (R,) float64
        The norm of all parameter gradients, before clipping.
    clipped : (S,) bool
        Whether clipping scaled that step's gradients (all False without ``clip``).
    accuracy, val_accuracy, val_loss : (E,) float64 or None
        End-of-epoch accuracy on the training data and loss / accuracy on ``val``,
        computed in eval mode with forward passes only; None where they do not
        apply (accuracies need ``loss="cross_entropy"``; val needs ``val``).
    diverged : bool
        The loss (or the gradient norm) became NaN/Inf: that step was recorded and
        training stopped *before* applying it, so the model keeps its last finite
        parameters.
    diverged_step : int or None
    grad_norm_labels, weight_grad_norm_labels : list of str
        Column names of ``grad_norms`` (``"a0"``.. or ``"h1"``..) and
        ``weight_grad_norms`` (parameter names).
    kind : "mlp" or "rnn"
    health : dict of str -> (R, n) float64
        The report's health statistics at the recorded steps, by report field:
        ``dead_unit_fractions``, ``saturated_unit_fractions``, ``mean_abs_activations``
        (one column per hidden layer / step), ``zero_grad_fractions``,
        ``subnormal_grad_fractions`` (one per ``grad_norms`` column).
    noise_scale : (R,) float64
        The gradient noise scale ``B_simple`` of each recorded step's mini-batch (from
        its per-example gradient norms); NaN where the model has none (an RNN, batch norm
        in training mode).
    """

    loss: np.ndarray
    epoch: np.ndarray
    epoch_loss: np.ndarray
    steps: np.ndarray
    grad_norms: np.ndarray
    weight_grad_norms: np.ndarray
    global_norm: np.ndarray
    clipped: np.ndarray
    accuracy: np.ndarray | None = None
    val_accuracy: np.ndarray | None = None
    val_loss: np.ndarray | None = None
    diverged: bool = False
    diverged_step: int | None = None
    grad_norm_labels: list[str] = field(default_factory=list)
    weight_grad_norm_labels: list[str] = field(default_factory=list)
    kind: str = "mlp"
    health: dict[str, np.ndarray] = field(default_factory=dict)
    noise_scale: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def num_steps(self) -> int:
        return len(self.loss)

    @property
    def num_epochs(self) -> int:
        return len(self.epoch_loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (lists, floats, ints, bools, None): JSON-ready
        (non-finite losses stay float NaN/Inf)."""
        def lst(a: np.ndarray | None) -> Any:
            return None if a is None else np.asarray(a).tolist()

        return {
            "loss": lst(self.loss), "epoch": lst(self.epoch), "epoch_loss": lst(self.epoch_loss),
            "steps": lst(self.steps), "grad_norms": lst(self.grad_norms),
            "weight_grad_norms": lst(self.weight_grad_norms),
            "global_norm": lst(self.global_norm), "clipped": lst(self.clipped),
            "accuracy": lst(self.accuracy), "val_accuracy": lst(self.val_accuracy),
            "val_loss": lst(self.val_loss), "diverged": bool(self.diverged),
            "diverged_step": self.diverged_step,
            "grad_norm_labels": list(self.grad_norm_labels),
            "weight_grad_norm_labels": list(self.weight_grad_norm_labels), "kind": self.kind,
            # NaN (not defined) as None: equal runs give equal dicts
            "health": {k: _none_for_nan(v) for k, v in self.health.items()},
            "noise_scale": _none_for_nan(self.noise_scale),
        }

    def to_dataframe(self) -> Any:
        """One row per step (index ``step``): ``epoch``, ``loss``, ``clipped``,
        ``global_norm`` and one column per ``grad_norm_labels`` entry (NaN on the
        steps that were not recorded). Needs pandas (the optional extra ``pandas``)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise ImportError('History.to_dataframe needs pandas: pip install '
                              '"gradchain[pandas]"') from e
        S = self.num_steps
        cols: dict[str, Any] = {"epoch": self.epoch, "loss": self.loss, "clipped": self.clipped}
        gn = np.full(S, np.nan)
        gn[self.steps] = self.global_norm
        cols["global_norm"] = gn
        for j, label in enumerate(self.grad_norm_labels):
            c = np.full(S, np.nan)
            c[self.steps] = self.grad_norms[:, j]
            cols[label] = c
        return pd.DataFrame(cols, index=pd.RangeIndex(S, name="step"))

    def plot(self, path: str | os.PathLike[str] | None = None, fig: Any = None) -> Any:
        """A heat map of ``log10`` gradient norms (layer or timestep x recorded step,
        with a colour bar) beside the loss curve (log y when every loss is positive).

        Parameters
        ----------
        path : str or path-like, optional
            Save the figure as a PNG there.
        fig : matplotlib Figure, optional
            Draw into it (cleared first); else a new 11 x 4 inch figure.

        Returns
        -------
        (fig, (ax_heat, ax_loss))
        """
        from ._plotting import check_path, pyplot, save

        check_path(path)  # before anything is drawn
        plt = pyplot()
        if fig is None:
            fig = plt.figure(figsize=(11, 4))
        else:
            fig.clf()
        ax_h, ax_l = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1.0]})
        axis = _models.get(self.kind).report_axis
        what = axis.title
        if len(self.steps):
            g = np.asarray(self.grad_norms, dtype=np.float64).T          # (n, R)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.log10(np.where(np.isfinite(g) & (g > 0), g, np.nan))
            masked = np.ma.masked_invalid(z)
            first = axis.first
            x_edges = _edges(np.asarray(self.steps, dtype=np.float64))
            y_edges = np.arange(g.shape[0] + 1) - 0.5 + first
            mesh = ax_h.pcolormesh(x_edges, y_edges, masked, cmap="viridis", shading="flat")
            cb = fig.colorbar(mesh, ax=ax_h)
            cb.set_label("log10 gradient norm")
        ax_h.set_xlabel("step")
        ax_h.set_ylabel(what)
        ax_h.set_title("gradient norms while training")
        steps = np.arange(self.num_steps)
        loss = np.asarray(self.loss, dtype=np.float64)
        ok = np.isfinite(loss)
        ax_l.plot(steps[ok], loss[ok], lw=1.0, label="train (per step)")
        if self.val_loss is not None and len(self.val_loss):
            ends = [int(np.flatnonzero(self.epoch == e)[-1]) for e in range(self.num_epochs)
                    if np.any(self.epoch == e)]
            ax_l.plot(ends, np.asarray(self.val_loss)[:len(ends)], "o-", label="val (epoch end)")
            ax_l.legend(loc="best", fontsize="small")
        if ok.any() and np.all(loss[ok] > 0):
            ax_l.set_yscale("log")
        if self.diverged and self.diverged_step is not None:
            ax_l.axvline(self.diverged_step, color="red", ls="--", lw=1.0)
            ax_l.set_title("loss (diverged)")
        else:
            ax_l.set_title("loss")
        ax_l.set_xlabel("step")
        fig.tight_layout()
        save(fig, path)
        return fig, (ax_h, ax_l)

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.4g}" if self.num_steps else "n/a"
        return (f"History(kind={self.kind!r}, steps={self.num_steps}, epochs={self.num_epochs}, "
                f"recorded={len(self.steps)}, last loss={last}, diverged={self.diverged})")


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around the centres x (increasing)."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


# ----------------------------------------------------------------------------- checks
_Data = DataSet  # the name of the checked data set before the model protocol


def _check_data(data: Any, name: str, model: Model, loss: str, on: str) -> DataSet:
    if isinstance(data, (str, bytes, np.ndarray)) or not isinstance(data, Sequence):
        raise TypeError(f"{name}: expected a pair (x, target), got {type(data).__name__}")
    if len(data) != 2:
        raise ValueError(f"{name}: expected a pair (x, target), got {len(data)} items")
    return model.check_data(data[0], data[1], loss=loss, on=on, name=name)


# ----------------------------------------------------------------------------- evaluation
def _evaluate(model: Model, d: DataSet, loss: str, on: str, chunk: int
              ) -> tuple[float, float | None]:
    """(loss, accuracy or None) over the whole of d, forward only, in chunks."""
    total, correct, count = 0.0, 0, 0
    for s in range(0, d.n, chunk):
        idx = np.arange(s, min(s + chunk, d.n))
        xb, tb = d.batch(idx)
        y = model.loss_outputs(xb, on)
        w = len(idx)
        total += _losses.value(y, tb, loss) * w
        if loss == "cross_entropy":
            with np.errstate(**_QUIET):
                correct += int(np.sum(np.argmax(y, axis=-1) == tb))
            count += tb.size
    value = total / d.n
    return value, (correct / count if loss == "cross_entropy" else None)


# ----------------------------------------------------------------------------- train
def train(
    model: Model,
    data: tuple[Any, Any],
    optimizer: Optimizer,
    epochs: int = 1,
    batch_size: int = 64,
    loss: str = "mse",
    clip: float | None = None,
    record_every: int = 1,
    *,
    val: tuple[Any, Any] | None = None,
    shuffle: bool = True,
    seed: int | None = 0,
    on: str = "last",
    progress: bool = True,
) -> History:
    """Train ``model`` with mini-batch ``optimizer`` steps, recording the gradient norms.

    Every step: ``model.loss_and_grad`` on one mini-batch, then (with ``clip``)
    ``gc.clip_grad_norm(model, clip)``, then ``optimizer.step()``. Every
    ``record_every``-th step (from step 0) the report's per-layer (MLP) or
    per-timestep (RNN) gradient norms are recorded, with its health statistics and,
    where the model has per-example gradients (``model.supports_per_example()``), the
    gradient noise scale of the mini-batch (that step's backward computes the
    per-example norms).

    Parameters
    ----------
    model : gc.MLP or gc.RNN
        Put in training mode while training and restored to its previous mode after.
    data : (x, target)
        MLP: ``x (N, in)``, target ``(N, out)`` (mse, model dtype) or ``(N,)`` integer
        classes (cross_entropy). RNN: ``x (T, N, I)`` (``(N, T, I)`` if
        ``batch_first``); target as ``model.loss_and_grad`` takes it for ``on``
        (``(N, K)`` / ``(N,)`` for ``on="last"``). Mini-batches are cut along N.
    optimizer : gc.optim.Optimizer
        Built on this model.
    epochs, batch_size : int >= 1
        The last mini-batch of an epoch holds the remainder (as ``DataLoader``'s
        ``drop_last=False``); a batch larger than N means full batches.
    loss : "mse" or "cross_entropy"
    clip : float >= 0 or None
        ``max_norm`` of ``gc.clip_grad_norm``; the recorded ``global_norm`` is the
        norm before clipping.
    record_every : int >= 1
    val : (x, target) or None
        Evaluated after every epoch in eval mode (forward only): ``val_loss`` and,
        for cross_entropy, ``val_accuracy``.
    shuffle : bool
        A new permutation every epoch, drawn from ``seed``.
    seed : int or None
        Same seed, model and optimizer state -> identical History.
    on : "last" or "all"
        RNN only: where the loss applies (see ``RNN.loss_and_grad``).
    progress : bool
        A tqdm progress bar (shown only on a terminal); False silences it.

    Returns
    -------
    History
        Training stops early, with ``History.diverged`` set, when a loss or gradient
        norm is NaN/Inf (no warning is issued: read the flag).

    Raises
    ------
    TypeError, ValueError
        Bad arguments; everything is checked before the model or the optimizer changes.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a {_models.describe_kinds('gc.')}, got "
                        f"{type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError("optimizer: expected a gc.optim optimizer (SGD, Adam, AdamW), got "
                        f"{type(optimizer).__name__}")
    if optimizer.model is not model:
        raise ValueError("optimizer: it was built on another model; pass "
                         "gc.optim.<Name>(model, ...) for this one")
    _losses.check_loss(loss)
    if not isinstance(on, str) or on not in ("last", "all"):
        raise ValueError(f"on: expected 'last' or 'all', got {on!r}")
    loss_kw = model.loss_options(on)
    E = positive_int(epochs, "epochs")
    bs = positive_int(batch_size, "batch_size")
    rec = positive_int(record_every, "record_every")
    max_norm = None if clip is None else real(clip, "clip", minimum=0.0, allow_inf=True)
    shuf = check_bool(shuffle, "shuffle")
    bar_on = check_bool(progress, "progress")
    seed_ = None if seed is None else positive_int(seed, "seed", minimum=0)
    d = _check_data(data, "data", model, loss, on)
    dv = None if val is None else _check_data(val, "val", model, loss, on)
    bs = min(bs, d.n)
    model.check_batch_size(bs, d.n)

    from tqdm import tqdm

    modes = model.has_modes  # train()/eval() matter (batch norm)
    axis = model.report_axis
    labels = model.grad_norm_labels(d)
    wlabels = model.weight_norm_labels()
    ce = loss == "cross_entropy"
    losses: list[float] = []
    epoch_of: list[int] = []
    epoch_loss: list[float] = []
    rec_steps: list[int] = []
    gnorms: list[np.ndarray] = []
    wnorms: list[np.ndarray] = []
    globals_: list[float] = []
    health: dict[str, list[np.ndarray]] = {k: [] for k in _HEALTH}
    noise: list[float] = []
    clipped: list[bool] = []
    acc: list[float] = []
    vloss: list[float] = []
    vacc: list[float] = []
    diverged_at: int | None = None
    rng = np.random.default_rng(seed_)
    n_batches = math.ceil(d.n / bs)
    chunk = max(bs, 1024)
    was_training = model.training if modes else None

    def record(step: int, rep: Any) -> None:
        rec_steps.append(step)
        gnorms.append(np.array(axis.of(rep), dtype=np.float64))
        wnorms.append(model.report_weight_norms(rep))
        globals_.append(float(rep.global_norm))
        for k, v in health.items():
            v.append(np.array(getattr(rep, k, np.zeros(0)), dtype=np.float64))
        ns = getattr(rep, "noise_scale", None)
        noise.append(math.nan if ns is None else float(ns))

    bar = tqdm(total=E * n_batches, disable=None if bar_on else True, unit="step",
               desc="train", dynamic_ncols=True)
    step = 0
    try:
        for epoch in range(E):
            if modes:
                model.train()
            order = rng.permutation(d.n) if shuf else np.arange(d.n)
            ep_sum, ep_n = 0.0, 0
            for b in range(n_batches):
                idx = order[b * bs:(b + 1) * bs]
                xb, tb = d.batch(idx)
                # the recorded steps' backward also takes the per-example norms
                pe = ({"per_example": True} if step % rec == 0 and
                      model.supports_per_example() else {})
                with np.errstate(**_QUIET):
                    value, rep = model.loss_and_grad(xb, tb, loss=loss, **loss_kw, **pe)
                losses.append(float(value))
                epoch_of.append(epoch)
                ep_sum += float(value) * len(idx)
                ep_n += len(idx)
                bad = not (math.isfinite(value) and math.isfinite(rep.global_norm))
                if step % rec == 0 or bad:
                    record(step, rep)
                if bad:
                    diverged_at = step
                    clipped.append(False)
                    break
                if max_norm is not None:
                    total = clip_grad_norm(model, max_norm)
                    clipped.append(bool(total + 1e-6 > max_norm))
                else:
                    clipped.append(False)
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4g}", refresh=False)
            epoch_loss.append(ep_sum / ep_n)
            if diverged_at is not None:
                if ce:
                    acc.append(math.nan)
                if dv is not None:
                    vloss.append(math.nan)
                    if ce:
                        vacc.append(math.nan)
                break
            if ce or dv is not None:
                if modes:
                    model.eval()
                with np.errstate(**_QUIET):
                    if ce:
                        acc.append(float(_evaluate(model, d, loss, on, chunk)[1] or 0.0))
                    if dv is not None:
                        vl, va = _evaluate(model, dv, loss, on, chunk)
                        vloss.append(vl)
                        if ce:
                            vacc.append(float(va or 0.0))
    finally:
        bar.close()
        if modes and was_training is not None:
            model.train(was_training)

    n_w = len(wlabels)
    return History(
        loss=np.array(losses, dtype=np.float64),
        epoch=np.array(epoch_of, dtype=np.int64),
        epoch_loss=np.array(epoch_loss, dtype=np.float64),
        steps=np.array(rec_steps, dtype=np.int64),
        grad_norms=(np.stack(gnorms) if gnorms else np.zeros((0, len(labels)))),
        weight_grad_norms=(np.stack(wnorms) if wnorms else np.zeros((0, n_w))),
        global_norm=np.array(globals_, dtype=np.float64),
        clipped=np.array(clipped, dtype=bool),
        accuracy=np.array(acc, dtype=np.float64) if ce else None,
        val_accuracy=np.array(vacc, dtype=np.float64) if (ce and dv is not None) else None,
        val_loss=np.array(vloss, dtype=np.float64) if dv is not None else None,
        diverged=diverged_at is not None,
        diverged_step=diverged_at,
        grad_norm_labels=labels,
        weight_grad_norm_labels=wlabels,
        kind=model.kind,
        health={k: _stack(v) for k, v in health.items()},
        noise_scale=np.array(noise, dtype=np.float64),
    )


# The report's health fields History records (docs/CONVENTIONS.md, "Gradient report").
_HEALTH = ("dead_unit_fractions", "saturated_unit_fractions", "zero_grad_fractions",
           "subnormal_grad_fractions", "mean_abs_activations")


def _none_for_nan(a: np.ndarray) -> Any:
    """Nested lists of floats with NaN as None."""
    out = np.asarray(a, dtype=object)
    out[np.isnan(np.asarray(a, dtype=np.float64))] = None
    return out.tolist()


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """(R, n) from R recorded rows of one health field ((0, 0) when nothing was recorded;
    rows of unequal length, e.g. a report without health, padded with NaN)."""
    if not rows:
        return np.zeros((0, 0))
    n = max(len(r) for r in rows)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
