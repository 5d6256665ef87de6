"""Activation functions: names, parameters and gains (docs/CONVENTIONS.md, "Activations").

``gc.Activation("leaky_relu", negative_slope=0.2)`` names a built-in activation
that runs in the fast C++ kernels; ``gc.Activation.custom(f, df)`` wraps a pair
of vectorised NumPy callables (the slow path: the core calls back into Python
once per layer and pass).

Every built-in activation is one row of :data:`SPECS` (an :class:`ActivationSpec`): its
parameters with PyTorch's defaults, gain, kinks, backward rule, torch twin and NumPy
forward/derivative. ``ACTIVATIONS``, the parameter checks, ``gain()``, the core's
parameter order and the kink sets of :mod:`gradchain.theory` and the benchmark are all
read from it, so adding an activation on the Python side is adding a row (the C++ core
has its own row; the ids come from ``_core.ACTIVATION_IDS`` by name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["Activation", "ACTIVATIONS", "ActivationSpec", "Kink", "SPECS"]

Params = Mapping[str, float]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


# torch.nn.SELU's constants.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
# GELU's constants (Python floats: they never change an array's dtype).
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_K = math.sqrt(2.0 / math.pi)
_TANH_C = 0.044715


# --------------------------------------------------------------------------- NumPy maths
# Forward values and derivatives with NumPy, in the input's dtype (Python-float constants),
# derivatives as PyTorch autograd takes them at kinks and NaN (docs/CONVENTIONS.md,
# "Activations"). Each takes the pre-activations z and the parameters p.
def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow: exp of -|z| only."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _erf(z: np.ndarray) -> np.ndarray:
    """erf elementwise with libm (``math.erf``) in float64, cast back to z's dtype."""
    flat = [math.erf(v) for v in z.astype(np.float64).ravel().tolist()]
    return np.array(flat, dtype=np.float64).reshape(z.shape).astype(z.dtype)


def _gelu_tanh_u(z: np.ndarray) -> np.ndarray:
    return _TANH_K * (z + _TANH_C * z * z * z)


