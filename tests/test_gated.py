"""The C++ gated chains (gc.LSTM, gc.GRU) against the NumPy reference
(reference.lstm_forward / lstm_backward, gru_forward / gru_backward) on random
configurations (hypothesis: T, B, sizes, dtype, init, readout, bias, h0 / c0, which
upstream gradients, loss placement): hidden and cell states, readout outputs, every
parameter gradient, dL/dx, dL/dh0, dL/dc0 and every report quantity (per-step norms,
gate statistics, per-tensor and per-gate-block norms). Also: every ISA, thread counts 1
and 2 (bitwise), the panel / OpenBLAS step paths, torch.nn.LSTM / GRU loading our state
dict (and ours loading theirs), forget_bias and orthogonal init, bad input, save / load,
pickling, training, sweeps, the CLI probe and the report's table, dict and plot.
Tolerances as tests/test_rnn.py: float64 1e-10, float32 2e-4 (scaled by magnitude)."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gradchain as gc
from conftest import assert_close, ref

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}
CELLS = {"lstm": gc.LSTM, "gru": gc.GRU}
NORMS = ("weight_ih_grad_norm", "weight_hh_grad_norm", "bias_ih_grad_norm",
         "bias_hh_grad_norm", "readout_weight_grad_norm", "readout_bias_grad_norm",
         "h0_grad_norm", "c0_grad_norm", "global_norm")
BLOCKS = ("weight_ih_gate_grad_norms", "weight_hh_gate_grad_norms", "bias_ih_gate_grad_norms",
          "bias_hh_gate_grad_norms")
HH_INITS = ["torch_default", "orthogonal", gc.init.orthogonal(gain=1.5), "xavier_uniform",
            gc.init.normal(sigma_w=1.0, sigma_b=0.3), "kaiming_normal", "identity"]
IH_INITS = ["torch_default", "xavier_uniform", "orthogonal", "lecun_normal"]


class IllConditioned(Exception):
    """The float32 forward pass is chaotic (rounding grows along time): skipped."""


def build(cfg) -> gc.LSTM | gc.GRU:
    kw = {}
    if cfg["cell"] == "lstm" and cfg.get("forget_bias") is not None and cfg["bias"]:
        kw["forget_bias"] = cfg["forget_bias"]
    return CELLS[cfg["cell"]](cfg["I"], cfg["H"], init=cfg["init"], input_init=cfg["input_init"],
                              bias=cfg["bias"], output_size=cfg["K"], dtype=cfg["dtype"],
                              seed=cfg["seed"], **kw)


def ref_run(cell, params, x, h0, c0, gh=None, gy=None):
    if cell == "lstm":
        hs, cache = ref.lstm_forward(params, x, h0, c0)
        if gh is None and gy is None:
            return hs, cache
        grads, dx, dh0, dc0, rep = ref.lstm_backward(cache, gh, gy)
    else:
        hs, cache = ref.gru_forward(params, x, h0)
        if gh is None and gy is None:
            return hs, cache
        grads, dx, dh0, rep = ref.gru_backward(cache, gh, gy)
        dc0 = None
    return hs, cache, grads, dx, dh0, dc0, rep


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def ref_params(m) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in m.state_dict().items()}


def chaos_factor(cell, params, x, h0, c0) -> float:
    """How much a relative 1e-7 perturbation of the parameters grows through the forward
    pass (float64): float32 rounding grows the same way."""
    hs, _ = ref_run(cell, params, x, h0, c0)
    rng = np.random.default_rng(0)
    pert = {k: v * (1 + 1e-7 * rng.standard_normal(v.shape)) for k, v in params.items()}
    hs2, _ = ref_run(cell, pert, x, h0, c0)
    scale = max(float(np.max(np.abs(hs))), 1e-300)
    return float(np.max(np.abs(hs2 - hs))) / scale / 1e-7


@st.composite
def configs(draw, dtype=None, small=False):
    cell = draw(st.sampled_from(["lstm", "gru"]))
    K = draw(st.one_of(st.none(), st.integers(1, 6)))
    return {
        "cell": cell,
        "T": draw(st.integers(1, 10 if small else 30)),
        "B": draw(st.integers(1, 20)),
        "I": draw(st.integers(1, 12 if small else 40)),
        "H": draw(st.integers(1, 12 if small else 40)),
        "K": K,
        "bias": draw(st.booleans()),
        "h0": draw(st.booleans()),
        "c0": cell == "lstm" and draw(st.booleans()),
        "init": draw(st.sampled_from(HH_INITS)),
        "input_init": draw(st.sampled_from(IH_INITS)),
        "forget_bias": draw(st.sampled_from([None, 1.0])),
        "grads": draw(st.sampled_from(["hs", "ys", "both"] if K else ["hs"])),
        "dtype": np.dtype(dtype) if dtype is not None else draw(
            st.sampled_from([np.dtype(np.float64), np.dtype(np.float32)])),
        "seed": draw(st.integers(0, 2**16)),
    }


def check_against_reference(cfg):
    """One forward/backward on the core and the reference; compare every number."""
    dt = cfg["dtype"]
    tol = TOL[dt]
    cell = cfg["cell"]
    T, B, I_, H, K = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["K"]
    G = 4 if cell == "lstm" else 3
    rng = np.random.default_rng(cfg["seed"])
    m = build(cfg)
    x = rng.normal(size=(T, B, I_)).astype(dt)
    h0 = rng.normal(size=(B, H)).astype(dt) if cfg["h0"] else None
    c0 = rng.normal(size=(B, H)).astype(dt) if cfg["c0"] else None
    gh = rng.normal(size=(T, B, H)).astype(dt) if cfg["grads"] in ("hs", "both") else None
    gy = rng.normal(size=(T, B, K)).astype(dt) if cfg["grads"] in ("ys", "both") else None
    params = ref_params(m)
    if dt == np.float32 and chaos_factor(cell, params, f64(x), f64(h0), f64(c0)) > 50:
        raise IllConditioned
    hs_r, cache, grads_r, dx_r, dh0_r, dc0_r, rep_r = ref_run(
        cell, params, f64(x), f64(h0), f64(c0), f64(gh), f64(gy))

    hs = m.forward(x, h0, c0) if cell == "lstm" else m.forward(x, h0)
    rep = m.backward(gh, gy)
    assert isinstance(rep, gc.GatedGradReport) and rep.cell == cell and len(rep.gates) == G
    assert hs.dtype == dt and hs.shape == (T, B, H)
    assert_close("hs", hs, hs_r, tol)
    if cell == "lstm":
        assert_close("cs", m.cell_states, cache["cs"], tol,
                     floor=float(np.max(np.abs(cache["cs"]))))
    else:
        assert m.cell_states is None and m.c0_grad is None and rep.c0_grad is None
    if K:
        assert_close("ys", m.outputs, cache["ys"], tol)
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    ours = dict(m.named_grads())
    assert set(ours) == set(grads_r)
    for k, v in grads_r.items():
        assert ours[k].dtype == dt
        assert_close(k, ours[k], v, tol, floor=(1e-3 if dt == np.float64 else 1e-2) * gscale)
    tscale = float(np.max(rep_r["timestep_grad_norms"]))
    if cell == "lstm":
        tscale = max(tscale, float(np.max(rep_r["cell_grad_norms"])))
    wmax = max(float(np.max(np.abs(params["weight_ih_l0"]))), 1e-3)
    assert_close("dL/dx", m.input_grad, dx_r, tol,
                 floor=1e-2 * wmax * tscale / math.sqrt(B * H))
    assert_close("dL/dh0", m.h0_grad, dh0_r, tol, floor=1e-2 * tscale / math.sqrt(B * H))
    assert np.array_equal(rep.h0_grad, m.h0_grad)
    if cell == "lstm":
        assert_close("dL/dc0", m.c0_grad, dc0_r, tol, floor=1e-2 * tscale / math.sqrt(B * H))
        assert_close("cell_grad_norms", rep.cell_grad_norms, rep_r["cell_grad_norms"], tol,
                     floor=1e-2 * tscale)
    else:
        assert rep.cell_grad_norms.shape == (0,)
    assert rep.timestep_grad_norms.shape == (T,) and rep.steps == T
    assert_close("timestep_grad_norms", rep.timestep_grad_norms,
                 rep_r["timestep_grad_norms"], tol, floor=1e-2 * tscale)
    nscale = max(rep_r[k] for k in NORMS)
    for k in NORMS:
        assert_close(k, getattr(rep, k), rep_r[k], tol, floor=1e-2 * nscale)
    for k in BLOCKS:
        assert getattr(rep, k).shape == (G,)
        assert_close(k, getattr(rep, k), rep_r[k], tol, floor=1e-2 * nscale)
    # gate statistics: means to rounding; saturated fractions exactly in float64, within
    # the units whose derivative sits at the threshold (rounding) in float32
    assert rep.gate_means.shape == (G, T) and rep.gate_saturation.shape == (G, T)
    assert_close("gate_means", rep.gate_means, rep_r["gate_means"], tol, floor=1.0)
    slack = 1e-12 if dt == np.float64 else 3.0 / (B * H)
    assert np.max(np.abs(rep.gate_saturation - rep_r["gate_saturation"])) <= slack
    assert rep.first_nonfinite is None and rep_r["first_nonfinite"] is None
    assert rep.forward_first_nonfinite is None
    # the report describes the stored gradients exactly (float64 norms of them)
    for k, g in m.named_grads():
        name = {"weight_ih_l0": "weight_ih_grad_norm", "weight_hh_l0": "weight_hh_grad_norm",
                "bias_ih_l0": "bias_ih_grad_norm", "bias_hh_l0": "bias_hh_grad_norm",
                "readout.weight": "readout_weight_grad_norm",
                "readout.bias": "readout_bias_grad_norm"}[k]
        assert math.isclose(getattr(rep, name), ref.frobenius_norm(g), rel_tol=1e-12,
                            abs_tol=1e-300), k
    assert math.isclose(rep.global_norm, ref.global_norm(m.grads()), rel_tol=1e-12)
    return m, rep


def check_given(cfg):
    try:
        check_against_reference(cfg)
    except IllConditioned:
        assume(False)


@given(configs(dtype=np.float64))
def test_float64_matches_reference(cfg):
    check_given(cfg)


@given(configs(dtype=np.float32))
def test_float32_matches_reference(cfg):
    check_given(cfg)


def _fixed(cell, T, B, I_, H, K, dtype=np.float64, **kw):
    cfg = {"cell": cell, "T": T, "B": B, "I": I_, "H": H, "K": K, "bias": True, "h0": True,
           "c0": cell == "lstm", "init": "orthogonal", "input_init": "xavier_uniform",
           "forget_bias": None, "grads": "both" if K else "hs", "dtype": np.dtype(dtype),
           "seed": 7}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 7, 16, 17, 33, 47])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_multi_block_batches_match_reference(cell, B, dtype):
    """Batches split into several row blocks of the time loops, uneven last blocks."""
    check_against_reference(_fixed(cell, 9, B, 13, 21, 4, dtype=dtype))
    check_against_reference(_fixed(cell, 5, B, 6, 24, None, dtype=dtype, bias=False, h0=False,
                                   c0=False, init="torch_default"))


@pytest.mark.parametrize("cell,H", [("lstm", 256), ("lstm", 257), ("gru", 295), ("gru", 296)])
def test_panel_and_openblas_step_paths_match_reference(cell, H):
    """G*H*H <= 512*512 runs the per-step products on the panel kernel (W_hh packed once
    per pass), beyond that on OpenBLAS: both sides of the bound."""
    check_against_reference(_fixed(cell, 3, 5, 4, H, 2, init=gc.init.orthogonal(gain=0.9)))


def _isa_configs():
    out = []
    for i, cell in enumerate(["lstm", "gru"] * 3):
        dt = np.float64 if i % 2 == 0 else np.float32
        out.append(_fixed(cell, 6 + i, 3 + 5 * i, 5, 7 + 13 * i, 3 if i % 3 else None,
                          dtype=dt, seed=i, init=HH_INITS[i]))
    return out


@pytest.mark.parametrize("isa", gc.available_isas())
def test_every_isa_matches_reference(isa, restore_isa):
    gc.set_isa(isa)
    assert gc.get_isa() == isa
    for cfg in _isa_configs():
        check_against_reference(cfg)


@settings(max_examples=25)
@given(cfg=configs(small=True), isa=st.sampled_from(gc.available_isas()))
def test_random_configs_on_every_isa(cfg, isa):
    old = gc.get_isa()
    gc.set_isa(isa)
    try:
        check_given(cfg)
    finally:
        gc.set_isa(old)


def _every_number(m, rep) -> list[np.ndarray]:
    out = [np.array(m.input_grad), np.array(m.h0_grad), *[np.array(g) for _, g in
                                                           m.named_grads()]]
    if m.c0_grad is not None:
        out.append(np.array(m.c0_grad))
    d = rep.to_dict()
    out += [np.asarray(d[k], dtype=np.float64) for k in sorted(d)
            if k not in ("cell", "gates", "first_nonfinite", "forward_first_nonfinite", "loss")]
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [5, 40])
def test_thread_count_does_not_change_any_number(cell, dtype, B, restore_threads):
    """Thread counts 1 and 2 give bitwise identical outputs, gradients and report."""
    rng = np.random.default_rng(1)
    m = CELLS[cell](6, 48, output_size=3, dtype=dtype, seed=4)
    x = rng.normal(size=(20, B, 6)).astype(dtype)
    t = rng.normal(size=(20, B, 3)).astype(dtype)
    runs = []
    for n in (1, 2, 1):
        gc.set_num_threads(n)
        loss, rep = m.loss_and_grad(x, t, on="all")
        runs.append((loss, np.array(m.forward(x)), _every_number(m, rep)))
    for loss, hs, nums in runs[1:]:
        assert loss == runs[0][0]
        assert np.array_equal(hs, runs[0][1])
        for a, b in zip(nums, runs[0][2], strict=True):
            assert a.tobytes() == b.tobytes()


@settings(max_examples=30)
@given(cfg=configs(), isa=st.sampled_from(gc.available_isas()))
def test_random_configs_bitwise_across_thread_counts(cfg, isa):
    """Any configuration, any ISA: 1 and 2 threads give the same bits everywhere."""
    old_isa, old_n = gc.get_isa(), gc.get_num_threads()
    try:
        gc.set_isa(isa)
        m = build(cfg)
        rng = np.random.default_rng(cfg["seed"])
        dt = cfg["dtype"]
        x = rng.normal(size=(cfg["T"], cfg["B"], cfg["I"])).astype(dt)
        gh = rng.normal(size=(cfg["T"], cfg["B"], cfg["H"])).astype(dt)
        runs = []
        for n in (1, 2):
            gc.set_num_threads(n)
            hs = np.array(m.forward(x))
            rep = m.backward(gh)
            runs.append([hs, *_every_number(m, rep)])
        for a, b in zip(*runs, strict=True):
            assert a.tobytes() == b.tobytes()
    finally:
        gc.set_isa(old_isa)
        gc.set_num_threads(old_n)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rows_of_a_batch_are_independent_bitwise(cell):
    """Row b of a batch equals the same sample run alone (row blocks, any tile)."""
    m = CELLS[cell](5, 37, seed=2)
    x = np.random.default_rng(0).normal(size=(6, 33, 5)).astype(np.float32)
    h = m.forward(x)
    for b in (0, 7, 16, 32):
        assert np.array_equal(m.forward(x[:, b:b + 1]), h[:, b:b + 1]), b


# ------------------------------------------------------------------------ losses
@st.composite
def loss_configs(draw):
    cfg = draw(configs(dtype=draw(st.sampled_from([np.float64, np.float32])), small=True))
    cfg["loss"] = draw(st.sampled_from(["mse", "cross_entropy"]))
    cfg["on"] = draw(st.sampled_from(["last", "all"]))
    return cfg


def check_loss(cfg):
    dt = cfg["dtype"]
    tol = TOL[dt]
    cell = cfg["cell"]
    T, B, I_, H, K = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["K"]
    rng = np.random.default_rng(cfg["seed"])
    m = build(cfg)
    x = rng.normal(size=(T, B, I_)).astype(dt)
    h0 = rng.normal(size=(B, H)).astype(dt) if cfg["h0"] else None
    c0 = rng.normal(size=(B, H)).astype(dt) if cfg["c0"] else None
    F = K or H
    if cfg["loss"] == "mse":
        t = rng.normal(size=(B, F) if cfg["on"] == "last" else (T, B, F)).astype(dt)
    else:
        t = rng.integers(0, F, size=(B,) if cfg["on"] == "last" else (T, B))
    params = ref_params(m)
    if dt == np.float32 and chaos_factor(cell, params, f64(x), f64(h0), f64(c0)) > 50:
        raise IllConditioned
    _, cache = ref_run(cell, params, f64(x), f64(h0), f64(c0))
    outputs = cache["ys"] if K else cache["hs"]
    t64 = t.astype(np.float64) if cfg["loss"] == "mse" else t
    value_r, g = ref.rnn_loss_grads(outputs, t64, cfg["loss"], on=cfg["on"])
    _, _, grads_r, _, dh0_r, _, rep_r = ref_run(cell, params, f64(x), f64(h0), f64(c0),
                                                None if K else g, g if K else None)
    kw = {"c0": c0} if cell == "lstm" else {}
    value, rep = m.loss_and_grad(x, t, loss=cfg["loss"], on=cfg["on"], h0=h0, **kw)
    assert isinstance(value, float) and rep.loss == value
    assert math.isclose(value, value_r, rel_tol=10 * tol, abs_tol=10 * tol * abs(value_r))
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    for k, v in grads_r.items():
        assert_close(k, m._grads[k], v, 10 * tol, floor=1e-2 * gscale)
    tscale = float(np.max(rep_r["timestep_grad_norms"]))
    assert_close("timestep_grad_norms", rep.timestep_grad_norms, rep_r["timestep_grad_norms"],
                 10 * tol, floor=1e-2 * tscale)


@given(loss_configs())
def test_loss_and_grad_matches_reference(cfg):
    try:
        check_loss(cfg)
    except IllConditioned:
        assume(False)


# ------------------------------------------------------------------------ torch
def _torch_module(torch, m):
    cls = torch.nn.LSTM if isinstance(m, gc.LSTM) else torch.nn.GRU
    mod = cls(m.input_size, m.hidden_size, bias=m.bias, batch_first=m.batch_first)
    mod = mod.to(torch.float64 if m.dtype == np.float64 else torch.float32)
    state = {k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()
             if not k.startswith("readout")}
    mod.load_state_dict(state)
    return mod


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_loads_our_state_dict_and_agrees(cell, dtype, batch_first, bias):
    """A torch module loads our state dict and gives the same outputs and gradients
    (float64 to ~1e-12, float32 to rounding)."""
    torch = pytest.importorskip("torch")
    kw = {"forget_bias": 1.0} if cell == "lstm" and bias else {}
    m = CELLS[cell](4, 9, dtype=dtype, seed=3, batch_first=batch_first, bias=bias, **kw)
    mod = _torch_module(torch, m)
    rng = np.random.default_rng(0)
    shape = (5, 12, 4) if batch_first else (12, 5, 4)
    x = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape[:2] + (9,)).astype(dtype)
    hs = m.forward(x)
    m.backward(g)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = mod(xt)[0]
    out.backward(torch.from_numpy(g))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=tol, atol=tol)
    for k, p in mod.named_parameters():
        assert_close(k, m._grads[k], p.grad.numpy(), 10 * tol)
    assert_close("dx", m.input_grad, xt.grad.numpy(), 10 * tol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_state_dict_loads_into_ours(cell):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(3, 6).double()
    m = CELLS[cell](3, 6, dtype=np.float64)
    m.load_state_dict(mod.state_dict())
    x = np.random.default_rng(1).normal(size=(8, 2, 3))
    np.testing.assert_allclose(m.forward(x), mod(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=1e-12, atol=1e-14)


def test_torch_default_init_matches_torch_bounds():
    """The default init is torch's: every parameter U(+-1/sqrt(H))."""
    m = gc.LSTM(50, 100, seed=0, dtype=np.float64)
    for k, v in m.state_dict().items():
        assert np.max(np.abs(v)) <= 0.1, k
        assert np.max(np.abs(v)) > 0.09, k
        assert abs(float(np.mean(v))) < 0.01, k
        assert math.isclose(float(np.var(v)), 0.01 / 3, rel_tol=0.25), k


