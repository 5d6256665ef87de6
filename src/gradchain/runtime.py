"""Runtime settings of the compiled core: threads and the SIMD kernel variant.

``gradchain`` re-exports these functions (``gc.set_num_threads`` and so on); this module
is their one home. Importing it checks ``OMP_NUM_THREADS`` and ``GRADCHAIN_ISA`` and warns
(RuntimeWarning) when the environment asks for what cannot be had.
"""

from __future__ import annotations

import os as _os
import warnings as _warnings

from . import _core

__all__ = ["available_isas", "get_isa", "get_num_threads", "set_isa", "set_num_threads"]


def __dir__() -> list[str]:  # the public names, not the imports
    return sorted(__all__)


def set_num_threads(n: int) -> None:
    """Threads used by the core's OpenMP regions (default: ``OMP_NUM_THREADS``, else every
    processor this process may run on). Results are bitwise identical for any count.

    ``n`` must be in ``[1, max(16, 4 * processors)]``: more threads than processors never
    makes a pass faster (every region is compute-bound, and a layer product splits into at
    most 16 blocks) and each thread costs a stack and a packing buffer, so a larger count
    is a ``ValueError``. An ``OMP_NUM_THREADS`` above that bound is replaced at import by
    the processor count, with a ``RuntimeWarning``.

    After ``fork``: the OpenMP runtime's thread pool does not survive ``os.fork()``. In a
    process forked (``os.fork``, ``multiprocessing``'s "fork" start method, Linux's default
    ``ProcessPoolExecutor``) after gradchain had run a pass on more than one thread, every
    pass runs on one thread, automatically and with the same results; there
    ``get_num_threads()`` reports 1 and ``set_num_threads`` only records its value: it
    cannot start threads again in that process (more would wait for ever for the parent's
    threads). Worker processes that should each use several threads need the "spawn" or
    "forkserver" start method (what ``gc.sweep``'s own process pool uses).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    cap = int(_core.max_num_threads())
    if not 1 <= n <= cap:
        raise ValueError(f"n: expected an int in [1, {cap}] (the limit: 4 threads per "
                         f"processor, never below 16), got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the core's passes use (1 in a process forked after threaded
    passes: see :func:`set_num_threads`)."""
    return int(_core.get_num_threads())


def get_isa() -> str:
    """The active SIMD kernel variant: ``"avx512"``, ``"avx2"`` or ``"scalar"``."""
    return str(_core.get_isa())


def set_isa(name: str) -> None:
    """Switch the kernel variant (``GRADCHAIN_ISA`` sets it at start-up); ValueError if
    this CPU cannot run it."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _core.set_isa(name)


def available_isas() -> list[str]:
    """Kernel variants this CPU can run, best first."""
    return list(_core.available_isas())


_env_threads = _os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
if _env_threads.isdigit() and int(_env_threads) > _core.max_num_threads():
    _warnings.warn(
        f"OMP_NUM_THREADS={_env_threads} is more than gradchain's limit of "
        f"{_core.max_num_threads()} threads (4 per processor, never below 16); using "
        f"{get_num_threads()} (gc.set_num_threads changes it)",
        RuntimeWarning,
        stacklevel=2,
    )

_env_isa = _os.environ.get("GRADCHAIN_ISA")
if _env_isa and _env_isa != get_isa():
    _warnings.warn(
        f"GRADCHAIN_ISA={_env_isa!r} cannot run here (available: {available_isas()}); "
        f"using {get_isa()!r}",
        RuntimeWarning,
        stacklevel=2,
    )
