"""The C++ MLP chain against the NumPy reference (gradchain.reference), on random
configurations: every activation, norm, residual form, init and both dtypes.
Tolerances: float64 1e-10, float32 2e-4, both scaled by the magnitude of the
reference tensor (or, for tensors that are ~0 by construction such as the bias
gradients under batch norm, of the layer's gradients)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import gradchain as gc
from conftest import assert_close, kink_margin, ref, ref_params

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}

ACT_VARIANTS = [
    ("identity", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}),
    ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {}), ("elu", {"alpha": 0.5}), ("selu", {}), ("gelu", {}), ("gelu_tanh", {}),
    ("softplus", {}), ("softplus", {"beta": 2.0, "threshold": 1.5}), ("silu", {}),
    ("hardtanh", {}), ("hardtanh", {"min_val": -0.5, "max_val": 2.0}),
]
SMOOTH_VARIANTS = [a for a in ACT_VARIANTS
                   if a[0] not in ("relu", "leaky_relu", "selu", "hardtanh")]
INITS = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal",
         "orthogonal", "torch_default", gc.init.normal(sigma_w=1.3, sigma_b=0.1)]


@st.composite
def configs(draw, dtype=None, small=False, smooth=False):
    depth = draw(st.integers(1, 6 if small else 12))
    wmax = 16 if small else 64
    if draw(st.booleans()):  # equal widths: residual everywhere possible
        w = draw(st.integers(1, wmax))
        hidden = [w] * depth
    else:
        hidden = [draw(st.integers(1, wmax)) for _ in range(depth)]
    sizes = [draw(st.integers(1, wmax))] + hidden + [draw(st.integers(1, wmax))]
    kind = draw(st.sampled_from(["none", "all", "k", "list"]))
    if kind == "none":
        residual = False
    elif kind == "all":
        residual = True
    elif kind == "k":
        residual = draw(st.integers(1, 3))
    else:
        residual = [sizes[i] == sizes[i + 1] and draw(st.booleans()) for i in range(depth)]
    return {
        "sizes": sizes,
        "act": draw(st.sampled_from(SMOOTH_VARIANTS if smooth else ACT_VARIANTS)),
        "norm": draw(st.sampled_from([None, "batch", "layer"])),
        "residual": residual,
        "residual_scale": draw(st.sampled_from([1.0, 0.5])),
        "bias": draw(st.booleans()),
        "init": draw(st.sampled_from(INITS)),
        "dtype": np.dtype(dtype) if dtype is not None else draw(
            st.sampled_from([np.dtype(np.float64), np.dtype(np.float32)])),
        "batch": draw(st.integers(2, 8 if small else 32)),
        "training": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(cfg):
    name, params = cfg["act"]
    return gc.MLP(cfg["sizes"], activation=gc.Activation(name, **params), init=cfg["init"],
                  norm=cfg["norm"], residual=cfg["residual"],
                  residual_scale=cfg["residual_scale"], bias=cfg["bias"], dtype=cfg["dtype"],
                  seed=cfg["seed"])


class NearKink(Exception):
    """A float32 pre-activation sits within rounding of a kink: the example is skipped."""


def check_given(cfg):
    try:
        check_against_reference(cfg)
    except NearKink:
        assume(False)


def check_against_reference(cfg, *, margin=1e-4):
    """Run one forward/backward on core and reference and compare every number."""
    dt = cfg["dtype"]
    tol = TOL[dt]
    rng = np.random.default_rng(cfg["seed"])
    m = build(cfg)
    B, n_in, n_out = cfg["batch"], cfg["sizes"][0], cfg["sizes"][-1]
    if cfg["norm"] == "batch":
        # give the running statistics something to hold, then maybe switch to eval
        m.forward(rng.normal(size=(B, n_in)).astype(dt))
    if not cfg["training"]:
        m.eval()
    x = rng.normal(size=(B, n_in)).astype(dt)
    g = rng.normal(size=(B, n_out)).astype(dt)
    params = ref_params(m)
    name, act_params = cfg["act"]
    yr, cache = ref.mlp_forward(params, x.astype(np.float64), activation=name,
                                act_params=act_params, norm=cfg["norm"], residual=m.residual,
                                residual_scale=cfg["residual_scale"], training=cfg["training"],
                                bias=cfg["bias"])
    if dt == np.float32:
        # a float32 pre-activation within rounding of a kink may take the other branch
        if kink_margin(cache, name) <= margin:
            raise NearKink
    grads_r, dx_r, rep_r = ref.mlp_backward(cache, g.astype(np.float64))

    y = m.forward(x)
    rep = m.backward(g)
    assert y.dtype == dt and y.shape == (B, n_out)
    assert_close("y", y, yr, tol)
    # dL/dx and the norms can be cancellation results (layer norm on narrow layers):
    # scale them by the largest gradient signal in the chain.
    ascale = float(np.max(rep_r["activation_grad_norms"]))
    assert_close("dL/dx", m.input_grad, dx_r, tol, floor=1e-2 * ascale / math.sqrt(dx_r.size))
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    ours = dict(m.named_grads())
    assert set(ours) == set(grads_r)
    # float32: scaled by the larger of the tensor's and a tenth of the largest gradient
    # (batch norm on narrow layers cancels terms, amplifying float32 rounding).
    gfloor = (1e-2 if dt == np.float64 else 1e-1) * gscale
    for k, v in grads_r.items():
        assert_close(k, ours[k], v, tol, floor=gfloor)
    bscale = max([float(np.max(np.abs(v))) for v in cache["new_buffers"].values()] + [0.0])
    for k, v in cache["new_buffers"].items():  # a running mean can be ~0 by construction
        assert_close(k, m.state_dict()[k], v, tol, floor=1e-2 * bscale)
    nscale = max(float(np.max(rep_r["weight_grad_norms"])), 1e-300)
    for field in ("weight_grad_norms", "bias_grad_norms", "norm_weight_grad_norms",
                  "norm_bias_grad_norms"):
        assert_close(field, getattr(rep, field), rep_r[field], tol, floor=1e-2 * nscale)
    assert_close("activation_grad_norms", rep.activation_grad_norms,
                 rep_r["activation_grad_norms"], tol, floor=1e-2 * ascale)
    assert math.isclose(rep.global_norm, rep_r["global_norm"], rel_tol=tol)
    assert rep.first_nonfinite is None and rep_r["first_nonfinite"] is None
    assert rep.forward_first_nonfinite is None
    # the report describes the stored gradients
    for (k, gk), wn in zip([(k, v) for k, v in m.named_grads() if k.endswith("weight")
                            and k.startswith("layers")], rep.weight_grad_norms, strict=True):
        assert math.isclose(np.linalg.norm(gk.astype(np.float64)), wn, rel_tol=1e-6), k
    return m


@given(configs(dtype=np.float64))
def test_float64_matches_reference(cfg):
    check_given(cfg)


@given(configs(dtype=np.float32, smooth=True))
def test_float32_smooth_matches_reference(cfg):
    check_given(cfg)


@given(configs(dtype=np.float32, small=True))
def test_float32_small_matches_reference(cfg):
    check_given(cfg)


@pytest.mark.parametrize("name", gc.ACTIVATIONS)
@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_every_activation_and_norm(name, norm):
    cfg = {"sizes": [6, 9, 9, 9, 4], "act": (name, {}), "norm": norm, "residual": 2,
           "residual_scale": 1.0, "bias": True, "init": "xavier_normal",
           "dtype": np.dtype(np.float64), "batch": 7, "training": True, "seed": 3}
    check_against_reference(cfg)
    check_against_reference({**cfg, "training": False, "bias": False})


def _isa_configs():
    out = []
    for i, (name, params) in enumerate(ACT_VARIANTS):
        for dt in (np.float64, np.float32):
            out.append({"sizes": [37, 40, 40, 33, 5], "act": (name, params),
                        "norm": [None, "batch", "layer"][i % 3], "residual": True,
                        "residual_scale": 0.7, "bias": True, "init": "kaiming_normal",
                        "dtype": np.dtype(dt), "batch": 45, "training": True, "seed": i})
    return out


@pytest.mark.parametrize("isa", gc.available_isas())
def test_every_isa_matches_reference(isa, restore_isa):
    gc.set_isa(isa)
    assert gc.get_isa() == isa
    checked = 0
    for cfg in _isa_configs():
        try:
            check_against_reference(cfg, margin=1e-5)
            checked += 1
        except NearKink:
            pass
    assert checked >= len(_isa_configs()) - 4


@pytest.mark.parametrize("isa", gc.available_isas())
def test_isa_environment_override(isa):
    code = ("import gradchain as gc, numpy as np;"
            "m = gc.MLP([8, 16, 4], activation='tanh', seed=0);"
            "y = m.forward(np.ones((3, 8), np.float32)); print(gc.get_isa())")
    env = dict(os.environ, GRADCHAIN_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == isa


def test_isa_variants_agree_closely(restore_isa):
    """Every compiled variant computes the same chain to float32 accuracy."""
    results = {}
    for isa in gc.available_isas():
        gc.set_isa(isa)
        m = gc.MLP([64] + [64] * 8 + [8], activation="gelu_tanh", norm="layer", seed=1)
        x = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
        y = m.forward(x)
        rep = m.backward(np.ones_like(y))
        results[isa] = (y, rep.activation_grad_norms)
    base = results["scalar"]
    for isa, (y, a) in results.items():
        assert_close(f"y[{isa}]", y, base[0], 1e-5)
        assert_close(f"act norms[{isa}]", a, base[1], 1e-5)


def _run_big(norm, residual):
    m = gc.MLP([96] + [256] * 6 + [32], activation="tanh", norm=norm, residual=residual,
               seed=5, init="xavier_normal")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(130, 96)).astype(np.float32)
    g = rng.normal(size=(130, 32)).astype(np.float32)
    y = m.forward(x)
    rep = m.backward(g)
    return y, {k: v.copy() for k, v in m.named_grads()}, rep, m.input_grad


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_thread_count_does_not_change_any_number(norm, restore_threads):
    gc.set_num_threads(1)
    y1, g1, r1, dx1 = _run_big(norm, True)
    gc.set_num_threads(2)
    y2, g2, r2, dx2 = _run_big(norm, True)
    gc.set_num_threads(3)  # more threads than cores still gives the same numbers
    y3, g3, r3, dx3 = _run_big(norm, True)
    for a, b, c in ((y1, y2, y3), (dx1, dx2, dx3)):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    for k in g1:
        assert np.array_equal(g1[k], g2[k]) and np.array_equal(g1[k], g3[k]), k
    for f in ("weight_grad_norms", "bias_grad_norms", "activation_grad_norms",
              "norm_weight_grad_norms", "norm_bias_grad_norms"):
        assert np.array_equal(getattr(r1, f), getattr(r2, f)), f
        assert np.array_equal(getattr(r1, f), getattr(r3, f)), f
    assert r1.global_norm == r2.global_norm == r3.global_norm


def test_repeated_runs_are_bitwise_identical():
    a = _run_big("batch", False)
    b = _run_big("batch", False)
    assert np.array_equal(a[0], b[0])
    for k in a[1]:
        assert np.array_equal(a[1][k], b[1][k])
    assert np.array_equal(a[2].activation_grad_norms, b[2].activation_grad_norms)


def test_set_num_threads_validates_and_round_trips(restore_threads):
    gc.set_num_threads(1)
    assert gc.get_num_threads() == 1
    gc.set_num_threads(2)
    assert gc.get_num_threads() == 2


def test_omp_num_threads_is_respected():
    code = "import gradchain as gc; print(gc.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accumulate_adds_and_default_overwrites(dtype):
    m = gc.MLP([5, 8, 8, 3], activation="silu", norm="layer", seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(dtype)
    g = rng.normal(size=(6, 3)).astype(dtype)
    m.forward(x)
    m.backward(g)
    once = {k: v.copy() for k, v in m.named_grads()}
    m.backward(g)  # overwrite: same values again
    for k, v in m.named_grads():
        assert np.array_equal(v, once[k]), k
    rep = m.backward(g, accumulate=True)
    for k, v in m.named_grads():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-5, atol=1e-6, err_msg=k)
    w0 = np.linalg.norm(m._grads["layers.0.weight"].astype(np.float64))
    assert math.isclose(rep.weight_grad_norms[0], w0, rel_tol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_grad_matches_reference(loss, dtype):
    m = gc.MLP([7, 12, 12, 5], activation="tanh", seed=1, dtype=dtype)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 7)).astype(dtype)
    t = (rng.normal(size=(9, 5)).astype(dtype) if loss == "mse"
         else rng.integers(0, 5, size=9))
    params = ref_params(m)
    value, rep = m.loss_and_grad(x, t, loss=loss)
    yr, cache = ref.mlp_forward(params, x.astype(np.float64), activation="tanh")
    lr, dy = ref.loss_forward_backward(yr, t.astype(np.float64) if loss == "mse" else t, loss)
    grads_r, _, rep_r = ref.mlp_backward(cache, dy)
    tol = TOL[np.dtype(dtype)]
    assert math.isclose(value, lr, rel_tol=tol * 10)
    assert rep.loss == value
    for k, v in grads_r.items():
        assert_close(k, m._grads[k], v, tol * 10)


def test_custom_activation_matches_builtin():
    def f(x):
        return np.tanh(x)

    def df(x):
        return 1.0 - np.tanh(x) ** 2

    kw = dict(norm="batch", residual=True, seed=4, dtype=np.float64)
    a = gc.MLP([6, 10, 10, 10, 3], activation="tanh", **kw)
    b = gc.MLP([6, 10, 10, 10, 3], activation=gc.Activation.custom(f, df, name="mytanh"), **kw)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6))
    g = rng.normal(size=(8, 3))
    ya, yb = a.forward(x), b.forward(x)
    ra, rb = a.backward(g), b.backward(g)
    assert_close("y", yb, ya, 1e-12)
    gscale = max(float(np.max(np.abs(v))) for _, v in a.named_grads())
    for k, v in a.named_grads():  # batch norm makes the bias gradients ~0: scale by the largest
        assert_close(k, b._grads[k], v, 1e-12, floor=1e-2 * gscale)
    assert_close("act norms", rb.activation_grad_norms, ra.activation_grad_norms, 1e-12)


def test_batch_size_change_replans():
    m = gc.MLP([5, 8, 8, 3], activation="relu", norm="batch", seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    for B in (4, 70, 2, 33):
        x = rng.normal(size=(B, 5))
        params = ref_params(m)
        y = m.forward(x)
        yr, _ = ref.mlp_forward(params, x, activation="relu", norm="batch")
        assert_close(f"y B={B}", y, yr, 1e-12)
        m.backward(np.ones((B, 3)))
    assert int(m.state_dict()["norms.0.num_batches_tracked"]) == 4


def test_eval_mode_batch_norm_accepts_single_sample():
    m = gc.MLP([3, 4, 2], norm="batch", seed=0).eval()
    y = m.forward(np.ones((1, 3), np.float32))
    assert y.shape == (1, 2)


def test_nonfinite_is_reported_forward_and_backward():
    m = gc.MLP([4, 6, 6, 6, 2], activation="relu", seed=0, dtype=np.float64,
               init="kaiming_normal")
    m._params["layers.1.weight"][0, :] = np.inf  # a_2 holds inf (or nan)
    params = ref_params(m)
    x = np.random.default_rng(0).normal(size=(5, 4))
    g = np.ones((5, 2))
    m.forward(x)
    rep = m.backward(g)
    _, cache = ref.mlp_forward(params, x, activation="relu")
    _, _, rep_r = ref.mlp_backward(cache, g)
    assert rep.forward_first_nonfinite == cache["forward_first_nonfinite"] is not None
    assert rep.first_nonfinite == rep_r["first_nonfinite"] is not None
    assert "non-finite" in rep.verdict()


def test_float64_norms_do_not_overflow_for_finite_gradients():
    m = gc.MLP([3, 4], dtype=np.float64, seed=0)  # one linear layer
    x = np.full((2, 3), 1e200)
    m.forward(x)
    rep = m.backward(np.full((2, 4), 1e200))
    g = m._grads["layers.0.weight"]
    assert np.all(np.isfinite(g)) is np.False_ or np.all(np.isfinite(g))
    if np.all(np.isfinite(g)):
        assert math.isfinite(rep.weight_grad_norms[0])
        expected = ref.frobenius_norm(g)
        assert math.isclose(rep.weight_grad_norms[0], expected, rel_tol=1e-12)
    assert math.isfinite(rep.activation_grad_norms[0])
    assert rep.first_nonfinite is None


def test_views_share_memory_with_the_core():
    m = gc.MLP([3, 5, 2], dtype=np.float64, seed=0)
    p = dict(m.named_parameters())
    p["layers.1.weight"][...] = 0.0
    p["layers.1.bias"][...] = 2.5
    y = m.forward(np.ones((4, 3)))
    assert np.all(y == 2.5)
    rep = m.backward(np.ones((4, 2)))
    g = dict(m.named_grads())
    assert np.all(g["layers.1.bias"] == 4.0)
    assert math.isclose(rep.bias_grad_norms[1], 4.0 * math.sqrt(2))


def test_report_table_and_dict():
    m = gc.MLP([8] + [16] * 5 + [3], activation="sigmoid", seed=0)
    _, rep = m.loss_and_grad(np.ones((4, 8), np.float32), np.zeros((4, 3), np.float32))
    t = rep.table()
    assert "||dL/dW||" in t and t.count("\n") == 5 + 2
    d = rep.to_dict()
    assert len(d["activation_grad_norms"]) == 6 and isinstance(d["global_norm"], float)
    assert rep.ratio < 1  # sigmoid shrinks the signal
    assert rep.log10_slope() < 0


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gradients_only_mode_gives_the_same_gradients(norm, residual, accumulate):
    """backward(report=False) skips the report's passes only: every gradient and
    dL/dx bitwise as with the report, and None instead of a report."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(45, 24)).astype(np.float32)
    g = rng.normal(size=(45, 5)).astype(np.float32)
    outs = []
    for report in (True, False):
        m = gc.MLP([24, 40, 40, 40, 5], activation="relu", norm=norm, residual=residual, seed=3)
        for _ in range(2 if accumulate else 1):
            m.forward(x)
            rep = m.backward(g, accumulate=accumulate, report=report)
        assert (rep is None) == (not report)
        outs.append(([p.copy() for p in m.grads()], m.input_grad.copy()))
    for a, b in zip(outs[0][0], outs[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_gradients_only_flag_is_checked():
    m = gc.MLP([4, 4, 2], seed=0)
    m.forward(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="report"):
        m.backward(np.ones((3, 2), np.float32), report="no")


# --------------------------------------------------------------------------- panel GEMM
@pytest.fixture
def restore_panel():
    on = gc._core._panel_gemm()
    yield
    gc._core._set_panel_gemm(on)


def _run_once(m, x, g):
    y = m.forward(x)
    rep = m.backward(g)
    return y, {k: v.copy() for k, v in m.named_grads()}, rep, m.input_grad.copy()


@pytest.mark.parametrize("sizes,B,kw", [
    ([96] + [256] * 4 + [32], 130, dict(activation="tanh")),       # 2 column blocks, 6-row tiles
    ([37] + [100] * 3 + [5], 7, dict(activation="relu", norm="batch", residual=True)),
    ([64] + [64] * 8 + [64], 64, dict(activation="relu", norm="batch", residual=True)),
    ([3, 17, 1], 1, dict(activation="sigmoid", norm="layer")),      # 1-row tile, partial panels
    ([1100, 40, 6], 9, dict(activation="tanh")),                   # K > 1024: OpenBLAS anyway
    ([20] + [50] * 2 + [4], 1500, dict(activation="gelu")),        # dW's K = B > 1024
])
@pytest.mark.parametrize("isa", gc.available_isas())
def test_panel_gemm_matches_openblas_and_reference(sizes, B, kw, isa, restore_panel, restore_isa):
    """float32 layer products run on gradchain's panel GEMM where they fit (forward,
    dL/dx and dW): the same numbers as OpenBLAS to float32 rounding, on every ISA, and
    the reference's."""
    gc.set_isa(isa)
    m = gc.MLP(sizes, seed=3, **kw)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(B, sizes[0])).astype(np.float32)
    g = rng.normal(size=(B, sizes[-1])).astype(np.float32)
    gc._core._set_panel_gemm(True)
    y1, g1, r1, dx1 = _run_once(m, x, g)
    gc._core._set_panel_gemm(False)
    y2, g2, r2, dx2 = _run_once(m, x, g)
    assert_close("y", y1, y2, 1e-5)
    assert_close("dx", dx1, dx2, 1e-4)
    gscale = max(float(np.max(np.abs(v))) for v in g2.values())
    for k in g1:
        assert_close(k, g1[k], g2[k], 1e-4, floor=1e-3 * gscale)
    np.testing.assert_allclose(r1.activation_grad_norms, r2.activation_grad_norms, rtol=1e-4)
    np.testing.assert_allclose(r1.weight_grad_norms, r2.weight_grad_norms, rtol=1e-4)
    # and the panel results against the float64 reference
    y_ref, _ = ref.mlp_forward(ref_params(m), x.astype(np.float64), activation=kw["activation"],
                               norm=kw.get("norm"), residual=list(m.residual))
    assert_close("y vs reference", y1, y_ref, 1e-3)


def test_panel_gemm_is_bitwise_across_threads(restore_panel, restore_threads):
    gc._core._set_panel_gemm(True)
    runs = []
    for n in (1, 2, 3):
        gc.set_num_threads(n)
        runs.append(_run_big("batch", True))
    for r in runs[1:]:
        assert np.array_equal(r[0], runs[0][0]) and np.array_equal(r[3], runs[0][3])
        for k in r[1]:
            assert np.array_equal(r[1][k], runs[0][1][k]), k
        assert np.array_equal(r[2].activation_grad_norms, runs[0][2].activation_grad_norms)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", gc.available_isas())
def test_panel_products_of_both_dtypes(dtype, isa, restore_panel, restore_isa, restore_threads):
    """Issue 13: float64 layer products take the panel GEMM too with AVX-512 (its 12-row tile),
    the forward's W^T is packed through register transposes (K not a multiple of the
    vector width: a scalar tail), and dW's sum of squares is taken in the tile's store.
    Every ISA, panel on or off: the reference's numbers, weight_grad_norms equal to the
    norms of the gradients, and bitwise the same for 1, 2 and 3 threads."""
    gc.set_isa(isa)
    sizes, B = [37] + [130] * 3 + [19], 131  # 12-, 6-, 4-, 2-, 1-row tiles; partial panels
    rng = np.random.default_rng(7)
    x = rng.normal(size=(B, sizes[0])).astype(dtype)
    g = rng.normal(size=(B, sizes[-1])).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    results = {}
    for panel in (True, False):
        gc._core._set_panel_gemm(panel)
        runs = []
        for n in (1, 2, 3):
            gc.set_num_threads(n)
            m = gc.MLP(sizes, activation="relu", seed=3, dtype=dtype)
            runs.append(_run_once(m, x, g))
        for r in runs[1:]:
            assert np.array_equal(r[0], runs[0][0]) and np.array_equal(r[3], runs[0][3])
            for k in r[1]:
                assert np.array_equal(r[1][k], runs[0][1][k]), k
            assert np.array_equal(r[2].weight_grad_norms, runs[0][2].weight_grad_norms)
        y, grads, rep, _dx = runs[0]
        names = [f"layers.{i}.weight" for i in range(len(sizes) - 1)]
        np.testing.assert_allclose(
            rep.weight_grad_norms,
            [np.linalg.norm(grads[k].astype(np.float64)) for k in names], rtol=1e-12)
        results[panel] = runs[0]
    (y1, g1, _r1, dx1), (y2, g2, _r2, dx2) = results[True], results[False]
    assert_close("y", y1, y2, tol)
    assert_close("dx", dx1, dx2, tol)
    for k in g1:
        assert_close(k, g1[k], g2[k], tol, floor=tol * float(np.max(np.abs(g2[k]))))
    m = gc.MLP(sizes, activation="relu", seed=3, dtype=dtype)
    y_ref, cache = ref.mlp_forward(ref_params(m), x.astype(np.float64), activation="relu")
    grads_ref, _, _ = ref.mlp_backward(cache, g.astype(np.float64))
    assert_close("y vs reference", y1, y_ref, 1e-3 if dtype == np.float32 else 1e-10)
    for k in g1:
        assert_close(k + " vs reference", g1[k], grads_ref[k], 1e-3 if dtype == np.float32
                     else 1e-10, floor=1e-6 * float(np.max(np.abs(grads_ref[k]))))
