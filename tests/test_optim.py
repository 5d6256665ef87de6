"""gc.optim (SGD, Adam, AdamW) against torch.optim (where installed) and against a
small textbook NumPy implementation written here (so CI without torch still checks
the maths): the same parameters, the same gradients, N steps, every option.
Tolerances, scaled by each tensor's magnitude: vs torch 1e-6 (float32) / 1e-12
(float64); vs the float64 NumPy reference 1e-5 (float32) / 1e-12 (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradchain as gc
from conftest import assert_close, same

TORCH_TOL = {np.float32: 1e-6, np.float64: 1e-12}
REF_TOL = {np.float32: 1e-5, np.float64: 1e-12}

CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01, "maximize": True}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05,
             "maximize": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "maximize": True}),
    ("Adam", {"lr": 0.02, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.05,
              "amsgrad": True, "maximize": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "betas": (0.8, 0.99), "maximize": True}),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}"
            for name, kw in CASES]


def make_mlp(dtype, seed=0, norm="layer"):
    return gc.MLP([5, 7, 7, 3], activation="tanh", norm=norm, dtype=dtype, seed=seed)


def grad_sequence(model, n_steps, seed=1):
    """Gradients for n_steps: the model's own loss_and_grad on random data at its
    initial parameters, scaled differently each step (copies, parameter order)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        x = rng.normal(size=(8, model.sizes[0])).astype(model.dtype)
        t = rng.normal(size=(8, model.sizes[-1])).astype(model.dtype)
        model.loss_and_grad(x, t)
        scale = model.dtype.type(10.0 ** rng.uniform(-1, 1))
        out.append([g.copy() * scale for _, g in model.named_grads()])
    return out


def set_grads(model, grads):
    for (_, g), src in zip(model.named_grads(), grads, strict=True):
        g[...] = src


def run_ours(model, name, kw, grads_seq):
    opt = getattr(gc.optim, name)(model, **kw)
    for grads in grads_seq:
        set_grads(model, grads)
        opt.step()
    return opt


# ----------------------------------------------------------------------------- NumPy reference
def ref_steps(params, grads_seq, name, kw):
    """Textbook formulas (torch.optim's documentation), float64, per tensor."""
    p = [np.array(a, dtype=np.float64) for a in params]
    lr = kw.get("lr", 1e-3)
    if name == "SGD":
        mom, damp = kw.get("momentum", 0.0), kw.get("dampening", 0.0)
        wd, nest, maxi = kw.get("weight_decay", 0.0), kw.get("nesterov", False), \
            kw.get("maximize", False)
        bufs = None
        for grads in grads_seq:
            new_bufs = []
            for i, g0 in enumerate(grads):
                g = -np.float64(g0) if maxi else np.float64(g0)
                g = g + wd * p[i]
                if mom:
                    b = g.copy() if bufs is None else mom * bufs[i] + (1 - damp) * g
                    new_bufs.append(b)
                    g = g + mom * b if nest else b
                p[i] = p[i] - lr * g
            bufs = new_bufs if mom else None
        return p
    b1, b2 = kw.get("betas", (0.9, 0.999))
    eps, ams, maxi = kw.get("eps", 1e-8), kw.get("amsgrad", False), kw.get("maximize", False)
    wd = kw.get("weight_decay", 1e-2 if name == "AdamW" else 0.0)
    m = [np.zeros_like(a) for a in p]
    v = [np.zeros_like(a) for a in p]
    vmax = [np.zeros_like(a) for a in p]
    for t, grads in enumerate(grads_seq, start=1):
        for i, g0 in enumerate(grads):
            g = -np.float64(g0) if maxi else np.float64(g0)
            if name == "AdamW":
                p[i] = p[i] * (1 - lr * wd)
            else:
                g = g + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            vmax[i] = np.maximum(vmax[i], v[i])
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = (vmax[i] if ams else v[i]) / (1 - b2 ** t)
            p[i] = p[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_matches_numpy_reference(name, kw, dtype):
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 8)
    p0 = [p.copy() for _, p in model.named_parameters()]
    run_ours(model, name, kw, grads_seq)
    expect = ref_steps(p0, grads_seq, name, kw)
    for (pname, p), e in zip(model.named_parameters(), expect, strict=True):
        assert p.dtype == dtype
        assert_close(f"{name} {kw} {pname}", p, e, REF_TOL[dtype], floor=1e-3)


