"""Activation functions: names, parameters and gains (CONVENTIONS.md, "Activations").

``gc.Activation("leaky_relu", negative_slope=0.2)`` names a built-in activation
that runs in the fast C++ kernels; ``gc.Activation.custom(f, df)`` wraps a pair
of vectorised NumPy callables (the slow path: the core calls back into Python
once per layer and pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import reference as _ref

__all__ = ["Activation", "ACTIVATIONS"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


ACTIVATIONS: tuple[str, ...] = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu",
    "gelu", "gelu_tanh", "softplus", "silu", "hardtanh",
)

# Parameters each activation takes, with PyTorch's defaults.
_PARAMS: dict[str, dict[str, float]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
}
_ALIASES = {"swish": "silu", "linear": "identity"}


class Activation:
    """An activation function and its parameters.

    Parameters
    ----------
    name:
        One of ``identity, sigmoid, tanh, relu, leaky_relu, elu, selu, gelu,
        gelu_tanh, softplus, silu (alias swish), hardtanh``.
    **params:
        ``negative_slope`` (leaky_relu, default 0.01), ``alpha`` (elu, 1.0),
        ``beta`` and ``threshold`` (softplus, 1.0 and 20.0), ``min_val`` and
        ``max_val`` (hardtanh, -1.0 and 1.0), as in ``torch.nn``.
    """

    __slots__ = ("name", "params", "f", "df")

    def __init__(self, name: str, **params: float) -> None:
        if not isinstance(name, str):
            raise TypeError(f"activation: expected a name (str), got {type(name).__name__}")
        key = _ALIASES.get(name, name)
        if key not in ACTIVATIONS:
            raise ValueError(
                f"activation: unknown name {name!r}; expected one of {', '.join(ACTIVATIONS)} "
                "or gc.Activation.custom(f, df)"
            )
        allowed = _PARAMS.get(key, {})
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"activation {key!r}: unknown parameter(s) {unknown}; "
                f"accepted: {sorted(allowed) or 'none'}"
            )
        values = dict(allowed)
        for k, v in params.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"activation {key!r}: {k} must be a number, got {type(v).__name__}")
            if not math.isfinite(float(v)):
                raise ValueError(f"activation {key!r}: {k} must be finite, got {v}")
            values[k] = float(v)
        if key == "hardtanh" and not values["min_val"] < values["max_val"]:
            raise ValueError("activation 'hardtanh': min_val must be < max_val")
        if key == "softplus" and values["beta"] == 0.0:
            raise ValueError("activation 'softplus': beta must be non-zero")
        self.name = key
        self.params = values
        self.f: Callable[[np.ndarray], np.ndarray] | None = None
        self.df: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def custom(
        cls,
        f: Callable[[np.ndarray], np.ndarray],
        df: Callable[[np.ndarray], np.ndarray],
        name: str = "custom",
    ) -> Activation:
        """A user-defined activation from vectorised NumPy callables.

        ``f(x)`` and ``df(x)`` receive the pre-activations of one layer as an
        array of shape ``(B, width)`` in the model's dtype and must return
        arrays of the same shape (``df`` is the elementwise derivative). This is
        the slow path: each layer calls back into Python.
        """
        if not callable(f) or not callable(df):
            raise TypeError("Activation.custom: f and df must be callables")
        if not isinstance(name, str) or not name:
            raise TypeError("Activation.custom: name must be a non-empty str")
        act = object.__new__(cls)
        act.name = name
        act.params = {}
        act.f = f
        act.df = df
        return act

    @property
    def is_custom(self) -> bool:
        return self.f is not None

    def gain(self) -> float:
        """``torch.nn.init.calculate_gain`` for this activation (sqrt(2) where PyTorch has none)."""
        if self.is_custom:
            return math.sqrt(2.0)
        if self.name == "identity" or self.name == "sigmoid":
            return 1.0
        if self.name == "tanh":
            return 5.0 / 3.0
        if self.name == "relu":
            return math.sqrt(2.0)
        if self.name == "leaky_relu":
            s = self.params["negative_slope"]
            return math.sqrt(2.0 / (1.0 + s * s))
        if self.name == "selu":
            return 0.75
        return math.sqrt(2.0)

    def __call__(self, x: Any) -> np.ndarray:
        """``act(x)`` with NumPy (the reference implementation)."""
        return _ref.act_forward(self._ref_act(), np.asarray(x), **self.params)

    def grad(self, x: Any) -> np.ndarray:
        """``act'(x)`` with NumPy, PyTorch autograd's values at the kinks."""
        return _ref.act_grad(self._ref_act(), np.asarray(x), **self.params)

    def _ref_act(self) -> Any:
        return (self.f, self.df) if self.is_custom else self.name

    def _core_spec(self, ids: dict[str, int]) -> tuple[int, float, float]:
        """(id, p0, p1) as the C++ core takes them."""
        if self.is_custom:
            return ids["custom"], 0.0, 0.0
        p = self.params
        if self.name == "leaky_relu":
            return ids[self.name], p["negative_slope"], 0.0
        if self.name == "elu":
            return ids[self.name], p["alpha"], 0.0
        if self.name == "softplus":
            return ids[self.name], p["beta"], p["threshold"]
        if self.name == "hardtanh":
            return ids[self.name], p["min_val"], p["max_val"]
        return ids[self.name], 0.0, 0.0

    def to_config(self) -> dict[str, Any]:
        """JSON-ready. A custom activation's callables cannot be stored: its config only
        names it (``{"name": ..., "custom": True}``); pass it again to
        ``gc.load(..., activation=...)``."""
        if self.is_custom:
            return {"name": self.name, "custom": True}
        return {"name": self.name, **self.params}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Activation):
            return NotImplemented
        return (self.name, self.params, self.f, self.df) == (
            other.name, other.params, other.f, other.df)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    def __repr__(self) -> str:
        if self.is_custom:
            return f"Activation.custom(name={self.name!r})"
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Activation({self.name!r}{args})"


def resolve(act: str | Activation) -> Activation:
    """An :class:`Activation` from a name or an Activation."""
    if isinstance(act, Activation):
        return act
    if isinstance(act, str):
        return Activation(act)
    raise TypeError(
        f"activation: expected a name or gc.Activation, got {type(act).__name__}"
    )
