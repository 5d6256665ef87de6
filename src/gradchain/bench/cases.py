"""What the peers of one workload share: :class:`Case` (weights, input, upstream gradient)
built per kind by :data:`CASE_MAKERS`, :class:`Outputs` (what a peer computed), and
:data:`REFERENCES`: ``gradchain.reference`` run on a case in a given dtype (float64
arbitrates the float32 checks); :data:`TRUTHS`: the float64 reference together with its
re-fit (:data:`Refit`: the same reference with the near-kink units a float32 side rounded to
the other side of a kink flipped, from that side's own gradients); :data:`REPORT_OUTPUTS`
turns a gradchain report into :class:`Outputs`. Every table is keyed by the workload's kind;
:func:`for_kind` looks a kind up with a clear error.
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


def _mlp_forward64(case: Case, dtype: Any) -> tuple[np.ndarray, dict]:
    """``gradchain.reference.mlp_forward`` on the case's weights and data, cast to ``dtype``."""
    from .. import reference

    w = cast(MLPWorkload, case.workload)
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()
              if not k.endswith("num_batches_tracked")}
    return reference.mlp_forward(
        params, case.x.astype(dtype), activation=w.activation, norm=w.norm,
        residual=case.extra["residual_flags"], residual_scale=w.residual_scale, training=True)


def _mlp_reference(case: Case, dtype: Any) -> Outputs:
    """``gradchain.reference`` on the case's weights and data, cast to ``dtype``."""
    from .. import reference

    y, cache = _mlp_forward64(case, dtype)
    grads, _dx, rep = reference.mlp_backward(cache, case.grad_y.astype(dtype))
    return Outputs(y, dict(grads), np.asarray(rep["activation_grad_norms"]),
                   np.asarray(rep["weight_grad_norms"]))


Refit = Callable[[Outputs], "Outputs | None"]
"""``refit(side) -> Outputs``: the float64 reference re-run with the near-kink units that
``side`` (a float32 implementation's outputs) rounded to the other side of a kink flipped; None
when the kind has no re-fit."""

KINK_BAND = 2.0 ** -10
"""A unit is near a kink when its float64 pre-activation is within ``KINK_BAND`` times the
layer's RMS pre-activation of the kink (float32 rounding of a deep chain stays far inside)."""


def _flip_column(delta: float, effects: np.ndarray) -> np.ndarray:
    """Which of a column's candidate flips (their effects on its shift gradient) best explain
    the column's departure ``delta``: every subset for up to 10 candidates, else greedily by
    size. A boolean mask; all False unless the chosen flips shrink the departure."""
    k = effects.size
    if k <= 10:
        subsets = ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1).astype(bool)
        resid = np.abs(delta - subsets.astype(np.float64) @ effects)
        best = int(np.argmin(resid))  # the first minimum: the fewest flips among ties
        return subsets[best] if resid[best] < abs(delta) else np.zeros(k, dtype=bool)
    take = np.zeros(k, dtype=bool)
    left = delta
    for i in np.argsort(-np.abs(effects)):
        if abs(left - effects[i]) < abs(left):
            take[i] = True
            left -= effects[i]
    return take


