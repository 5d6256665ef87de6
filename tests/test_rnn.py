"""The C++ RNN chain (gc.RNN) against the NumPy reference (reference.rnn_forward /
rnn_backward / rnn_loss_grads), on random configurations: every activation, init,
readout or not, bias or not, h0 given or not, both dtypes, both loss placements.
Tolerances: float64 1e-10, float32 2e-4, scaled by the magnitude of the reference
tensor (or, for tensors that can be ~0 by construction, of the largest gradient).

Also: the exact norm decay of a linear orthogonal RNN (no reference needed),
batch_first, accumulate, repeated backward, every ISA, thread-count invariance,
non-finite detection, clipping, state-dict names and torch.nn.RNN interchange,
save/load, init statistics, the adding problem and the report's summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gradchain as gc
from conftest import assert_close, ref
from gradchain.activations import SPECS

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}

ACT_VARIANTS = [
    ("identity", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}),
    ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {}), ("elu", {"alpha": 0.5}), ("selu", {}), ("gelu", {}), ("gelu_tanh", {}),
    ("softplus", {}), ("softplus", {"beta": 2.0, "threshold": 1.5}), ("silu", {}),
    ("hardtanh", {}), ("hardtanh", {"min_val": -0.5, "max_val": 2.0}), ("mish", {}),
]
assert {a for a, _ in ACT_VARIANTS} == set(gc.ACTIVATIONS)

HH_INITS = ["orthogonal", "identity", "torch_default", gc.init.normal(sigma_w=1.0, sigma_b=0.3),
            gc.init.normal(sigma_w=0.6, sigma_b=0.0), "xavier_uniform", "xavier_normal",
            "kaiming_uniform", "kaiming_normal", "lecun_normal", gc.init.orthogonal(gain=0.8)]
IH_INITS = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
            "lecun_normal", "orthogonal", "torch_default", "identity",
            gc.init.normal(sigma_w=1.0, sigma_b=0.2)]

REPORT_NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
                "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
                "h0_grad_norm", "global_norm")
NORM_OF = {"weight_ih_l0": "weight_ih_grad_norm", "weight_hh_l0": "weight_hh_grad_norm",
           "bias_ih_l0": "bias_ih_grad_norm", "bias_hh_l0": "bias_hh_grad_norm",
           "readout.weight": "readout_weight_grad_norm", "readout.bias": "readout_bias_grad_norm"}


def kinks(name: str, params: dict) -> list[float]:
    """Where the activation (or its derivative) jumps: a float32 pre-activation this
    close may take the other branch than the float64 reference."""
    spec = SPECS[name]
    return spec.kink_points({**spec.params, **params})


def kink_margin(cache: dict, name: str, params: dict) -> float:
    zs = np.asarray(cache["zs"])
    m = math.inf
    for k in kinks(name, params):
        m = min(m, float(np.min(np.abs(zs - k))))
    return m


class NearKink(Exception):
    """A float32 pre-activation sits within rounding of a kink: the example is skipped."""


class IllConditioned(Exception):
    """The float32 forward pass is chaotic (rounding grows along time): skipped."""


def ref_params(m: gc.RNN) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in m.state_dict().items()}


def build(cfg) -> gc.RNN:
    name, params = cfg["act"]
    return gc.RNN(cfg["I"], cfg["H"], activation=gc.Activation(name, **params),
                  init=cfg["init"], input_init=cfg["input_init"], bias=cfg["bias"],
                  output_size=cfg["K"], dtype=cfg["dtype"], seed=cfg["seed"])


@st.composite
def configs(draw, dtype=None, small=False):
    K = draw(st.one_of(st.none(), st.integers(1, 8)))
    return {
        "T": draw(st.integers(1, 12 if small else 40)),
        "B": draw(st.integers(1, 16)),
        "I": draw(st.integers(1, 16 if small else 48)),
        "H": draw(st.integers(1, 16 if small else 48)),
        "K": K,
        "act": draw(st.sampled_from(ACT_VARIANTS)),
        "bias": draw(st.booleans()),
        "h0": draw(st.booleans()),
        "init": draw(st.sampled_from(HH_INITS)),
        "input_init": draw(st.sampled_from(IH_INITS)),
        # which upstream gradients: hs only, ys only (readout), or both
        "grads": draw(st.sampled_from(["hs", "ys", "both"] if K else ["hs"])),
        "dtype": np.dtype(dtype) if dtype is not None else draw(
            st.sampled_from([np.dtype(np.float64), np.dtype(np.float32)])),
        "seed": draw(st.integers(0, 2**16)),
    }


def chaos_factor(params: dict, x: np.ndarray, h0, act: str, act_params: dict) -> float:
    """How much a relative 1e-7 perturbation of the parameters grows through the forward
    pass (float64): float32 rounding grows the same way."""
    hs, _ = ref.rnn_forward(params, x, h0, activation=act, act_params=act_params)
    rng = np.random.default_rng(0)
    pert = {k: v * (1 + 1e-7 * rng.standard_normal(v.shape)) for k, v in params.items()}
    hs2, _ = ref.rnn_forward(pert, x, h0, activation=act, act_params=act_params)
    scale = max(float(np.max(np.abs(hs))), 1e-300)
    return float(np.max(np.abs(hs2 - hs))) / scale / 1e-7


def f64(a):
    return None if a is None else a.astype(np.float64)


def sw(a):
    """Time-major <-> batch-first."""
    return None if a is None else np.swapaxes(a, 0, 1)


def check_given(cfg):
    try:
        check_against_reference(cfg)
    except (NearKink, IllConditioned):
        assume(False)


def check_against_reference(cfg, *, margin=1e-4):
    """One forward/backward on core and reference; compare every number."""
    dt = cfg["dtype"]
    tol = TOL[dt]
    T, B, I_, H, K = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["K"]
    rng = np.random.default_rng(cfg["seed"])
    m = build(cfg)
    x = rng.normal(size=(T, B, I_)).astype(dt)
    h0 = rng.normal(size=(B, H)).astype(dt) if cfg["h0"] else None
    gh = rng.normal(size=(T, B, H)).astype(dt) if cfg["grads"] in ("hs", "both") else None
    gy = rng.normal(size=(T, B, K)).astype(dt) if cfg["grads"] in ("ys", "both") else None
    params = ref_params(m)
    name, act_params = cfg["act"]
    hs_r, cache = ref.rnn_forward(params, f64(x), f64(h0), activation=name,
                                  act_params=act_params)
    if dt == np.float32:
        if kink_margin(cache, name, act_params) <= margin:
            raise NearKink
        if chaos_factor(params, f64(x), f64(h0), name, act_params) > 50:
            raise IllConditioned
    grads_r, dx_r, dh0_r, rep_r = ref.rnn_backward(cache, f64(gh), f64(gy))

    hs = m.forward(x, h0)
    rep = m.backward(gh, gy)
    assert hs.dtype == dt and hs.shape == (T, B, H)
    assert_close("hs", hs, hs_r, tol)
    if K:
        assert m.outputs.dtype == dt and m.outputs.shape == (T, B, K)
        assert_close("ys", m.outputs, cache["ys"], tol)
    else:
        assert m.outputs is None
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    ours = dict(m.named_grads())
    assert set(ours) == set(grads_r)
    gfloor = (1e-3 if dt == np.float64 else 1e-2) * gscale
    for k, v in grads_r.items():
        assert ours[k].dtype == dt
        assert_close(k, ours[k], v, tol, floor=gfloor)
    # dL/dx, dL/dh0 and dL/dh_t: scaled by the largest backpropagated signal
    tscale = float(np.max(rep_r["timestep_grad_norms"]))
    wmax = max(float(np.max(np.abs(params["weight_ih_l0"]))), 1e-3)
    assert m.input_grad.shape == (T, B, I_) and m.input_grad.dtype == dt
    assert_close("dL/dx", m.input_grad, dx_r, tol,
                 floor=1e-2 * wmax * tscale / math.sqrt(B * H))
    assert m.h0_grad.shape == (B, H) and m.h0_grad.dtype == dt
    assert np.array_equal(rep.h0_grad, m.h0_grad)
    assert_close("dL/dh0", m.h0_grad, dh0_r, tol, floor=1e-2 * tscale / math.sqrt(B * H))
    assert rep.timestep_grad_norms.shape == (T,) and rep.steps == T
    assert_close("timestep_grad_norms", rep.timestep_grad_norms,
                 rep_r["timestep_grad_norms"], tol, floor=1e-2 * tscale)
    nscale = max(rep_r[k] for k in REPORT_NORMS)
    for k in REPORT_NORMS:
        assert_close(k, getattr(rep, k), rep_r[k], tol, floor=1e-2 * nscale)
    assert math.isclose(rep.global_norm, rep_r["global_norm"], rel_tol=tol)
    assert rep.first_nonfinite is None and rep_r["first_nonfinite"] is None
    assert rep.forward_first_nonfinite is None
    # the report describes the stored gradients exactly (float64 norms of them)
    for k, g in m.named_grads():
        assert math.isclose(getattr(rep, NORM_OF[k]), ref.frobenius_norm(g), rel_tol=1e-12,
                            abs_tol=1e-300), k
    assert math.isclose(rep.global_norm, ref.global_norm(m.grads()), rel_tol=1e-12)
    absent = set(NORM_OF) - set(ours)
    for k in absent:
        assert getattr(rep, NORM_OF[k]) == 0.0, k
    return m, rep


@given(configs(dtype=np.float64))
def test_float64_matches_reference(cfg):
    check_given(cfg)


@given(configs(dtype=np.float32))
def test_float32_matches_reference(cfg):
    check_given(cfg)


@settings(max_examples=60)
@given(configs(dtype=np.float32, small=True))
def test_float32_small_matches_reference(cfg):
    check_given(cfg)


def test_the_float32_filters_keep_most_examples():
    """The kink and conditioning filters skip a minority of the float32 examples (so
    the float32 property tests above test something)."""
    kept = 0
    n = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        name, params = ACT_VARIANTS[seed % len(ACT_VARIANTS)]
        cfg = {"T": int(rng.integers(1, 41)), "B": int(rng.integers(1, 17)),
               "I": int(rng.integers(1, 49)), "H": int(rng.integers(1, 49)), "K": 3,
               "act": (name, params), "bias": True, "h0": bool(seed % 2),
               "init": HH_INITS[seed % len(HH_INITS)], "input_init": "xavier_uniform",
               "grads": "both", "dtype": np.dtype(np.float32), "seed": seed}
        n += 1
        try:
            check_against_reference(cfg)
            kept += 1
        except (NearKink, IllConditioned):
            pass
    assert kept >= n // 2, (kept, n)


def _fixed(T, B, I_, H, K, act=("tanh", {}), dtype=np.float64, **kw):
    cfg = {"T": T, "B": B, "I": I_, "H": H, "K": K, "act": act, "bias": True, "h0": True,
           "init": "orthogonal", "input_init": "xavier_uniform",
           "grads": "both" if K else "hs", "dtype": np.dtype(dtype), "seed": 7}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("B", [17, 32, 33, 47, 64, 70])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_multi_block_batches_match_reference(B, dtype):
    """Batches split into several row blocks of the time loops (8 rows up to B = 16,
    16 above), uneven last blocks included."""
    check_against_reference(_fixed(9, B, 13, 37, 4, dtype=dtype))
    check_against_reference(_fixed(5, B, 40, 24, None, act=("sigmoid", {}), dtype=dtype,
                                   bias=False, h0=False, init="kaiming_normal"))


@pytest.mark.parametrize("H", [3, 20, 64, 100, 128, 256])
@pytest.mark.parametrize("B", [1, 7, 16, 30, 33])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_panel_step_kernel_matches_reference(H, B, dtype, restore_isa):
    """Hidden sizes up to 512 run the per-step products through gradchain's own panel
    kernel (W_hh packed once per pass): partial panels (H not a multiple of the panel
    width of any ISA), row tiles of 6, 4, 2 and 1 (blocks of 1, 7, 8, 14 and 16 rows),
    every ISA."""
    for isa in gc.available_isas():
        gc.set_isa(isa)
        check_against_reference(_fixed(6, B, 5, H, 3, dtype=dtype))
        act = ("relu", {}) if dtype == np.float64 else ("silu", {})  # float32: no kinks
        check_against_reference(_fixed(4, B, 9, H, None, act=act, dtype=dtype,
                                       init="identity", input_init="kaiming_normal"))


@pytest.mark.parametrize("H", [512, 513])
def test_panel_and_openblas_step_paths_match_reference(H):
    """H = 512 is the largest panel-kernel size; 513 runs OpenBLAS on the plain matrix."""
    check_against_reference(_fixed(3, 5, 4, H, 2, init=gc.init.orthogonal(gain=0.9)))


@pytest.mark.parametrize("H", [37, 256])
def test_panel_steps_bitwise_across_threads_and_row_blocks(H, restore_threads):
    """Each element of a step's product is the k-ordered sum whatever the row tile, so
    the hidden states of a batch do not depend on the thread count, and row b of a
    batch equals the same sample run alone."""
    m = gc.RNN(5, H, seed=2)
    x = np.random.default_rng(0).normal(size=(6, 33, 5)).astype(np.float32)
    gc.set_num_threads(1)
    h1 = m.forward(x)
    gc.set_num_threads(2)
    h2 = m.forward(x)
    assert np.array_equal(h1, h2)
    for b in (0, 7, 16, 32):
        assert np.array_equal(m.forward(x[:, b:b + 1]), h1[:, b:b + 1]), b


@pytest.mark.parametrize("name,params", ACT_VARIANTS)
def test_every_activation_multi_block_float64(name, params):
    check_against_reference(_fixed(6, 35, 7, 19, 3, act=(name, params),
                                   init=gc.init.normal(sigma_w=1.1, sigma_b=0.2)))
    check_against_reference(_fixed(3, 9, 4, 5, None, act=(name, params), bias=False,
                                   h0=False, init="identity"))


@pytest.mark.parametrize("init", HH_INITS, ids=str)
@pytest.mark.parametrize("input_init", ["xavier_uniform", "kaiming_normal", "torch_default",
                                        "orthogonal", "identity"])
def test_every_init_float64(init, input_init):
    check_against_reference(_fixed(8, 5, 6, 11, 2, init=init, input_init=input_init))


# ------------------------------------------------------------------------ losses
@st.composite
def loss_configs(draw):
    cfg = draw(configs(dtype=draw(st.sampled_from([np.float64, np.float32])), small=True))
    cfg["loss"] = draw(st.sampled_from(["mse", "cross_entropy"]))
    cfg["on"] = draw(st.sampled_from(["last", "all"]))
    return cfg


def _target(rng, loss, on, T, B, F, dtype):
    if loss == "mse":
        shape = (B, F) if on == "last" else (T, B, F)
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, F, size=(B,) if on == "last" else (T, B))


def check_loss(cfg, margin=1e-4):
    dt = cfg["dtype"]
    tol = TOL[dt]
    T, B, I_, H, K = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["K"]
    name, act_params = cfg["act"]
    rng = np.random.default_rng(cfg["seed"])
    m = build(cfg)
    x = rng.normal(size=(T, B, I_)).astype(dt)
    h0 = rng.normal(size=(B, H)).astype(dt) if cfg["h0"] else None
    F = K or H
    t = _target(rng, cfg["loss"], cfg["on"], T, B, F, dt)
    params = ref_params(m)
    _, cache = ref.rnn_forward(params, x.astype(np.float64),
                               None if h0 is None else h0.astype(np.float64),
                               activation=name, act_params=act_params)
    if dt == np.float32 and kink_margin(cache, name, act_params) <= margin:
        raise NearKink
    if dt == np.float32 and chaos_factor(params, x.astype(np.float64), None if h0 is None
                                         else h0.astype(np.float64), name, act_params) > 50:
        raise IllConditioned
    outputs = cache["ys"] if K else cache["hs"]
    t64 = t.astype(np.float64) if cfg["loss"] == "mse" else t
    value_r, g = ref.rnn_loss_grads(outputs, t64, cfg["loss"], on=cfg["on"])
    if K:
        grads_r, dx_r, dh0_r, rep_r = ref.rnn_backward(cache, grad_ys=g)
    else:
        grads_r, dx_r, dh0_r, rep_r = ref.rnn_backward(cache, grad_hs=g)
    value, rep = m.loss_and_grad(x, t, loss=cfg["loss"], on=cfg["on"], h0=h0)
    assert isinstance(value, float) and rep.loss == value
    assert math.isclose(value, value_r, rel_tol=10 * tol, abs_tol=10 * tol * abs(value_r))
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    for k, v in grads_r.items():
        assert_close(k, m._grads[k], v, 10 * tol, floor=1e-2 * gscale)
    tscale = float(np.max(rep_r["timestep_grad_norms"]))
    assert_close("timestep_grad_norms", rep.timestep_grad_norms, rep_r["timestep_grad_norms"],
                 10 * tol, floor=1e-2 * tscale)
    assert_close("dL/dh0", m.h0_grad, dh0_r, 10 * tol, floor=1e-2 * tscale / math.sqrt(B * H))
    if tscale > 0:
        assert math.isclose(rep.global_norm, rep_r["global_norm"], rel_tol=10 * tol)
    if cfg["on"] == "last":  # no loss before step T: the direct gradient is zero there
        ts = rep.timestep_grad_norms
        assert ts[-1] > 0 or value == 0.0
    return m, rep


@given(loss_configs())
def test_loss_and_grad_matches_reference(cfg):
    try:
        check_loss(cfg)
    except (NearKink, IllConditioned):
        assume(False)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("on", ["last", "all"])
@pytest.mark.parametrize("K", [None, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_placements_fixed(loss, on, K, dtype):
    cfg = _fixed(11, 37, 6, 17, K, dtype=dtype)
    cfg.update(loss=loss, on=on)
    check_loss(cfg)


def test_loss_on_last_step_touches_only_the_last_direct_gradient():
    """on='last': dL/dh_T is the loss's gradient at T alone (the recurrence adds nothing
    after T), so ||dL/dh_T|| is the norm of the mse gradient at step T."""
    m = gc.RNN(3, 6, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4, 3))
    t = rng.normal(size=(4, 6))
    value, rep = m.loss_and_grad(x, t, loss="mse", on="last")
    hs = m.forward(x)
    direct = 2.0 * (hs[-1] - t) / t.size
    assert math.isclose(value, float(np.mean((hs[-1] - t) ** 2)), rel_tol=1e-14)
    assert math.isclose(rep.timestep_grad_norms[-1], np.linalg.norm(direct), rel_tol=1e-13)


# ------------------------------------------------------------ the exact decay check
@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.1])
@pytest.mark.parametrize("readout", [False, True])
def test_linear_orthogonal_rnn_decays_exactly_as_rho_power(rho, readout):
    """Identity activation, W_hh = rho * Q (Q orthogonal), loss on step T only:
    dL/dh_{t-1} = dL/dh_t W_hh, and right-multiplying by rho Q scales every row norm by
    rho, so ||dL/dh_t|| = rho^(T-t) ||dL/dh_T|| exactly (to rounding)."""
    T, B, I_, H = 40, 21, 5, 32
    m = gc.RNN(I_, H, activation="identity", init=gc.init.orthogonal(gain=rho),
               output_size=3 if readout else None, dtype=np.float64, seed=3)
    W = m._params["weight_hh_l0"]
    np.testing.assert_allclose(W @ W.T, rho**2 * np.eye(H), atol=1e-13)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, B, I_))
    target = rng.normal(size=(B, 3 if readout else H))
    _, rep = m.loss_and_grad(x, target, loss="mse", on="last")
    ts = rep.timestep_grad_norms
    expected = ts[-1] * rho ** (T - np.arange(1, T + 1, dtype=np.float64))
    np.testing.assert_allclose(ts, expected, rtol=1e-12, atol=0)
    assert math.isclose(rep.h0_grad_norm, ts[-1] * rho**T, rel_tol=1e-12)
    assert math.isclose(np.linalg.norm(m.h0_grad), rep.h0_grad_norm, rel_tol=1e-14)
    assert math.isclose(rep.log10_slope(), math.log10(rho), rel_tol=1e-10, abs_tol=1e-12)
    assert math.isclose(rep.ratio, rho ** (T - 1), rel_tol=1e-12)


def test_linear_rnn_with_numpy_qr_and_explicit_grad_hs():
    """The same identity with W_hh set by hand (NumPy QR) and grad_hs given directly."""
    T, B, H = 25, 9, 20
    m = gc.RNN(4, H, activation="identity", dtype=np.float64, seed=0, bias=False)
    q, r = np.linalg.qr(np.random.default_rng(5).normal(size=(H, H)))
    m._params["weight_hh_l0"][...] = 0.7 * q
    x = np.random.default_rng(2).normal(size=(T, B, 4))
    m.forward(x)
    gh = np.zeros((T, B, H))
    gh[-1] = np.random.default_rng(3).normal(size=(B, H))
    rep = m.backward(gh)
    ts = rep.timestep_grad_norms
    assert math.isclose(ts[-1], np.linalg.norm(gh[-1]), rel_tol=1e-14)
    np.testing.assert_allclose(ts, ts[-1] * 0.7 ** np.arange(T - 1, -1, -1.0), rtol=1e-12)


# ------------------------------------------------------------------ batch_first etc.
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K", [None, 3])
def test_batch_first_gives_the_transposed_numbers(dtype, K):
    kw = dict(activation="tanh", init="orthogonal", output_size=K, dtype=dtype, seed=4)
    tm = gc.RNN(5, 12, **kw)
    bf = gc.RNN(5, 12, batch_first=True, **kw)
    for (k, a), (_, b) in zip(tm.named_parameters(), bf.named_parameters(), strict=True):
        assert np.array_equal(a, b), k
    rng = np.random.default_rng(0)
    T, B = 9, 19
    x = rng.normal(size=(T, B, 5)).astype(dtype)
    h0 = rng.normal(size=(B, 12)).astype(dtype)
    gh = rng.normal(size=(T, B, 12)).astype(dtype)
    gy = rng.normal(size=(T, B, K)).astype(dtype) if K else None
    hs_t = tm.forward(x, h0)
    hs_b = bf.forward(sw(x), h0)
    assert hs_b.shape == (B, T, 12)
    assert np.array_equal(hs_b, sw(hs_t))
    if K:
        assert np.array_equal(bf.outputs, sw(tm.outputs))
    rt = tm.backward(gh, gy)
    rb = bf.backward(sw(gh), sw(gy))
    assert np.array_equal(bf.input_grad, sw(tm.input_grad))
    assert np.array_equal(bf.h0_grad, tm.h0_grad)
    for (k, a), (_, b) in zip(tm.named_grads(), bf.named_grads(), strict=True):
        assert np.array_equal(a, b), k
    assert rt.to_dict() == rb.to_dict()
    # losses: on='last' takes (B, F) in both layouts, on='all' the layout's own
    F = K or 12
    tl = rng.normal(size=(B, F)).astype(dtype)
    ta = rng.normal(size=(T, B, F)).astype(dtype)
    for on, t_tm, t_bf in (("last", tl, tl), ("all", ta, sw(ta))):
        v1, r1 = tm.loss_and_grad(x, t_tm, on=on, h0=h0)
        v2, r2 = bf.loss_and_grad(sw(x), t_bf, on=on, h0=h0)
        assert v1 == v2 and r1.to_dict() == r2.to_dict()
        assert np.array_equal(bf.input_grad, sw(tm.input_grad))
    ci = rng.integers(0, F, size=(T, B))
    v1, r1 = tm.loss_and_grad(x, ci, loss="cross_entropy", on="all")
    v2, r2 = bf.loss_and_grad(sw(x), ci.T, loss="cross_entropy", on="all")
    assert v1 == v2 and r1.to_dict() == r2.to_dict()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulate_adds_and_default_overwrites(dtype):
    m = gc.RNN(4, 10, output_size=3, dtype=dtype, seed=2)
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(6, 20, 4)).astype(dtype)
    x2 = rng.normal(size=(6, 20, 4)).astype(dtype)
    gh = rng.normal(size=(6, 20, 10)).astype(dtype)
    gy = rng.normal(size=(6, 20, 3)).astype(dtype)
    m.forward(x1)
    m.backward(gh, gy)
    g1 = {k: v.copy() for k, v in m.named_grads()}
    m.forward(x2)
    m.backward(gh)  # overwrite; without grad_ys the readout gradients are zero
    g2 = {k: v.copy() for k, v in m.named_grads()}
    assert not np.any(g2["readout.weight"]) and not np.any(g2["readout.bias"])
    m.forward(x1)
    m.backward(gh, gy)
    m.forward(x2)
    rep = m.backward(gh, accumulate=True)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    for k, v in m.named_grads():
        np.testing.assert_allclose(v, g1[k] + g2[k], rtol=rtol, atol=rtol * np.abs(g1[k]).max(),
                                   err_msg=k)
    assert np.array_equal(m._grads["readout.weight"], g1["readout.weight"])
    for k, g in m.named_grads():  # the report describes the accumulated gradients
        assert math.isclose(getattr(rep, NORM_OF[k]), ref.frobenius_norm(g), rel_tol=1e-12), k
    assert math.isclose(rep.global_norm, ref.global_norm(m.grads()), rel_tol=1e-12)
    # accumulate through loss_and_grad too
    m.zero_grad()
    _, r1 = m.loss_and_grad(x1, gy[-1], on="last")
    once = {k: v.copy() for k, v in m.named_grads()}
    m.loss_and_grad(x1, gy[-1], on="last", accumulate=True)
    for k, v in m.named_grads():
        np.testing.assert_allclose(v, 2 * once[k], rtol=rtol, err_msg=k)


def test_repeated_backward_is_bitwise_identical():
    m = gc.RNN(6, 33, output_size=2, activation="relu", init="identity", dtype=np.float32,
               seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(15, 40, 6)).astype(np.float32)
    gh = rng.normal(size=(15, 40, 33)).astype(np.float32)
    gy = rng.normal(size=(15, 40, 2)).astype(np.float32)
    hs1 = m.forward(x)
    r1 = m.backward(gh, gy)
    g1 = {k: v.copy() for k, v in m.named_grads()}
    dx1, dh1 = m.input_grad.copy(), m.h0_grad.copy()
    for _ in range(2):
        r2 = m.backward(gh, gy)
        assert r2.to_dict() == r1.to_dict()
        assert np.array_equal(m.input_grad, dx1) and np.array_equal(m.h0_grad, dh1)
        for k, v in m.named_grads():
            assert np.array_equal(v, g1[k]), k
    assert np.array_equal(m.forward(x), hs1)


def test_shape_changes_replan():
    """Forward passes of changing (T, B), each followed by a backward, up and down in size
    (the core re-plans its workspace), all match the reference."""
    m = gc.RNN(5, 13, activation="silu", output_size=2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    for steps, batch in ((3, 4), (20, 70), (1, 1), (7, 33), (7, 33), (2, 17)):
        x = rng.normal(size=(steps, batch, 5))
        gy = rng.normal(size=(steps, batch, 2))
        params = ref_params(m)
        hs = m.forward(x)
        rep = m.backward(None, gy)
        hr, cache = ref.rnn_forward(params, x, activation="silu")
        grads_r, dx_r, _, rep_r = ref.rnn_backward(cache, None, gy)
        assert_close(f"hs {steps}x{batch}", hs, hr, 1e-12)
        assert_close("dx", m.input_grad, dx_r, 1e-11)
        for k, v in grads_r.items():
            assert_close(k, m._grads[k], v, 1e-11)
        assert_close("ts", rep.timestep_grad_norms, rep_r["timestep_grad_norms"], 1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_h0_none_is_zeros(dtype):
    m = gc.RNN(3, 20, output_size=2, dtype=dtype, seed=0)
    x = np.random.default_rng(0).normal(size=(6, 19, 3)).astype(dtype)
    a = m.forward(x).copy()
    ra = m.backward(np.ones_like(a)).to_dict()
    b = m.forward(x, np.zeros((19, 20), dtype))
    assert np.array_equal(a, b)
    assert m.backward(np.ones_like(a)).to_dict() == ra


@pytest.mark.parametrize("dtype,big", [(np.float32, 1e30), (np.float64, 1e200)])
def test_norms_do_not_overflow_for_finite_gradients(dtype, big):
    """Every element finite but their squares overflow the dtype (float32) or even
    float64: the report's norms are still the finite true norms."""
    m = gc.RNN(3, 40, activation="identity", init=gc.init.orthogonal(gain=0.5), output_size=2,
               dtype=dtype, seed=0)
    x = np.full((6, 33, 3), 1e-3, dtype)
    m.forward(x)
    gh = np.full((6, 33, 40), big, dtype)
    rep = m.backward(gh)
    _, cache = ref.rnn_forward(ref_params(m), x.astype(np.float64), activation="identity")
    _, _, _, rr = ref.rnn_backward(cache, gh.astype(np.float64))
    assert rep.first_nonfinite is None
    assert np.all(np.isfinite(rep.timestep_grad_norms))
    assert_close("ts", rep.timestep_grad_norms, rr["timestep_grad_norms"], TOL[np.dtype(dtype)])
    for k, g in m.named_grads():
        assert np.all(np.isfinite(g)), k
        assert math.isclose(getattr(rep, NORM_OF[k]), ref.frobenius_norm(g), rel_tol=1e-12), k
    assert math.isclose(rep.global_norm, ref.global_norm(m.grads()), rel_tol=1e-12)
    assert math.isclose(rep.h0_grad_norm, ref.frobenius_norm(m.h0_grad), rel_tol=1e-12)
    assert math.isclose(gc.clip_grad_norm(m, math.inf), rep.global_norm, rel_tol=1e-12)


