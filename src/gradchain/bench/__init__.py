"""Benchmark suite: gradchain against its peers on the standard workloads
(``docs/WORKLOADS.md``).

One iteration is forward + full backward + the gradient report, on a fixed upstream
gradient. Every peer gets the same weights (gradchain's ``state_dict``), the same input
and the same upstream gradient, and is checked against gradchain before it is timed.
Peers are timed round-robin within one run (one iteration of each peer per repeat, in a
shuffled order, each starting once the previous peer's thread pools have stopped spinning),
so that a noisy machine slows them alike.

Run ``python -m gradchain.bench --help`` (or ``gradchain bench``). Optional peers (PyTorch,
JAX) are imported lazily and skipped with a note when they are not installed.

One module per table: :mod:`.workloads` (:data:`WORKLOADS` maps names to workload
descriptions, each of a ``kind``: "mlp": :class:`MLPWorkload`, "rnn": :class:`RNNWorkload`,
"lstm" / "gru": :class:`LSTMWorkload` / :class:`GRUWorkload`;
:data:`SMALL` the optional small models),
:mod:`.cases` (:data:`CASE_MAKERS` builds the shared inputs of a kind, :data:`REFERENCES`
runs the NumPy spec of a kind in a given dtype, :data:`TRUTHS` the float64 one with its re-fit
to a float32 side's kink roundings), :mod:`.peers` (:data:`PEERS`, and
:data:`BUILDERS`: ``kind -> peer name -> builder``, :data:`THREAD_CONTROL`; one module per
peer), :mod:`.agreement` (the checks against gradchain and the float64 reference),
:mod:`.machine` (machine info, GEMM ceiling, load), :mod:`.sweep` (the rows of a thread
sweep, :class:`Variant`), :mod:`.contention` (busy-loop competitors, :class:`Competitors`),
:mod:`.timing` (the run loop, :func:`run`), :mod:`.memory` (peak RSS), :mod:`.report` (the
table, the busy-machine summary and JSON) and :mod:`.cli` (:func:`main`). Every name is
re-exported here.
"""

from __future__ import annotations

import os as os  # callers patch ``bench.os.execve``, as before the split

from .agreement import (
    KINK_MAX_ERR,
    KINK_RANK,
    KINKED_ACTIVATIONS,
    Agreement,
    agreement_errors,
    arbitrate,
    check_agreement,
    kink_explained,
    tolerance_for,
)
from .cases import CASE_MAKERS, REFERENCES, TRUTHS, Case, Outputs, mlp_refit
from .cli import main
from .contention import Competitors
from .machine import _OPENBLAS_ENV as _OPENBLAS_ENV
from .machine import _UNSET_MARK as _UNSET_MARK
from .machine import NOISY_CORES, CpuMeter, gemm_ceiling, machine_info
from .memory import measure_memory
from .peers import BUILDERS, PEERS, THREAD_CONTROL, Builder, PeerInfo, PeerInstance, ThreadControl
from .report import RATIO_LIMIT, format_summary, format_table, summarize
from .sweep import Variant
from .timing import run, wait_idle
from .workloads import (
    QUICK,
    QUICK_SMALL,
    SMALL,
    WORKLOADS,
    GRUWorkload,
    LSTMWorkload,
    MLPWorkload,
    RNNWorkload,
    Workload,
    workload_table,
)

__all__ = [
    "Agreement", "BUILDERS", "Builder", "CASE_MAKERS", "Case", "Competitors", "CpuMeter",
    "GRUWorkload", "KINKED_ACTIVATIONS", "KINK_MAX_ERR", "KINK_RANK", "LSTMWorkload",
    "MLPWorkload", "NOISY_CORES", "Outputs", "PEERS", "PeerInfo", "PeerInstance", "QUICK",
    "QUICK_SMALL", "RATIO_LIMIT", "REFERENCES", "RNNWorkload", "SMALL", "THREAD_CONTROL",
    "TRUTHS", "ThreadControl", "Variant", "WORKLOADS",
    "Workload", "agreement_errors", "arbitrate", "check_agreement", "format_summary",
    "format_table", "gemm_ceiling", "kink_explained", "machine_info", "main", "measure_memory",
    "mlp_refit", "run", "summarize", "tolerance_for", "wait_idle", "workload_table",
]
