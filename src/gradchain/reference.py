"""Plain NumPy reference implementation of gradchain's mathematical conventions.

This module is the executable form of ``docs/CONVENTIONS.md``: the C++ core and its tests are
compared against it.  It favours clarity over speed (though it is vectorised over the batch),
imports only NumPy and the standard library, and never touches the compiled extension.

Conventions used throughout
---------------------------
* Batch-major data: MLP inputs ``x`` have shape ``(B, in)``; RNN inputs ``(T, B, I)``.
* A linear layer holds ``W`` of shape ``(out, in)`` and ``b`` of shape ``(out,)`` and computes
  ``z = x @ W.T + b`` (as ``torch.nn.Linear``).
* Every function computes in the dtype of its floating-point inputs (float32 or float64, all
  inputs of one call sharing it); mixing dtypes is a ``TypeError``, never a silent cast.
  Norms are the exception: they are always accumulated in float64 and returned as float64.
* Semantics follow PyTorch wherever PyTorch defines them (activation derivatives at kinks,
  BatchNorm running statistics, gradient clipping, loss reductions).
* Arithmetic follows IEEE rules silently, as PyTorch does: overflow gives Inf, Inf - Inf gives
  NaN, and no NumPy floating-point warning is emitted.
* Inputs are never mutated; every function returns new arrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACT_PARAMS",
    "SELU_ALPHA",
    "SELU_SCALE",
    "act_forward",
    "act_grad",
    "batchnorm_backward",
    "batchnorm_forward",
    "clip_grad_norm",
    "clip_grad_norm_per_layer",
    "clip_grad_value",
    "frobenius_norm",
    "global_norm",
    "gru_backward",
    "gru_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "loss_forward_backward",
    "lstm_backward",
    "lstm_forward",
    "mlp_backward",
    "mlp_forward",
    "mlp_per_example_grad_norms",
    "saturation_threshold",
    "resolve_residual",
    "rnn_backward",
    "rnn_forward",
    "rnn_loss_grads",
]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


ACTIVATIONS: tuple[str, ...] = (
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "gelu_tanh",
    "softplus",
    "silu",
    "hardtanh",
    "mish",
)

DEFAULT_ACT_PARAMS: dict[str, dict[str, float]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
}

# torch.nn.SELU's constants.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# Constants of the GELU formulas (Python floats, so they never change an array's dtype).
_SQRT1_2 = math.sqrt(0.5)  # 1 / sqrt(2)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # standard normal density at 0
_GELU_TANH_BETA = math.sqrt(2.0 / math.pi)
_GELU_TANH_KAPPA = 0.044715

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The small constant clip_grad_norm_ adds to the total norm.
_CLIP_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _ieee(func: Callable) -> Callable:
    """Run ``func`` with NumPy's floating-point warnings off (IEEE results, as in PyTorch)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            return func(*args, **kwargs)

    return wrapper


def _float_array(a: Any, name: str) -> np.ndarray:
    """``a`` as an ndarray of dtype float32 or float64 (no conversion), else TypeError."""
    arr = np.asarray(a)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    return arr


def _check_same_dtype(dtype: np.dtype, **arrays: np.ndarray | None) -> None:
    """TypeError unless every given (non-None) array has ``dtype``."""
    for name, arr in arrays.items():
        if arr is not None and arr.dtype != dtype:
            raise TypeError(f"{name} has dtype {arr.dtype}, expected {dtype} (no implicit casts)")


def _check_shape(arr: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")


def _has_nonfinite(a: np.ndarray) -> bool:
    return not bool(np.all(np.isfinite(a)))


def frobenius_norm(a: Any) -> float:
    """Frobenius (L2) norm of an array of any shape, accumulated in float64.

    Robust against overflow of the squares: the elements are divided by the largest
    absolute value before squaring, so a finite tensor never gets an infinite norm unless
    the norm itself exceeds the float64 range.  NaN anywhere -> NaN; otherwise an Inf
    anywhere -> Inf; an empty array -> 0.0.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return 0.0
    if np.isnan(a).any():
        return math.nan
    largest = float(np.max(np.abs(a)))
    if largest == 0.0:
        return 0.0
    if math.isinf(largest):
        return math.inf
    scaled = a / largest
    return largest * math.sqrt(float(np.sum(scaled * scaled)))


def global_norm(grads: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float:
    """L2 norm of all the given tensors together (float64), as clip_grad_norm_'s total norm."""
    tensors = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    return frobenius_norm(np.array([frobenius_norm(g) for g in tensors], dtype=np.float64))


def _norms_array(tensors: Sequence[np.ndarray]) -> np.ndarray:
    """float64 array of the Frobenius norms of ``tensors``."""
    return np.array([frobenius_norm(t) for t in tensors], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# health statistics (docs/CONVENTIONS.md, "Gradient report")
# ----------------------------------------------------------------------------------------------


def saturation_threshold(act: Any, act_params: Mapping[str, Any] | None = None) -> float:
    """1e-3 of ``sup |act'(x)|``: the derivative on 160001 points of ``[-80, 80] * s``
    (``s = 1/|beta|`` for softplus, else 1); NaN for a custom ``(f, df)`` pair."""
    name, _, grad_fn, p = _act_spec(act, act_params)
    if name is None:
        return math.nan
    key = (name, tuple(sorted(p.items())))
    if key not in _SATURATION:
        s = 1.0 / abs(p["beta"]) if name == "softplus" else 1.0
        grid = np.linspace(-80.0, 80.0, 160001) * s
        with np.errstate(all="ignore"):
            _SATURATION[key] = 1e-3 * float(np.nanmax(np.abs(grad_fn(grid, **p))))
    return _SATURATION[key]


_SATURATION: dict[tuple[str, tuple[tuple[str, float], ...]], float] = {}


def _unit_health(deriv: np.ndarray, threshold: float) -> tuple[float, float]:
    """(dead, saturated) fractions of the columns of ``deriv`` (B, n): the column's largest
    |act'| (NaN left out; an all-NaN column counts 0) is 0 / below ``threshold``."""
    a = np.abs(np.asarray(deriv, dtype=np.float64))
    m = np.max(np.where(np.isnan(a), 0.0, a), axis=0)
    sat = float(np.mean(m < threshold)) if threshold == threshold else math.nan
    return float(np.mean(m == 0.0)), sat


def _grad_health(g: np.ndarray) -> tuple[float, float]:
    """(zero, subnormal) fractions of the entries of ``g`` (in its own dtype)."""
    a = np.abs(g)
    tiny = np.finfo(g.dtype).tiny
    return float(np.mean(a == 0)), float(np.mean((a > 0) & (a < tiny)))


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


def _erf(z: np.ndarray) -> np.ndarray:
    """Element-wise error function via ``math.erf`` (correctly rounded libm), in z's dtype."""
    if z.size == 0:
        return np.empty_like(z)
    values = np.vectorize(math.erf, otypes=[np.float64])(z.astype(np.float64))
    return values.astype(z.dtype)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, written so that exp never overflows."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _elu(z: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(z > 0, z, alpha * np.expm1(z))


def _elu_grad(z: np.ndarray, alpha: float) -> np.ndarray:
    # PyTorch: x <= 0 takes the exponential branch, so elu'(0) = alpha; elu'(NaN) = NaN.
    return np.where(z > 0, 1.0, alpha * np.exp(z))


def _gelu_tanh_inner(z: np.ndarray) -> np.ndarray:
    return _GELU_TANH_BETA * (z + _GELU_TANH_KAPPA * z * z * z)


def _fwd_identity(z):
    return z.copy()


def _grad_identity(z):
    return np.ones_like(z)


def _fwd_sigmoid(z):
    return _sigmoid(z)


def _grad_sigmoid(z):
    s = _sigmoid(z)
    return s * (1.0 - s)


def _fwd_tanh(z):
    return np.tanh(z)


def _grad_tanh(z):
    t = np.tanh(z)
    return 1.0 - t * t


def _fwd_relu(z):
    return np.maximum(z, 0.0)  # NaN stays NaN


def _grad_relu(z):
    # PyTorch's threshold_backward: zero where the output is <= 0 (relu'(0) = 0; NaN passes).
    return np.where(z <= 0, 0.0, 1.0)


def _fwd_leaky_relu(z, negative_slope):
    return np.where(z > 0, z, negative_slope * z)


def _grad_leaky_relu(z, negative_slope):
    # x > 0 ? 1 : negative_slope, so leaky_relu'(0) = negative_slope.
    return np.where(z > 0, 1.0, negative_slope)


def _fwd_elu(z, alpha):
    return _elu(z, alpha)


def _grad_elu(z, alpha):
    return _elu_grad(z, alpha)


def _fwd_selu(z):
    return SELU_SCALE * _elu(z, SELU_ALPHA)


def _grad_selu(z):
    return SELU_SCALE * _elu_grad(z, SELU_ALPHA)


def _fwd_gelu(z):
    return 0.5 * z * (1.0 + _erf(z * _SQRT1_2))


def _grad_gelu(z):
    cdf = 0.5 * (1.0 + _erf(z * _SQRT1_2))
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return cdf + z * pdf


def _fwd_gelu_tanh(z):
    return 0.5 * z * (1.0 + np.tanh(_gelu_tanh_inner(z)))


def _grad_gelu_tanh(z):
    t = np.tanh(_gelu_tanh_inner(z))
    d_inner = _GELU_TANH_BETA * (1.0 + 3.0 * _GELU_TANH_KAPPA * z * z)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * d_inner


def _fwd_softplus(z, beta, threshold):
    bz = beta * z
    return np.where(bz > threshold, z, np.log1p(np.exp(bz)) / beta)


def _grad_softplus(z, beta, threshold):
    bz = beta * z
    return np.where(bz > threshold, 1.0, _sigmoid(bz))


def _fwd_silu(z):
    return z * _sigmoid(z)


def _grad_silu(z):
    s = _sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _fwd_mish(z):
    # x * tanh(softplus(x)); logaddexp(0, x) is softplus without overflow
    return z * np.tanh(np.logaddexp(0.0, z))


def _grad_mish(z):
    t = np.tanh(np.logaddexp(0.0, z))
    return t + z * _sigmoid(z) * (1.0 - t * t)


def _fwd_hardtanh(z, min_val, max_val):
    return np.minimum(np.maximum(z, min_val), max_val)


def _grad_hardtanh(z, min_val, max_val):
    # PyTorch: the gradient passes only strictly inside (min_val, max_val); hardtanh'(NaN) = 0.
    return np.where((z > min_val) & (z < max_val), 1.0, 0.0)


_ACT_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "identity": (_fwd_identity, _grad_identity),
    "sigmoid": (_fwd_sigmoid, _grad_sigmoid),
    "tanh": (_fwd_tanh, _grad_tanh),
    "relu": (_fwd_relu, _grad_relu),
    "leaky_relu": (_fwd_leaky_relu, _grad_leaky_relu),
    "elu": (_fwd_elu, _grad_elu),
    "selu": (_fwd_selu, _grad_selu),
    "gelu": (_fwd_gelu, _grad_gelu),
    "gelu_tanh": (_fwd_gelu_tanh, _grad_gelu_tanh),
    "softplus": (_fwd_softplus, _grad_softplus),
    "silu": (_fwd_silu, _grad_silu),
    "hardtanh": (_fwd_hardtanh, _grad_hardtanh),
    "mish": (_fwd_mish, _grad_mish),
}


_ActSpec = tuple[str | None, Callable, Callable, dict[str, Any]]


def _act_spec(act: Any, params: Mapping[str, Any] | None) -> _ActSpec:
    """Resolve ``act`` (a name or an ``(f, df)`` pair) to ``(name, f, df, params)``.

    Named activations get their defaults from DEFAULT_ACT_PARAMS, overridden by ``params``;
    unknown parameter names are a TypeError.  Custom pairs receive ``params`` unchanged
    (``name`` is None for them).
    """
    params = dict(params or {})
    if isinstance(act, str):
        if act not in _ACT_FUNCTIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
        defaults = DEFAULT_ACT_PARAMS.get(act, {})
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"activation {act!r} takes no parameter(s) {unknown}; "
                            f"its parameters are {sorted(defaults)}")
        merged = {key: float(params.get(key, value)) for key, value in defaults.items()}
        if act == "hardtanh" and merged["min_val"] > merged["max_val"]:
            raise ValueError("hardtanh: min_val cannot be greater than max_val")
        forward, grad = _ACT_FUNCTIONS[act]
        return act, forward, grad, merged
    if (isinstance(act, (tuple, list)) and len(act) == 2
            and callable(act[0]) and callable(act[1])):
        return None, act[0], act[1], params
    raise TypeError(f"activation must be a name from {ACTIVATIONS} or an (f, df) pair of "
                    f"callables, got {act!r}")