# ------------------------------------------------------------------------ ISAs, threads
def _isa_configs():
    out = []
    for i, act in enumerate(ACT_VARIANTS):
        for dt in (np.float64, np.float32):
            out.append(_fixed(7, 37, 9, 21, 3 if i % 2 else None, act=act, dtype=dt,
                              init=HH_INITS[i % len(HH_INITS)], seed=i))
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
        except (NearKink, IllConditioned):
            pass
    assert checked >= len(_isa_configs()) - 6


def _run_big(dtype, B=64):
    m = gc.RNN(32, 128, activation="tanh", init="orthogonal", output_size=10, dtype=dtype,
               seed=5)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, B, 32)).astype(dtype)
    h0 = rng.normal(size=(B, 128)).astype(dtype)
    gh = rng.normal(size=(50, B, 128)).astype(dtype)
    gy = rng.normal(size=(50, B, 10)).astype(dtype)
    hs = m.forward(x, h0)
    ys = m.outputs.copy()
    rep = m.backward(gh, gy)
    grads = {k: v.copy() for k, v in m.named_grads()}
    value, rep2 = m.loss_and_grad(x, gy[-1], on="last", h0=h0)
    return (hs, ys, grads, rep.to_dict(), m.input_grad.copy(), m.h0_grad.copy(), value,
            rep2.to_dict(), {k: v.copy() for k, v in m.named_grads()})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [64, 70])
