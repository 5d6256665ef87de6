"""gc.optim.RMSprop against torch.optim.RMSprop (where installed) and against a textbook
float64 NumPy implementation written here (so CI without torch still checks the maths):
every option, the state and its state_dict layout, checkpoints, argument checks, and the
doors a user reaches it by (``gc.optim.build``, ``gc.sweep``'s ``train``, the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain as gc
from conftest import assert_close, same
from test_optim import grad_sequence, make_mlp, set_grads
from test_optim import step_both as _step_both
from test_optim import torch_params as _torch_params

TORCH_TOL = {np.float32: 1e-6, np.float64: 1e-12}
REF_TOL = {np.float32: 1e-5, np.float64: 1e-12}

CASES = [
    {},
    {"lr": 0.01, "alpha": 0.9},
    {"lr": 0.01, "momentum": 0.9},
    {"lr": 0.01, "centered": True},
    {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.1},
    {"lr": 0.01, "eps": 1e-3, "maximize": True},
    {"lr": 0.02, "alpha": 0.3, "centered": True, "maximize": True, "weight_decay": 0.01},
]
IDS = ["-".join(f"{k}={v}" for k, v in kw.items()) or "defaults" for kw in CASES]


def run_ours(model, kw, grads_seq):
    opt = gc.optim.RMSprop(model, **kw)
    for grads in grads_seq:
        set_grads(model, grads)
        opt.step()
    return opt


def ref_steps(params, grads_seq, kw):
    """torch.optim.RMSprop's documented algorithm, float64, per tensor."""
    lr, alpha, eps = kw.get("lr", 1e-2), kw.get("alpha", 0.99), kw.get("eps", 1e-8)
    wd, mom = kw.get("weight_decay", 0.0), kw.get("momentum", 0.0)
    centered, maximize = kw.get("centered", False), kw.get("maximize", False)
    p = [np.array(a, dtype=np.float64) for a in params]
    v = [np.zeros_like(a) for a in p]
    m = [np.zeros_like(a) for a in p]
    b = [np.zeros_like(a) for a in p]
    for grads in grads_seq:
        for i, g0 in enumerate(grads):
            g = -np.float64(g0) if maximize else np.float64(g0)
            g = g + wd * p[i]
            v[i] = alpha * v[i] + (1 - alpha) * g * g
            if centered:
                m[i] = alpha * m[i] + (1 - alpha) * g
                avg = np.sqrt(v[i] - m[i] * m[i]) + eps
            else:
                avg = np.sqrt(v[i]) + eps
            if mom > 0:
                b[i] = mom * b[i] + g / avg
                p[i] = p[i] - lr * b[i]
            else:
                p[i] = p[i] - lr * g / avg
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_matches_numpy_reference(kw, dtype):
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 8)
    p0 = [p.copy() for _, p in model.named_parameters()]
    run_ours(model, kw, grads_seq)
    expect = ref_steps(p0, grads_seq, kw)
    for (pname, p), e in zip(model.named_parameters(), expect, strict=True):
        assert p.dtype == dtype
        assert_close(f"{kw} {pname}", p, e, REF_TOL[dtype], floor=1e-3)


@settings(max_examples=30, deadline=None)
@given(lr=st.floats(0.0, 0.1), alpha=st.floats(0.0, 0.999),
       eps=st.sampled_from([1e-8, 1e-4, 1e-2]), wd=st.sampled_from([0.0, 1e-3, 0.3]),
       momentum=st.sampled_from([0.0, 0.5, 0.9]), flags=st.tuples(st.booleans(), st.booleans()),
       seed=st.integers(0, 2**16))
