"""gradchain: deep MLP and RNN backprop chains in fast C++, with per-layer and
per-timestep gradient reports, for studying and fixing vanishing and exploding
gradients.

    import gradchain as gc
    mlp = gc.MLP([256] + [256] * 64 + [10], activation="tanh", init="xavier_normal")
    loss, rep = mlp.loss_and_grad(x, target, loss="mse")
    print(rep.table())
"""

from __future__ import annotations

import os as _os
import warnings as _warnings

import scipy_openblas32 as _scipy_openblas32  # noqa: F401  (loads OpenBLAS before _core)

from . import _core
from . import data as data
from . import init as init
from . import optim as optim
from . import reference as reference
from . import tasks as tasks
from . import theory as theory
from ._core import NonFiniteError
from .activations import ACTIVATIONS, Activation
from .clip import clip_grad_norm, clip_grad_norm_per_layer, clip_grad_value, grad_norm
from .io import load, save
from .models import MLP, IncompatibleKeys, StateError
from .report import GradReport, RNNGradReport
from .rnn import RNN
from .sweeps import sweep
from .training import History, train

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "GradReport", "History", "data", "optim", "train",
    "IncompatibleKeys", "MLP", "NonFiniteError", "RNN",
    "RNNGradReport",
    "StateError", "tasks", "theory",
    "available_isas", "clip_grad_norm", "clip_grad_norm_per_layer", "clip_grad_value",
    "get_isa", "get_num_threads", "grad_norm", "init", "load", "reference", "save", "set_isa",
    "set_num_threads", "sweep",
]


def __dir__() -> list[str]:
    """The public names: ``__all__``, ``__version__`` and the public submodules (not
    what the package imports for itself, such as ``annotations``)."""
    subs = [k for k, v in globals().items() if not k.startswith("_")
            and getattr(v, "__name__", None) == f"{__name__}.{k}"]
    return sorted({*__all__, "__version__", *subs})


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
