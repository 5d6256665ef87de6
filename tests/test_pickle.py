"""Pickling and copying models and optimisers (issue 10, item 10).

* pickle (protocols 0-5) and copy.deepcopy of an MLP or RNN give a model that computes
  bit for bit what the original does (outputs, gradients, reports), with the same
  parameters, gradients, running statistics, counters, mode and last-pass results, and
  that trains independently of the original.
* copy.copy copies the model's memory too (documented: not PyTorch's shallow copy).
* A custom activation pickles when its callables are module-level functions, otherwise
  a PicklingError names it; deepcopy works either way.
* (model, opt) pickled or deep-copied together: the new optimiser steps the new model
  with bitwise-equal state; an optimiser pickled alone brings its own model.
* A real spawn ProcessPoolExecutor round trip.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import multiprocessing
import pickle
import threading

import numpy as np
import pytest

import gradchain as gc
from pickle_helpers import softsign, softsign_grad, train

PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))
RNG = np.random.default_rng(0)


def mlp(dtype=np.float32, activation="tanh"):
    return gc.MLP([4, 6, 6, 6, 3], activation=activation, norm="batch", residual=True,
                  dtype=dtype, seed=3, momentum=0.3)


def rnn(dtype=np.float64, activation="tanh"):
    return gc.RNN(3, 7, activation=activation, output_size=2, dtype=dtype, seed=4,
                  batch_first=True)


def batch(m, seed=1):
    rng = np.random.default_rng(seed)
    if isinstance(m, gc.MLP):
        return (rng.normal(size=(5, 4)).astype(m.dtype),
                rng.normal(size=(5, 3)).astype(m.dtype))
    return (rng.normal(size=(4, 6, 3)).astype(m.dtype),  # batch-first (B, T, I)
            rng.normal(size=(4, 2)).astype(m.dtype))


def used(m):
    """A model with non-trivial state: trained a little, gradients and last-pass results
    present, batch-norm statistics moved."""
    x, t = batch(m)
    opt = gc.optim.SGD(m, lr=0.05, momentum=0.9)
    for _ in range(2):
        m.loss_and_grad(x, t)
        opt.step()
    m.loss_and_grad(x, t)  # gradients of the current parameters
    m.note = {"run": [1, 2]}  # a public attribute of the user's
    return m


def observable(m) -> dict:
    out = {f"state {k}": np.array(v) for k, v in m.state_dict().items()}
    out.update({f"grad {k}": np.array(v) for k, v in m.named_grads()})
    out["nbt"] = m._num_batches_tracked.copy()
    for k in ("input_grad", "h0_grad", "outputs"):
        v = getattr(m, k, None)
        out[k] = None if v is None else np.array(v)
    out["training"] = getattr(m, "training", None)
    out["config"] = m.config()
    out["seed"] = m.seed
    out["note"] = getattr(m, "note", None)
    out["repr"] = repr(m)
    return out


def assert_same(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b), what
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert b[k] is not None and a[k].dtype == b[k].dtype, f"{what}: {k}"
            assert a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), \
                f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k}: {a[k]!r} vs {b[k]!r}"


def run_pass(m):
    """Forward + backward on fresh data: outputs, gradients and the report."""
    x, t = batch(m, seed=7)
    loss, rep = m.loss_and_grad(x, t)
    return {"loss": loss, "report": rep.to_dict(),
            "grads": b"".join(g.tobytes() for g in m.grads()),
            "input_grad": m.input_grad.tobytes()}


COPIERS = {f"pickle{p}": (lambda m, p=p: pickle.loads(pickle.dumps(m, protocol=p)))
           for p in PROTOCOLS}
COPIERS["deepcopy"] = copy.deepcopy
COPIERS["copy"] = copy.copy


@pytest.mark.parametrize("how", list(COPIERS))
@pytest.mark.parametrize("make", [mlp, rnn], ids=["MLP", "RNN"])
def test_round_trip_is_bitwise(make, how):
    m = used(make())
    before = observable(m)
    m2 = COPIERS[how](m)
    assert type(m2) is type(m) and m2 is not m
    assert_same(before, observable(m2), f"{how} of {type(m).__name__}")
    assert_same(before, observable(m), "the original changed")
    assert m2.lock is not m.lock and isinstance(m2.lock, type(m.lock))
    for a, b in zip(m.parameters() + m.grads(), m2.parameters() + m2.grads(), strict=True):
        assert not np.shares_memory(a, b), f"{how}: the copy shares memory with the original"
    # the same computation afterwards, bit for bit
    assert run_pass(m) == run_pass(m2)
    if isinstance(m, gc.MLP):
        m.eval()
        m2_eval = COPIERS[how](m)
        assert m2_eval.training is False
        x, _ = batch(m)
        assert m.forward(x).tobytes() == m2_eval.forward(x).tobytes()


@pytest.mark.parametrize("how", ["pickle5", "deepcopy", "copy"])
def test_copies_train_independently(how):
    m = used(mlp(np.float64))
    m2 = COPIERS[how](m)
    snap = observable(m)
    x, t = batch(m2, seed=3)
    opt2 = gc.optim.Adam(m2, lr=0.1)
    for _ in range(3):
        m2.loss_and_grad(x, t)
        opt2.step()
    assert_same(snap, observable(m), "training the copy changed the original")
    assert observable(m2)["state layers.0.weight"].tobytes() != \
        snap["state layers.0.weight"].tobytes()
    # and the other way round
    snap2 = observable(m2)
    m.loss_and_grad(x, t)
    gc.optim.SGD(m, lr=0.5).step()
    assert_same(snap2, observable(m2), "training the original changed the copy")


def test_forward_in_flight_is_not_carried():
    m = mlp()
    x, _ = batch(m)
    m.forward(x)
    m2 = pickle.loads(pickle.dumps(m))
    with pytest.raises(gc.StateError, match="before forward"):
        m2.backward(np.ones((5, 3), np.float32))
    m.backward(np.ones((5, 3), np.float32))  # the original keeps its own


def test_copy_copy_shares_attributes_deepcopy_does_not():
    m = used(mlp())
    shallow, deep = copy.copy(m), copy.deepcopy(m)
    assert shallow.note is m.note and shallow.activation is m.activation
    assert deep.note == m.note and deep.note is not m.note and deep.sizes is not m.sizes


def test_pickling_while_holding_the_lock():
    """The RLock is not pickled (each copy gets its own), and pickling takes the lock
    re-entrantly, so it works inside ``with model.lock:``; another thread's pickling
    waits for the holder."""
    m = used(mlp())
    with m.lock:
        data = pickle.dumps(m)
        done = threading.Event()
        t = threading.Thread(target=lambda: (pickle.dumps(m), done.set()))
        t.start()
        assert not done.wait(0.2), "pickling ran while another thread held model.lock"
    assert done.wait(30)
    t.join()
    assert_same(observable(m), observable(pickle.loads(data)), "pickled under the lock")


# --------------------------------------------------------------------------- custom activations
@pytest.mark.parametrize("make", [mlp, rnn], ids=["MLP", "RNN"])
def test_custom_activation_of_module_level_functions_pickles(make):
    act = gc.Activation.custom(softsign, softsign_grad, name="softsign")
    m = used(make(activation=act))
    for p in PROTOCOLS:
        m2 = pickle.loads(pickle.dumps(m, protocol=p))
        assert m2.activation.is_custom and m2.activation.name == "softsign"
        assert m2.activation.f is softsign and m2.activation.df is softsign_grad
        assert_same(observable(m), observable(m2), f"protocol {p}")
    assert run_pass(m) == run_pass(m2)


def test_custom_activation_that_cannot_pickle_says_so():
    scale = 0.5
    act = gc.Activation.custom(lambda x: np.tanh(scale * x),
                               lambda x: scale * (1 - np.tanh(scale * x) ** 2), name="scaled")
    m = used(mlp(activation=act))
    with pytest.raises(pickle.PicklingError, match="custom activation 'scaled'") as e:
        pickle.dumps(m)
    assert "module-level" in str(e.value)
    opt = gc.optim.SGD(m, lr=0.1)
    with pytest.raises(pickle.PicklingError, match="custom activation 'scaled'"):
        pickle.dumps((m, opt))
    m2 = copy.deepcopy(m)  # deepcopy shares the callables: works
    assert m2.activation.f is act.f
    assert run_pass(m) == run_pass(m2)


# --------------------------------------------------------------------------- optimisers
OPTIMISERS = {
    "sgd-nesterov": lambda m: gc.optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True,
                                           weight_decay=1e-3),
    "adam-amsgrad": lambda m: gc.optim.Adam(m, lr=0.01, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda m: gc.optim.AdamW(m, lr=0.02, betas=(0.8, 0.99)),
}


def _opt_state(opt) -> bytes:
    sd = opt.state_dict()
    parts = [repr(sd["param_groups"]).encode(), repr(sd["step_count"]).encode()]
    for i, entry in sorted(sd["state"].items()):
        for k, v in sorted(entry.items()):
            parts.append(f"{i}.{k}".encode() + np.asarray(v).tobytes())
    return b"|".join(parts)


PAIR_COPIERS = {f"pickle{p}": (lambda o, p=p: pickle.loads(pickle.dumps(o, protocol=p)))
                for p in range(2, pickle.HIGHEST_PROTOCOL + 1)}
PAIR_COPIERS["deepcopy"] = copy.deepcopy


@pytest.mark.parametrize("how", list(PAIR_COPIERS))
@pytest.mark.parametrize("name", list(OPTIMISERS))
@pytest.mark.parametrize("make", [mlp, rnn], ids=["MLP", "RNN"])
def test_model_and_optimiser_round_trip(make, name, how):
    m = make()
    opt = OPTIMISERS[name](m)
    opt.param_groups[0]["initial_lr"] = 0.123  # what a scheduler adds
    x, t = batch(m)
    train(m, opt, x, t, 3)
    opt.lr = opt.lr * 0.5
    m2, opt2 = PAIR_COPIERS[how]((m, opt))
    assert type(opt2) is type(opt) and opt2.model is m2, "the optimiser lost its model"
    assert _opt_state(opt2) == _opt_state(opt)
    assert opt2.param_groups[0]["initial_lr"] == 0.123 and opt2.lr == opt.lr
    for p, p2 in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"],
                     strict=True):
        assert not np.shares_memory(p, p2)
    assert any(np.shares_memory(p, q) for p in opt2.param_groups[0]["params"]
               for q in m2.parameters()), "the new optimiser does not step the new model"
    snap = observable(m)
    # steps of the copy: the copied model moves, the original does not
    _, _, l2 = train(m2, opt2, x, t, 3)
    assert_same(snap, observable(m), "stepping the copy moved the original")
    _, _, l1 = train(m, opt, x, t, 3)
    assert l1 == l2
    assert_same(observable(m), observable(m2), "the copies trained differently")
    assert _opt_state(opt2) == _opt_state(opt)


def test_optimiser_pickled_alone_brings_its_model():
    m = used(mlp(np.float64))
    opt = gc.optim.Adam(m, lr=0.01)
    x, t = batch(m)
    train(m, opt, x, t, 2)
    opt2 = pickle.loads(pickle.dumps(opt))
    assert opt2.model is not m and isinstance(opt2.model, gc.MLP)
    assert_same(observable(m), observable(opt2.model), "the optimiser's model")
    snap = observable(m)
    train(opt2.model, opt2, x, t, 2)
    assert_same(snap, observable(m), "the unpickled optimiser stepped the original model")


# --------------------------------------------------------------------------- process pool
def test_process_pool_round_trip():
    """Send (model, optimiser) to a spawned worker, train there, get both back: the same
    bits as training here (results do not depend on the thread count)."""
    act = gc.Activation.custom(softsign, softsign_grad, name="softsign")
    jobs = []
    for m in (mlp(np.float64), rnn(np.float32, activation=act)):
        opt = gc.optim.Adam(m, lr=0.01)
        x, t = batch(m)
        train(m, opt, x, t, 2)
        jobs.append((m, opt, x, t))
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        futures = [pool.submit(train, m, opt, x, t, 3) for m, opt, x, t in jobs]
        results = [f.result(timeout=180) for f in futures]
    for (m, opt, x, t), (m2, opt2, losses2) in zip(jobs, results, strict=True):
        assert opt2.model is m2
        _, _, losses = train(m, opt, x, t, 3)
        assert losses == losses2
        assert_same(observable(m), observable(m2), f"{type(m).__name__} trained in a worker")
        assert _opt_state(opt) == _opt_state(opt2)


def test_unpickling_a_foreign_state_is_a_clear_error():
    m = mlp()
    with pytest.raises(ValueError, match="unknown state format"):
        m.__setstate__({"version": 99})
    state = m.__getstate__()
    state["params"] = state["params"][:-1]
    with pytest.raises(ValueError, match="do not fit"):
        copy.copy(m).__setstate__(state)