@given(sgd=st.booleans(), lr=st.floats(0.0, 0.5), momentum=st.sampled_from([0.0, 0.3, 0.9]),
       dampening=st.sampled_from([0.0, 0.5]), wd=st.sampled_from([0.0, 1e-3, 0.3]),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       betas=st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999)),
       eps=st.sampled_from([0.0, 1e-8, 1e-2]), seed=st.integers(0, 2**16))
def test_random_options_match_numpy_reference(sgd, lr, momentum, dampening, wd, flags, betas,
                                              eps, seed):
    nesterov, maximize, amsgrad = flags
    if sgd:
        nesterov = nesterov and momentum > 0 and dampening == 0
        name, kw = "SGD", {"lr": lr, "momentum": momentum, "dampening": dampening,
                           "weight_decay": wd, "nesterov": nesterov, "maximize": maximize}
    else:
        name = "AdamW" if nesterov else "Adam"
        eps = max(eps, 1e-8)  # eps = 0 with a zero gradient is 0/0 in both
        kw = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd, "amsgrad": amsgrad,
              "maximize": maximize}
    model = make_mlp(np.float64, seed=seed)
    grads_seq = grad_sequence(model, 3, seed=seed)
    p0 = [p.copy() for _, p in model.named_parameters()]
    run_ours(model, name, kw, grads_seq)
    expect = ref_steps(p0, grads_seq, name, kw)
    for (pname, p), e in zip(model.named_parameters(), expect, strict=True):
        assert_close(f"{name} {kw} {pname}", p, e, 1e-11, floor=1e-3)


# ----------------------------------------------------------------------------- vs torch
def torch_params(model, torch):
    return [torch.nn.Parameter(torch.tensor(p.copy())) for _, p in model.named_parameters()]


def torch_opt(torch, name, params, kw):
    return getattr(torch.optim, name)(params, **kw)


def step_both(torch, model, opt, tp, topt, grads_seq):
    """Give ours and torch's optimiser the same gradients, one step each per entry."""
    for grads in grads_seq:
        set_grads(model, grads)
        for q, g in zip(tp, grads, strict=True):
            q.grad = torch.tensor(g)
        opt.step()
        topt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_matches_torch(name, kw, dtype):
    torch = pytest.importorskip("torch")
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 10)
    tp = torch_params(model, torch)
    topt = torch_opt(torch, name, tp, kw)
    opt = getattr(gc.optim, name)(model, **kw)
    step_both(torch, model, opt, tp, topt, grads_seq)
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        assert_close(f"{name} {kw} {pname}", p, q.detach().numpy(), TORCH_TOL[dtype],
                     floor=1e-3)
    # the state as well (moments / momentum buffers), and the same state_dict layout
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for i, entry in theirs["state"].items():
        assert set(entry) == set(ours["state"][i]), (entry.keys(), ours["state"][i].keys())
        for k, v in entry.items():
            assert_close(f"state {i} {k}", np.asarray(ours["state"][i][k]), v.numpy(),
                         TORCH_TOL[dtype] * 10, floor=1e-30)
    for k in ours["param_groups"][0]:
        if k != "params":
            assert ours["param_groups"][0][k] == theirs["param_groups"][0][k], k


