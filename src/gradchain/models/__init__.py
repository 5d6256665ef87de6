"""The models and their registry: :class:`MLP` (a deep chain of Linear -> [Norm] ->
activation layers), :class:`RNN` (a one-layer vanilla RNN) and the gated cells
:class:`LSTM` and :class:`GRU`, all :class:`Model` subclasses registered in
:data:`MODELS` by kind.

    gradchain.models.MODELS    # {"mlp": MLP, "rnn": RNN, "lstm": LSTM, "gru": GRU}
    gradchain.models.get("rnn")                # the class of a kind ("RNN" works too)
    gradchain.models.from_config(m.config())   # a new model of the same configuration

``gradchain.models.base`` holds what every model shares and the protocol the rest of
the package uses instead of asking which kind it holds (build from a config, the
tensors a config implies, the report's axis, the data axes, the flat buffers and the
lock, and ``Model.lab``: what ``gc.sweep``, ``gradchain probe`` and ``gc.theory`` need).
A new kind is one module in this folder holding a ``@register``-ed ``Model`` subclass:
the package imports every module here.
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

from .._memory import require as require  # the models look it up here (base._hooks)
from .._validate import first_nonfinite as first_nonfinite  # likewise
from ..losses import check_target as check_target  # its home is gradchain.losses now
from . import base as base
from .base import (
    DEFAULT_KIND,
    MODELS,
    ConfigReader,
    DataSet,
    GradKernels,
    IncompatibleKeys,
    Lab,
    Model,
    ProbeFlag,
    ProbeShapes,
    ReportAxis,
    StateError,
    check_not_running,
    config_kinds,
    describe_kinds,
    from_config,
    get,
    locked,
    no_forward_message,
    register,
    tracks_forward,
)
from .base import _Chain as _Chain
from .base import _check_seed as _check_seed
from .base import _core_message as _core_message
from .base import _custom_callback as _custom_callback
from .mlp import _NORMS as _NORMS
from .mlp import MLP, NORMS
from .mlp import _residual_flags as _residual_flags
from .mlp import _short_sizes as _short_sizes
from .mlp import _sizes as _sizes
from .rnn import RNN

__all__ = [
    "DEFAULT_KIND", "ConfigReader", "DataSet", "GRU", "GradKernels", "IncompatibleKeys", "LSTM",
    "Lab", "MLP",
    "MODELS", "Model", "NORMS", "ProbeFlag", "ProbeShapes", "RNN", "ReportAxis", "StateError",
    "check_not_running", "check_target", "config_kinds", "describe_kinds", "from_config",
    "get", "locked", "no_forward_message", "register", "tracks_forward",
]

# every other module of this folder: a model kind that registers itself
for _info in _pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in ("base", "mlp", "rnn"):
        _importlib.import_module(f"{__name__}.{_info.name}")

from .gated import GRU, LSTM  # noqa: E402  (imported by the loop above, after MLP and RNN)


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)
