"""Type stubs for gradchain's compiled core (internal: use the gradchain package)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

# The tables of cpp/include/gradchain/activation_list.h and norm_list.h, by name.
ACTIVATION_IDS: dict[str, int]  # every row, plus "custom" (the callback slot, last)
ACTIVATION_SELECTS: dict[str, bool]  # the row's kink rule: backward selects, not multiplies
ACTIVATION_NUM_PARAMS: dict[str, int]  # how many of p0, p1 the row reads
NORM_IDS: dict[str, int]  # the MLP's norm kinds: {"none": 0, "batch": 1, "layer": 2}

class NonFiniteError(RuntimeError): ...

class _Chain:
    """What the MLP and RNN chains share (bind_shared in the bindings)."""

    @property
    def has_forward(self) -> bool: ...
    @property
    def forward_batch(self) -> int: ...
    def invalidate(self) -> None: ...
    def set_custom_activation(
        self, fn: Callable[[npt.NDArray[Any]], tuple[npt.NDArray[Any], npt.NDArray[Any]]]
    ) -> None: ...
    def tensors(self) -> list[tuple[str, int, tuple[int, ...], int]]: ...
    def param_array(self) -> npt.NDArray[Any]: ...
    def grad_array(self) -> npt.NDArray[Any]: ...
    def clip_grad_norm(self, max_norm: float, error_if_nonfinite: bool) -> float: ...
    def clip_grad_value(self, v: float) -> None: ...
    def clip_grad_norm_per_tensor(self, max_norm: float) -> npt.NDArray[np.float64]: ...
    def grad_norms(self) -> npt.NDArray[np.float64]: ...

class _MlpChain(_Chain):
    def __init__(
        self,
        sizes: list[int],
        act: int,
        p0: float,
        p1: float,
        norm: int,
        bias: bool,
        residual: list[bool],
        residual_scale: float,
        eps: float,
        momentum: float,
    ) -> None: ...
    @property
    def num_hidden(self) -> int: ...
    @property
    def forward_count(self) -> int: ...
    training: bool
    health_threshold: float
    forensics: bool
    def buffer_array(self) -> npt.NDArray[Any]: ...
    def pass_bytes(self, batch: int) -> int:
        """Bytes a pass over ``batch`` rows would allocate now (workspace, packing scratch)."""
    def forward(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]: ...
    def backward(
        self,
        grad_output: npt.NDArray[Any],
        accumulate: bool = False,
        report: bool = True,
        per_example: bool = False,
    ) -> tuple[dict[str, Any], npt.NDArray[Any]]: ...
    def linearize(
        self, x: npt.NDArray[Any], forward_only: bool = False, keep_pre: bool = False,
        keep_y: bool = False,
    ) -> tuple[_MlpLinear, npt.NDArray[Any] | None, npt.NDArray[Any] | None]:
        """The chain linearised at x (B, in): (handle, pre-activations (B * sum h_l,) or
        None, y (B, out) or None); the saved forward pass and the gradients are left alone."""

class _MlpLinear:
    """An MLP linearised at given inputs (cpp/include/gradchain/jacobian.h)."""

    @property
    def batch(self) -> int: ...
    @property
    def forward_only(self) -> bool: ...
    def jvp(
        self, tangents: npt.NDArray[Any], record: list[int] = ...
    ) -> tuple[npt.NDArray[Any], dict[int, npt.NDArray[Any]]]:
        """Forward mode: tangents (R, in) -> (tangents of y (R, out), {l: of a_l (R, h_l)})."""
    def vjp(
        self, cotangents: npt.NDArray[Any], want_dx: bool = True
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any] | None]:
        """Reverse mode: cotangents (R, out) -> (row sums of squares (L+1, R) of the
        cotangents of a_0..a_L, the cotangents of x (R, in) or None)."""

class MlpLinearF32(_MlpLinear): ...
class MlpLinearF64(_MlpLinear): ...

class MlpChainF32(_MlpChain): ...
class MlpChainF64(_MlpChain): ...

class _RnnChain(_Chain):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        act: int,
        p0: float,
        p1: float,
        bias: bool,
    ) -> None: ...
    health_threshold: float
    forensics: bool
    example_path: int
    """dW's and per_example's path: 0 by the shape (dW as the sum of the examples' own
    gradients on long sequences, else merged GEMMs and the norms by the flop count), 1
    Gram matrices, 2 per-example gradients (both: merged dW), 3 always dW as the
    examples' sum. Applies with per_example=False too: dW never depends on it."""
    example_tensors: bool
    def replicate_batch(self, n: int) -> None:
        """The saved forward over ``(T, B)`` becomes that of ``(T, n*B)``, the batch
        repeated ``n`` times (probe-major)."""
    """per_example's tensor norms (False: the steps' ``||dL/dh_t||`` per example only)."""
    @property
    def forward_steps(self) -> int: ...
    def pass_bytes(self, steps: int, batch: int) -> int:
        """Bytes a pass over ``(steps, batch)`` would allocate now."""
    def forward(
        self, x: npt.NDArray[Any], h0: npt.NDArray[Any] | None = None
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]: ...
    def backward(
        self,
        grad_hs: npt.NDArray[Any] | None = None,
        grad_ys: npt.NDArray[Any] | None = None,
        accumulate: bool = False,
        report: bool = True,
        per_example: bool = False,
    ) -> tuple[dict[str, Any], npt.NDArray[Any], npt.NDArray[Any]]: ...