def _elu_f(z: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(z > 0, z, alpha * np.expm1(z))


def _elu_d(z: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(z > 0, 1.0, alpha * np.exp(z))  # z <= 0 (NaN too) takes the left branch


def _tanh_d(z: np.ndarray, p: Params) -> np.ndarray:
    t = np.tanh(z)
    return 1.0 - t * t


def _sigmoid_d(z: np.ndarray, p: Params) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 - s)


def _gelu_f(z: np.ndarray, p: Params) -> np.ndarray:
    return 0.5 * z * (1.0 + _erf(z * _SQRT1_2))


def _gelu_d(z: np.ndarray, p: Params) -> np.ndarray:
    phi = 0.5 * (1.0 + _erf(z * _SQRT1_2))
    return phi + z * (_INV_SQRT_2PI * np.exp(-0.5 * z * z))


def _gelu_tanh_f(z: np.ndarray, p: Params) -> np.ndarray:
    return 0.5 * z * (1.0 + np.tanh(_gelu_tanh_u(z)))


def _gelu_tanh_d(z: np.ndarray, p: Params) -> np.ndarray:
    t = np.tanh(_gelu_tanh_u(z))
    du = _TANH_K * (1.0 + 3.0 * _TANH_C * z * z)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du


def _softplus_f(z: np.ndarray, p: Params) -> np.ndarray:
    bz = p["beta"] * z
    return np.where(bz > p["threshold"], z, np.log1p(np.exp(bz)) / p["beta"])


def _softplus_d(z: np.ndarray, p: Params) -> np.ndarray:
    bz = p["beta"] * z
    return np.where(bz > p["threshold"], 1.0, _sigmoid(bz))


def _silu_d(z: np.ndarray, p: Params) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _mish_f(z: np.ndarray, p: Params) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN and -inf give NaN, as PyTorch
        return z * np.tanh(np.logaddexp(0.0, z))   # logaddexp(0, z): softplus, no overflow


def _mish_d(z: np.ndarray, p: Params) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN and +-inf give NaN, as PyTorch
        t = np.tanh(np.logaddexp(0.0, z))
        return t + z * _sigmoid(z) * (1.0 - t * t)


def _hardtanh_f(z: np.ndarray, p: Params) -> np.ndarray:
    return np.minimum(np.maximum(z, p["min_val"]), p["max_val"])


def _hardtanh_d(z: np.ndarray, p: Params) -> np.ndarray:
    # only strictly inside passes (both ends and NaN: 0)
    return np.where((z > p["min_val"]) & (z < p["max_val"]), 1.0, 0.0)


def _hardtanh_check(p: Params) -> None:
    if not p["min_val"] < p["max_val"]:
        raise ValueError("activation 'hardtanh': min_val must be < max_val")


def _softplus_check(p: Params) -> None:
    if p["beta"] == 0.0:
        raise ValueError("activation 'softplus': beta must be non-zero")


def _leaky_relu_gain(p: Params) -> float:
    s = p["negative_slope"]
    return math.sqrt(2.0 / (1.0 + s * s))


def _sqrt2(p: Params) -> float:
    return math.sqrt(2.0)


def _one(p: Params) -> float:
    return 1.0


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Kink:
    """A point where an activation's derivative jumps, and the derivative PyTorch's
    autograd takes there (docs/CONVENTIONS.md, "Kinks").

    ``at`` and ``grad`` are numbers or functions of the activation's parameters;
    ``when`` (a predicate of the parameters) limits the kink to the parameters where the
    derivative really jumps (``elu`` only when ``alpha != 1``).
    """

    at: float | Callable[[Params], float]
    grad: float | Callable[[Params], float]
    when: Callable[[Params], bool] | None = None

    def where(self, params: Params) -> float:
        """The kink's location for these parameters."""
        return float(self.at(params)) if callable(self.at) else float(self.at)

    def value(self, params: Params) -> float:
        """``act'(where)`` as autograd (and the core) select it."""
        return float(self.grad(params)) if callable(self.grad) else float(self.grad)

    def applies(self, params: Params) -> bool:
        """Whether the derivative jumps there for these parameters."""
        return self.when is None or bool(self.when(params))

    @property
    def moves(self) -> bool:
        """Whether the location depends on the parameters."""
        return callable(self.at)


@dataclass(frozen=True)
class ActivationSpec:
    """One row of the activation table: everything the Python side knows of a built-in
    activation. The C++ core has its own row (its ids come from ``_core.ACTIVATION_IDS``,
    under the same name).

    Attributes
    ----------
    name : str
        The name ``gc.Activation`` takes (and ``_core.ACTIVATION_IDS`` knows).
    params : Mapping[str, float]
        Parameter names with PyTorch's defaults, in the order the core takes them
        (``p0``, ``p1``; at most two).
    forward, derivative : callable ``(z, params) -> array``
        The NumPy function and its derivative (autograd's values at kinks and NaN).
    gain : callable ``params -> float``
        ``torch.nn.init.calculate_gain`` (sqrt(2) where PyTorch has none).
    kinks : tuple of :class:`Kink`
        Where the derivative jumps and the value selected there.
    selects : bool
        The backward pass *selects* (``dL/dn = 0`` wherever ``act'(n) = 0``, even for an
        Inf or NaN upstream gradient) instead of multiplying: PyTorch's
        ``threshold_backward`` / ``hardtanh_backward``.
    torch : str or None, torch_kwargs : Mapping
        The ``torch.nn.functional`` function (None: the identity) and the fixed keyword
        arguments it takes besides the parameters, for cross-checks (:meth:`torch_call`).
    scale, bound : callable ``params -> float``
        For the mean-field quadrature (:mod:`gradchain.theory`): the width in x over which
        the activation changes shape, and a rough size of ``|act|`` at ``|x| ~ 1``.
    check : callable ``params -> None`` or None
        Raises ValueError for parameters the activation does not accept.
    aliases : tuple of str
        Other names ``gc.Activation`` accepts for it.
    """

    name: str
    forward: Callable[[np.ndarray, Params], np.ndarray]
    derivative: Callable[[np.ndarray, Params], np.ndarray]
    params: Params = field(default_factory=dict)
    gain: Callable[[Params], float] = _sqrt2
    kinks: tuple[Kink, ...] = ()
    selects: bool = False
    torch: str | None = None
    torch_kwargs: Params = field(default_factory=dict)
    scale: Callable[[Params], float] = _one
    bound: Callable[[Params], float] = _one
    check: Callable[[Params], None] | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.params) > 2:
            raise ValueError(f"activation {self.name!r}: the core takes at most two parameters")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "torch_kwargs", MappingProxyType(dict(self.torch_kwargs)))

    def core_params(self, params: Params) -> tuple[float, float]:
        """``(p0, p1)`` as the core takes them: the parameters in table order, 0-padded."""
        values = [float(params[k]) for k in self.params] + [0.0, 0.0]
        return values[0], values[1]

    def max_derivative(self, params: Params | None = None) -> float:
        """``sup |act'(x)|`` for these parameters (default: PyTorch's), from the row's own
        derivative on a grid of 160001 points over ``[-80, 80] * scale(params)`` (kinks and
        0 included). The health report's saturation threshold is 1e-3 of it."""
        p = dict(self.params if params is None else params)
        key = (self.name, tuple(sorted(p.items())))
        hit = _MAX_DERIVATIVE.get(key)
        if hit is None:
            grid = np.linspace(-80.0, 80.0, 160001) * float(self.scale(p))
            with np.errstate(all="ignore"):
                hit = float(np.nanmax(np.abs(self.derivative(grid, p))))
            _MAX_DERIVATIVE[key] = hit
        return hit

    def kink_points(self, params: Params | None = None) -> list[float]:
        """Where the derivative jumps for these parameters (default: PyTorch's)."""
        p = self.params if params is None else params
        return [k.where(p) for k in self.kinks if k.applies(p)]

    def torch_call(self, functional: Any, params: Params | None = None
                   ) -> Callable[[Any], Any]:
        """The PyTorch twin ``t -> torch.nn.functional.<torch>(t, **kwargs, **params)``
        (``functional`` is ``torch.nn.functional``, passed in: gradchain does not import
        torch)."""
        kw = {**self.torch_kwargs, **(self.params if params is None else params)}
        if self.torch is None:
            return lambda t: t
        fn = getattr(functional, self.torch)
        return lambda t: fn(t, **kw)