def test_rnn_matches_torch():
    torch = pytest.importorskip("torch")
    model = gc.RNN(3, 6, output_size=2, dtype=np.float64, seed=3)
    rng = np.random.default_rng(0)
    tp = torch_params(model, torch)
    kw = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}
    opt, topt = gc.optim.AdamW(model, **kw), torch.optim.AdamW(tp, **kw)
    for _ in range(6):
        x = rng.normal(size=(5, 4, 3))
        model.loss_and_grad(x, rng.normal(size=(4, 2)))
        for q, (_, g) in zip(tp, model.named_grads(), strict=True):
            q.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        assert_close(pname, p, q.detach().numpy(), 1e-12, floor=1e-3)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_nonfinite_gradient_propagates_as_torch(name):
    torch = pytest.importorskip("torch")
    model = make_mlp(np.float64)
    kw = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.1, "amsgrad": True}
    grads = grad_sequence(model, 2)
    grads[1][0][1, 2] = np.nan
    grads[1][2][3, 0] = np.inf
    tp = torch_params(model, torch)
    topt, opt = torch_opt(torch, name, tp, kw), getattr(gc.optim, name)(model, **kw)
    step_both(torch, model, opt, tp, topt, grads)
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        theirs = q.detach().numpy()
        np.testing.assert_array_equal(np.isnan(p), np.isnan(theirs), err_msg=pname)
        np.testing.assert_array_equal(np.isinf(p), np.isinf(theirs), err_msg=pname)
        ok = np.isfinite(theirs)
        assert_close(pname, p[ok], theirs[ok], 1e-12, floor=1e-3)
    assert np.isnan(model.named_parameters()[0][1][1, 2])


def test_nonfinite_gradient_without_torch_is_silent_and_local():
    model = make_mlp(np.float32, norm=None)
    opt = gc.optim.SGD(model, lr=0.1)
    grads = grad_sequence(model, 1)[0]
    grads[0][0, 0] = np.nan
    set_grads(model, grads)
    before = model.named_parameters()[0][1].copy()
    opt.step()  # no warning (pytest turns warnings into errors)
    w = model.named_parameters()[0][1]
    assert np.isnan(w[0, 0])
    expect = before - np.float32(0.1) * grads[0]
    np.testing.assert_array_equal(w.ravel()[1:], expect.ravel()[1:])


def test_torch_state_dict_loads_and_continues_identically():
    torch = pytest.importorskip("torch")
    for name, kw in [("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
                     ("Adam", {"lr": 0.01, "amsgrad": True}), ("AdamW", {"lr": 0.01})]:
        model = make_mlp(np.float64)
        grads_seq = grad_sequence(model, 6)
        tp = torch_params(model, torch)
        topt = torch_opt(torch, name, tp, kw)
        for gs in grads_seq[:3]:
            for q, g in zip(tp, gs, strict=True):
                q.grad = torch.tensor(g)
            topt.step()
        # ours takes over from torch's parameters and optimizer state
        model.load_state_dict({k: q.detach().numpy() for (k, _), q in
                               zip(model.named_parameters(), tp, strict=True)})
        opt = getattr(gc.optim, name)(model, **kw)
        opt.load_state_dict(topt.state_dict())
        step_both(torch, model, opt, tp, topt, grads_seq[3:])
        for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
            assert_close(f"{name} {pname}", p, q.detach().numpy(), 1e-12, floor=1e-3)


@pytest.mark.parametrize(("name", "kw"), [
    ("SGD", {"lr": -0.1}), ("SGD", {"momentum": -0.5}), ("SGD", {"weight_decay": -1e-4}),
    ("SGD", {"nesterov": True}), ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("Adam", {"lr": -1e-3}), ("Adam", {"betas": (1.0, 0.999)}), ("Adam", {"betas": (0.9, 1.0)}),
    ("Adam", {"betas": (-0.1, 0.999)}), ("Adam", {"eps": -1e-8}),
    ("Adam", {"weight_decay": -0.1}), ("AdamW", {"lr": -1.0}), ("AdamW", {"weight_decay": -0.1}),
    ("AdamW", {"betas": (0.9, 1.5)}),
])
def test_argument_checks_match_torch(name, kw):
    model = make_mlp(np.float32)
    with pytest.raises(ValueError, match=next(iter(kw)).split("_")[0]):
        getattr(gc.optim, name)(model, **kw)
    try:
        import torch
    except ImportError:
        return
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], **kw)


@pytest.mark.parametrize(("name", "kw", "exc"), [
    ("SGD", {"lr": "0.1"}, TypeError), ("SGD", {"lr": True}, TypeError),
    ("SGD", {"lr": float("nan")}, ValueError), ("SGD", {"momentum": None}, TypeError),
    ("SGD", {"nesterov": 1}, TypeError), ("SGD", {"maximize": "yes"}, TypeError),
    ("Adam", {"betas": 0.9}, TypeError), ("Adam", {"betas": (0.9,)}, ValueError),
    ("Adam", {"betas": (0.9, 0.99, 0.9)}, ValueError), ("Adam", {"amsgrad": None}, TypeError),
    ("AdamW", {"eps": float("nan")}, ValueError),
])
def test_bad_argument_types(name, kw, exc):
    with pytest.raises(exc):
        getattr(gc.optim, name)(make_mlp(np.float32), **kw)