def test_random_options_match_numpy_reference(lr, alpha, eps, wd, momentum, flags, seed):
    centered, maximize = flags
    kw = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": wd, "momentum": momentum,
          "centered": centered, "maximize": maximize}
    model = make_mlp(np.float64, seed=seed)
    grads_seq = grad_sequence(model, 3, seed=seed)
    p0 = [p.copy() for _, p in model.named_parameters()]
    run_ours(model, kw, grads_seq)
    for (pname, p), e in zip(model.named_parameters(), ref_steps(p0, grads_seq, kw),
                             strict=True):
        assert_close(f"{kw} {pname}", p, e, 1e-10, floor=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 10)
    tp = _torch_params(model, torch)
    topt = torch.optim.RMSprop(tp, **kw)
    opt = gc.optim.RMSprop(model, **kw)
    _step_both(torch, model, opt, tp, topt, grads_seq)
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        assert_close(f"{kw} {pname}", p, q.detach().numpy(), TORCH_TOL[dtype], floor=1e-3)
    # the state too, under torch's keys (square_avg; momentum_buffer; grad_avg; step)
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
    tp = _torch_params(model, torch)
    kw = {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}
    opt, topt = gc.optim.RMSprop(model, **kw), torch.optim.RMSprop(tp, **kw)
    for _ in range(6):
        model.loss_and_grad(rng.normal(size=(5, 4, 3)), rng.normal(size=(4, 2)))
        for q, (_, g) in zip(tp, model.named_grads(), strict=True):
            q.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        assert_close(pname, p, q.detach().numpy(), 1e-12, floor=1e-3)


def test_nonfinite_gradient_propagates_as_torch():
    torch = pytest.importorskip("torch")
    model = make_mlp(np.float64)
    kw = {"lr": 0.1, "momentum": 0.9, "centered": True}
    grads = grad_sequence(model, 2)
    grads[1][0][1, 2] = np.nan
    grads[1][2][3, 0] = np.inf
    tp = _torch_params(model, torch)
    topt, opt = torch.optim.RMSprop(tp, **kw), gc.optim.RMSprop(model, **kw)
    _step_both(torch, model, opt, tp, topt, grads)
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        theirs = q.detach().numpy()
        np.testing.assert_array_equal(np.isnan(p), np.isnan(theirs), err_msg=pname)
        np.testing.assert_array_equal(np.isinf(p), np.isinf(theirs), err_msg=pname)
        ok = np.isfinite(theirs)
        assert_close(pname, p[ok], theirs[ok], 1e-12, floor=1e-3)


def test_defaults_are_torchs():
    opt = gc.optim.RMSprop(make_mlp(np.float32))
    assert opt.defaults == {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0,
                            "momentum": 0.0, "centered": False, "maximize": False}
    torch = pytest.importorskip("torch")
    t = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))])
    for k, v in opt.defaults.items():
        assert t.defaults[k] == v, k


@pytest.mark.parametrize("kw", [{"lr": -0.1}, {"alpha": -0.5}, {"eps": -1e-8},
                                {"weight_decay": -1e-4}, {"momentum": -0.1}])
def test_argument_checks_match_torch(kw):
    model = make_mlp(np.float32)
    before = [p.copy() for _, p in model.named_parameters()]
    with pytest.raises(ValueError, match=next(iter(kw)).split("_")[0]):
        gc.optim.RMSprop(model, **kw)
    assert all(same(p, b) for (_, p), b in zip(model.named_parameters(), before, strict=True))
    try:
        import torch
    except ImportError:
        return
    with pytest.raises(ValueError):
        torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(2))], **kw)


@pytest.mark.parametrize(("kw", "exc"), [
    ({"lr": "0.1"}, TypeError), ({"alpha": None}, TypeError), ({"centered": 1}, TypeError),
    ({"maximize": "yes"}, TypeError), ({"eps": float("nan")}, ValueError),
])
def test_bad_argument_types(kw, exc):
    with pytest.raises(exc):
        gc.optim.RMSprop(make_mlp(np.float32), **kw)


@pytest.mark.parametrize("bad", [None, object(), np.zeros(3), "mlp"])
def test_model_must_be_a_gradchain_model(bad):
    with pytest.raises(TypeError, match="model"):
        gc.optim.RMSprop(bad)


