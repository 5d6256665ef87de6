"""gc.theory: the mean-field fixed point q*, chi_1, depth scale, phase diagram and the
comparison with measured gradient reports.

Checked against closed forms (relu, identity, leaky_relu, tanh at q* = 0, hardtanh and
relu6 = hardtanh(0, 6) through the normal CDF), an independent adaptive quadrature
(scipy.integrate.quad split at the kinks) for every activation, and wide simulated networks.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradchain as gc
from gradchain import theory as T

TOL = 1e-9


def close(ours: float, exact: float, tol: float = TOL) -> bool:
    """|ours - exact| <= tol * (1 + |exact|): absolute + relative."""
    return abs(ours - exact) <= tol * (1.0 + abs(exact))


def Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("sw, sb", [(0.5, 0.0), (1.0, 0.3), (1.3, 0.7), (1.4, 2.0), (2.0, 0.1),
                                    (0.0, 0.4)])
def test_relu_closed_form(sw, sb):
    c = sw * sw / 2
    assert close(T.chi1("relu", sw, sb), c)
    q = T.fixed_point("relu", sw, sb)
    if c < 1:
        assert close(q, sb * sb / (1 - c))  # 0 at sigma_b = 0
    else:
        assert q == math.inf
    assert close(T.depth_scale("relu", sw, sb), -1 / math.log(c) if c > 0 else 0.0)


def test_relu_critical():
    sw = math.sqrt(2.0)
    assert T.fixed_point("relu", sw, 0.0) == 1.0          # every q is a fixed point: q0
    assert T.fixed_point("relu", sw, 0.0, q0=3.5) == 3.5
    assert T.fixed_point("relu", sw, 0.1) == math.inf     # q_l = q_{l-1} + sigma_b^2
    assert close(T.chi1("relu", sw, 0.1), 1.0)
    assert abs(T.depth_scale("relu", sw, 0.0)) > 1e12      # chi_1 = 1 up to rounding
    assert T.depth_scale("relu", sw, 0.0) == -1 / math.log(T.chi1("relu", sw, 0.0))


@pytest.mark.parametrize("name", ["identity", "linear"])
@pytest.mark.parametrize("sw, sb", [(0.6, 0.2), (0.95, 1.0), (1.0, 0.0), (1.5, 0.3)])
def test_identity_closed_form(name, sw, sb):
    assert close(T.chi1(name, sw, sb), sw * sw)
    q = T.fixed_point(name, sw, sb)
    if sw < 1:
        assert close(q, sb * sb / (1 - sw * sw))
    elif sw == 1 and sb == 0:
        assert q == 1.0
    else:
        assert q == math.inf


@pytest.mark.parametrize("sw", [0.3, 0.8, 1.0])
def test_tanh_ordered_zero_bias_goes_to_zero(sw):
    # q_l -> 0 (like 1/l at sigma_w = 1: never reached by iterating); chi_1 = sigma_w^2 tanh'(0)^2
    assert T.fixed_point("tanh", sw, 0.0) == 0.0
    assert close(T.chi1("tanh", sw, 0.0), sw * sw)


@pytest.mark.parametrize("a", [0.01, 0.2, 0.5])
@pytest.mark.parametrize("sw, sb", [(1.0, 0.3), (1.3, 0.0), (1.2, 0.5)])
def test_leaky_relu_closed_form(a, sw, sb):
    act = gc.Activation("leaky_relu", negative_slope=a)
    c = sw * sw * (1 + a * a) / 2
    assert close(T.chi1(act, sw, sb), c)
    q = T.fixed_point(act, sw, sb)
    assert close(q, sb * sb / (1 - c)) if c < 1 else q == math.inf


def clip_second_moment(q: float, lo: float, hi: float) -> float:
    """E[clip(x, lo, hi)^2] for x ~ N(0, q)."""
    s = math.sqrt(q)
    al, be = lo / s, hi / s
    inside = Phi(be) - Phi(al) - (be * phi(be) - al * phi(al))  # E[u^2; al < u < be]
    return lo * lo * Phi(al) + hi * hi * (1 - Phi(be)) + q * inside


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 6.0), (-0.5, 2.0)])  # (0, 6) is relu6
@pytest.mark.parametrize("sw, sb", [(0.9, 0.2), (1.5, 0.1), (3.0, 0.5), (1.1, 2.0)])
def test_hardtanh_relu6_closed_form(lo, hi, sw, sb):
    act = gc.Activation("hardtanh", min_val=lo, max_val=hi)
    q = T.fixed_point(act, sw, sb)
    assert 0 < q < math.inf
    # q* solves q = sigma_w^2 E[clip^2] + sigma_b^2, and chi_1 = sigma_w^2 P(lo < x < hi)
    assert close(sw * sw * clip_second_moment(q, lo, hi) + sb * sb, q, 1e-12)
    s = math.sqrt(q)
    assert close(T.chi1(act, sw, sb), sw * sw * (Phi(hi / s) - Phi(lo / s)))


def test_gaussian_expectation_closed_forms():
    q = np.array([0.0, 1e-8, 0.3, 1.0, 7.0, 1e6])
    s = np.sqrt(q)
    got = T.gaussian_expectation(lambda x: x * x, q)
    np.testing.assert_allclose(got, q, rtol=1e-14, atol=0)
    got = T.gaussian_expectation(lambda x: np.maximum(x, 0.0), q)
    np.testing.assert_allclose(got, s / math.sqrt(2 * math.pi), rtol=1e-14, atol=0)
    got = T.gaussian_expectation(lambda x: np.where(x > 0.7, 1.0, 0.0), q[1:], kinks=[0.7])
    np.testing.assert_allclose(got, [1 - Phi(0.7 / v) for v in s[1:]], rtol=1e-13, atol=1e-15)
    assert T.gaussian_expectation(lambda x: np.cos(x) + 2.0, 0.0) == 3.0       # f(0)
    assert close(T.gaussian_expectation(np.cos, 2.0), math.exp(-1.0), 1e-14)  # E cos = e^{-q/2}
    assert T.gaussian_expectation(np.cos, np.zeros((2, 3))).shape == (2, 3)


# --------------------------------------------------------------------- independent quadrature
scipy_integrate = pytest.importorskip("scipy.integrate")

VARIANTS = [
    gc.Activation(n) for n in gc.ACTIVATIONS
] + [
    gc.Activation("leaky_relu", negative_slope=0.3), gc.Activation("elu", alpha=0.4),
    gc.Activation("softplus", beta=2.0, threshold=5.0),   # kink at x = 2.5
    gc.Activation("softplus", beta=0.5, threshold=3.0),   # kink at x = 6
    gc.Activation("softplus", beta=-1.5, threshold=2.0),  # decreasing, kink at x = -4/3
    gc.Activation("hardtanh", min_val=-0.5, max_val=2.0),
    gc.Activation("hardtanh", min_val=0.0, max_val=6.0),
]
KINKS = {"relu": [0.0], "leaky_relu": [0.0], "elu": [0.0], "selu": [0.0]}


def kinks_of(act: gc.Activation) -> list[float]:
    p = act.params
    if act.name == "hardtanh":
        return [p["min_val"], p["max_val"]]
    if act.name == "softplus":
        return [p["threshold"] / p["beta"]]
    return KINKS.get(act.name, [])


def quad_expect(h, q: float, kinks: list[float]) -> float:
    """E[h(sqrt(q) u)] by scipy's adaptive quadrature in u, split at the kinks."""
    s = math.sqrt(q)
    pts = sorted({0.0, *[k / s for k in kinks if abs(k / s) < 30]})

    def integrand(u: float) -> float:
        return float(h(np.array([[s * u]]))[0, 0]) * phi(u)

    edges = [-30.0, *pts, 30.0]
    return sum(scipy_integrate.quad(integrand, a, b, epsabs=1e-13, epsrel=1e-12, limit=400)[0]
               for a, b in zip(edges[:-1], edges[1:], strict=True))


