"""Forward and backward of gc.RNN apart, on the shapes of rnn-mid and rnn-long-narrow.

    python benchmarks/rnn_fwd_bwd.py              # 2 threads, 15 rounds
    python benchmarks/rnn_fwd_bwd.py -t 1 -r 30

Per round: forward, backward(report=False), forward, backward(report=True), then a 5 ms
sleep (the threads go idle, as between the benchmark's steps). Printed: the medians in ms
of the forward, the backward without the report, the backward with it, and the whole
step (forward + backward with the report). Used for issue 13's comparison against
d17f0a6 (benchmarks/README.md): run it once per installed version, alternating.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradchain as gc

SHAPES = {"rnn-mid": (512, 32, 64, 256), "rnn-long-narrow": (4096, 16, 32, 64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=15)
    a = ap.parse_args()
    gc.set_num_threads(a.threads)
    rng = np.random.default_rng(1)
    out = []
    for name, (T, B, I, H) in SHAPES.items():
        m = gc.RNN(I, H)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        g = rng.standard_normal((T, B, H)).astype(np.float32)
        times: dict[str, list[float]] = {"fwd": [], "bwd": [], "bwd+rep": [], "step": []}
        for r in range(a.rounds + 3):
            t0 = time.perf_counter()
            m.forward(x)
            t1 = time.perf_counter()
            m.backward(g, report=False)
            t2 = time.perf_counter()
            m.forward(x)
            t3 = time.perf_counter()
            m.backward(g, report=True)
            t4 = time.perf_counter()
            time.sleep(0.005)
            if r >= 3:  # warm-up
                for k, v in (("fwd", t1 - t0), ("bwd", t2 - t1), ("bwd+rep", t4 - t3),
                             ("step", t4 - t2)):
                    times[k].append(v)
        out.append(f"{name}: " + " ".join(f"{k} {1e3 * float(np.median(v)):.2f}"
                                          for k, v in times.items()))
    print(f"threads {a.threads}, rounds {a.rounds}: " + " | ".join(out))


if __name__ == "__main__":
    main()
