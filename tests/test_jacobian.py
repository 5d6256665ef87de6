"""The input-output Jacobian (issue 15, item 3): gc.jacobian computed in the core in forward
mode against finite differences of the NumPy reference and torch.func.jacrev, the exact
linear cases (orthogonal: every singular value 1; Gaussian: the Fuss-Catalan moments), the
Jacobian-vector products both ways, the spectra (exact and Lanczos), the RNN's dh_T/dh_t,
and what a linearisation leaves alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import kink_margin, ref, ref_params, same
from gradchain.activations import SPECS

ALL_ACTS = sorted(SPECS)


def fd_jacobian(model: gc.MLP, x: np.ndarray, h: float = 1e-6) -> tuple[np.ndarray, float]:
    """Central differences of the reference's eval-mode forward (float64), and the
    smallest distance of a hidden pre-activation to a kink."""
    p = ref_params(model)
    kw = dict(activation=model.activation.name, act_params=model.activation.params,
              norm=model.norm, residual=model.residual, residual_scale=model.residual_scale,
              training=False, bias=model.bias)
    x0 = x.reshape(1, -1).astype(np.float64)
    _, cache = ref.mlp_forward(p, x0, **kw)
    margin = kink_margin(cache, model.activation.name, model.activation.params)
    cols = []
    for j in range(x0.shape[1]):
        e = np.zeros_like(x0)
        e[0, j] = h
        yp, _ = ref.mlp_forward(p, x0 + e, **kw)
        ym, _ = ref.mlp_forward(p, x0 - e, **kw)
        cols.append(((yp - ym) / (2 * h))[0])
    return np.stack(cols, axis=1), margin


def small_model(activation="tanh", norm=None, residual=False, bias=True, seed=0,
                sizes=(5, 7, 7, 6, 4), dtype=np.float64):
    m = gc.MLP(list(sizes), activation=activation, norm=norm, residual=residual, bias=bias,
               init="xavier_normal", dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, p in m.named_parameters():  # non-trivial biases and norm parameters
        if name.endswith("bias"):
            p[...] = rng.normal(0, 0.3, p.shape)
        elif name.startswith("norms.") and name.endswith("weight"):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    for name, b in m.named_buffers():
        b[...] = (rng.normal(0, 0.5, b.shape) if name.endswith("mean")
                  else rng.uniform(0.5, 2.0, b.shape))
    if norm == "batch":
        m.eval()
    return m


@pytest.mark.parametrize("activation", ALL_ACTS)
@pytest.mark.parametrize("variant", ["plain", "residual", "layer", "batch"])
def test_jacobian_matches_finite_differences(activation, variant):
    kw = {"plain": {}, "residual": {"residual": True, "bias": False},
          "layer": {"norm": "layer"}, "batch": {"norm": "batch", "residual": 2}}[variant]
    m = small_model(activation, seed=ALL_ACTS.index(activation), **kw)
    x = np.random.default_rng(7).normal(size=5)
    J = gc.jacobian(m, x)
    assert J.shape == (4, 5) and J.dtype == np.float64
    Jfd, margin = fd_jacobian(m, x)
    if margin < 1e-4:
        pytest.skip("a pre-activation sits on a kink")
    np.testing.assert_allclose(J, Jfd, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(Jfd).max()))


torch = None
try:  # optional: torch.func.jacrev as a second opinion
    import torch  # noqa: F811
except ImportError:  # pragma: no cover
    pass


def torch_module(m: gc.MLP):
    F = torch.nn.functional
    acts = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu,
            "silu": F.silu, "elu": F.elu, "mish": F.mish, "softplus": F.softplus,
            "identity": lambda t: t, "selu": F.selu, "leaky_relu": F.leaky_relu,
            "hardtanh": F.hardtanh, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}
    act = acts[m.activation.name]
    sd = {k: torch.tensor(np.array(v, dtype=np.float64)) for k, v in m.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    L = m.depth

    def f(x):
        a = x
        for i in range(L):
            z = a @ sd[f"layers.{i}.weight"].T
            if m.bias:
                z = z + sd[f"layers.{i}.bias"]
            if m.norm == "layer":
                z = F.layer_norm(z, (z.shape[-1],), sd[f"norms.{i}.weight"],
                                 sd[f"norms.{i}.bias"], m.eps)
            elif m.norm == "batch":
                z = (z - sd[f"norms.{i}.running_mean"]) / torch.sqrt(
                    sd[f"norms.{i}.running_var"] + m.eps) * sd[f"norms.{i}.weight"] \
                    + sd[f"norms.{i}.bias"]
            fz = act(z)
            a = a + m.residual_scale * fz if m.residual[i] else fz
        y = a @ sd[f"layers.{L}.weight"].T
        return y + sd[f"layers.{L}.bias"] if m.bias else y

    return f


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "silu", "elu", "sigmoid"])
@pytest.mark.parametrize("variant", ["plain", "residual", "layer", "batch"])
def test_jacobian_matches_torch_jacrev(activation, variant):
    kw = {"plain": {}, "residual": {"residual": True},
          "layer": {"norm": "layer", "residual": True}, "batch": {"norm": "batch"}}[variant]
    m = small_model(activation, seed=3, sizes=(6, 9, 9, 9, 5), **kw)
    x = np.random.default_rng(1).normal(size=6)
    J = gc.jacobian(m, x)
    Jt = torch.func.jacrev(torch_module(m))(torch.tensor(x)).numpy()
    np.testing.assert_allclose(J, Jt, rtol=1e-10, atol=1e-12)


def test_partial_jacobians_and_shapes():
    m = small_model("tanh", sizes=(5, 7, 8, 6, 4))
    x = np.random.default_rng(2).normal(size=(1, 5))
    parts = gc.jacobian(m, x, at=[0, 1, 2, 3, 4])
    assert [parts[i].shape for i in range(5)] == [(5, 5), (7, 5), (8, 5), (6, 5), (4, 5)]
    np.testing.assert_array_equal(parts[0], np.eye(5))
    W_out = m.state_dict()["layers.3.weight"]
    np.testing.assert_allclose(W_out @ parts[3], parts[4], rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(gc.jacobian(m, x, at=4), parts[4])
    np.testing.assert_array_equal(gc.jacobian(m, x), parts[4])


def test_jvp_and_vjp_are_adjoint_and_batched():
    m = small_model("gelu", norm="layer", residual=True, sizes=(6, 8, 8, 8, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6))  # three inputs: rows r at sample r % 3
    lin = m.linearize(x)
    V = rng.normal(size=(6, 6))
    U = rng.normal(size=(6, 3))
    JV = lin.jvp(V)
    JtU = lin.vjp(U)
    for r in range(6):
        assert math.isclose(float(U[r] @ JV[r]), float(JtU[r] @ V[r]), rel_tol=1e-12,
                            abs_tol=1e-13)
        Jr = gc.jacobian(m, x[r % 3])
        np.testing.assert_allclose(JV[r], Jr @ V[r], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(JtU[r], Jr.T @ U[r], rtol=1e-12, atol=1e-13)
    dx, norms = lin.vjp(U, norms=True)
    np.testing.assert_array_equal(dx, JtU)
    np.testing.assert_allclose(norms[0], (JtU ** 2).sum(axis=1), rtol=1e-12)
    with pytest.raises(ValueError, match="multiple of the batch"):
        lin.jvp(V[:4])
    with pytest.raises(TypeError, match="float64"):
        lin.jvp(V.astype(np.float32))


def test_linearising_leaves_the_model_alone():
    m = small_model("tanh", norm="batch")
    m.train()
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(4, 5)), rng.normal(size=(4, 4))
    m.forward(x)
    before = m.state_dict(copy=True)
    with pytest.raises(ValueError, match="eval"):
        gc.jacobian(m, x[0])
    with pytest.raises(ValueError, match="eval"):
        m.probe(x)
    m.preactivations(x)  # training-mode statistics of the batch, never committed
    after = m.state_dict(copy=True)
    assert all(same(before[k], after[k]) for k in before)
    rep = m.backward(g)  # the saved forward pass is still the one backward goes through
    m2 = small_model("tanh", norm="batch")
    m2.train()
    m2.forward(x)
    assert same(rep.activation_grad_norms, m2.backward(g).activation_grad_norms)
    m.eval()
    lin = m.linearize(x)
    m.flat_parameters()[0] += 1.0
    with pytest.raises(gc.StateError, match="linearize"):
        lin.jvp(np.eye(5).repeat(4, axis=0)[:4])


def test_orthogonal_linear_network_is_an_isometry():
    m = gc.MLP([64] * 9, activation="identity", init="orthogonal", seed=0, dtype=np.float64)
    s = gc.jacobian_spectrum(m, np.ones(64)).singular_values
    np.testing.assert_allclose(s, 1.0, atol=1e-12)
    m32 = gc.MLP([64] * 9, activation="identity", init="orthogonal", seed=0)
    s32 = gc.jacobian_spectrum(m32, np.ones(64, np.float32)).singular_values
    np.testing.assert_allclose(s32, 1.0, atol=1e-5)


def fuss_catalan(L: int, k: int) -> float:
    """The k-th moment of the squared singular values of a product of L Gaussian
    matrices (variance 1/N, N -> inf): FC_L(k) = C((L+1)k, k) / (Lk + 1)."""
    return math.comb((L + 1) * k, k) / (L * k + 1)


@pytest.mark.parametrize("L", [1, 2, 4])
def test_gaussian_linear_network_has_fuss_catalan_moments(L):
    N = 400
    m1, m2, m3 = [], [], []
    for seed in range(3):
        m = gc.MLP([N] * (L + 1) + [N], activation="identity",
                   init=gc.init.normal(1.0, 0.0), seed=seed, dtype=np.float64)
        sp = gc.jacobian_spectrum(m, np.ones(N), at=L)
        m1.append(sp.moment(1))
        m2.append(sp.moment(2))
        m3.append(sp.moment(3))
    # finite-size corrections are O(L^2 / N) relative
    tol = 0.03 + 0.5 * L * L / N
    assert math.isclose(np.mean(m1), fuss_catalan(L, 1), rel_tol=0.02)
    assert math.isclose(np.mean(m2), fuss_catalan(L, 2), rel_tol=tol)
    assert math.isclose(np.mean(m3), fuss_catalan(L, 3), rel_tol=2 * tol)
    assert fuss_catalan(L, 2) == L + 1


def test_lanczos_finds_the_top_singular_values():
    m = gc.MLP([48] + [48] * 6 + [32], activation="tanh", init=gc.init.normal(1.3, 0.1),
               seed=2, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=48)
    exact = gc.jacobian_spectrum(m, x).singular_values
    lz = gc.jacobian_spectrum(m, x, k=5, method="lanczos", steps=48)
    np.testing.assert_allclose(lz.singular_values, exact[:5], rtol=1e-8)
    dens = gc.jacobian_spectrum(m, x, k=3, method="lanczos", steps=12, starts=4)
    nodes, w = dens.density
    assert nodes.size == 48 and math.isclose(w.sum(), 1.0, rel_tol=1e-12)
    # Gauss quadrature of each start's spectral measure is exact for low moments:
    # sum_i w_i theta_i^k = v^T (J^T J)^k v / |v|^2 (k < 2 * steps) for its start v
    one = gc.jacobian_spectrum(m, x, k=3, method="lanczos", steps=12, seed=5)
    v = np.random.default_rng(5).standard_normal(48)
    J = gc.jacobian(m, x)
    A = J.T @ J
    for k in (1, 2, 3):
        want = float(v @ np.linalg.matrix_power(A, k) @ v / (v @ v))
        assert math.isclose(one.moment(k), want, rel_tol=1e-8)
    with pytest.raises(ValueError, match="at"):
        gc.jacobian_spectrum(m, x, method="lanczos", at=3)
    with pytest.raises(ValueError, match="method"):
        gc.jacobian_spectrum(m, x, method="svd")


def test_jacobian_is_the_same_for_any_thread_count(restore_threads):
    m = gc.MLP([96] + [96] * 5 + [40], activation="tanh", norm="layer", residual=2,
               init="xavier_normal", seed=0)
    x = np.random.default_rng(0).normal(size=96).astype(np.float32)
    gc.set_num_threads(1)
    J1 = gc.jacobian(m, x)
    p1 = m.probe(np.tile(x, (3, 1)), n=5)
    gc.set_num_threads(2)
    J2 = gc.jacobian(m, x)
    p2 = m.probe(np.tile(x, (3, 1)), n=5)
    assert same(J1, J2) and same(p1.sq_norms, p2.sq_norms)


def test_float32_agrees_with_float64():
    m64 = small_model("silu", norm="layer", residual=True, sizes=(16, 32, 32, 32, 8))
    m32 = gc.MLP(m64.sizes, activation="silu", norm="layer", residual=True, seed=0)
    m32.load_state_dict(m64.state_dict())
    x = np.random.default_rng(0).normal(size=16)
    np.testing.assert_allclose(gc.jacobian(m32, x.astype(np.float32)), gc.jacobian(m64, x),
                               rtol=1e-4, atol=1e-5)


def test_custom_activation_jacobian():
    act = gc.Activation.custom(np.tanh, lambda z: 1 - np.tanh(z) ** 2, name="mytanh")
    mc = gc.MLP([5, 6, 6, 3], activation=act, init="xavier_normal", seed=4, dtype=np.float64,
                residual=True)
    mt = gc.MLP([5, 6, 6, 3], activation="tanh", init="xavier_normal", seed=4,
                dtype=np.float64, residual=True)
    x = np.random.default_rng(0).normal(size=5)
    np.testing.assert_allclose(gc.jacobian(mc, x), gc.jacobian(mt, x), rtol=1e-12)


def test_jacobian_bad_inputs():
    m = small_model()
    with pytest.raises(ValueError, match="one input"):
        gc.jacobian(m, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="shape"):
        gc.jacobian(m, np.zeros(4))
    with pytest.raises(TypeError, match="dtype"):
        gc.jacobian(m, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        gc.jacobian(m, np.full(5, np.nan))
    with pytest.raises(ValueError, match="0..4"):
        gc.jacobian(m, np.zeros(5), at=5)
    with pytest.raises(TypeError, match="at"):
        gc.jacobian(m, np.zeros(5), at="all")
    with pytest.raises(TypeError, match="model"):
        gc.jacobian("mlp", np.zeros(5))


# ------------------------------------------------------------------------------ RNN
def rnn_fd(rnn: gc.RNN, x: np.ndarray, t: int, h: float = 1e-6) -> np.ndarray:
    """d h_T / d h_t by central differences: run steps t+1..T from h_t +- h e_j."""
    hs = rnn.forward(x[:, None, :]) if t > 0 else None
    ht = np.zeros((1, rnn.hidden_size)) if t == 0 else hs[t - 1]
    cols = []
    for j in range(rnn.hidden_size):
        e = np.zeros_like(ht)
        e[0, j] = h
        hp = rnn.forward(x[t:, None, :], h0=ht + e)[-1, 0]
        hm = rnn.forward(x[t:, None, :], h0=ht - e)[-1, 0]
        cols.append((hp - hm) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_rnn_jacobian_matches_finite_differences(activation):
    rnn = gc.RNN(3, 6, activation=activation, init="orthogonal", output_size=2, seed=1,
                 dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(7, 3))
    Js = gc.jacobian(rnn, x, at=[0, 3, 6, 7])
    for t in (0, 3, 6):
        np.testing.assert_allclose(Js[t], rnn_fd(rnn, x, t), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(Js[7], np.eye(6))
    # the chain rule across the steps
    np.testing.assert_allclose(Js[3] @ gc.jacobian(rnn, x[:3], at=0), Js[0], rtol=1e-10,
                               atol=1e-12)
    sp = gc.jacobian_spectrum(rnn, x, at=[0, 6])
    assert set(sp) == {0, 6} and sp[0].shape == (6, 6)


def test_rnn_jacobian_leaves_the_model_alone():
    rnn = gc.RNN(3, 5, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 3))
    hs = rnn.forward(x)
    gc.jacobian(rnn, x[:, :1])
    rnn.probe(x, n=3)
    rep = rnn.backward(np.ones_like(hs))
    rnn2 = gc.RNN(3, 5, seed=0, dtype=np.float64)
    rnn2.forward(x)
    assert same(rep.timestep_grad_norms, rnn2.backward(np.ones_like(hs)).timestep_grad_norms)
    with pytest.raises(ValueError, match="one sequence"):
        gc.jacobian(rnn, x)


def test_every_isa_gives_the_same_jacobian_and_probes(restore_isa):
    m = gc.MLP([24, 40, 40, 40, 8], activation="gelu", norm="layer", residual=True,
               init="xavier_normal", seed=5, dtype=np.float64)
    x = np.random.default_rng(5).normal(size=(3, 24))
    out = {}
    for isa in gc.available_isas():
        gc.set_isa(isa)
        out[isa] = (gc.jacobian(m, x[0]), m.probe(x, n=3).sq_norms)
    first = next(iter(out.values()))
    for J, sq in out.values():
        np.testing.assert_allclose(J, first[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sq, first[1], rtol=1e-12)