@pytest.mark.parametrize("act", VARIANTS, ids=repr)
def test_against_scipy_quad(act):
    kinks = kinks_of(act)

    def sq(x):
        return act(x) ** 2

    def dsq(x):
        return act.grad(x) ** 2

    checked = 0
    for sw, sb in [(0.8, 0.1), (0.5, 0.7), (1.3, 0.5), (2.5, 1.0), (1.0, 3.0)]:
        q = T.fixed_point(act, sw, sb)
        if not 0 < q < math.inf:
            continue
        checked += 1
        # q* is a fixed point of the map, and chi_1 is the expectation at q*
        assert close(sw * sw * quad_expect(sq, q, kinks) + sb * sb, q)
        assert close(T.chi1(act, sw, sb), sw * sw * quad_expect(dsq, q, kinks))
    assert checked >= 2
    # the quadrature itself over a range of q (through the helper, with the same kinks)
    scale = 1.0 / abs(act.params["beta"]) if act.name == "softplus" else 1.0
    for q in [1e-4, 0.05, 0.7, 3.0, 40.0, 900.0]:
        for h in (sq, dsq):
            ours = T.gaussian_expectation(h, q, kinks=kinks, scale=scale)
            assert close(ours, quad_expect(h, q, kinks)), (q, h.__name__)


