"""The run loop: set up every row of each workload (a peer at a thread setting, :mod:`.sweep`),
check agreement, then time the rows round-robin (:func:`run`), under load when asked
(:mod:`.contention`).
"""

from __future__ import annotations

import gc as _pygc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from . import machine
from .agreement import arbitrate, tolerance_for
from .cases import CASE_MAKERS, REFERENCES, TRUTHS, Outputs, for_kind
from .contention import Competitors, check_interrupt, interrupt_guard
from .machine import CpuMeter, _limit_numpy_blas, _loadavg, gemm_ceiling, machine_info
from .peers import BUILDERS, PEERS, PeerInstance, ThreadControl
from .peers.gradchain_peer import _Gradchain
from .report import summarize
from .sweep import Variant, controls, plan, thread_counts
from .workloads import QUICK, WORKLOADS, Workload, workload_table


def wait_idle(quiet_s: float = 0.005, max_cpu_frac: float = 0.1, timeout_s: float = 0.5) -> float:
    """Sleep until this process's threads are idle: until a ``quiet_s`` sleep costs less than
    ``max_cpu_frac`` of it in process CPU time (all threads), at most ``timeout_s``.

    Thread pools spin after their work: NumPy's OpenBLAS for about 0.1 s, OpenMP runtimes
    (gradchain, PyTorch) for 10-20 ms. On a 2-core machine a spinning pool halves the
    next peer's speed, so each timed iteration starts from an idle process. Returns the
    time waited."""
    t0 = time.perf_counter()
    c = time.process_time()
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(quiet_s)
        c2 = time.process_time()
        if c2 - c < max_cpu_frac * quiet_s:
            break
        c = c2
    return time.perf_counter() - t0


def _stats(times: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "min_s": float(t.min()), "iqr_s": float(q3 - q1),
            "mean_s": float(t.mean())}


def _peer_names(peers: Sequence[str] | None) -> list[str]:
    names = list(PEERS) if peers is None else list(peers)
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return ["gradchain"] + [p for p in dict.fromkeys(names) if p != "gradchain"]


def _resolve_workloads(workloads: Sequence[str | Workload] | None, quick: bool) -> list[Workload]:
    """The workloads by name (standard or :data:`~.workloads.SMALL`; ``"all"``: both), or
    as given; None: the standard ones."""
    table = QUICK if quick else WORKLOADS
    if workloads is None:
        return list(table.values())
    every = workload_table(quick)
    out: list[Workload] = []
    for w in workloads:
        if isinstance(w, str):
            if w == "all":
                out += list(every.values())
                continue
            if w not in every:
                raise ValueError(f"unknown workload {w!r}; known: {list(every)} (or 'all')")
            out.append(every[w])
        else:
            out.append(w)
    return list(dict.fromkeys(out))


