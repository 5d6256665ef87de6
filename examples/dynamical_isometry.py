"""Dynamical isometry (Pennington, Schoenholz & Ganguli 2017): at criticality, a deep tanh
network with orthogonal weights keeps the singular values of its input-output Jacobian
near 1, one with Gaussian weights spreads them with depth, and relu is never isometric.

A tanh MLP of width 256 at the critical point chi_1 = 1 with a small bias variance
(sigma_b = 0.005, so q* = 0.028 is small and tanh' stays near 1), inputs scaled to q*, at depths
32..256: the singular values of da_L/dx (``gc.jacobian_spectrum(model, x, at=L)``) for
orthogonal and Gaussian weights, beside the free-probability prediction
(``gc.theory.jacobian_moments``): mean chi_1^L = 1 both, variance L (mu_2/mu_1^2 - 1 - s_1)
(s_1 = 0 orthogonal, -1 Gaussian). Relu at its critical point (sigma_w^2 = 2, orthogonal)
has mu_2 / mu_1^2 = 2: its variance grows like L whatever the weights. Then a short training
comparison on the bundled digits (a depth-48 critical tanh network, SGD): the isometric
(orthogonal) initialisation learns faster.

    python examples/dynamical_isometry.py [out.png]     # default: ./dynamical_isometry.png
"""

from __future__ import annotations

import math
import sys

import numpy as np

import gradchain as gc

WIDTH = 256
DEPTHS = (32, 64, 128, 256)
SIGMA_B = 0.005
TRAIN_DEPTH, TRAIN_WIDTH, EPOCHS = 48, 64, 4


def critical_sigma_w(activation: str = "tanh", sigma_b: float = SIGMA_B) -> float:
    """sigma_w with chi_1 = 1 at this sigma_b (bisection on the theory's chi_1)."""
    lo, hi = 0.5, 3.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gc.theory.chi1(activation, mid, sigma_b) < 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


def build(activation: str, weights: str, depth: int, width: int, sigma_w: float,
          sigma_b: float, seed: int, out: int | None = None, n_in: int | None = None
          ) -> gc.MLP:
    init = gc.init.orthogonal(sigma_w) if weights == "orthogonal" else gc.init.normal(
        sigma_w, sigma_b)
    m = gc.MLP([n_in or width] + [width] * depth + [out or width], activation=activation,
               init=init, seed=seed)
    if weights == "orthogonal" and sigma_b > 0:  # orthogonal draws no biases: N(0, sigma_b^2)
        rng = np.random.default_rng(seed + 1)
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p[...] = rng.normal(0.0, sigma_b, p.shape)
    return m


def spectra() -> dict[tuple[str, str, int], gc.spectrum.JacobianSpectrum]:
    """(activation, weights, depth) -> the spectrum of da_L/dx at an input at q*."""
    out = {}
    cases = [("tanh", w, critical_sigma_w(), SIGMA_B) for w in ("orthogonal", "gaussian")]
    cases.append(("relu", "orthogonal", math.sqrt(2.0), 0.0))
    for act, weights, sw, sb in cases:
        q = gc.theory.fixed_point(act, sw, sb) if act == "tanh" else 1.0
        # one network of the largest depth; the spectra of da_L/dx at each depth L come
        # from one forward-mode pass (the tangents recorded on the way)
        m = build(act, weights, max(DEPTHS), WIDTH, sw, sb, seed=0)
        x = np.random.default_rng(100).standard_normal(WIDTH)
        x *= math.sqrt(max(q - sb * sb, 1e-12) / (sw * sw) / np.mean(x * x))
        by_depth = gc.jacobian_spectrum(m, x.astype(np.float32), at=list(DEPTHS))
        for L in DEPTHS:
            out[act, weights, L] = by_depth[L]
    return out


def training() -> dict[str, gc.History]:
    """Critical tanh on the digits, orthogonal vs Gaussian weights: SGD histories."""
    x, y, xt, yt = gc.data.digits(seed=0)
    sw = critical_sigma_w()
    q = gc.theory.fixed_point("tanh", sw, SIGMA_B)
    scale = math.sqrt((q - SIGMA_B ** 2) / sw ** 2 / float(np.mean(x * x)))
    x, xt = (x * scale).astype(np.float32), (xt * scale).astype(np.float32)
    hist = {}
    for weights in ("orthogonal", "gaussian"):
        m = build("tanh", weights, TRAIN_DEPTH, TRAIN_WIDTH, sw, SIGMA_B, seed=0, out=10,
                  n_in=64)
        opt = gc.optim.SGD(m, lr=0.005, momentum=0.9)
        hist[weights] = gc.train(m, (x, y), opt, epochs=EPOCHS, batch_size=32,
                                 loss="cross_entropy", val=(xt, yt), seed=0, progress=False)
    return hist


def main(path: str = "dynamical_isometry.png") -> None:
    sw = critical_sigma_w()
    q = gc.theory.fixed_point("tanh", sw, SIGMA_B)
    print(f"tanh at criticality: sigma_w = {sw:.4f}, sigma_b = {SIGMA_B}, q* = {q:.4g}, "
          f"chi_1 = {gc.theory.chi1('tanh', sw, SIGMA_B):.6f}; width {WIDTH}, float32")
    sp = spectra()
    print(f"{'case':<22}{'depth':>6}{'mean s^2':>10}{'predicted':>10}{'var s^2':>10}"
          f"{'predicted':>10}{'max s':>8}{'min s':>9}")
    for (act, weights, L), s in sp.items():
        if act == "tanh":
            mean, var = gc.theory.jacobian_moments("tanh", sw, SIGMA_B, L, weights)
        else:
            mean, var = gc.theory.jacobian_moments("relu", math.sqrt(2.0), 0.0, L,
                                                   "orthogonal")
        print(f"{act + ', ' + weights:<22}{L:>6}{s.mean_sq:>10.3f}{mean:>10.3f}"
              f"{s.var_sq:>10.3f}{var:>10.3f}{s.singular_values[0]:>8.3f}"
              f"{s.singular_values[-1]:>9.2e}")
    hist = training()
    for weights, h in hist.items():
        print(f"digits, depth {TRAIN_DEPTH}, {weights:<10}: loss after each epoch "
              + ", ".join(f"{v:.3f}" for v in h.epoch_loss)
              + f"; test accuracy {h.val_accuracy[-1]:.3f}")
    from gradchain._plotting import pyplot

    plt = pyplot()
    fig, axs = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (act, weights) in zip(axs, [("tanh", "orthogonal"), ("tanh", "gaussian"),
                                        ("relu", "orthogonal")], strict=True):
        gc.spectrum.plot_spectra({L: sp[act, weights, L] for L in DEPTHS}, ax=ax, bins=60,
                                     log=True)
        ax.set_title(f"{act}, {weights} weights (critical)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"figure written to {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