@pytest.mark.parametrize("bad", [None, object(), np.zeros(3), "mlp"])
def test_model_must_be_a_gradchain_model(bad):
    for cls in (gc.optim.SGD, gc.optim.Adam, gc.optim.AdamW):
        with pytest.raises(TypeError, match="model"):
            cls(bad)


def test_defaults_are_torchs():
    model = make_mlp(np.float32)
    sgd, adam, adamw = gc.optim.SGD(model), gc.optim.Adam(model), gc.optim.AdamW(model)
    assert sgd.defaults == {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                            "nesterov": False, "maximize": False}
    assert adam.defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                             "weight_decay": 0.0, "amsgrad": False, "maximize": False,
                             "decoupled_weight_decay": False}
    assert adamw.defaults["weight_decay"] == 1e-2
    assert adamw.defaults["decoupled_weight_decay"] is True
    try:
        import torch
    except ImportError:
        return
    t = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    tw = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    for k, v in adam.defaults.items():
        assert t.defaults[k] == v, k
    for k, v in adamw.defaults.items():
        assert tw.defaults[k] == v, k


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize(("name", "kw"), [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.2}), ("SGD", {"lr": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}), ("AdamW", {"lr": 0.01, "weight_decay": 0.3}),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_continues_identically(name, kw, dtype):
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 7)
    opt = run_ours(model, name, kw, grads_seq[:4])
    sd = opt.state_dict()
    msd = {k: v.copy() for k, v in model.state_dict().items()}
    for gs in grads_seq[4:]:
        set_grads(model, gs)
        opt.step()
    want = [p.copy() for _, p in model.named_parameters()]
    # a fresh model and optimizer, restored from the checkpoint
    model2 = make_mlp(dtype, seed=99)
    model2.load_state_dict(msd)
    opt2 = getattr(gc.optim, name)(model2, lr=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.lr == kw["lr"]
    assert opt2.step_count == 4
    for gs in grads_seq[4:]:
        set_grads(model2, gs)
        opt2.step()
    for (pname, p), w in zip(model2.named_parameters(), want, strict=True):
        assert same(p, w), pname


def test_state_dict_is_a_snapshot_with_torch_layout():
    model = make_mlp(np.float32)
    opt = gc.optim.Adam(model, lr=0.01)
    assert opt.state_dict()["state"] == {}
    grads_seq = grad_sequence(model, 2)
    set_grads(model, grads_seq[0])
    opt.step()
    sd = opt.state_dict()
    n = len(model.named_parameters())
    assert sorted(sd["state"]) == list(range(n))
    assert sd["param_groups"][0]["params"] == list(range(n))
    for i, (_, p) in enumerate(model.named_parameters()):
        e = sd["state"][i]
        assert e["step"] == 1.0
        assert e["exp_avg"].shape == p.shape and e["exp_avg"].dtype == np.float32
        np.testing.assert_array_equal(e["exp_avg"], np.float32(0.1) * grads_seq[0][i])
    before = sd["state"][0]["exp_avg"].copy()
    set_grads(model, grads_seq[1])
    opt.step()
    assert same(sd["state"][0]["exp_avg"], before)  # a copy: the checkpoint did not move


@pytest.mark.parametrize("mutate", [
    lambda sd: sd.pop("state"),
    lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
    lambda sd: sd["param_groups"][0]["params"].pop(),
    lambda sd: sd["param_groups"][0].pop("betas"),
    lambda sd: sd["param_groups"][0].update(lr=-1.0),
    lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.0)),
    lambda sd: sd["state"][0].update(exp_avg=np.zeros((2, 2), np.float32)),
    lambda sd: sd["state"][1].pop("exp_avg_sq"),
    lambda sd: sd["state"][2].update(step=5.0),
    lambda sd: sd["state"][3].update(exp_avg=np.zeros(sd["state"][3]["exp_avg"].shape, int)),
    lambda sd: sd["state"].pop(0),
    lambda sd: sd["state"].update({99: {}}),
])
def test_bad_state_dict_leaves_optimizer_unchanged(mutate):
    model = make_mlp(np.float32)
    opt = run_ours(model, "Adam", {"lr": 0.01, "amsgrad": True}, grad_sequence(model, 2))
    good = opt.state_dict()
    bad = opt.state_dict()
    mutate(bad)
    with pytest.raises((TypeError, ValueError)):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == good["param_groups"]
    assert after["step_count"] == good["step_count"]
    for i, e in good["state"].items():
        for k, v in e.items():
            assert same(after["state"][i][k], v), (i, k)