def test_custom_activation_matches_builtin():
    custom = gc.Activation.custom(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, name="mytanh")
    for sw, sb in [(0.9, 0.2), (2.0, 0.5), (1.0, 0.0)]:
        assert close(T.fixed_point(custom, sw, sb), T.fixed_point("tanh", sw, sb), 1e-12)
        assert close(T.chi1(custom, sw, sb), T.chi1("tanh", sw, sb), 1e-12)
    ident = gc.Activation.custom(lambda x: x.copy(), np.ones_like)
    assert close(T.chi1(ident, 0.7, 0.4), 0.49)
    assert close(T.fixed_point(ident, 0.7, 0.4), 0.16 / (1 - 0.49))


@pytest.mark.parametrize("name, sw, sb", [("tanh", 2.0, 0.5), ("sigmoid", 3.0, 0.2),
                                          ("elu", 1.1, 0.3), ("hardtanh", 1.8, 0.1)])
def test_fixed_point_is_the_limit_of_the_iteration(name, sw, sb):
    act = gc.Activation(name)
    q = 1.0
    for _ in range(400):  # these converge geometrically
        q = sw * sw * T.gaussian_expectation(lambda x: act(x) ** 2, q, kinks=kinks_of(act)) \
            + sb * sb
    assert close(T.fixed_point(name, sw, sb), q, 1e-12)


def test_slow_convergence_near_critical():
    # sigma_w slightly above 1 at sigma_b = 0: a small positive q* the iteration reaches slowly
    q = T.fixed_point("tanh", 1.01, 0.0)
    assert 0.005 < q < 0.05
    assert close(1.01 ** 2 * quad_expect(lambda x: np.tanh(x) ** 2, q, []), q, 1e-12)
    # a tiny bias at sigma_w = 1: q* ~ sigma_b / sqrt(2) (q = q - 2 q^2 + sigma_b^2)
    q = T.fixed_point("tanh", 1.0, 1e-3)
    assert abs(q / (1e-3 / math.sqrt(2)) - 1) < 0.01
    assert close(quad_expect(lambda x: np.tanh(x) ** 2, q, []) + 1e-6, q, 1e-12)


# --------------------------------------------------------------------------- phase diagram
def test_phase_diagram_values():
    sw = np.linspace(0.5, 4.0, 7)
    sb = np.array([0.0, 0.05, 0.5, 1.0])
    pd = T.phase_diagram("tanh", sw, sb)
    assert pd.q_star.shape == pd.chi1.shape == (4, 7)
    assert pd.activation == "tanh"
    np.testing.assert_array_equal(pd.sigma_w, sw)
    for i, b in enumerate(sb):
        for j, w in enumerate(sw):
            assert close(pd.chi1[i, j], T.chi1("tanh", float(w), float(b)), 1e-12)
            assert close(pd.q_star[i, j], T.fixed_point("tanh", float(w), float(b)), 1e-12)
    xi = pd.depth_scale
    assert xi.shape == (4, 7)
    assert ((xi > 0) == (pd.chi1 < 1)).all()
    # relu: chi_1 = sigma_w^2 / 2 everywhere, q* = inf in the chaotic half
    rd = T.phase_diagram("relu", [1.0, 1.5], [0.0, 0.5])
    np.testing.assert_allclose(rd.chi1, [[0.5, 1.125], [0.5, 1.125]], rtol=1e-13)
    assert rd.q_star[1, 0] == pytest.approx(0.5) and np.isinf(rd.q_star[:, 1]).all()


