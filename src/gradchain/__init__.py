"""gradchain: deep MLP and RNN backprop chains in fast C++, with per-layer and
per-timestep gradient reports, for studying and fixing vanishing and exploding
gradients.

    import gradchain as gc
    mlp = gc.MLP([256] + [256] * 64 + [10], activation="tanh", init="xavier_normal")
    loss, rep = mlp.loss_and_grad(x, target, loss="mse")
    print(rep.table())

This file only re-exports. Every public name is loaded on first use (PEP 562), from
the one module that is its home (``_LAZY`` below), so ``import gradchain.reference``
loads nothing else of the package and ``import gradchain`` stays light. The modules
stand on three floors (docs/API.md, "Floors"): the core API, the research lab and the
benchmark harness; ``gradchain.reference`` stands apart, the independent NumPy oracle.
"""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import TYPE_CHECKING

import scipy_openblas32 as _scipy_openblas32  # noqa: F401  (loads OpenBLAS before _core)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "GradReport", "History", "data", "optim", "train",
    "IncompatibleKeys", "MLP", "NonFiniteError", "RNN", "LSTM", "GRU",
    "RNNGradReport", "GatedGradReport",
    "StateError", "tasks", "theory",
    "available_isas", "clip_grad_norm", "clip_grad_norm_per_layer", "clip_grad_value",
    "clip_per_example", "NonFiniteOrigin",
    "get_isa", "get_num_threads", "grad_norm", "init", "jacobian", "jacobian_spectrum",
    "load", "reference", "save", "set_isa",
    "set_num_threads", "sweep", "runtime", "set_adaptive_threads", "thread_policy",
]

# The submodules that ``dir(gradchain)`` has always shown (what the package loaded for
# itself when it imported everything eagerly), loaded on first use.
_SUBMODULES = (
    "activations", "clip", "data", "init", "io", "linearize", "losses", "models", "optim",
    "reference", "report", "rnn", "runtime", "spectrum", "sweeps", "tasks", "theory",
    "training",
)
# Private modules reachable as attributes, as before (``gc._core`` in tests and tools).
_PRIVATE = ("_core", "_memory", "_plotting", "_validate")

#: Every lazily loaded name -> the submodule that is its home (a submodule maps to itself).
_LAZY: dict[str, str] = {
    **{m: m for m in (*_SUBMODULES, *_PRIVATE)},
    # core: models, activations, report, clipping, io, runtime settings
    "MLP": "models", "IncompatibleKeys": "models", "StateError": "models",
    "RNN": "models", "LSTM": "models", "GRU": "models",
    "ACTIVATIONS": "activations", "Activation": "activations",
    "GradReport": "report", "RNNGradReport": "report", "GatedGradReport": "report",
    "NonFiniteError": "_core",
    "clip_grad_norm": "clip", "clip_grad_norm_per_layer": "clip", "clip_grad_value": "clip",
    "clip_per_example": "clip", "grad_norm": "clip", "NonFiniteOrigin": "report",
    "load": "io", "save": "io",
    "available_isas": "runtime", "get_isa": "runtime", "get_num_threads": "runtime",
    "set_isa": "runtime", "set_num_threads": "runtime", "set_adaptive_threads": "runtime",
    "thread_policy": "runtime",
    # lab: training and sweeps
    "History": "training", "train": "training",
    "sweep": "sweeps",
    # lab: the input-output Jacobian and its spectrum
    "jacobian": "spectrum", "jacobian_spectrum": "spectrum",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the names _LAZY loads at run time
    from . import _core as _core
    from . import _memory as _memory
    from . import _plotting as _plotting
    from . import _validate as _validate
    from . import activations as activations
    from . import clip as clip
    from . import data as data
    from . import init as init
    from . import io as io
    from . import linearize as linearize
    from . import losses as losses
    from . import models as models
    from . import optim as optim
    from . import reference as reference
    from . import report as report
    from . import rnn as rnn
    from . import runtime as runtime
    from . import spectrum as spectrum
    from . import sweeps as sweeps
    from . import tasks as tasks
    from . import theory as theory
    from . import training as training
    from ._core import NonFiniteError as NonFiniteError
    from .activations import ACTIVATIONS as ACTIVATIONS
    from .activations import Activation as Activation
    from .clip import clip_grad_norm as clip_grad_norm
    from .clip import clip_grad_norm_per_layer as clip_grad_norm_per_layer
    from .clip import clip_grad_value as clip_grad_value
    from .clip import clip_per_example as clip_per_example
    from .clip import grad_norm as grad_norm
    from .io import load as load
    from .io import save as save
    from .models import GRU as GRU
    from .models import LSTM as LSTM
    from .models import MLP as MLP
    from .models import RNN as RNN
    from .models import IncompatibleKeys as IncompatibleKeys
    from .models import StateError as StateError
    from .report import GatedGradReport as GatedGradReport
    from .report import GradReport as GradReport
    from .report import NonFiniteOrigin as NonFiniteOrigin
    from .report import RNNGradReport as RNNGradReport
    from .runtime import available_isas as available_isas
    from .runtime import get_isa as get_isa
    from .runtime import get_num_threads as get_num_threads
    from .runtime import set_adaptive_threads as set_adaptive_threads
    from .runtime import set_isa as set_isa
    from .runtime import set_num_threads as set_num_threads
    from .runtime import thread_policy as thread_policy
    from .spectrum import jacobian as jacobian
    from .spectrum import jacobian_spectrum as jacobian_spectrum
    from .sweeps import sweep as sweep
    from .training import History as History
    from .training import train as train


def _load(home: str) -> object:
    """The submodule ``home`` of the package, imported if it is not yet."""
    # __import__ rather than importlib.import_module: a warning a module gives while it
    # is first imported (stacklevel=2) then points here, in gradchain, not into importlib
    __import__(f"{__name__}.{home}")
    return _sys.modules[f"{__name__}.{home}"]


def __getattr__(name: str) -> object:
    """Load a public name from its home module on first use (PEP 562) and keep it."""
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _load(home)
    value = module if home == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names: ``__all__``, ``__version__`` and the public submodules (those
    of ``_SUBMODULES`` and any other one loaded since), not what the package imports for
    itself (such as ``annotations``)."""
    loaded = [k for k, v in globals().items() if not k.startswith("_")
              and getattr(v, "__name__", None) == f"{__name__}.{k}"]
    return sorted({*__all__, "__version__", *_SUBMODULES, *loaded})


# The import-time environment checks (gradchain.runtime warns, RuntimeWarning, when
# OMP_NUM_THREADS or GRADCHAIN_ISA asks for what the core cannot give) need the compiled
# core, so they run on ``import gradchain`` only when the environment could need them:
# a thread count above 16 (the core's limit is never below 16) or any GRADCHAIN_ISA.
# Otherwise nothing of the package is loaded here.
_threads = _os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
if _os.environ.get("GRADCHAIN_ISA") or (_threads.isdigit() and int(_threads) > 16):
    _load("runtime")  # runs the checks, with the core's own values
del _threads
