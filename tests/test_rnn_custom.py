"""gc.RNN with a custom activation (gc.Activation.custom(f, df), the slow path: one
NumPy call per timestep on z_t (B, H)): the same numbers as the NumPy reference with
the same (f, df) pair, bitwise the built-in recurrence's pre-activations (a custom tanh
agrees with the built-in tanh to rounding), failures inside the callable propagate and
leave the model usable, non-finite outputs are located, and save/load asks for it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import assert_close, ref

DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-4}


def softsign(z):
    return z / (1.0 + np.abs(z))


def softsign_grad(z):
    return 1.0 / (1.0 + np.abs(z)) ** 2


SOFTSIGN = gc.Activation.custom(softsign, softsign_grad, name="softsign")


def ref_params(m: gc.RNN) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,I_,H,K", [
    (1, 1, 1, 1, None), (9, 5, 3, 7, 2), (12, 20, 6, 64, None), (6, 17, 4, 128, 3),
    (5, 3, 8, 200, 4),
])
def test_custom_activation_matches_reference(dtype, T, B, I_, H, K):
    dt = np.dtype(dtype)
    tol = TOL[dt]
    m = gc.RNN(I_, H, activation=SOFTSIGN, output_size=K, dtype=dtype, seed=T + H)
    rng = np.random.default_rng(H)
    x = rng.normal(size=(T, B, I_)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    gh = rng.normal(size=(T, B, H)).astype(dtype)
    gy = rng.normal(size=(T, B, K)).astype(dtype) if K else None
    params = ref_params(m)
    hs_r, cache = ref.rnn_forward(params, x.astype(np.float64), h0.astype(np.float64),
                                  activation=(softsign, softsign_grad))
    grads_r, dx_r, dh0_r, rep_r = ref.rnn_backward(
        cache, gh.astype(np.float64), None if gy is None else gy.astype(np.float64))
    hs = m.forward(x, h0)
    rep = m.backward(gh, gy)
    assert hs.dtype == dt and hs.shape == (T, B, H)
    assert_close("hs", hs, hs_r, tol)
    if K:
        assert_close("ys", m.outputs, cache["ys"], tol)
    gscale = max(float(np.max(np.abs(v))) for v in grads_r.values())
    ours = dict(m.named_grads())
    assert set(ours) == set(grads_r)
    for k, v in grads_r.items():
        assert_close(k, ours[k], v, tol, floor=1e-3 * gscale)
    tscale = float(np.max(rep_r["timestep_grad_norms"]))
    assert_close("dL/dx", m.input_grad, dx_r, tol, floor=1e-3 * tscale / math.sqrt(B * H))
    assert_close("dL/dh0", m.h0_grad, dh0_r, tol, floor=1e-3 * tscale / math.sqrt(B * H))
    assert_close("timestep_grad_norms", rep.timestep_grad_norms, rep_r["timestep_grad_norms"],
                 tol)
    assert math.isclose(rep.global_norm, rep_r["global_norm"], rel_tol=tol)
    assert rep.first_nonfinite is None and rep.forward_first_nonfinite is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [16, 64, 96])
def test_custom_tanh_agrees_with_builtin_tanh(dtype, H):
    def f(z):
        return np.tanh(z)

    def df(z):
        return 1.0 - np.tanh(z) ** 2

    kw = dict(output_size=3, dtype=dtype, seed=3)
    a = gc.RNN(5, H, activation="tanh", **kw)
    b = gc.RNN(5, H, activation=gc.Activation.custom(f, df, name="mytanh"), **kw)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb
        np.testing.assert_array_equal(pa, pb)  # the same init: gain of a custom act is 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 9, 5)).astype(dtype)
    y = rng.normal(size=(9, 3)).astype(dtype)
    la, ra = a.loss_and_grad(x, y)
    lb, rb = b.loss_and_grad(x, y)
    # the two differ only by tanh's rounding (NumPy's libm vs gradchain's vectorised tanh)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert math.isclose(la, lb, rel_tol=tol)
    np.testing.assert_allclose(rb.timestep_grad_norms, ra.timestep_grad_norms, rtol=tol * 10)
    for (k, ga), (_, gb) in zip(a.named_grads(), b.named_grads(), strict=True):
        np.testing.assert_allclose(gb, ga, rtol=tol * 10, atol=tol * np.abs(ga).max(), err_msg=k)


@pytest.mark.parametrize("threads", [1, 2])
def test_custom_activation_is_deterministic_across_threads(threads, restore_threads):
    m = gc.RNN(6, 64, activation=SOFTSIGN, output_size=2, seed=1)
    x = np.random.default_rng(1).normal(size=(40, 32, 6)).astype(np.float32)
    gc.set_num_threads(1)
    h1 = m.forward(x)
    r1 = m.backward(np.ones_like(h1))
    g1 = [g.copy() for g in m.grads()]
    gc.set_num_threads(threads)
    h2 = m.forward(x)
    r2 = m.backward(np.ones_like(h2))
    assert np.array_equal(h1, h2)
    assert np.array_equal(r1.timestep_grad_norms, r2.timestep_grad_norms)
    for a, b in zip(g1, m.grads(), strict=True):
        assert np.array_equal(a, b)


class Boom(Exception):
    pass


class Scripted:
    """softsign whose f misbehaves on demand, at a chosen call (one call per timestep)."""

    def __init__(self):
        self.mode, self.at, self.calls = "ok", 1, 0

    def f(self, z):
        self.calls += 1
        if self.calls == self.at:
            if self.mode == "raise":
                raise Boom("inside f")
            if self.mode == "shape":
                return z[:, :1]
            if self.mode == "inf":
                out = softsign(z)
                out[0, 0] = np.inf
                return out
        return softsign(z)

    def df(self, z):
        return softsign_grad(z)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,exc,frags", [
    ("raise", Boom, ["inside f"]),
    ("shape", ValueError, ["f(x)", "(4, 1)", "(4, 6)"]),
])
@pytest.mark.parametrize("at", [1, 3])
def test_custom_failure_leaves_rnn_usable(dtype, mode, exc, frags, at):
    s = Scripted()
    m = gc.RNN(3, 6, activation=gc.Activation.custom(s.f, s.df, name="scripted"),
               output_size=2, dtype=dtype, seed=0)
    good = gc.RNN(3, 6, activation=SOFTSIGN, output_size=2, dtype=dtype, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(dtype)
    g = np.ones((5, 4, 6), dtype)
    m.forward(x)
    m.backward(g)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    grads_before = [v.copy() for v in m.grads()]
    s.mode, s.at, s.calls = mode, at, 0
    with pytest.raises(exc) as e:
        m.forward(x)
    for frag in frags:
        assert frag in str(e.value)
    assert s.calls == at
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for a, b in zip(grads_before, m.grads(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(gc.StateError, match="forward"):  # the saved pass is gone
        m.backward(g)
    s.mode = "ok"
    np.testing.assert_array_equal(m.forward(x), good.forward(x))
    r, rg = m.backward(g), good.backward(g)
    np.testing.assert_array_equal(r.timestep_grad_norms, rg.timestep_grad_norms)


@pytest.mark.parametrize("at", [1, 4, 7])
def test_custom_nonfinite_output_is_located(at):
    s = Scripted()
    s.mode, s.at = "inf", at
    m = gc.RNN(3, 6, activation=gc.Activation.custom(s.f, s.df, name="scripted"), seed=0)
    x = np.random.default_rng(0).normal(size=(8, 4, 3)).astype(np.float32)
    with np.errstate(all="ignore"):  # the Inf flows on into the next steps' softsign
        hs = m.forward(x)
    assert np.isinf(hs[at - 1, 0, 0]) and np.isfinite(hs[:at - 1]).all()
    rep = m.backward(np.ones_like(hs))
    assert rep.forward_first_nonfinite == at


def test_custom_rnn_saves_and_needs_the_activation_to_load(tmp_path):
    m = gc.RNN(3, 8, activation=SOFTSIGN, output_size=2, seed=5)
    path = tmp_path / "rnn.npz"
    gc.save(m, path)
    with pytest.raises(ValueError, match="custom activation 'softsign'.*activation="):
        gc.load(path)
    m2 = gc.load(path, activation=SOFTSIGN)
    assert m2.activation.is_custom and m2.activation.name == "softsign"
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v, err_msg=k)
    x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(m.forward(x), m2.forward(x))


def test_custom_rnn_trains():
    m = gc.RNN(2, 16, activation=SOFTSIGN, output_size=1, seed=0)
    data = gc.data.adding(10, 256, seed=0)
    opt = gc.optim.Adam(m, lr=1e-2)
    hist = gc.train(m, data, opt, epochs=3, batch_size=32, loss="mse", progress=False)
    assert not hist.diverged
    assert hist.epoch_loss[-1] < hist.epoch_loss[0]
    assert "softsign" in repr(m)
