"""The IRNN of Le, Jaitly & Hinton ("A Simple Way to Initialize Recurrent Networks of
Rectified Linear Units", 2015) against a tanh RNN on the adding problem.

Sequences of T = 100 steps (``gc.data.adding``): the target is the sum of the two
marked values, so the answer depends on inputs up to 100 steps back; predicting 1
scores an MSE of about 1/6 ~ 0.167. Each model: hidden 64, a linear readout,
Adam(lr=1e-3), gradient-norm clipping at 1 (as in the paper), batches of 32,
15 epochs of 4096 sequences (1920 steps).

- IRNN: relu units, ``init="identity"`` (W_hh = I, zero recurrent bias): at
  initialisation the state is carried over unchanged, so the gradient reaches
  back through all 100 steps.
- tanh, ``init="torch_default"`` (what ``torch.nn.RNN`` does): ||dL/dh_t|| decays
  geometrically going back in time, and the model stays at the baseline.
- tanh, ``init="orthogonal"``: in between.

    python examples/irnn_adding.py [out.png]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gradchain as gc

T, HIDDEN, EPOCHS, BATCH, N = 100, 64, 15, 32, 4096
MODELS = [("IRNN (relu, identity W_hh)", "relu", "identity"),
          ("tanh, torch_default init", "tanh", "torch_default"),
          ("tanh, orthogonal init", "tanh", "orthogonal")]


def first_below(loss: np.ndarray, level: float, window: int = 50) -> int | None:
    """First step where the moving average of the training loss is below level."""
    if len(loss) < window:
        return None
    avg = np.convolve(loss, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(avg < level)
    return int(hit[0]) + window - 1 if hit.size else None


def train(label: str, act: str, init: str, data: tuple) -> gc.History:
    """One model of MODELS trained on ``data = (x, y, xv, yv)``."""
    x, y, xv, yv = data
    rnn = gc.RNN(2, HIDDEN, activation=act, init=init, output_size=1, seed=0)
    return gc.train(rnn, (x, y), gc.optim.Adam(rnn, lr=1e-3), epochs=EPOCHS,
                    batch_size=BATCH, clip=1.0, val=(xv, yv), seed=0, progress=False)


def results() -> tuple[dict[str, gc.History], float]:
    """Every model's History, and the validation MSE of predicting 1 (the baseline)."""
    gc.set_num_threads(1)  # small matrices: one thread avoids OpenMP synchronisation costs
    x, y = gc.data.adding(T=T, n=N, seed=0)
    xv, yv = gc.data.adding(T=T, n=1000, seed=1)
    base = float(np.mean((yv.astype(np.float64) - 1.0) ** 2))
    return {m[0]: train(*m, (x, y, xv, yv)) for m in MODELS}, base


def main(path: str = "irnn_adding.png") -> dict:
    gc.set_num_threads(1)  # small matrices: one thread avoids OpenMP synchronisation costs
    x, y = gc.data.adding(T=T, n=N, seed=0)
    xv, yv = gc.data.adding(T=T, n=1000, seed=1)
    base = float(np.mean((yv.astype(np.float64) - 1.0) ** 2))
    print(f"adding problem, T={T}: RNN(hidden={HIDDEN}) + readout, Adam(lr=1e-3), clip=1, "
          f"{EPOCHS} epochs x {N // BATCH} steps of batch {BATCH}")
    print(f"baseline (predict 1): {gc.data.ADDING_BASELINE_MSE:.3f} in expectation, "
          f"{base:.4f} on the validation set\n")
    head = (f"{'model':28s} {'val MSE':>8s} {'best':>8s} {'vs baseline':>11s} "
            f"{'steps to <0.05':>15s} {'dh_1/dh_T at init':>18s}")
    print(head)
    print("-" * len(head))
    out = {}
    t0 = time.perf_counter()
    for label, act, init in MODELS:
        hist = train(label, act, init, (x, y, xv, yv))
        out[label] = hist
        reach = first_below(hist.loss, 0.05)
        ratio0 = hist.grad_norms[0, 0] / hist.grad_norms[0, -1]
        reached = str(reach) if reach is not None else "never"
        print(f"{label:28s} {hist.val_loss[-1]:8.4f} {hist.val_loss.min():8.4f} "
              f"{hist.val_loss[-1] / base:11.1%} {reached:>15s} {ratio0:18.1e}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    plot(out, base, path)
    print(f"figure: {path}")
    return out


def plot(hists: dict, base: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5),
                             gridspec_kw={"width_ratios": [1.3, 1.0, 1.0]})
    window = 50
    for k, (label, h) in enumerate(hists.items()):
        avg = np.convolve(h.loss, np.ones(window) / window, mode="valid")
        axes[0].plot(np.arange(window - 1, h.num_steps), avg, color=f"C{k}", label=label)
        ends = [int(np.flatnonzero(h.epoch == e)[-1]) for e in range(h.num_epochs)]
        axes[0].plot(ends, h.val_loss, "o", ms=3, color=f"C{k}")
    axes[0].axhline(base, color="k", ls=":", lw=1, label="predict 1")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title(f"training MSE ({window}-step average; dots: validation)", fontsize=10)
    axes[0].legend(fontsize=8)
    for ax, (label, h) in zip(axes[1:], list(hists.items())[:2], strict=True):
        z = np.log10(np.where(h.grad_norms > 0, h.grad_norms, np.nan)).T
        lo, hi = np.nanpercentile(z, [1, 99])  # a few exploding steps would flatten the rest
        im = ax.imshow(z, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                       extent=(0, h.num_steps, 0.5, z.shape[0] + 0.5), vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax, label="log10 ||dL/dh_t||")
        ax.set_xlabel("step")
        ax.set_ylabel("timestep t")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "irnn_adding.png")