def test_phase_diagram_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from gradchain._plotting import pyplot

    plt = pyplot()
    from matplotlib.image import imread

    pd = T.phase_diagram("tanh", np.linspace(0.5, 4.0, 12), np.linspace(0.0, 1.0, 9))
    rep_model = gc.MLP([16] * 11 + [2], activation="tanh", init=gc.init.normal(2.0, 0.3),
                       dtype=np.float64, seed=0)
    rep_model.forward(np.ones((4, 16)))
    rep = rep_model.backward(np.ones((4, 2)))
    path = tmp_path / "pd.png"
    fig, ax = pd.plot(path=path, measured=[(1.0, 0.2, 0.8), (3.0, 0.5, 1.7), (2.0, 0.3, rep)])
    # the saved size is the tight bounding box (+0.1 in padding each side) at 100 dpi
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    want = (round((bbox.height + 0.2) * 100), round((bbox.width + 0.2) * 100))
    img = imread(path)
    assert abs(img.shape[0] - want[0]) <= 2 and abs(img.shape[1] - want[1]) <= 2, (img.shape,
                                                                                   want)
    assert img.shape[2] in (3, 4) and float(img[..., :3].var()) > 0.01
    assert ax.get_xlabel() and ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert "ordered (vanishing)" in texts and "chaotic (exploding)" in texts
    plt.close(fig)
    model, rep = small_report()
    fig, ax = plt.subplots()
    fig2, ax2 = pd.plot(ax=ax, measured=[T.compare(rep, model=model)])
    assert fig2 is fig and ax2 is ax
    plt.close(fig)


# ------------------------------------------------------------------- simulated networks
SIM = [("tanh", 1.5, 0.3), ("tanh", 0.9, 0.3), ("tanh", 2.5, 0.3),
       ("relu", math.sqrt(2.0), 0.0)]


@pytest.mark.parametrize("act, sw, sb", SIM)
def test_wide_network_matches_chi1(act, sw, sb):
    # width 1024, 20 hidden layers, float64. Measured (seeds 0-5): |chi1_measured / chi1 - 1|
    # <= 1% for tanh (ordered, near-critical, chaotic) and <= 1.4% for relu at chi_1 = 1.
    # 4% keeps a margin and still fails for a prediction 10% off.
    model = gc.MLP([1024] + [1024] * 20 + [10], activation=act, init=gc.init.normal(sw, sb),
                   dtype=np.float64, seed=1)
    rng = np.random.default_rng(1)
    model.forward(rng.standard_normal((64, 1024)))
    rep = model.backward(rng.standard_normal((64, 10)))
    cmp = T.compare(rep, model=model)
    c = T.chi1(act, sw, sb)
    assert cmp.chi1 == c and cmp.layers == (5, 18)
    assert abs(cmp.chi1_measured / c - 1) < 0.04, (cmp.chi1_measured, c)
    assert abs(cmp.chi1_measured / (1.1 * c) - 1) > 0.05  # the test can tell 10% apart
    # the same fit by hand: slope of log10 ||dL/da_l|| from l = 18 down to l = 5
    a = rep.activation_grad_norms
    ls = np.arange(5, 19)
    slope = np.polyfit(18.0 - ls, np.log10(a[ls]), 1)[0]
    assert close(cmp.log10_factor_measured, slope, 1e-10)
    explicit = T.compare(rep, act, sw, sb)
    assert explicit.chi1_measured == cmp.chi1_measured


