"""The order/chaos phase diagram of a tanh MLP, with measured points on top.

Mean-field theory (docs/CONVENTIONS.md, "Mean-field theory") predicts the per-layer factor
chi_1 of ||dL/da_l||^2 for W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2). This script
draws log10 chi_1 over sigma_w in [0.5, 4], sigma_b in [0, 1], runs a depth-50, width-256
gc.MLP at a few (sigma_w, sigma_b) points, fits each one's per-layer gradient factor, and
puts those measurements on the diagram in the same colour scale. It prints predicted vs
measured chi_1 and gradient depth scales.

    python examples/phase_diagram_tanh.py [out.png]     # default: ./phase_diagram_tanh.png
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gradchain as gc

DEPTH, WIDTH, BATCH = 50, 256, 128
POINTS = [  # (sigma_w, sigma_b): ordered, near-critical and chaotic
    (0.8, 0.1), (1.2, 0.6), (1.4, 0.3), (1.0, 0.05), (1.7, 0.8),
    (2.0, 0.2), (2.5, 0.5), (3.0, 0.9), (3.5, 0.1),
]


def measure(sigma_w: float, sigma_b: float, seed: int) -> gc.theory.Comparison:
    """One forward/backward pass of a fresh MLP, compared with the theory."""
    model = gc.MLP([WIDTH] + [WIDTH] * DEPTH + [10], activation="tanh",
                   init=gc.init.normal(sigma_w, sigma_b), dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    model.forward(rng.standard_normal((BATCH, WIDTH)))
    report = model.backward(rng.standard_normal((BATCH, 10)))
    return gc.theory.compare(report, model=model)


def results() -> list[gc.theory.Comparison]:
    """The measured points, each compared with the theory."""
    return [measure(sw, sb, seed) for seed, (sw, sb) in enumerate(POINTS)]


def main(path: str = "phase_diagram_tanh.png") -> None:
    t0 = time.perf_counter()
    diagram = gc.theory.phase_diagram("tanh", np.linspace(0.5, 4.0, 40),
                                      np.linspace(0.0, 1.0, 41))
    t_theory = time.perf_counter() - t0
    results_ = results()
    diagram.plot(path=path, measured=results_)

    print(f"tanh MLP, depth {DEPTH}, width {WIDTH}, batch {BATCH}, float64; "
          f"fit over layers {results_[0].layers[1]}..{results_[0].layers[0]}")
    print(f"{'sigma_w':>7} {'sigma_b':>7} {'q*':>8} {'chi1':>8} {'measured':>9} {'err':>7} "
          f"{'xi':>8} {'xi meas':>8}")
    for r in results_:
        print(f"{r.sigma_w:7.2f} {r.sigma_b:7.2f} {r.q_star:8.4f} {r.chi1:8.4f} "
              f"{r.chi1_measured:9.4f} {100 * r.relative_error:+6.1f}% "
              f"{r.depth_scale:8.2f} {r.depth_scale_measured:8.2f}")
    errs = np.abs([r.relative_error for r in results_])
    print(f"median |error| {100 * np.median(errs):.1f}%, max {100 * errs.max():.1f}%; "
          f"theory grid 40x41 in {t_theory:.2f} s, total {time.perf_counter() - t0:.1f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