_MAX_DERIVATIVE: dict[tuple[str, tuple[tuple[str, float], ...]], float] = {}

# The health report's saturation threshold, relative to the activation's largest |act'|.
SATURATION_RELATIVE = 1e-3


def _rows(*rows: ActivationSpec) -> Mapping[str, ActivationSpec]:
    return MappingProxyType({r.name: r for r in rows})


_LEFT_OF_ZERO = Kink(0.0, 0.0)  # relu'(0) = 0: the left branch

SPECS: Mapping[str, ActivationSpec] = _rows(
    ActivationSpec("identity", lambda z, p: z.copy(), lambda z, p: np.ones_like(z),
                   gain=_one, aliases=("linear",)),
    ActivationSpec("sigmoid", lambda z, p: _sigmoid(z), _sigmoid_d, gain=_one,
                   torch="sigmoid"),
    ActivationSpec("tanh", lambda z, p: np.tanh(z), _tanh_d, gain=lambda p: 5.0 / 3.0,
                   torch="tanh"),
    ActivationSpec("relu", lambda z, p: np.maximum(z, 0.0),
                   lambda z, p: np.where(z <= 0, 0.0, 1.0),  # NaN: 1 (the gradient passes)
                   kinks=(_LEFT_OF_ZERO,), selects=True, torch="relu"),
    ActivationSpec("leaky_relu", lambda z, p: np.where(z > 0, z, p["negative_slope"] * z),
                   lambda z, p: np.where(z > 0, 1.0, p["negative_slope"]),
                   params={"negative_slope": 0.01},
                   gain=_leaky_relu_gain,
                   kinks=(Kink(0.0, lambda p: p["negative_slope"],
                               when=lambda p: p["negative_slope"] != 1.0),),
                   torch="leaky_relu"),
    ActivationSpec("elu", lambda z, p: _elu_f(z, p["alpha"]),
                   lambda z, p: _elu_d(z, p["alpha"]), params={"alpha": 1.0},
                   kinks=(Kink(0.0, lambda p: p["alpha"], when=lambda p: p["alpha"] != 1.0),),
                   torch="elu", bound=lambda p: max(1.0, abs(p["alpha"]))),
    ActivationSpec("selu", lambda z, p: SELU_SCALE * _elu_f(z, SELU_ALPHA),
                   lambda z, p: SELU_SCALE * _elu_d(z, SELU_ALPHA), gain=lambda p: 0.75,
                   kinks=(Kink(0.0, SELU_SCALE * SELU_ALPHA),), torch="selu"),
    ActivationSpec("gelu", _gelu_f, _gelu_d, torch="gelu"),
    ActivationSpec("gelu_tanh", _gelu_tanh_f, _gelu_tanh_d, torch="gelu",
                   torch_kwargs={"approximate": "tanh"}),
    ActivationSpec("softplus", _softplus_f, _softplus_d,
                   params={"beta": 1.0, "threshold": 20.0},
                   # beta * x > threshold is linear (act' = 1); at equality sigmoid(threshold)
                   kinks=(Kink(lambda p: p["threshold"] / p["beta"],
                               lambda p: 1.0 / (1.0 + math.exp(-p["threshold"]))),),
                   torch="softplus", scale=lambda p: 1.0 / abs(p["beta"]), check=_softplus_check),
    ActivationSpec("silu", lambda z, p: z * _sigmoid(z), _silu_d, torch="silu",
                   aliases=("swish",)),
    ActivationSpec("hardtanh", _hardtanh_f, _hardtanh_d,
                   params={"min_val": -1.0, "max_val": 1.0},
                   kinks=(Kink(lambda p: p["min_val"], 0.0), Kink(lambda p: p["max_val"], 0.0)),
                   selects=True, torch="hardtanh",
                   bound=lambda p: max(1.0, abs(p["min_val"]), abs(p["max_val"])),
                   check=_hardtanh_check),
    ActivationSpec("mish", _mish_f, _mish_d, torch="mish"),
)
"""Every built-in activation, by name: the one table the rest is derived from."""

