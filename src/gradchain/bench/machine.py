"""The machine: CPU, cores, library versions, the GEMM ceiling, other processes' load
while timing, and the thread limit of NumPy's own BLAS.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

# OpenBLAS reads these when it is loaded: they force an older, slower kernel. The benchmark
# drops them for its own process only, by re-executing itself (main()) before any timing.
_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_UNSET_MARK = "GRADCHAIN_BENCH_UNSET_ENV"


_numpy_blas_note: str | None = None


def _limit_numpy_blas(threads: int) -> None:
    """Limit NumPy's own OpenBLAS pool to ``threads`` (not gradchain's, which the core
    manages itself). Needs threadpoolctl when ``threads`` differs from the core count."""
    global _numpy_blas_note
    if threads == (os.cpu_count() or threads) or _numpy_blas_note is not None:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        _numpy_blas_note = ("NumPy's BLAS threads not limited (install threadpoolctl); "
                            "it uses all cores")
        return
    np_dir = os.path.dirname(os.path.dirname(np.__file__))
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "scipy_openblas32" not in lib.filepath and (
                lib.filepath.startswith(np_dir) and "torch" not in lib.filepath):
            lib.set_num_threads(threads)
    _numpy_blas_note = f"NumPy's BLAS limited to {threads} threads (threadpoolctl)"


_numpy_blas_libs: list[Any] | None = None


def _numpy_blas_controllers() -> list[Any]:
    """threadpoolctl's controllers of NumPy's own BLAS (not gradchain's OpenBLAS, not
    PyTorch's); empty without threadpoolctl. Looked up once per process."""
    global _numpy_blas_libs
    if _numpy_blas_libs is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _numpy_blas_libs = []
            return _numpy_blas_libs
        np_dir = os.path.dirname(os.path.dirname(np.__file__))
        _numpy_blas_libs = [
            lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and "scipy_openblas32" not in lib.filepath
            and lib.filepath.startswith(np_dir) and "torch" not in lib.filepath]
    return _numpy_blas_libs


def numpy_blas_threads() -> int | None:
    """The thread count of NumPy's own BLAS (threadpoolctl), None when it cannot be read."""
    libs = _numpy_blas_controllers()
    return int(libs[0].num_threads) if libs else None


def set_numpy_blas_threads(threads: int) -> None:
    """Set NumPy's own BLAS to ``threads`` threads (threadpoolctl; nothing without it)."""
    for lib in _numpy_blas_controllers():
        if lib.num_threads != threads:
            lib.set_num_threads(threads)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception as e:  # a broken install is worth recording, not crashing on
        return f"import failed: {e}"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


NOISY_CORES = 0.2  # other processes' average CPU use above which a row is flagged


class CpuMeter:
    """CPU time used by *other* processes while this one times: system-wide busy time
    (/proc/stat) minus this process's own, in cores on average. On a shared 2-core machine
    it says how far a row's numbers can be trusted (0 = the machine was ours)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / hz  # user nice system irq softirq
        return time.perf_counter(), busy, v[7] / hz, time.process_time()

    def stop(self) -> dict[str, float] | None:
        end = self._read()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        if wall <= 0:
            return None
        own = end[3] - self._start[3]
        other = (end[1] - self._start[1]) - own
        return {"other_processes_cores": round(max(0.0, other) / wall, 3),
                "steal_cores": round((end[2] - self._start[2]) / wall, 3)}


def _core_build_time() -> str | None:
    try:
        from .. import _core

        mtime = os.path.getmtime(str(_core.__file__))
    except (ImportError, OSError, AttributeError):
        return None
    return _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """CPU, cores, gradchain's ISA / threads / OpenBLAS core, library versions, date."""
    import gradchain as gc

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gradchain": gc.__version__,
        "gradchain_commit": _git_commit(),
        "gradchain_core_built": _core_build_time(),
        "gradchain_isa": gc.get_isa(),
        "gradchain_threads": gc.get_num_threads(),
        "openblas_core": str(gc._core.blas_corename()),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "jax": _version("jax"),
        "env_unset": [v for v in os.environ.get(_UNSET_MARK, "").split(",") if v],
        "env_still_set": [v for v in _OPENBLAS_ENV if v in os.environ],
        "loadavg_start": _loadavg(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def gemm_ceiling(dtype: Any = np.float32, sizes: Sequence[int] = (2048, 4096),
                 repeats: int = 3) -> dict[str, float]:
    """NumPy matmul GFLOP/s at each size (best of ``repeats`` after one warm-up call), and
    ``best``: the machine's GEMM ceiling as this benchmark reports it."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype=dtype)
        np.matmul(a, b, out=c)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[str(n)] = 2.0 * n**3 / best / 1e9
        del a, b, c
    out["best"] = max(out.values())
    return out
