"""Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward
neural networks": the "standard" initialisation ``W ~ U(-1/sqrt(n), 1/sqrt(n))`` with
zero biases against their normalised initialisation ``W ~ U(+-sqrt(6/(n_in+n_out)))``
(``init="xavier_uniform"``).

With the standard init ``n Var[W] = 1/3``, so in the linear regime of tanh each layer
multiplies the back-propagated gradient's norm by about ``sqrt(1/3) = 0.577``: the
gradient reaching the lower layers shrinks geometrically with depth. The forward signal
shrinks by the same factor going up, so the *weight* gradients ``dL/dW_l = delta_l
a_{l-1}^T`` stay about the same across layers (as the paper's analysis says), only
all tiny. The normalised init has ``n Var[W] = 1`` (square layers) and keeps both
nearly constant.

Two contrasts: ``init="torch_default"`` (the same weights, but biases
``U(+-1/sqrt(n))``) stops the forward signal from shrinking below the bias level, so the
weight gradients then vanish towards the input too; and the sigmoid, whose slope is at
most 1/4 and whose outputs are not zero-mean, vanishes with either init (the paper's
reason to prefer tanh-like units).

Run: ``python examples/glorot_bengio.py [out.png]`` (default ``glorot_bengio.png``).
"""

from __future__ import annotations

import math
import sys

import numpy as np

import gradchain as gc

WIDTH, BATCH, CLASSES, SEED = 256, 128, 10, 0
DEPTHS = (5, 30)
STANDARD = gc.init.kaiming_uniform(gain=1 / math.sqrt(3))  # U(+-1/sqrt(n)), zero biases
# (label, short, activation, init, linear-regime factor per layer: sqrt(n Var W) x slope at 0)
CASES = [
    ("tanh, standard", "tanh std", "tanh", STANDARD, math.sqrt(1 / 3)),
    ("tanh, normalised", "tanh norm", "tanh", "xavier_uniform", 1.0),
    ("tanh, torch_default", "tanh torch", "tanh", "torch_default", math.sqrt(1 / 3)),
    ("sigmoid, standard", "sigm std", "sigmoid", STANDARD, math.sqrt(1 / 3) / 4),
    ("sigmoid, normalised", "sigm norm", "sigmoid", "xavier_uniform", 1 / 4),
]


def run(depth: int) -> dict[str, gc.GradReport]:
    """One cross-entropy backward pass per case on the same random data."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=BATCH)
    out = {}
    for label, _, act, init, _ in CASES:
        model = gc.MLP([WIDTH] + [WIDTH] * depth + [CLASSES], activation=act, init=init,
                       seed=SEED)
        _, out[label] = model.loss_and_grad(x, labels, loss="cross_entropy")
    return out


def fitted(rep: gc.GradReport) -> str:
    s = rep.log10_slope()
    return f"x{10 ** s:.3f}" if math.isfinite(s) else "n/a"


def weight_ratio(rep: gc.GradReport) -> float:
    """||dL/dW|| of the first hidden layer over that of the last hidden layer."""
    w = rep.weight_grad_norms
    return float(w[0] / w[-2])


def main(png: str) -> None:
    reports = {depth: run(depth) for depth in DEPTHS}
    deep = reports[max(DEPTHS)]
    L = max(DEPTHS)
    print("standard = U(+-1/sqrt(n)) with zero biases; normalised = xavier_uniform; "
          "torch_default = standard weights + U(+-1/sqrt(n)) biases")
    print(f"Glorot & Bengio 2010: MLP of {L} hidden layers of width {WIDTH}, batch {BATCH}, "
          f"softmax cross-entropy over {CLASSES} classes, float32\n")
    print("||dL/da_l||, the gradient entering layer l (l = 0 is the input)")
    print(f"{'layer':>6}" + "".join(f"{c[1]:>12}" for c in CASES))
    for layer in range(L, -1, -3):
        print(f"{layer:>6}" + "".join(f"{deep[c[0]].activation_grad_norms[layer]:>12.3e}"
                                       for c in CASES))
    print("\n||dL/dW_l||, the weight gradient of layer l")
    print(f"{'layer':>6}" + "".join(f"{c[1]:>12}" for c in CASES))
    for layer in range(L, -1, -3):
        print(f"{layer:>6}" + "".join(f"{deep[c[0]].weight_grad_norms[layer]:>12.3e}"
                                       for c in CASES))

    print("\nHow the ratio across layers changes with depth and init:")
    print(f"  {'':<20}" + "".join(f"{'a_0/a_L, L=' + str(d):>16}" for d in DEPTHS)
          + f"{'W_1/W_L, L=' + str(L):>17}{'fitted/layer':>14}{'linear theory':>15}")
    for label, _, _, _, theory in CASES:
        cells = "".join(f"{reports[d][label].ratio:>16.2e}" for d in DEPTHS)
        print(f"  {label:<20}{cells}{weight_ratio(deep[label]):>17.2e}"
              f"{fitted(deep[label]):>14}{'x' + format(theory, '.3f'):>15}")
    print("\n(a_0/a_L = ||dL/da_0|| / ||dL/da_L||; W_1/W_L = first / last hidden layer's "
          "||dL/dW||; fitted = least-squares factor per layer of ||dL/da_l|| going down; "
          "linear theory = sqrt(n Var[W]) x the activation's slope at 0.)")

    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (label, _, _, init, _), color in zip(CASES, ["C0", "C0", "C2", "C3", "C3"],
                                             strict=True):
        style = {"linestyle": "-" if init == "xavier_uniform" else "--", "marker": None,
                 "color": color}
        deep[label].plot(ax=axes[0], which="activation", label=label, **style)
        deep[label].plot(ax=axes[1], which="weight", label=label, **style)
    axes[0].set_title(f"back-propagated gradient ||dL/da_l||, L = {L}", fontsize=10)
    axes[1].set_title("weight gradient ||dL/dW_l||", fontsize=10)
    fig.suptitle("Glorot & Bengio 2010: standard (dashed) vs normalised (solid) init")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nfigure written to {png}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "glorot_bengio.png")
