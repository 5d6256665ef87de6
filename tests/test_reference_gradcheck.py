"""The NumPy reference against central finite differences (float64), plus formula checks.

Every analytic gradient of ``gradchain.reference`` is compared with
``(f(p + h) - f(p - h)) / (2h)`` for a scalar loss ``f``; away from kinks the two agree to
about 1e-9 relative, so the tolerances below (1e-6) leave a wide margin and still catch any
wrong term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

try:
    from gradchain import reference as ref
except ImportError:  # extension not built yet
    import importlib.util
    import pathlib

    _p = pathlib.Path(__file__).resolve().parents[1] / "src" / "gradchain" / "reference.py"
    _spec = importlib.util.spec_from_file_location("gradchain_reference", _p)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)

H = 1e-6  # finite-difference step
RTOL = 1e-6

# Non-default parameters, so that the parameters themselves are exercised.
CUSTOM_ACT_PARAMS = {
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 1.7},
    "softplus": {"beta": 2.0, "threshold": 5.0},
    "hardtanh": {"min_val": -0.5, "max_val": 2.0},
}

# Where each activation's derivative is discontinuous (or, for elu, its second derivative).
# Finite differences are only meaningful away from these points.
KINKS = {
    "relu": [0.0],
    "leaky_relu": [0.0],
    "elu": [0.0],
    "selu": [0.0],
    "hardtanh": [-1.0, 1.0],
}

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def numeric_grad(loss, arr: np.ndarray, h: float = H) -> np.ndarray:
    """Central differences of the scalar ``loss()`` w.r.t. every element of ``arr`` (in place,
    restored afterwards)."""
    grad = np.zeros_like(arr, dtype=np.float64)
    flat = arr.reshape(-1)  # a view: writing to it perturbs arr
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        f_plus = loss()
        flat[i] = saved - h
        f_minus = loss()
        flat[i] = saved
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * h)
    return grad


def assert_grad_close(analytic, numeric, what: str, rtol: float = RTOL) -> None:
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, f"{what}: shape {analytic.shape} != {numeric.shape}"
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what}: analytic gradient != finite differences")


def distance_to_kinks(activation: str, values: np.ndarray, params=None) -> float:
    """Smallest distance from ``values`` to a kink of ``activation`` (inf if none)."""
    params = params or {}
    kinks = list(KINKS.get(activation, []))
    if activation == "hardtanh" and params:
        kinks = [params["min_val"], params["max_val"]]
    if not kinks or values.size == 0:
        return math.inf
    return min(float(np.min(np.abs(values - k))) for k in kinks)


def random_mlp_params(rng, sizes, norm, bias):
    params = {}
    for l in range(len(sizes) - 1):
        fan_in = sizes[l]
        params[f"layers.{l}.weight"] = rng.normal(0, 1.2 / math.sqrt(fan_in),
                                                  (sizes[l + 1], fan_in))
        if bias:
            params[f"layers.{l}.bias"] = rng.normal(0, 0.3, sizes[l + 1])
    for l in range(len(sizes) - 2):
        width = sizes[l + 1]
        if norm in ("batch", "layer"):
            params[f"norms.{l}.weight"] = rng.uniform(0.5, 1.5, width)
            params[f"norms.{l}.bias"] = rng.normal(0, 0.3, width)
        if norm == "batch":
            params[f"norms.{l}.running_mean"] = rng.normal(0, 0.5, width)
            params[f"norms.{l}.running_var"] = rng.uniform(0.5, 2.0, width)
    return params


BUFFER_SUFFIXES = (".running_mean", ".running_var")


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
@pytest.mark.parametrize("custom_params", [False, True], ids=["default", "custom"])
def test_activation_derivative_matches_finite_differences(activation, custom_params):
    params = CUSTOM_ACT_PARAMS.get(activation, {}) if custom_params else {}
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(0, 2, 300), rng.uniform(-8, 8, 100), [-30.0, -6.0, 6.0]])
    for kink in ([params["min_val"], params["max_val"]] if activation == "hardtanh" and params
                 else KINKS.get(activation, [])):
        z = z[np.abs(z - kink) > 1e-3]
    if activation == "softplus":  # the forward switches branch at beta * z == threshold
        merged = {**ref.DEFAULT_ACT_PARAMS["softplus"], **params}
        z = z[np.abs(merged["beta"] * z - merged["threshold"]) > 1e-3]
    analytic = ref.act_grad(activation, z, **params)
    numeric = (ref.act_forward(activation, z + H, **params)
               - ref.act_forward(activation, z - H, **params)) / (2 * H)
    assert_grad_close(analytic, numeric, f"{activation}{params}'")


def test_activation_values_at_kinks_follow_pytorch_conventions():
    zero, one = np.array([0.0]), np.array([1.0, -1.0])
    assert ref.act_grad("relu", zero)[0] == 0.0
    np.testing.assert_array_equal(ref.act_grad("hardtanh", one), [0.0, 0.0])
    assert ref.act_grad("hardtanh", np.array([0.999]))[0] == 1.0
    assert ref.act_grad("leaky_relu", zero)[0] == 0.01
    assert ref.act_grad("leaky_relu", zero, negative_slope=0.3)[0] == 0.3
    assert ref.act_grad("elu", zero, alpha=2.5)[0] == 2.5  # left-hand branch alpha * exp(0)
    assert ref.act_grad("selu", zero)[0] == pytest.approx(ref.SELU_SCALE * ref.SELU_ALPHA,
                                                          rel=1e-15)
    # softplus: the identity above the threshold, with derivative exactly 1 there
    assert ref.act_forward("softplus", np.array([20.5]))[0] == 20.5
    assert ref.act_forward("softplus", np.array([10.5]), beta=2.0)[0] == 10.5
    assert ref.act_forward("softplus", np.array([19.0]))[0] == math.log1p(math.exp(19.0))
    assert ref.act_forward("softplus", np.array([1.5]), beta=2.0)[0] == pytest.approx(
        math.log1p(math.exp(3.0)) / 2.0, rel=1e-15)
    assert ref.act_grad("softplus", np.array([20.5]))[0] == 1.0
    assert ref.act_grad("softplus", np.array([10.5]), beta=2.0)[0] == 1.0


def test_activation_closed_forms():
    z = np.linspace(-4, 4, 33)
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(ref.act_forward("gelu", z), 0.5 * z * (1 + erf(z / math.sqrt(2))),
                               rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(ref.act_forward("silu", z), z / (1 + np.exp(-z)), rtol=1e-14)
    np.testing.assert_allclose(ref.act_forward("sigmoid", z), 1 / (1 + np.exp(-z)), rtol=1e-15)
    np.testing.assert_allclose(
        ref.act_forward("gelu_tanh", z),
        0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))), rtol=1e-14)
    selu_expected = np.where(z > 0, ref.SELU_SCALE * z,
                             ref.SELU_SCALE * ref.SELU_ALPHA * np.expm1(z))
    np.testing.assert_allclose(ref.act_forward("selu", z), selu_expected, rtol=1e-15)


@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_keep_the_dtype(activation, dtype):
    z = np.linspace(-3, 3, 13).astype(dtype)
    assert ref.act_forward(activation, z).dtype == dtype
    assert ref.act_grad(activation, z).dtype == dtype


def test_activation_argument_errors():
    z = np.zeros(3)
    with pytest.raises(ValueError, match="unknown activation"):
        ref.act_forward("swishy", z)
    with pytest.raises(TypeError):
        ref.act_forward("tanh", z, alpha=1.0)
    with pytest.raises(TypeError):
        ref.act_grad("elu", z, negative_slope=0.1)
    with pytest.raises(TypeError):
        ref.act_forward("tanh", np.arange(3))  # integer input
    with pytest.raises(ValueError):
        ref.act_forward("hardtanh", z, min_val=1.0, max_val=-1.0)
    with pytest.raises(TypeError):
        ref.act_forward(42, z)


def test_custom_activation_pair():
    pair = (lambda z: z**3, lambda z: 3 * z**2)
    z = np.array([-2.0, 0.5, 3.0])
    np.testing.assert_array_equal(ref.act_forward(pair, z), z**3)
    np.testing.assert_array_equal(ref.act_grad(pair, z), 3 * z**2)


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_gradients(has_bias):
    rng = np.random.default_rng(2)
    x, W = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    b = rng.normal(size=5) if has_bias else None
    R = rng.normal(size=(4, 5))

    def loss():
        return float(np.sum(ref.linear_forward(x, W, b) * R))

    dx, dW, db = ref.linear_backward(R, x, W, has_bias=has_bias)
    assert_grad_close(dx, numeric_grad(loss, x), "linear dx")
    assert_grad_close(dW, numeric_grad(loss, W), "linear dW")
    if has_bias:
        assert_grad_close(db, numeric_grad(loss, b), "linear db")
    else:
        assert db is None
    np.testing.assert_allclose(ref.linear_forward(x, W, b), x @ W.T + (0 if b is None else b))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch", [2, 5])
def test_batchnorm_gradients(training, batch):
    rng = np.random.default_rng(3 + batch)
    width = 4
    z = rng.normal(1.0, 2.0, (batch, width))
    gamma, beta = rng.uniform(0.5, 1.5, width), rng.normal(size=width)
    mean, var = rng.normal(size=width), rng.uniform(0.5, 2, width)
    R = rng.normal(size=(batch, width))

    def loss():
        return float(np.sum(ref.batchnorm_forward(z, gamma, beta, mean, var, training)[0] * R))

    _, cache, _, _ = ref.batchnorm_forward(z, gamma, beta, mean, var, training)
    dz, dgamma, dbeta = ref.batchnorm_backward(R, cache)
    assert_grad_close(dz, numeric_grad(loss, z), "batchnorm dz")
    assert_grad_close(dgamma, numeric_grad(loss, gamma), "batchnorm dgamma")
    assert_grad_close(dbeta, numeric_grad(loss, beta), "batchnorm dbeta")


def test_batchnorm_statistics_formulas():
    rng = np.random.default_rng(4)
    z = rng.normal(2.0, 3.0, (6, 3))
    gamma, beta = np.full(3, 2.0), np.full(3, 0.5)
    mean0, var0 = np.zeros(3), np.ones(3)
    n, _, new_mean, new_var = ref.batchnorm_forward(z, gamma, beta, mean0, var0, True,
                                                    momentum=0.2, eps=1e-3)
    mu, biased = z.mean(0), z.var(0)
    np.testing.assert_allclose(n, 2.0 * (z - mu) / np.sqrt(biased + 1e-3) + 0.5, rtol=1e-13)
    np.testing.assert_allclose(new_mean, 0.8 * mean0 + 0.2 * mu, rtol=1e-13)
    np.testing.assert_allclose(new_var, 0.8 * var0 + 0.2 * z.var(0, ddof=1), rtol=1e-13)
    assert np.array_equal(mean0, np.zeros(3)) and np.array_equal(var0, np.ones(3)), "mutated"
    # eval mode: running statistics, returned unchanged as copies
    n_eval, _, m2, v2 = ref.batchnorm_forward(z, gamma, beta, new_mean, new_var, False)
    np.testing.assert_allclose(n_eval, 2.0 * (z - new_mean) / np.sqrt(new_var + 1e-5) + 0.5,
                               rtol=1e-13)
    assert np.array_equal(m2, new_mean) and m2 is not new_mean
    assert np.array_equal(v2, new_var) and v2 is not new_var
    with pytest.raises(ValueError):
        ref.batchnorm_forward(z[:1], gamma, beta, mean0, var0, True)
    ref.batchnorm_forward(z[:1], gamma, beta, mean0, var0, False)  # fine in eval mode


@pytest.mark.parametrize("width", [1, 2, 5])
def test_layernorm_gradients(width):
    rng = np.random.default_rng(5 + width)
    z = rng.normal(0.5, 2.0, (3, width))
    gamma, beta = rng.uniform(0.5, 1.5, width), rng.normal(size=width)
    R = rng.normal(size=(3, width))

    def loss():
        return float(np.sum(ref.layernorm_forward(z, gamma, beta)[0] * R))

    n, cache = ref.layernorm_forward(z, gamma, beta)
    mu, var = z.mean(1, keepdims=True), z.var(1, keepdims=True)
    np.testing.assert_allclose(n, gamma * (z - mu) / np.sqrt(var + 1e-5) + beta, rtol=1e-13,
                               atol=1e-15)
    dz, dgamma, dbeta = ref.layernorm_backward(R, cache)
    assert_grad_close(dz, numeric_grad(loss, z), "layernorm dz")
    assert_grad_close(dgamma, numeric_grad(loss, gamma), "layernorm dgamma")
    assert_grad_close(dbeta, numeric_grad(loss, beta), "layernorm dbeta")


# ----------------------------------------------------------------------------------------------
# the full MLP
# ----------------------------------------------------------------------------------------------


@st.composite
def mlp_configs(draw):
    depth = draw(st.integers(1, 4))
    if draw(st.booleans()):  # equal hidden widths, so that residuals apply
        width = draw(st.integers(1, 6))
        hidden = [width] * depth
        n_in = draw(st.sampled_from([width, draw(st.integers(1, 6))]))
    else:
        hidden = draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth))
        n_in = draw(st.integers(1, 6))
    return {
        "sizes": [n_in, *hidden, draw(st.integers(1, 4))],
        "batch": draw(st.integers(2, 5)),
        "activation": draw(st.sampled_from(ref.ACTIVATIONS)),
        "norm": draw(st.sampled_from([None, "batch", "layer"])),
        "residual": draw(st.sampled_from([False, True, 1, 2])),
        "residual_scale": draw(st.sampled_from([1.0, 0.5])),
        "bias": draw(st.booleans()),
        "training": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@FAST
@given(config=mlp_configs())
def test_mlp_gradients_match_finite_differences(config):
    rng = np.random.default_rng(config["seed"])
    sizes, batch = config["sizes"], config["batch"]
    params = random_mlp_params(rng, sizes, config["norm"], config["bias"])
    x = rng.normal(size=(batch, sizes[0]))
    R = rng.normal(size=(batch, sizes[-1]))
    kwargs = {key: config[key] for key in
              ("activation", "norm", "residual", "residual_scale", "training", "bias")}

    def loss():
        return float(np.sum(ref.mlp_forward(params, x, **kwargs)[0] * R))

    y, cache = ref.mlp_forward(params, x, **kwargs)
    # stay away from kinks: a perturbation must not move a pre-activation across one
    pre_activations = np.concatenate([layer["n"].ravel() for layer in cache["layers"]])
    assume(distance_to_kinks(config["activation"], pre_activations) > 1e-3)

    grads, dx, report = ref.mlp_backward(cache, R)
    trainable = sorted(name for name in params if not name.endswith(BUFFER_SUFFIXES))
    assert sorted(grads) == trainable
    for name in trainable:
        assert_grad_close(grads[name], numeric_grad(loss, params[name]), f"{name} ({config})")
    assert_grad_close(dx, numeric_grad(loss, x), f"dx ({config})")

    # the report is made of the norms of exactly these gradients
    L = len(sizes) - 2
    np.testing.assert_allclose(
        report["weight_grad_norms"],
        [np.linalg.norm(grads[f"layers.{l}.weight"]) for l in range(L + 1)], rtol=1e-13)
    expected_bias = ([np.linalg.norm(grads[f"layers.{l}.bias"]) for l in range(L + 1)]
                     if config["bias"] else np.zeros(L + 1))
    np.testing.assert_allclose(report["bias_grad_norms"], expected_bias, rtol=1e-13)
    if config["norm"] is None:
        assert report["norm_weight_grad_norms"].shape == (0,)
        assert report["norm_bias_grad_norms"].shape == (0,)
    else:
        np.testing.assert_allclose(
            report["norm_weight_grad_norms"],
            [np.linalg.norm(grads[f"norms.{l}.weight"]) for l in range(L)], rtol=1e-13)
        np.testing.assert_allclose(
            report["norm_bias_grad_norms"],
            [np.linalg.norm(grads[f"norms.{l}.bias"]) for l in range(L)], rtol=1e-13)
    assert report["activation_grad_norms"].shape == (L + 1,)
    assert report["activation_grad_norms"][0] == pytest.approx(np.linalg.norm(dx), rel=1e-13)
    assert report["activation_grad_norms"][L] == pytest.approx(
        np.linalg.norm(R @ params[f"layers.{L}.weight"]), rel=1e-13)
    all_grads = np.concatenate([g.ravel() for g in grads.values()])
    assert report["global_norm"] == pytest.approx(np.linalg.norm(all_grads), rel=1e-13)
    assert report["first_nonfinite"] is None
    assert cache["forward_first_nonfinite"] is None
    for key in ("weight_grad_norms", "bias_grad_norms", "activation_grad_norms"):
        assert report[key].dtype == np.float64


def test_mlp_activation_grad_norms_by_finite_differences():
    """||dL/da_l|| checked directly: perturb a_l by re-running the network from layer l on."""
    rng = np.random.default_rng(6)
    sizes = [3, 4, 4, 4, 2]
    params = random_mlp_params(rng, sizes, "layer", True)
    x, R = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    kwargs = {"activation": "tanh", "norm": "layer", "residual": True}
    _, cache = ref.mlp_forward(params, x, **kwargs)
    _, _, report = ref.mlp_backward(cache, R)
    L = len(sizes) - 2
    for l in range(L + 1):
        a_l = cache["layers"][l]["a_prev"].copy() if l < L else cache["a_L"].copy()
        # the network above a_l: layers l..L, renamed to start at 0
        upper = {}
        for name, value in params.items():
            kind, index, field = name.split(".")
            if int(index) >= l:
                upper[f"{kind}.{int(index) - l}.{field}"] = value

        def loss(a_l=a_l, upper=upper):
            return float(np.sum(ref.mlp_forward(upper, a_l, **kwargs)[0] * R))

        expected = np.linalg.norm(numeric_grad(loss, a_l))
        assert report["activation_grad_norms"][l] == pytest.approx(expected, rel=1e-6), (
            f"||dL/da_{l}||")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_keeps_dtype_and_never_mutates_params(dtype):
    rng = np.random.default_rng(7)
    sizes = [3, 5, 5, 2]
    params = {k: v.astype(dtype) for k, v in random_mlp_params(rng, sizes, "batch", True).items()}
    snapshot = {k: v.copy() for k, v in params.items()}
    x = rng.normal(size=(4, 3)).astype(dtype)
    y, cache = ref.mlp_forward(params, x, activation="gelu", norm="batch", residual=True)
    grads, dx, report = ref.mlp_backward(cache, np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())
    assert all(v.dtype == dtype for v in cache["new_buffers"].values())
    assert report["activation_grad_norms"].dtype == np.float64
    for name in params:
        np.testing.assert_array_equal(params[name], snapshot[name], err_msg=f"{name} mutated")
    assert sorted(cache["new_buffers"]) == sorted(
        name for name in params if name.endswith(BUFFER_SUFFIXES))
    with pytest.raises(TypeError):
        ref.mlp_forward(params, x.astype(np.float64 if dtype == np.float32 else np.float32),
                        activation="gelu", norm="batch")


def test_mlp_param_validation():
    rng = np.random.default_rng(8)
    params = random_mlp_params(rng, [2, 3, 1], None, True)
    x = rng.normal(size=(2, 2))
    with pytest.raises(ValueError, match="missing"):
        ref.mlp_forward(params, x, norm="layer")
    with pytest.raises(ValueError, match="unexpected"):
        ref.mlp_forward(params, x, bias=False)
    with pytest.raises(ValueError):
        ref.mlp_forward(params, x[:, :1])
    with pytest.raises(ValueError):
        ref.mlp_forward(params, x, norm="group")
    y, cache = ref.mlp_forward(params, x)
    with pytest.raises(ValueError):
        ref.mlp_backward(cache, np.ones((3, 1)))


def test_mlp_without_hidden_layers_is_a_linear_map():
    rng = np.random.default_rng(9)
    params = random_mlp_params(rng, [3, 2], None, True)
    x = rng.normal(size=(4, 3))
    y, cache = ref.mlp_forward(params, x)
    np.testing.assert_allclose(y, x @ params["layers.0.weight"].T + params["layers.0.bias"])
    grads, dx, report = ref.mlp_backward(cache, np.ones_like(y))
    assert report["activation_grad_norms"].shape == (1,)
    assert report["norm_weight_grad_norms"].shape == (0,)


# ----------------------------------------------------------------------------------------------
# non-finite detection
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("poisoned", [0, 1, 2, 3])
def test_first_nonfinite_with_injected_inf_weight(poisoned):
    """An Inf in layers.{k}.weight makes a_{k+1} (forward) and dL/da_k (backward) non-finite."""
    rng = np.random.default_rng(10)
    sizes = [3, 4, 4, 4, 2]  # L = 3: layers.3 is the output layer
    L = len(sizes) - 2
    params = random_mlp_params(rng, sizes, None, True)
    params[f"layers.{poisoned}.weight"][0, 0] = np.inf
    x = rng.uniform(0.5, 1.0, size=(2, 3))  # nonzero, so the Inf reaches the output
    y, cache = ref.mlp_forward(params, x, activation="identity")
    assert cache["forward_first_nonfinite"] == poisoned + 1  # L + 1 = 4 when only y is hit
    _, _, report = ref.mlp_backward(cache, np.ones_like(y))
    assert report["first_nonfinite"] == poisoned
    norms = report["activation_grad_norms"]
    assert np.all(np.isfinite(norms[poisoned + 1:])), norms
    assert not np.isfinite(norms[poisoned]), norms
    assert norms.shape == (L + 1,)


def test_first_nonfinite_from_upstream_gradient():
    rng = np.random.default_rng(11)
    params = random_mlp_params(rng, [2, 3, 3, 2], None, True)
    y, cache = ref.mlp_forward(params, rng.normal(size=(2, 2)))
    assert cache["forward_first_nonfinite"] is None
    grad_y = np.ones_like(y)
    grad_y[1, 0] = np.nan
    _, _, report = ref.mlp_backward(cache, grad_y)
    assert report["first_nonfinite"] == 2  # dL/da_L with L = 2
    assert math.isnan(report["global_norm"])


@pytest.mark.parametrize(("activation", "act_params", "kink", "expected"), [
    ("relu", None, 0.0, 0.0),
    ("hardtanh", None, 1.0, 0.0),
    ("hardtanh", None, -1.0, 0.0),
    ("hardtanh", {"min_val": -2.0, "max_val": 3.0}, 3.0, 0.0),
    ("leaky_relu", {"negative_slope": 0.25}, 0.0, 0.25),
    ("elu", {"alpha": 2.0}, 0.0, 2.0),
    ("selu", None, 0.0, ref.SELU_SCALE * ref.SELU_ALPHA),
])
def test_mlp_backward_at_a_kink(activation, act_params, kink, expected):
    """A pre-activation exactly at a kink gets PyTorch's one-sided derivative in mlp_backward."""
    params = {"layers.0.weight": np.array([[1.0]]), "layers.0.bias": np.array([kink - 1.0]),
              "layers.1.weight": np.array([[1.0]]), "layers.1.bias": np.zeros(1)}
    y, cache = ref.mlp_forward(params, np.array([[1.0]]), activation=activation,
                               act_params=act_params)
    assert cache["layers"][0]["n"][0, 0] == kink
    grads, _, _ = ref.mlp_backward(cache, np.array([[1.0]]))
    assert grads["layers.0.bias"][0] == pytest.approx(expected, rel=1e-15), activation