def mlp_refit(cache: dict, grad_y: np.ndarray, side: Outputs, tol: float) -> Outputs:
    """The float64 MLP backward of ``gradchain.reference`` (the cache of its ``mlp_forward``),
    with the ReLU-kink flips of ``side`` put in.

    Walking down the layers as ``reference.mlp_backward`` does (with its own building blocks),
    each hidden layer's units whose float64 input to the activation lies within
    :data:`KINK_BAND` of a kink are candidates; a column whose shift gradient (the norm's bias,
    else the linear bias: the column sum of dL/dn, where a flip at sample b adds or removes
    that sample's upstream gradient) departs from ``side``'s by more than ``tol`` of the
    largest gets the candidate flips that explain the departure (:func:`_flip_column`). The
    flips then propagate to every layer below, as the float32 side's did. Returns the
    parameter gradients and the report's norms of this re-fitted reference."""
    from .. import reference
    from ..activations import SPECS

    name, _fn, act_p = cache["activation"]
    spec = SPECS.get(name) if isinstance(name, str) else None
    kinks = spec.kink_points(act_p) if spec is not None else []
    alpha, has_bias, norm = cache["residual_scale"], cache["bias"], cache["norm"]
    L = cache["L"]

    def derivative(n: np.ndarray) -> np.ndarray:
        return np.asarray(reference.act_grad(name, n, **act_p))

    g_a, dw_out, db_out = reference.linear_backward(grad_y, cache["a_L"], cache["W_out"],
                                                    has_bias)
    grads: dict[str, np.ndarray] = {f"layers.{L}.weight": dw_out}
    if has_bias:
        grads[f"layers.{L}.bias"] = db_out
    act_norms = [0.0] * (L + 1)
    act_norms[L] = reference.frobenius_norm(g_a)
    for l in reversed(range(L)):
        layer = cache["layers"][l]
        g_f = alpha * g_a if cache["residual"][l] else g_a
        n = layer["n"]
        d = derivative(n)
        shift = f"norms.{l}.bias" if norm is not None else f"layers.{l}.bias"
        if kinks and shift in side.grads:
            band = KINK_BAND * float(np.sqrt(np.mean(n * n)))
            near = np.zeros(n.shape, dtype=bool)
            for k in kinks:
                near |= np.abs(n - k) <= band
            if near.any():
                flipped_n = n.copy()
                for k in kinks:  # the mirror image across the kink (just past it when on it)
                    at = near & (np.abs(n - k) <= band)
                    flipped_n[at] = 2 * k - n[at]
                d_flip = derivative(flipped_n)
                still = near & (d_flip == d)
                for eps in (band * 1e-3, -band * 1e-3):
                    if still.any():
                        trial = np.where(still, n + eps, flipped_n)
                        moved = derivative(trial)
                        take = still & (moved != d)
                        flipped_n[take] = trial[take]
                        d_flip[take] = moved[take]
                        still &= ~take
                g_n = np.where(d == 0, 0.0, g_f * d)
                mine = np.asarray(side.grads[shift], dtype=np.float64)
                delta = mine - g_n.sum(axis=0)
                noise = tol * float(np.max(np.abs(mine))) if mine.size else 0.0
                rows, cols = np.nonzero(near & (d_flip != d))
                for c in np.unique(cols):
                    if abs(delta[c]) <= noise:
                        continue
                    at = cols == c
                    b = rows[at]
                    eff = (np.where(d_flip[b, c] == 0, 0.0, g_f[b, c] * d_flip[b, c])
                           - g_n[b, c])
                    pick = _flip_column(float(delta[c]), eff)
                    d[b[pick], c] = d_flip[b[pick], c]
        g_n = np.where(d == 0, 0.0, g_f * d)
        if norm == "batch":
            g_z, grads[f"norms.{l}.weight"], grads[f"norms.{l}.bias"] = (
                reference.batchnorm_backward(g_n, layer["norm_cache"]))
        elif norm == "layer":
            g_z, grads[f"norms.{l}.weight"], grads[f"norms.{l}.bias"] = (
                reference.layernorm_backward(g_n, layer["norm_cache"]))
        else:
            g_z = g_n
        g_prev, grads[f"layers.{l}.weight"], db = reference.linear_backward(
            g_z, layer["a_prev"], layer["W"], has_bias)
        if has_bias:
            grads[f"layers.{l}.bias"] = db
        if cache["residual"][l]:
            g_prev = g_prev + g_a
        g_a = g_prev
        act_norms[l] = reference.frobenius_norm(g_a)
    weight_norms = [reference.frobenius_norm(grads[f"layers.{i}.weight"]) for i in range(L + 1)]
    return Outputs(cache["y"], grads, np.array(act_norms, dtype=np.float64),
                   np.array(weight_norms, dtype=np.float64))


def _mlp_truth(case: Case, tol: float) -> tuple[Outputs, Refit]:
    """The float64 reference of an MLP case and its :data:`Refit` (which keeps the float64
    forward's cache alive until it is dropped)."""
    from .. import reference

    y, cache = _mlp_forward64(case, np.float64)
    gy = case.grad_y.astype(np.float64)
    grads, _dx, rep = reference.mlp_backward(cache, gy)
    truth = Outputs(y, dict(grads), np.asarray(rep["activation_grad_norms"]),
                    np.asarray(rep["weight_grad_norms"]))
    return truth, lambda side: mlp_refit(cache, gy, side, tol)


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


TRUTHS: dict[str, Callable[[Case, float], tuple[Outputs, Refit]]] = {"mlp": _mlp_truth}
"""kind -> ``truth(case, tolerance) -> (float64 reference outputs, refit)``: the kinds whose
float64 reference can be re-fitted to a float32 side's kink roundings (:func:`mlp_refit`);
the others arbitrate with :data:`REFERENCES` alone."""


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
