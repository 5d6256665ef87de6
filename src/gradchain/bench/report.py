"""The results as a plain-text table (:func:`format_table`) and as JSON; :func:`summarize`:
the busy-machine summary (issue 12: gradchain's default against its own 1-thread time and
against PyTorch, under the same load)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .agreement import Agreement
from .machine import NOISY_CORES


def _fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


RATIO_LIMIT = 1.25
"""Issue 12's bound: gradchain's default may take at most this many times its own 1-thread
time (on a busy machine too); the summary flags a ratio above it."""


def _timed(row: Mapping[str, Any] | None) -> bool:
    return row is not None and "median_s" in row


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per workload: gradchain's default (the row ``"gradchain"`` when it is the default
    setting), gradchain on 1 thread, their ratio, PyTorch with the report at its default
    (row ``"torch"``) and gradchain-default / PyTorch, with the other processes' load while
    timing; and how many workloads meet issue 12's bounds (default / 1 thread <=
    :data:`RATIO_LIMIT`, gradchain faster than PyTorch). A cell that was not measured is
    None."""
    m = results["machine"]
    cfg = results["config"]
    rows: list[dict[str, Any]] = []
    for wr in results["workloads"]:
        peers = wr.get("peers")
        if peers is None:  # --memory-only
            continue
        d = peers.get("gradchain")
        d = d if _timed(d) and d.get("default") else None
        one = next((r for k, r in peers.items() if k != "gradchain" and _timed(r)
                    and r.get("peer") == "gradchain" and r.get("threads") == 1), None)
        own = peers.get("gradchain")
        if one is None and _timed(own) and own is not None and own.get("threads") == 1:
            one = own
        torch = peers.get("torch") if _timed(peers.get("torch")) else None
        ml = wr.get("machine_load") or {}
        row: dict[str, Any] = {
            "workload": wr["name"],
            "gradchain_default_ms": d["median_s"] * 1e3 if d else None,
            "gradchain_default_threads": d.get("threads") if d else None,
            "gradchain_1_thread_ms": one["median_s"] * 1e3 if one else None,
            "default_over_1_thread": d["median_s"] / one["median_s"] if d and one else None,
            "torch_ms": torch["median_s"] * 1e3 if torch else None,
            "torch_threads": torch.get("threads") if torch else None,
            "gradchain_over_torch": d["median_s"] / torch["median_s"] if d and torch else None,
            "other_processes_cores": ml.get("other_processes_cores"),
            "competitor_cores": wr.get("competitor_cores"),
        }
        r1, rt = row["default_over_1_thread"], row["gradchain_over_torch"]
        row["over_limit"] = r1 is not None and r1 > RATIO_LIMIT
        row["behind_torch"] = rt is not None and rt >= 1.0
        rows.append(row)
    with_1 = [r for r in rows if r["default_over_1_thread"] is not None]
    with_t = [r for r in rows if r["gradchain_over_torch"] is not None]
    cont = results.get("contention") or {}
    return {
        "load": {"competitors": cfg.get("contended", 0),
                 "competitor_cores": cont.get("cores"), "cores": m.get("cores")},
        "rows": rows,
        "acceptance": {
            "ratio_limit": RATIO_LIMIT,
            "measured": len(with_1),
            "within_limit": sum(not r["over_limit"] for r in with_1),
            "over_limit": [r["workload"] for r in with_1 if r["over_limit"]],
            "compared_with_torch": len(with_t),
            "ahead_of_torch": sum(not r["behind_torch"] for r in with_t),
            "behind_torch": [r["workload"] for r in with_t if r["behind_torch"]],
        },
    }


