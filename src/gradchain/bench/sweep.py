"""The thread sweep (``--threads 1 2 4 ...``): which rows a run times. A :class:`Variant` is
one peer at one thread setting; :func:`plan` lists them.

One count (``--threads N``, or none) is the plain run: one row per peer, every peer at that
count (the row keyed by the peer's name). Several counts are a sweep: each peer with a
:data:`~.peers.THREAD_CONTROL` row at each count (keys ``"<peer>@<n>"``), plus its default
(keyed by the peer's name): gradchain's default is a row of its own (what a user gets with no
count set), another peer's default is its row at the count it had when the run started;
a peer without thread control (JAX) runs once, on its own threads. All rows of a workload
are timed round-robin together, so that every count meets the same load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .peers import PEERS, THREAD_CONTROL, ThreadControl


@dataclass(frozen=True)
class Variant:
    """One row of a workload's table: ``peer`` run at ``threads`` threads.

    ``key``: the row's name (the peer's name for its default, or the plain run's row;
    ``"<peer>@<n>"`` in a sweep). ``default``: the peer's own default setting.
    ``control``: set before each of its iterations (sweep rows), or None (the peer keeps
    what its set-up chose). ``base``: the key of the gradchain row its ratio is taken
    against (gradchain at the same count where the sweep has one).
    """

    key: str
    peer: str
    threads: int
    label: str
    default: bool
    control: ThreadControl | None
    base: str = "gradchain"

    def apply(self) -> None:
        """Set this row's thread count (sweep rows; nothing for the others)."""
        if self.control is not None:
            self.control.set(self.threads)


def _plural(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def thread_counts(threads: int | Sequence[int] | None) -> list[int] | None:
    """``--threads``' counts, validated (each >= 1) and without repeats; None: none given."""
    if threads is None:
        return None
    counts = [threads] if isinstance(threads, int) else list(threads)
    if not counts:
        return None
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads must be ints >= 1, got {n!r}")
    return list(dict.fromkeys(counts))


def controls(names: Sequence[str]) -> dict[str, ThreadControl]:
    """The thread controls of the (installed) peers ``names`` that can set threads here."""
    out: dict[str, ThreadControl] = {}
    for n in names:
        ctl = THREAD_CONTROL.get(n)
        if ctl is None or PEERS[n].missing():
            continue
        try:
            if ctl.get() is None:
                continue
        except Exception:  # a library that cannot be imported or asked: no control
            continue
        out[n] = ctl
    return out


def plan(names: Sequence[str], counts: Sequence[int] | None, default_threads: int,
         found: Mapping[str, int], ctls: Mapping[str, ThreadControl]) -> list[Variant]:
    """The rows of one workload. ``names``: the peers (gradchain first); ``counts``: the
    sweep's thread counts (None or one count: the plain run at ``default_threads``, which
    then is that count); ``found``: each controlled peer's count when the run started (its
    default); ``ctls``: the controlled peers."""
    if counts is None or len(counts) == 1:
        t = default_threads
        return [Variant(n, n, t, PEERS[n].label, default=counts is None, control=None)
                for n in names]
    out: list[Variant] = []
    for n in names:
        label = PEERS[n].label
        ctl = ctls.get(n)
        if ctl is None:
            out.append(Variant(n, n, default_threads, f"{label}, own threads", default=True,
                               control=None))
            continue
        d = found[n]
        if ctl.own_default:
            out.append(Variant(n, n, d, f"{label}, default ({_plural(d)})", default=True,
                               control=ctl))
        else:
            out.append(Variant(n, n, d, f"{label}, {_plural(d)} (default)", default=True,
                               control=ctl, base=f"gradchain@{d}" if d in counts else "gradchain"))
        for c in counts:
            if not ctl.own_default and c == d:
                continue  # that row is the default one
            out.append(Variant(f"{n}@{c}", n, c, f"{label}, {_plural(c)}", default=False,
                               control=ctl, base=f"gradchain@{c}"))
    return out