# ------------------------------------------------------------------------------- compare
def small_report(depth: int = 12, **kw) -> tuple[gc.MLP, gc.GradReport]:
    opts = {"activation": "tanh", "init": gc.init.normal(1.5, 0.2), "dtype": np.float64,
            "seed": 0, **kw}
    model = gc.MLP([32] + [32] * depth + [4], **opts)
    rng = np.random.default_rng(0)
    model.forward(rng.standard_normal((8, 32)))
    return model, model.backward(rng.standard_normal((8, 4)))


def test_compare_fields_table_dict():
    model, rep = small_report()
    cmp = T.compare(rep, model=model, skip=(1, 3))
    assert cmp.layers == (3, 11)
    assert cmp.activation == "tanh" and cmp.sigma_w == 1.5 and cmp.sigma_b == 0.2
    assert close(cmp.q_star, T.fixed_point("tanh", 1.5, 0.2), 1e-12)
    assert close(cmp.log10_factor, 0.5 * math.log10(cmp.chi1), 1e-12)
    assert close(cmp.chi1_measured, 10 ** (2 * cmp.log10_factor_measured), 1e-12)
    assert close(cmp.depth_scale, -1 / math.log(cmp.chi1), 1e-12)
    assert cmp.log10_norms.shape == cmp.log10_norms_predicted.shape == (13,)
    np.testing.assert_allclose(cmp.log10_norms, np.log10(rep.activation_grad_norms))
    assert cmp.log10_norms_predicted[11] == cmp.log10_norms[11]
    assert close(cmp.log10_norms_predicted[3] - cmp.log10_norms_predicted[11],
                 8 * cmp.log10_factor, 1e-12)
    text = cmp.table()
    assert "chi_1" in text and "depth scale" in text and "input" in text
    d = cmp.to_dict()
    assert json.loads(json.dumps(d))["chi1"] == cmp.chi1
    assert len(d["log10_norms"]) == 13
    assert T.compare(rep, model=model, skip=2).layers == (2, 10)
    # a model without biases has sigma_b = 0 whatever init says
    m2, rep2 = small_report(bias=False)
    assert T.compare(rep2, model=m2).sigma_b == 0.0


@pytest.mark.parametrize("kw, match", [
    ({"norm": "batch"}, "norm"), ({"norm": "layer"}, "norm"),
    ({"residual": True}, "residual"), ({"init": "xavier_normal"}, "normal"),
])
def test_compare_rejects_models_outside_the_theory(kw, match):
    model, rep = small_report(**kw)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        T.compare(rep, model=model)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_compare_bad_inputs():
    model, rep = small_report()
    with pytest.raises(TypeError, match="report"):
        T.compare(rep.to_dict(), model=model)
    with pytest.raises(ValueError, match="not both"):
        T.compare(rep, "tanh", 1.5, 0.2, model=model)
    with pytest.raises(TypeError, match="model="):
        T.compare(rep, "tanh", 1.5)
    with pytest.raises(TypeError, match="model"):
        T.compare(rep, model="mlp")
    other, _ = small_report(depth=5)
    with pytest.raises(ValueError, match="depth"):
        T.compare(rep, model=other)
    for skip, exc in [((6, 6), ValueError), (-1, ValueError), ((1, 2, 3), TypeError),
                      (1.5, TypeError), (True, TypeError), ("2", TypeError)]:
        with pytest.raises(exc, match="skip"):
            T.compare(rep, model=model, skip=skip)
    with pytest.raises(ValueError, match="sigma_w"):
        T.compare(rep, "tanh", -1.0, 0.2)


# ------------------------------------------------------------------------------ bad inputs
ENTRY = [T.fixed_point, T.chi1, T.depth_scale]


@pytest.mark.parametrize("fn", ENTRY)
def test_unknown_activation_lists_names(fn):
    with pytest.raises(ValueError, match="tanh.*relu"):
        fn("relu7", 1.0, 0.0)
    with pytest.raises(TypeError, match="activation"):
        fn(3, 1.0, 0.0)


