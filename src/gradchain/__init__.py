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
    """Threads used by the core's OpenMP regions (default: ``OMP_NUM_THREADS`` or all cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
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


_env_isa = _os.environ.get("GRADCHAIN_ISA")
if _env_isa and _env_isa != get_isa():
    _warnings.warn(
        f"GRADCHAIN_ISA={_env_isa!r} cannot run here (available: {available_isas()}); "
        f"using {get_isa()!r}",
        RuntimeWarning,
        stacklevel=2,
    )