def _call_elementwise(func: Callable, z: np.ndarray, params: Mapping[str, Any],
                      what: str) -> np.ndarray:
    out = np.asarray(func(z, **params))
    if out.shape != z.shape:
        raise ValueError(f"{what} returned shape {out.shape} for input of shape {z.shape}")
    return out.astype(z.dtype, copy=False)


@_ieee
def act_forward(act: Any, z: Any, **params: Any) -> np.ndarray:
    """Apply an activation element-wise.

    Args:
        act: a name from ACTIVATIONS or an ``(f, df)`` pair of vectorised callables.
        z: array of any shape, float32 or float64.
        **params: activation parameters (see DEFAULT_ACT_PARAMS), e.g. ``negative_slope``.

    Returns:
        ``act(z)``, same shape and dtype as ``z``.
    """
    z = _float_array(z, "z")
    _, forward, _, p = _act_spec(act, params)
    return _call_elementwise(forward, z, p, "activation forward")


@_ieee
def act_grad(act: Any, z: Any, **params: Any) -> np.ndarray:
    """Element-wise derivative ``d act(z) / dz`` exactly as PyTorch autograd computes it.

    At kinks: relu'(0) = 0, hardtanh'(min_val) = hardtanh'(max_val) = 0,
    leaky_relu'(0) = negative_slope, elu'(0) = alpha and selu'(0) = scale * alpha (the x <= 0
    branch), softplus'(x) = 1 where beta * x > threshold.

    At NaN inputs the derivative is that of PyTorch's vectorised CPU kernels (the ones used on
    all but tiny tensors; PyTorch's scalar fallback differs for hardtanh, elu and selu):
    relu'(NaN) = 1, leaky_relu'(NaN) = negative_slope, hardtanh'(NaN) = 0, and NaN for the
    others.

    Args:
        act: a name from ACTIVATIONS or an ``(f, df)`` pair of vectorised callables.
        z: pre-activation array of any shape, float32 or float64.

    Returns:
        the derivative, same shape and dtype as ``z``.
    """
    z = _float_array(z, "z")
    _, _, grad, p = _act_spec(act, params)
    return _call_elementwise(grad, z, p, "activation derivative")


def _act_backward(name: str | None, grad_fn: Callable, z: np.ndarray, upstream: np.ndarray,
                  params: Mapping[str, Any]) -> np.ndarray:
    """dL/dz from dL/d act(z), as PyTorch's backward kernels.

    relu and hardtanh *select* (an infinite upstream gradient still gives an exact 0 where the
    derivative is 0); every other activation multiplies upstream by the derivative.
    """
    if name == "relu":
        return np.where(z <= 0, np.zeros_like(upstream), upstream)
    if name == "hardtanh":
        inside = (z > params["min_val"]) & (z < params["max_val"])
        return np.where(inside, upstream, np.zeros_like(upstream))
    return upstream * _call_elementwise(grad_fn, z, params, "activation derivative")


# ----------------------------------------------------------------------------------------------
# residual layout
# ----------------------------------------------------------------------------------------------


def resolve_residual(sizes: Sequence[int], residual: Any) -> list[bool]:
    """Which hidden layers get a skip connection.

    Args:
        sizes: ``[in, h_1, ..., h_L, out]``; hidden layer l (1-based) maps sizes[l-1] -> sizes[l].
        residual: False (none); True (every hidden layer with equal in/out widths); an int
            k >= 1 (the k-th, 2k-th, ... of those equal-width hidden layers, counted from 1);
            or a sequence of L bools (used as given; True on a layer whose widths differ is a
            ValueError).

    Returns:
        list of L bools, entry l-1 for hidden layer l.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least [in, out], got {sizes}")
    n_hidden = len(sizes) - 2
    equal = [sizes[l - 1] == sizes[l] for l in range(1, n_hidden + 1)]

    if isinstance(residual, (bool, np.bool_)):
        return list(equal) if residual else [False] * n_hidden
    if isinstance(residual, (int, np.integer)):
        k = int(residual)
        if k < 1:
            raise ValueError(f"residual=k needs k >= 1, got {k}")
        flags = [False] * n_hidden
        count = 0
        for index, is_equal in enumerate(equal):
            if is_equal:
                count += 1
                flags[index] = count % k == 0
        return flags
    if isinstance(residual, (list, tuple, np.ndarray)):
        flags_in = list(residual)
        if not all(isinstance(f, (bool, np.bool_)) for f in flags_in):
            raise TypeError("a residual list must hold only bools")
        if len(flags_in) != n_hidden:
            raise ValueError(f"a residual list needs one bool per hidden layer "
                             f"({n_hidden}), got {len(flags_in)}")
        for index, flag in enumerate(flags_in):
            if flag and not equal[index]:
                raise ValueError(f"residual on hidden layer {index + 1} needs equal widths, got "
                                 f"{sizes[index]} -> {sizes[index + 1]}")
        return [bool(f) for f in flags_in]
    raise TypeError(f"residual must be a bool, an int k >= 1 or a list of bools, "
                    f"got {type(residual).__name__}")


# ----------------------------------------------------------------------------------------------
# linear layer
# ----------------------------------------------------------------------------------------------


@_ieee
def linear_forward(x: Any, W: Any, b: Any | None) -> np.ndarray:
    """``z = x @ W.T + b`` (torch.nn.Linear).

    Args:
        x: (B, in).  W: (out, in).  b: (out,) or None.

    Returns:
        z: (B, out).
    """
    x = _float_array(x, "x")
    W = _float_array(W, "W")
    b = None if b is None else _float_array(b, "b")
    _check_same_dtype(x.dtype, W=W, b=b)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[1]:
        raise ValueError(f"linear: x {x.shape} and W {W.shape} do not fit (x (B, in), W (out, in))")
    z = x @ W.T
    if b is not None:
        _check_shape(b, (W.shape[0],), "b")
        z = z + b
    return z


@_ieee
def linear_backward(dz: Any, x: Any, W: Any, has_bias: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of a linear layer.

    Args:
        dz: dL/dz (B, out).  x: the layer input (B, in).  W: (out, in).
        has_bias: whether the layer has a bias.

    Returns:
        ``(dx, dW, db)``: dx = dz @ W (B, in), dW = dz.T @ x (out, in), db = sum_b dz (out,)
        or None without bias.
    """
    dz = _float_array(dz, "dz")
    x = _float_array(x, "x")
    W = _float_array(W, "W")
    _check_same_dtype(dz.dtype, x=x, W=W)
    _check_shape(dz, (x.shape[0], W.shape[0]), "dz")
    dx = dz @ W
    dW = dz.T @ x
    db = dz.sum(axis=0) if has_bias else None
    return dx, dW, db


# ----------------------------------------------------------------------------------------------
# normalisation layers
# ----------------------------------------------------------------------------------------------


@_ieee
def batchnorm_forward(z: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                      training: bool, momentum: float = 0.1, eps: float = 1e-5
                      ) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """torch.nn.BatchNorm1d on (B, h) input, per feature over the batch.

    Training: ``mu = mean_b z``, ``var = mean_b (z - mu)^2`` (biased) normalise; the running
    statistics become ``(1 - momentum) * running + momentum * stat`` with the *unbiased*
    variance ``var * B / (B - 1)``; B == 1 is a ValueError.  Eval: the running statistics
    normalise and are returned unchanged (as copies).  Nothing is mutated.

    Args:
        z: (B, h).  gamma, beta, running_mean, running_var: (h,).

    Returns:
        ``(n, cache, new_running_mean, new_running_var)`` with n = gamma * zhat + beta (B, h).
    """
    z = _float_array(z, "z")
    gamma = _float_array(gamma, "gamma")
    beta = _float_array(beta, "beta")
    running_mean = _float_array(running_mean, "running_mean")
    running_var = _float_array(running_var, "running_var")
    _check_same_dtype(z.dtype, gamma=gamma, beta=beta, running_mean=running_mean,
                      running_var=running_var)
    if z.ndim != 2:
        raise ValueError(f"batchnorm expects z of shape (B, h), got {z.shape}")
    batch, width = z.shape
    for name, arr in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                      ("running_var", running_var)):
        _check_shape(arr, (width,), name)
    momentum = float(momentum)

    if training:
        if batch <= 1:
            raise ValueError(f"batch norm in training mode needs more than 1 sample per "
                             f"feature, got batch size {batch}")
        mean = z.mean(axis=0)
        centered = z - mean
        var = (centered * centered).mean(axis=0)
        unbiased_var = var * (batch / (batch - 1))
        new_running_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_running_var = (1.0 - momentum) * running_var + momentum * unbiased_var
    else:
        centered = z - running_mean
        var = running_var
        new_running_mean = running_mean.copy()
        new_running_var = running_var.copy()

    inv_std = 1.0 / np.sqrt(var + eps)
    zhat = centered * inv_std
    n = gamma * zhat + beta
    cache = {"training": bool(training), "zhat": zhat, "inv_std": inv_std, "gamma": gamma}
    return n, cache, new_running_mean, new_running_var