def test_forget_bias_and_orthogonal_blocks():
    m = gc.LSTM(3, 8, init="orthogonal", forget_bias=1.0, dtype=np.float64, seed=1)
    p = dict(m.named_parameters())
    np.testing.assert_array_equal(p["bias_ih_l0"][8:16], 1.0)
    np.testing.assert_array_equal(p["bias_hh_l0"][8:16], 0.0)
    W = p["weight_hh_l0"]
    for k in range(4):
        blk = W[k * 8:(k + 1) * 8]
        np.testing.assert_allclose(blk @ blk.T, np.eye(8), atol=1e-12)
    assert m.config()["forget_bias"] == 1.0
    m.reset_parameters(5)
    np.testing.assert_array_equal(p["bias_ih_l0"][8:16], 1.0)
    # the forget gate opens: its mean value at the first step is above 1/2
    rep = m.loss_and_grad(np.zeros((4, 3, 3)), np.zeros((3, 8)))[1]
    assert rep.gate("f")[0][0] > 0.7


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bad_input_is_one_clear_error_and_changes_nothing(cell):
    m = CELLS[cell](3, 4, output_size=2, seed=0)
    x = np.ones((5, 2, 3), np.float32)
    t = np.zeros((2, 2), np.float32)
    m.loss_and_grad(x, t)
    before = [np.array(a) for a in (m.flat_parameters(), m.flat_grads())]
    bad = [
        (lambda: m.forward(np.ones((5, 2, 4), np.float32)), ValueError, r"x: expected shape"),
        (lambda: m.forward(x.astype(np.float64)), TypeError, r"x: expected dtype float32"),
        (lambda: m.forward(np.full((5, 2, 3), np.nan, np.float32)), ValueError,
         r"x contains NaN"),
        (lambda: m.forward(x, np.ones((3, 4), np.float32)), ValueError, r"h0: expected shape"),
        (lambda: m.loss_and_grad(x, np.zeros((2, 3), np.float32)), ValueError, "target"),
        (lambda: m.loss_and_grad(x, t, on="first"), ValueError, "on: expected"),
        (lambda: m.backward(np.ones((5, 2, 5), np.float32)), ValueError, "grad_hs"),
    ]
    if cell == "gru":
        bad += [(lambda: m.forward(x, None, np.zeros((2, 4), np.float32)), ValueError,
                 r"c0: a GRU has no cell state"),
                (lambda: m.loss_and_grad(x, t, c0=np.zeros((2, 4), np.float32)), ValueError,
                 r"c0: a GRU has no cell state"),
                (lambda: gc.GRU(3, 4, forget_bias=1.0), TypeError, "forget_bias")]
    else:
        bad += [(lambda: m.forward(x, None, np.zeros((2, 5), np.float32)), ValueError,
                 r"c0: expected shape"),
                (lambda: m.forward(x, None, np.full((2, 4), np.inf, np.float32)), ValueError,
                 r"c0 contains NaN"),
                (lambda: gc.LSTM(3, 4, bias=False, forget_bias=1.0), ValueError,
                 "forget_bias"),
                (lambda: gc.LSTM(3, 4, forget_bias="1"), TypeError, "forget_bias")]
    bad += [(lambda: CELLS[cell](0, 4), ValueError, "input_size"),
            (lambda: CELLS[cell](3, 4, dtype=np.int32), (TypeError, ValueError), "dtype")]
    for call, exc, pattern in bad:
        with pytest.raises(exc, match=pattern):
            call()
        after = [np.array(a) for a in (m.flat_parameters(), m.flat_grads())]
        for a, b in zip(before, after, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("where", ["weight_hh_l0", "weight_ih_l0"])
def test_nonfinite_weights_are_reported_like_the_reference(cell, where):
    """An Inf weight: the first step whose h_t (or c_t) is not finite, as the reference
    finds it, and the backward's first non-finite dL/dh_t."""
    m = CELLS[cell](2, 3, dtype=np.float64, seed=0)
    m.load_state_dict({where: np.where(np.arange(m._params[where].size).reshape(
        m._params[where].shape) == 4, np.inf, m._params[where])}, strict=False,
        allow_nonfinite=True)
    x = np.ones((5, 2, 2))
    x[:2] = 0.0  # no input for two steps: an Inf in W_ih shows at step 3
    gh = np.ones((5, 2, 3))
    hs, cache, *_, rep_r = ref_run(cell, ref_params(m), x, None, None, gh, None)
    states = [hs] + ([cache["cs"]] if cell == "lstm" else [])
    bad = [t + 1 for t in range(5) if any(not np.isfinite(s[t]).all() for s in states)]
    m.forward(x)
    rep = m.backward(gh)
    assert rep.forward_first_nonfinite == (bad[0] if bad else None)
    assert rep.first_nonfinite == rep_r["first_nonfinite"]
    if bad:
        assert rep.verdict().startswith("non-finite")


# ------------------------------------------------------------------ the protocol
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_save_load_pickle_and_config_round_trip(cell, tmp_path):
    m = CELLS[cell](3, 5, output_size=2, batch_first=True, init="orthogonal", seed=3,
                    **({"forget_bias": 0.5} if cell == "lstm" else {}))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    t = rng.normal(size=(4, 2)).astype(np.float32)
    loss, rep = m.loss_and_grad(x, t)
    gc.save(m, tmp_path / "m.npz")
    for m2 in (gc.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(m)), copy.deepcopy(m),
               gc.models.from_config(json.loads(json.dumps(m.config())), seed=3)):
        assert type(m2) is type(m) and m2.config() == m.config()
        loss2, rep2 = m2.loss_and_grad(x, t)
        assert loss2 == loss
        assert np.array_equal(rep2.timestep_grad_norms, rep.timestep_grad_norms)
    assert gc.models.get(cell) is type(m) and gc.models.MODELS[cell] is type(m)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_train_clip_and_optimisers(cell):
    m = CELLS[cell](2, 16, output_size=1, seed=0)
    x, y = gc.data.adding(20, 64, seed=0)
    h = gc.train(m, (x, y), gc.optim.Adam(m, lr=1e-2), epochs=2, batch_size=16, clip=1.0,
                 progress=False)
    assert h.kind == cell and h.num_steps == 8 and np.isfinite(h.loss).all()
    assert h.grad_norm_labels[:2] == ["h1", "h2"]
    gc.clip_grad_value(m, 0.01)
    assert max(float(np.max(np.abs(g))) for g in m.grads()) <= 0.01
    assert gc.grad_norm(m) >= 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sweep_and_cli_probe(cell, capsys):
    recs = gc.sweep({"hidden_size": [4, 8]}, model=cell, steps=6, batch=3, executor="serial",
                    progress=False, as_frame=False)
    assert [r["model"] for r in recs] == [cell, cell]
    assert [len(r["grad_norms"]) for r in recs] == [6, 6]
    from gradchain import cli

    assert cli.main(["probe", "--model", cell, "--steps", "5", "--hidden", "4", "--json",
                     "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["kind"] == cell.upper()
    assert len(out["report"]["timestep_grad_norms"]) == 5
    assert out["report"]["gates"] == list(CELLS[cell].GATES)


# ------------------------------------------------------------------ the report
def test_report_table_dict_and_gates():
    m = gc.LSTM(2, 6, output_size=1, seed=0)
    x, y = gc.data.adding(30, 8, seed=0)
    _, rep = m.loss_and_grad(x, y)
    text = rep.table()
    assert "||dL/dc_t||" in text and "f mean/sat" in text and rep.verdict() in text
    d = rep.to_dict()
    json.dumps(d)
    assert d["cell"] == "lstm" and d["gates"] == ["i", "f", "g", "o"]
    assert np.array_equal(np.asarray(d["gate_means"]), rep.gate_means)
    means, sat = rep.gate("o")
    assert means.shape == sat.shape == (30,)
    with pytest.raises(ValueError, match="gate: expected one of i, f, g, o"):
        rep.gate("r")
    g = gc.GRU(2, 6, output_size=1, seed=0)
    _, rg = g.loss_and_grad(x, y)
    assert "||dL/dc_t||" not in rg.table() and "z mean/sat" in rg.table()
    assert "GatedGradReport(cell='gru'" in repr(rg)


def test_report_plot_overlays_several_models(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = gc.data.adding(40, 8, seed=0)
    _, r_rnn = gc.RNN(2, 8, output_size=1, seed=0).loss_and_grad(x, y)
    _, r_lstm = gc.LSTM(2, 8, output_size=1, seed=0).loss_and_grad(x, y)
    _, r_gru = gc.GRU(2, 8, output_size=1, seed=0).loss_and_grad(x, y)
    fig, ax = r_rnn.plot(label="tanh RNN")
    r_lstm.plot(ax, label="LSTM")
    r_gru.plot(ax, tmp_path / "cells.png", label="GRU")
    labels = [ln.get_label() for ln in ax.lines]
    assert any(s.startswith("LSTM") for s in labels) and any(s.startswith("GRU") for s in
                                                               labels)
    assert "LSTM: ||dL/dc_t||" in labels
    assert (tmp_path / "cells.png").stat().st_size > 0
    with pytest.raises(TypeError, match="cell_state"):
        r_lstm.plot(cell_state="yes")


def test_gradients_only_mode_gives_the_same_gradients():
    m = gc.GRU(3, 7, output_size=2, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4, 3)).astype(np.float32)
    gy = rng.normal(size=(9, 4, 2)).astype(np.float32)
    m.forward(x)
    rep = m.backward(grad_ys=gy)
    g1 = [np.array(g) for g in m.grads()]
    assert m.backward(grad_ys=gy, report=False) is None
    for a, (_, b) in zip(g1, m.named_grads(), strict=True):
        assert np.array_equal(a, b)
    assert rep.global_norm > 0


# ------------------------------------------------------------------ the comparison
def test_demo_cells_on_the_command_line(capsys, tmp_path):
    from gradchain import cli

    png = tmp_path / "cells.png"
    args = ["demo", "--cells", "--cell-steps", "12", "30", "--train-steps", "3", "-q"]
    assert cli.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["cell"].split()[0], r["T"]) for r in out] == [
        (c, T) for T in (12, 30) for c in ("tanh", "IRNN", "LSTM", "GRU")]
    for r in out:
        assert len(r["report"]["timestep_grad_norms"]) == r["T"]
        assert math.isfinite(r["val_mse"]) and r["reach"] > 0
    lstm = next(r for r in out if r["cell"].startswith("LSTM") and r["T"] == 30)
    assert len(lstm["report"]["cell_grad_norms"]) == 30
    has_mpl = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_mpl = False
    assert cli.main([*args, "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "T=12 reach" in text and "T=30 reach" in text and "GRU (torch init)" in text
    assert png.exists() == has_mpl
    assert cli.main(["demo", "--cells", "--cell-steps", "1", "-q"]) == 2  # T >= 2


def test_the_lstm_cell_state_carries_the_gradient_further_than_a_tanh_rnn():
    """At initialisation, over 200 steps of the adding problem, the gradient reaching step
    1 of the LSTM (forget bias 1: the cell state's additive path) is many orders of
    magnitude above the tanh RNN's, and the IRNN's (identity W_hh) hardly decays. (A GRU
    at torch's init does not: its update gate sits near 1/2, so it must learn to open.)"""
    from gradchain import demo

    res = demo.run_cells((200,), batch=16, hidden=32, train_steps=1)
    reach = {r.short: r.reach for r in res}
    assert reach["LSTM"] > 1e6 * reach["tanh RNN"]
    assert reach["IRNN"] > 1e-2
    lstm = next(r for r in res if r.short == "LSTM")
    cell = lstm.report.cell_grad_norms
    assert cell[0] / cell[-1] > 1e6 * reach["tanh RNN"]


def test_the_example_script_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "gated_adding.py"
    out = subprocess.run([sys.executable, str(script), "--train-steps", "2",
                          str(tmp_path / "g.png")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "T=200 reach" in out.stdout and "T=1000 reach" in out.stdout


def test_a_cell_run_starts_the_same_whatever_its_length():
    """The recorded comparison (examples/data/gated_adding.json) is checked by rerunning
    the first steps of each run: that needs the first steps not to depend on the number
    of steps, and the run to be deterministic. Also: one validation point per
    ``eval_every`` steps (and one for a last partial chunk)."""
    from gradchain import demo

    case = next(c for c in demo.cell_cases() if c[1] == "LSTM")
    kw = {"batch": 4, "hidden": 8, "eval_every": 3}
    short = demo.train_cell(case, 20, train_steps=2, **kw)
    long = demo.train_cell(case, 20, train_steps=7, **kw)
    again = demo.train_cell(case, 20, train_steps=7, **kw)
    assert short.loss.shape == (2,) and long.loss.shape == (7,)
    assert np.array_equal(short.loss, long.loss[:2])
    assert short.reach == long.reach
    assert np.array_equal(long.loss, again.loss) and long.val_curve == again.val_curve
    assert [s for s, _ in long.val_curve] == [3, 6, 7]
    assert long.lr == demo.CELL_LR["lstm"] and long.val_mse == long.val_curve[-1][1]
    assert math.isfinite(long.baseline) and not long.learned