class RnnChainF32(_RnnChain): ...
class RnnChainF64(_RnnChain): ...

class _GatedChain(_Chain):
    """The LSTM (cell 0) and GRU (cell 1) chains (cpp/include/gradchain/gated.h)."""

    def __init__(
        self, cell: int, input_size: int, hidden_size: int, output_size: int, bias: bool
    ) -> None: ...
    forensics: bool
    @property
    def gates(self) -> int: ...
    @property
    def forward_steps(self) -> int: ...
    def pass_bytes(self, steps: int, batch: int) -> int:
        """Bytes a pass over ``(steps, batch)`` would allocate now."""
    def forward(
        self,
        x: npt.NDArray[Any],
        h0: npt.NDArray[Any] | None = None,
        c0: npt.NDArray[Any] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None, npt.NDArray[Any] | None]: ...
    def backward(
        self,
        grad_hs: npt.NDArray[Any] | None = None,
        grad_ys: npt.NDArray[Any] | None = None,
        accumulate: bool = False,
        report: bool = True,
        per_example: bool = False,
    ) -> tuple[
        dict[str, Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None
    ]: ...
    example_path: int
    """dW's and per_example's path, as the RNN chain's (the gated cells: 0 keeps the merged
    dW GEMMs)."""

class GatedChainF32(_GatedChain): ...
class GatedChainF64(_GatedChain): ...

def act_eval(
    act: int, p0: float, p1: float, x: npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def max_num_threads() -> int: ...
def get_adaptive_threads() -> bool: ...
def set_adaptive_threads(on: bool) -> None: ...
def _governor_state() -> dict[str, Any]: ...
def _monotonic() -> float: ...
def _governor_reset() -> None: ...
def _governor_params() -> dict[str, Any]: ...
def _governor_force(allowance: int, probe_after: float, hold: bool = False) -> None: ...
def _governor_force_bail(k: int) -> None: ...

class _GovernorSim:
    """The governor's policy alone, on the caller's clock (tests)."""
    def __init__(self, setting: int) -> None: ...
    def threads(self, work_cap: int, now: float) -> tuple[int, bool]: ...
    def learn(
        self,
        nt: int,
        probe: bool,
        wall: float,
        cpu: list[float],
        now: float,
        preempted: list[bool] | None = None,
    ) -> None: ...
    def state(self) -> dict[str, Any]: ...
def forked_single_threaded() -> bool: ...
def _panel_gemm() -> bool: ...
def _set_panel_gemm(on: bool) -> None: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def available_isas() -> list[str]: ...
def blas_corename() -> str: ...
def combine_norms(norms: list[float]) -> float: ...