def test_thread_count_does_not_change_any_number(dtype, B, restore_threads):
    gc.set_num_threads(1)
    one = _run_big(dtype, B)
    gc.set_num_threads(2)
    assert gc.get_num_threads() == 2
    two = _run_big(dtype, B)
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                if isinstance(a[k], np.ndarray):
                    assert np.array_equal(a[k], b[k]), (i, k)
                else:
                    assert a[k] == b[k], (i, k)
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b), i
        else:
            assert a == b, i


# ---------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("act", ["tanh", "relu", "identity", "sigmoid", "hardtanh"])
@pytest.mark.parametrize("K", [None, 2])
@pytest.mark.parametrize("where", [(0, 0), (3, 1)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_inf_in_w_hh_is_reported_like_the_reference(act, K, where, with_h0):
    """h0 = 0 gives 0 * inf = NaN at step 1; a nonzero h0 gives +-inf pre-activations,
    which saturating activations (tanh, sigmoid, hardtanh) map to finite values."""
    m = gc.RNN(3, 6, activation=act, output_size=K, dtype=np.float64, seed=0)
    m._params["weight_hh_l0"][where] = np.inf
    params = ref_params(m)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5, 3))
    h0 = rng.normal(size=(5, 6)) if with_h0 else None
    gh = np.zeros((7, 5, 6))
    gh[-1] = rng.normal(size=(5, 6))
    hs = m.forward(x, h0)
    rep = m.backward(gh)
    hr, cache = ref.rnn_forward(params, x, h0, activation=act)
    _, _, _, rr = ref.rnn_backward(cache, gh)
    fwd = next((t + 1 for t in range(7) if not np.all(np.isfinite(hr[t]))), None)
    if not with_h0:
        assert fwd == 1
    assert rep.forward_first_nonfinite == fwd
    assert rep.first_nonfinite == rr["first_nonfinite"]
    assert np.array_equal(np.isfinite(hs), np.isfinite(hr))
    assert np.array_equal(np.isnan(hs), np.isnan(hr))
    finite = np.isfinite(hr)
    assert_close("finite hs", hs[finite], hr[finite], 1e-12)
    if fwd is not None or rr["first_nonfinite"] is not None:
        assert rep.verdict().startswith("non-finite")
    ts = rep.timestep_grad_norms
    np.testing.assert_array_equal(np.isfinite(ts), np.isfinite(rr["timestep_grad_norms"]))


