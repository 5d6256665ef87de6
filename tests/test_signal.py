"""Signal propagation, measured and predicted (issue 15, items 1, 2 and 4): the forward
q/c maps of gc.theory.propagate against width-1024 networks, the loss-independent probes
against explicit per-probe backward passes and against chi_1, the c-map's fixed point and
depth scale, and gc.theory.jacobian_moments against the exact linear cases and
measurement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradchain as gc
from gradchain import theory as T
from gradchain.linearize import ProbeReport


# ------------------------------------------------------------------ the pair expectation
def _relu_pair(qa, qb, c):
    """E[relu(u_a) relu(u_b)] in closed form (the arc-cosine kernel of degree 1)."""
    th = math.acos(max(-1.0, min(1.0, c)))
    return math.sqrt(qa * qb) / (2 * math.pi) * (math.sin(th) + (math.pi - th) * math.cos(th))


@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.5, 0.9, 0.999, 1 - 1e-9, 1.0])
def test_pair_expectation_is_exact_for_relu_and_identity(c):
    info = T._info("relu")
    for qa, qb in [(1.0, 1.0), (0.3, 2.5), (1e-4, 1e3)]:
        got = T._expect_pair(T._act_fn(info), qa, qb, c, info)
        assert math.isclose(got, _relu_pair(qa, qb, c), rel_tol=1e-10, abs_tol=1e-14)
    ident = T._info("identity")
    got = T._expect_pair(T._act_fn(ident), 0.7, 1.9, c, ident)
    assert math.isclose(got, c * math.sqrt(0.7 * 1.9), rel_tol=1e-10, abs_tol=1e-14)


def test_pair_expectation_tanh_against_a_fine_tensor_rule():
    info = T._info("tanh")
    z, w = np.polynomial.hermite_e.hermegauss(160)
    w = w / w.sum()
    for qa, qb, c in [(1.0, 1.0, 0.3), (0.5, 2.0, 0.8), (2.0, 2.0, -0.6)]:
        s = math.sqrt(1 - c * c)
        ua = math.sqrt(qa) * z[:, None]
        ub = math.sqrt(qb) * (c * z[:, None] + s * z[None, :])
        want = float((w[:, None] * w[None, :] * np.tanh(ua) * np.tanh(ub)).sum())
        got = T._expect_pair(T._act_fn(info), qa, qb, c, info)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    # at c = 1 the pair is one variable: E[tanh^2] = the q-map's expectation
    got = T._expect_pair(T._act_fn(info), 1.3, 1.3, 1.0, info)
    assert math.isclose(got, T.gaussian_expectation(lambda x: np.tanh(x) ** 2, 1.3),
                        rel_tol=1e-12)


# --------------------------------------------------------------- the c-map's fixed point
def test_correlation_fixed_point_in_both_phases():
    # ordered: c* = 1 and chi_c = chi_1 < 1
    cs, chic, xi = T.correlation_fixed_point("tanh", 1.0, 0.3)
    assert cs == 1.0 and math.isclose(chic, T.chi1("tanh", 1.0, 0.3), rel_tol=1e-12)
    assert xi == T.depth_scale("tanh", 1.0, 0.3)
    # chaotic: c* < 1 is a fixed point of the c-map and attracts (chi_c < 1)
    cs, chic, xi = T.correlation_fixed_point("tanh", 2.5, 0.3)
    assert 0 < cs < 1 and 0 < chic < 1 and xi > 0
    info = T._info("tanh")
    q = T.fixed_point("tanh", 2.5, 0.3)
    assert math.isclose(T._c_map(info, 6.25, 0.09, q, cs), cs, abs_tol=1e-9)
    # odd activation without bias: c* = 0
    cs0, _, _ = T.correlation_fixed_point("tanh", 2.5, 0.0)
    assert abs(cs0) < 1e-9
    # the correlation depth scale diverges towards the critical line from the chaotic side
    xis = [T.correlation_fixed_point("tanh", sw, 0.05)[2] for sw in (1.6, 1.3, 1.15)]
    assert xis[0] < xis[1] < xis[2]


# ------------------------------------------------------------------------------ propagate
@pytest.mark.parametrize("activation, sw, sb, bias", [
    ("tanh", 1.5, 0.3, True), ("tanh", 1.2, 0.0, False), ("tanh", 2.5, 0.1, True),
    ("relu", 1.4, 0.1, True), ("relu", math.sqrt(2), 0.0, False),
])
def test_propagation_agrees_with_the_maps_at_width_1024(activation, sw, sb, bias):
    """Three width-1024 networks (their samples share each layer's one draw of W and b, so
    one network's layer is off by about sqrt(2 / N) = 4.4% in q, 1/sqrt(N) in c whatever
    the batch): averaged over the networks, the maps agree to a few per cent. Relu has no
    restoring force on q (q_{l+1} = sigma_w^2 q_l / 2 + sigma_b^2), so its iterated q-map
    drifts from a finite network by a random walk: relu's q is checked one layer at a time
    (q_step), its c along the iterated map."""
    N, L = 1024, 8
    ratio_q, diff_c, step_q, step_c = [], [], [], []
    for seed in range(3):
        m = gc.MLP([N] * (L + 1) + [10], activation=activation,
                   init=gc.init.normal(sw, sb), bias=bias, seed=seed, dtype=np.float64)
        rng = np.random.default_rng(seed + 100)  # not the weights' stream
        base = rng.normal(size=(8, N))
        x = np.concatenate([base, 0.6 * base + 0.8 * rng.normal(size=(8, N))])  # c_0 ~ 0.6
        x *= np.tile(np.linspace(0.5, 2.0, 8), 2)[:, None]  # lengths differ, pairs alike
        pr = T.propagate(m, x, pairs=[(i, i + 8) for i in range(4)])
        assert pr.q.shape == (L, 16) and pr.c.shape == (L, 4)
        ratio_q.append(np.mean(pr.q / pr.q_predicted, axis=1))
        diff_c.append(np.mean(pr.c - pr.c_predicted, axis=1))
        step_q.append(np.mean(pr.q / pr.q_step, axis=1))
        step_c.append(np.mean(pr.c - pr.c_step, axis=1))
        # layer 1 is exact given x, up to the draw of W and b
        assert np.max(np.abs(pr.q[0] / pr.q_predicted[0] - 1)) < 5 * math.sqrt(2 / N)
    err_q = np.max(np.abs(np.mean(ratio_q, axis=0) - 1))
    err_c = np.max(np.abs(np.mean(diff_c, axis=0)))
    err_step = np.max(np.abs(np.mean(step_q, axis=0) - 1))
    assert err_c < 0.03 and np.max(np.abs(np.mean(step_c, axis=0))) < 0.02, pr.table()
    if activation == "tanh":
        assert err_q < 0.03, pr.table()
    assert err_step < 0.06, pr.table()
    assert math.isclose(pr.chi1, T.chi1(activation, sw, sb if bias else 0.0), rel_tol=1e-12)
    assert "xi_c" in pr.table() and pr.to_dict()["q"][0][0] == pr.q[0, 0]


def test_propagation_measures_what_the_model_computes():
    m = gc.MLP([16, 32, 32, 4], activation="tanh", init=gc.init.normal(1.5, 0.2), seed=0,
               dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(6, 16))
    z = m.preactivations(x)
    W0, b0 = m.state_dict()["layers.0.weight"], m.state_dict()["layers.0.bias"]
    np.testing.assert_allclose(z[0], x @ W0.T + b0, rtol=1e-13)
    W1, b1 = m.state_dict()["layers.1.weight"], m.state_dict()["layers.1.bias"]
    np.testing.assert_allclose(z[1], np.tanh(z[0]) @ W1.T + b1, rtol=1e-12)
    pr = T.propagate(m, x)
    np.testing.assert_allclose(pr.q[1], (z[1] ** 2).mean(axis=1), rtol=1e-12)
    a, b = pr.pairs[0]
    np.testing.assert_allclose(pr.c[0, 0], z[0][a] @ z[0][b] / np.linalg.norm(z[0][a])
                               / np.linalg.norm(z[0][b]), rtol=1e-12)
    # the maps start from the inputs' own statistics
    np.testing.assert_allclose(pr.q_predicted[0], 1.5 ** 2 * (x ** 2).mean(axis=1) + 0.04,
                               rtol=1e-12)


def test_propagate_refuses_models_outside_the_theory():
    x = np.zeros((2, 8), np.float32)
    for kw, match in [({"norm": "layer"}, "norm"), ({"residual": True}, "residual"),
                      ({"init": "xavier_normal"}, "normal")]:
        m = gc.MLP([8, 8, 8, 2], **kw)
        with pytest.raises(ValueError, match=match):
            T.propagate(m, x)
    with pytest.raises(TypeError, match="model"):
        T.propagate(gc.RNN(2, 4), np.zeros((3, 2, 2), np.float32))
    m = gc.MLP([8, 8, 2], init=gc.init.normal(1.0, 0.1))
    with pytest.raises(ValueError, match="pairs"):
        T.propagate(m, np.ones((2, 8), np.float32), pairs=[(0, 2)])
    with pytest.raises(TypeError, match="dtype"):
        T.propagate(m, np.ones((2, 8)))


# ---------------------------------------------------------------------------------- probes
def test_probe_equals_explicit_per_probe_backward_passes():
    m = gc.MLP([12, 20, 20, 20, 5], activation="tanh", norm="layer", residual=2,
               init="xavier_normal", seed=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(3, 12))
    p = m.probe(x, n=4, seed=7)
    assert isinstance(p, ProbeReport) and p.sq_norms.shape == (4, 4) and p.n == 4
    U = np.random.default_rng(7).standard_normal((4 * 3, 5)).reshape(4, 3, 5)
    for k in range(4):
        m.forward(x)
        rep = m.backward(U[k])
        np.testing.assert_allclose(p.sq_norms[k], rep.activation_grad_norms ** 2, rtol=1e-12)
        assert math.isclose(p.u_sq[k], float((U[k] ** 2).sum()), rel_tol=1e-14)
    f = p.sq_norms.mean(axis=0) / p.u_sq.mean()
    np.testing.assert_allclose(p.factor, f, rtol=1e-14)
    np.testing.assert_allclose(p.step_factor, f[:-1] / f[1:], rtol=1e-14)
    assert np.all(p.spread > 0) and "spread" in p.table() and p.to_dict()["n"] == 4


def test_probe_with_eval_batch_norm_equals_backward():
    m = gc.MLP([6, 10, 10, 3], norm="batch", seed=1, dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(5, 6))
    m.forward(x)  # some running statistics
    m.eval()
    p = m.probe(x, n=2, seed=3)
    U = np.random.default_rng(3).standard_normal((2 * 5, 3)).reshape(2, 5, 3)
    for k in range(2):
        m.forward(x)
        np.testing.assert_allclose(p.sq_norms[k], m.backward(U[k]).activation_grad_norms ** 2,
                                   rtol=1e-12)


@pytest.mark.parametrize("activation, sw, sb", [("tanh", 1.5, 0.1), ("tanh", 0.9, 0.2),
                                                ("relu", 1.3, 0.1)])
def test_probe_factor_per_layer_is_chi1(activation, sw, sb):
    N, L = 512, 24
    m = gc.MLP([N] * (L + 1) + [N], activation=activation, init=gc.init.normal(sw, sb),
               seed=0)
    q = T.fixed_point(activation, sw, sb)
    x = np.random.default_rng(0).normal(size=(4, N)) * math.sqrt(max(q - sb * sb, 1e-6)) / sw
    p = m.probe(x.astype(np.float32), n=8)
    chi = T.chi1(activation, sw, sb)
    assert math.isclose(p.chi1_measured(skip=(1, 1)), chi, rel_tol=0.03)
    cmp = T.compare(p, model=m, skip=(1, 1))
    assert abs(cmp.relative_error) < 0.03
    assert 0.95 < float(np.median(p.step_factor[1:-1])) / chi < 1.05


def test_probe_rnn_per_step():
    rnn = gc.RNN(2, 64, init="orthogonal", output_size=1, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(10, 4, 2))
    p = rnn.probe(x, n=3, seed=1)
    assert p.axis == "timestep" and p.sq_norms.shape == (3, 10) and p.labels[0] == "h1"
    U = np.random.default_rng(1).standard_normal((3 * 4, 1)).reshape(3, 4, 1)
    for k in range(3):
        rnn.forward(x)
        g = np.zeros((10, 4, 1))
        g[-1] = U[k]
        rep = rnn.backward(grad_ys=g)
        np.testing.assert_allclose(p.sq_norms[k], rep.timestep_grad_norms ** 2, rtol=1e-12)


def test_probe_bad_inputs():
    m = gc.MLP([4, 4, 2])
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="n"):
        m.probe(x, n=0)
    with pytest.raises(TypeError, match="n"):
        m.probe(x, n=2.5)
    with pytest.raises(ValueError, match="seed"):
        m.probe(x, seed=-1)
    with pytest.raises(ValueError, match="shape"):
        m.probe(np.zeros((3, 5), np.float32))


# ------------------------------------------------------------------ spectrum moments theory
def test_jacobian_moments_exact_linear_cases():
    for L in (1, 4, 16):
        mean, var = T.jacobian_moments("identity", 1.0, 0.0, L, "gaussian")
        assert math.isclose(mean, 1.0, rel_tol=1e-13) and math.isclose(var, L, rel_tol=1e-12)
        mean, var = T.jacobian_moments("identity", 1.0, 0.0, L, "orthogonal")
        assert math.isclose(mean, 1.0, rel_tol=1e-13) and abs(var) < 1e-12
    mean, var = T.jacobian_moments("identity", 1.2, 0.0, 3)
    assert math.isclose(mean, 1.44 ** 3) and math.isclose(var, 3 * mean * mean)
    with pytest.raises(ValueError, match="weights"):
        T.jacobian_moments("tanh", 1.0, 0.0, 3, "uniform")
    with pytest.raises(ValueError, match="depth"):
        T.jacobian_moments("tanh", 1.0, 0.0, 0)


@pytest.mark.parametrize("weights", ["gaussian", "orthogonal"])
def test_jacobian_moments_against_measurement(weights):
    """tanh near criticality with small q*: measured mean and variance of s^2 of
    da_L/dx at width 400, inputs at q*, against the free-probability prediction."""
    sb, L, N = 0.05, 8, 400
    sw = _critical_sigma_w("tanh", sb)
    mean, var = T.jacobian_moments("tanh", sw, sb, L, weights)
    assert math.isclose(mean, T.chi1("tanh", sw, sb) ** L, rel_tol=1e-9)
    q = T.fixed_point("tanh", sw, sb)
    got_m, got_v = [], []
    for seed in range(3):
        init = gc.init.normal(sw, sb) if weights == "gaussian" else gc.init.orthogonal(sw)
        m = gc.MLP([N] * (L + 1) + [N], activation="tanh", init=init, seed=seed,
                   dtype=np.float64)
        if weights == "orthogonal":
            rng = np.random.default_rng(seed)
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p[...] = rng.normal(0, sb, p.shape)
        x = np.random.default_rng(seed + 10).normal(size=N) * math.sqrt(q - sb * sb) / sw
        sp = gc.jacobian_spectrum(m, x, at=L)
        got_m.append(sp.mean_sq)
        got_v.append(sp.var_sq)
    assert math.isclose(np.mean(got_m), mean, rel_tol=0.05)
    assert math.isclose(np.mean(got_v), var, rel_tol=0.25, abs_tol=0.02)


def _critical_sigma_w(activation: str, sigma_b: float) -> float:
    lo, hi = 0.5, 3.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if T.chi1(activation, mid, sigma_b) < 1.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- the CLI
def test_cli_probe_forward_table_and_json(capsys):
    from gradchain import cli

    assert cli.main(["probe", "--depth", "6", "--width", "64", "--batch", "8", "--sigma-w",
                     "1.5", "--sigma-b", "0.3", "--forward"]) == 0
    out = capsys.readouterr().out
    assert "signal propagation: tanh, sigma_w=1.5" in out and "q predicted" in out
    assert "xi_c" in out and out.count("\n") > 12
    assert cli.main(["probe", "--depth", "4", "--width", "16", "--batch", "4", "--init",
                     "orthogonal", "--forward", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["forward"]["q"]) == 4 and data["forward"]["sigma_b"] == 0.0


MLP_SMALL = ["--depth", "3", "--width", "8"]


@pytest.mark.parametrize("args, match", [
    ([*MLP_SMALL, "--forward"], "normal"),                      # torch_default init
    ([*MLP_SMALL, "--forward", "--sigma-w", "1.0", "--norm", "layer"], "norm"),
    (["--model", "rnn", "--steps", "5", "--hidden", "4", "--forward"], "--forward"),
])
def test_cli_probe_forward_refuses_before_any_work(capsys, args, match):
    from gradchain import cli

    assert cli.main(["probe", *args]) == 2
    cap = capsys.readouterr()
    assert match in cap.err and cap.err.strip().count("\n") == 0 and cap.out == ""


@pytest.mark.parametrize("model", [["--depth", "4", "--width", "16", "--norm", "batch"],
                                   ["--model", "rnn", "--steps", "12", "--hidden", "16"]])
def test_cli_probe_spectrum_png(capsys, tmp_path, model):
    pytest.importorskip("matplotlib")
    from gradchain import cli

    png = tmp_path / "s.png"
    assert cli.main(["probe", "--batch", "4", *model, "--spectrum", str(png)]) == 0
    assert f"spectrum written to {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    m = gc.MLP([16, 32, 32, 32, 16], init=gc.init.normal(1.3, 0.1), seed=0)
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    T.propagate(m, x).plot(path=tmp_path / "qc.png")
    gc.jacobian_spectrum(m, x[0]).plot(path=tmp_path / "s.png")
    gc.spectrum.plot_spectra(gc.jacobian_spectrum(m, x[0], at=[1, 3]), path=tmp_path / "d.png")
    for name in ("qc.png", "s.png", "d.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    pd = T.phase_diagram("tanh", np.linspace(0.8, 2.0, 5), np.linspace(0.0, 0.5, 4))
    deep = gc.MLP([16] + [32] * 10 + [16], init=gc.init.normal(1.3, 0.1), seed=0)
    pd.plot(path=tmp_path / "pd.png", measured=[(1.3, 0.1, deep.probe(x, n=4))])
    with pytest.raises(ValueError, match="bins"):
        gc.spectrum.plot_spectra([gc.jacobian_spectrum(m, x[0])], bins=0)
