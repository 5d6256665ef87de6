"""Gradient clipping on a model's stored gradients (docs/CONVENTIONS.md, "Gradient clipping"),
computed by the C++ core."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validate import real
from .models import Model, describe_kinds

__all__ = ["clip_grad_norm", "clip_grad_value", "clip_grad_norm_per_layer", "clip_per_example",
           "grad_norm"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _check_model(model: Any) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a gradchain model ({describe_kinds()}), got "
                        f"{type(model).__name__}")
    return model


def clip_grad_norm(
    model: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients so that their total L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = ||all grads||_2``,
    ``coef = max_norm / (total + 1e-6)``, every gradient multiplied by
    ``min(coef, 1)``. Returns ``total`` (before clipping). A NaN/Inf total raises
    ``RuntimeError`` (``gc.NonFiniteError``) when ``error_if_nonfinite``, naming where the
    last backward's first NaN/Inf was born (``model.nonfinite_origin``); else scales as
    PyTorch does.
    """
    from ._core import NonFiniteError

    m = _check_model(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    nt = real(norm_type, "norm_type", allow_inf=True)
    if nt != 2.0:
        raise ValueError(f"norm_type: only 2.0 is supported, got {norm_type}")
    try:
        with m.exclusive("gc.clip_grad_norm") as kernels:
            return float(kernels.clip_grad_norm(mn, bool(error_if_nonfinite)))
    except NonFiniteError as e:
        origin = m.nonfinite_origin
        if origin is None:
            raise
        raise NonFiniteError(f"{e} (the first NaN/Inf was born in {origin})") from None


def clip_grad_value(model: Any, clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (NaN stays NaN)."""
    m = _check_model(model)
    v = real(clip_value, "clip_value", minimum=0.0, allow_inf=True)
    with m.exclusive("gc.clip_grad_value") as kernels:
        kernels.clip_grad_value(v)


def clip_grad_norm_per_layer(model: Any, max_norm: float) -> dict[str, float]:
    """Clip each parameter tensor on its own (as Keras' ``clipnorm``):
    ``g *= min(max_norm / (||g|| + 1e-6), 1)``. Returns the per-tensor norms before
    clipping, by parameter name."""
    m = _check_model(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    with m.exclusive("gc.clip_grad_norm_per_layer") as kernels:
        norms = kernels.clip_grad_norm_per_tensor(mn)
    names = [name for name, _ in m.named_parameters()]
    return {n: float(v) for n, v in zip(names, norms, strict=True)}


def clip_per_example(model: Any, max_norm: float) -> np.ndarray:
    """Per-example clipping as in DP-SGD (Abadi et al. 2016): every example's own gradient
    ``G_i`` (of its loss ``l_i``, ``L = mean_i l_i``) is scaled by
    ``c_i = min(1, max_norm / (||G_i|| + 1e-6))`` and the stored gradients become
    ``mean_i c_i G_i``. No per-example gradient is materialised: the last backward runs
    again with every example's ``dL/dy`` row scaled by ``c_i`` (which scales its
    ``dL/dz`` at every layer). Needs a backward (or ``loss_and_grad``) after the last
    forward, without ``accumulate``; batch norm in training mode couples the examples
    (ValueError). Returns ``||G_i||`` before clipping, (B,) float64. Adds no noise."""
    m = _check_model(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    return m._clip_per_example(mn)


def grad_norm(model: Any) -> float:
    """The total L2 norm of a model's stored gradients (no clipping)."""
    m = _check_model(model)
    from ._core import combine_norms

    with m.exclusive("gc.grad_norm") as kernels:
        v = combine_norms(list(kernels.grad_norms()))
    return float(v) if not math.isnan(v) else math.nan