def _load_words(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    n = cfg.get("contended", 0)
    if not n:
        return "no competitors (the machine as it was)"
    cont = results.get("contention") or {}
    used = cont.get("cores")
    return (f"{n} busy-loop competitor process{'es' if n != 1 else ''} on "
            f"{results['machine']['cores']} cores"
            + (f" (they used {used:.2f} cores on average)" if used is not None else ""))


def _cores(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_summary(results: Mapping[str, Any]) -> list[str]:
    """The summary (:func:`summarize`) as lines of text: the table a reader looks at."""
    s = results.get("summary") or summarize(results)
    rows = s["rows"]
    if not rows:
        return []
    lim = s["acceptance"]["ratio_limit"]

    def ms(v: float | None, t: int | None = None) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" + (f" ({t}t)" if t is not None else "")

    def ratio(v: float | None, bad: bool) -> str:
        return "-" if v is None else f"{v:.2f}" + (" !!" if bad else "")

    lines = ["", f"summary under load: {_load_words(results)}; '!!': default / 1 thread above "
             f"{lim:g}, or gradchain's default not faster than PyTorch",
             f"  {'workload':<16} {'gc default ms':>15} {'gc 1-thread ms':>14} "
             f"{'default/1t':>10} {'PyTorch ms':>14} {'gc/PyTorch':>10} {'others':>7} "
             f"{'ours':>5}"]
    for r in rows:
        lines.append(
            f"  {r['workload']:<16} "
            f"{ms(r['gradchain_default_ms'], r['gradchain_default_threads']):>15} "
            f"{ms(r['gradchain_1_thread_ms']):>14} "
            f"{ratio(r['default_over_1_thread'], r['over_limit']):>10} "
            f"{ms(r['torch_ms'], r['torch_threads']):>14} "
            f"{ratio(r['gradchain_over_torch'], r['behind_torch']):>10} "
            f"{_cores(r['other_processes_cores']):>7} "
            f"{_cores(r['competitor_cores']):>5}")
    a = s["acceptance"]
    lines.append("  (ms: medians; (Nt): the row's thread count; others: CPU cores other "
                 "processes, competitors included, used while the workload was timed; ours: "
                 "the competitors' share, set-up included)")
    if a["measured"]:
        lines.append(f"  default / 1 thread <= {lim:g}: {a['within_limit']} of {a['measured']}"
                     + (f" (above: {', '.join(a['over_limit'])})" if a["over_limit"] else ""))
    if a["compared_with_torch"]:
        lines.append(f"  gradchain's default faster than PyTorch: {a['ahead_of_torch']} of "
                     f"{a['compared_with_torch']}"
                     + (f" (not: {', '.join(a['behind_torch'])})" if a["behind_torch"] else ""))
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """The results as a readable plain-text table (and, for a thread sweep or a run under
    load, the summary at the end: :func:`format_summary`)."""
    m = results["machine"]
    cfg = results["config"]
    load = (f"; load average {m['loadavg_start'][0]:.2f} at start"
            if m.get("loadavg_start") else "")
    if m.get("loadavg_end"):
        load += f", {m['loadavg_end'][0]:.2f} at end"
    timing = (f", repeats {cfg['repeats']} (round-robin), warm-up {cfg['warmup']}"
              if "repeats" in cfg else "")
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; gradchain {m['gradchain']} "
        f"(commit {m.get('gradchain_commit') or '?'}, core built "
        f"{m.get('gradchain_core_built') or '?'}) isa {m['gradchain_isa']}, OpenBLAS core "
        f"{m['openblas_core']}; numpy {m['numpy']}, torch {m['torch'] or '-'}, "
        f"jax {m['jax'] or '-'}; {m['date']}",
        f"threads {cfg['threads']}{timing}" + (", QUICK workloads" if cfg["quick"] else "")
        + load
        + (f"; unset for this run: {', '.join(m['env_unset'])}" if m["env_unset"] else "")
        + (f"; STILL SET: {', '.join(m['env_still_set'])}" if m["env_still_set"] else ""),
    ]
    if cfg.get("thread_sweep"):
        lines.append(f"thread sweep: {', '.join(map(str, cfg['thread_sweep']))} threads, and each "
                     "peer's default (" + ", ".join(
                         f"{k} {v}" for k, v in cfg.get("thread_defaults", {}).items())
                     + "); peer/gc: against gradchain at the same count")
    if cfg.get("contended"):
        lines.append(f"under load: {_load_words(results)}, started by the benchmark for the "
                     "timings (not for the GEMM ceiling)")
    for dt, c in results.get("ceiling", {}).items():
        kind = "sgemm" if dt == "float32" else "dgemm"
        runs = "; ".join(
            f"{r['when']} " + ", ".join(f"{k}: {v:.1f}" for k, v in r.items()
                                        if k.isdigit())
            for r in c.get("runs", []))
        lines.append(f"{kind} ceiling (NumPy {dt} matmul, GFLOP/s, best of {runs}) -> "
                     f"{c['best']:.1f}")
    width = max([27] + [len(r["label"]) for wr in results["workloads"]
                        for r in wr.get("peers", {}).values()])
    head = (f"  {'peer':<{width}} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'GFLOP/s':>8} "
            f"{'%ceil':>6} {'peer/gc':>8}  check")
    for wr in results["workloads"]:
        if "peers" not in wr:  # --memory-only
            continue
        lines += ["", f"{wr['name']}: {wr['description']}; {wr['flops'] / 1e9:.3g} GFLOP/iter"]
        ml = wr.get("machine_load")
        if ml:
            ours = wr.get("competitor_cores")  # --contended: that load is the point
            noisy = (ml["other_processes_cores"] + ml["steal_cores"] - (ours or 0.0)
                     > NOISY_CORES)
            lines.append(f"  while timing, other processes used {ml['other_processes_cores']:.2f} "
                         f"of {m['cores']} cores on average (steal {ml['steal_cores']:.2f})"
                         + (f"; the benchmark's competitors about {ours:.2f}"
                            if ours is not None else "")
                         + (": NOISY, rerun on a quiet machine" if noisy else ""))
        lines.append(head)
        notes: list[str] = []
        for row in wr["peers"].values():
            label = row["label"]
            status = row["status"]
            if status in ("skipped", "error"):
                lines.append(f"  {label:<{width}} {status}: {row.get('note', '')}")
                continue
            agr = Agreement(**row["agreement"]) if "agreement" in row else None
            if agr is None:
                check = "reference"
            elif agr.against == "gradchain":
                check = agr.summary()
            else:
                check = "vs f64 ref: " + agr.summary()
            if row.get("bitwise_as_default"):
                check += "; bitwise = default"
            if agr is not None and agr.excused:
                items = list(agr.excused.items())
                notes += [f"  * {label}: {q}: {why}" for q, why in items[:3]]
                if len(items) > 3:
                    notes.append(f"  * {label}: ... and {len(items) - 3} more")
            frac = row.get("fraction_of_ceiling")
            lines.append(
                f"  {label:<{width}} {_fmt_ms(row['median_s']):>10} {_fmt_ms(row['min_s']):>9} "
                f"{_fmt_ms(row['iqr_s']):>8} {row['gflops']:>8.1f} "
                f"{'-' if frac is None else f'{100 * frac:.0f}%':>6} {row['ratio']:>8.2f}  "
                f"{check}")
        over = wr.get("report_overhead")
        if over:
            lines.append(f"  the report costs {100 * over['paired_median']:+.1f}% over "
                         "gradchain's gradients alone (median of the per-round ratios; "
                         f"ratio of the medians {100 * over['of_medians']:+.1f}%)")
        ro = wr.get("report_overhead_one_model")
        if ro:
            lines.append(f"  the report costs {100 * ro['paired_median']:+.1f}% measured on one "
                         f"model ({ro['rounds']} rounds alternating with and without it; IQR "
                         f"{100 * ro['iqr'][0]:+.1f}% to {100 * ro['iqr'][1]:+.1f}%)")
        sp = wr.get("panel_speedup")
        if sp:
            lines.append(f"  gradchain's panel GEMM: {sp['paired_median']:.3f}x the speed of "
                         f"OpenBLAS for the same products (one model, {sp['rounds']} rounds "
                         "alternating the two, median of the per-round ratios; IQR "
                         f"{sp['iqr'][0]:.3f}-{sp['iqr'][1]:.3f})")
        if notes:
            lines.append("  * beyond tolerance but explained by the float64 reference as "
                         "float32 rounding at ReLU kinks:")
            lines += notes
    mem = results.get("memory")
    if mem:
        lines += ["", "peak memory (each in its own process; MiB)",
                  f"  {'workload':<16} {'peer':<16} {'while iterating':>16} "
                  f"{'over imports':>13} {'process peak':>13}"]
        for row in mem:
            if row["status"] != "ok":
                lines.append(f"  {row['workload']:<16} {row['peer']:<16} {row['status']}")
                continue
            lines.append(f"  {row['workload']:<16} {row['peer']:<16} "
                         f"{row['peak_iter_mib']:>16.0f} {row['over_baseline_mib']:>13.0f} "
                         f"{row['process_peak_mib']:>13.0f}")
    if cfg.get("thread_sweep") or cfg.get("contended"):
        lines += format_summary(results)
    if not results.get("ok", True):
        lines += ["", "!!! SOME PEERS DISAGREE WITH GRADCHAIN OR FAILED: see the rows above"]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