ACTIVATIONS: tuple[str, ...] = tuple(SPECS)

# Parameters each activation takes, with PyTorch's defaults.
_PARAMS: dict[str, dict[str, float]] = {n: dict(s.params) for n, s in SPECS.items() if s.params}
_ALIASES = {a: n for n, s in SPECS.items() for a in s.aliases}


class Activation:
    """An activation function and its parameters.

    Parameters
    ----------
    name:
        A name of :data:`ACTIVATIONS` (the rows of :data:`SPECS`: ``identity, sigmoid,
        tanh, relu, leaky_relu, elu, selu, gelu, gelu_tanh, softplus, silu, hardtanh,
        mish``)
        or a row's alias (``swish``, ``linear``).
    **params:
        The row's parameters, with ``torch.nn``'s names and defaults:
        ``negative_slope`` (leaky_relu, default 0.01), ``alpha`` (elu, 1.0),
        ``beta`` and ``threshold`` (softplus, 1.0 and 20.0), ``min_val`` and
        ``max_val`` (hardtanh, -1.0 and 1.0).
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
        check = SPECS[key].check
        if check is not None:
            check(values)
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
        the slow path: each layer calls back into Python. The callbacks run in the
        middle of the model's pass: they may use other models, but a call on the model
        they belong to (``forward``, ``gc.grad_norm``, an optimiser step, ...) raises
        RuntimeError.
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

    @property
    def spec(self) -> ActivationSpec | None:
        """The built-in activation's row of :data:`SPECS` (None for a custom one)."""
        return None if self.is_custom else SPECS[self.name]

    def gain(self) -> float:
        """``torch.nn.init.calculate_gain`` for this activation (sqrt(2) where PyTorch has none)."""
        if self.is_custom:
            return math.sqrt(2.0)
        return SPECS[self.name].gain(self.params)

    def saturation_threshold(self) -> float:
        """The health report's threshold: a unit is saturated when ``|act'|`` stays below
        ``1e-3 * sup |act'|`` for every example (:meth:`ActivationSpec.max_derivative`);
        NaN for a custom activation (not defined)."""
        if self.is_custom:
            return math.nan
        return SATURATION_RELATIVE * SPECS[self.name].max_derivative(self.params)

    def __call__(self, x: Any) -> np.ndarray:
        """``act(x)`` with NumPy, in x's dtype (float32 or float64)."""
        if self.f is not None:
            return _apply(self.f, x, "activation forward")
        spec, p = SPECS[self.name], self.params
        return _apply(lambda z: spec.forward(z, p), x, "activation forward")

    def grad(self, x: Any) -> np.ndarray:
        """``act'(x)`` with NumPy, PyTorch autograd's values at the kinks."""
        if self.df is not None:
            return _apply(self.df, x, "activation derivative")
        spec, p = SPECS[self.name], self.params
        return _apply(lambda z: spec.derivative(z, p), x, "activation derivative")

    def _core_spec(self, ids: dict[str, int]) -> tuple[int, float, float]:
        """(id, p0, p1) as the C++ core takes them."""
        if self.is_custom:
            return ids["custom"], 0.0, 0.0
        return (ids[self.name], *SPECS[self.name].core_params(self.params))

    def to_config(self) -> dict[str, Any]:
        """JSON-ready. A custom activation's callables cannot be stored: its config only
        names it (``{"name": ..., "custom": True}``); pass it again to
        ``gc.load(..., activation=...)``."""
        if self.is_custom:
            return {"name": self.name, "custom": True}
        return {"name": self.name, **self.params}

    def __getstate__(self) -> dict[str, Any]:
        # explicit (a __slots__ class has no __dict__): pickle protocols 0 and 1 need it
        return {"name": self.name, "params": dict(self.params), "f": self.f, "df": self.df}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (None, slots) as pickled before __getstate__ existed
            state = state[1]
        for k in self.__slots__:
            object.__setattr__(self, k, state[k])

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


def _apply(fn: Callable[[np.ndarray], Any], x: Any, what: str) -> np.ndarray:
    """``fn(z)`` for z = x as a float32/float64 array, IEEE results (no warnings), checked
    to keep z's shape and cast to z's dtype."""
    z = np.asarray(x)
    if z.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"x: expected a float32 or float64 array, got dtype {z.dtype}")
    with np.errstate(all="ignore"):
        out = np.asarray(fn(z))
    if out.shape != z.shape:
        raise ValueError(f"{what}: returned shape {out.shape} for input of shape {z.shape}")
    return out.astype(z.dtype, copy=False)
