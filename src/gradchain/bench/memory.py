"""Peak memory: each (workload, peer) in its own ``python -m gradchain.bench`` process."""

from __future__ import annotations

import gc as _pygc
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .cases import CASE_MAKERS, for_kind
from .peers import BUILDERS, PEERS
from .timing import _peer_names
from .workloads import workload_table


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_child(workload: str, peer: str, quick: bool, threads: int, iters: int,
                  seed: int) -> int:
    """Run in a fresh process: import, set up, run ``iters`` iterations; print one JSON
    line with the RSS after imports, the peak RSS of the set-up and the peak RSS while
    iterating (the kernel's high-water mark, reset through /proc/self/clear_refs after
    the set-up; where that fails the iteration peak includes the set-up)."""
    import gradchain as gc

    gc.set_num_threads(threads)
    w = workload_table(quick)[workload]
    if peer.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
    elif peer == "jax":
        import jax.numpy as jnp

        jnp.zeros(1).block_until_ready()
    baseline = _rss_kib("VmRSS")
    case = for_kind(CASE_MAKERS, w.kind, "case maker")(w, seed, threads)
    inst = for_kind(BUILDERS, w.kind, "peer table")[peer](case)
    del case
    inst.step()
    _pygc.collect()
    setup_peak = _rss_kib("VmHWM")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak-RSS high-water mark to the current RSS
        reset = True
    except OSError:
        pass
    for _ in range(iters):
        inst.step()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"baseline_kib": baseline, "setup_peak_kib": setup_peak,
                      "peak_iter_kib": peak, "hwm_reset": reset}))
    return 0


def measure_memory(workloads: Sequence[str], peers: Sequence[str], *, quick: bool,
                   threads: int, iters: int = 3, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Peak RSS of each (workload, peer), each in a fresh ``python -m gradchain.bench``
    process (Linux: read from /proc/self/status).

    Per row: ``peak_iter_mib`` (highest RSS while iterating: the model, its gradients,
    the library and the working memory), ``over_baseline_mib`` (that minus the RSS right
    after importing the peer's library) and ``process_peak_mib`` (the peak of the whole
    process, set-up included: the set-up holds gradchain's model and a copy of its weights
    while it builds the peer).
    """
    say = log or (lambda s: None)
    rows: list[dict[str, Any]] = []
    table = workload_table(quick)
    for wname in workloads:
        w = table[wname]
        for peer in _peer_names(peers):
            row: dict[str, Any] = {"workload": wname, "peer": peer}
            rows.append(row)
            if PEERS[peer].missing() or peer not in BUILDERS.get(w.kind, {}):
                row["status"] = "skipped"
                continue
            cmd = [sys.executable, "-m", "gradchain.bench", "--_memory-child", wname, peer,
                   "--threads", str(threads), "--memory-iters", str(iters),
                   "--seed", str(seed)] + (["--quick"] if quick else [])
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = p.stdout.strip().splitlines()
            if p.returncode != 0 or not lines:
                row["status"] = "error"
                row["note"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                continue
            d = json.loads(lines[-1])
            if d["peak_iter_kib"] is None:
                row["status"] = "error"
                row["note"] = "no /proc/self/status VmHWM on this system"
                continue
            row["status"] = "ok"
            row["peak_iter_mib"] = d["peak_iter_kib"] / 1024
            row["over_baseline_mib"] = (d["peak_iter_kib"] - (d["baseline_kib"] or 0)) / 1024
            row["process_peak_mib"] = max(d["peak_iter_kib"], d["setup_peak_kib"] or 0) / 1024
            row["hwm_reset"] = d["hwm_reset"]
            say(f"  memory {wname} / {peer}: peak {row['peak_iter_mib']:.0f} MiB")
    return rows
