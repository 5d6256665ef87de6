"""A busy machine on demand (``--contended N``): :class:`Competitors` starts N busy-loop
processes, waits until each one is running, and stops them again -- only the processes it
started, by their PIDs -- on every way out of the benchmark: the ``with`` block's end, an
exception, ``KeyboardInterrupt``, ``SIGTERM`` / ``SIGHUP`` of the benchmark (a signal guard
stops them, then exits as the signal would), the interpreter's exit (``atexit``), and, on
Linux, the benchmark's death by ``SIGKILL`` (each competitor asks the kernel for
``SIGKILL`` when its parent dies, and checks its parent itself every few milliseconds).

A competitor is a pure-Python busy loop in its own ``python -c`` process (started with
``subprocess``, not ``fork``, so no thread pool of the benchmark is copied): what a
browser tab, another training run or a CI neighbour does to one core.

A signal's exception can be lost: Python runs the handler in whatever frame is current, and
an exception raised inside a garbage-collector callback (JAX registers one), a ``__del__`` or
a weakref callback is printed as "Exception ignored in ..." and dropped, so the run would
go on. :func:`interrupt_guard` (around :func:`~.timing.run`) remembers every SIGINT and
guarded signal as well as acting on it, and :func:`check_interrupt`, called at the top of
every timing round, raises it again where it was lost.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# The competitor: report "ready", then spin; leave when the parent is gone. PR_SET_PDEATHSIG
# (prctl option 1) makes the kernel send SIGKILL (9) when the parent dies; the getppid()
# check covers systems without prctl and the window before it was set.
_BUSY_LOOP = """\
import os, sys
parent = int(sys.argv[1])
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)
except Exception:
    pass
if os.getppid() != parent:
    raise SystemExit(0)
sys.stdout.write("ready\\n")
sys.stdout.flush()
n = 0
while True:
    n += 1
    if n >= 200000:
        n = 0
        if os.getppid() != parent:
            break
