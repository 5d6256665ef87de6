"""gradchain: deep MLP and RNN backprop chains in fast C++, with per-layer and
per-timestep gradient reports, for studying and fixing vanishing and exploding
gradients.

    import gradchain as gc
    mlp = gc.MLP([256] + [256] * 64 + [10], activation="tanh", init="xavier_normal")
    loss, rep = mlp.loss_and_grad(x, target, loss="mse")
    print(rep.table())
"""

from __future__ import annotations

import scipy_openblas32 as _scipy_openblas32  # noqa: F401  (loads OpenBLAS before _core)

from . import data as data
from . import init as init
from . import optim as optim
from . import reference as reference
from . import runtime as runtime
from . import tasks as tasks
from . import theory as theory
from ._core import NonFiniteError
from .activations import ACTIVATIONS, Activation
from .clip import clip_grad_norm, clip_grad_norm_per_layer, clip_grad_value, grad_norm
from .io import load, save
from .models import MLP, IncompatibleKeys, StateError
from .report import GradReport, RNNGradReport
from .rnn import RNN
from .runtime import available_isas, get_isa, get_num_threads, set_isa, set_num_threads
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
    "set_num_threads", "sweep", "runtime",
]


def __dir__() -> list[str]:
    """The public names: ``__all__``, ``__version__`` and the public submodules (not
    what the package imports for itself, such as ``annotations``)."""
    subs = [k for k, v in globals().items() if not k.startswith("_")
            and getattr(v, "__name__", None) == f"{__name__}.{k}"]
    return sorted({*__all__, "__version__", *subs})
