"""Shared helpers: reference parameters of a model, magnitude-scaled comparisons,
kink proximity (float32 vs float64 comparisons skip inputs that sit on a kink)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import gradchain as gc
from gradchain import reference as ref
from gradchain.activations import SPECS

# Reproducible property tests: CI replays the same examples every run.
settings.register_profile(
    "gradchain", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("GRADCHAIN_HYPOTHESIS_PROFILE", "gradchain"))

# where each activation's derivative jumps at PyTorch's default parameters (the table's kinks)
KINKED = {n: s.kink_points() for n, s in SPECS.items() if s.kink_points()}


def ref_params(model: gc.MLP) -> dict[str, np.ndarray]:
    """The model's state dict as float64 copies (what the reference takes)."""
    return {k: np.array(v, dtype=np.float64) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def kink_margin(cache: dict, activation: str, params: dict | None = None) -> float:
    """Smallest distance of any hidden pre-activation to a kink of `activation` (with
    `params`, else PyTorch's defaults)."""
    kinks = (KINKED.get(activation) if params is None
             else SPECS[activation].kink_points({**SPECS[activation].params, **params}))
    if not kinks:
        return np.inf
    m = np.inf
    for layer in cache["layers"]:
        n = np.asarray(layer["n"])
        for k in kinks:
            m = min(m, float(np.min(np.abs(n - k))))
    return m


def scaled_err(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.0) -> float:
    """max |ours - theirs| / max(max |theirs|, floor)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if ours.size == 0:
        return 0.0
    denom = max(float(np.max(np.abs(theirs))), floor, 1e-300)
    return float(np.max(np.abs(ours - theirs))) / denom


def assert_close(label: str, ours, theirs, tol: float, floor: float = 0.0) -> None:
    err = scaled_err(ours, theirs, floor)
    if not err <= tol:
        o = np.ravel(np.asarray(ours))[:4]
        t = np.ravel(np.asarray(theirs))[:4]
        raise AssertionError(f"{label}: scaled max diff {err:.3e} > {tol:.1e}\n"
                             f"  ours   {o}\n  theirs {t}")


def same(a, b) -> bool:
    """Bitwise equality for arrays (dtype, shape, NaN payloads, signed zeros), == otherwise."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        return (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                and np.array_equal(a, b, equal_nan=True))
    return a == b


def assert_dp_sgd_clipping(m: gc.Model, x: np.ndarray, t: np.ndarray) -> float:
    """``gc.clip_per_example(m, C)`` after ``m.loss_and_grad(x, t, on="all",
    per_example=True)`` (time-major x, t of a float64 recurrent model) leaves the mean over
    the examples of their own gradients, each scaled by min(1, C / (||g_i|| + 1e-6)), with C
    the median norm (computed one example at a time). Returns C."""
    import math

    B = x.shape[1]
    _, rep = m.loss_and_grad(x, t, on="all", per_example=True)
    C = float(np.median(rep.per_example_grad_norms))
    norms = gc.clip_per_example(m, C)
    np.testing.assert_array_equal(norms, rep.per_example_grad_norms)
    got = {k: v.copy() for k, v in m.named_grads()}
    want: dict[str, np.ndarray] = {}
    for i in range(B):
        m.loss_and_grad(x[:, i:i + 1], t[:, i:i + 1], on="all")
        gi = {k: v.copy() for k, v in m.named_grads()}
        c = min(1.0, C / (math.sqrt(sum(float(np.sum(v * v)) for v in gi.values())) + 1e-6))
        for k, v in gi.items():
            want[k] = want.get(k, 0.0) + c * v / B
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k], rtol=1e-11, atol=1e-15, err_msg=k)
    return C


def grads_by_threads_and_per_example(m: gc.Model, x: np.ndarray, gh, gy) -> dict:
    """A recurrent model's gradients for threads 1 and 2 and per_example False / True:
    {(threads, per_example): [assigned, accumulated once more]}, each {name: array}; the
    thread setting restored."""
    old = gc.get_num_threads()
    got: dict[tuple[int, bool], list[dict[str, np.ndarray]]] = {}
    try:
        for n in (1, 2):
            gc.set_num_threads(n)
            m.forward(x)
            for pe in (False, True):
                m.backward(gh, gy, per_example=pe)
                assigned = {k: v.copy() for k, v in m.named_grads()}
                m.backward(gh, gy, accumulate=True, per_example=pe)
                got[n, pe] = [assigned, {k: v.copy() for k, v in m.named_grads()}]
    finally:
        gc.set_num_threads(old)
    return got


# The health fields of a report (MLP, RNN and gated cells alike).
HEALTH = ("dead_unit_fractions", "saturated_unit_fractions", "zero_grad_fractions",
          "subnormal_grad_fractions")


def rnn_report_same_for_threads(r: gc.Model, x: np.ndarray, g: np.ndarray,
                                fields: tuple[str, ...], label: object = None) -> object:
    """forward(x) + backward(grad_hs=g) at 1, 2 and 3 threads (the caller restores the
    setting: the restore_threads fixture); asserts every field in ``fields`` bitwise equal
    across them and returns the 1-thread report."""
    reps = []
    for n in (1, 2, 3):
        gc.set_num_threads(n)
        r.forward(x)
        reps.append(r.backward(grad_hs=g))
    for rep in reps[1:]:
        for f in fields:
            assert np.array_equal(getattr(rep, f), getattr(reps[0], f)), (label, f)
    return reps[0]


def assert_same_bits_everywhere(got: dict) -> None:
    """Every entry of grads_by_threads_and_per_example's result bitwise equal to threads 1,
    per_example False."""
    base = got[1, False]
    for key, g in got.items():
        for j in (0, 1):
            for k, v in g[j].items():
                np.testing.assert_array_equal(v, base[j][k], err_msg=f"{k} {key} {j}")


@pytest.fixture
def restore_threads():
    n = gc.get_num_threads()
    yield
    gc.set_num_threads(n)


@pytest.fixture
def restore_isa():
    isa = gc.get_isa()
    yield
    gc.set_isa(isa)


__all__ = ["ref", "ref_params", "kink_margin", "scaled_err", "assert_close", "same"]
