"""The results as a plain-text table (:func:`format_table`) and as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .agreement import Agreement
from .machine import NOISY_CORES


def _fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The results as a readable plain-text table."""
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
    for dt, c in results.get("ceiling", {}).items():
        kind = "sgemm" if dt == "float32" else "dgemm"
        runs = "; ".join(
            f"{r['when']} " + ", ".join(f"{k}: {v:.1f}" for k, v in r.items()
                                        if k.isdigit())
            for r in c.get("runs", []))
        lines.append(f"{kind} ceiling (NumPy {dt} matmul, GFLOP/s, best of {runs}) -> "
                     f"{c['best']:.1f}")
    head = (f"  {'peer':<27} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'GFLOP/s':>8} "
            f"{'%ceil':>6} {'peer/gc':>8}  check")
    for wr in results["workloads"]:
        if "peers" not in wr:  # --memory-only
            continue
        lines += ["", f"{wr['name']}: {wr['description']}; {wr['flops'] / 1e9:.3g} GFLOP/iter"]
        ml = wr.get("machine_load")
        if ml:
            noisy = ml["other_processes_cores"] + ml["steal_cores"] > NOISY_CORES
            lines.append(f"  while timing, other processes used {ml['other_processes_cores']:.2f} "
                         f"of {m['cores']} cores on average (steal {ml['steal_cores']:.2f})"
                         + (": NOISY, rerun on a quiet machine" if noisy else ""))
        lines.append(head)
        notes: list[str] = []
        for row in wr["peers"].values():
            label = row["label"]
            status = row["status"]
            if status in ("skipped", "error"):
                lines.append(f"  {label:<27} {status}: {row.get('note', '')}")
                continue
            agr = Agreement(**row["agreement"]) if "agreement" in row else None
            if agr is None:
                check = "reference"
            elif agr.against == "gradchain":
                check = agr.summary()
            else:
                check = "vs f64 ref: " + agr.summary()
            if agr is not None and agr.excused:
                items = list(agr.excused.items())
                notes += [f"  * {label}: {q}: {why}" for q, why in items[:3]]
                if len(items) > 3:
                    notes.append(f"  * {label}: ... and {len(items) - 3} more")
            frac = row.get("fraction_of_ceiling")
            lines.append(
                f"  {label:<27} {_fmt_ms(row['median_s']):>10} {_fmt_ms(row['min_s']):>9} "
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
    if not results.get("ok", True):
        lines += ["", "!!! SOME PEERS DISAGREE WITH GRADCHAIN OR FAILED: see the rows above"]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
