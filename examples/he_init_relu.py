"""He, Zhang, Ren & Sun (2015), "Delving deep into rectifiers": in a ReLU network the
back-propagated gradient keeps its size over depth when ``W ~ N(0, sigma_w^2 / n)``
with ``sigma_w^2 = 2`` (``gc.init.kaiming_normal()`` / ``gc.init.normal(sigma_w=sqrt(2))``).

A ReLU passes half of the units' gradient (those with a positive pre-activation), so
each layer multiplies ``E ||dL/da_l||^2`` by ``n Var[W] / 2 = sigma_w^2 / 2`` on the way
down: 1 for He's init, 1/2 for ``sigma_w^2 = 1`` (and for Glorot's ``xavier_normal``,
which is ``sigma_w^2 = 1`` on square layers), 3/2 for ``sigma_w^2 = 3``. Over 50 layers
that is a factor ``2**-50 ~ 1e-15`` in the squared norm for ``sigma_w^2 = 1``.

Run: ``python examples/he_init_relu.py [out.png]`` (default ``he_init_relu.png``).
"""

from __future__ import annotations

import math
import sys

import numpy as np

import gradchain as gc

WIDTH, DEPTH, BATCH, CLASSES, SEED = 512, 50, 128, 10, 0
CASES = [  # (label, init, sigma_w^2 = n Var[W] on these square layers)
    ("sigma_w^2 = 1", gc.init.normal(sigma_w=1.0), 1.0),
    ("xavier_normal", gc.init.xavier_normal(), 1.0),
    ("sigma_w^2 = 2 (He)", gc.init.normal(sigma_w=math.sqrt(2.0)), 2.0),
    ("kaiming_normal", gc.init.kaiming_normal(), 2.0),
    ("sigma_w^2 = 3", gc.init.normal(sigma_w=math.sqrt(3.0)), 3.0),
]


def results() -> dict[str, gc.GradReport]:
    """One cross-entropy backward pass per case on the same random data."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=BATCH)
    reports = {}
    for label, init, _ in CASES:
        model = gc.MLP([WIDTH] + [WIDTH] * DEPTH + [CLASSES], activation="relu", init=init,
                       seed=SEED)
        _, reports[label] = model.loss_and_grad(x, labels, loss="cross_entropy")
    return reports


def fitted(rep: gc.GradReport) -> float:
    """Factor per layer of ||dL/da_l|| going down (least squares on log10, layers 0..L-1)."""
    a = rep.activation_grad_norms[:-1]  # the hidden layers' inputs
    back = np.arange(len(a))[::-1]
    return float(10 ** np.polyfit(back, np.log10(a), 1)[0])


def main(png: str) -> None:
    reports = results()
    print(f"He et al. 2015: ReLU MLP, {DEPTH} hidden layers of width {WIDTH}, batch {BATCH}, "
          f"softmax cross-entropy, float32, zero biases\n")
    print("||dL/da_l||, the gradient entering layer l (l = 0 is the input)")
    shorts = ["s2=1", "xavier", "s2=2 (He)", "kaiming", "s2=3"]
    print(f"{'layer':>6}" + "".join(f"{s:>12}" for s in shorts))
    for layer in range(DEPTH, -1, -5):
        print(f"{layer:>6}" + "".join(
            f"{reports[c[0]].activation_grad_norms[layer]:>12.3e}" for c in CASES))

    print("\nFitted factor per layer going down (least squares on log10 ||dL/da_l||, "
          "layers 0..L-1):")
    print(f"  {'':<20}{'||.||':>9}{'||.||^2':>10}{'theory ^2':>11}{'a_0/a_L':>11}")
    for label, _, s2 in CASES:
        f = fitted(reports[label])
        print(f"  {label:<20}{f:>9.4f}{f ** 2:>10.4f}{s2 / 2:>11.4f}"
              f"{reports[label].ratio:>11.2e}")

    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (label, _, s2), color in zip(CASES, ["C3", "C1", "C0", "C9", "C2"], strict=True):
        reports[label].plot(ax=ax, which="activation", label=label, color=color, marker=None,
                            linestyle="-" if s2 == 2.0 else "--")
    ax.set_title(f"He et al. 2015: ReLU, width {WIDTH}, depth {DEPTH}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"\nfigure written to {png}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "he_init_relu.png")
