"""What the peers of one workload share: :class:`Case` (weights, input, upstream gradient)
built per kind by :data:`CASE_MAKERS`, :class:`Outputs` (what a peer computed), and
:data:`REFERENCES`: ``gradchain.reference`` run on a case in a given dtype (float64
arbitrates the float32 checks); :data:`REPORT_OUTPUTS` turns a gradchain report into
:class:`Outputs`. Every table is keyed by the workload's kind; :func:`for_kind` looks a
kind up with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from .workloads import LSTMWorkload, MLPWorkload, RNNWorkload, Workload

_V = TypeVar("_V")


def for_kind(table: Mapping[str, _V], kind: str, what: str) -> _V:
    """``table[kind]``, or a ValueError naming the kind, the table and the kinds it has."""
    try:
        return table[kind]
    except KeyError:
        raise ValueError(f"no {what} for the workload kind {kind!r} (the kinds with one: "
                         f"{', '.join(table) or 'none'})") from None


@dataclass
class Outputs:
    """What a peer computed in one iteration, as NumPy arrays (None: not computed).

    ``y``: the MLP's output, or the RNN's hidden states ``hs (T, B, H)``.
    ``weight_grad_norms``: one per linear layer (MLP), ``[||dW_ih||, ||dW_hh||]`` (RNN).
    ``timestep_grad_norms``: the RNN's ``||dL/dh_t||`` (total derivative), t = 1..T.
    """

    y: np.ndarray
    grads: dict[str, np.ndarray]
    activation_grad_norms: np.ndarray | None = None
    weight_grad_norms: np.ndarray | None = None
    timestep_grad_norms: np.ndarray | None = None


@dataclass
class Case:
    """Everything shared by the peers of one workload: weights, inputs, options."""

    workload: Workload
    x: np.ndarray
    grad_y: np.ndarray  # dL/dy (MLP); dL/dh_t for every step, (T, B, H) (RNN)
    state: dict[str, np.ndarray]  # gradchain's state_dict, copied
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)


def _dtype(w: Workload) -> np.dtype:
    return np.dtype(w.dtype)


def gc_model(w: Workload, seed: int) -> Any:
    """The workload's gradchain model (the class of its kind, ``gradchain.models``)."""
    from .. import models

    return models.get(w.kind)(**w.model_kwargs(), seed=seed)


def _mlp_case(workload: Workload, seed: int, threads: int) -> Case:
    w = cast(MLPWorkload, workload)
    model = gc_model(w, seed)
    rng = np.random.default_rng(seed + 1)
    dt = _dtype(w)
    x = rng.standard_normal((w.batch, w.in_features)).astype(dt)
    gy = rng.standard_normal((w.batch, w.out_features)).astype(dt)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return Case(w, x, gy, state, threads, {"residual_flags": list(model.residual)})


def _mlp_reference(case: Case, dtype: Any) -> Outputs:
    """``gradchain.reference`` on the case's weights and data, cast to ``dtype``."""
    from .. import reference

    w = cast(MLPWorkload, case.workload)
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()
              if not k.endswith("num_batches_tracked")}
    y, cache = reference.mlp_forward(
        params, case.x.astype(dtype), activation=w.activation, norm=w.norm,
        residual=case.extra["residual_flags"], residual_scale=w.residual_scale, training=True)
    grads, _dx, rep = reference.mlp_backward(cache, case.grad_y.astype(dtype))
    return Outputs(y, dict(grads), np.asarray(rep["activation_grad_norms"]),
                   np.asarray(rep["weight_grad_norms"]))


_RNN_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _rnn_case(workload: Workload, seed: int, threads: int) -> Case:
    w = cast(RNNWorkload, workload)
    model = gc_model(w, seed)
    rng = np.random.default_rng(seed + 1)
    dt = _dtype(w)
    x = rng.standard_normal((w.steps, w.batch, w.input_size)).astype(dt)
    ghs = rng.standard_normal((w.steps, w.batch, w.hidden_size)).astype(dt)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return Case(w, x, ghs, state, threads)


