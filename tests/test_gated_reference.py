"""The NumPy reference of the gated cells (reference.lstm_forward / lstm_backward,
gru_forward / gru_backward) against central finite differences (float64) and, where
torch is installed, against torch.nn.LSTM / torch.nn.GRU loading the same weights:
hidden and cell states, every parameter gradient, dL/dx, dL/dh0, dL/dc0 and the total
dL/dh_t, dL/dc_t of the report (through retain_grad on an unrolled torch cell)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradchain import reference as ref

FD_STEP = 1e-6
RTOL = 1e-6


def numeric_grad(loss, arr: np.ndarray) -> np.ndarray:
    """Central differences of ``loss()`` w.r.t. every element of ``arr`` (in place, restored)."""
    grad = np.zeros_like(arr, dtype=np.float64)
    flat = arr.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + FD_STEP
        f_plus = loss()
        flat[i] = saved - FD_STEP
        f_minus = loss()
        flat[i] = saved
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * FD_STEP)
    return grad


def close(analytic, numeric, what: str, rtol: float = RTOL) -> None:
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    assert analytic.shape == numeric.shape, (what, analytic.shape, numeric.shape)
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what}: analytic gradient != finite differences")


def random_params(rng, cell: str, I_: int, H: int, K: int | None, bias: bool,
                  scale: float = 0.6) -> dict[str, np.ndarray]:
    G = 4 if cell == "lstm" else 3
    p = {"weight_ih_l0": rng.normal(0, scale, (G * H, I_)),
         "weight_hh_l0": rng.normal(0, scale, (G * H, H))}
    if bias:
        p["bias_ih_l0"] = rng.normal(0, scale, G * H)
        p["bias_hh_l0"] = rng.normal(0, scale, G * H)
    if K:
        p["readout.weight"] = rng.normal(0, scale, (K, H))
        if bias:
            p["readout.bias"] = rng.normal(0, scale, K)
    return p


def run(cell, params, x, h0, c0, gh, gy):
    if cell == "lstm":
        hs, cache = ref.lstm_forward(params, x, h0, c0)
        grads, dx, dh0, dc0, rep = ref.lstm_backward(cache, gh, gy)
    else:
        hs, cache = ref.gru_forward(params, x, h0)
        grads, dx, dh0, rep = ref.gru_backward(cache, gh, gy)
        dc0 = None
    return hs, cache, grads, dx, dh0, dc0, rep


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(["lstm", "gru"]))
    K = draw(st.one_of(st.none(), st.integers(1, 3)))
    return {"cell": cell, "T": draw(st.integers(1, 5)), "B": draw(st.integers(1, 3)),
            "I": draw(st.integers(1, 3)), "H": draw(st.integers(1, 4)), "K": K,
            "bias": draw(st.booleans()), "h0": draw(st.booleans()),
            "c0": cell == "lstm" and draw(st.booleans()),
            "grads": draw(st.sampled_from(["hs", "ys", "both"] if K else ["hs"])),
            "seed": draw(st.integers(0, 2**16))}


@given(configs())
def test_gated_gradients_match_finite_differences(cfg):
    """L = sum(hs * gh) + sum(ys * gy): every parameter, x, h0 and c0 gradient of the
    reference against central differences of L; and the report's total dL/dh_t (dL/dc_t)
    against the differences of L with respect to a perturbation added to h_t (c_t)."""
    rng = np.random.default_rng(cfg["seed"])
    cell, T, B, I_, H, K = cfg["cell"], cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["K"]
    params = random_params(rng, cell, I_, H, K, cfg["bias"])
    x = rng.normal(size=(T, B, I_))
    h0 = rng.normal(size=(B, H)) if cfg["h0"] else np.zeros((B, H))
    c0 = rng.normal(size=(B, H)) if cfg["c0"] else np.zeros((B, H))
    gh = rng.normal(size=(T, B, H)) if cfg["grads"] in ("hs", "both") else None
    gy = rng.normal(size=(T, B, K)) if cfg["grads"] in ("ys", "both") else None

    def loss() -> float:
        hs, cache = (ref.lstm_forward(params, x, h0, c0) if cell == "lstm"
                     else ref.gru_forward(params, x, h0))
        v = 0.0
        if gh is not None:
            v += float(np.sum(hs * gh))
        if gy is not None:
            v += float(np.sum(cache["ys"] * gy))
        return v

    _, _, grads, dx, dh0, dc0, rep = run(cell, params, x, h0, c0, gh, gy)
    for k, p in params.items():
        close(grads[k], numeric_grad(loss, p), k)
    close(dx, numeric_grad(loss, x), "dx")
    close(dh0, numeric_grad(loss, h0), "dh0")
    if cell == "lstm":
        close(dc0, numeric_grad(loss, c0), "dc0")
        assert math.isclose(rep["c0_grad_norm"], np.linalg.norm(dc0), rel_tol=1e-12)
    assert math.isclose(rep["h0_grad_norm"], np.linalg.norm(dh0), rel_tol=1e-12,
                        abs_tol=1e-300)

    # the total derivatives of the report: L as a function of h_t (c_t) with the
    # sequence restarted from step t (the state at t fully determines what follows)
    hs, cache = (ref.lstm_forward(params, x, h0, c0) if cell == "lstm"
                 else ref.gru_forward(params, x, h0))
    direct = np.zeros((T, B, H)) if gh is None else gh

    def tail_loss(t: int, h_t: np.ndarray, c_t: np.ndarray | None) -> float:
        v = float(np.sum(h_t * direct[t]))
        if gy is not None:
            y_t = h_t @ params["readout.weight"].T
            if "readout.bias" in params:
                y_t = y_t + params["readout.bias"]
            v += float(np.sum(y_t * gy[t]))
        if t + 1 < T:
            if cell == "lstm":
                hs2, c2 = ref.lstm_forward(params, x[t + 1:], h_t, c_t)
            else:
                hs2, c2 = ref.gru_forward(params, x[t + 1:], h_t)
            if gh is not None:
                v += float(np.sum(hs2 * gh[t + 1:]))
            if gy is not None:
                v += float(np.sum(c2["ys"] * gy[t + 1:]))
        return v

    for t in range(T):
        h_t = hs[t].copy()
        c_t = cache["cs"][t].copy() if cell == "lstm" else None
        dh = numeric_grad(lambda t=t, h_t=h_t, c_t=c_t: tail_loss(t, h_t, c_t), h_t)
        assert math.isclose(rep["timestep_grad_norms"][t], np.linalg.norm(dh), rel_tol=1e-5,
                            abs_tol=1e-7), t
        if cell == "lstm":  # c_t reaches the loss through h_t = o_t tanh(c_t) and c_{t+1}
            o_t = cache["gates"][t][:, 3 * H:]
            dc = numeric_grad(lambda t=t, o_t=o_t, c_t=c_t: tail_loss(t, o_t * np.tanh(c_t),
                                                                      c_t), c_t)
            assert math.isclose(rep["cell_grad_norms"][t], np.linalg.norm(dc), rel_tol=1e-5,
                                abs_tol=1e-7), t
    # per gate block: the blocks of a tensor make up its norm
    for name, key in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh")):
        blocks = rep[f"{key}_gate_grad_norms"]
        G = 4 if cell == "lstm" else 3
        assert blocks.shape == (G,)
        assert math.isclose(float(np.sqrt(np.sum(blocks**2))), rep[f"{key}_grad_norm"],
                            rel_tol=1e-12, abs_tol=1e-300)
        for k in range(G):
            assert math.isclose(blocks[k], np.linalg.norm(grads[name][k * H:(k + 1) * H]),
                                rel_tol=1e-12, abs_tol=1e-300)


def test_gate_statistics_by_hand():
    """gate_means is the mean gate value, gate_saturation the fraction of units whose
    derivative is below 1e-3 of its maximum, per gate and step (an LSTM and a GRU with
    large weights, so that some units saturate and some do not)."""
    rng = np.random.default_rng(3)
    for cell, G in (("lstm", 4), ("gru", 3)):
        params = random_params(rng, cell, 3, 5, None, True, scale=4.0)
        x = rng.normal(size=(6, 7, 3))
        hs, cache, grads, dx, dh0, dc0, rep = run(cell, params, x, None, None,
                                                  rng.normal(size=(6, 7, 5)), None)
        assert rep["gate_means"].shape == (G, 6) and rep["gate_saturation"].shape == (G, 6)
        z = cache["pre"]
        for k in range(G):
            zk = z[:, :, k * 5:(k + 1) * 5]
            tanh_gate = (cell == "lstm" and k == 2) or (cell == "gru" and k == 2)
            if tanh_gate:
                a = np.tanh(zk)
                d, top = 1 - a**2, 1.0
            else:
                a = 1 / (1 + np.exp(-zk))
                d, top = a * (1 - a), 0.25
            np.testing.assert_allclose(rep["gate_means"][k], a.mean(axis=(1, 2)), rtol=1e-12)
            np.testing.assert_array_equal(rep["gate_saturation"][k],
                                          (d < 1e-3 * top).mean(axis=(1, 2)))
        assert 0 < rep["gate_saturation"].mean() < 1


def test_validation():
    rng = np.random.default_rng(0)
    p = random_params(rng, "lstm", 2, 3, None, True)
    x = rng.normal(size=(4, 2, 2))
    with pytest.raises(ValueError, match="weight_ih_l0 must be"):
        ref.lstm_forward({**p, "weight_ih_l0": p["weight_ih_l0"][:5]}, x)
    with pytest.raises(ValueError, match="weight_hh_l0 must have shape"):
        ref.gru_forward(p, x)  # 4H rows are not 3H
    with pytest.raises(ValueError, match="c0 must have shape"):
        ref.lstm_forward(p, x, c0=np.zeros((3, 3)))
    with pytest.raises(TypeError, match="no implicit casts"):
        ref.lstm_forward(p, x.astype(np.float32))


# ------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("states", [False, True])
def test_reference_matches_torch(cell, bias, states):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    T, B, I_, H = 7, 3, 4, 5
    params = random_params(rng, cell, I_, H, None, bias)
    x = rng.normal(size=(T, B, I_))
    h0 = rng.normal(size=(B, H)) if states else None
    c0 = rng.normal(size=(B, H)) if states and cell == "lstm" else None
    gh = rng.normal(size=(T, B, H))
    hs, cache, grads, dx, dh0, dc0, rep = run(cell, params, x, h0, c0, gh, None)

    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I_, H, bias=bias).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0 if h0 is not None else np.zeros((B, H)))[None]
    h0t.requires_grad_(True)
    if cell == "lstm":
        c0t = torch.from_numpy(c0 if c0 is not None else np.zeros((B, H)))[None]
        c0t.requires_grad_(True)
        out, (hn, cn) = mod(xt, (h0t, c0t))
    else:
        out, hn = mod(xt, h0t)
    out.backward(torch.from_numpy(gh))
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for k, p in mod.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=k)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, h0t.grad.numpy()[0], rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(cache["cs"][-1], cn.detach().numpy()[0], rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(dc0, c0t.grad.numpy()[0], rtol=1e-10, atol=1e-12)

    # the total dL/dh_t (and dL/dc_t): torch's cells unrolled with retain_grad
    cellmod = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(I_, H, bias=bias)
    cellmod = cellmod.double()
    cellmod.load_state_dict({k[:-3]: torch.from_numpy(v) for k, v in params.items()})
    h = torch.from_numpy(h0 if h0 is not None else np.zeros((B, H)))
    c = torch.from_numpy(c0 if c0 is not None else np.zeros((B, H)))
    keep_h, keep_c, outs = [], [], []
    for t in range(T):
        if cell == "lstm":
            h, c = cellmod(torch.from_numpy(x[t]), (h, c))
            c.retain_grad()
            keep_c.append(c)
        else:
            h = cellmod(torch.from_numpy(x[t]), h)
        h.retain_grad()
        keep_h.append(h)
        outs.append(h)
    torch.stack(outs).backward(torch.from_numpy(gh))
    np.testing.assert_allclose(rep["timestep_grad_norms"],
                               [float(v.grad.norm()) for v in keep_h], rtol=1e-10)
    if cell == "lstm":
        np.testing.assert_allclose(rep["cell_grad_norms"],
                                   [float(v.grad.norm()) for v in keep_c], rtol=1e-10)