def test_relu_backward_selects_so_inf_upstream_gives_exact_zero():
    """As PyTorch's threshold_backward: where relu'(z) = 0 the gradient is 0 even if dL/df = Inf."""
    params = {"layers.0.weight": np.array([[1.0], [-1.0]]), "layers.0.bias": np.zeros(2),
              "layers.1.weight": np.array([[1.0, 1.0]]), "layers.1.bias": np.zeros(1)}
    x = np.array([[1.0], [2.0]])  # unit 0 is active, unit 1 is not
    y, cache = ref.mlp_forward(params, x, activation="relu")
    grads, dx, _ = ref.mlp_backward(cache, np.array([[np.inf], [1.0]]))
    assert np.all(grads["layers.0.weight"][1] == 0.0), grads["layers.0.weight"]
    assert np.isinf(grads["layers.0.weight"][0, 0])


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------


def test_mse_gradient():
    rng = np.random.default_rng(12)
    y, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    value, dy = ref.loss_forward_backward(y, t, "mse")
    assert value == pytest.approx(np.mean((y - t) ** 2), rel=1e-14)
    assert isinstance(value, float)
    assert_grad_close(dy, numeric_grad(lambda: ref.loss_forward_backward(y, t, "mse")[0], y),
                      "mse dy")


def test_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(13)
    y, t = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    value, dy = ref.loss_forward_backward(y, t, "cross_entropy")
    log_softmax = y - np.log(np.exp(y).sum(1, keepdims=True))
    assert value == pytest.approx(-np.mean(log_softmax[np.arange(5), t]), rel=1e-14)
    assert_grad_close(
        dy, numeric_grad(lambda: ref.loss_forward_backward(y, t, "cross_entropy")[0], y),
        "cross_entropy dy")
    # huge logits: stable (a naive exp would overflow)
    value, dy = ref.loss_forward_backward(np.array([[1000.0, 0.0], [0.0, -1000.0]]),
                                          np.array([1, 1]), "cross_entropy")
    assert value == pytest.approx(1000.0) and np.all(np.isfinite(dy))