def _rnn_outputs(hs: np.ndarray, grads: Mapping[str, np.ndarray], report: Mapping[str, Any]
                 ) -> Outputs:
    return Outputs(hs, dict(grads), weight_grad_norms=np.array(
        [report["weight_ih_grad_norm"], report["weight_hh_grad_norm"]], dtype=np.float64),
        timestep_grad_norms=np.asarray(report["timestep_grad_norms"], dtype=np.float64))


def _rnn_reference(case: Case, dtype: Any) -> Outputs:
    """``gradchain.reference.rnn_forward/rnn_backward`` on the case, cast to ``dtype``."""
    from .. import reference

    w = cast(RNNWorkload, case.workload)
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()}
    hs, cache = reference.rnn_forward(params, case.x.astype(dtype), activation=w.activation)
    grads, _dx, _dh0, rep = reference.rnn_backward(cache, case.grad_y.astype(dtype))
    return _rnn_outputs(hs, grads, rep)


def _gated_case(workload: Workload, seed: int, threads: int) -> Case:
    w = cast(LSTMWorkload, workload)
    model = gc_model(w, seed)
    rng = np.random.default_rng(seed + 1)
    dt = _dtype(w)
    x = rng.standard_normal((w.steps, w.batch, w.input_size)).astype(dt)
    ghs = rng.standard_normal((w.steps, w.batch, w.hidden_size)).astype(dt)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return Case(w, x, ghs, state, threads)


def gated_reference(w: LSTMWorkload, params: Mapping[str, np.ndarray], x: np.ndarray,
                    grad_hs: np.ndarray) -> Outputs:
    """``gradchain.reference``'s LSTM / GRU forward and backward (``w.cell_state``: the
    LSTM's), as :class:`Outputs`."""
    from .. import reference

    if w.cell_state:
        hs, cache = reference.lstm_forward(params, x)
        grads, _dx, _dh0, _dc0, rep = reference.lstm_backward(cache, grad_hs)
    else:
        hs, cache = reference.gru_forward(params, x)
        grads, _dx, _dh0, rep = reference.gru_backward(cache, grad_hs)
    return _rnn_outputs(hs, grads, rep)


def _gated_reference(case: Case, dtype: Any) -> Outputs:
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()}
    return gated_reference(cast(LSTMWorkload, case.workload), params, case.x.astype(dtype),
                           case.grad_y.astype(dtype))


CASE_MAKERS: dict[str, Callable[[Workload, int, int], Case]] = {
    "mlp": _mlp_case, "rnn": _rnn_case, "lstm": _gated_case, "gru": _gated_case}
"""kind -> ``make(workload, seed, threads) -> Case``."""

REFERENCES: dict[str, Callable[[Case, Any], Outputs]] = {
    "mlp": _mlp_reference, "rnn": _rnn_reference, "lstm": _gated_reference,
    "gru": _gated_reference}
"""kind -> ``reference(case, dtype) -> Outputs``: the NumPy spec in the given dtype (float64
arbitrates the float32 checks)."""


def _mlp_report_outputs(y: np.ndarray, grads: dict[str, np.ndarray], r: Any) -> Outputs:
    return Outputs(y=y, grads=grads, activation_grad_norms=np.array(r.activation_grad_norms),
                   weight_grad_norms=np.array(r.weight_grad_norms))


def _rnn_report_outputs(y: np.ndarray, grads: dict[str, np.ndarray], r: Any) -> Outputs:
    return _rnn_outputs(y, grads, {"weight_ih_grad_norm": r.weight_ih_grad_norm,
                                   "weight_hh_grad_norm": r.weight_hh_grad_norm,
                                   "timestep_grad_norms": np.array(r.timestep_grad_norms)})


REPORT_OUTPUTS: dict[str, Callable[[np.ndarray, dict[str, np.ndarray], Any], Outputs]] = {
    "mlp": _mlp_report_outputs, "rnn": _rnn_report_outputs, "lstm": _rnn_report_outputs,
    "gru": _rnn_report_outputs}
"""kind -> ``outputs(y, grads, report) -> Outputs``: a gradchain model's results (the
gradchain peer's)."""
