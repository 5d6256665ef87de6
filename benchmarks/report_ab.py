"""The report's cost over gradients alone (issue 13), on one model instance per workload.

    python benchmarks/report_ab.py                       # every bench workload, 9 rounds
    python benchmarks/report_ab.py -w mlp-tanh rnn-mid -r 15 -t 1 --json out.json
    python benchmarks/report_ab.py -w mlp-tanh --only on --iters 200   # for `perf stat`

Per round, one forward + backward with ``backward(report=True)`` and one with
``report=False`` (the order alternates between rounds), forward and backward timed
apart. Printed per workload: the medians (ms) of the whole step with and without the
report, the median of the per-round ratios minus 1 ("paired") with its quartiles, and
the backward-only difference over the whole step without the report ("bwd delta": the
forward is the same on both sides, so this is the report's cost with less of the
forward's noise). ``--clock cpu`` times the process's CPU time instead of the wall
(with ``-t 1``: what other processes on the machine take costs this one little).
``--only on|off`` runs one side ``--iters`` times and prints nothing but its median,
so ``perf stat -e task-clock`` can count each side on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

import gradchain as gc
from gradchain.bench.cases import CASE_MAKERS, for_kind
from gradchain.bench.peers.gradchain_peer import _Gradchain
from gradchain.bench.workloads import WORKLOADS

DEFAULT = ["mlp-tanh", "mlp-deep-narrow", "mlp-wide", "mlp-tanh-f64", "rnn-mid",
           "rnn-long-narrow", "lstm-mid", "gru-mid"]


CLOCK = time.perf_counter  # --clock cpu: time.process_time (the process's CPU time)


def _timed_step(inst: _Gradchain, report: bool) -> tuple[float, float]:
    """One forward + backward (report on or off): (forward s, backward s)."""
    m = inst.model
    t0 = CLOCK()
    m.forward(inst.x)
    t1 = CLOCK()
    m.backward(inst.g, report=report)
    t2 = CLOCK()
    return t1 - t0, t2 - t1


def ab(name: str, rounds: int, threads: int, seed: int = 0) -> dict[str, Any]:
    """Alternating rounds of report on / off on one instance of workload ``name``."""
    w = WORKLOADS[name]
    case = for_kind(CASE_MAKERS, w.kind, "case maker")(w, seed, threads)
    inst = _Gradchain(case, report=True)
    for on in (True, False, True, False):  # warm
        _timed_step(inst, on)
    t: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    ratios = []
    for r in range(rounds):
        got = {}
        for on in ((True, False) if r % 2 else (False, True)):
            got[on] = _timed_step(inst, on)
            t[on].append(got[on])
        ratios.append(sum(got[True]) / sum(got[False]) - 1.0)
    on_tot = np.median([sum(x) for x in t[True]])
    off_tot = np.median([sum(x) for x in t[False]])
    bwd_on = np.median([x[1] for x in t[True]])
    bwd_off = np.median([x[1] for x in t[False]])
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"workload": name, "threads": threads, "rounds": rounds,
            "on_ms": 1e3 * float(on_tot), "off_ms": 1e3 * float(off_tot),
            "paired": float(np.median(ratios)), "iqr": [float(q1), float(q3)],
            "bwd_delta": float((bwd_on - bwd_off) / off_tot),
            "bwd_on_ms": 1e3 * float(bwd_on), "bwd_off_ms": 1e3 * float(bwd_off),
            "ratios": [float(x) for x in ratios]}


def only(name: str, on: bool, iters: int, threads: int, seed: int = 0) -> float:
    """``iters`` steps of one side; the median step in ms."""
    w = WORKLOADS[name]
    case = for_kind(CASE_MAKERS, w.kind, "case maker")(w, seed, threads)
    inst = _Gradchain(case, report=on)
    ts = [sum(_timed_step(inst, on)) for _ in range(iters)]
    return 1e3 * float(np.median(ts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-w", "--workloads", nargs="+", default=DEFAULT)
    p.add_argument("-r", "--rounds", type=int, default=9)
    p.add_argument("-t", "--threads", type=int, default=gc.get_num_threads())
    p.add_argument("--only", choices=["on", "off"])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (use with -t 1: less sensitive to load)")
    p.add_argument("--json")
    a = p.parse_args()
    global CLOCK
    if a.clock == "cpu":
        CLOCK = time.process_time
    if a.only:
        for name in a.workloads:
            ms = only(name, a.only == "on", a.iters, a.threads)
            print(f"{name} report={a.only} median {ms:.3f} ms")
        return
    print(f"threads {a.threads}, rounds {a.rounds}, clock {a.clock}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    out = []
    for name in a.workloads:
        res = ab(name, a.rounds, a.threads)
        out.append(res)
        print(f"{name:16s} off {res['off_ms']:9.2f} ms  on {res['on_ms']:9.2f} ms  "
              f"paired {100 * res['paired']:+6.2f}% [{100 * res['iqr'][0]:+.2f}, "
              f"{100 * res['iqr'][1]:+.2f}]  bwd delta {100 * res['bwd_delta']:+6.2f}%  "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
