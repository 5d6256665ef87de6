"""Issue 16 item 2, the "norm" stage: a non-finite value born inside a norm layer (its
normalisation and affine scale), with finite inputs, parameters and linear product,
classified as the NumPy reference classifies it; and pre-activations whose variance
exceeds float32's range, which the norm layers' float64 statistics keep finite."""

from __future__ import annotations

import numpy as np
import pytest

import gradchain as gc
from conftest import ref

X = np.array([[1, 1, 1, 1], [1, 2, 3, 4], [-1, 0.5, 2, 3]], np.float32)


def _ref_forward(m: gc.MLP) -> dict:
    p = {k: np.array(v) for k, v in m.state_dict().items()
         if not k.endswith("num_batches_tracked")}
    _, cache = ref.mlp_forward(p, X, activation=m.activation.name, norm=m.norm,
                               residual=m.residual, residual_scale=m.residual_scale,
                               training=m.training, bias=m.bias)
    return cache


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_a_nonfinite_born_in_the_norm_layer_is_the_norm_stage(norm):
    m = gc.MLP([4, 4, 4, 2], norm=norm, activation="relu", seed=0)
    # gamma = 3e38 (finite) times a normalised value above 1: Inf in the norm's output of
    # hidden layer 2, whose input and linear product are finite
    dict(m.named_parameters())["norms.1.weight"][...] = np.float32(3e38)
    m.invalidate()
    _, rep = m.loss_and_grad(X, np.zeros((3, 2), np.float32))
    o = rep.nonfinite_origin
    cache = _ref_forward(m)
    assert (o.phase, o.index, o.stage) == ("forward", 2, "norm")
    assert cache["forward_first_nonfinite"] == 2 and cache["forward_nonfinite_stage"] == "norm"
    assert rep.forward_first_nonfinite == 2 and "norm" in str(o)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_a_variance_beyond_float32_stays_finite(norm):
    m = gc.MLP([4, 4, 4, 2], norm=norm, activation="relu", seed=0)
    # z = +-1e20: its variance (~1e40) is beyond float32, the statistics are not
    W = dict(m.named_parameters())["layers.0.weight"]
    W[...] = np.diag([1, -1, 1, -1]).astype(np.float32) * np.float32(1e20)
    m.invalidate()
    _, rep = m.loss_and_grad(X, np.zeros((3, 2), np.float32))
    cache = _ref_forward(m)
    assert rep.nonfinite_origin is None and rep.forward_first_nonfinite is None
    assert cache["forward_first_nonfinite"] is None
    assert np.isfinite(m.forward(X)).all()
