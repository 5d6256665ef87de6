"""The health statistics' and non-finite origins' cost against a build without them (issue
16 item 4, "not a runtime switch"): two worker processes, one importing this checkout's
gradchain and one importing a base install (main at ebd4777, before the forensics), each
timing one forward + backward with the report on the same workload, driven in
alternation (which goes first swaps every round).

    python benchmarks/health_vs_base.py --base /work/base12-site --rounds 20

Prints per workload the median of time(this) / time(base) per round and its quartiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

WORKER = r'''
import json, sys, time
import numpy as np
import gradchain as gc
from gradchain.bench.workloads import WORKLOADS
rng = np.random.default_rng(0)
w = WORKLOADS["mlp-tanh"]
m = gc.MLP(**w.model_kwargs(), seed=0)
x = rng.normal(size=(w.batch, w.in_features)).astype(m.dtype)
gy = (rng.normal(size=(w.batch, w.out_features)) / w.batch).astype(m.dtype)
wr = WORKLOADS["rnn-mid"]
r = gc.RNN(**wr.model_kwargs(), seed=0)
xr = rng.normal(size=(wr.steps, wr.batch, wr.input_size)).astype(r.dtype)
gr = (rng.normal(size=(wr.steps, wr.batch, wr.hidden_size)) / wr.batch).astype(r.dtype)
steps = {"mlp-tanh": lambda: (m.forward(x), m.backward(gy)),
         "rnn-mid": lambda: (r.forward(xr), r.backward(grad_hs=gr))}
for f in steps.values():
    f()
print("ready", gc.__file__, flush=True)
for line in sys.stdin:
    name = line.strip()
    t0 = time.perf_counter()
    steps[name]()
    print(time.perf_counter() - t0, flush=True)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="site folder holding the base gradchain")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    procs = {}
    for name, path in (("this", None), ("base", args.base)):
        env = dict(os.environ)
        if path is not None:
            env["PYTHONPATH"] = path
        # the base through the interpreter below any virtual environment (whose editable
        # install of this checkout would come first), from its own folder
        exe = sys.executable if path is None else getattr(sys, "_base_executable",
                                                            sys.executable)
        procs[name] = subprocess.Popen([exe, "-c", WORKER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        ready = procs[name].stdout.readline().split()
        assert ready[0] == "ready", ready
        print(f"{name}: {ready[1]}")

    def run(who: str, wl: str) -> float:
        p = procs[who]
        p.stdin.write(wl + "\n")
        p.stdin.flush()
        return float(p.stdout.readline())

    load = os.getloadavg()
    print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out = {}
    for wl in ("mlp-tanh", "rnn-mid"):
        ratios, ta, tb = [], [], []
        for r in range(args.rounds):
            order = ("this", "base") if r % 2 == 0 else ("base", "this")
            t = {who: run(who, wl) for who in order}
            ratios.append(t["this"] / t["base"])
            ta.append(t["base"])
            tb.append(t["this"])
        q1, q3 = np.percentile(ratios, [25, 75])
        out[wl] = {"median_ratio": float(np.median(ratios)), "iqr": [float(q1), float(q3)],
                   "base_ms": 1e3 * float(np.median(ta)), "this_ms": 1e3 * float(np.median(tb))}
        print(f"{wl:9s} this/base {out[wl]['median_ratio']:.3f} [{q1:.3f}, {q3:.3f}]  "
              f"base {out[wl]['base_ms']:.2f} ms  this {out[wl]['this_ms']:.2f} ms")
    for p in procs.values():
        p.stdin.close()
        p.wait()
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
