"""Losses: their names and one implementation of each (docs/CONVENTIONS.md, "Losses").

``mse``: ``mean((y - target)^2)`` over every element; ``cross_entropy``: the mean over
samples of ``-log_softmax(y)[target]`` (integer class targets), computed stably. Both with
PyTorch's reduction "mean". Values and gradients are computed in ``y``'s dtype (the
models' ``loss_and_grad``); :func:`value` casts to float64 first (gc.train's evaluation).

Shapes: ``y (..., K)``; an mse target has ``y``'s shape, a cross_entropy target holds the
class indices of shape ``y.shape[:-1]`` (MLP ``(B, K)`` / ``(B,)``; RNN ``on="all"``
``(T, B, K)`` / ``(T, B)``, averaged over the ``T * B`` samples). Targets are checked by the
callers with :func:`check_target`; the functions below trust them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_array, float_array, shape_str

__all__ = ["LOSSES", "check_loss", "check_target", "value", "value_and_grad",
           "sequence_value_and_grad"]

LOSSES: tuple[str, ...] = ("mse", "cross_entropy")
"""The loss names every ``loss=`` argument takes."""


def check_loss(loss: Any, name: str = "loss") -> str:
    """``loss`` if it names a loss, else ValueError naming the argument and the choices."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"{name}: expected one of {', '.join(LOSSES)}, got {loss!r}")
    return loss


def check_target(target: Any, loss: str, dtype: np.dtype, y_shape: tuple[int, ...],
                 name: str = "target") -> np.ndarray:
    """Validate a loss target (called ``name`` in errors) against the output shape
    ``y_shape``: mse takes ``y_shape`` in the model's dtype, cross_entropy integer class
    indices of shape ``y_shape[:-1]`` in ``[0, y_shape[-1])``."""
    if loss == "mse":
        return float_array(target, name, dtype, y_shape)
    t = as_array(target, name)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: cross_entropy takes integer class indices, got dtype {t.dtype}")
    want = y_shape[:-1]
    if t.shape != want:
        raise ValueError(f"{name}: expected shape {shape_str(want)}, got {shape_str(t.shape)}")
    k = y_shape[-1]
    if t.size and (t.min() < 0 or t.max() >= k):
        raise ValueError(f"{name}: class indices must be in [0, {k}), got range "
                         f"[{t.min()}, {t.max()}]")
    return np.ascontiguousarray(t, dtype=np.int64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``z (N, C)``: shifted by the row maximum (no overflow)."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _picked(log_probs: np.ndarray, t: np.ndarray) -> np.ndarray:
    return log_probs[np.arange(t.size), t]


def value_and_grad(y: np.ndarray, target: np.ndarray, loss: str) -> tuple[float, np.ndarray]:
    """``(L, dL/dy)`` in ``y``'s dtype (the loss accumulated by ``np.mean`` in that dtype;
    the gradient has ``y``'s shape). IEEE results: call under ``np.errstate`` to silence."""
    if loss == "mse":
        diff = y - target
        return float(np.mean(diff * diff)), diff * (2.0 / y.size)
    z = y.reshape(-1, y.shape[-1])
    t = np.asarray(target).reshape(-1)
    log_probs = _log_softmax(z)
    dz = np.exp(log_probs)
    dz[np.arange(t.size), t] -= 1.0
    return float(-np.mean(_picked(log_probs, t))), (dz / t.size).reshape(y.shape)


def value(y: Any, target: np.ndarray, loss: str) -> float:
    """The loss alone, with ``y`` cast to float64 first (as gc.train evaluates)."""
    y64 = np.asarray(y, dtype=np.float64)
    with np.errstate(all="ignore"):
        if loss == "mse":
            diff = y64 - target
            return float(np.mean(diff * diff))
        t = np.asarray(target).reshape(-1)
        return float(-np.mean(_picked(_log_softmax(y64.reshape(-1, y64.shape[-1])), t)))


def sequence_value_and_grad(outputs: np.ndarray, target: np.ndarray, loss: str, on: str
                            ) -> tuple[float, np.ndarray]:
    """An RNN's loss on ``outputs (T, B, K)``: ``on="last"`` on step T only (target as an
    MLP's, ``dL/doutputs`` zero at the other steps), ``on="all"`` on every step."""
    if on == "last":
        v, d_last = value_and_grad(outputs[-1], target, loss)
        grad = np.zeros_like(outputs)
        grad[-1] = d_last
        return v, grad
    return value_and_grad(outputs, target, loss)
