"""Accuracy of the vectorised activation kernels, for every compiled ISA variant,
against the float64 reference: float32 values within a few ulp (derivatives with a
zero crossing, within a fraction of float32 epsilon in absolute terms), float64
to 1e-14, and PyTorch's NaN/Inf behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from gradchain import reference as ref
from gradchain._core import ACTIVATION_IDS, act_eval

EPS32 = float(np.finfo(np.float32).eps)

# f within F_ULP ulp (where |f| >= 1e-3; elsewhere within 0.01 eps absolute).
# gelu_tanh: its polynomial argument u(x) carries ~x^2 ulp of rounding into exp.
F_ULP = {"gelu_tanh": 16.0}
# derivatives with a zero crossing (gelu, gelu_tanh, silu, mish): absolute bound near it.
D_ABS = {"gelu": 0.25 * EPS32, "gelu_tanh": 0.5 * EPS32, "silu": 0.25 * EPS32,
         "mish": 1.0 * EPS32}  # mish' = t + x s (1 - t^2): terms ~0.25 at its root
# (-1.19); PyTorch's own float32 mish' is off by up to 8 EPS32 on the grid, ours by 1.4


def grid() -> np.ndarray:
    return np.concatenate([
        np.linspace(-30, 30, 120001), np.geomspace(1e-30, 1e3, 8000),
        -np.geomspace(1e-30, 1e3, 8000), [0.0, -0.0, 1.0, -1.0, 20.0, 88.0, -88.0],
    ]).astype(np.float32)


def _one_minus_sigmoid(u: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(u))


def exact(name: str, x32: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray]:
    """An accuracy oracle for float32 kernels: extended precision (np.longdouble) and
    formulas without cancellation (the float64 reference computes e.g. sigmoid' as
    s (1 - s), which loses relative accuracy where s ~ 1)."""
    with np.errstate(over="ignore"):
        return _exact(name, x32, **params)


def _exact(name: str, x32: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray]:
    x = x32.astype(np.longdouble)
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-x))
        f, d = s, s * _one_minus_sigmoid(x)
    elif name == "tanh":
        f, d = np.tanh(x), 1.0 / np.cosh(x) ** 2
    elif name in ("elu", "selu"):
        alpha = params.get("alpha", 1.0) if name == "elu" else ref.SELU_ALPHA
        scale = 1.0 if name == "elu" else ref.SELU_SCALE
        neg = np.minimum(x, 0)
        f = scale * np.where(x > 0, x, alpha * np.expm1(neg))
        d = scale * np.where(x > 0, 1.0, alpha * np.exp(neg))
    elif name == "gelu":
        phi = 0.5 * np.vectorize(math.erfc)(-x32.astype(np.float64) / math.sqrt(2.0))
        phi = phi.astype(np.longdouble)
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
        f, d = x * phi, phi + x * pdf
    elif name == "gelu_tanh":
        k = np.sqrt(np.longdouble(2.0) / np.pi)
        u = k * (x + 0.044715 * x**3)
        s = 1.0 / (1.0 + np.exp(-2.0 * u))
        du = k * (1.0 + 3.0 * 0.044715 * x * x)
        f, d = x * s, s + 2.0 * x * s * _one_minus_sigmoid(2.0 * u) * du
    elif name == "softplus":
        beta, thr = params.get("beta", 1.0), params.get("threshold", 20.0)
        lin = beta * x > thr
        bx = np.where(lin, 0, beta * x)
        f = np.where(lin, x, np.log1p(np.exp(bx)) / beta)
        d = np.where(lin, 1.0, 1.0 / (1.0 + np.exp(-bx)))
    elif name == "silu":
        s = 1.0 / (1.0 + np.exp(-x))
        f, d = x * s, s * (1.0 + x * _one_minus_sigmoid(x))
    elif name == "mish":
        e = np.exp(np.minimum(x, 40))
        n = e * (e + 2.0)                    # t = tanh(log1p(e)) = n / (n + 2)
        t = n / (n + 2.0)
        f = x * t
        d = t + x / (1.0 + np.exp(-x)) * 4.0 * (n + 1.0) / (n + 2.0) ** 2
    else:  # piecewise linear: the reference is exact
        assert name in ("identity", "relu", "leaky_relu", "hardtanh"), (
            f"{name}: give it an extended-precision oracle here")
        x64 = x32.astype(np.float64)
        return ref.act_forward(name, x64, **params), ref.act_grad(name, x64, **params)
    return np.asarray(f, dtype=np.float64), np.asarray(d, dtype=np.float64)


def ulp_err(ours: np.ndarray, exact: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return np.abs(ours.astype(np.float64) - exact) / spacing


def evaluate(name: str, x: np.ndarray, **params):
    a = gc.Activation(name, **params)
    i, p0, p1 = a._core_spec(ACTIVATION_IDS)
    return act_eval(i, p0, p1, x)


@pytest.mark.parametrize("isa", gc.available_isas())
@pytest.mark.parametrize("name", gc.ACTIVATIONS)
def test_float32_accuracy(isa, name, restore_isa):
    gc.set_isa(isa)
    x = grid()
    f, d = evaluate(name, x)
    fr, dr = exact(name, x)
    big = np.abs(fr) >= 1e-3
    f_ulp = ulp_err(f[big], fr[big]).max()
    assert f_ulp <= F_ULP.get(name, 4.0), f"{isa} {name}: f max error {f_ulp:.1f} ulp"
    small_abs = np.abs(f[~big] - fr[~big]).max() if (~big).any() else 0.0
    assert small_abs <= 0.01 * EPS32, f"{isa} {name}: f abs error {small_abs:.2e} near 0"
    # 8 ulp, plus FLT_MIN (kernels flush results below it to 0), plus the zero-crossing slack
    tiny = float(np.finfo(np.float32).tiny)
    bound = (8.0 * np.spacing(np.abs(dr).astype(np.float32)).astype(np.float64)
             + D_ABS.get(name, 0) + 4 * tiny)
    bad = np.abs(d.astype(np.float64) - dr) > bound
    assert not bad.any(), (
        f"{isa} {name}: derivative off at x={x[bad][:3]}: {d[bad][:3]} vs {dr[bad][:3]}")


@pytest.mark.parametrize("isa", gc.available_isas())
@pytest.mark.parametrize("name,params", [
    ("leaky_relu", {"negative_slope": 0.3}), ("elu", {"alpha": 0.4}),
    ("softplus", {"beta": 3.0, "threshold": 2.0}), ("hardtanh", {"min_val": -2.0, "max_val": 0.5}),
])
def test_float32_parametrised(isa, name, params, restore_isa):
    gc.set_isa(isa)
    x = grid()
    f, d = evaluate(name, x, **params)
    fr, dr = exact(name, x, **params)
    big = np.abs(fr) >= 1e-3
    assert ulp_err(f[big], fr[big]).max() <= 6.0
    tiny = float(np.finfo(np.float32).tiny)
    # softplus(beta != 1): rounding beta * x in float32 costs ~|beta x| ulp in exp(beta x)
    # (PyTorch's too): the bound grows with it.
    ulps = 8.0 + (np.abs(params.get("beta", 1.0) * x) if name == "softplus" else 0.0)
    assert np.all(np.abs(d - dr) <= ulps * np.spacing(np.abs(dr).astype(np.float32)) + 4 * tiny)


@pytest.mark.parametrize("isa", gc.available_isas())
@pytest.mark.parametrize("name", gc.ACTIVATIONS)
def test_float64_matches_reference(isa, name, restore_isa):
    gc.set_isa(isa)
    x = np.concatenate([np.linspace(-40, 40, 40001), np.geomspace(1e-300, 1e3, 2000),
                        -np.geomspace(1e-300, 1e3, 2000)])
    f, d = evaluate(name, x)
    fr = ref.act_forward(name, x)
    dr = ref.act_grad(name, x)
    # (the reference's own formulas cancel to ~1e-16 absolute in places, e.g. 1 + erf(x))
    np.testing.assert_allclose(f, fr, rtol=1e-14, atol=1e-15, err_msg=name)
    # gelu_tanh': PyTorch's formula (the reference's) cancels in 1 - tanh^2 (~1e-15 absolute)
    np.testing.assert_allclose(d, dr, rtol=1e-13, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("isa", gc.available_isas())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", gc.ACTIVATIONS)
def test_nan_and_inf_as_pytorch(isa, dtype, name, restore_isa):
    """NaN propagates; values at +-inf and the kinks are autograd's."""
    gc.set_isa(isa)
    x = np.array([-np.inf, -1e3, -1.0, -0.0, 0.0, 1.0, 1e3, np.inf, np.nan])
    f, d = evaluate(name, x.astype(dtype))
    fr = ref.act_forward(name, x)
    dr = ref.act_grad(name, x)
    assert np.array_equal(np.isnan(f), np.isnan(fr)), (name, f, fr)
    assert np.array_equal(np.isnan(d), np.isnan(dr)), (name, d, dr)
    ok = ~np.isnan(fr)
    np.testing.assert_allclose(f[ok], fr[ok].astype(dtype), rtol=1e-6, atol=1e-30)
    ok = ~np.isnan(dr)
    np.testing.assert_allclose(d[ok], dr[ok].astype(dtype), rtol=1e-6, atol=1e-30)


def test_kinks_take_pytorch_branches():
    assert evaluate("relu", np.array([0.0]))[1][0] == 0.0
    assert evaluate("leaky_relu", np.array([0.0]), negative_slope=0.2)[1][0] == 0.2
    assert list(evaluate("hardtanh", np.array([-1.0, 1.0]))[1]) == [0.0, 0.0]
    assert evaluate("elu", np.array([0.0]), alpha=0.5)[1][0] == 0.5  # left branch
    selu_left = ref.SELU_SCALE * ref.SELU_ALPHA
    assert evaluate("selu", np.array([0.0]))[1][0] == pytest.approx(selu_left, rel=1e-15)
    f, d = evaluate("softplus", np.array([20.5, 19.5]))
    assert d[0] == 1.0 and f[0] == 20.5 and d[1] < 1.0
