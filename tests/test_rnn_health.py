"""The RNN's per-step health statistics (the backward step's own kernel, issue 13): every
ISA, hidden sizes with and without vector tails, both dtypes, against counts taken in
NumPy from the model's own tensors; gradients bitwise those of report=False; the same bits
for any thread count; where a backward NaN/Inf was born, against the reference."""

from __future__ import annotations

import numpy as np
import pytest

import gradchain as gc
from conftest import HEALTH, rnn_report_same_for_threads
from gradchain import reference as ref


def _model(H: int, B: int, dtype: type, act: str) -> tuple[gc.RNN, np.ndarray, np.ndarray]:
    """An RNN with W_hh = 0 (so dL/dh_t is grad_hs_t exactly: its zeros and subnormals are
    known), a third of the units pushed dead by their bias, and grad_hs with exact zeros and
    subnormal entries on some steps."""
    rng = np.random.default_rng(H * 100 + B)
    kw = {"negative_slope": 1e-4} if act == "leaky_relu" else {}
    m = gc.RNN(4, H, activation=gc.Activation(act, **kw), seed=1, dtype=dtype)
    p = dict(m.named_parameters())
    p["weight_hh_l0"][...] = 0.0
    p["bias_ih_l0"][: max(1, H // 3)] = -100.0  # z < 0 for every example: dead / saturated
    m.invalidate()
    T = 7
    x = rng.normal(size=(T, B, 4)).astype(dtype)
    x[2] = 0.0  # step 3: z = b, the same for every example: more units dead
    g = rng.normal(size=(T, B, H)).astype(dtype)
    tiny = np.finfo(dtype).tiny
    g[1][rng.random((B, H)) < 0.3] = 0.0
    g[4][rng.random((B, H)) < 0.2] = tiny / 8  # subnormal
    g[5][rng.random((B, H)) < 0.1] = -tiny / 3  # subnormal, negative
    g[5][rng.random((B, H)) < 0.1] = -0.0
    g[1, -1, -1] = 0.0  # at least one of each, at the end of the block (a vector's tail)
    g[4, -1, -1] = tiny / 4
    return m, x, g


def _expected(m: gc.RNN, hs: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    H = hs.shape[2]
    live = (hs > 0).any(axis=1)  # relu / leaky_relu: act' = 1 where h > 0, else 0 / 1e-4
    dead = (H - live.sum(axis=1)) / H
    a = np.abs(g)
    tiny = np.finfo(g.dtype).tiny
    numel = g.shape[1] * g.shape[2]
    return {
        "dead_unit_fractions": dead if m.activation.name == "relu" else np.zeros_like(dead),
        "saturated_unit_fractions": dead,  # act' below 1e-3 for every example
        "zero_grad_fractions": (a == 0).sum(axis=(1, 2)) / numel,
        "subnormal_grad_fractions": ((a > 0) & (a < tiny)).sum(axis=(1, 2)) / numel,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", [3, 20, 64, 100, 130])
@pytest.mark.parametrize("B", [1, 7, 16, 33])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_step_health_on_every_isa(dtype, H, B, act, restore_isa):
    m, x, g = _model(H, B, dtype, act)
    for isa in gc.available_isas():
        gc.set_isa(isa)
        hs = m.forward(x)
        rep = m.backward(grad_hs=g)
        want = _expected(m, hs, g)
        for f in HEALTH:
            np.testing.assert_array_equal(getattr(rep, f), want[f], err_msg=f"{isa} {f}")
        assert rep.dead_unit_fractions[0] >= max(1, H // 3) / H - 1e-12 or act != "relu"
        assert rep.zero_grad_fractions[1] > 0 and rep.subnormal_grad_fractions[4] > 0
        nrm = np.sqrt(np.sum(g.astype(np.float64) ** 2, axis=(1, 2)))
        np.testing.assert_allclose(rep.timestep_grad_norms, nrm, rtol=1e-12)
        grads = [p.copy() for p in m.grads()] + [m.input_grad.copy(), m.h0_grad.copy()]
        m.forward(x)
        assert m.backward(grad_hs=g, report=False) is None
        for a, b in zip(grads, [*m.grads(), m.input_grad, m.h0_grad], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=isa)


def test_step_health_is_identical_for_any_thread_count_on_every_isa(restore_isa,
                                                                    restore_threads):
    """A long sequence (the report's per-step entries are filled in blocks of steps inside
    the backward's region) and a tanh chain with saturated steps."""
    rng = np.random.default_rng(3)
    r = gc.RNN(5, 70, activation="tanh", seed=0)
    dict(r.named_parameters())["weight_ih_l0"][...] = 1.0
    r.invalidate()
    x = rng.normal(size=(600, 24, 5)).astype(np.float32)
    x[100:140] = 4.0  # z ~ 20: tanh' ~ 1e-17 for every unit and example
    g = rng.normal(size=(600, 24, 70)).astype(np.float32)
    g[-1, :, :10] = 0.0  # dL/dh_T = grad_hs_T
    for isa in gc.available_isas():
        gc.set_isa(isa)
        rep = rnn_report_same_for_threads(
            r, x, g, (*HEALTH, "mean_abs_activations", "timestep_grad_norms"), isa)
        assert rep.saturated_unit_fractions[110] == 1.0
        assert rep.zero_grad_fractions[-1] == 10 / 70


def _params(m: gc.Model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("slope,stage", [(10.0, "activation_backward"), (1.0, "product")])
def test_backward_origin_of_the_rnn(slope, stage, restore_isa):
    """dL/dh_4 = 1e38 is finite. slope 10: dz_4 = dL/dh_4 * 10 overflows (the activation's
    backward); slope 1: dz_4 is finite and dz_4 W_hh = dL/dh_3 overflows (the product)."""
    m = gc.RNN(2, 6, activation=gc.Activation("leaky_relu", negative_slope=slope), seed=0,
               dtype=np.float32)
    p = dict(m.named_parameters())
    p["weight_ih_l0"][...] = 0.0
    p["bias_ih_l0"][...] = -1.0  # z = -1 at every step: act' = slope
    p["bias_hh_l0"][...] = 0.0
    p["weight_hh_l0"][...] = 1e3
    m.invalidate()
    x = np.zeros((5, 3, 2), np.float32)
    g = np.zeros((5, 3, 6), np.float32)
    g[3] = 1e38  # dL/dh_4 (finite); step 5 gives nothing back
    for isa in gc.available_isas():
        gc.set_isa(isa)
        m.forward(x)
        rep = m.backward(grad_hs=g)
        o = rep.nonfinite_origin
        assert (o.phase, o.index, o.stage) == ("backward", 3, stage), isa
    _, cache = ref.rnn_forward(_params(m), x, activation="leaky_relu",
                               act_params={"negative_slope": slope})
    _, _, _, rep_r = ref.rnn_backward(cache, grad_hs=g)
    assert rep_r["first_nonfinite"] == 3 and rep_r["backward_nonfinite_stage"] == stage
