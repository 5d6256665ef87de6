"""``gradchain bench`` / ``python -m gradchain.bench``: the arguments and :func:`main`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .machine import _OPENBLAS_ENV, _UNSET_MARK, machine_info
from .memory import _memory_child, measure_memory
from .peers import PEERS
from .report import _json_default, format_table
from .timing import _peer_names, _resolve_workloads, run
from .workloads import SMALL, WORKLOADS, workload_table


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradchain bench",
        description="Time gradchain against PyTorch, JAX and NumPy on the standard workloads "
                    "(forward + backward + gradient report), side by side in one run.")
    p.add_argument("--workloads", "-w", nargs="*", metavar="NAME",
                   help=f"workloads (default the standard ones): {', '.join(WORKLOADS)}; "
                        f"optional: {', '.join(SMALL)}; 'all': every one")
    p.add_argument("--peers", "-p", nargs="*", metavar="NAME",
                   help=f"peers (default all installed): {', '.join(PEERS)}")
    p.add_argument("--repeats", "-r", type=int, default=20,
                   help="timed iterations per peer (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    p.add_argument("--threads", "-t", type=int, nargs="+", default=None, metavar="N",
                   help="threads for gradchain, PyTorch and NumPy (default: gradchain's); "
                        "several counts: a thread sweep, every peer with thread control at "
                        "each count and at its default, timed together")
    p.add_argument("--contended", type=int, default=0, metavar="N",
                   help="start N busy-loop processes for the timings (a busy machine) and "
                        "stop them at the end; the summary compares gradchain's default with "
                        "its 1-thread time and with PyTorch under that load")
    p.add_argument("--quick", action="store_true",
                   help="scaled-down workloads (MLP: widths/4, depth/8, batch/4; RNN: T/8, "
                        "batch/4, sizes/4): a smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                   help="sleep this long before each timed iteration (default: wait until "
                        "the other peers' thread pools stop spinning)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the GEMM ceiling")
    p.add_argument("--report-ab", type=int, default=0, metavar="ROUNDS",
                   help="also time gradchain with and without its report, alternating on one "
                        "model for ROUNDS rounds (the report's cost)")
    p.add_argument("--panel-ab", type=int, default=0, metavar="ROUNDS",
                   help="also time gradchain with its panel GEMM on and off, alternating on "
                        "one model for ROUNDS rounds (its gain over OpenBLAS)")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of each workload x peer in a subprocess")
    p.add_argument("--memory-only", action="store_true",
                   help="only the peak-memory measurement (no timing)")
    p.add_argument("--memory-iters", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="write all results and machine info here")
    p.add_argument("--list", action="store_true", help="list workloads and peers, then exit")
    p.add_argument("--_memory-child", nargs=2, metavar=("WORKLOAD", "PEER"),
                   help=argparse.SUPPRESS)
    return p


def _reexec_without_openblas_env(argv: list[str]) -> None:
    bad = [v for v in _OPENBLAS_ENV if v in os.environ]
    if not bad:
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_ENV}
    prev = [v for v in os.environ.get(_UNSET_MARK, "").split(",") if v]
    env[_UNSET_MARK] = ",".join(dict.fromkeys(prev + bad))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gradchain.bench", *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    """``gradchain bench``: returns 0, or 1 when a peer disagrees with gradchain or fails."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    _reexec_without_openblas_env(args_list)
    args = _parser().parse_args(args_list)
    counts: list[int] | None = args.threads
    if counts is not None and any(t < 1 for t in counts):
        print("--threads must be >= 1", file=sys.stderr)
        return 2
    if args.contended < 0:
        print("--contended must be >= 0", file=sys.stderr)
        return 2
    # one count: every peer at it (as before); several: the thread sweep
    threads = None if counts is None else counts[0] if len(counts) == 1 else None

    if args._memory_child:
        import gradchain as gc

        t = gc.get_num_threads() if threads is None else threads
        return _memory_child(args._memory_child[0], args._memory_child[1], args.quick, t,
                             args.memory_iters, args.seed)

    if args.list:
        for w in workload_table(args.quick).values():
            print(f"{w.name:<18} {w.describe()}; {w.flops() / 1e9:.3g} GFLOP/iter"
                  + ("" if w.name in WORKLOADS else " (optional)"))
        for p in PEERS.values():
            miss = p.missing()
            print(f"{p.name:<18} {p.label}" + (f" (not installed: {miss})" if miss else ""))
        return 0

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    results: dict[str, Any]
    try:
        if args.memory_only:
            import gradchain as gc

            t = gc.get_num_threads() if threads is None else threads
            results = {"machine": machine_info(),
                       "config": {"threads": t, "quick": args.quick, "seed": args.seed,
                                  "peers": _peer_names(_split(args.peers))},
                       "workloads": [{"name": w.name} for w in
                                     _resolve_workloads(_split(args.workloads), args.quick)],
                       "ok": True}
        else:
            results = run(_split(args.workloads), _split(args.peers), args.repeats,
                          args.warmup, counts if counts and len(counts) > 1 else threads,
                          quick=args.quick, seed=args.seed, settle=args.settle,
                          ceiling=not args.no_ceiling, panel_ab=args.panel_ab,
                          report_ab=args.report_ab, contended=args.contended, log=log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.memory or args.memory_only:
        log("measuring peak memory (one subprocess per workload x peer)...")
        results["memory"] = measure_memory(
            [w["name"] for w in results["workloads"]], results["config"]["peers"],
            quick=args.quick, threads=results["config"]["threads"], iters=args.memory_iters,
            seed=args.seed, log=log)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=_json_default)
            f.write("\n")
        log(f"wrote {args.json}")
    return 0 if results["ok"] else 1