@pytest.mark.parametrize("fn", ENTRY)
@pytest.mark.parametrize("bad, exc", [
    ("1.0", TypeError), (None, TypeError), (True, TypeError), ([1.0], TypeError),
    (1 + 0j, TypeError), (math.nan, ValueError), (math.inf, ValueError), (-0.5, ValueError),
    (1e9, ValueError),
])
def test_bad_sigmas(fn, bad, exc):
    with pytest.raises(exc, match="sigma_w"):
        fn("tanh", bad, 0.1)
    with pytest.raises(exc, match="sigma_b"):
        fn("tanh", 1.0, bad)


def test_bad_controls():
    for kw, exc in [({"q0": 0.0}, ValueError), ({"q0": -1.0}, ValueError),
                    ({"q0": "1"}, TypeError), ({"tol": 0.0}, ValueError),
                    ({"tol": None}, TypeError), ({"max_iter": 0}, ValueError),
                    ({"max_iter": 2.0}, TypeError)]:
        with pytest.raises(exc, match=next(iter(kw))):
            T.fixed_point("tanh", 1.0, 0.1, **kw)
    with pytest.raises(RuntimeError, match="max_iter"):
        T.fixed_point("tanh", 1.0, 1e-3, max_iter=2)
    assert T.fixed_point("tanh", 1.5, 0.1, q0=0.01) == pytest.approx(
        T.fixed_point("tanh", 1.5, 0.1), rel=1e-12)


@pytest.mark.parametrize("grid, exc", [
    ([], ValueError), ([[0.5, 1.0]], ValueError), ([1.0, 0.5], ValueError),
    ([1.0, 1.0], ValueError), ([-0.1, 1.0], ValueError), ([0.5, math.nan], ValueError),
    (["a", "b"], TypeError), ("0.5", TypeError), (None, TypeError), ([True, False], TypeError),
])
def test_bad_grids(grid, exc):
    with pytest.raises(exc, match="sigma_w_grid"):
        T.phase_diagram("tanh", grid, [0.0, 1.0])
    with pytest.raises(exc, match="sigma_b_grid"):
        T.phase_diagram("tanh", [0.5, 1.0], grid)


def test_bad_helper_and_plot_inputs(tmp_path):
    with pytest.raises(TypeError, match="f"):
        T.gaussian_expectation("tanh", 1.0)
    with pytest.raises(ValueError, match="q"):
        T.gaussian_expectation(np.tanh, -1.0)
    with pytest.raises(ValueError, match="shape"):
        T.gaussian_expectation(lambda x: x.sum(), 1.0)
    with pytest.raises(TypeError, match="kinks"):
        T.gaussian_expectation(np.tanh, 1.0, kinks="0")
    with pytest.raises(ValueError, match="scale"):
        T.gaussian_expectation(np.tanh, 1.0, scale=0.0)
    bad_custom = gc.Activation.custom(lambda x: x[..., :1], np.ones_like)
    with pytest.raises(ValueError, match="shape"):
        T.chi1(bad_custom, 1.0, 0.0)
    pytest.importorskip("matplotlib")
    pd = T.phase_diagram("relu", [1.0, 1.5], [0.0, 0.5])
    with pytest.raises(ValueError, match="path"):
        pd.plot(path=tmp_path / "missing" / "x.png")
    with pytest.raises(TypeError, match="path"):
        pd.plot(path=3)
    with pytest.raises(TypeError, match="ax"):
        pd.plot(ax="axes")
    with pytest.raises(TypeError, match="measured"):
        pd.plot(measured=[(1.0, 0.5)])
    with pytest.raises(TypeError, match="measured"):
        pd.plot(measured=[(1.0, 0.5, "x")])
    with pytest.raises(ValueError, match="measured"):
        pd.plot(measured=[(1.0, -0.5, 1.0)])
    _, shallow = small_report(depth=4)
    with pytest.raises(ValueError, match=r"measured\[0\]\[2\].*shallow"):
        pd.plot(measured=[(1.0, 0.5, shallow)])


@given(st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True),
                 st.integers(-10, 10**12), st.lists(st.floats(), max_size=2),
                 st.complex_numbers()))
def test_fuzz_sigmas_raise_only_documented(v):
    try:
        c = T.chi1("tanh", v, 0.1)
    except (TypeError, ValueError):
        return
    assert math.isfinite(c) and c >= 0