def test_overflowing_input_is_reported_at_its_step():
    """A finite float32 x whose projection overflows at step 4: h_4 is the first inf."""
    m = gc.RNN(3, 5, activation="identity", init="identity", dtype=np.float32, seed=0)
    m._params["weight_ih_l0"][...] = 1.0
    x = np.zeros((6, 2, 3), np.float32)
    x[3, 1, :] = 3e38
    params = ref_params(m)
    hs = m.forward(x)
    rep = m.backward(np.ones_like(hs))
    hr, cache = ref.rnn_forward({k: v.astype(np.float32) for k, v in params.items()}, x,
                                activation="identity")
    _, _, _, rr = ref.rnn_backward(cache, np.ones_like(hs))
    assert not np.all(np.isfinite(hs[3])) and np.all(np.isfinite(hs[:3]))
    assert rep.forward_first_nonfinite == 4
    assert rep.first_nonfinite == rr["first_nonfinite"]  # the linear chain's dL/dh stays finite
    assert rep.first_nonfinite is None
    assert "step 4" in rep.verdict()


def test_readout_only_nonfinite_is_step_t_plus_one():
    m = gc.RNN(2, 4, output_size=3, dtype=np.float64, seed=0)
    m._params["readout.weight"][1, 2] = np.inf
    x = np.random.default_rng(0).normal(size=(5, 3, 2))
    m.forward(x)
    rep = m.backward(np.ones((5, 3, 4)))
    assert rep.forward_first_nonfinite == 6
    assert rep.first_nonfinite is None  # grad_hs only: the readout is not on the path
    rep = m.backward(None, np.ones((5, 3, 3)))
    assert rep.first_nonfinite == 5  # grad_ys W_out holds inf at every step: T first
    params = ref_params(m)
    _, cache = ref.rnn_forward(params, x)
    _, _, _, rr = ref.rnn_backward(cache, None, np.ones((5, 3, 3)))
    assert rep.first_nonfinite == rr["first_nonfinite"]


