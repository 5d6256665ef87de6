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