@pytest.mark.parametrize("kw", [{"lr": 0.01, "momentum": 0.9, "centered": True},
                                {"lr": 0.01}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip_continues_identically(kw, dtype):
    model = make_mlp(dtype)
    grads_seq = grad_sequence(model, 7)
    opt = run_ours(model, kw, grads_seq[:4])
    sd = opt.state_dict()
    assert set(sd["state"][0]) == ({"step", "square_avg"}
                                   | ({"momentum_buffer"} if kw.get("momentum") else set())
                                   | ({"grad_avg"} if kw.get("centered") else set()))
    assert sd["state"][0]["step"] == 4.0
    msd = {k: v.copy() for k, v in model.state_dict().items()}
    for gs in grads_seq[4:]:
        set_grads(model, gs)
        opt.step()
    want = [p.copy() for _, p in model.named_parameters()]
    model2 = make_mlp(dtype, seed=99)
    model2.load_state_dict(msd)
    opt2 = gc.optim.RMSprop(model2, lr=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.lr == kw["lr"] and opt2.step_count == 4
    for gs in grads_seq[4:]:
        set_grads(model2, gs)
        opt2.step()
    for (pname, p), w in zip(model2.named_parameters(), want, strict=True):
        assert same(p, w), pname


def test_torch_state_dict_loads_and_continues_identically():
    torch = pytest.importorskip("torch")
    kw = {"lr": 0.01, "momentum": 0.5, "centered": True}
    model = make_mlp(np.float64)
    grads_seq = grad_sequence(model, 6)
    tp = _torch_params(model, torch)
    topt = torch.optim.RMSprop(tp, **kw)
    for gs in grads_seq[:3]:
        for q, g in zip(tp, gs, strict=True):
            q.grad = torch.tensor(g)
        topt.step()
    model.load_state_dict({k: q.detach().numpy() for (k, _), q in
                           zip(model.named_parameters(), tp, strict=True)})
    opt = gc.optim.RMSprop(model, **kw)
    opt.load_state_dict(topt.state_dict())
    assert opt.step_count == 3
    _step_both(torch, model, opt, tp, topt, grads_seq[3:])
    for (pname, p), q in zip(model.named_parameters(), tp, strict=True):
        assert_close(pname, p, q.detach().numpy(), 1e-12, floor=1e-3)


def test_missing_state_is_refused_and_leaves_the_optimizer_unchanged():
    model = make_mlp(np.float64)
    opt = run_ours(model, {"lr": 0.01, "centered": True}, grad_sequence(model, 2))
    sd = opt.state_dict()
    del sd["state"][1]["grad_avg"]
    before = opt.state_dict()
    with pytest.raises(ValueError, match="grad_avg"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert all(same(np.asarray(after["state"][i][k]), np.asarray(v))
               for i, e in before["state"].items() for k, v in e.items())


def test_reachable_by_name():
    assert gc.optim.OPTIMIZERS["rmsprop"] is gc.optim.RMSprop
    model = make_mlp(np.float32)
    opt = gc.optim.build("rmsprop", model, lr=0.05, momentum=0.9)
    assert isinstance(opt, gc.optim.RMSprop) and opt.lr == 0.05
    assert "RMSprop" in repr(opt)


def test_sweep_trains_with_rmsprop():
    rec = gc.sweep({"depth": [2]}, width=8, out_features=3, loss="cross_entropy", batch=6,
                   train={"epochs": 2, "optimizer": "rmsprop", "lr": 1e-2, "n": 60},
                   executor="serial", progress=False, as_frame=False)[0]
    assert np.isfinite(rec["final_loss"]) and 0.0 <= rec["accuracy"] <= 1.0
    # repeatable, and not another optimiser's run under a new name
    again = gc.sweep({"depth": [2]}, width=8, out_features=3, loss="cross_entropy", batch=6,
                     train={"epochs": 2, "optimizer": "rmsprop", "lr": 1e-2, "n": 60},
                     executor="serial", progress=False, as_frame=False)[0]
    assert rec["final_loss"] == again["final_loss"]
    adam = gc.sweep({"depth": [2]}, width=8, out_features=3, loss="cross_entropy", batch=6,
                    train={"epochs": 2, "optimizer": "adam", "lr": 1e-2, "n": 60},
                    executor="serial", progress=False, as_frame=False)[0]
    assert adam["final_loss"] != rec["final_loss"]


def test_cli_sweep_takes_rmsprop(capsys):
    from gradchain import cli

    assert cli.main(["sweep", "--epochs", "1", "--optimizer", "rmsprop", "--lr", "0.01",
                     "--depth", "2", "--width", "8", "--batch", "4", "--executor", "serial",
                     "--json", "--quiet"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert np.isfinite(rec["final_loss"])
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--epochs", "1", "--optimizer", "rmsprob", "--quiet"])
    assert e.value.code == 2
    assert "rmsprop" in capsys.readouterr().err
