"""The NumPy peers: ``gradchain.reference``, vectorised over the batch, dtype kept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import numpy as np

from ..cases import Case, Outputs, _rnn_outputs, gated_reference
from ..machine import _limit_numpy_blas
from ..workloads import LSTMWorkload, MLPWorkload, RNNWorkload


class _NumpyMLP:
    """``gradchain.reference``: the vectorised NumPy implementation (dtype kept)."""

    def __init__(self, case: Case) -> None:
        from ... import reference

        w = cast(MLPWorkload, case.workload)
        _limit_numpy_blas(case.threads)
        self.ref = reference
        self.w = w
        self.params = {k: np.array(v) for k, v in case.state.items()
                       if not k.endswith("num_batches_tracked")}
        self.flags = case.extra["residual_flags"]
        self.x, self.gy = case.x, case.grad_y
        self._last: tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]] | None = None

    def step(self) -> None:
        w = self.w
        y, cache = self.ref.mlp_forward(self.params, self.x, activation=w.activation,
                                        norm=w.norm, residual=self.flags,
                                        residual_scale=w.residual_scale, training=True)
        grads, _dx, report = self.ref.mlp_backward(cache, self.gy)
        self.params.update(cache["new_buffers"])
        self._last = (y, grads, report)

    def outputs(self) -> Outputs:
        assert self._last is not None
        y, grads, report = self._last
        return Outputs(y, dict(grads), np.asarray(report["activation_grad_norms"]),
                       np.asarray(report["weight_grad_norms"]))


class _NumpyRNN:
    """``gradchain.reference.rnn_forward/rnn_backward`` (dtype kept: float32 stays float32)."""

    def __init__(self, case: Case) -> None:
        from ... import reference

        w = cast(RNNWorkload, case.workload)
        _limit_numpy_blas(case.threads)
        self.ref = reference
        self.activation = w.activation
        self.params = {k: np.array(v) for k, v in case.state.items()}
        self.x, self.ghs = case.x, case.grad_y
        self._last: Outputs | None = None

    def step(self) -> None:
        hs, cache = self.ref.rnn_forward(self.params, self.x, activation=self.activation)
        grads, _dx, _dh0, report = self.ref.rnn_backward(cache, self.ghs)
        self._last = _rnn_outputs(hs, grads, report)

    def outputs(self) -> Outputs:
        assert self._last is not None
        return replace(self._last, grads=dict(self._last.grads))


class _NumpyGated:
    """``gradchain.reference``'s LSTM / GRU forward and backward (dtype kept)."""

    def __init__(self, case: Case) -> None:
        _limit_numpy_blas(case.threads)
        self.w = cast(LSTMWorkload, case.workload)
        self.params = {k: np.array(v) for k, v in case.state.items()}
        self.x, self.ghs = case.x, case.grad_y
        self._last: Outputs | None = None

    def step(self) -> None:
        self._last = gated_reference(self.w, self.params, self.x, self.ghs)

    def outputs(self) -> Outputs:
        assert self._last is not None
        return replace(self._last, grads=dict(self._last.grads))
