"""Case study: a deep sigmoid MLP that cannot learn the digits, and the fixes that can.

A 64 -> 16 x 64 -> 10 MLP on scikit-learn's 8x8 digits (1347 training, 450 test
images), 20 epochs of mini-batches of 64. With sigmoid units, PyTorch's default
initialisation and SGD the gradient reaching the first layers is ~1e-14 of the
output layer's, so they never move and test accuracy stays at chance (10%). The
same network learns with relu + He init, with batch norm, with residual
connections or with tanh + Glorot init. Adam alone does not rescue it: the first
layers' gradients sit far below its eps = 1e-8, so their steps are ~lr * g / eps.

    python examples/digits_case_study.py [out.png]

Prints a table (test accuracy, ||dL/da_0|| / ||dL/da_L|| at the first and the last
step) and writes a figure: gradient-norm heat maps (layer x step) of three runs and
the loss curves of all of them.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gradchain as gc

DEPTH, WIDTH, EPOCHS, BATCH = 16, 64, 20, 64

CASES = [
    # label, MLP keyword arguments, optimiser
    ("sigmoid, torch_default init, SGD", {"activation": "sigmoid", "init": "torch_default"},
     "sgd"),
    ("sigmoid, torch_default init, Adam", {"activation": "sigmoid", "init": "torch_default"},
     "adam"),
    ("relu + He init, SGD", {"activation": "relu", "init": "kaiming_normal"}, "sgd"),
    ("relu + He init, Adam", {"activation": "relu", "init": "kaiming_normal"}, "adam"),
    ("tanh + Glorot init, SGD", {"activation": "tanh", "init": "xavier_normal"}, "sgd"),
    ("sigmoid + batch norm, SGD", {"activation": "sigmoid", "init": "torch_default",
                                   "norm": "batch"}, "sgd"),
    ("sigmoid + residual, SGD", {"activation": "sigmoid", "init": "torch_default",
                                 "residual": True}, "sgd"),
]
HEATMAPS = [0, 5, 2]  # which runs get a heat map


def run(label: str, kwargs: dict, optimiser: str, data: tuple) -> tuple[gc.History, float]:
    xtr, ytr, xte, yte = data
    model = gc.MLP([64] + [WIDTH] * DEPTH + [10], seed=0, **kwargs)
    opt = (gc.optim.SGD(model, lr=0.01, momentum=0.9) if optimiser == "sgd"
           else gc.optim.Adam(model, lr=1e-3))
    hist = gc.train(model, (xtr, ytr), opt, epochs=EPOCHS, batch_size=BATCH,
                    loss="cross_entropy", val=(xte, yte), seed=0, progress=False)
    return hist, float(hist.val_accuracy[-1])


HEAD = f"{'configuration':36s} {'test acc':>8s} {'grad ratio a0/aL':>17s} {'(last step)':>12s}"


def row(label: str, hist: gc.History, acc: float) -> tuple[tuple[str, float, float, float], str]:
    """(label, test accuracy, first-step ratio, last-step ratio) and its table line."""
    r = hist.grad_norms[:, 0] / hist.grad_norms[:, -1]
    return (label, acc, float(r[0]), float(r[-1])), f"{label:36s} {acc:8.1%} {r[0]:17.1e} " \
        f"{r[-1]:12.1e}"


def results() -> list[tuple[str, gc.History, float]]:
    """(label, History, test accuracy) of every case."""
    gc.set_num_threads(1)
    data = gc.data.digits(seed=0)
    return [(label, *run(label, kwargs, optimiser, data)) for label, kwargs, optimiser in CASES]


def main(path: str = "digits_case_study.png") -> list[tuple[str, float, float, float]]:
    # tiny matrices: one thread avoids OpenMP synchronisation costs (results are identical)
    gc.set_num_threads(1)
    data = gc.data.digits(seed=0)
    print(f"digits: {len(data[0])} train / {len(data[2])} test images; MLP 64 -> {DEPTH} x "
          f"{WIDTH} -> 10, {EPOCHS} epochs, batch {BATCH}; SGD(lr=0.01, momentum=0.9) or "
          "Adam(lr=1e-3)\n")
    print(HEAD)
    print("-" * len(HEAD))
    rows, hists = [], []
    t0 = time.perf_counter()
    for label, kwargs, optimiser in CASES:
        hist, acc = run(label, kwargs, optimiser, data)
        values, line = row(label, hist, acc)
        rows.append(values)
        hists.append(hist)
        print(line)
    print(f"\n(chance is 10%; grad ratio = ||dL/da_0|| / ||dL/da_L||, the gradient at the "
          f"input over the one at the output layer; {time.perf_counter() - t0:.0f} s)")
    plot(hists, path)
    print(f"figure: {path}")
    return rows


def plot(hists: list[gc.History], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 8))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.0])
    logs = [np.log10(hists[i].grad_norms.T) for i in HEATMAPS]
    vmin = min(float(z[np.isfinite(z)].min()) for z in logs)
    vmax = max(float(z[np.isfinite(z)].max()) for z in logs)
    mesh = None
    heat_axes = []
    for col, (i, z) in enumerate(zip(HEATMAPS, logs, strict=True)):
        ax = fig.add_subplot(grid[0, col])
        heat_axes.append(ax)
        mesh = ax.imshow(z, aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
                         interpolation="nearest")
        ax.set_title(f"{CASES[i][0]}\ntest acc {hists[i].val_accuracy[-1]:.0%}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("layer l (0 = input)")
    fig.colorbar(mesh, ax=heat_axes, label="log10 ||dL/da_l||", shrink=0.9)
    ax = fig.add_subplot(grid[1, :2])
    for (label, _, _), h in zip(CASES, hists, strict=True):
        ax.plot(np.arange(1, len(h.epoch_loss) + 1), h.epoch_loss, marker="o", ms=3,
                label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, 2])
    accs = [h.val_accuracy[-1] for h in hists]
    ax.barh(np.arange(len(CASES)), accs, color=["C3" if a < 0.2 else "C2" for a in accs])
    ax.set_yticks(np.arange(len(CASES)), [c[0] for c in CASES], fontsize=8)
    ax.yaxis.tick_right()
    ax.axvline(0.1, color="k", ls="--", lw=1)
    ax.set_xlabel("test accuracy")
    ax.set_xlim(0, 1)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits_case_study.png")