def test_finite_forward_has_no_nonfinite_marks():
    m = gc.RNN(2, 4, dtype=np.float32, seed=0)
    m.forward(np.ones((3, 2, 2), np.float32))
    rep = m.backward(np.ones((3, 2, 4), np.float32))
    assert rep.first_nonfinite is None and rep.forward_first_nonfinite is None
    assert not rep.verdict().startswith("non-finite")


# -------------------------------------------------------------------------- clipping
def _rnn_with_grads(dtype, K=3, bias=True, scale=1.0):
    m = gc.RNN(4, 9, output_size=K, bias=bias, dtype=dtype, seed=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 4)).astype(dtype)
    m.forward(x)
    gy = (scale * rng.normal(size=(8, 6, K))).astype(dtype) if K else None
    gh = (scale * rng.normal(size=(8, 6, 9))).astype(dtype)
    m.backward(gh, gy)
    return m


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e9])
def test_clip_grad_norm_matches_reference(dtype, K, max_norm):
    m = _rnn_with_grads(dtype, K)
    before = {k: v.copy() for k, v in m.named_grads()}
    total_r, clipped = ref.clip_grad_norm(before, max_norm)
    total = gc.clip_grad_norm(m, max_norm)
    assert math.isclose(total, total_r, rel_tol=1e-12)
    tol = 1e-14 if dtype == np.float64 else 1e-6
    for k, v in m.named_grads():
        assert_close(k, v, clipped[k], tol)
    if max_norm >= total:
        for k, v in m.named_grads():
            assert np.array_equal(v, before[k]), k
    else:
        assert math.isclose(ref.global_norm(m.grads()), max_norm, rel_tol=1e-5)
    assert math.isclose(gc.grad_norm(m), ref.global_norm(m.grads()), rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_value_matches_reference(dtype):
    m = _rnn_with_grads(dtype)
    before = {k: v.copy() for k, v in m.named_grads()}
    v = 0.25 * float(np.median(np.abs(before["weight_hh_l0"])))
    clipped = ref.clip_grad_value(before, v)
    gc.clip_grad_value(m, v)
    for k, g in m.named_grads():
        assert np.array_equal(g, clipped[k]), k
    assert max(float(np.max(np.abs(g))) for g in m.grads()) <= np.float32(v) * (1 + 1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_clip_grad_norm_per_layer_matches_reference(dtype, bias):
    m = _rnn_with_grads(dtype, bias=bias)
    before = {k: v.copy() for k, v in m.named_grads()}
    max_norm = float(np.median([ref.frobenius_norm(v) for v in before.values()]))
    norms_r, clipped = ref.clip_grad_norm_per_layer(before, max_norm)
    norms = gc.clip_grad_norm_per_layer(m, max_norm)
    assert list(norms) == list(before)
    for k in before:
        assert math.isclose(norms[k], norms_r[k], rel_tol=1e-12), k
    tol = 1e-14 if dtype == np.float64 else 1e-6
    for k, g in m.named_grads():
        assert_close(k, g, clipped[k], tol)
        assert ref.frobenius_norm(g) <= max_norm * (1 + 1e-5), k


def test_clip_grad_norm_nonfinite_as_torch():
    m = _rnn_with_grads(np.float64)
    m._grads["weight_hh_l0"][0, 0] = np.inf
    with pytest.raises(RuntimeError):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)
    assert m._grads["weight_hh_l0"][0, 0] == np.inf  # the error leaves the gradients alone
    before = {k: v.copy() for k, v in m.named_grads()}
    total_r, clipped = ref.clip_grad_norm(before, 1.0)
    total = gc.clip_grad_norm(m, 1.0)
    assert total == total_r == math.inf
    for k, g in m.named_grads():
        np.testing.assert_array_equal(g, clipped[k], err_msg=k)


def test_clipping_an_exploding_rnn_bounds_the_update():
    """The demo's use: a relu IRNN with W_hh = 1.2 I explodes; after clip_grad_norm the
    total gradient norm is max_norm."""
    m = gc.RNN(2, 16, activation="relu", init=gc.init.identity(gain=1.2), dtype=np.float32,
               seed=0)
    x, y = gc.tasks.adding_problem(60, 32, seed=0)
    m.forward(x)
    rep = m.backward(np.ones((60, 32, 16), np.float32))
    assert rep.ratio > 1e2 and rep.verdict().startswith("exploding")
    total = gc.clip_grad_norm(m, 1.0)
    assert math.isclose(total, rep.global_norm, rel_tol=1e-12)
    assert math.isclose(ref.global_norm(m.grads()), 1.0, rel_tol=1e-4)


# ------------------------------------------------------------ state dict and torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("K", [None, 4])
def test_state_dict_names_are_torch_rnn_names(bias, K):
    m = gc.RNN(3, 7, bias=bias, output_size=K, seed=0)
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if bias else [])
    if K:
        names += ["readout.weight"] + (["readout.bias"] if bias else [])
    sd = m.state_dict()
    assert list(sd) == names
    assert [k for k, _ in m.named_parameters()] == names
    assert [k for k, _ in m.named_grads()] == names
    shapes = {"weight_ih_l0": (7, 3), "weight_hh_l0": (7, 7), "bias_ih_l0": (7,),
              "bias_hh_l0": (7,), "readout.weight": (K, 7), "readout.bias": (K,)}
    for k, v in sd.items():
        assert v.shape == shapes[k] and v.dtype == np.float32
    # state_dict arrays are views of the model's memory (as torch's share storage)
    sd["weight_hh_l0"][0, 0] = 42.0
    assert m._params["weight_hh_l0"][0, 0] == 42.0
    assert m.num_parameters() == sum(v.size for v in sd.values())


