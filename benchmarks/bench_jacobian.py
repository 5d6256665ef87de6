"""What the input-output Jacobian costs: gc.jacobian of a width-256, depth-64 MLP against
forward passes of the same model (issue 15: "no more than a few forward passes").

    python benchmarks/bench_jacobian.py                 # width 256, depth 64, float32
    python benchmarks/bench_jacobian.py --width 512 --depth 32 --repeats 30 --torch

The Jacobian at one input is the identity pushed forward through the chain as ``in``
tangents: one GEMM of (in x h) by (h x h) per layer, i.e. the products of a forward pass
over a batch of ``in`` rows (plus the primal pass at one row). So the natural unit is a
forward pass over ``in`` rows ("forward B=in"); a forward over one row is shown too. The
timings are interleaved (one of each per round) and the medians reported, with the
machine's load average; ``--torch`` adds torch.func.jacfwd / jacrev of the same weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import gradchain as gc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--torch", action="store_true", help="also time torch.func.jacfwd/jacrev")
    a = ap.parse_args()
    dt = np.dtype(a.dtype)
    W = a.width
    m = gc.MLP([W] * (a.depth + 1) + [W], activation="tanh", init="xavier_normal", seed=0,
               dtype=dt)
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=W).astype(dt)
    xb = rng.normal(size=(W, W)).astype(dt)
    cases = {
        "forward B=1": lambda: m.forward(x1[None]),
        f"forward B={W}": lambda: m.forward(xb),
        "gc.jacobian": lambda: gc.jacobian(m, x1),
    }
    if a.torch:
        import torch

        torch.set_num_threads(gc.get_num_threads())
        tdt = torch.float32 if dt == np.float32 else torch.float64
        ws = [torch.tensor(np.array(v)) for k, v in m.state_dict().items()]
        Ws, bs = ws[0::2], ws[1::2]

        def f(v):
            h = v
            for Wl, bl in zip(Ws[:-1], bs[:-1], strict=True):
                h = torch.tanh(h @ Wl.T + bl)
            return h @ Ws[-1].T + bs[-1]

        xt = torch.tensor(x1, dtype=tdt)
        cases["torch jacfwd"] = lambda: torch.func.jacfwd(f)(xt)
        cases["torch jacrev"] = lambda: torch.func.jacrev(f)(xt)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up (workspaces, packing scratch)
        fn()
        fn()
    for _ in range(a.repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    load = os.getloadavg()
    print(f"MLP tanh, width {W}, depth {a.depth}, {dt.name}, {gc.get_num_threads()} threads, "
          f"ISA {gc.get_isa()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    unit = statistics.median(times[f"forward B={W}"])
    print(f"{'case':<16}{'median ms':>11}{'min ms':>9}{'x forward B=' + str(W):>17}")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<16}{1e3 * med:>11.3f}{1e3 * min(v):>9.3f}{med / unit:>17.2f}")
    J = gc.jacobian(m, x1)
    print(f"Jacobian {J.shape}, largest singular value "
          f"{np.linalg.svd(J.astype(np.float64), compute_uv=False)[0]:.4g}")


if __name__ == "__main__":
    main()
