"""Per-example gradient norms of the RNN (issue 16 item 3 for the recurrent chain):
``backward(..., per_example=True)`` / ``loss_and_grad`` against the NumPy reference one
example at a time (float64, ~1e-12) and ``torch.func.vmap(grad)``, both of the core's
paths (Gram matrices and per-example gradients, ``per_example_rnn.h``), the noise scale,
``gc.clip_per_example`` and ``gc.train``'s History for the RNN."""

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

PATHS = (1, 2)  # the core's Gram path and its per-example-gradient path


def _params(m: gc.Model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state_dict().items()}


CONFIGS = [
    {"readout": 2, "bias": True, "act": "tanh", "grads": "ys"},
    {"readout": None, "bias": True, "act": "relu", "grads": "hs"},
    {"readout": 3, "bias": False, "act": "tanh", "grads": "both"},
    {"readout": 1, "bias": True, "act": "sigmoid", "grads": "ys_last"},
]


def _case(cfg: dict, T: int = 6, B: int = 5, I_: int = 3, H: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = gc.RNN(I_, H, activation=cfg["act"], output_size=cfg["readout"], bias=cfg["bias"],
               dtype=np.float64, seed=seed + 1)
    x = rng.normal(size=(T, B, I_))
    h0 = rng.normal(size=(B, H)) * 0.5
    gh = gy = None
    if cfg["grads"] in ("hs", "both"):
        gh = rng.normal(size=(T, B, H)) / B
    if cfg["grads"] in ("ys", "both"):
        gy = rng.normal(size=(T, B, cfg["readout"])) / B
    if cfg["grads"] == "ys_last":
        gy = np.zeros((T, B, cfg["readout"]))
        gy[-1] = rng.normal(size=(B, cfg["readout"])) / B
    return m, x, h0, gh, gy


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['act']}-{c['grads']}")
def test_per_example_norms_match_one_example_at_a_time(cfg, path):
    m, x, h0, gh, gy = _case(cfg)
    m._core.example_path = path
    m.forward(x, h0)
    rep = m.backward(gh, gy, per_example=True)
    norms, per, steps = ref.rnn_per_example_grad_norms(_params(m), x, gh, gy, h0,
                                                      activation=cfg["act"])
    np.testing.assert_allclose(rep.per_example_grad_norms, norms, rtol=1e-12)
    assert set(rep.per_example_tensor_grad_norms) == set(per) == set(dict(m.named_grads()))
    for k, v in per.items():
        np.testing.assert_allclose(rep.per_example_tensor_grad_norms[k], v, rtol=1e-12,
                                   atol=1e-300, err_msg=k)
    np.testing.assert_allclose(rep.per_example_timestep_grad_norms, steps, rtol=1e-12)
    # the noise scale from its definition (B_simple = tr(Sigma) / ||G||^2)
    B = x.shape[1]
    G = rep.global_norm
    trace = (np.sum(norms ** 2) - B * G * G) / (B - 1)
    assert rep.noise_scale == pytest.approx(max(trace, 0.0) / (G * G), rel=1e-9)
    d = rep.to_dict()
    assert d["per_example_grad_norms"] == pytest.approx(list(norms), rel=1e-12)
    assert set(d["per_example_tensor_grad_norms"]) == set(per)
    assert "per-example" in rep.table(health=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 4, 5, 40), (40, 3, 2, 4)], ids=["T<H", "T>H"])
def test_both_paths_give_the_same_norms_and_auto_picks_by_flops(dtype, shape):
    T, B, I_, H = shape
    rng = np.random.default_rng(3)
    m = gc.RNN(I_, H, output_size=2, dtype=dtype, seed=2)
    x = rng.normal(size=(T, B, I_)).astype(dtype)
    gy = (rng.normal(size=(T, B, 2)) / B).astype(dtype)
    out = {}
    for path in (0, 1, 2, 3):
        m._core.example_path = path
        m.forward(x)
        out[path] = m.backward(grad_ys=gy, per_example=True)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for k in out[1].per_example_tensor_grad_norms:
        np.testing.assert_allclose(out[1].per_example_tensor_grad_norms[k],
                                   out[2].per_example_tensor_grad_norms[k], rtol=tol, err_msg=k)
        np.testing.assert_array_equal(out[2].per_example_tensor_grad_norms[k],
                                      out[3].per_example_tensor_grad_norms[k], err_msg=k)
    # the flop count: Gram T^2 (2H + I + K) against per-example gradients T H (I + H + K)
    gram = T * T * (2 * H + I_ + 2) < T * H * (I_ + H + 2)
    assert gram == (T < H)
    np.testing.assert_array_equal(out[0].per_example_grad_norms,
                                  out[1 if gram else 2].per_example_grad_norms)