def run(
    workloads: Sequence[str | Workload] | None = None,
    peers: Sequence[str] | None = None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | Sequence[int] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    settle: float = 0.0,
    ceiling: bool = True,
    panel_ab: int = 0,
    report_ab: int = 0,
    contended: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return the results (JSON-ready).

    ``workloads``: names (of :data:`WORKLOADS` or :data:`~.workloads.SMALL`, scaled down
    with ``quick=True``; ``"all"``: both) or workload objects; None for the standard ones.
    ``peers``: names of :data:`PEERS` (gradchain is always added, first). ``threads``: one
    count for gradchain, PyTorch and NumPy's BLAS (default ``gc.get_num_threads()``), or
    several: the thread sweep (:mod:`.sweep`: every peer with thread control at each
    count, and each peer's default, gradchain's as a row of its own; all rows of a
    workload timed round-robin together). ``contended=N``: N busy-loop processes
    (:class:`~.contention.Competitors`) run while the workloads are timed (not while the
    GEMM ceiling is measured), stopped on every way out. ``settle``: seconds to sleep
    before each timed iteration; 0 (default) waits until the process is idle instead
    (:func:`wait_idle`: the thread pools of the peer timed before stop spinning).
    ``ceiling=False`` skips the GEMM ceiling measurement. ``panel_ab=N``: after the
    timings, N rounds of gradchain with its panel GEMM on and off, on the same model;
    ``report_ab=N``: N rounds with and without the report, on the same model (:func:`_ab`).
    gradchain's thread setting (and, in a sweep, every controlled peer's) is restored at
    the end. ``results["summary"]`` is :func:`~.report.summarize`'s table.
    """
    import gradchain as gc

    say = log or (lambda s: None)
    if repeats < 1 or warmup < 0 or panel_ab < 0 or report_ab < 0:
        raise ValueError("repeats must be >= 1, warmup, panel_ab and report_ab >= 0")
    if isinstance(contended, bool) or not isinstance(contended, int) or contended < 0:
        raise ValueError(f"contended must be an int >= 0, got {contended!r}")
    counts = thread_counts(threads)
    wls = _resolve_workloads(workloads, quick)
    names = _peer_names(peers)
    sweep = counts is not None and len(counts) > 1
    found_gc = gc.get_num_threads()
    default_threads = found_gc if counts is None or sweep else counts[0]
    ctls = controls(names) if sweep else {}
    found = {n: int(c.get() or default_threads) for n, c in ctls.items()}
    saved = {c.library: (c, found[n]) for n, c in ctls.items()}
    try:
        gc.set_num_threads(default_threads)
        if not sweep:
            _limit_numpy_blas(default_threads)
        with interrupt_guard():  # a Ctrl-C whose exception a gc callback drops still ends it
            return _run(wls, names, counts, default_threads, found, ctls, repeats, warmup,
                        quick, seed, settle, ceiling, panel_ab, report_ab, contended, say)
    finally:
        for c, n in saved.values():
            try:
                c.set(n)
            except Exception:  # restoring is a courtesy; never mask the run's own error
                pass
        gc.set_num_threads(found_gc)


def _run(wls: list[Workload], names: list[str], counts: list[int] | None,
         default_threads: int, found: dict[str, int], ctls: dict[str, ThreadControl],
         repeats: int, warmup: int, quick: bool, seed: int, settle: float, ceiling: bool,
         panel_ab: int, report_ab: int, contended: int,
         say: Callable[[str], None]) -> dict[str, Any]:
    sweep = counts is not None and len(counts) > 1
    variants = plan(names, counts, default_threads, found, ctls)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "config": {"repeats": repeats, "warmup": warmup, "threads": default_threads,
                   "quick": quick, "seed": seed, "settle_s": settle, "peers": names,
                   "numpy_blas": ("set per row (threadpoolctl)" if "numpy" in ctls
                                  else machine._numpy_blas_note),
                   "jax_threads": ("1 (XLA_FLAGS)" if default_threads == 1 and not sweep else
                                   "XLA's own pool (all cores)"),
                   "thread_sweep": counts if sweep else None,
                   "thread_defaults": {"gradchain": default_threads, **found},
                   "thread_control": {n: c.library for n, c in ctls.items()},
                   "contended": contended},
        "ceiling": {},
        "workloads": [],
    }
    if sweep:
        say(f"thread sweep: {', '.join(map(str, counts or []))} threads, and each peer's "
            f"default ({', '.join(f'{n} {t}' for n, t in found.items())})")
    dtypes = ["float32"] + (["float64"] if any(w.dtype == "float64" for w in wls) else [])

    def measure_ceiling(when: str) -> None:
        for dt in dtypes:
            say(f"measuring the {'s' if dt == 'float32' else 'd'}gemm ceiling ({when}: NumPy "
                f"{dt} matmul at 2048 and 4096)...")
            wait_idle()
            meter = CpuMeter()
            c = gemm_ceiling(np.dtype(dt))
            c_all = results["ceiling"].setdefault(dt, {"runs": []})
            c_all["runs"].append({"when": when, **c, "machine_load": meter.stop()})
            # the ceiling is what the machine can do: the best of the runs, per size
            for k in c:
                c_all[k] = max(r[k] for r in c_all["runs"])

    if ceiling:
        measure_ceiling("start")

    all_ok = True
    competitors = Competitors(contended)
    try:
        if contended:
            say(f"starting {contended} busy-loop competitor process(es)...")
            competitors.start()
            say(f"  competitors running: PIDs {', '.join(map(str, competitors.pids))}")
        for w in wls:
            say(f"{w.name}: {w.describe()}")
            c0, t0 = competitors.cpu_seconds(), time.perf_counter()
            res = _run_workload(w, variants, repeats, warmup, default_threads, seed, settle,
                                say, panel_ab, report_ab)
            c1 = competitors.cpu_seconds()
            if contended and c0 is not None and c1 is not None:  # set-up included
                res["competitor_cores"] = round((c1 - c0) / (time.perf_counter() - t0), 3)
            all_ok &= all(r["status"] in ("ok", "skipped", "reference")
                          for r in res["peers"].values())
            results["workloads"].append(res)
    finally:
        load = competitors.stop()
        if contended:
            say(f"stopped the competitors (they used {load['cores']} cores on average)")
    results["contention"] = load if contended else None
    if ceiling:
        measure_ceiling("end")  # a busy moment at the start must not lower the ceiling
    for res in results["workloads"]:
        ceil = results["ceiling"].get(res["config"]["dtype"], {}).get("best")
        for r in res["peers"].values():
            if "gflops" in r and ceil:
                r["fraction_of_ceiling"] = r["gflops"] / ceil
        res["ceiling_gflops"] = ceil
        res["gradchain_fraction_of_ceiling"] = res["peers"]["gradchain"].get(
            "fraction_of_ceiling")
    results["ok"] = bool(all_ok)
    results["machine"]["loadavg_end"] = _loadavg()
    results["summary"] = summarize(results)
    return results


def _bitwise_equal(a: Outputs, b: Outputs) -> bool:
    """Every array of ``a`` and ``b`` equal bit for bit (NaN where NaN)."""
    def same(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is None and y is None
        x, y = np.asarray(x), np.asarray(y)
        return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))

    return (same(a.y, b.y) and a.grads.keys() == b.grads.keys()
            and all(same(g, b.grads[k]) for k, g in a.grads.items())
            and same(a.activation_grad_norms, b.activation_grad_norms)
            and same(a.weight_grad_norms, b.weight_grad_norms)
            and same(a.timestep_grad_norms, b.timestep_grad_norms))


def _run_workload(w: Workload, variants: list[Variant], repeats: int, warmup: int,
                  threads: int, seed: int, settle: float, say: Callable[[str], None],
                  panel_ab: int = 0, report_ab: int = 0) -> dict[str, Any]:
    flops = w.flops()
    out: dict[str, Any] = {"name": w.name, "kind": w.kind, "description": w.describe(),
                           "config": w.config(), "flops": flops, "peers": {}}
    case = for_kind(CASE_MAKERS, w.kind, "case maker")(w, seed, threads)
    builders = for_kind(BUILDERS, w.kind, "peer table")
    instances: dict[str, PeerInstance] = {}
    by_key = {v.key: v for v in variants}
    rows: dict[str, dict[str, Any]] = out["peers"]
    unusable: set[str] = set()
    for v in variants:
        name = v.peer
        if name in unusable:
            continue
        info = PEERS[name]
        row: dict[str, Any] = {"label": v.label, "peer": name, "threads": v.threads,
                               "default": v.default}
        missing = info.missing()
        if missing or name not in builders:
            row = {"label": info.label, "peer": name, "threads": v.threads, "default": True,
                   "status": "skipped", "note": (f"not installed: {', '.join(missing)}"
                                                 if missing else f"no {w.kind} implementation")}
            rows[name] = row
            unusable.add(name)
            continue
        rows[v.key] = row
        try:
            v.apply()
            t0 = time.perf_counter()
            inst = builders[name](case if v.threads == case.threads
                                  else replace(case, threads=v.threads))
            v.apply()  # the set-up may have set its library's threads itself
            inst.step()  # first call: compiles (JAX), allocates
            row["first_call_s"] = time.perf_counter() - t0
            instances[v.key] = inst
        except Exception as e:  # a peer that fails is reported, not fatal
            row.update(status="error", note=f"{type(e).__name__}: {e}")
            if v.key == "gradchain":
                raise
    # ---- the agreement check (before any timing)
    ref = instances["gradchain"].outputs()
    outs: dict[str, Outputs] = {}
    for key, inst in list(instances.items()):
        if key == "gradchain":
            continue
        try:
            outs[key] = inst.outputs()
        except Exception as e:
            rows[key].update(status="error", note=f"outputs: {type(e).__name__}: {e}")
            del instances[key]
    truth, refit = None, None
    if w.dtype == "float32" and w.kind in TRUTHS:  # with its re-fit to kink roundings
        truth, refit = TRUTHS[w.kind](case, tolerance_for(w.dtype))
    elif w.dtype == "float32" and w.kind in REFERENCES:
        truth = REFERENCES[w.kind](case, np.float64)
    del case  # each peer holds its own copy
    agreements = arbitrate(ref, outs, w, truth=truth, refit=refit)
    del refit  # and the float64 forward it holds
    # the library's own rows at other thread counts: bitwise as its default (determinism)
    mine = {"gradchain": ref, **outs}
    for key in outs:
        v = by_key[key]
        if v.control is not None and v.control.own_default and v.peer in mine and key != v.peer:
            same = _bitwise_equal(outs[key], mine[v.peer])
            rows[key]["bitwise_as_default"] = same
            if not same:
                agreements[key].ok = False
                agreements[key].failed.insert(0, f"not bitwise identical to {v.peer}'s default")
    del truth, outs, ref, mine
    rows["gradchain"]["status"] = "reference"
    for name, agr in agreements.items():
        row = rows[name]
        row["agreement"] = asdict(agr)
        if name != "gradchain":
            row["status"] = "ok" if agr.ok else "disagree"
        elif not agr.ok:
            row["status"] = "disagree"
        if not agr.ok:
            bad = ", ".join(f"{q} {agr.errors[q]:.2e}" if q in agr.errors else q
                            for q in agr.failed[:5])
            who = ("gradchain DISAGREES with the float64 reference" if name == "gradchain"
                   else f"{row['label']} DISAGREES with gradchain")
            msg = (f"!!! {w.name}: {who}: max rel err {agr.max_err:.3e} > tol "
                   f"{agr.tolerance:g}; {len(agr.failed)} quantities fail, worst: {bad} "
                   "-- timed anyway, row marked DISAGREE")
            print(msg, file=sys.stderr)
            row["note"] = msg

    order = list(instances)
    times: dict[str, list[float]] = {n: [] for n in order}
    for n in order:
        by_key[n].apply()
        for _ in range(max(0, warmup - 1)):  # the first call above counts as one warm-up
            check_interrupt()
            instances[n].step()
    _pygc.collect()
    check_interrupt()
    gc_was_enabled = _pygc.isenabled()
    _pygc.disable()
    rng = np.random.default_rng(seed)
    meter = CpuMeter()
    try:
        for _ in range(repeats):
            for i in rng.permutation(len(order)):  # each peer follows each other one alike
                check_interrupt()
                n = order[i]
                by_key[n].apply()
                if settle > 0:
                    time.sleep(settle)
                else:
                    wait_idle()
                t0 = time.perf_counter()
                instances[n].step()
                times[n].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            _pygc.enable()
    out["machine_load"] = meter.stop()

    medians = {n: _stats(times[n])["median_s"] for n in order}
    for n in order:
        st = _stats(times[n])
        base = by_key[n].base if by_key[n].base in medians else "gradchain"
        rows[n].update(st)
        rows[n]["times_s"] = times[n]
        rows[n]["gflops"] = flops / st["median_s"] / 1e9
        rows[n]["ratio"] = st["median_s"] / medians[base]
        rows[n]["ratio_to"] = base
    if "gradchain-grads" in times:  # the report's price: round r of one against round r
        paired = np.array(times["gradchain"]) / np.array(times["gradchain-grads"])
        out["report_overhead"] = {
            "paired_median": float(np.median(paired) - 1.0),
            "of_medians": float(rows["gradchain"]["median_s"]
                                / rows["gradchain-grads"]["median_s"] - 1.0)}
    by_key["gradchain"].apply()
    if panel_ab > 0:  # OpenBLAS time / panel time
        out["panel_speedup"] = _ab(instances["gradchain"], "panel", panel_ab)
    if report_ab > 0:  # with the report / gradients only, minus 1
        ab = _ab(instances["gradchain"], "report", report_ab)
        out["report_overhead_one_model"] = {
            "paired_median": 1.0 / ab["paired_median"] - 1.0,
            "iqr": [1.0 / ab["iqr"][1] - 1.0, 1.0 / ab["iqr"][0] - 1.0], "rounds": report_ab}
    say("  " + ", ".join(f"{n} {rows[n]['median_s'] * 1e3:.2f} ms" for n in order))
    instances.clear()
    _pygc.collect()
    return out


def _ab(inst: _Gradchain, flag: str, rounds: int) -> dict[str, Any]:
    """Time gradchain's own model with ``inst.<flag>`` (``"panel"``: its panel GEMM;
    ``"report"``: the report) False and True, alternating which goes first, on one model
    instance (two instances of the same model can differ by several per cent on their
    own, e.g. by where their memory landed): per round the ratio time(False) /
    time(True), its median and quartiles. The flag is left True."""
    ratios = []
    for r in range(rounds):
        t: dict[bool, float] = {}
        for on in ((True, False) if r % 2 else (False, True)):
            check_interrupt()
            setattr(inst, flag, on)
            wait_idle()
            t0 = time.perf_counter()
            inst.step()
            t[on] = time.perf_counter() - t0
        ratios.append(t[False] / t[True])
    setattr(inst, flag, True)
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"paired_median": float(np.median(ratios)), "iqr": [float(q1), float(q3)],
            "rounds": rounds, "ratios": [float(x) for x in ratios]}
