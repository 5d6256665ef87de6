"""An exploding configuration runs to the end: the reports name where NaN/Inf first
appeared, clip_grad_norm(error_if_nonfinite=True) raises, and a checkpoint restores
the model."""

from __future__ import annotations

import numpy as np
import pytest

import gradchain as gc


def test_exploding_relu_mlp_reports_and_recovers(tmp_path):
    sizes = [64] + [64] * 200 + [4]
    healthy = gc.MLP(sizes, activation="relu", init="kaiming_normal", seed=0)
    gc.save(healthy, tmp_path / "ckpt.npz")
    m = gc.MLP(sizes, activation="relu", init=gc.init.normal(sigma_w=3.0), seed=0)
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    y = m.forward(x)
    assert not np.isfinite(y).all()
    rep = m.backward(np.ones_like(y))
    # |a_l| grows like (3 / sqrt 2)^l: float32 overflows after ~120 layers
    assert rep.forward_first_nonfinite is not None and 100 < rep.forward_first_nonfinite <= 201
    assert rep.first_nonfinite is not None
    assert "non-finite" in rep.verdict()
    with pytest.raises(gc.NonFiniteError, match="non-finite"):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)
    # back to the checkpoint: the same model object computes finite numbers again
    m.load_state_dict(gc.load(tmp_path / "ckpt.npz").state_dict())
    loss, rep2 = m.loss_and_grad(x, np.zeros((16, 4), np.float32))
    assert np.isfinite(loss) and rep2.first_nonfinite is None
    assert rep2.forward_first_nonfinite is None and np.isfinite(rep2.global_norm)
    assert np.array_equal(m.forward(x), healthy.forward(x))


def test_exploding_rnn_reports_first_step():
    r = gc.RNN(3, 32, activation="relu", init=gc.init.orthogonal(gain=4.0), seed=0)
    x = np.ones((120, 4, 3), np.float32)
    hs = r.forward(x)
    assert not np.isfinite(hs).all()
    rep = r.backward(np.ones_like(hs))
    assert rep.forward_first_nonfinite is not None and rep.forward_first_nonfinite <= 120
    assert rep.first_nonfinite is not None
    with pytest.raises(RuntimeError):
        gc.clip_grad_norm(r, 1.0, error_if_nonfinite=True)


def test_loss_and_grad_reports_an_overflowed_forward_pass():
    """An overflowing forward pass is a result, not bad input: loss_and_grad returns a NaN
    loss and a report naming where NaN/Inf appeared (no exception, no warning)."""
    m = gc.MLP([16] + [16] * 200 + [4], activation="relu",
               init=gc.init.normal(sigma_w=3.0, sigma_b=0.0), seed=0)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    for loss, t in (("mse", np.zeros((8, 4), np.float32)),
                    ("cross_entropy", np.zeros(8, np.int64))):
        value, rep = m.loss_and_grad(x, t, loss=loss)
        assert np.isnan(value) and rep.loss is not None and np.isnan(rep.loss)
        assert rep.forward_first_nonfinite is not None and 1 <= rep.forward_first_nonfinite <= 200
        assert rep.first_nonfinite is not None
        assert rep.verdict().startswith("non-finite")
    r = gc.RNN(4, 16, activation="relu", init=gc.init.normal(sigma_w=4.0, sigma_b=0.0), seed=0)
    xr = np.random.default_rng(0).normal(size=(300, 3, 4)).astype(np.float32)
    value, rep = r.loss_and_grad(xr, np.zeros((3, 16), np.float32))
    assert np.isnan(value)
    assert rep.forward_first_nonfinite is not None and rep.first_nonfinite is not None
