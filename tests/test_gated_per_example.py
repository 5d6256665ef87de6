"""Per-example gradient norms of the LSTM and the GRU (issue 16 item 3 for the gated
cells): ``backward(..., per_example=True)`` / ``loss_and_grad`` against the NumPy reference
one example at a time (float64, ~1e-12) and ``torch.func.vmap(grad)``, every path of
``per_example_rnn.h`` (Gram matrices, per-example gradients, their sum as dW), the GRU's
separate recurrent side (``r * dn``), the noise scale, ``gc.clip_per_example``, the
gradients' bits with and without per_example, and ``gc.train``'s History."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import (
    assert_dp_sgd_clipping,
    assert_same_bits_everywhere,
    grads_by_threads_and_per_example,
    ref,
)

CELLS = {"lstm": (gc.LSTM, ref.lstm_forward, ref.lstm_backward),
         "gru": (gc.GRU, ref.gru_forward, ref.gru_backward)}


def _params(m: gc.Model) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in m.state_dict().items()}


def _ref_per_example(cell, params, x, gh, gy):
    """One example at a time: its own loss has B times its rows of grad_hs / grad_ys."""
    _, fwd, bwd = CELLS[cell]
    B = x.shape[1]
    norms, per, steps = [], {}, []
    for i in range(B):
        _, cache = fwd(params, x[:, i:i + 1])
        out = bwd(cache, None if gh is None else gh[:, i:i + 1] * B,
                  None if gy is None else gy[:, i:i + 1] * B)
        grads, rep = out[0], out[-1]
        norms.append(math.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
        for k, g in grads.items():
            per.setdefault(k, []).append(float(np.linalg.norm(g)))
        steps.append(np.asarray(rep["timestep_grad_norms"], dtype=np.float64))
    return np.array(norms), {k: np.array(v) for k, v in per.items()}, np.array(steps).T


def _case(cell, T=6, B=5, I_=3, H=4, K=2, bias=True, seed=0, grads="both"):
    rng = np.random.default_rng(seed)
    m = CELLS[cell][0](I_, H, output_size=K, bias=bias, dtype=np.float64, seed=seed + 1)
    x = rng.normal(size=(T, B, I_))
    gh = rng.normal(size=(T, B, H)) / B if grads in ("hs", "both") else None
    gy = rng.normal(size=(T, B, K)) / B if K and grads in ("ys", "both") else None
    return m, x, gh, gy


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("path", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(6, 5, 3, 4, 2, True, "both"), (3, 4, 2, 9, 0, True, "hs"),
                                   (8, 3, 4, 2, 3, False, "ys")],
                         ids=["mixed", "T<H-noreadout", "T>H-nobias"])
def test_gated_per_example_norms_match_one_example_at_a_time(cell, path, shape):
    T, B, I_, H, K, bias, grads = shape
    m, x, gh, gy = _case(cell, T, B, I_, H, K or None, bias, grads=grads)
    m._core.example_path = path
    m.forward(x)
    rep = m.backward(gh, gy, per_example=True)
    norms, per, steps = _ref_per_example(cell, _params(m), x, gh, gy)
    np.testing.assert_allclose(rep.per_example_grad_norms, norms, rtol=1e-11)
    assert set(rep.per_example_tensor_grad_norms) == set(per) == set(dict(m.named_grads()))
    for k, v in per.items():
        np.testing.assert_allclose(rep.per_example_tensor_grad_norms[k], v, rtol=1e-11,
                                   atol=1e-300, err_msg=k)
    np.testing.assert_allclose(rep.per_example_timestep_grad_norms, steps, rtol=1e-11)
    G = rep.global_norm
    trace = (np.sum(norms ** 2) - B * G * G) / (B - 1)
    assert rep.noise_scale == pytest.approx(max(trace, 0.0) / (G * G), rel=1e-9)
    d = rep.to_dict()
    assert d["per_example_grad_norms"] == pytest.approx(list(norms), rel=1e-11)
    assert set(d["per_example_tensor_grad_norms"]) == set(per)
    assert "per-example" in rep.table()
    if cell == "gru" and bias:  # b_hh's n block gets r * dn: not b_ih's
        assert not np.allclose(per["bias_hh_l0"], per["bias_ih_l0"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_per_example_against_torch_vmap_grad(cell):
    torch = pytest.importorskip("torch")
    from torch.func import grad, vmap

    rng = np.random.default_rng(6)
    T, B, I_, H = 7, 5, 3, 6
    cls = gc.LSTM if cell == "lstm" else gc.GRU
    m = cls(I_, H, dtype=np.float64, seed=4)
    x = rng.normal(size=(T, B, I_))
    t = rng.normal(size=(T, B, H))
    _, rep = m.loss_and_grad(x, t, on="all", per_example=True)
    params = {k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()}

    # torch's fused cells do not run under vmap: their step written out (as torch's
    # documentation states it), checked against torch.nn.LSTM / torch.nn.GRU first
    def run(p, xs):
        h = torch.zeros(xs.shape[1], H, dtype=xs.dtype)
        c = torch.zeros_like(h)
        out = []
        for s in range(xs.shape[0]):
            a = xs[s] @ p["weight_ih_l0"].T + p["bias_ih_l0"]
            b = h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
            if cell == "lstm":
                i, f, gg, o = (a + b).split(H, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                ar, az, an = a.split(H, dim=1)
                br, bz, bn = b.split(H, dim=1)
                r, z = torch.sigmoid(ar + br), torch.sigmoid(az + bz)
                h = (1 - z) * torch.tanh(an + r * bn) + z * h
            out.append(h)
        return torch.stack(out)

    net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I_, H).double()
    with torch.no_grad():
        for k, q in net.named_parameters():
            q.copy_(params[k])
        hs, _ = net(torch.from_numpy(x))
        np.testing.assert_allclose(run(params, torch.from_numpy(x)).numpy(), hs.numpy(),
                                   rtol=1e-12, atol=1e-14)

    def loss_one(p, xi, ti):
        return torch.nn.functional.mse_loss(run(p, xi[:, None])[:, 0], ti)

    g = vmap(grad(loss_one), in_dims=(None, 1, 1))(params, torch.from_numpy(x),
                                                   torch.from_numpy(t))
    per = torch.sqrt(sum((v.reshape(B, -1) ** 2).sum(1) for v in g.values())).numpy()
    np.testing.assert_allclose(rep.per_example_grad_norms, per, rtol=1e-10)
    for k, v in g.items():
        np.testing.assert_allclose(rep.per_example_tensor_grad_norms[k],
                                   torch.sqrt((v.reshape(B, -1) ** 2).sum(1)).numpy(),
                                   rtol=1e-10, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(256, 8, 3, 4), (255, 8, 3, 4), (7, 9, 2, 3)],
                         ids=["long", "merged-T", "short"])
@pytest.mark.parametrize("path", [0, 3])
def test_gated_per_example_leaves_the_gradients_bitwise_unchanged(cell, dtype, shape, path):
    # per_example=True gives the bits of per_example=False (on both sides of the shape
    # predicate, assigned and accumulated, threads 1 and 2), and the fused dW equals the
    # merged GEMMs (path 2) to rounding
    T, B, I_, H = shape
    rng = np.random.default_rng(T)
    m = CELLS[cell][0](I_, H, output_size=2, dtype=dtype, seed=1)
    m._core.example_path = path  # 3: dW as the examples' sum (per_example_rnn.h)
    x = rng.normal(size=(T, B, I_)).astype(dtype)
    gh = (rng.normal(size=(T, B, H)) / B).astype(dtype)
    gy = (rng.normal(size=(T, B, 2)) / B).astype(dtype)
    got = grads_by_threads_and_per_example(m, x, gh, gy)
    m._core.example_path = 2
    m.backward(gh, gy)  # from the saved forward pass (any thread count: the same bits)
    merged = {k: v.copy() for k, v in m.named_grads()}
    assert_same_bits_everywhere(got)
    base = got[1, False]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for k, v in merged.items():
        scale = max(float(np.abs(v).max()), 1e-30)
        np.testing.assert_allclose(base[0][k], v, rtol=0, atol=tol * scale, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_clip_per_example_is_dp_sgd_clipping(cell):
    rng = np.random.default_rng(9)
    T, B = 5, 8
    m = CELLS[cell][0](3, 4, output_size=2, dtype=np.float64, seed=6)
    x = rng.normal(size=(T, B, 3))
    t = rng.normal(size=(T, B, 2))
    C = assert_dp_sgd_clipping(m, x, t)
    # a plain backward first: the norms are computed on the way; then nothing to clip
    m.forward(x)
    m.backward(grad_ys=t / t.size)
    assert gc.clip_per_example(m, C).shape == (B,)
    with pytest.raises(ValueError, match="needs a backward pass"):
        gc.clip_per_example(m, C)
    m.forward(x)
    m.backward(grad_ys=t / t.size, accumulate=True)
    with pytest.raises(ValueError, match="accumulated"):
        gc.clip_per_example(m, C)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_per_example_bad_arguments_and_history(cell):
    m, x, gh, gy = _case(cell)
    m.forward(x)
    with pytest.raises(ValueError, match="per_example"):
        m.backward(gh, gy, report=False, per_example=True)
    with pytest.raises(TypeError, match="per_example"):
        m.backward(gh, gy, per_example="yes")
    assert m.supports_per_example()
    rep = m.backward(gh, gy, accumulate=True, per_example=True)
    assert math.isnan(rep.noise_scale)
    assert m.backward(gh, gy).per_example_grad_norms is None
    xs, ys = gc.data.adding(10, 64, seed=0)
    net = CELLS[cell][0](2, 8, output_size=1, seed=0)
    hist = gc.train(net, (xs, ys), gc.optim.SGD(net, lr=0.01), epochs=1, batch_size=16,
                    record_every=1, progress=False)
    assert hist.noise_scale.shape == (len(hist.steps),)
    assert np.isfinite(hist.noise_scale).all()
