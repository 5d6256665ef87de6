"""Clipping in the core against the reference formulas (and torch.nn.utils when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import ref


def trained(dtype=np.float64, seed=0, scale=1.0):
    m = gc.MLP([6, 9, 9, 4], activation="tanh", norm="layer", seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 6)).astype(dtype)
    m.forward(x)
    m.backward((scale * rng.normal(size=(7, 4))).astype(dtype))
    return m


def grads_of(m):
    return {k: np.array(v, dtype=np.float64) for k, v in m.named_grads()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1.0, 1e6])
def test_clip_grad_norm_matches_reference(dtype, max_norm):
    m = trained(dtype)
    before = grads_of(m)
    total_r, new_r = ref.clip_grad_norm(before, max_norm)
    total = gc.clip_grad_norm(m, max_norm=max_norm)
    assert isinstance(total, float)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    assert math.isclose(total, total_r, rel_tol=rtol)
    for k, v in m.named_grads():
        np.testing.assert_allclose(v, new_r[k], rtol=rtol * 10, atol=1e-30, err_msg=k)
    after = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in m.grads()))
    assert after <= max(max_norm, 0) * (1 + 1e-6) or max_norm > total


def test_total_equals_report_global_norm():
    m = trained()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 6))
    m.forward(x)
    rep = m.backward(rng.normal(size=(7, 4)))
    assert math.isclose(gc.grad_norm(m), rep.global_norm, rel_tol=1e-13)
    assert math.isclose(gc.clip_grad_norm(m, 1e9), rep.global_norm, rel_tol=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_total(bad):
    m = trained()
    m._grads["layers.1.weight"][0, 0] = bad
    with pytest.raises(RuntimeError, match="non-finite"):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)
    assert m._grads["layers.1.weight"][0, 0] != 0  # untouched by the rejected call
    before = grads_of(m)
    total_r, new_r = ref.clip_grad_norm(before, 1.0)
    total = gc.clip_grad_norm(m, 1.0)
    assert (math.isnan(total) and math.isnan(total_r)) or total == total_r
    for k, v in m.named_grads():  # scaled as PyTorch would: NaN or 0 * inf patterns
        np.testing.assert_array_equal(np.isnan(v), np.isnan(new_r[k]), err_msg=k)
        ok = ~np.isnan(v)
        np.testing.assert_allclose(v[ok], new_r[k][ok], rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_value(dtype):
    m = trained(dtype, scale=10.0)
    m._grads["layers.0.bias"][0] = np.nan
    new_r = ref.clip_grad_value(grads_of(m), 0.05)
    gc.clip_grad_value(m, 0.05)
    for k, v in m.named_grads():
        np.testing.assert_array_equal(v, new_r[k].astype(dtype), err_msg=k)
    assert np.isnan(m._grads["layers.0.bias"][0])


def test_clip_grad_norm_per_layer():
    m = trained(scale=5.0)
    norms_r, new_r = ref.clip_grad_norm_per_layer(grads_of(m), 0.3)
    norms = gc.clip_grad_norm_per_layer(m, 0.3)
    assert list(norms) == [k for k, _ in m.named_parameters()]
    for k, v in m.named_grads():
        assert math.isclose(norms[k], norms_r[k], rel_tol=1e-12), k
        np.testing.assert_allclose(v, new_r[k], rtol=1e-12, atol=1e-300, err_msg=k)
        assert np.linalg.norm(v) <= 0.3 * (1 + 1e-9)


def test_against_torch():
    torch = pytest.importorskip("torch")
    m = trained(scale=3.0)
    ps = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in m.grads()]
    for p, g in zip(ps, m.grads(), strict=True):
        p.grad = torch.tensor(np.array(g))
    t_total = float(torch.nn.utils.clip_grad_norm_(ps, 0.5))
    total = gc.clip_grad_norm(m, 0.5)
    assert math.isclose(total, t_total, rel_tol=1e-12)
    for p, g in zip(ps, m.grads(), strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12, atol=1e-300)
