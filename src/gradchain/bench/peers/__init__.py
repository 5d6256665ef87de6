"""The peers: :data:`PEERS` (name -> :class:`PeerInfo`) and :data:`BUILDERS` (``kind -> peer
name -> build(case) -> PeerInstance``). A new peer is one module here with a class
per kind (``step()``, ``outputs()``), one :data:`PEERS` row and its :data:`BUILDERS`
entries.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..cases import Case, Outputs
from .gradchain_peer import _Gradchain
from .jax_peer import _JaxMLP, _JaxRNN
from .numpy_peer import _NumpyMLP, _NumpyRNN
from .torch_peer import _TorchMLP, _TorchRNN


class PeerInstance(Protocol):
    """A peer set up for one workload."""

    def step(self) -> None:
        """One timed iteration (returns when the work is done)."""

    def outputs(self) -> Outputs:
        """The results of the last step, converted to NumPy (not timed)."""


@dataclass(frozen=True)
class PeerInfo:
    name: str
    label: str
    requires: tuple[str, ...] = ()  # modules that must be importable

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


PEERS: dict[str, PeerInfo] = {
    p.name: p
    for p in (
        PeerInfo("gradchain", "gradchain"),
        PeerInfo("gradchain-grads", "gradchain, grads only"),
        PeerInfo("torch", "PyTorch eager + report", ("torch",)),
        PeerInfo("torch-grads", "PyTorch eager, grads only", ("torch",)),
        PeerInfo("jax", "JAX jit", ("jax",)),
        PeerInfo("numpy", "NumPy (gradchain.reference)"),
    )
}
"""Peers by name; ``gradchain`` is always run (it is the reference of the checks)."""



Builder = Callable[[Case], PeerInstance]
BUILDERS: dict[str, dict[str, Builder]] = {
    "mlp": {
        "gradchain": _Gradchain,
        "gradchain-grads": lambda c: _Gradchain(c, report=False),
        "torch": lambda c: _TorchMLP(c, report=True),
        "torch-grads": lambda c: _TorchMLP(c, report=False),
        "jax": _JaxMLP,
        "numpy": _NumpyMLP,
    },
    "rnn": {
        "gradchain": _Gradchain,
        "gradchain-grads": lambda c: _Gradchain(c, report=False),
        "torch": lambda c: _TorchRNN(c, report=True),
        "torch-grads": lambda c: _TorchRNN(c, report=False),
        "jax": _JaxRNN,
        "numpy": _NumpyRNN,
    },
}
"""kind -> peer name -> ``build(case) -> PeerInstance``."""
