"""Memory stays flat: repeated forward/backward allocates nothing that is kept, and a
model's memory is returned once the model and its views are gone."""

from __future__ import annotations

import gc as pygc
import os

import numpy as np
import pytest

import gradchain as gc

if not os.path.exists("/proc/self/statm"):
    pytest.skip("needs /proc/self/statm (Linux)", allow_module_level=True)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_ten_thousand_iterations_keep_memory_flat():
    m = gc.MLP([32, 64, 64, 8], activation="tanh", norm="batch", seed=0)
    r = gc.RNN(4, 16, output_size=2, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32)).astype(np.float32)
    t = rng.normal(size=(16, 8)).astype(np.float32)
    xs = rng.normal(size=(6, 5, 4)).astype(np.float32)
    ys = rng.normal(size=(5, 2)).astype(np.float32)
    for _ in range(500):  # warm-up: allocator pools, caches
        m.loss_and_grad(x, t)
        r.loss_and_grad(xs, ys)
    pygc.collect()
    before = rss_mib()
    for _ in range(10_000):
        m.loss_and_grad(x, t)
        r.loss_and_grad(xs, ys)
    pygc.collect()
    growth = rss_mib() - before
    assert growth < 8.0, f"resident memory grew by {growth:.1f} MiB over 10,000 iterations"


def test_models_are_freed_with_their_last_view():
    pygc.collect()
    base = rss_mib()
    for _ in range(20):  # each model holds 2 x 32 MiB of parameters and gradients
        m = gc.MLP([2048, 2048, 2048], seed=0)
        w = dict(m.named_parameters())["layers.0.weight"]
        del m
        assert w.shape == (2048, 2048) and np.isfinite(w).all()  # the view keeps it alive
        del w
    pygc.collect()
    growth = rss_mib() - base
    assert growth < 100.0, f"20 freed models left {growth:.0f} MiB resident"
