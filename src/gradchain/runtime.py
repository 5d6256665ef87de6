"""Runtime settings of the compiled core: threads and the SIMD kernel variant.

``gradchain`` re-exports these functions (``gc.set_num_threads`` and so on); this module
is their one home. Importing it checks ``OMP_NUM_THREADS`` and ``GRADCHAIN_ISA`` and warns
(RuntimeWarning) when the environment asks for what cannot be had.

Threads: :func:`set_num_threads` is the most threads a pass uses; below it, the core's
thread governor picks each pass's count. A pass uses no more threads than its work feeds,
and on a machine whose cores are busy with other work the governor lowers the count to the
cores this process actually gets (measured from its own threads' CPU time), then tries one
thread more now and then so that the speed comes back when the machine is free again.
:func:`thread_policy` shows what it does; :func:`set_adaptive_threads` turns it off.
Results are bitwise the same for any thread count, so none of this changes a number.
"""

from __future__ import annotations

import os as _os
import warnings as _warnings
from dataclasses import dataclass

from . import _core

__all__ = ["ThreadPolicy", "available_isas", "get_isa", "get_num_threads", "set_adaptive_threads",
           "set_isa", "set_num_threads", "thread_policy"]


def __dir__() -> list[str]:  # the public names, not the imports
    return sorted(__all__)


def set_num_threads(n: int) -> None:
    """The most threads the core's passes use (default: ``OMP_NUM_THREADS``, else every
    processor this process may run on). Results are bitwise identical for any count.

    A pass may use fewer: no more than its work can feed, and, while the thread governor
    finds the machine busy with other work, no more than the cores this process gets
    (:func:`thread_policy`; :func:`set_adaptive_threads` turns that off). Changing the count
    keeps what the governor learnt about the machine: a count it lowered because the cores
    are busy stays lowered (its probes raise it again when they free up); otherwise passes
    may use the new count at once.

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


@dataclass(frozen=True)
class ThreadPolicy:
    """What the thread governor does now (:func:`thread_policy`).

    ``threads``: the setting (:func:`get_num_threads`), the most a pass uses.
    ``allowance``: the most a pass uses now (the setting unless the machine was found busy).
    ``adaptive``: the governor is on (:func:`set_adaptive_threads`).
    ``adapting``: on, and the allowance is below the setting (other work takes cores).
    ``next_probe_s``: while adapting, seconds until a pass may try one thread more (0: the
    next pass big enough may), else None.
    ``regions``, ``starved_regions``: multi-threaded passes measured, and of those the ones
    where a thread got less than 3/4 of the pass's time; ``drops``: times the allowance
    was lowered; ``probes``, ``probe_successes``: passes that tried one thread more, and
    of those the ones that raised the allowance.
    """

    threads: int
    allowance: int
    adaptive: bool
    adapting: bool
    next_probe_s: float | None
    regions: int
    starved_regions: int
    drops: int
    probes: int
    probe_successes: int


def thread_policy() -> ThreadPolicy:
    """The thread governor's state: the setting, the allowance it gives passes now, whether
    it is on and adapting, and its counters (:class:`ThreadPolicy`)."""
    st = _core._governor_state()
    threads = int(_core.get_num_threads())
    adaptive = bool(_core.get_adaptive_threads())
    allowance = min(int(st["allowance"]), threads) if adaptive else threads
    adapting = adaptive and allowance < threads
    next_probe = max(0.0, float(st["next_probe"]) - float(_core._monotonic())) if adapting else None
    return ThreadPolicy(threads=threads, allowance=allowance, adaptive=adaptive,
                        adapting=adapting, next_probe_s=next_probe,
                        regions=int(st["regions"]), starved_regions=int(st["starved_regions"]),
                        drops=int(st["drops"]), probes=int(st["probes"]),
                        probe_successes=int(st["probe_successes"]))


def set_adaptive_threads(on: bool) -> None:
    """Turn the thread governor on (the default) or off. Off, every pass uses the setting
    (:func:`set_num_threads`), or fewer when its work is small, whatever else runs on the
    machine: fixed behaviour, e.g. for timing a given thread count. Turning it on starts it
    afresh (allowance = the setting). Results are the same either way."""
    if not isinstance(on, bool):
        raise TypeError(f"on: expected a bool, got {type(on).__name__}")
    if on and not _core.get_adaptive_threads():
        _core._governor_reset()
    _core.set_adaptive_threads(on)


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