@pytest.mark.parametrize("path", PATHS)
def test_per_example_norms_are_the_same_for_any_thread_count(path):
    rng = np.random.default_rng(4)
    m = gc.RNN(4, 24, output_size=2, seed=0)
    m._core.example_path = path
    x = rng.normal(size=(9, 37, 4)).astype(np.float32)
    gy = rng.normal(size=(9, 37, 2)).astype(np.float32)
    old = gc.get_num_threads()
    reps = []
    try:
        for n in sorted({1, min(2, old), old}):
            gc.set_num_threads(n)
            m.forward(x)
            reps.append(m.backward(grad_ys=gy, per_example=True))
    finally:
        gc.set_num_threads(old)
    for r in reps[1:]:
        np.testing.assert_array_equal(r.per_example_grad_norms, reps[0].per_example_grad_norms)
        np.testing.assert_array_equal(r.per_example_timestep_grad_norms,
                                      reps[0].per_example_timestep_grad_norms)


@pytest.mark.parametrize("on", ["last", "all"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_loss_and_grad_per_example_is_each_examples_own_loss(loss, on):
    rng = np.random.default_rng(5)
    m = gc.RNN(3, 6, output_size=4, dtype=np.float64, seed=3)
    T, B = 5, 6
    x = rng.normal(size=(T, B, 3))
    lead = (B,) if on == "last" else (T, B)
    t = (rng.normal(size=(*lead, 4)) if loss == "mse" else rng.integers(0, 4, size=lead))
    _, rep = m.loss_and_grad(x, t, loss=loss, on=on, per_example=True)
    own = []
    for i in range(B):
        ti = t[i:i + 1] if on == "last" else t[:, i:i + 1]
        _, r = m.loss_and_grad(x[:, i:i + 1], ti, loss=loss, on=on)
        own.append(r.global_norm)
    np.testing.assert_allclose(rep.per_example_grad_norms, own, rtol=1e-12)


def test_per_example_against_torch_vmap_grad():
    torch = pytest.importorskip("torch")
    from torch.func import grad, vmap

    rng = np.random.default_rng(6)
    T, B, I_, H, K = 7, 5, 3, 6, 2
    m = gc.RNN(I_, H, output_size=K, dtype=np.float64, seed=4)
    x = rng.normal(size=(T, B, I_))
    t = rng.normal(size=(B, K))
    _, rep = m.loss_and_grad(x, t, per_example=True)

    # torch.nn.RNN's fused kernel does not run under vmap: its step written out (as
    # torch.nn.RNN's documentation states it), checked against torch.nn.RNN itself first
    def run(p, xs):
        h = torch.zeros(xs.shape[1], H, dtype=xs.dtype)
        for s in range(xs.shape[0]):
            h = torch.tanh(xs[s] @ p["weight_ih_l0"].T + p["bias_ih_l0"]
                           + h @ p["weight_hh_l0"].T + p["bias_hh_l0"])
        return h @ p["readout.weight"].T + p["readout.bias"]

    params = {k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()}
    net = torch.nn.RNN(I_, H).double()
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(params[k])
        hs, _ = net(torch.from_numpy(x))
        h_last = run({**params, "readout.weight": torch.eye(H, dtype=torch.float64),
                      "readout.bias": torch.zeros(H, dtype=torch.float64)},
                     torch.from_numpy(x))
    np.testing.assert_allclose(h_last.numpy(), hs[-1].numpy(), rtol=1e-12, atol=1e-14)

    def loss_one(p, xi, ti):
        return torch.nn.functional.mse_loss(run(p, xi[:, None]), ti[None])

    g = vmap(grad(loss_one), in_dims=(None, 1, 0))(params, torch.from_numpy(x),
                                                   torch.from_numpy(t))
    per = torch.sqrt(sum((v.reshape(B, -1) ** 2).sum(1) for v in g.values())).numpy()
    np.testing.assert_allclose(rep.per_example_grad_norms, per, rtol=1e-10)
    w = torch.sqrt((g["weight_hh_l0"].reshape(B, -1) ** 2).sum(1)).numpy()
    np.testing.assert_allclose(rep.per_example_tensor_grad_norms["weight_hh_l0"], w, rtol=1e-10)


def test_float32_per_example_norms_against_the_float64_reference():
    rng = np.random.default_rng(7)
    m = gc.RNN(3, 16, output_size=2, seed=5)
    x = rng.normal(size=(12, 6, 3)).astype(np.float32)
    gy = (rng.normal(size=(12, 6, 2)) / 6).astype(np.float32)
    p64 = {k: v.astype(np.float64) for k, v in _params(m).items()}
    norms, _, _ = ref.rnn_per_example_grad_norms(p64, x.astype(np.float64), None,
                                                 gy.astype(np.float64))
    for path in PATHS:
        m._core.example_path = path
        m.forward(x)
        rep = m.backward(grad_ys=gy, per_example=True)
        np.testing.assert_allclose(rep.per_example_grad_norms, norms, rtol=1e-4)


def test_per_example_bad_arguments_and_accumulate():
    rng = np.random.default_rng(8)
    m = gc.RNN(2, 5, output_size=1, dtype=np.float64, seed=0)
    x = rng.normal(size=(4, 3, 2))
    gy = rng.normal(size=(4, 3, 1))
    m.forward(x)
    with pytest.raises(ValueError, match="per_example.*report=True"):
        m.backward(grad_ys=gy, report=False, per_example=True)
    with pytest.raises(TypeError, match="per_example"):
        m.backward(grad_ys=gy, per_example=1)
    with pytest.raises(TypeError, match="per_example"):
        m.loss_and_grad(x, np.zeros((3, 1)), per_example="yes")
    with pytest.raises(ValueError, match="per_example"):
        m._core.backward(None, gy, False, False, True)
    assert m.supports_per_example()
    rep = m.backward(grad_ys=gy, per_example=True)
    rep2 = m.backward(grad_ys=gy, accumulate=True, per_example=True)
    # this batch's own examples, whatever was accumulated; the noise scale is not defined
    np.testing.assert_array_equal(rep2.per_example_grad_norms, rep.per_example_grad_norms)
    assert math.isnan(rep2.noise_scale) and rep2.to_dict()["noise_scale"] is None
    plain = m.backward(grad_ys=gy)
    assert plain.per_example_grad_norms is None and plain.noise_scale is None
    with pytest.raises(ValueError, match="example_path"):
        m._core.example_path = 4


@pytest.mark.parametrize("readout", [2, None])
def test_clip_per_example_on_an_rnn_is_dp_sgd_clipping(readout):
    rng = np.random.default_rng(9)
    T, B = 5, 8
    m = gc.RNN(3, 6, output_size=readout, dtype=np.float64, seed=6)
    F = readout or 6
    x = rng.normal(size=(T, B, 3))
    t = rng.normal(size=(T, B, F))
    C = assert_dp_sgd_clipping(m, x, t)
    # a plain backward first: the norms are computed on the way
    m.forward(x)
    m.backward(grad_hs=None if readout else t / t.size,
               grad_ys=t / t.size if readout else None)
    assert gc.clip_per_example(m, C).shape == (B,)
    with pytest.raises(ValueError, match="needs a backward pass"):
        gc.clip_per_example(m, C)


def test_history_records_the_rnn_noise_scale():
    x, y = gc.data.adding(10, 64, seed=0)
    m = gc.RNN(2, 8, output_size=1, seed=0)
    hist = gc.train(m, (x, y), gc.optim.SGD(m, lr=0.01), epochs=1, batch_size=16,
                    record_every=1, progress=False)
    assert hist.noise_scale.shape == (len(hist.steps),)
    assert np.isfinite(hist.noise_scale).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("readout", [1, None])
def test_batched_probe_equals_the_per_probe_passes(dtype, readout, monkeypatch):
    from gradchain.models import rnn as rnn_mod

    rng = np.random.default_rng(10)
    m = gc.RNN(2, 9, output_size=readout, dtype=dtype, seed=2)
    x = rng.normal(size=(6, 3, 2)).astype(dtype)
    hs = m.forward(x)
    want = m.probe(x, n=5, seed=3)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for values in (rnn_mod._PROBE_VALUES, 6 * 3 * (2 + 6 * 9 + 3 * 9 + 2) * 2):  # chunks of 2
        monkeypatch.setattr(rnn_mod, "_PROBE_VALUES", values)
        got = m._probe_batched(x, n=5, seed=3)
        np.testing.assert_allclose(got.sq_norms, want.sq_norms, rtol=tol)
        np.testing.assert_array_equal(got.u_sq, want.u_sq)
    # the model's own saved pass is untouched: a backward still runs on the B rows
    assert m.backward(np.ones_like(hs)).timestep_grad_norms.shape == (6,)
    with pytest.raises(ValueError, match="n must be"):
        m._core.replicate_batch(0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("path", [*PATHS, 3])
def test_per_example_gradients_equal_the_plain_backward(dtype, path):
    # on the per-example-gradient path dW_ih, dW_hh are the sums of the examples' own
    # gradients (per_example_rnn.cpp) instead of the merged GEMMs: equal to rounding,
    # assigned or accumulated, and the same for any thread count
    rng = np.random.default_rng(11)
    T, B = 7, 37
    m = gc.RNN(3, 10, output_size=2, dtype=dtype, seed=7)
    m._core.example_path = path
    x = rng.normal(size=(T, B, 3)).astype(dtype)
    gy = (rng.normal(size=(T, B, 2)) / B).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    m.forward(x)
    plain_rep = m.backward(grad_ys=gy)
    plain = {k: v.copy() for k, v in m.named_grads()}
    old = gc.get_num_threads()
    got = []
    try:
        for n in sorted({1, old}):
            gc.set_num_threads(n)
            m.forward(x)
            rep = m.backward(grad_ys=gy, per_example=True)
            got.append({k: v.copy() for k, v in m.named_grads()})
            for k, v in got[-1].items():
                np.testing.assert_allclose(v, plain[k], rtol=tol, atol=tol * 1e-3, err_msg=k)
            assert rep.weight_hh_grad_norm == pytest.approx(plain_rep.weight_hh_grad_norm,
                                                            rel=tol)
            m.backward(grad_ys=gy, accumulate=True, per_example=True)
            for k, v in m.named_grads():
                np.testing.assert_allclose(v, 2 * plain[k], rtol=tol, atol=tol * 1e-3,
                                           err_msg=k)
    finally:
        gc.set_num_threads(old)
    for g in got[1:]:
        for k, v in g.items():
            np.testing.assert_array_equal(v, got[0][k], err_msg=k)


# dW_ih, dW_hh as the fixed-block sum of the examples' own gradients (per_example_rnn.h,
# rnn_example_fuses): from 256 steps with at least 8 blocks of examples (B >= 8)
FUSED_SHAPES = [(256, 8, 3, 5), (300, 19, 2, 4)]
MERGED_SHAPES = [(255, 8, 3, 5), (256, 7, 3, 5), (9, 37, 4, 6)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", FUSED_SHAPES + MERGED_SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("path", [0, 1, 2, 3])
def test_per_example_leaves_the_gradients_bitwise_unchanged(dtype, shape, path):
    # gc.train records per-example norms at some steps: recording must not move the
    # trajectory, so per_example=True gives the bits of per_example=False (every path,
    # either side of the shape predicate, assigned or accumulated, for any thread count)
    T, B, I_, H = shape
    rng = np.random.default_rng(T + B)
    m = gc.RNN(I_, H, output_size=2, dtype=dtype, seed=1)
    m._core.example_path = path
    x = rng.normal(size=(T, B, I_)).astype(dtype)
    gy = (rng.normal(size=(T, B, 2)) / B).astype(dtype)
    gh = (rng.normal(size=(T, B, H)) / B).astype(dtype)
    got = grads_by_threads_and_per_example(m, x, gh, gy)
    assert_same_bits_everywhere(got)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_weight_gradients_equal_the_merged_products_and_the_reference(dtype, shape):
    # the example-sum dW (path 0 on these shapes, and path 3) against the merged GEMMs
    # (paths 1 and 2) to rounding, and against the float64 reference
    T, B, I_, H = shape
    rng = np.random.default_rng(5)
    m = gc.RNN(I_, H, output_size=2, dtype=dtype, seed=3)
    x = rng.normal(size=(T, B, I_)).astype(dtype)
    gy = (rng.normal(size=(T, B, 2)) / B).astype(dtype)
    out = {}
    for path in (0, 2, 3):
        m._core.example_path = path
        m.forward(x)
        rep = m.backward(grad_ys=gy, per_example=path != 2)
        out[path] = ({k: v.copy() for k, v in m.named_grads()}, rep)
    p64 = {k: v.astype(np.float64) for k, v in _params(m).items()}
    _, cache = ref.rnn_forward(p64, x.astype(np.float64))
    want, _, _, _ = ref.rnn_backward(cache, None, gy.astype(np.float64))
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for k in ("weight_ih_l0", "weight_hh_l0"):
        scale = np.abs(want[k]).max()
        for path in (0, 2, 3):
            np.testing.assert_allclose(out[path][0][k], want[k], rtol=0, atol=tol * scale,
                                       err_msg=f"{k} path {path}")
        # the fused paths are one computation: the same bits
        np.testing.assert_array_equal(out[0][0][k], out[3][0][k], err_msg=k)
    assert out[0][1].weight_hh_grad_norm == pytest.approx(
        float(np.linalg.norm(want["weight_hh_l0"])), rel=tol * 10)
    # the norms of the fused path: those of the per-example gradients
    norms, _, _ = ref.rnn_per_example_grad_norms(p64, x.astype(np.float64), None,
                                                 gy.astype(np.float64))
    np.testing.assert_allclose(out[0][1].per_example_grad_norms, norms,
                               rtol=1e-11 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("kind", ["mlp", "rnn", "lstm", "gru"])
def test_clip_per_example_reruns_the_upstream_gradient_as_it_was_passed(kind):
    """The kept upstream gradient is a copy of the caller's array (writing to the array
    after backward changes nothing), its buffer reused from one backward to the next (no
    new pages per pass: Model._kept_upstream), and an array validation made (from a list)
    is kept as it is."""
    rng = np.random.default_rng(3)
    T, B = 4, 6
    if kind == "mlp":
        def make():
            return gc.MLP([3, 5, 2], dtype=np.float64, seed=1)
        x, g = rng.normal(size=(B, 3)), rng.normal(size=(B, 2))

        def back(m, grad):
            return m.backward(grad)
        kept = ("_last_gy",)
    else:
        cls = {"rnn": gc.RNN, "lstm": gc.LSTM, "gru": gc.GRU}[kind]

        def make():
            return cls(3, 5, dtype=np.float64, seed=1)
        x, g = rng.normal(size=(T, B, 3)), rng.normal(size=(T, B, 5))

        def back(m, grad):
            return m.backward(grad_hs=grad)
        kept = ("_last_grads", 0)

    def kept_array(m):
        a = getattr(m, kept[0])
        return a if len(kept) == 1 else a[kept[1]]

    ref = make()
    ref.forward(x)
    back(ref, g)
    want = gc.clip_per_example(ref, 0.5)
    want_grads = [np.array(v) for _, v in ref.named_grads()]

    m = make()
    m.forward(x)
    user = g.copy()
    back(m, user)
    first = kept_array(m)
    assert first is not user and not np.shares_memory(first, user)
    m.forward(x)
    back(m, user)
    assert kept_array(m) is first  # the copy's buffer is reused
    user *= 100.0  # the caller writes to its array after backward
    np.testing.assert_array_equal(gc.clip_per_example(m, 0.5), want)
    for (_, v), w in zip(m.named_grads(), want_grads, strict=True):
        np.testing.assert_array_equal(v, w)

    # a list: validation made the array, nobody else holds it, so it is kept as it is
    m.forward(x)
    back(m, g.tolist())
    assert kept_array(m) is not first
    np.testing.assert_array_equal(kept_array(m), g)
