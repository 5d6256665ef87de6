"""``gradchain demo``: gradients vanishing in deep sigmoid/tanh MLPs, and the fixes.

Each configuration runs one forward/backward pass of a deep MLP on the same data
(an MSE loss against a random teacher's targets) and shows ``||dL/da_l||``, the
gradient entering each layer, from the top of the chain down to the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .models import MLP
from .report import GradReport


@dataclass
class DemoCase:
    label: str
    short: str  # column header
    kwargs: dict[str, Any]
    kind: str  # "problem" or "fix"


def mlp_cases() -> list[DemoCase]:
    """The classic problems and their fixes (names as in CONVENTIONS.md)."""
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
            dtype: Any = np.float32) -> list[tuple[DemoCase, GradReport]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, width)).astype(dtype)
    target = np.tanh(x @ rng.normal(size=(width, 10)).astype(dtype) / math.sqrt(width))
    out = []
    for case in mlp_cases():
        model = MLP([width] + [width] * depth + [10], dtype=dtype, seed=seed, **case.kwargs)
        _, rep = model.loss_and_grad(x, target.astype(dtype), loss="mse")
        out.append((case, rep))
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


def run_rnn(T: int = 200, batch: int = 32, hidden: int = 128, seed: int = 0,
            dtype: Any = np.float32) -> list[RnnDemoResult]:
    """A tanh RNN over T steps (loss on the last step): the default init's
    per-timestep decay next to orthogonal init and the IRNN, and gradient clipping
    taming an exploding configuration."""
    from . import init as gc_init
    from .clip import clip_grad_norm
    from .rnn import RNN
    from .tasks import adding_problem

    x, y = adding_problem(T, batch, seed=seed, dtype=dtype)
    cases = [
        ("tanh, torch default init", "tanh", "problem",
         dict(activation="tanh", init="torch_default")),
        ("tanh + orthogonal W_hh", "tanh+orth", "fix",
         dict(activation="tanh", init="orthogonal")),
        ("IRNN: relu + identity W_hh", "IRNN", "fix",
         dict(activation="relu", init="identity", input_init=gc_init.normal(0.1))),
        ("relu, W_hh = 1.6 x orthogonal", "relu x1.6", "exploding",
         dict(activation="relu", init=gc_init.orthogonal(gain=1.6),
              input_init=gc_init.normal(0.1))),
    ]
    out = []
    for label, short, kind, kw in cases:
        model = RNN(2, hidden, output_size=1, dtype=dtype, seed=seed, **kw)
        _, rep = model.loss_and_grad(x, y, loss="mse", on="last")
        res = RnnDemoResult(label, short, kind, rep)
        if kind == "exploding":
            clip_grad_norm(model, max_norm=1.0)
            res.clipped_norm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                  for g in model.grads())))
        out.append(res)
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
