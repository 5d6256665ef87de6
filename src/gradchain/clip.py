"""Gradient clipping on a model's stored gradients (docs/CONVENTIONS.md, "Gradient clipping"),
computed by the C++ core."""

from __future__ import annotations

import math
from typing import Any

from ._validate import real
from .models import Model, describe_kinds

__all__ = ["clip_grad_norm", "clip_grad_value", "clip_grad_norm_per_layer", "grad_norm"]


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
    ``RuntimeError`` when ``error_if_nonfinite``, else scales as PyTorch does.
    """
    m = _check_model(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    nt = real(norm_type, "norm_type", allow_inf=True)
    if nt != 2.0:
        raise ValueError(f"norm_type: only 2.0 is supported, got {norm_type}")
    with m.exclusive("gc.clip_grad_norm") as kernels:
        return float(kernels.clip_grad_norm(mn, bool(error_if_nonfinite)))


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


def grad_norm(model: Any) -> float:
    """The total L2 norm of a model's stored gradients (no clipping)."""
    m = _check_model(model)
    from ._core import combine_norms

    with m.exclusive("gc.grad_norm") as kernels:
        v = combine_norms(list(kernels.grad_norms()))
    return float(v) if not math.isnan(v) else math.nan