"""

_GUARDED_SIGNALS = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s))
_live: list[Competitors] = []  # started and not yet stopped, for the guards
_live_lock = threading.RLock()
_previous: dict[int, Any] = {}  # signal -> handler before the guard, while the guard is on
_pending: list[int] = []  # signals delivered under interrupt_guard (their exception may be lost)
_sigint_previous: list[Any] = []  # the SIGINT handler interrupt_guard wraps, while it is on


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (Linux ``/proc/<pid>/stat``), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


def stop_all() -> None:
    """Stop every competitor this process started and has not stopped yet (the guards'
    action; safe to call at any time, and more than once)."""
    with _live_lock:
        live = list(_live)
    for c in live:
        c.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    stop_all()
    prev = _previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:  # the default action of SIGTERM / SIGHUP: exit
        raise SystemExit(128 + signum)


def _install_guard() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still guards
    for s in _GUARDED_SIGNALS:
        if s not in _previous:
            prev = signal.getsignal(s)
            if prev is _on_signal or prev == signal.SIG_IGN:
                continue  # guarded already, or the signal is ignored: nothing to end early
            _previous[s] = prev
            signal.signal(s, _on_signal)


def _remove_guard() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for s, prev in list(_previous.items()):
        if signal.getsignal(s) is _on_signal:
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)
        del _previous[s]


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)
    prev = _sigint_previous[-1] if _sigint_previous else signal.default_int_handler
    if callable(prev):
        prev(signum, frame)  # the default: raise KeyboardInterrupt
    else:
        raise KeyboardInterrupt


@contextmanager
def interrupt_guard() -> Iterator[None]:
    """For the ``with`` block: SIGINT (when its handler is a Python function, e.g. the
    default one that raises ``KeyboardInterrupt``) and the competitors' guarded signals are
    remembered as well as acted on, so that :func:`check_interrupt` raises one whose
    exception Python dropped. Only from the main thread (elsewhere it does nothing)."""
    main = threading.current_thread() is threading.main_thread()
    wrap = main and callable(signal.getsignal(signal.SIGINT)) and \
        signal.getsignal(signal.SIGINT) is not _on_sigint
    if wrap:
        _sigint_previous.append(signal.getsignal(signal.SIGINT))
        signal.signal(signal.SIGINT, _on_sigint)
    if main:
        _pending.clear()
    try:
        yield
    finally:
        if wrap:
            prev = _sigint_previous.pop()
            if signal.getsignal(signal.SIGINT) is _on_sigint:
                signal.signal(signal.SIGINT, prev)
        if main:
            _pending.clear()


def check_interrupt() -> None:
    """Raise again a signal delivered under :func:`interrupt_guard` whose exception was
    dropped (the run is still going): ``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 +
    signum)`` for SIGTERM / SIGHUP, the competitors stopped first. Does nothing otherwise."""
    if not _pending:
        return
    signum = _pending[0]
    _pending.clear()
    stop_all()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


atexit.register(stop_all)


class Competitors:
    """``n`` busy-loop processes: ``with Competitors(n) as c: ...`` (or :meth:`start` /
    :meth:`stop`). :attr:`pids` names them; :meth:`stop` returns the load they made
    (:meth:`load`).

    ``start`` returns once every competitor has reported that it is spinning and has used
    CPU time (at most ``ready_timeout`` seconds; a ``RuntimeError`` otherwise, with the
    ones already started stopped). ``stop`` sends ``SIGTERM``, waits up to
    ``stop_timeout`` seconds, then ``SIGKILL``s and reaps whatever is left.
    """

    def __init__(self, n: int, *, ready_timeout: float = 30.0, stop_timeout: float = 5.0,
                 spawn: Callable[..., subprocess.Popen[str]] | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of competitors must be an int >= 0, got {n!r}")
        self.n = n
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._spawn = spawn or subprocess.Popen
        self._procs: list[subprocess.Popen[str]] = []
        self._cpu0: list[float | None] = []
        self._t0 = 0.0
        self._load: dict[str, Any] | None = None

    @property
    def pids(self) -> list[int]:
        """The PIDs of the competitors started (all of them, also once stopped)."""
        return [p.pid for p in self._procs]

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self._procs)

    def start(self) -> Competitors:
        """Start the competitors and wait until each one runs."""
        if self._procs:
            raise RuntimeError("these competitors were started already")
        if self.n == 0:
            return self
        with _live_lock:
            _live.append(self)
        _install_guard()
        try:
            for _ in range(self.n):
                self._procs.append(self._spawn(
                    [sys.executable, "-I", "-S", "-c", _BUSY_LOOP, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True, close_fds=True,
                    start_new_session=True))  # a terminal's Ctrl-C is the benchmark's to handle
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._t0 = time.perf_counter()
        self._cpu0 = [_cpu_seconds(p.pid) for p in self._procs]
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(self._procs)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(waiting)} busy-loop competitor(s) did not start "
                                   f"within {self.ready_timeout:g} s")
            for p in waiting:
                if p.poll() is not None:
                    raise RuntimeError(f"a busy-loop competitor (PID {p.pid}) exited with "
                                       f"status {p.returncode} before it started spinning")
            ready, _, _ = select.select([p.stdout for p in waiting], [], [], min(left, 0.1))
            for p in list(waiting):
                if p.stdout in ready:
                    assert p.stdout is not None
                    if p.stdout.readline().strip() == "ready":
                        p.stdout.close()
                        waiting.remove(p)
        # "ready" is printed just before the loop: wait until each has used CPU time too
        while time.monotonic() < deadline:
            cpu = [_cpu_seconds(p.pid) for p in self._procs]
            if all(c is None or c > 0 for c in cpu):
                return
            time.sleep(0.005)
        raise RuntimeError("the busy-loop competitors did not start using CPU time within "
                           f"{self.ready_timeout:g} s")

    def cpu_seconds(self) -> float | None:
        """The CPU time all competitors have used so far (None where unreadable)."""
        used = [_cpu_seconds(p.pid) for p in self._procs]
        return None if not used or any(u is None for u in used) else sum(
            u for u in used if u is not None)

    def load(self) -> dict[str, Any]:
        """How many competitors ran and the CPU they used between :meth:`start` and now
        (or :meth:`stop`): ``cores`` is their CPU time over the wall time, summed over
        the competitors (None where ``/proc`` cannot be read)."""
        if self._load is not None:
            return dict(self._load)
        wall = time.perf_counter() - self._t0 if self._t0 else 0.0
        used = [(c1 - c0) if (c0 is not None and c1 is not None) else None
                for c0, c1 in zip(self._cpu0, (_cpu_seconds(p.pid) for p in self._procs),
                                  strict=False)]
        known = [u for u in used if u is not None]
        cores = (sum(known) / wall) if (wall > 0 and known and len(known) == len(used)) else None
        return {"competitors": self.n, "pids": self.pids, "wall_s": round(wall, 3),
                "cores": None if cores is None else round(cores, 3),
                "per_competitor_cores": [None if u is None or wall <= 0 else round(u / wall, 3)
                                         for u in used]}

    def stop(self) -> dict[str, Any]:
        """Stop and reap every competitor (SIGTERM, wait, SIGKILL); idempotent. Returns
        :meth:`load` as measured just before they were stopped."""
        with _live_lock:
            if self._load is None and self._procs and self._t0:
                self._load = self.load()
            procs = self._procs
            for p in procs:
                if p.poll() is None:
                    try:
                        p.terminate()
                    except OSError:
                        pass
            deadline = time.monotonic() + self.stop_timeout
            for p in procs:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    try:
                        p.kill()
                    except OSError:
                        pass
                    try:
                        p.wait(timeout=self.stop_timeout)
                    except subprocess.TimeoutExpired:
                        pass
                if p.stdout is not None and not p.stdout.closed:
                    p.stdout.close()
            if self in _live:
                _live.remove(self)
            if not _live:
                _remove_guard()
        return self.load() if self._load is None else dict(self._load)

    def __enter__(self) -> Competitors:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
