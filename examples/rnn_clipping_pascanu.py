"""Exploding gradients in an RNN and gradient-norm clipping (Pascanu, Mikolov & Bengio,
"On the difficulty of training recurrent neural networks", ICML 2013).

A ReLU RNN (hidden 32, W_hh = identity) on the adding problem with T = 30 steps,
SGD(lr=0.01, momentum=0.9), batches of 32, 40 epochs. Early in training the
recurrent weights grow past spectral radius 1 and ||dL/dW|| jumps by many orders
of magnitude; one such step throws the unclipped model far away (loss ~1e11) and it
ends stuck at the 1/6 baseline of predicting the mean (its relu units dead). Rescaling
the gradient to norm <= 1 (``clip=1.0``, i.e. ``gc.clip_grad_norm(model, 1.0)`` before
each step) keeps every step bounded and the same model learns the task; a loose
threshold (10) clips too rarely to help. Prints, per run, the largest gradient norm
and loss seen, the share of clipped steps and the final validation MSE.

    python examples/rnn_clipping_pascanu.py [out.png]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gradchain as gc

T, HIDDEN, EPOCHS, BATCH, LR = 30, 32, 40, 32, 0.01
CLIPS = [None, 10.0, 1.0]


def train(clip: float | None, data: tuple) -> gc.History:
    """The relu RNN trained with clipping threshold ``clip`` (None: no clipping)."""
    x, y, xv, yv = data
    rnn = gc.RNN(2, HIDDEN, activation="relu", init="identity", output_size=1, seed=0)
    return gc.train(rnn, (x, y), gc.optim.SGD(rnn, lr=LR, momentum=0.9), epochs=EPOCHS,
                    batch_size=BATCH, clip=clip, val=(xv, yv), seed=0, progress=False)


def data() -> tuple:
    return (*gc.data.adding(T=T, n=2048, seed=0), *gc.data.adding(T=T, n=1000, seed=1))


def results() -> dict:
    """``{clip: History}`` for every threshold of CLIPS."""
    gc.set_num_threads(1)  # tiny matrices: one thread avoids OpenMP synchronisation costs
    d = data()
    return {clip: train(clip, d) for clip in CLIPS}


def main(path: str = "rnn_clipping_pascanu.png") -> dict:
    gc.set_num_threads(1)  # tiny matrices: one thread avoids OpenMP synchronisation costs
    d = data()
    print(f"adding problem, T={T}: relu RNN(hidden={HIDDEN}, W_hh=identity), SGD(lr={LR}, "
          f"momentum=0.9), {EPOCHS} epochs of batch {BATCH}; baseline MSE "
          f"{gc.data.ADDING_BASELINE_MSE:.3f}\n")
    head = (f"{'clip':>8s} {'max ||grad||':>13s} {'max loss':>10s} {'clipped steps':>14s} "
            f"{'val MSE':>9s}  diverged")
    print(head)
    print("-" * len(head))
    out = {}
    t0 = time.perf_counter()
    for clip in CLIPS:
        hist = train(clip, d)
        out[clip] = hist
        print(f"{str(clip):>8s} {np.nanmax(hist.global_norm):13.1e} {np.nanmax(hist.loss):10.1e} "
              f"{hist.clipped.mean():14.1%} {hist.val_loss[-1]:9.4f}  {hist.diverged}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    plot(out, path)
    print(f"figure: {path}")
    return out


def plot(hists: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for k, (clip, h) in enumerate(hists.items()):
        label = "no clipping" if clip is None else f"clip = {clip:g}"
        steps = np.arange(h.num_steps)
        axes[0].plot(steps, h.loss, lw=0.8, color=f"C{k}", label=label)
        axes[1].plot(h.steps, h.global_norm, lw=0.8, color=f"C{k}", label=label)
        if clip is not None:
            axes[1].axhline(clip, color=f"C{k}", ls="--", lw=1)
        ratio = h.grad_norms[:, 0] / h.grad_norms[:, -1]
        axes[2].plot(h.steps, ratio, lw=0.8, color=f"C{k}", label=label)
    axes[0].axhline(gc.data.ADDING_BASELINE_MSE, color="k", ls=":", lw=1, label="predict 1")
    for ax, title in zip(axes, ["training loss (MSE, per step)",
                                "||dL/dW|| before clipping (dashed: threshold)",
                                "||dL/dh_1|| / ||dL/dh_T||"], strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rnn_clipping_pascanu.png")