@_ieee
def batchnorm_backward(dn: Any, cache: Mapping[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of batchnorm_forward.

    Args:
        dn: dL/dn (B, h).  cache: from batchnorm_forward.

    Returns:
        ``(dz (B, h), dgamma (h,), dbeta (h,))``.  In training mode the batch statistics are
        differentiated through: ``dz = inv_std * (g - mean_b g - zhat * mean_b(g * zhat))``
        with ``g = gamma * dn``; in eval mode ``dz = gamma * inv_std * dn``.
    """
    zhat, inv_std, gamma = cache["zhat"], cache["inv_std"], cache["gamma"]
    dn = _float_array(dn, "dn")
    _check_same_dtype(zhat.dtype, dn=dn)
    _check_shape(dn, zhat.shape, "dn")
    dgamma = (dn * zhat).sum(axis=0)
    dbeta = dn.sum(axis=0)
    g = dn * gamma
    if cache["training"]:
        dz = inv_std * (g - g.mean(axis=0) - zhat * (g * zhat).mean(axis=0))
    else:
        dz = g * inv_std
    return dz, dgamma, dbeta


@_ieee
def layernorm_forward(z: Any, gamma: Any, beta: Any, eps: float = 1e-5
                      ) -> tuple[np.ndarray, dict]:
    """torch.nn.LayerNorm(h) on (B, h) input: per sample over the features, biased variance.

    Args:
        z: (B, h).  gamma, beta: (h,).

    Returns:
        ``(n, cache)`` with ``n = gamma * (z - mu) / sqrt(var + eps) + beta`` (B, h).
    """
    z = _float_array(z, "z")
    gamma = _float_array(gamma, "gamma")
    beta = _float_array(beta, "beta")
    _check_same_dtype(z.dtype, gamma=gamma, beta=beta)
    if z.ndim != 2:
        raise ValueError(f"layernorm expects z of shape (B, h), got {z.shape}")
    _check_shape(gamma, (z.shape[1],), "gamma")
    _check_shape(beta, (z.shape[1],), "beta")
    mean = z.mean(axis=1, keepdims=True)
    centered = z - mean
    var = (centered * centered).mean(axis=1, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    zhat = centered * inv_std
    n = gamma * zhat + beta
    return n, {"zhat": zhat, "inv_std": inv_std, "gamma": gamma}


@_ieee
def layernorm_backward(dn: Any, cache: Mapping[str, Any]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of layernorm_forward.

    Args:
        dn: dL/dn (B, h).  cache: from layernorm_forward.

    Returns:
        ``(dz (B, h), dgamma (h,), dbeta (h,))`` with
        ``dz = inv_std * (g - mean_h g - zhat * mean_h(g * zhat))``, ``g = gamma * dn``.
    """
    zhat, inv_std, gamma = cache["zhat"], cache["inv_std"], cache["gamma"]
    dn = _float_array(dn, "dn")
    _check_same_dtype(zhat.dtype, dn=dn)
    _check_shape(dn, zhat.shape, "dn")
    dgamma = (dn * zhat).sum(axis=0)
    dbeta = dn.sum(axis=0)
    g = dn * gamma
    dz = inv_std * (g - g.mean(axis=1, keepdims=True)
                    - zhat * (g * zhat).mean(axis=1, keepdims=True))
    return dz, dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------------------


def _mlp_layout(params: Mapping[str, Any], norm: str | None, bias: bool
                ) -> tuple[int, list[int], np.dtype]:
    """Check an MLP parameter dict; return (L, sizes, dtype)."""
    if norm not in (None, "batch", "layer"):
        raise ValueError(f"norm must be None, 'batch' or 'layer', got {norm!r}")
    n_linear = 0
    while f"layers.{n_linear}.weight" in params:
        n_linear += 1
    if n_linear == 0:
        raise ValueError("params hold no 'layers.0.weight'")
    n_hidden = n_linear - 1

    expected = [f"layers.{l}.weight" for l in range(n_linear)]
    if bias:
        expected += [f"layers.{l}.bias" for l in range(n_linear)]
    norm_fields = {"batch": ("weight", "bias", "running_mean", "running_var"),
                   "layer": ("weight", "bias"), None: ()}[norm]
    expected += [f"norms.{l}.{field}" for l in range(n_hidden) for field in norm_fields]
    missing = [name for name in expected if name not in params]
    if missing:
        raise ValueError(f"params are missing {missing} (norm={norm!r}, bias={bias})")
    # PyTorch's BatchNorm1d also stores num_batches_tracked; it plays no part here.
    ignorable = ({f"norms.{l}.num_batches_tracked" for l in range(n_hidden)}
                 if norm == "batch" else set())
    unexpected = sorted(set(params) - set(expected) - ignorable)
    if unexpected:
        raise ValueError(f"unexpected entries in params: {unexpected} (norm={norm!r}, "
                         f"bias={bias})")

    dtype = _float_array(params["layers.0.weight"], "layers.0.weight").dtype
    for name in expected:
        arr = _float_array(params[name], name)
        _check_same_dtype(dtype, **{name: arr})

    sizes = [int(np.shape(params["layers.0.weight"])[1])]
    for l in range(n_linear):
        W = np.asarray(params[f"layers.{l}.weight"])
        if W.ndim != 2 or W.shape[1] != sizes[-1]:
            raise ValueError(f"layers.{l}.weight has shape {W.shape}, expected (out, {sizes[-1]})")
        sizes.append(W.shape[0])
        if bias:
            _check_shape(np.asarray(params[f"layers.{l}.bias"]), (W.shape[0],), f"layers.{l}.bias")
    for l in range(n_hidden):
        for field in norm_fields:
            name = f"norms.{l}.{field}"
            _check_shape(np.asarray(params[name]), (sizes[l + 1],), name)
    return n_hidden, sizes, dtype


@_ieee
def mlp_forward(params: Mapping[str, Any], x: Any, *, activation: Any = "tanh",
                act_params: Mapping[str, Any] | None = None, norm: str | None = None,
                residual: Any = False, residual_scale: float = 1.0, training: bool = True,
                bias: bool = True) -> tuple[np.ndarray, dict]:
    """Forward pass of the MLP of docs/CONVENTIONS.md.

    Hidden layer l (0-based index l in the parameter names, 1-based l + 1 in the maths)::

        z = a @ W.T + b;  n = Norm(z);  f = act(n)
        a_next = a + residual_scale * f   if the residual applies to this layer, else f

    and the output is ``y = a_L @ W_out.T + b_out`` (no norm, no activation).

    Args:
        params: name -> ndarray, the state_dict names of docs/API.md: "layers.{l}.weight" (out, in)
            and "layers.{l}.bias" (out,) for l = 0..L (l = L is the output layer; no biases
            when bias=False); "norms.{l}.weight", "norms.{l}.bias" (h_{l+1},) for l = 0..L-1
            when norm is "batch" or "layer", plus "norms.{l}.running_mean",
            "norms.{l}.running_var" for "batch".  L is inferred.  Never mutated.
        x: (B, in), same dtype as the parameters.
        activation, act_params: a name from ACTIVATIONS (parameters in act_params) or an
            ``(f, df)`` pair.
        norm: None, "batch" or "layer".
        residual: see resolve_residual.  residual_scale: the alpha of the skip connection.
        training: batch norm mode (batch statistics and running-stat update vs running stats).
        bias: whether the linear layers have biases.

    Returns:
        ``(y, cache)``: y (B, out); cache holds what mlp_backward needs plus
        ``cache["new_buffers"]`` (updated "norms.{l}.running_mean/running_var" for norm="batch",
        else empty) and ``cache["forward_first_nonfinite"]``: None, or the first 1-based l in
        1..L whose a_l holds NaN/Inf, or L + 1 when only y does, with
        ``cache["forward_nonfinite_stage"]`` where it was born: "parameter" (a parameter of
        the layer is NaN/Inf), "linear" (z), "norm" (the norm's output n), "activation"
        (act(n), or the output of a layer without residual), "residual" (a + alpha f).
    """
    n_hidden, sizes, dtype = _mlp_layout(params, norm, bias)
    x = _float_array(x, "x")
    _check_same_dtype(dtype, x=x)
    if x.ndim != 2 or x.shape[1] != sizes[0]:
        raise ValueError(f"x must have shape (B, {sizes[0]}), got {x.shape}")
    act_name, forward_fn, act_grad_fn, act_p = _act_spec(activation, act_params)
    skip = resolve_residual(sizes, residual)
    alpha = float(residual_scale)

    def p(name: str) -> np.ndarray:
        return np.asarray(params[name])

    a = x
    layers = []
    new_buffers: dict[str, np.ndarray] = {}
    forward_first_nonfinite = None
    forward_stage = None
    for l in range(n_hidden):
        W = p(f"layers.{l}.weight")
        b = p(f"layers.{l}.bias") if bias else None
        z = linear_forward(a, W, b)
        norm_cache = None
        if norm == "batch":
            n, norm_cache, new_mean, new_var = batchnorm_forward(
                z, p(f"norms.{l}.weight"), p(f"norms.{l}.bias"), p(f"norms.{l}.running_mean"),
                p(f"norms.{l}.running_var"), training)
            new_buffers[f"norms.{l}.running_mean"] = new_mean
            new_buffers[f"norms.{l}.running_var"] = new_var
        elif norm == "layer":
            n, norm_cache = layernorm_forward(z, p(f"norms.{l}.weight"), p(f"norms.{l}.bias"))
        else:
            n = z
        f = _call_elementwise(forward_fn, n, act_p, "activation forward")
        a_next = a + alpha * f if skip[l] else f
        layers.append({"a_prev": a, "W": W, "n": n, "norm_cache": norm_cache})
        a = a_next
        if forward_first_nonfinite is None and _has_nonfinite(a):
            forward_first_nonfinite = l + 1
            # born here (a_prev was finite): which stage gave the first NaN/Inf
            own = [W, b] + ([p(f"norms.{l}.weight"), p(f"norms.{l}.bias")] if norm else [])
            if norm == "batch" and not training:
                own += [p(f"norms.{l}.running_mean"), p(f"norms.{l}.running_var")]
            if any(t is not None and _has_nonfinite(t) for t in own):
                forward_stage = "parameter"
            elif _has_nonfinite(z):
                forward_stage = "linear"
            elif norm is not None and _has_nonfinite(n):
                forward_stage = "norm"
            elif _has_nonfinite(f) or not skip[l]:
                forward_stage = "activation"
            else:
                forward_stage = "residual"

    W_out = p(f"layers.{n_hidden}.weight")
    b_out = p(f"layers.{n_hidden}.bias") if bias else None
    y = linear_forward(a, W_out, b_out)
    if forward_first_nonfinite is None and _has_nonfinite(y):
        forward_first_nonfinite = n_hidden + 1
        own = [W_out, b_out]
        forward_stage = ("parameter" if any(t is not None and _has_nonfinite(t) for t in own)
                         else "linear")

    cache = {
        "L": n_hidden,
        "sizes": sizes,
        "dtype": dtype,
        "x": x,
        "a_L": a,
        "W_out": W_out,
        "y": y,
        "layers": layers,
        "activation": (act_name, act_grad_fn, act_p),
        "norm": norm,
        "residual": skip,
        "residual_scale": alpha,
        "bias": bool(bias),
        "training": bool(training),
        "new_buffers": new_buffers,
        "forward_first_nonfinite": forward_first_nonfinite,
        "forward_nonfinite_stage": forward_stage,
    }
    return y, cache


@_ieee
def mlp_backward(cache: Mapping[str, Any], grad_y: Any, *,
                 saturation: float | None = None) -> tuple[dict, np.ndarray, dict]:
    """Backpropagate ``grad_y = dL/dy`` through the MLP of mlp_forward.

    Args:
        cache: from mlp_forward.
        grad_y: (B, out), the model's dtype.

    Returns:
        ``(grads, dx, report)``:
        grads maps every parameter name (no buffers) to dL/d(parameter);
        dx = dL/dx (B, in);
        report holds float64 Frobenius norms: "weight_grad_norms" (L+1,), "bias_grad_norms"
        (L+1,) (zeros when bias=False), "norm_weight_grad_norms" (L,), "norm_bias_grad_norms"
        (L,) (length 0 when norm is None), "activation_grad_norms" (L+1,) = ||dL/da_l|| for
        l = 0..L (a_0 = x), "global_norm" (float, all parameter gradients together), and
        "first_nonfinite": None or the first l scanning l = L..0 whose dL/da_l has NaN/Inf.
        Health (docs/CONVENTIONS.md): "dead_unit_fractions", "saturated_unit_fractions"
        (L,: units of hidden layer l whose |act'| is 0 / below ``saturation`` for every
        example; ``saturation`` defaults to :func:`saturation_threshold`),
        "zero_grad_fractions", "subnormal_grad_fractions" (L+1,: entries of dL/da_l),
        "mean_abs_activations" (L,: mean |a_l|), "forward_nonfinite_stage" (the cache's) and
        "backward_nonfinite_stage": with a finite forward, where dL/da_{first_nonfinite} was
        born: "activation_backward" / "norm_backward" (layer l's dL/dz) or "product".
    """
    n_hidden = cache["L"]
    dtype = cache["dtype"]
    grad_y = _float_array(grad_y, "grad_y")
    _check_same_dtype(dtype, grad_y=grad_y)
    _check_shape(grad_y, cache["y"].shape, "grad_y")
    act_name, act_grad_fn, act_p = cache["activation"]
    alpha = cache["residual_scale"]
    has_bias = cache["bias"]
    norm = cache["norm"]

    weight_grads: list[np.ndarray] = [None] * (n_hidden + 1)
    bias_grads: list[np.ndarray | None] = [None] * (n_hidden + 1)
    norm_weight_grads: list[np.ndarray] = [None] * n_hidden
    norm_bias_grads: list[np.ndarray] = [None] * n_hidden
    activation_grads: list[np.ndarray] = [None] * (n_hidden + 1)
    dz_grads: list[np.ndarray] = [None] * n_hidden

    # output layer: y = a_L @ W_out.T + b_out
    g_a, weight_grads[n_hidden], bias_grads[n_hidden] = linear_backward(
        grad_y, cache["a_L"], cache["W_out"], has_bias)
    activation_grads[n_hidden] = g_a

    for l in reversed(range(n_hidden)):
        layer = cache["layers"][l]
        g_f = alpha * g_a if cache["residual"][l] else g_a
        g_n = _act_backward(act_name, act_grad_fn, layer["n"], g_f, act_p)
        if norm == "batch":
            g_z, norm_weight_grads[l], norm_bias_grads[l] = batchnorm_backward(
                g_n, layer["norm_cache"])
        elif norm == "layer":
            g_z, norm_weight_grads[l], norm_bias_grads[l] = layernorm_backward(
                g_n, layer["norm_cache"])
        else:
            g_z = g_n
        dz_grads[l] = g_z
        g_prev, weight_grads[l], bias_grads[l] = linear_backward(
            g_z, layer["a_prev"], layer["W"], has_bias)
        if cache["residual"][l]:
            g_prev = g_prev + g_a
        g_a = g_prev
        activation_grads[l] = g_a

    grads: dict[str, np.ndarray] = {}
    for l in range(n_hidden + 1):
        grads[f"layers.{l}.weight"] = weight_grads[l]
        if has_bias:
            grads[f"layers.{l}.bias"] = bias_grads[l]
    if norm is not None:
        for l in range(n_hidden):
            grads[f"norms.{l}.weight"] = norm_weight_grads[l]
            grads[f"norms.{l}.bias"] = norm_bias_grads[l]

    first_nonfinite = None
    for l in range(n_hidden, -1, -1):
        if _has_nonfinite(activation_grads[l]):
            first_nonfinite = l
            break
    backward_stage = None
    if first_nonfinite is not None and cache["forward_first_nonfinite"] is None:
        backward_stage = "product"
        if first_nonfinite < n_hidden and _has_nonfinite(dz_grads[first_nonfinite]):
            backward_stage = "norm_backward" if norm is not None else "activation_backward"

    thr = saturation_threshold(_act_of_cache(cache), act_p) if saturation is None \
        else float(saturation)
    units = [_unit_health(_call_elementwise(act_grad_fn, layer["n"], act_p,
                                            "activation derivative"), thr)
             for layer in cache["layers"]]
    gh = [_grad_health(g) for g in activation_grads]
    acts = [layer["a_prev"] for layer in cache["layers"][1:]] + [cache["a_L"]]
    report = {
        "weight_grad_norms": _norms_array(weight_grads),
        "bias_grad_norms": (_norms_array(bias_grads) if has_bias
                            else np.zeros(n_hidden + 1, dtype=np.float64)),
        "norm_weight_grad_norms": (_norms_array(norm_weight_grads) if norm is not None
                                   else np.zeros(0, dtype=np.float64)),
        "norm_bias_grad_norms": (_norms_array(norm_bias_grads) if norm is not None
                                 else np.zeros(0, dtype=np.float64)),
        "activation_grad_norms": _norms_array(activation_grads),
        "global_norm": global_norm(grads),
        "first_nonfinite": first_nonfinite,
        "dead_unit_fractions": np.array([u[0] for u in units], dtype=np.float64),
        "saturated_unit_fractions": np.array([u[1] for u in units], dtype=np.float64),
        "zero_grad_fractions": np.array([h[0] for h in gh], dtype=np.float64),
        "subnormal_grad_fractions": np.array([h[1] for h in gh], dtype=np.float64),
        "mean_abs_activations": np.array(
            [float(np.mean(np.abs(a.astype(np.float64)))) for a in acts][:n_hidden],
            dtype=np.float64),
        "forward_nonfinite_stage": cache["forward_nonfinite_stage"],
        "backward_nonfinite_stage": backward_stage,
    }
    return grads, g_a, report


def _act_of_cache(cache: Mapping[str, Any]) -> Any:
    """The activation of an mlp_forward / rnn_forward cache as _act_spec takes it."""
    name, grad_fn, _ = cache["activation"]
    return name if name is not None else (grad_fn, grad_fn)


@_ieee
def mlp_per_example_grad_norms(params: Mapping[str, Any], x: Any, grad_y: Any, **kwargs: Any
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-example gradient norms, one example at a time: example i's own loss has
    ``dL_i/dy_i = B * grad_y[i]`` (``L = mean_i L_i``); forward and backward on ``x[i:i+1]``
    alone. Returns ``(norms (B,), per_layer (L+1, B))``: ``||grad L_i||`` over every
    parameter, and over linear layer l's weight and bias with norm layer l's gamma and
    beta. ``kwargs`` as :func:`mlp_forward`'s; batch norm only in eval mode
    (``training=False``): in training mode the examples are coupled (ValueError)."""
    if kwargs.get("norm") == "batch" and kwargs.get("training", True):
        raise ValueError("per-example gradients are not defined for batch norm in training "
                         "mode (the examples of a batch are coupled)")
    x = _float_array(x, "x")
    grad_y = _float_array(grad_y, "grad_y")
    B = x.shape[0]
    n_hidden = None
    per_layer = []
    for i in range(B):
        _, cache = mlp_forward(params, x[i:i + 1], **kwargs)
        n_hidden = cache["L"]
        grads, _, _ = mlp_backward(cache, (grad_y[i:i + 1] * B).astype(grad_y.dtype),
                                   saturation=0.0)
        norms = []
        for l in range(n_hidden + 1):
            ts = [grads[k] for k in (f"layers.{l}.weight", f"layers.{l}.bias",
                                     f"norms.{l}.weight", f"norms.{l}.bias") if k in grads]
            norms.append(global_norm(ts))
        per_layer.append(norms)
    layer = np.array(per_layer, dtype=np.float64).T
    return np.array([frobenius_norm(layer[:, i]) for i in range(B)]), layer


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------


@_ieee
def loss_forward_backward(y: Any, target: Any, loss: str) -> tuple[float, np.ndarray]:
    """Loss value and its gradient dL/dy, reduction "mean" as PyTorch.

    Args:
        y: model output.  "mse": any shape; "cross_entropy": logits (B, C).
        target: "mse": same shape and dtype as y; "cross_entropy": integer class indices (B,)
            in [0, C).
        loss: "mse" (``mean((y - target)^2)`` over all elements) or "cross_entropy"
            (``mean_b(-log_softmax(y_b)[target_b])``, computed stably).

    Returns:
        ``(value, dy)``: the loss as a Python float and dL/dy (shape and dtype of y).
    """
    y = _float_array(y, "y")
    target = np.asarray(target)
    if loss == "mse":
        if target.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"mse target must be a float array, got dtype {target.dtype}")
        _check_same_dtype(y.dtype, target=target)
        _check_shape(target, y.shape, "mse target")
        if y.size == 0:
            raise ValueError("mse of an empty array")
        diff = y - target
        value = float(np.mean(diff * diff))
        dy = diff * (2.0 / y.size)
        return value, dy
    if loss == "cross_entropy":
        if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
            raise ValueError(f"cross_entropy expects logits of shape (B, C) with B, C >= 1, "
                             f"got {y.shape}")
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"cross_entropy target must hold integer class indices, "
                            f"got dtype {target.dtype}")
        batch, n_classes = y.shape
        _check_shape(target, (batch,), "cross_entropy target")
        if np.any(target < 0) or np.any(target >= n_classes):
            raise ValueError(f"cross_entropy target holds class indices outside "
                             f"[0, {n_classes})")
        rows = np.arange(batch)
        shifted = y - y.max(axis=1, keepdims=True)
        log_sum_exp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_sum_exp
        value = float(-np.mean(log_probs[rows, target]))
        dy = np.exp(log_probs)
        dy[rows, target] -= 1.0
        dy = dy / batch
        return value, dy
    raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}")


# ----------------------------------------------------------------------------------------------
# gradient clipping
# ----------------------------------------------------------------------------------------------


def _scaled(g: np.ndarray, factor: float) -> np.ndarray:
    g = _float_array(g, "gradient")
    return g * g.dtype.type(factor)


def _clip_coefficient(total: float, max_norm: float) -> float:
    """clamp(max_norm / (total + 1e-6), max=1), NaN propagating (as torch.clamp)."""
    coef = float(max_norm) / (total + _CLIP_EPS)
    return coef if math.isnan(coef) else min(coef, 1.0)


@_ieee
def clip_grad_norm(grads: Mapping[str, Any], max_norm: float, error_if_nonfinite: bool = False
                   ) -> tuple[float, dict[str, np.ndarray]]:
    """torch.nn.utils.clip_grad_norm_ with norm_type 2, on a dict of gradients.

    ``total = ||all grads||_2`` (float64), ``coef = max_norm / (total + 1e-6)``, and every
    gradient is multiplied by ``min(coef, 1)`` (by 1.0 when coef >= 1; a NaN coef makes every
    gradient NaN, an infinite total gives coef 0).  With error_if_nonfinite a NaN/Inf total is
    a RuntimeError.

    Returns:
        ``(total, new_grads)``: the norm before clipping and a new dict; the input is untouched.
    """
    total = global_norm(grads)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order 2.0 for gradients from `parameters` is "
                           f"non-finite ({total}), so it cannot be clipped")
    coef = _clip_coefficient(total, max_norm)
    return total, {name: _scaled(g, coef) for name, g in grads.items()}


@_ieee
def clip_grad_value(grads: Mapping[str, Any], clip_value: float) -> dict[str, np.ndarray]:
    """torch.nn.utils.clip_grad_value_: clamp every element to [-clip_value, clip_value].

    NaN stays NaN.  Returns a new dict; the input is untouched.
    """
    v = float(clip_value)
    new_grads = {}
    for name, g in grads.items():
        g = _float_array(g, name)
        new_grads[name] = np.minimum(np.maximum(g, g.dtype.type(-v)), g.dtype.type(v))
    return new_grads


@_ieee
def clip_grad_norm_per_layer(grads: Mapping[str, Any], max_norm: float
                             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """clip_grad_norm's formula applied to each gradient tensor on its own (Keras' clipnorm).

    Returns:
        ``(norms, new_grads)``: each tensor's norm before clipping (float64) and a new dict.
    """
    norms: dict[str, float] = {}
    new_grads: dict[str, np.ndarray] = {}
    for name, g in grads.items():
        norms[name] = frobenius_norm(g)
        new_grads[name] = _scaled(g, _clip_coefficient(norms[name], max_norm))
    return norms, new_grads


# ----------------------------------------------------------------------------------------------
# vanilla RNN
# ----------------------------------------------------------------------------------------------

_RNN_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "readout.weight",
              "readout.bias")


def _rnn_params(params: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """Check an RNN parameter dict; return every name of _RNN_NAMES (None when absent)."""
    unexpected = sorted(set(params) - set(_RNN_NAMES))
    if unexpected:
        raise ValueError(f"unexpected entries in RNN params: {unexpected}")
    for required in ("weight_ih_l0", "weight_hh_l0"):
        if required not in params:
            raise ValueError(f"RNN params are missing {required!r}")
    if ("bias_ih_l0" in params) != ("bias_hh_l0" in params):
        raise ValueError("give both 'bias_ih_l0' and 'bias_hh_l0' or neither")
    if "readout.bias" in params and "readout.weight" not in params:
        raise ValueError("'readout.bias' given without 'readout.weight'")

    p = {name: (_float_array(params[name], name) if name in params else None)
         for name in _RNN_NAMES}
    dtype = p["weight_ih_l0"].dtype
    _check_same_dtype(dtype, **{name: arr for name, arr in p.items()})
    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    if W_ih.ndim != 2:
        raise ValueError(f"weight_ih_l0 must be (H, I), got {W_ih.shape}")
    hidden = W_ih.shape[0]
    _check_shape(W_hh, (hidden, hidden), "weight_hh_l0")
    if p["bias_ih_l0"] is not None:
        _check_shape(p["bias_ih_l0"], (hidden,), "bias_ih_l0")
        _check_shape(p["bias_hh_l0"], (hidden,), "bias_hh_l0")
    if p["readout.weight"] is not None:
        W_out = p["readout.weight"]
        if W_out.ndim != 2 or W_out.shape[1] != hidden:
            raise ValueError(f"readout.weight must be (K, {hidden}), got {W_out.shape}")
        if p["readout.bias"] is not None:
            _check_shape(p["readout.bias"], (W_out.shape[0],), "readout.bias")
    return p


@_ieee
def rnn_forward(params: Mapping[str, Any], x: Any, h0: Any | None = None, *,
                activation: Any = "tanh", act_params: Mapping[str, Any] | None = None
                ) -> tuple[np.ndarray, dict]:
    """One-layer torch.nn.RNN (time-major ``(T, B, I)``) with an optional linear readout.

    ``h_t = act(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh)`` for t = 1..T, and with a
    readout ``y_t = h_t @ W_out.T + b_out``.

    Args:
        params: "weight_ih_l0" (H, I), "weight_hh_l0" (H, H), optionally "bias_ih_l0" and
            "bias_hh_l0" (H,) (both or neither), optionally "readout.weight" (K, H) and
            "readout.bias" (K,).
        x: (T, B, I), T >= 1.  h0: (B, H) or None (zeros).
        activation, act_params: as for mlp_forward (PyTorch offers tanh and relu).

    Returns:
        ``(hs, cache)``: hs (T, B, H) = h_1..h_T; ``cache["ys"]`` is the readout output
        (T, B, K), or None without a readout; ``cache["forward_first_nonfinite"]`` the first
        t whose h_t holds NaN/Inf (T + 1: only the readout's output), born at stage
        ``cache["forward_nonfinite_stage"]`` ("parameter", "linear" (z_t) or "activation").
    """
    p = _rnn_params(params)
    dtype = p["weight_ih_l0"].dtype
    x = _float_array(x, "x")
    _check_same_dtype(dtype, x=x)
    hidden, n_inputs = p["weight_ih_l0"].shape
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[2] != n_inputs:
        raise ValueError(f"x must have shape (T, B, {n_inputs}) with T >= 1, got {x.shape}")
    n_steps, batch, _ = x.shape
    if h0 is None:
        h0 = np.zeros((batch, hidden), dtype=dtype)
    else:
        h0 = _float_array(h0, "h0")
        _check_same_dtype(dtype, h0=h0)
        _check_shape(h0, (batch, hidden), "h0")
    act_name, forward_fn, act_grad_fn, act_p = _act_spec(activation, act_params)

    zs = np.empty((n_steps, batch, hidden), dtype=dtype)
    hs = np.empty((n_steps, batch, hidden), dtype=dtype)
    h = h0
    forward_first, forward_stage = None, None
    own = [p[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    for t in range(n_steps):
        from_input = linear_forward(x[t], p["weight_ih_l0"], p["bias_ih_l0"])
        from_state = linear_forward(h, p["weight_hh_l0"], p["bias_hh_l0"])
        zs[t] = from_input + from_state
        h = _call_elementwise(forward_fn, zs[t], act_p, "activation forward")
        hs[t] = h
        if forward_first is None and _has_nonfinite(h):  # born at step t + 1
            forward_first = t + 1
            forward_stage = ("parameter" if any(w is not None and _has_nonfinite(w) for w in own)
                             else "linear" if _has_nonfinite(zs[t]) else "activation")

    ys = None
    if p["readout.weight"] is not None:
        ys = hs @ p["readout.weight"].T
        if p["readout.bias"] is not None:
            ys = ys + p["readout.bias"]
        if forward_first is None and _has_nonfinite(ys):
            forward_first = n_steps + 1
            forward_stage = ("parameter" if any(
                w is not None and _has_nonfinite(w)
                for w in (p["readout.weight"], p["readout.bias"])) else "linear")

    cache = {"params": p, "dtype": dtype, "x": x, "h0": h0, "zs": zs, "hs": hs, "ys": ys,
             "activation": (act_name, act_grad_fn, act_p),
             "forward_first_nonfinite": forward_first, "forward_nonfinite_stage": forward_stage}
    return hs, cache


@_ieee
def rnn_backward(cache: Mapping[str, Any], grad_hs: Any | None = None,
                 grad_ys: Any | None = None, *, saturation: float | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict]:
    """Backpropagation through time for rnn_forward.

    Args:
        cache: from rnn_forward.
        grad_hs: dL/dh_t from outside the recurrence (T, B, H), or None (zeros).
        grad_ys: dL/dy_t for the readout outputs (T, B, K), or None (zeros); only with a
            readout.

    Returns:
        ``(grads, dx, dh0, report)``: grads maps each present parameter name to its gradient;
        dx (T, B, I); dh0 (B, H); report (float64 norms): "timestep_grad_norms" (T,) =
        ||dL/dh_t|| for t = 1..T with the *total* derivative through all later steps,
        "weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
        "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm" (0.0 for
        absent parameters), "h0_grad_norm", "global_norm" (all parameter gradients), and
        "first_nonfinite": None or the first t scanning t = T..1 whose dL/dh_t has NaN/Inf;
        health per step t = 1..T, as mlp_backward's ("dead_unit_fractions",
        "saturated_unit_fractions" of the units of h_t, "zero_grad_fractions",
        "subnormal_grad_fractions" of dL/dh_t, "mean_abs_activations" of h_t) and
        "backward_nonfinite_stage" ("activation_backward": dL/dz_{t+1} was NaN/Inf, else
        "product").
    """
    p = cache["params"]
    dtype = cache["dtype"]
    x, h0, zs, hs = cache["x"], cache["h0"], cache["zs"], cache["hs"]
    act_name, act_grad_fn, act_p = cache["activation"]
    n_steps, batch, hidden = hs.shape
    W_ih, W_hh, W_out = p["weight_ih_l0"], p["weight_hh_l0"], p["readout.weight"]

    # Gradient reaching each h_t from outside the recurrence.
    upstream = np.zeros_like(hs)
    if grad_hs is not None:
        grad_hs = _float_array(grad_hs, "grad_hs")
        _check_same_dtype(dtype, grad_hs=grad_hs)
        _check_shape(grad_hs, hs.shape, "grad_hs")
        upstream = upstream + grad_hs
    grads: dict[str, np.ndarray] = {}
    readout_grads: dict[str, np.ndarray] = {}
    if grad_ys is not None:
        if W_out is None:
            raise ValueError("grad_ys given but the RNN has no readout")
        grad_ys = _float_array(grad_ys, "grad_ys")
        _check_same_dtype(dtype, grad_ys=grad_ys)
        _check_shape(grad_ys, cache["ys"].shape, "grad_ys")
        upstream = upstream + grad_ys @ W_out
        n_out = W_out.shape[0]
        flat_gy = grad_ys.reshape(n_steps * batch, n_out)
        readout_grads["readout.weight"] = flat_gy.T @ hs.reshape(n_steps * batch, hidden)
        readout_grads["readout.bias"] = flat_gy.sum(axis=0)
    elif W_out is not None:
        readout_grads["readout.weight"] = np.zeros_like(W_out)
        readout_grads["readout.bias"] = np.zeros(W_out.shape[0], dtype=dtype)

    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros(hidden, dtype=dtype)
    dx = np.zeros_like(x)
    dh = [None] * n_steps  # total dL/dh_t
    dzs = [None] * n_steps
    carry = np.zeros((batch, hidden), dtype=dtype)  # dL/dh_t through step t + 1
    for t in reversed(range(n_steps)):
        dh[t] = upstream[t] + carry
        h_prev = hs[t - 1] if t > 0 else h0
        dz = _act_backward(act_name, act_grad_fn, zs[t], dh[t], act_p)
        dzs[t] = dz
        dW_ih += dz.T @ x[t]
        dW_hh += dz.T @ h_prev
        db += dz.sum(axis=0)
        dx[t] = dz @ W_ih
        carry = dz @ W_hh
    dh0 = carry

    grads["weight_ih_l0"] = dW_ih
    grads["weight_hh_l0"] = dW_hh
    if p["bias_ih_l0"] is not None:
        grads["bias_ih_l0"] = db
        grads["bias_hh_l0"] = db.copy()
    if W_out is not None:
        grads["readout.weight"] = readout_grads["readout.weight"]
        if p["readout.bias"] is not None:
            grads["readout.bias"] = readout_grads["readout.bias"]

    first_nonfinite = None
    for t in range(n_steps, 0, -1):
        if _has_nonfinite(dh[t - 1]):
            first_nonfinite = t
            break

    def norm_of(name: str) -> float:
        return frobenius_norm(grads[name]) if name in grads else 0.0

    backward_stage = None
    if first_nonfinite is not None and cache.get("forward_first_nonfinite") is None:
        t = first_nonfinite  # dL/dh_t = ... + dz_{t+1} W_hh: dz_{t+1} is dzs[t]
        backward_stage = ("activation_backward" if t < n_steps and _has_nonfinite(dzs[t])
                          else "product")
    thr = saturation_threshold(_act_of_cache(cache), act_p) if saturation is None \
        else float(saturation)
    units = [_unit_health(_call_elementwise(act_grad_fn, zs[t], act_p,
                                            "activation derivative"), thr)
             for t in range(n_steps)]
    gh = [_grad_health(g) for g in dh]

    report = {
        "timestep_grad_norms": _norms_array(dh),
        "weight_ih_grad_norm": norm_of("weight_ih_l0"),
        "weight_hh_grad_norm": norm_of("weight_hh_l0"),
        "bias_ih_grad_norm": norm_of("bias_ih_l0"),
        "bias_hh_grad_norm": norm_of("bias_hh_l0"),
        "readout_weight_grad_norm": norm_of("readout.weight"),
        "readout_bias_grad_norm": norm_of("readout.bias"),
        "h0_grad_norm": frobenius_norm(dh0),
        "global_norm": global_norm(grads),
        "first_nonfinite": first_nonfinite,
        "dead_unit_fractions": np.array([u[0] for u in units], dtype=np.float64),
        "saturated_unit_fractions": np.array([u[1] for u in units], dtype=np.float64),
        "zero_grad_fractions": np.array([h[0] for h in gh], dtype=np.float64),
        "subnormal_grad_fractions": np.array([h[1] for h in gh], dtype=np.float64),
        "mean_abs_activations": np.array(
            [float(np.mean(np.abs(hs[t].astype(np.float64)))) for t in range(n_steps)],
            dtype=np.float64),
        "forward_nonfinite_stage": cache.get("forward_nonfinite_stage"),
        "backward_nonfinite_stage": backward_stage,
    }
    return grads, dx, dh0, report


def rnn_per_example_grad_norms(params: Mapping[str, Any], x: Any, grad_hs: Any | None = None,
                               grad_ys: Any | None = None, h0: Any | None = None,
                               **kwargs: Any) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                       np.ndarray]:
    """Per-example gradient norms of an RNN, one example at a time: example i's own loss has
    ``dL_i/dh_t = B * grad_hs[:, i]`` and ``dL_i/dy_t = B * grad_ys[:, i]`` (``L = mean_i
    L_i``); forward and backward on ``x[:, i:i+1]`` alone. Returns ``(norms (B,),
    per_tensor {name: (B,)}, per_step (T, B))``: ``||grad L_i||`` over every parameter, per
    parameter tensor, and ``||dL_i/dh_t||`` (the total derivative). ``kwargs`` as
    :func:`rnn_forward`'s."""
    x = _float_array(x, "x")
    B = x.shape[1]
    norms, per, steps = [], {}, []
    for i in range(B):
        _, cache = rnn_forward(params, x[:, i:i + 1],
                               None if h0 is None else _float_array(h0, "h0")[i:i + 1], **kwargs)
        gh = None if grad_hs is None else (_float_array(grad_hs, "grad_hs")[:, i:i + 1] * B)
        gy = None if grad_ys is None else (_float_array(grad_ys, "grad_ys")[:, i:i + 1] * B)
        grads, _, _, rep = rnn_backward(cache, gh, gy)
        norms.append(global_norm(list(grads.values())))
        for k, g in grads.items():
            per.setdefault(k, []).append(frobenius_norm(g))
        steps.append(np.asarray(rep["timestep_grad_norms"], dtype=np.float64))
    return (np.array(norms, dtype=np.float64),
            {k: np.array(v, dtype=np.float64) for k, v in per.items()},
            np.array(steps, dtype=np.float64).T)


@_ieee
def rnn_loss_grads(outputs: Any, target: Any, loss: str, on: str = "last"
                   ) -> tuple[float, np.ndarray]:
    """Loss on RNN outputs (readout outputs, or the hidden states when there is no readout).

    Args:
        outputs: (T, B, K).
        target: on="last": mse (B, K) floats, cross_entropy (B,) ints;
            on="all": mse (T, B, K), cross_entropy (T, B).
        loss: "mse" or "cross_entropy" (see loss_forward_backward).
        on: "last" (loss on step T only) or "all" (every step; mse averages over all
            T * B * K elements, cross_entropy over the T * B samples).

    Returns:
        ``(value, grad_outputs)`` with grad_outputs (T, B, K), zero at unused steps.
    """
    outputs = _float_array(outputs, "outputs")
    if outputs.ndim != 3 or outputs.shape[0] < 1:
        raise ValueError(f"outputs must have shape (T, B, K) with T >= 1, got {outputs.shape}")
    n_steps, batch, width = outputs.shape
    if on == "last":
        value, d_last = loss_forward_backward(outputs[-1], target, loss)
        grad = np.zeros_like(outputs)
        grad[-1] = d_last
        return value, grad
    if on == "all":
        if loss == "cross_entropy":
            target = np.asarray(target)
            _check_shape(target, (n_steps, batch), "cross_entropy target (on='all')")
            value, d_flat = loss_forward_backward(outputs.reshape(n_steps * batch, width),
                                                  target.reshape(n_steps * batch), loss)
            return value, d_flat.reshape(outputs.shape)
        return loss_forward_backward(outputs, target, loss)
    raise ValueError(f"on must be 'last' or 'all', got {on!r}")


# ----------------------------------------------------------------------------------------------
# gated cells: LSTM and GRU (torch.nn.LSTM / torch.nn.GRU, one layer)
# ----------------------------------------------------------------------------------------------

LSTM_GATES: tuple[str, ...] = ("i", "f", "g", "o")
"""The LSTM's gate blocks, in their order in weight_ih_l0 / weight_hh_l0 (torch's)."""
GRU_GATES: tuple[str, ...] = ("r", "z", "n")
"""The GRU's gate blocks, in their order in weight_ih_l0 / weight_hh_l0 (torch's)."""

# A unit is saturated where its gate's derivative is below this fraction of the
# derivative's maximum (sigmoid' <= 1/4 at 0, tanh' <= 1 at 0).
SATURATION = 1e-3


def _gated_params(params: Mapping[str, Any], n_gates: int, cell: str
                  ) -> dict[str, np.ndarray | None]:
    """_rnn_params for a cell of n_gates stacked blocks: weight_ih_l0 (G*H, I), ..."""
    unexpected = sorted(set(params) - set(_RNN_NAMES))
    if unexpected:
        raise ValueError(f"unexpected entries in {cell} params: {unexpected}")
    for required in ("weight_ih_l0", "weight_hh_l0"):
        if required not in params:
            raise ValueError(f"{cell} params are missing {required!r}")
    if ("bias_ih_l0" in params) != ("bias_hh_l0" in params):
        raise ValueError("give both 'bias_ih_l0' and 'bias_hh_l0' or neither")
    if "readout.bias" in params and "readout.weight" not in params:
        raise ValueError("'readout.bias' given without 'readout.weight'")
    p = {name: (_float_array(params[name], name) if name in params else None)
         for name in _RNN_NAMES}
    dtype = p["weight_ih_l0"].dtype
    _check_same_dtype(dtype, **{name: arr for name, arr in p.items()})
    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    if W_ih.ndim != 2 or W_ih.shape[0] % n_gates or W_ih.shape[0] == 0:
        raise ValueError(f"weight_ih_l0 must be ({n_gates}H, I), got {W_ih.shape}")
    hidden = W_ih.shape[0] // n_gates
    _check_shape(W_hh, (n_gates * hidden, hidden), "weight_hh_l0")
    if p["bias_ih_l0"] is not None:
        _check_shape(p["bias_ih_l0"], (n_gates * hidden,), "bias_ih_l0")
        _check_shape(p["bias_hh_l0"], (n_gates * hidden,), "bias_hh_l0")
    if p["readout.weight"] is not None:
        W_out = p["readout.weight"]
        if W_out.ndim != 2 or W_out.shape[1] != hidden:
            raise ValueError(f"readout.weight must be (K, {hidden}), got {W_out.shape}")
        if p["readout.bias"] is not None:
            _check_shape(p["readout.bias"], (W_out.shape[0],), "readout.bias")
    return p


def _gated_inputs(p: Mapping[str, Any], x: Any, states: Mapping[str, Any], n_gates: int
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    dtype = p["weight_ih_l0"].dtype
    x = _float_array(x, "x")
    _check_same_dtype(dtype, x=x)
    gh, n_inputs = p["weight_ih_l0"].shape
    hidden = gh // n_gates
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[2] != n_inputs:
        raise ValueError(f"x must have shape (T, B, {n_inputs}) with T >= 1, got {x.shape}")
    batch = x.shape[1]
    out = {}
    for name, s in states.items():
        if s is None:
            out[name] = np.zeros((batch, hidden), dtype=dtype)
        else:
            s = _float_array(s, name)
            _check_same_dtype(dtype, **{name: s})
            _check_shape(s, (batch, hidden), name)
            out[name] = s
    return x, out


def _sigmoid_grad_of(z: np.ndarray) -> np.ndarray:
    """sigma'(z) = e / (1 + e)^2 with e = exp(-|z|): no cancellation for large |z|."""
    e = np.exp(-np.abs(z))
    return e / (1.0 + e) ** 2


def _gate_stats(acts: np.ndarray, pre: np.ndarray, kinds: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per gate block and step: the mean gate value over (B, H) and the fraction of units
    whose derivative is below SATURATION times its maximum. acts, pre: (T, B, G*H) (the gate
    values and their pre-activations); kinds: "sigmoid" or "tanh" per block."""
    n_steps, _, gh = acts.shape
    hidden = gh // len(kinds)
    means = np.empty((len(kinds), n_steps))
    sat = np.empty((len(kinds), n_steps))
    for k, kind in enumerate(kinds):
        a = acts[:, :, k * hidden:(k + 1) * hidden].astype(np.float64)
        z = pre[:, :, k * hidden:(k + 1) * hidden].astype(np.float64)
        if kind == "sigmoid":
            d, top = _sigmoid_grad_of(z), 0.25
        else:
            t = np.tanh(z)
            d, top = 1.0 - t * t, 1.0
        means[k] = a.mean(axis=(1, 2))
        sat[k] = (d < SATURATION * top).mean(axis=(1, 2))
    return means, sat


def _gate_deriv(z: np.ndarray, kind: str) -> np.ndarray:
    """A gate's derivative over its maximum, in z's own dtype (so that it underflows to 0
    where the dtype's does): sigmoid' / 0.25 = 4 e / (1 + e)^2 with e = exp(-|z|), tanh' =
    4 e / (1 + e)^2 with e = exp(-2|z|) (no cancellation for large |z|)."""
    one, four = z.dtype.type(1), z.dtype.type(4)
    e = np.exp(-np.abs(z) * (z.dtype.type(2) if kind == "tanh" else one))
    return four * e / ((one + e) * (one + e))


def _gated_unit_health(pre: np.ndarray, kinds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per step (T,): the fractions of hidden units that are dead (every gate derivative
    exactly 0) / saturated (every gate derivative below 1e-3 of its maximum, 1e-3 in the
    model's dtype) for every example. A unit's level is the largest of its normalised gate
    derivatives over the gates and the examples, NaN left out."""
    n_steps, _, gh = pre.shape
    hidden = gh // len(kinds)
    level = np.zeros((n_steps, hidden))
    for k, kind in enumerate(kinds):
        d = _gate_deriv(pre[:, :, k * hidden:(k + 1) * hidden], kind).astype(np.float64)
        level = np.maximum(level, np.max(np.where(np.isnan(d), 0.0, d), axis=1))
    thr = float(pre.dtype.type(SATURATION))
    return (level == 0.0).mean(axis=1), (level < thr).mean(axis=1)


def _forward_origin(p: Mapping[str, Any], n_steps: int, bad_step: int | None,
                    products: bool, ys: np.ndarray | None) -> tuple[int | None, str | None]:
    """(forward_first_nonfinite, its stage) of a gated cell: ``bad_step`` the first step
    (1-based) whose h_t or c_t holds NaN/Inf, ``products`` whether that step's linear
    products did; else the readout's output (T + 1)."""
    own = [p[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    if bad_step is not None:
        if any(w is not None and _has_nonfinite(w) for w in own):
            return bad_step, "parameter"
        return bad_step, "linear" if products else "activation"
    if ys is not None and _has_nonfinite(ys):
        ro = (p["readout.weight"], p["readout.bias"])
        return n_steps + 1, ("parameter" if any(w is not None and _has_nonfinite(w)
                                                for w in ro) else "linear")
    return None, None


def _gated_health(cache: Mapping[str, Any], report: dict[str, Any], kinds: Sequence[str],
                  dh: Sequence[np.ndarray], dzs: Sequence[Sequence[np.ndarray]],
                  dc: Sequence[np.ndarray] | None) -> None:
    """Add the health statistics and the non-finite stages to a gated report
    (docs/CONVENTIONS.md, "Gradient report"): per step the dead / saturated hidden units, the
    zero / subnormal fractions of dL/dh_t (LSTM also dL/dc_t), mean |h_t| (and |c_t|);
    "backward_nonfinite_stage" with a finite forward: "activation_backward" when step t+1's
    dz (GRU: either side's) holds NaN/Inf or, LSTM, only dL/dc_t (not dL/dh_t) does, else
    "product"."""
    hs = cache["hs"]
    n_steps = hs.shape[0]
    dead, sat = _gated_unit_health(cache["pre"], kinds)
    gh = [_grad_health(g) for g in dh]
    report.update({
        "dead_unit_fractions": dead,
        "saturated_unit_fractions": sat,
        "zero_grad_fractions": np.array([h[0] for h in gh], dtype=np.float64),
        "subnormal_grad_fractions": np.array([h[1] for h in gh], dtype=np.float64),
        "mean_abs_activations": np.abs(hs.astype(np.float64)).mean(axis=(1, 2)),
        "forward_first_nonfinite": cache["forward_first_nonfinite"],
        "forward_nonfinite_stage": cache["forward_nonfinite_stage"],
    })
    if dc is not None:
        ch = [_grad_health(g) for g in dc]
        report["cell_zero_grad_fractions"] = np.array([h[0] for h in ch], dtype=np.float64)
        report["cell_subnormal_grad_fractions"] = np.array([h[1] for h in ch],
                                                           dtype=np.float64)
        report["mean_abs_cell_states"] = np.abs(cache["cs"].astype(np.float64)).mean(
            axis=(1, 2))
    else:
        for k in ("cell_zero_grad_fractions", "cell_subnormal_grad_fractions",
                  "mean_abs_cell_states"):
            report[k] = np.zeros(0)
    stage = None
    t = report["first_nonfinite"]
    if t is not None and cache["forward_first_nonfinite"] is None:
        act = t < n_steps and any(_has_nonfinite(d) for d in dzs[t])
        if not act and dc is not None:
            act = not _has_nonfinite(dh[t - 1]) and _has_nonfinite(dc[t - 1])
        stage = "activation_backward" if act else "product"
    report["backward_nonfinite_stage"] = stage


def _readout(p: Mapping[str, Any], hs: np.ndarray) -> np.ndarray | None:
    if p["readout.weight"] is None:
        return None
    ys = hs @ p["readout.weight"].T
    if p["readout.bias"] is not None:
        ys = ys + p["readout.bias"]
    return ys


def _upstream(cache: Mapping[str, Any], grad_hs: Any, grad_ys: Any
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The gradient reaching each h_t from outside the recurrence, and the readout's
    parameter gradients (as rnn_backward)."""
    p, dtype, hs = cache["params"], cache["dtype"], cache["hs"]
    n_steps, batch, hidden = hs.shape
    W_out = p["readout.weight"]
    upstream = np.zeros_like(hs)
    if grad_hs is not None:
        grad_hs = _float_array(grad_hs, "grad_hs")
        _check_same_dtype(dtype, grad_hs=grad_hs)
        _check_shape(grad_hs, hs.shape, "grad_hs")
        upstream = upstream + grad_hs
    readout: dict[str, np.ndarray] = {}
    if grad_ys is not None:
        if W_out is None:
            raise ValueError("grad_ys given but the model has no readout")
        grad_ys = _float_array(grad_ys, "grad_ys")
        _check_same_dtype(dtype, grad_ys=grad_ys)
        _check_shape(grad_ys, cache["ys"].shape, "grad_ys")
        upstream = upstream + grad_ys @ W_out
        flat_gy = grad_ys.reshape(n_steps * batch, W_out.shape[0])
        readout["readout.weight"] = flat_gy.T @ hs.reshape(n_steps * batch, hidden)
        if p["readout.bias"] is not None:
            readout["readout.bias"] = flat_gy.sum(axis=0)
    elif W_out is not None:
        readout["readout.weight"] = np.zeros_like(W_out)
        if p["readout.bias"] is not None:
            readout["readout.bias"] = np.zeros(W_out.shape[0], dtype=dtype)
    return upstream, readout


def _gated_report(grads: Mapping[str, np.ndarray], n_gates: int, dh: Sequence[np.ndarray],
                  dh0: np.ndarray, means: np.ndarray, sat: np.ndarray,
                  dc: Sequence[np.ndarray] | None = None, dc0: np.ndarray | None = None
                  ) -> dict[str, Any]:
    def norm_of(name: str) -> float:
        return frobenius_norm(grads[name]) if name in grads else 0.0

    def blocks(name: str) -> np.ndarray:
        if name not in grads:
            return np.zeros(n_gates)
        g = grads[name]
        hidden = g.shape[0] // n_gates
        return _norms_array([g[k * hidden:(k + 1) * hidden] for k in range(n_gates)])

    first_nonfinite = None
    for t in range(len(dh), 0, -1):
        if _has_nonfinite(dh[t - 1]) or (dc is not None and _has_nonfinite(dc[t - 1])):
            first_nonfinite = t
            break
    return {
        "timestep_grad_norms": _norms_array(dh),
        "cell_grad_norms": _norms_array(dc) if dc is not None else np.zeros(0),
        "gate_means": means,
        "gate_saturation": sat,
        "weight_ih_grad_norm": norm_of("weight_ih_l0"),
        "weight_hh_grad_norm": norm_of("weight_hh_l0"),
        "bias_ih_grad_norm": norm_of("bias_ih_l0"),
        "bias_hh_grad_norm": norm_of("bias_hh_l0"),
        "readout_weight_grad_norm": norm_of("readout.weight"),
        "readout_bias_grad_norm": norm_of("readout.bias"),
        "weight_ih_gate_grad_norms": blocks("weight_ih_l0"),
        "weight_hh_gate_grad_norms": blocks("weight_hh_l0"),
        "bias_ih_gate_grad_norms": blocks("bias_ih_l0"),
        "bias_hh_gate_grad_norms": blocks("bias_hh_l0"),
        "h0_grad_norm": frobenius_norm(dh0),
        "c0_grad_norm": frobenius_norm(dc0) if dc0 is not None else 0.0,
        "global_norm": global_norm(grads),
        "first_nonfinite": first_nonfinite,
    }


@_ieee
def lstm_forward(params: Mapping[str, Any], x: Any, h0: Any | None = None,
                 c0: Any | None = None) -> tuple[np.ndarray, dict]:
    """One-layer torch.nn.LSTM (time-major ``(T, B, I)``) with an optional linear readout.

    With ``z_t = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh`` (B, 4H) cut into the gate
    blocks i, f, g, o (in that order, torch's)::

        i = sigmoid(z_i), f = sigmoid(z_f), g = tanh(z_g), o = sigmoid(z_o)
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

    and with a readout ``y_t = h_t @ W_out.T + b_out``.

    Args:
        params: "weight_ih_l0" (4H, I), "weight_hh_l0" (4H, H), optionally "bias_ih_l0" and
            "bias_hh_l0" (4H,) (both or neither), optionally "readout.weight" (K, H) and
            "readout.bias" (K,).
        x: (T, B, I), T >= 1.  h0, c0: (B, H) or None (zeros).

    Returns:
        ``(hs, cache)``: hs (T, B, H) = h_1..h_T; ``cache["cs"]`` (T, B, H) = c_1..c_T,
        ``cache["gates"]`` (T, B, 4H) the gate values, ``cache["ys"]`` the readout output
        (T, B, K) or None; ``cache["forward_first_nonfinite"]`` the first t whose h_t or c_t
        holds NaN/Inf (T + 1: only the readout's output), born at stage
        ``cache["forward_nonfinite_stage"]`` ("parameter", "linear" (z_t; the readout's
        product) or "activation").
    """
    p = _gated_params(params, 4, "LSTM")
    dtype = p["weight_ih_l0"].dtype
    x, st = _gated_inputs(p, x, {"h0": h0, "c0": c0}, 4)
    n_steps, batch, _ = x.shape
    hidden = p["weight_hh_l0"].shape[1]
    H = hidden
    pre = np.empty((n_steps, batch, 4 * H), dtype=dtype)
    gates = np.empty_like(pre)
    hs = np.empty((n_steps, batch, H), dtype=dtype)
    cs = np.empty_like(hs)
    tcs = np.empty_like(hs)
    h, c = st["h0"], st["c0"]
    bad, bad_z = None, False
    for t in range(n_steps):
        z = (linear_forward(x[t], p["weight_ih_l0"], p["bias_ih_l0"])
             + linear_forward(h, p["weight_hh_l0"], p["bias_hh_l0"]))
        pre[t] = z
        i, f = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H])
        g, o = np.tanh(z[:, 2 * H:3 * H]), _sigmoid(z[:, 3 * H:])
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        c = f * c + i * g
        tcs[t] = np.tanh(c)
        h = o * tcs[t]
        cs[t], hs[t] = c, h
        if bad is None and (_has_nonfinite(h) or _has_nonfinite(c)):
            bad, bad_z = t + 1, _has_nonfinite(z)
    ys = _readout(p, hs)
    first, stage = _forward_origin(p, n_steps, bad, bad_z, ys)
    cache = {"cell": "lstm", "params": p, "dtype": dtype, "x": x, "h0": st["h0"],
             "c0": st["c0"], "pre": pre, "gates": gates, "hs": hs, "cs": cs, "tcs": tcs,
             "ys": ys, "forward_first_nonfinite": first, "forward_nonfinite_stage": stage}
    return hs, cache


@_ieee
def lstm_backward(cache: Mapping[str, Any], grad_hs: Any | None = None,
                  grad_ys: Any | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict]:
    """Backpropagation through time for lstm_forward.

    Per step, with ``dh`` the total dL/dh_t and ``dc`` the total dL/dc_t (through h_t and
    through c_{t+1})::

        dc = dh * o * (1 - tanh(c_t)^2) + dc_{t+1} * f_{t+1}
        dz_o = dh * tanh(c_t) * o (1 - o),  dz_i = dc * g * i (1 - i),
        dz_f = dc * c_{t-1} * f (1 - f),    dz_g = dc * i * (1 - g^2)
        dL/dh_{t-1} gets dz @ W_hh;  dW_ih += dz.T @ x_t;  dW_hh += dz.T @ h_{t-1}

    Returns:
        ``(grads, dx, dh0, dc0, report)``; report (float64): "timestep_grad_norms" (T,)
        ``||dL/dh_t||``, "cell_grad_norms" (T,) ``||dL/dc_t||`` (both total derivatives),
        "gate_means" and "gate_saturation" (4, T) per gate (i, f, g, o) and step: the mean
        gate value and the fraction of units whose derivative is below 1e-3 of its maximum,
        the norms of every parameter gradient ("weight_ih_grad_norm", ...) and of each of
        its four gate blocks ("weight_ih_gate_grad_norms" (4,), ...), "h0_grad_norm",
        "c0_grad_norm", "global_norm", and "first_nonfinite": None or the first t scanning
        t = T..1 whose dL/dh_t or dL/dc_t holds NaN/Inf; the health per step t = 1..T:
        "dead_unit_fractions", "saturated_unit_fractions" (hidden units whose four gate
        derivatives are all 0 / all below 1e-3 of their maxima for every example),
        "zero_grad_fractions", "subnormal_grad_fractions" of dL/dh_t,
        "mean_abs_activations" (mean |h_t|), "cell_zero_grad_fractions",
        "cell_subnormal_grad_fractions" of dL/dc_t, "mean_abs_cell_states" (mean |c_t|);
        "forward_first_nonfinite", "forward_nonfinite_stage" (the cache's) and
        "backward_nonfinite_stage" ("activation_backward" or "product").
    """
    p, dtype = cache["params"], cache["dtype"]
    x, gates, hs, cs, tcs = cache["x"], cache["gates"], cache["hs"], cache["cs"], cache["tcs"]
    n_steps, batch, H = hs.shape
    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    upstream, readout = _upstream(cache, grad_hs, grad_ys)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db = np.zeros(4 * H, dtype=dtype)
    dx = np.zeros_like(x)
    dh: list[np.ndarray] = [None] * n_steps  # type: ignore[list-item]
    dc: list[np.ndarray] = [None] * n_steps  # type: ignore[list-item]
    carry_h = np.zeros((batch, H), dtype=dtype)
    carry_c = np.zeros((batch, H), dtype=dtype)
    dzs: list[tuple[np.ndarray, ...]] = [()] * n_steps
    for t in reversed(range(n_steps)):
        i, f = gates[t, :, :H], gates[t, :, H:2 * H]
        g, o = gates[t, :, 2 * H:3 * H], gates[t, :, 3 * H:]
        c_prev = cs[t - 1] if t > 0 else cache["c0"]
        h_prev = hs[t - 1] if t > 0 else cache["h0"]
        dh[t] = upstream[t] + carry_h
        tc = tcs[t]
        dc[t] = dh[t] * o * (1 - tc * tc) + carry_c
        dz = np.concatenate([dc[t] * g * (i * (1 - i)), dc[t] * c_prev * (f * (1 - f)),
                             dc[t] * i * (1 - g * g), dh[t] * tc * (o * (1 - o))], axis=1)
        dzs[t] = (dz,)
        dW_ih += dz.T @ x[t]
        dW_hh += dz.T @ h_prev
        db += dz.sum(axis=0)
        dx[t] = dz @ W_ih
        carry_h = dz @ W_hh
        carry_c = dc[t] * f
    grads: dict[str, np.ndarray] = {"weight_ih_l0": dW_ih, "weight_hh_l0": dW_hh}
    if p["bias_ih_l0"] is not None:
        grads["bias_ih_l0"] = db
        grads["bias_hh_l0"] = db.copy()
    grads.update(readout)
    means, sat = _gate_stats(gates, cache["pre"], ("sigmoid", "sigmoid", "tanh", "sigmoid"))
    report = _gated_report(grads, 4, dh, carry_h, means, sat, dc, carry_c)
    _gated_health(cache, report, ("sigmoid", "sigmoid", "tanh", "sigmoid"), dh, dzs, dc)
    return grads, dx, carry_h, carry_c, report


@_ieee
def gru_forward(params: Mapping[str, Any], x: Any, h0: Any | None = None
                ) -> tuple[np.ndarray, dict]:
    """One-layer torch.nn.GRU (time-major ``(T, B, I)``) with an optional linear readout.

    With ``a = x_t @ W_ih.T + b_ih`` and ``b = h_{t-1} @ W_hh.T + b_hh`` (B, 3H) cut into
    the gate blocks r, z, n (in that order, torch's)::

        r = sigmoid(a_r + b_r),  z = sigmoid(a_z + b_z),  n = tanh(a_n + r * b_n)
        h_t = (1 - z) * n + z * h_{t-1}

    Args and returns as lstm_forward (no c0; no cell states): ``cache["gates"]``
    (T, B, 3H) holds r, z, n; the forward stage "linear" when either product (``a`` or
    ``b``) of the step holds NaN/Inf.
    """
    p = _gated_params(params, 3, "GRU")
    dtype = p["weight_ih_l0"].dtype
    x, st = _gated_inputs(p, x, {"h0": h0}, 3)
    n_steps, batch, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    pre = np.empty((n_steps, batch, 3 * H), dtype=dtype)
    gates = np.empty_like(pre)
    hns = np.empty((n_steps, batch, H), dtype=dtype)
    hs = np.empty_like(hns)
    h = st["h0"]
    bad, bad_z = None, False
    for t in range(n_steps):
        a = linear_forward(x[t], p["weight_ih_l0"], p["bias_ih_l0"])
        b = linear_forward(h, p["weight_hh_l0"], p["bias_hh_l0"])
        zr, zz = a[:, :H] + b[:, :H], a[:, H:2 * H] + b[:, H:2 * H]
        r, z = _sigmoid(zr), _sigmoid(zz)
        hns[t] = b[:, 2 * H:]
        zn = a[:, 2 * H:] + r * hns[t]
        n = np.tanh(zn)
        pre[t] = np.concatenate([zr, zz, zn], axis=1)
        gates[t] = np.concatenate([r, z, n], axis=1)
        h = (1 - z) * n + z * h
        hs[t] = h
        if bad is None and _has_nonfinite(h):
            bad, bad_z = t + 1, _has_nonfinite(a) or _has_nonfinite(b)
    ys = _readout(p, hs)
    first, stage = _forward_origin(p, n_steps, bad, bad_z, ys)
    cache = {"cell": "gru", "params": p, "dtype": dtype, "x": x, "h0": st["h0"], "pre": pre,
             "gates": gates, "hns": hns, "hs": hs, "ys": ys,
             "forward_first_nonfinite": first, "forward_nonfinite_stage": stage}
    return hs, cache


@_ieee
def gru_backward(cache: Mapping[str, Any], grad_hs: Any | None = None,
                 grad_ys: Any | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict]:
    """Backpropagation through time for gru_forward.

    Per step, with ``dh`` the total dL/dh_t and ``b_n = h_{t-1} @ W_hn.T + b_hn``::

        dz_n = dh * (1 - z) * (1 - n^2),  dz_z = dh * (h_{t-1} - n) * z (1 - z),
        dz_r = dz_n * b_n * r (1 - r)
        da = [dz_r, dz_z, dz_n]  (the input side: dW_ih, db_ih, dL/dx)
        db = [dz_r, dz_z, dz_n * r]  (the recurrent side: dW_hh, db_hh)
        dL/dh_{t-1} gets dh * z + db @ W_hh

    Returns:
        ``(grads, dx, dh0, report)``, the report as lstm_backward's with three gates
        (r, z, n), no cell states ("cell_grad_norms" and the cell-state health fields
        empty, "c0_grad_norm" 0); "backward_nonfinite_stage" "activation_backward" when
        either side's dz of step t+1 holds NaN/Inf.
    """
    p, dtype = cache["params"], cache["dtype"]
    x, gates, hs, hns = cache["x"], cache["gates"], cache["hs"], cache["hns"]
    n_steps, batch, H = hs.shape
    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    upstream, readout = _upstream(cache, grad_hs, grad_ys)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db_ih, db_hh = np.zeros(3 * H, dtype=dtype), np.zeros(3 * H, dtype=dtype)
    dx = np.zeros_like(x)
    dh: list[np.ndarray] = [None] * n_steps  # type: ignore[list-item]
    carry = np.zeros((batch, H), dtype=dtype)
    dzs: list[tuple[np.ndarray, ...]] = [()] * n_steps
    for t in reversed(range(n_steps)):
        r, z, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
        h_prev = hs[t - 1] if t > 0 else cache["h0"]
        dh[t] = upstream[t] + carry
        dzn = dh[t] * (1 - z) * (1 - n * n)
        dzz = dh[t] * (h_prev - n) * (z * (1 - z))
        dzr = dzn * hns[t] * (r * (1 - r))
        da = np.concatenate([dzr, dzz, dzn], axis=1)
        dbh = np.concatenate([dzr, dzz, dzn * r], axis=1)
        dzs[t] = (da, dbh)
        dW_ih += da.T @ x[t]
        dW_hh += dbh.T @ h_prev
        db_ih += da.sum(axis=0)
        db_hh += dbh.sum(axis=0)
        dx[t] = da @ W_ih
        carry = dh[t] * z + dbh @ W_hh
    grads: dict[str, np.ndarray] = {"weight_ih_l0": dW_ih, "weight_hh_l0": dW_hh}
    if p["bias_ih_l0"] is not None:
        grads["bias_ih_l0"] = db_ih
        grads["bias_hh_l0"] = db_hh
    grads.update(readout)
    means, sat = _gate_stats(gates, cache["pre"], ("sigmoid", "sigmoid", "tanh"))
    report = _gated_report(grads, 3, dh, carry, means, sat)
    _gated_health(cache, report, ("sigmoid", "sigmoid", "tanh"), dh, dzs, None)
    return grads, dx, carry, report
