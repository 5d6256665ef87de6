"""The peers: :data:`PEERS` (name -> :class:`PeerInfo`) and :data:`BUILDERS` (``kind -> peer
name -> build(case) -> PeerInstance``), and :data:`THREAD_CONTROL` (peer name -> how the
thread sweep sets its thread count). A new peer is one module here with a class per kind
(``step()``, ``outputs()``), one :data:`PEERS` row and its :data:`BUILDERS` entries (and a
:data:`THREAD_CONTROL` row when its library's thread count can be set at run time).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..cases import Case, Outputs
from ..machine import numpy_blas_threads, set_numpy_blas_threads
from . import gradchain_peer, torch_peer
from .gradchain_peer import _Gradchain
from .jax_peer import _JaxGated, _JaxMLP, _JaxRNN
from .numpy_peer import _NumpyGated, _NumpyMLP, _NumpyRNN
from .torch_peer import _TorchGated, _TorchMLP, _TorchRNN


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
    **{kind: {
        "gradchain": _Gradchain,
        "gradchain-grads": lambda c: _Gradchain(c, report=False),
        "torch": lambda c: _TorchGated(c, report=True),
        "torch-grads": lambda c: _TorchGated(c, report=False),
        "jax": _JaxGated,
        "numpy": _NumpyGated,
    } for kind in ("lstm", "gru")},
}
"""kind -> peer name -> ``build(case) -> PeerInstance``."""


@dataclass(frozen=True)
class ThreadControl:
    """How the thread sweep (``--threads 1 2 ...``) sets a peer's thread count before each of
    its iterations: ``get()`` the current count (None: it cannot be set in this process),
    ``set(n)``. ``own_default``: the peer's default (no count set) is a row of its own,
    as gradchain's is (its runtime may pick threads per pass); otherwise the default is the
    peer's row at the count it had when the run started."""

    library: str
    get: Callable[[], int | None]
    set: Callable[[int], None]
    own_default: bool = False


_GRADCHAIN_THREADS = ThreadControl("gradchain (gc.set_num_threads)", gradchain_peer.get_threads,
                                   gradchain_peer.set_threads, own_default=True)
_TORCH_THREADS = ThreadControl("PyTorch (torch.set_num_threads)", torch_peer.get_threads,
                               torch_peer.set_threads)
_NUMPY_THREADS = ThreadControl("NumPy's BLAS (threadpoolctl)", numpy_blas_threads,
                               set_numpy_blas_threads)
THREAD_CONTROL: dict[str, ThreadControl] = {
    "gradchain": _GRADCHAIN_THREADS,
    "gradchain-grads": _GRADCHAIN_THREADS,
    "torch": _TORCH_THREADS,
    "torch-grads": _TORCH_THREADS,
    "numpy": _NUMPY_THREADS,
}
"""peer name -> :class:`ThreadControl`; a peer without a row (JAX: XLA's pool is sized once,
before its first import) runs once per sweep, on its own threads."""
