"""Gradient clipping on a model's stored gradients (docs/CONVENTIONS.md, "Gradient clipping"),
computed by the C++ core."""

from __future__ import annotations

import math
from typing import Any

from ._validate import real
from .models import check_not_running

__all__ = ["clip_grad_norm", "clip_grad_value", "clip_grad_norm_per_layer", "grad_norm"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _core_of(model: Any) -> Any:
    core = getattr(model, "_core", None)
    if core is None or not hasattr(core, "clip_grad_norm"):
        raise TypeError(
            f"model: expected a gradchain model (MLP or RNN), got {type(model).__name__}")
    return core


def clip_grad_norm(
    model: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients so that their total L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = ||all grads||_2``,
    ``coef = max_norm / (total + 1e-6)``, every gradient multiplied by
    ``min(coef, 1)``. Returns ``total`` (before clipping). A NaN/Inf total raises
    ``RuntimeError`` when ``error_if_nonfinite``, else scales as PyTorch does.
    """
    core = _core_of(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    nt = real(norm_type, "norm_type", allow_inf=True)
    if nt != 2.0:
        raise ValueError(f"norm_type: only 2.0 is supported, got {norm_type}")
    with model._lock:
        check_not_running(model, "gc.clip_grad_norm")
        return float(core.clip_grad_norm(mn, bool(error_if_nonfinite)))


def clip_grad_value(model: Any, clip_value: float) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (NaN stays NaN)."""
    core = _core_of(model)
    v = real(clip_value, "clip_value", minimum=0.0, allow_inf=True)
    with model._lock:
        check_not_running(model, "gc.clip_grad_value")
        core.clip_grad_value(v)


def clip_grad_norm_per_layer(model: Any, max_norm: float) -> dict[str, float]:
    """Clip each parameter tensor on its own (as Keras' ``clipnorm``):
    ``g *= min(max_norm / (||g|| + 1e-6), 1)``. Returns the per-tensor norms before
    clipping, by parameter name."""
    core = _core_of(model)
    mn = real(max_norm, "max_norm", minimum=0.0, allow_inf=True)
    with model._lock:
        check_not_running(model, "gc.clip_grad_norm_per_layer")
        norms = core.clip_grad_norm_per_tensor(mn)
    names = [name for name, _ in model.named_parameters()]
    return {n: float(v) for n, v in zip(names, norms, strict=True)}


def grad_norm(model: Any) -> float:
    """The total L2 norm of a model's stored gradients (no clipping)."""
    core = _core_of(model)
    from ._core import combine_norms

    with model._lock:
        check_not_running(model, "gc.grad_norm")
        v = combine_norms(list(core.grad_norms()))
    return float(v) if not math.isnan(v) else math.nan