def _torch_pair(nonlinearity, bias, K, batch_first=False, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(5, 8, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                       dtype=torch.float64)
    lin = torch.nn.Linear(8, K, bias=bias, dtype=torch.float64) if K else None
    return torch, rnn, lin


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("batch_first", [False, True])
def test_ours_loaded_into_torch_rnn_agrees(nonlinearity, bias, K, batch_first):
    torch, rnn, lin = _torch_pair(nonlinearity, bias, K, batch_first)
    m = gc.RNN(5, 8, activation=nonlinearity, init="orthogonal", bias=bias, output_size=K,
               dtype=np.float64, seed=11, batch_first=batch_first)
    sd = m.state_dict()
    rnn.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()
                         if not k.startswith("readout.")})
    if K:
        lin.load_state_dict({k[len("readout."):]: torch.from_numpy(v.copy())
                             for k, v in sd.items() if k.startswith("readout.")})
    rng = np.random.default_rng(3)
    T, B = 12, 6
    shape = (B, T) if batch_first else (T, B)
    x = rng.normal(size=(*shape, 5))
    h0 = rng.normal(size=(B, 8))
    gh = rng.normal(size=(*shape, 8))
    gy = rng.normal(size=(*shape, K)) if K else None
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, hn = rnn(xt, h0t)
    loss = (out * torch.from_numpy(gh)).sum()
    if K:
        yt = lin(out)
        loss = loss + (yt * torch.from_numpy(gy)).sum()
    loss.backward()
    hs = m.forward(x, h0)
    m.backward(gh, gy)
    assert_close("hs", hs, out.detach().numpy(), 1e-12)
    last = hs[:, -1] if batch_first else hs[-1]
    assert_close("h_n", last, hn.detach().numpy()[0], 1e-12)
    if K:
        assert_close("ys", m.outputs, yt.detach().numpy(), 1e-12)
    grads = dict(m.named_grads())
    for k, p in rnn.named_parameters():
        assert_close(k, grads[k], p.grad.numpy(), 1e-11)
    if K:
        for k, p in lin.named_parameters():
            assert_close("readout." + k, grads["readout." + k], p.grad.numpy(), 1e-11)
    assert_close("dL/dx", m.input_grad, xt.grad.numpy(), 1e-11)
    assert_close("dL/dh0", m.h0_grad, h0t.grad.numpy()[0], 1e-11)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("on", ["last", "all"])