@pytest.mark.parametrize("bad", [None, [1, 2], "state"])
def test_load_state_dict_type_errors(bad):
    opt = gc.optim.SGD(make_mlp(np.float32))
    with pytest.raises(TypeError):
        opt.load_state_dict(bad)


# ----------------------------------------------------------------------------- behaviour
def test_lr_settable_and_param_groups_drive_the_step():
    model = make_mlp(np.float64)
    opt = gc.optim.SGD(model, lr=0.1)
    g = grad_sequence(model, 1)[0]
    set_grads(model, g)
    p0 = [p.copy() for _, p in model.named_parameters()]
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    for (_, p), q in zip(model.named_parameters(), p0, strict=True):
        assert same(p, q)
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5
    opt.step()
    for (_, p), q, gg in zip(model.named_parameters(), p0, g, strict=True):
        np.testing.assert_allclose(p, q - 0.5 * gg, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(TypeError, match="lr"):
        opt.lr = "big"
    assert opt.lr == 0.5
    assert opt.param_groups[0]["params"][0] is not None
    assert len(opt.param_groups[0]["params"]) == len(model.named_parameters())


def test_step_leaves_grads_and_batchnorm_buffers_alone():
    model = gc.MLP([4, 6, 6, 2], norm="batch", activation="relu", seed=0)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    model.loss_and_grad(x, np.zeros((8, 2), np.float32))
    grads = [g.copy() for _, g in model.named_grads()]
    bufs = [b.copy() for _, b in model.named_buffers()]
    params = [p.copy() for _, p in model.named_parameters()]
    for opt in (gc.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True),
                gc.optim.Adam(model, weight_decay=0.1, maximize=True), gc.optim.AdamW(model)):
        opt.step()
    for (name, g), g0 in zip(model.named_grads(), grads, strict=True):
        assert same(g, g0), name
    for (name, b), b0 in zip(model.named_buffers(), bufs, strict=True):
        assert same(b, b0), name
    changed = [not np.array_equal(p, p0) for (_, p), p0 in
               zip(model.named_parameters(), params, strict=True)]
    assert all(changed)  # norm gamma/beta are parameters and move too
    assert any(n.startswith("norms.") for n, _ in model.named_parameters())


def test_zero_grad_and_closure():
    model = make_mlp(np.float32)
    opt = gc.optim.SGD(model, lr=0.1)
    set_grads(model, grad_sequence(model, 1)[0])
    opt.zero_grad()
    assert all(not g.any() for _, g in model.named_grads())
    calls = []
    assert opt.step(lambda: calls.append(1) or 3.5) == 3.5
    assert calls == [1]
    with pytest.raises(TypeError, match="closure"):
        opt.step(closure=3)


def test_step_invalidates_the_saved_forward():
    model = make_mlp(np.float32)
    x = np.ones((4, 5), np.float32)
    model.forward(x)
    gc.optim.SGD(model, lr=0.1).step()
    with pytest.raises(gc.StateError):
        model.backward(np.ones((4, 3), np.float32))


def test_repr_and_step_count():
    model = make_mlp(np.float32)
    opt = gc.optim.AdamW(model)
    assert "AdamW" in repr(opt) and "lr: 0.001" in repr(opt)
    assert opt.step_count == 0
    opt.step()
    opt.step()
    assert opt.step_count == 2
    assert opt.state_dict()["state"][0]["step"] == 2.0
    assert math.isfinite(float(model.named_parameters()[0][1].sum()))
