"""Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz (2019), "A Mean Field Theory of
Batch Normalization": a deep batch-norm MLP *without* skip connections has exploding
gradients at initialisation. Each layer ``a_{l+1} = act(BN(W a_l + b))`` multiplies the
back-propagated gradient by a factor above 1, so ``||dL/da_l||`` grows geometrically
towards the input, whatever the weight scale (batch norm removes it). The paper's
large-batch limit for ReLU is ``pi / (pi - 1) ~ 1.467`` per layer for the squared norm;
the rate is larger for small batches and smaller for smoother activations (for the
identity it is close to 1 at a batch of 128).

A residual connection, ``a_{l+1} = a_l + act(BN(W a_l + b))``, tames it: the skip path
carries the gradient unchanged and, roughly, the branch's share shrinks as the residual
stream grows, so the growth is slow (polynomial-like) instead of geometric.

Run: ``python examples/batchnorm_no_skip.py [out.png]`` (default ``batchnorm_no_skip.png``).
"""

from __future__ import annotations

import math
import sys

import numpy as np

import gradchain as gc

WIDTH, DEPTH, CLASSES, SEED = 256, 50, 10, 0
CASES = [  # (label, short, activation, batch, residual)
    ("relu + BN, B=128", "relu", "relu", 128, False),
    ("relu + BN, B=16", "relu B16", "relu", 16, False),
    ("tanh + BN, B=128", "tanh", "tanh", 128, False),
    ("identity + BN, B=128", "linear", "identity", 128, False),
    ("relu + BN + residual", "relu+res", "relu", 128, True),
    ("tanh + BN + residual", "tanh+res", "tanh", 128, True),
]


def results() -> dict[str, gc.GradReport]:
    """One cross-entropy backward pass per case on (the first rows of) the same data."""
    rng = np.random.default_rng(SEED)
    x_all = rng.normal(size=(128, WIDTH)).astype(np.float32)
    labels_all = rng.integers(0, CLASSES, size=128)
    reports = {}
    for label, _, act, batch, residual in CASES:
        model = gc.MLP([WIDTH] + [WIDTH] * DEPTH + [CLASSES], activation=act,
                       init="kaiming_normal", norm="batch", residual=residual, seed=SEED)
        _, reports[label] = model.loss_and_grad(x_all[:batch], labels_all[:batch],
                                                loss="cross_entropy")
    return reports


def fitted(rep: gc.GradReport) -> float:
    """Growth per layer of ||dL/da_l|| towards the input (least squares on log10, layers
    0..L-1)."""
    hidden = rep.activation_grad_norms[:-1]
    back = np.arange(len(hidden))[::-1]
    return float(10 ** np.polyfit(back, np.log10(hidden), 1)[0])


def main(png: str) -> None:
    reports = results()
    print(f"Yang et al. 2019: batch-norm MLP (Linear -> BatchNorm -> act), {DEPTH} hidden "
          f"layers of width {WIDTH}, training-mode batch statistics, softmax cross-entropy, "
          "float32\n")
    print("||dL/da_l||, the gradient entering layer l (l = 0 is the input)")
    print(f"{'layer':>6}" + "".join(f"{c[1]:>11}" for c in CASES))
    for layer in range(DEPTH, -1, -5):
        print(f"{layer:>6}" + "".join(
            f"{reports[c[0]].activation_grad_norms[layer]:>11.3e}" for c in CASES))

    print("\nGrowth per layer towards the input (least squares on log10 ||dL/da_l||, "
          "layers 0..L-1):")
    print(f"  {'':<22}{'||.||':>9}{'||.||^2':>10}{'a_0/a_L':>11}{'a_0/a_(L-1)':>13}")
    for label, *_ in CASES:
        a = reports[label].activation_grad_norms
        f = fitted(reports[label])
        print(f"  {label:<22}{f:>9.4f}{f ** 2:>10.4f}"
              f"{reports[label].ratio:>11.2e}{a[0] / a[-2]:>13.2e}")
    print(f"\n(reference: pi/(pi-1) = {math.pi / (math.pi - 1):.4f}, the large-batch ReLU rate "
          "of the squared norm in Yang et al.)")

    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = ["C3", "C1", "C0", "C7", "C3", "C0"]
    for (label, _, _, _, residual), color in zip(CASES, colors, strict=True):
        reports[label].plot(ax=ax, which="activation", label=label, color=color, marker=None,
                            linestyle="-" if residual else "--")
    ax.set_title("Yang et al. 2019: batch norm without skips explodes (dashed); "
                 "residual (solid)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nfigure written to {png}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "batchnorm_no_skip.png")