def test_torch_state_dict_loaded_into_ours_agrees(nonlinearity, loss, on):
    torch, rnn, lin = _torch_pair(nonlinearity, True, 4, seed=1)
    sd = dict(rnn.state_dict())
    sd.update({"readout." + k: v for k, v in lin.state_dict().items()})
    m = gc.RNN(5, 8, activation=nonlinearity, output_size=4, dtype=np.float64, seed=0)
    res = m.load_state_dict(sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in sd.items():
        assert np.array_equal(m.state_dict()[k], v.numpy()), k
    rng = np.random.default_rng(0)
    T, B = 10, 7
    x = rng.normal(size=(T, B, 5))
    if loss == "mse":
        t = rng.normal(size=(B, 4) if on == "last" else (T, B, 4))
    else:
        t = rng.integers(0, 4, size=(B,) if on == "last" else (T, B))
    value, rep = m.loss_and_grad(x, t, loss=loss, on=on)
    xt = torch.tensor(x, requires_grad=True)
    out, _ = rnn(xt)
    y = lin(out)
    if on == "last":
        y = y[-1]
    tt = torch.from_numpy(t)
    if loss == "mse":
        lt = torch.nn.functional.mse_loss(y, tt)
    else:
        lt = torch.nn.functional.cross_entropy(y.reshape(-1, 4), tt.reshape(-1))
    lt.backward()
    assert math.isclose(value, lt.item(), rel_tol=1e-12)
    grads = dict(m.named_grads())
    for k, p in rnn.named_parameters():
        assert_close(k, grads[k], p.grad.numpy(), 1e-11)
    for k, p in lin.named_parameters():
        assert_close("readout." + k, grads["readout." + k], p.grad.numpy(), 1e-11)
    assert_close("dL/dx", m.input_grad, xt.grad.numpy(), 1e-11)
    total = torch.nn.utils.clip_grad_norm_(list(rnn.parameters()) + list(lin.parameters()),
                                           1e9)
    assert math.isclose(rep.global_norm, float(total), rel_tol=1e-12)


def test_torch_default_init_matches_torch_rnn_bounds():
    torch = pytest.importorskip("torch")
    H = 64
    m = gc.RNN(10, H, init="torch_default", input_init="torch_default", output_size=5, seed=0)
    t = torch.nn.RNN(10, H)
    bound = 1.0 / math.sqrt(H)
    for (k, v), (tk, tv) in zip(list(m.state_dict().items())[:4], t.state_dict().items(),
                                strict=True):
        assert k == tk and v.shape == tuple(tv.shape)
        assert np.max(np.abs(v)) <= bound and float(tv.abs().max()) <= bound
        assert np.max(np.abs(v)) > 0.8 * bound  # spread over the whole interval


# ------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [None, 3])
def test_save_load_round_trip(tmp_path, dtype, K):
    m = gc.RNN(4, 9, activation=gc.Activation("leaky_relu", negative_slope=0.2),
               init=gc.init.normal(sigma_w=1.2, sigma_b=0.1), input_init="kaiming_normal",
               bias=K is None, output_size=K, dtype=dtype, seed=8, batch_first=K is not None)
    path = tmp_path / "rnn.npz"
    gc.save(m, path)
    m2 = gc.load(path)
    assert isinstance(m2, gc.RNN)
    assert m2.config() == m.config()
    assert m2.dtype == np.dtype(dtype) and m2.output_size == K and m2.bias == (K is None)
    assert m2.batch_first == (K is not None)
    assert m2.activation == m.activation and m2.init == m.init
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and np.array_equal(sd[k], sd2[k]), k
    x = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(dtype)
    assert np.array_equal(m.forward(x), m2.forward(x))
    g = np.ones((6, 5, 9), dtype)
    assert m.backward(g).to_dict() == m2.backward(g).to_dict()


# ------------------------------------------------------------------- init statistics
def test_torch_default_init_bounds_all_parameters():
    H = 200
    m = gc.RNN(30, H, init="torch_default", input_init="torch_default", output_size=7,
               dtype=np.float64, seed=1)
    bound = 1.0 / math.sqrt(H)
    for k, v in m.named_parameters():
        assert np.all(np.abs(v) <= bound), k
    for k in ("weight_ih_l0", "weight_hh_l0"):
        v = m._params[k]
        assert abs(np.std(v) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3), k
        assert abs(np.mean(v)) < 0.05 * bound
    for k in ("bias_ih_l0", "bias_hh_l0", "readout.weight", "readout.bias"):
        assert np.max(np.abs(m._params[k])) > 0.5 * bound, k  # biases are drawn, not zero


@pytest.mark.parametrize("sigma_w,sigma_b", [(1.5, 0.05), (0.9, 0.5), (1.0, 0.0)])
def test_normal_init_statistics(sigma_w, sigma_b):
    H = 400
    m = gc.RNN(20, H, init=gc.init.normal(sigma_w=sigma_w, sigma_b=sigma_b), dtype=np.float64,
               seed=2)
    W = m._params["weight_hh_l0"]
    assert abs(np.std(W) / (sigma_w / math.sqrt(H)) - 1) < 0.02
    assert abs(np.mean(W)) < 0.02 * sigma_w / math.sqrt(H) * 5
    b = m._params["bias_hh_l0"]
    if sigma_b == 0:
        assert not np.any(b)
    else:
        assert abs(np.std(b) / sigma_b - 1) < 0.15
    assert not np.any(m._params["bias_ih_l0"])
    # xavier_uniform default for W_ih (H, I)
    a = math.sqrt(6.0 / (20 + H))
    assert np.max(np.abs(m._params["weight_ih_l0"])) <= a
    assert abs(np.std(m._params["weight_ih_l0"]) / (a / math.sqrt(3)) - 1) < 0.05


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_and_orthogonal_init(dtype):
    H = 48
    m = gc.RNN(5, H, activation="relu", init="identity", dtype=dtype, seed=0)
    assert np.array_equal(m._params["weight_hh_l0"], np.eye(H, dtype=dtype))
    assert not np.any(m._params["bias_hh_l0"]) and not np.any(m._params["bias_ih_l0"])
    m = gc.RNN(5, H, init=gc.init.identity(gain=0.5), dtype=dtype, seed=0)
    assert np.array_equal(m._params["weight_hh_l0"], 0.5 * np.eye(H, dtype=dtype))
    atol = 1e-12 if dtype == np.float64 else 1e-5
    for gain in (1.0, 1.3):
        m = gc.RNN(5, H, init=gc.init.orthogonal(gain=gain), dtype=dtype, seed=3)
        W = m._params["weight_hh_l0"].astype(np.float64)
        np.testing.assert_allclose(W @ W.T, gain**2 * np.eye(H), atol=atol)
        np.testing.assert_allclose(W.T @ W, gain**2 * np.eye(H), atol=atol)
    m2 = gc.RNN(5, H, init="orthogonal", dtype=dtype, seed=4)
    assert not np.array_equal(m2._params["weight_hh_l0"], m._params["weight_hh_l0"])


@pytest.mark.parametrize("act,gain", [("tanh", 5 / 3), ("relu", math.sqrt(2)),
                                      ("identity", 1.0), ("selu", 0.75), ("sigmoid", 1.0),
                                      ("gelu", math.sqrt(2))])
def test_kaiming_and_xavier_and_lecun_statistics(act, gain):
    H, I_ = 300, 40
    m = gc.RNN(I_, H, activation=act, init="kaiming_normal", input_init="lecun_normal",
               dtype=np.float64, seed=5)
    assert abs(np.std(m._params["weight_hh_l0"]) / (gain / math.sqrt(H)) - 1) < 0.02
    assert abs(np.std(m._params["weight_ih_l0"]) / (1 / math.sqrt(I_)) - 1) < 0.03
    m = gc.RNN(I_, H, activation=act, init="kaiming_uniform", input_init="xavier_normal",
               dtype=np.float64, seed=6)
    bound = gain * math.sqrt(3.0 / H)
    W = m._params["weight_hh_l0"]
    assert np.max(np.abs(W)) <= bound and np.max(np.abs(W)) > 0.99 * bound
    assert abs(np.std(m._params["weight_ih_l0"]) / math.sqrt(2.0 / (I_ + H)) - 1) < 0.03
    m = gc.RNN(I_, H, activation=act, init="xavier_uniform", dtype=np.float64, seed=7)
    a = math.sqrt(6.0 / (2 * H))
    assert np.max(np.abs(m._params["weight_hh_l0"])) <= a


def test_seed_reproducibility_and_reset():
    a = gc.RNN(3, 8, output_size=2, init="orthogonal", seed=9)
    b = gc.RNN(3, 8, output_size=2, init="orthogonal", seed=9)
    c = gc.RNN(3, 8, output_size=2, init="orthogonal", seed=10)
    for k, v in a.named_parameters():
        assert np.array_equal(v, b._params[k]), k
    assert not np.array_equal(a._params["weight_hh_l0"], c._params["weight_hh_l0"])
    before = {k: v.copy() for k, v in a.named_parameters()}
    a.reset_parameters(10)
    for k, v in a.named_parameters():
        assert np.array_equal(v, c._params[k]), k
    a.reset_parameters(9)
    for k, v in a.named_parameters():
        assert np.array_equal(v, before[k]), k
    # reset_parameters forgets the forward pass (the weights changed under it)
    a.forward(np.ones((2, 1, 3), np.float32))
    a.reset_parameters(1)
    with pytest.raises(gc.StateError):
        a.backward(np.ones((2, 1, 8), np.float32))


# ------------------------------------------------------------------- adding problem
@pytest.mark.parametrize("T,n", [(2, 1), (5, 7), (50, 64), (101, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adding_problem(T, n, dtype):
    x, y = gc.tasks.adding_problem(T, n, seed=3, dtype=dtype)
    assert x.shape == (T, n, 2) and y.shape == (n, 1)
    assert x.dtype == np.dtype(dtype) and y.dtype == np.dtype(dtype)
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(markers).tolist()) <= {0.0, 1.0}
    assert np.all(markers.sum(axis=0) == 2)
    half = T // 2
    assert np.all(markers[:half].sum(axis=0) == 1)
    assert np.all(markers[half:].sum(axis=0) == 1)
    marked = (values.astype(np.float64) * markers).sum(axis=0)
    rtol = 1e-15 if dtype == np.float64 else 1e-7
    np.testing.assert_allclose(y[:, 0], marked, rtol=rtol)
    x2, y2 = gc.tasks.adding_problem(T, n, seed=3, dtype=dtype)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = gc.tasks.adding_problem(T, n, seed=4, dtype=dtype)
    assert not np.array_equal(x, x3)
    # usable as is by an RNN with a readout of size 1
    m = gc.RNN(2, 6, output_size=1, dtype=dtype, seed=0)
    value, rep = m.loss_and_grad(x, y, loss="mse", on="last")
    assert math.isfinite(value) and rep.steps == T


def test_adding_problem_statistics():
    x, y = gc.tasks.adding_problem(40, 4000, seed=0, dtype=np.float64)
    assert abs(np.mean(y) - 1.0) < 0.03  # the sum of two U(0, 1)
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.02  # the baseline MSE
    first = np.argmax(x[:20, :, 1], axis=0)
    second = 20 + np.argmax(x[20:, :, 1], axis=0)
    assert first.min() == 0 and first.max() == 19 and second.min() == 20 and second.max() == 39


# -------------------------------------------------------------------------- the report
def _linear_report(rho, T=30, B=5, H=12):
    m = gc.RNN(3, H, activation="identity", init=gc.init.orthogonal(gain=rho),
               dtype=np.float64, seed=0)
    x = np.random.default_rng(0).normal(size=(T, B, 3))
    _, rep = m.loss_and_grad(x, np.zeros((B, H)), on="last")
    return rep


def test_report_ratio_slope_and_verdict():
    T = 30
    for rho, word in ((0.5, "vanishing"), (1.0, "healthy"), (1.25, "exploding")):
        rep = _linear_report(rho, T)
        ts = rep.timestep_grad_norms
        assert rep.ratio == ts[0] / ts[-1]
        assert math.isclose(rep.ratio, rho ** (T - 1), rel_tol=1e-11)
        assert math.isclose(rep.log10_slope(), math.log10(rho), rel_tol=1e-10, abs_tol=1e-12)
        assert rep.verdict().startswith(word), rep.verdict()
        assert f"{rep.ratio:.2e}" in rep.verdict()
    rep = _linear_report(0.9, T)  # 0.9^29 = 0.047: vanishing only with a tighter threshold
    assert rep.verdict().startswith("healthy")
    assert rep.verdict(threshold=10).startswith("vanishing")
    # the fitted slope is least squares over log10 norms, zeros left out
    rep.timestep_grad_norms = np.array([8.0, 4.0, 0.0, 1.0])
    back = np.array([3.0, 2.0, 0.0])
    expect = np.polyfit(back, np.log10([8.0, 4.0, 1.0]), 1)[0]
    assert math.isclose(rep.log10_slope(), expect, rel_tol=1e-12)
    rep.timestep_grad_norms = np.array([3.0])
    assert math.isnan(rep.log10_slope())


def test_report_table_and_dict():
    T = 30
    rep = _linear_report(0.5, T)
    table = rep.table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["step", "t"]
    steps = [int(ln.split()[0]) for ln in lines[1:] if ln.split()[0].isdigit()]
    assert steps[0] == T and steps[-1] == 1 and len(steps) == 12 and steps == sorted(steps)[::-1]
    assert any(ln.split()[0] == "h_0" for ln in lines)
    assert "x0.5000 per step back" in table
    assert rep.verdict() in table and "global grad norm" in table
    assert f"{rep.global_norm:.3e}" in table
    for t in steps:  # every listed step shows its own norm
        row = next(ln for ln in lines if ln.split()[0] == str(t))
        assert f"{rep.timestep_grad_norms[t - 1]:.3e}" in row
    assert len(_linear_report(0.5, 5).table().splitlines()) == 1 + 5 + 3
    d = rep.to_dict()
    json.dumps(d)
    assert "h0_grad" not in d
    assert d["timestep_grad_norms"] == rep.timestep_grad_norms.tolist()
    for k in REPORT_NORMS:
        assert d[k] == getattr(rep, k) and type(d[k]) is float
    assert d["first_nonfinite"] is None and d["forward_first_nonfinite"] is None
    assert d["loss"] == rep.loss and isinstance(d["loss"], float)
    assert repr(rep).startswith(f"RNNGradReport(T={T}")
    # a non-finite report still renders
    m = gc.RNN(2, 4, dtype=np.float64, seed=0)
    m._params["weight_hh_l0"][0, 0] = np.inf
    m.forward(np.ones((6, 2, 2)))
    bad = m.backward(np.ones((6, 2, 4)))
    assert "non-finite" in bad.table()
    json.dumps(bad.to_dict())


@pytest.mark.parametrize("readout", [None, 3])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_gradients_only_mode_gives_the_same_gradients(readout, act):
    """backward(report=False): the same gradients, dL/dx and dL/dh_0 bitwise, no report."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 37, 6)).astype(np.float32)
    outs = []
    for report in (True, False):
        m = gc.RNN(6, 64, output_size=readout, activation=act, seed=2)
        hs = m.forward(x)
        gh = np.ones_like(hs)
        gy = None if readout is None else np.ones((9, 37, readout), np.float32)
        rep = m.backward(gh, gy, report=report)
        assert (rep is None) == (not report)
        outs.append([p.copy() for p in m.grads()] + [m.input_grad.copy(), m.h0_grad.copy()])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
