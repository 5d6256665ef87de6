"""The activation table (``gradchain.activations.SPECS``): one row per built-in activation,
and everything the Python side knows of activations read from it. Each row is checked
against the C++ core (ids, parameter order, kink values, select-versus-multiply), against
PyTorch (gain, forward and autograd derivative, kinks included) and against its consumers
(theory's breakpoints, the benchmark's and the tests' kink sets)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from gradchain import _core
from gradchain import theory as T
from gradchain.activations import SPECS, ActivationSpec, Kink
from gradchain.bench import KINKED_ACTIVATIONS

# non-default parameters for every parametrised row
VARIANTS = {
    "leaky_relu": [{"negative_slope": 0.2}, {"negative_slope": 3.0}],
    "elu": [{"alpha": 0.5}, {"alpha": 2.0}],
    "softplus": [{"beta": 2.0, "threshold": 1.5}, {"beta": -1.5, "threshold": 3.0}],
    "hardtanh": [{"min_val": -0.5, "max_val": 2.0}, {"min_val": 0.0, "max_val": 6.0}],
}
CASES = [(n, {}) for n in SPECS] + [(n, p) for n, ps in VARIANTS.items() for p in ps]
IDS = [f"{n}{p or ''}" for n, p in CASES]


def test_everything_is_derived_from_the_table() -> None:
    assert gc.ACTIVATIONS == tuple(SPECS)
    assert all(isinstance(s, ActivationSpec) and s.name == n for n, s in SPECS.items())
    # the core knows every row under the same name (plus the custom slot), and no other
    assert set(_core.ACTIVATION_IDS) == set(SPECS) | {"custom"}
    for name, spec in SPECS.items():
        act = gc.Activation(name)
        assert act.spec is spec
        assert act.params == dict(spec.params)  # PyTorch's defaults
        for alias in spec.aliases:
            assert gc.Activation(alias).name == name
    assert VARIANTS.keys() == {n for n, s in SPECS.items() if s.params}


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_core_spec_is_the_parameters_in_table_order(name, params) -> None:
    act = gc.Activation(name, **params)
    i, p0, p1 = act._core_spec(_core.ACTIVATION_IDS)
    assert i == _core.ACTIVATION_IDS[name]
    values = [act.params[k] for k in SPECS[name].params]
    assert [p0, p1] == (values + [0.0, 0.0])[:2]
    # and the core computes the activation with those parameters
    x = np.linspace(-4.0, 4.0, 801)
    f, d = _core.act_eval(i, p0, p1, x)
    np.testing.assert_allclose(f, act(x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(d, act.grad(x), rtol=1e-12, atol=1e-13)


def test_parameter_checks_come_from_the_rows() -> None:
    with pytest.raises(ValueError, match="min_val must be < max_val"):
        gc.Activation("hardtanh", min_val=1.0, max_val=1.0)
    with pytest.raises(ValueError, match="beta must be non-zero"):
        gc.Activation("softplus", beta=0.0)
    assert [n for n, s in SPECS.items() if s.check is not None] == ["softplus", "hardtanh"]


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_kinks_are_jumps_with_the_selected_value(name, params) -> None:
    """At each kink the derivative jumps, and the table's value is the one the NumPy
    derivative and the core (every ISA) take there; rows without kinks are smooth."""
    act = gc.Activation(name, **params)
    spec, p = SPECS[name], act.params
    ids = _core.ACTIVATION_IDS
    points = spec.kink_points(p)
    for k in spec.kinks:
        if not k.applies(p):
            continue
        x = k.where(p)
        left, right = act.grad(np.array([np.nextafter(x, -np.inf) - 1e-9 * (1 + abs(x)),
                                         np.nextafter(x, np.inf) + 1e-9 * (1 + abs(x))]))
        assert abs(left - right) > 1e-10, f"{name}: no jump at {x}"
        assert act.grad(np.array([x]))[0] == pytest.approx(k.value(p), rel=1e-15, abs=0)
        for isa in gc.available_isas():
            old = gc.get_isa()
            gc.set_isa(isa)
            try:
                d = _core.act_eval(*act._core_spec(ids), np.array([x]))[1][0]
            finally:
                gc.set_isa(old)
            assert d == pytest.approx(k.value(p), rel=1e-15, abs=0), (isa, name, x)
    if not points:  # smooth: no jump on a fine grid
        x = np.linspace(-6.0, 6.0, 120001)
        assert np.max(np.abs(np.diff(act.grad(x)))) < 1e-3, name


@pytest.mark.parametrize("name", list(SPECS))
def test_select_or_multiply_as_the_core_does(name) -> None:
    """``selects``: an Inf upstream gradient meets act'(n) = 0 as 0 (select) or NaN
    (0 * Inf, multiply) in the core's backward pass."""
    spec = SPECS[name]
    found = None
    for params in [{}, *VARIANTS.get(name, []), {"negative_slope": 0.0}, {"alpha": 0.0}]:
        if set(params) - set(spec.params):
            continue
        act = gc.Activation(name, **params)
        for n0 in (0.0, -1000.0, 1000.0, 2.0, -2.0, 7.0):
            if act.grad(np.array([n0]))[0] == 0.0:
                found = act, n0
                break
        if found:
            break
    if found is None:
        assert not spec.selects
        pytest.skip(f"{name}' is never 0")
    act, n0 = found
    m = gc.MLP([1, 1, 1], activation=act, dtype=np.float64)
    m.load_state_dict({"layers.0.weight": np.zeros((1, 1)), "layers.0.bias": np.array([n0]),
                       "layers.1.weight": np.array([[10.0]]), "layers.1.bias": np.zeros(1)})
    m.forward(np.ones((1, 1)))
    m.backward(np.array([[1e308]]))  # dL/da = 10 * 1e308 = Inf inside the core
    g = dict(m.named_grads())["layers.0.bias"][0]
    if spec.selects:
        assert g == 0.0, (name, n0, g)
    else:
        assert math.isnan(g), (name, n0, g)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_torch_twin_forward_and_autograd(name, params) -> None:
    """The row's torch function: the same forward values, and autograd's derivative the
    NumPy one, kinks included (float64)."""
    torch = pytest.importorskip("torch")
    act = gc.Activation(name, **params)
    fn = SPECS[name].torch_call(torch.nn.functional, act.params)
    kinks = SPECS[name].kink_points(act.params)
    x = np.concatenate([np.linspace(-8.0, 8.0, 3201), kinks, [0.0, 25.0, -25.0]])
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(t)
    (d,) = torch.autograd.grad(y.sum(), t)
    np.testing.assert_allclose(y.detach().numpy(), act(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d.numpy(), act.grad(x), rtol=1e-12, atol=1e-14)
    n = len(kinks)
    if n:  # exactly autograd's value at the kinks
        at = slice(3201, 3201 + n)
        np.testing.assert_allclose(d.numpy()[at], act.grad(x)[at], rtol=1e-15, atol=0)


def test_gains_are_torch_calculate_gain() -> None:
    torch = pytest.importorskip("torch")
    cg = torch.nn.init.calculate_gain
    torch_names = {"identity": "linear", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
                   "leaky_relu": "leaky_relu", "selu": "selu"}
    for name, tname in torch_names.items():
        for params in [{}, *VARIANTS.get(name, [])]:
            act = gc.Activation(name, **params)
            arg = [act.params["negative_slope"]] if name == "leaky_relu" else []
            assert act.gain() == pytest.approx(cg(tname, *arg), rel=1e-12), (name, params)
    for name in set(SPECS) - set(torch_names):  # PyTorch has none: Kaiming's sqrt(2)
        assert gc.Activation(name).gain() == math.sqrt(2.0)


def test_theory_breakpoints_are_the_table_kinks() -> None:
    for name, params in CASES:
        act = gc.Activation(name, **params)
        xb = T._info(act).xbps
        for x in [0.0, *SPECS[name].kink_points(act.params)]:
            assert np.any(xb == x), (name, params, x)
    assert T._info(gc.Activation("softplus", beta=4.0)).xbps.max() < 64.0  # its scale 1/4


def test_the_kink_sets_are_the_table() -> None:
    assert KINKED_ACTIVATIONS == {n for n, s in SPECS.items() if s.kinks}
    assert {"relu", "leaky_relu", "elu", "selu", "hardtanh"} <= KINKED_ACTIVATIONS
    from conftest import KINKED
    assert KINKED == {n: s.kink_points() for n, s in SPECS.items() if s.kink_points()}
    assert KINKED["hardtanh"] == [-1.0, 1.0] and "elu" not in KINKED  # elu(alpha=1) is C^1
    assert SPECS["elu"].kink_points({"alpha": 0.5}) == [0.0]
    assert SPECS["softplus"].kink_points({"beta": 2.0, "threshold": 1.5}) == [0.75]


def test_rows_are_frozen() -> None:
    spec = SPECS["relu"]
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SPECS["swishy"] = spec  # type: ignore[index]
    with pytest.raises(TypeError):
        SPECS["leaky_relu"].params["negative_slope"] = 0.5  # type: ignore[index]
    assert Kink(0.0, 1.0).applies({}) and not Kink(0.0, 1.0).moves
    with pytest.raises(ValueError, match="at most two"):
        ActivationSpec("three", np.tanh, np.tanh, params={"a": 1.0, "b": 2.0, "c": 3.0})