def test_loss_validation():
    y = np.zeros((3, 4))
    with pytest.raises(ValueError):
        ref.loss_forward_backward(y, np.zeros((3, 3)), "mse")
    with pytest.raises(TypeError):
        ref.loss_forward_backward(y, np.zeros((3, 4), dtype=np.float32), "mse")
    with pytest.raises(TypeError):
        ref.loss_forward_backward(y, np.zeros(3), "cross_entropy")  # float targets
    with pytest.raises(ValueError):
        ref.loss_forward_backward(y, np.array([0, 1, 4]), "cross_entropy")
    with pytest.raises(ValueError):
        ref.loss_forward_backward(y, np.array([0, -1, 2]), "cross_entropy")
    with pytest.raises(ValueError):
        ref.loss_forward_backward(y, np.array([[0, 1, 2]]), "cross_entropy")
    with pytest.raises(ValueError):
        ref.loss_forward_backward(y, y, "hinge")


# ----------------------------------------------------------------------------------------------
# the RNN
# ----------------------------------------------------------------------------------------------


@st.composite
def rnn_configs(draw):
    return {
        "T": draw(st.integers(1, 4)),
        "B": draw(st.integers(1, 3)),
        "I": draw(st.integers(1, 3)),
        "H": draw(st.integers(1, 4)),
        "K": draw(st.sampled_from([None, 1, 3])),
        "bias": draw(st.booleans()),
        "readout_bias": draw(st.booleans()),
        "h0": draw(st.booleans()),
        "activation": draw(st.sampled_from(ref.ACTIVATIONS)),
        "loss": draw(st.sampled_from(["mse", "cross_entropy", "weighted"])),
        "on": draw(st.sampled_from(["last", "all"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def random_rnn_params(rng, I, H, K=None, bias=True, readout_bias=True):
    params = {"weight_ih_l0": rng.normal(0, 1 / math.sqrt(I), (H, I)),
              "weight_hh_l0": rng.normal(0, 1.1 / math.sqrt(H), (H, H))}
    if bias:
        params["bias_ih_l0"] = rng.normal(0, 0.3, H)
        params["bias_hh_l0"] = rng.normal(0, 0.3, H)
    if K is not None:
        params["readout.weight"] = rng.normal(0, 1 / math.sqrt(H), (K, H))
        if readout_bias:
            params["readout.bias"] = rng.normal(0, 0.3, K)
    return params


@FAST
@given(config=rnn_configs())
def test_rnn_gradients_match_finite_differences(config):
    rng = np.random.default_rng(config["seed"])
    T, B, I, H, K = (config[k] for k in "TBIHK")
    params = random_rnn_params(rng, I, H, K, config["bias"], config["readout_bias"])
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(B, H)) if config["h0"] else None
    width = H if K is None else K
    if config["loss"] == "mse":
        target = rng.normal(size=(T, B, width) if config["on"] == "all" else (B, width))
    elif config["loss"] == "cross_entropy":
        target = rng.integers(0, width, (T, B) if config["on"] == "all" else (B,))
    else:  # "weighted": sum(hs * Rh) (+ sum(ys * Ry)), upstream gradients on both paths
        Rh = rng.normal(size=(T, B, H))
        Ry = None if K is None else rng.normal(size=(T, B, K))
    act = config["activation"]

    def loss_and_upstream(hs, cache):
        """(value, grad_hs, grad_ys)"""
        outputs = hs if K is None else cache["ys"]
        if config["loss"] == "weighted":
            value = float(np.sum(hs * Rh)) + (0.0 if Ry is None else float(np.sum(outputs * Ry)))
            return value, Rh, Ry
        value, g = ref.rnn_loss_grads(outputs, target, config["loss"], on=config["on"])
        return (value, g, None) if K is None else (value, None, g)

    def loss():
        hs, cache = ref.rnn_forward(params, x, h0, activation=act)
        return loss_and_upstream(hs, cache)[0]

    hs, cache = ref.rnn_forward(params, x, h0, activation=act)
    assume(distance_to_kinks(act, cache["zs"]) > 1e-3)
    _, grad_hs, grad_ys = loss_and_upstream(hs, cache)
    grads, dx, dh0, report = ref.rnn_backward(cache, grad_hs=grad_hs, grad_ys=grad_ys)

    assert sorted(grads) == sorted(params)
    for name in params:
        assert_grad_close(grads[name], numeric_grad(loss, params[name]), f"{name} ({config})")
    assert_grad_close(dx, numeric_grad(loss, x), f"dx ({config})")
    h0_array = np.zeros((B, H)) if h0 is None else h0
    if h0 is None:  # the gradient w.r.t. the implicit zero state
        def loss_h0():
            hs, cache = ref.rnn_forward(params, x, h0_array, activation=act)
            return loss_and_upstream(hs, cache)[0]
    else:
        loss_h0 = loss
    assert_grad_close(dh0, numeric_grad(loss_h0, h0_array), f"dh0 ({config})")
    assert report["h0_grad_norm"] == pytest.approx(np.linalg.norm(dh0), rel=1e-13, abs=1e-300)

    # report entries are norms of the returned gradients
    for key, name in [("weight_ih_grad_norm", "weight_ih_l0"),
                      ("weight_hh_grad_norm", "weight_hh_l0"),
                      ("bias_ih_grad_norm", "bias_ih_l0"), ("bias_hh_grad_norm", "bias_hh_l0"),
                      ("readout_weight_grad_norm", "readout.weight"),
                      ("readout_bias_grad_norm", "readout.bias")]:
        expected = np.linalg.norm(grads[name]) if name in grads else 0.0
        assert report[key] == pytest.approx(expected, rel=1e-13, abs=1e-300), key
    all_grads = np.concatenate([g.ravel() for g in grads.values()])
    assert report["global_norm"] == pytest.approx(np.linalg.norm(all_grads), rel=1e-13)
    assert report["first_nonfinite"] is None

    # timestep norms: the total derivative dL/dh_t, by finite differences on a restarted RNN.
    # Steps > t depend on h_t only through the recurrence, so L(h_t) = (terms of steps <= t,
    # fixed) + (the loss of the RNN restarted from h_t on x[t:]); only the direct term of step
    # t itself must be added by hand, which the "weighted" loss makes linear.
    if config["loss"] == "weighted":
        for t in range(1, T + 1):
            h_t = hs[t - 1].copy()

            def loss_from(h_t=h_t, t=t):
                future = 0.0
                if t < T:
                    hs_f, cache_f = ref.rnn_forward(params, x[t:], h_t, activation=act)
                    future = float(np.sum(hs_f * Rh[t:]))
                    if Ry is not None:
                        future += float(np.sum(cache_f["ys"] * Ry[t:]))
                direct = float(np.sum(h_t * Rh[t - 1]))
                if Ry is not None:
                    y_t = h_t @ params["readout.weight"].T
                    if "readout.bias" in params:
                        y_t = y_t + params["readout.bias"]
                    direct += float(np.sum(y_t * Ry[t - 1]))
                return future + direct

            expected = np.linalg.norm(numeric_grad(loss_from, h_t))
            assert report["timestep_grad_norms"][t - 1] == pytest.approx(
                expected, rel=1e-6, abs=1e-9), f"||dL/dh_{t}|| ({config})"


def test_rnn_forward_recurrence_and_zero_state():
    rng = np.random.default_rng(14)
    params = random_rnn_params(rng, 2, 3, K=2)
    x = rng.normal(size=(3, 2, 2))
    hs, cache = ref.rnn_forward(params, x)
    h = np.zeros((2, 3))
    for t in range(3):
        h = np.tanh(x[t] @ params["weight_ih_l0"].T + params["bias_ih_l0"]
                    + h @ params["weight_hh_l0"].T + params["bias_hh_l0"])
        np.testing.assert_allclose(hs[t], h, rtol=1e-14)
    np.testing.assert_allclose(cache["ys"], hs @ params["readout.weight"].T
                               + params["readout.bias"], rtol=1e-14)
    _, cache_plain = ref.rnn_forward({k: v for k, v in params.items()
                                      if not k.startswith("readout")}, x)
    assert cache_plain["ys"] is None


def test_rnn_validation():
    rng = np.random.default_rng(15)
    params = random_rnn_params(rng, 2, 3)
    x = rng.normal(size=(2, 2, 2))
    with pytest.raises(ValueError):
        ref.rnn_forward({k: v for k, v in params.items() if k != "bias_hh_l0"}, x)
    with pytest.raises(ValueError):
        ref.rnn_forward(params, x[..., :1])
    with pytest.raises(ValueError):
        ref.rnn_forward(params, x, h0=np.zeros((3, 3)))
    with pytest.raises(ValueError):
        ref.rnn_forward({**params, "readout.bias": np.zeros(2)}, x)
    hs, cache = ref.rnn_forward(params, x)
    with pytest.raises(ValueError, match="no readout"):
        ref.rnn_backward(cache, grad_ys=np.zeros((2, 2, 1)))
    grads, dx, dh0, report = ref.rnn_backward(cache)  # no upstream gradient at all
    assert report["global_norm"] == 0.0 and np.all(dx == 0) and np.all(dh0 == 0)


def test_rnn_first_nonfinite():
    rng = np.random.default_rng(16)
    params = random_rnn_params(rng, 2, 3)
    x = rng.normal(size=(5, 2, 2))
    hs, cache = ref.rnn_forward(params, x)
    grad_hs = np.zeros_like(hs)
    grad_hs[2, 0, 1] = np.inf  # dL/dh_3 (and so every earlier step) becomes non-finite
    _, _, _, report = ref.rnn_backward(cache, grad_hs=grad_hs)
    assert report["first_nonfinite"] == 3
    assert np.all(np.isfinite(report["timestep_grad_norms"][3:]))
    assert not np.isfinite(report["timestep_grad_norms"][2])


def test_rnn_loss_grads_shapes():
    rng = np.random.default_rng(17)
    outputs = rng.normal(size=(3, 2, 4))
    value, g = ref.rnn_loss_grads(outputs, rng.integers(0, 4, (3, 2)), "cross_entropy", on="all")
    assert g.shape == outputs.shape
    # averaged over T * B samples: the gradient of each row sums to 0 and has scale 1 / (T * B)
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-15)
    value_last, g_last = ref.rnn_loss_grads(outputs, np.array([1, 3]), "cross_entropy")
    assert np.all(g_last[:-1] == 0)
    value_direct, g_direct = ref.loss_forward_backward(outputs[-1], np.array([1, 3]),
                                                       "cross_entropy")
    assert value_last == value_direct and np.array_equal(g_last[-1], g_direct)
    with pytest.raises(ValueError):
        ref.rnn_loss_grads(outputs, np.zeros((3, 2, 4)), "mse", on="first")
    with pytest.raises(ValueError):
        ref.rnn_loss_grads(outputs, rng.integers(0, 4, (2,)), "cross_entropy", on="all")


# ----------------------------------------------------------------------------------------------
# norms and clipping
# ----------------------------------------------------------------------------------------------


def test_frobenius_norm_is_robust():
    assert ref.frobenius_norm(np.full(4, 1e200)) == pytest.approx(2e200, rel=1e-15)
    assert ref.frobenius_norm(np.full(4, 3e38, dtype=np.float32)) == pytest.approx(6e38,
                                                                                  rel=1e-7)
    assert ref.frobenius_norm(np.full(4, 1e-200)) == pytest.approx(2e-200, rel=1e-15)
    assert ref.frobenius_norm(np.zeros((2, 3))) == 0.0
    assert ref.frobenius_norm(np.zeros(0)) == 0.0
    assert ref.frobenius_norm(np.array([1.0, np.inf])) == math.inf
    assert math.isnan(ref.frobenius_norm(np.array([np.inf, np.nan])))
    assert ref.global_norm({"a": np.full(2, 1e200), "b": np.full(2, 1e200)}) == pytest.approx(
        2e200, rel=1e-15)


def _grads(rng, dtype=np.float64):
    return {"layers.0.weight": rng.normal(size=(3, 2)).astype(dtype),
            "layers.0.bias": rng.normal(size=3).astype(dtype),
            "layers.1.weight": rng.normal(size=(1, 3)).astype(dtype)}


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_formula(max_norm, dtype):
    grads = _grads(np.random.default_rng(18), dtype)
    snapshot = {k: v.copy() for k, v in grads.items()}
    total, clipped = ref.clip_grad_norm(grads, max_norm)
    expected_total = np.linalg.norm(np.concatenate([g.ravel().astype(np.float64)
                                                    for g in grads.values()]))
    assert total == pytest.approx(expected_total, rel=1e-12)
    coef = min(max_norm / (expected_total + 1e-6), 1.0)
    for name, g in grads.items():
        assert clipped[name].dtype == dtype
        np.testing.assert_allclose(clipped[name], g * coef, rtol=1e-6 if dtype == np.float32
                                   else 1e-14)
        np.testing.assert_array_equal(g, snapshot[name], err_msg="input mutated")
    new_total = ref.global_norm(clipped)
    assert new_total <= max(max_norm, expected_total) * (1 + 1e-6)


def test_clip_grad_norm_nonfinite():
    grads = {"a": np.array([1.0, np.inf]), "b": np.array([3.0])}
    with pytest.raises(RuntimeError):
        ref.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    total, clipped = ref.clip_grad_norm(grads, 1.0)  # coef = 1 / inf = 0
    assert total == math.inf
    np.testing.assert_array_equal(clipped["a"], [0.0, np.nan])
    np.testing.assert_array_equal(clipped["b"], [0.0])
    total, clipped = ref.clip_grad_norm({"a": np.array([1.0, np.nan]), "b": np.array([3.0])}, 1.0)
    assert math.isnan(total)
    assert np.all(np.isnan(clipped["a"])) and np.all(np.isnan(clipped["b"]))
    assert ref.clip_grad_norm({}, 1.0) == (0.0, {})


def test_clip_grad_value_formula():
    grads = {"a": np.array([-3.0, -0.2, 0.0, 0.4, 7.0, np.nan]), "b": np.array([[0.6, -0.6]])}
    clipped = ref.clip_grad_value(grads, 0.5)
    np.testing.assert_array_equal(clipped["a"], [-0.5, -0.2, 0.0, 0.4, 0.5, np.nan])
    np.testing.assert_array_equal(clipped["b"], [[0.5, -0.5]])
    assert grads["a"][0] == -3.0
    f32 = ref.clip_grad_value({"a": np.ones(2, dtype=np.float32)}, 0.5)["a"]
    assert f32.dtype == np.float32


def test_clip_grad_norm_per_layer_formula():
    grads = _grads(np.random.default_rng(19))
    norms, clipped = ref.clip_grad_norm_per_layer(grads, 0.5)
    for name, g in grads.items():
        n = np.linalg.norm(g)
        assert norms[name] == pytest.approx(n, rel=1e-14)
        np.testing.assert_allclose(clipped[name], g * min(0.5 / (n + 1e-6), 1.0), rtol=1e-14)
        assert np.linalg.norm(clipped[name]) <= 0.5 + 1e-12


# ----------------------------------------------------------------------------------------------
# residual layout
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sizes", "residual", "expected"), [
    ([4, 4, 4, 4, 2], False, [False, False, False]),
    ([4, 4, 4, 4, 2], True, [True, True, True]),
    ([3, 4, 4, 4, 2], True, [False, True, True]),      # layer 1 maps 3 -> 4
    ([4, 4, 4, 4, 4, 2], 1, [True, True, True, True]),
    ([4, 4, 4, 4, 4, 2], 2, [False, True, False, True]),
    ([3, 4, 4, 4, 4, 2], 2, [False, False, True, False]),  # the 2nd equal-width layer is layer 3
    ([4, 4, 5, 5, 5, 2], 2, [False, False, True, False]),  # equal: layers 1, 3, 4 -> 2nd = 3
    ([4, 4, 4, 2], 3, [False, False]),
    ([4, 4, 4, 2], [True, False], [True, False]),
    ([3, 2], True, []),                                    # no hidden layer
    ([3, 2], [], []),
    ([4, 4, 4, 2], np.int64(2), [False, True]),
])
def test_resolve_residual(sizes, residual, expected):
    assert ref.resolve_residual(sizes, residual) == expected


@pytest.mark.parametrize(("residual", "error"), [
    (0, ValueError), (-1, ValueError),
    ([True], ValueError),                 # wrong length
    ([True, True, False], ValueError),    # wrong length
    ([False, True], ValueError),          # layer 2 maps 4 -> 5
    ([1, 0], TypeError),                  # not bools
    (1.5, TypeError), ("all", TypeError), (None, TypeError),
])
def test_resolve_residual_rejects(residual, error):
    with pytest.raises(error):
        ref.resolve_residual([4, 4, 5, 2], residual)
