"""Python threads: the GIL is released during compute, so models run concurrently;
results equal the sequential ones, and a model shared by threads is serialised (a lock
in the core, and the model's lock around everything Python-side that reads or writes
it: optimiser steps, state dicts, clipping), never mixed state."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import gradchain as gc


def job(seed: int):
    kind = seed % 3
    rng = np.random.default_rng(seed)
    if kind == 2:
        m = gc.RNN(8, 24, output_size=3, seed=seed)
        x = rng.normal(size=(20, 5, 8)).astype(np.float32)
        y = rng.normal(size=(5, 3)).astype(np.float32)
        _, rep = m.loss_and_grad(x, y)
        return rep.timestep_grad_norms.copy(), [g.copy() for g in m.grads()]
    m = gc.MLP([16] + [32] * 6 + [4], activation="tanh", norm="batch" if kind else None,
               residual=bool(kind), seed=seed)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    y = rng.normal(size=(40, 4)).astype(np.float32)
    _, rep = m.loss_and_grad(x, y)
    return rep.activation_grad_norms.copy(), [g.copy() for g in m.grads()]


def test_eight_threads_match_sequential():
    seeds = list(range(16))
    sequential = [job(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=8) as ex:
        concurrent = list(ex.map(job, seeds))
    for (n1, g1), (n2, g2) in zip(sequential, concurrent, strict=True):
        assert np.array_equal(n1, n2)
        for a, b in zip(g1, g2, strict=True):
            assert np.array_equal(a, b)


def test_shared_model_is_serialised():
    m = gc.MLP([16] + [64] * 4 + [4], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(32, 16)).astype(np.float32) for _ in range(2)]
    expected = [m.forward(x).copy() for x in xs]
    errors = []

    def hammer(i: int) -> None:
        for _ in range(50):
            y = m.forward(xs[i])
            if not np.array_equal(y, expected[i]):
                errors.append(i)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_set_num_threads_during_runs(restore_threads):
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            gc.set_num_threads(1)
            gc.set_num_threads(2)

    t = threading.Thread(target=flip)
    t.start()
    try:
        results = [job(1)[0] for _ in range(5)]
    finally:
        stop.set()
        t.join()
    for r in results[1:]:
        assert np.array_equal(r, results[0])


def test_optimiser_steps_and_snapshots_never_mix():
    """One thread trains (loss_and_grad + Adam steps), another snapshots the state dict
    (``copy=True``: copied under the model's lock) and takes the gradient norm: every
    snapshot is one of the states between whole steps, never a half-updated model (the
    model's lock covers forward, backward, step and state_dict). A plain ``state_dict()``
    returns views, as PyTorch's does, so copying those after the call may tear."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 32)).astype(np.float32)
        y = rng.normal(size=(64, 8)).astype(np.float32)

        def run(m, steps, after_step=None):
            opt = gc.optim.Adam(m, lr=1e-2)
            for _ in range(steps):
                m.loss_and_grad(x, y)
                opt.step()
                if after_step:
                    after_step(m)

        def flat(sd):
            return np.concatenate([np.ravel(v) for v in sd.values()]).tobytes()

        states = []
        ref = gc.MLP([32] + [96] * 4 + [8], seed=1)
        states.append(flat(ref.state_dict()))
        run(ref, 30, lambda m: states.append(flat(m.state_dict())))
        allowed = set(states)

        m = gc.MLP([32] + [96] * 4 + [8], seed=1)
        snaps, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                snaps.append(flat(m.state_dict(copy=True)))
                gc.grad_norm(m)

        t = threading.Thread(target=watch)
        t.start()
        try:
            run(m, 30, lambda _: time.sleep(1e-4))  # let the watcher in between steps
        finally:
            stop.set()
            t.join()
        assert flat(m.state_dict()) == states[-1]
        assert all(s in allowed for s in snaps)
        assert len(set(snaps)) >= 5, f"the watcher saw only {len(set(snaps))} distinct states"
    finally:
        sys.setswitchinterval(old)
