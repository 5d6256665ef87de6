"""A custom activation that calls back into its own model (issue 10, item 2): the callback
runs in the middle of the model's pass, with the core's lock on the model held, so such
a call used to wait for ever (and Ctrl-C could not break it). It must raise a clear
RuntimeError at once, leave the model usable, and calls on another model must work.

Every pass runs on a helper thread with a timeout, so a deadlock fails the test instead
of hanging the suite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradchain as gc

TIMEOUT = 30.0


def in_thread(fn: Callable[[], Any]) -> Any:
    """fn() on a daemon thread: its result, or its exception re-raised; fails on a hang."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIMEOUT)
    if t.is_alive():
        pytest.fail(f"deadlock: the call did not return in {TIMEOUT} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Hook:
    """A custom tanh whose f calls `self.call()` once per pass when armed."""

    def __init__(self) -> None:
        self.call: Callable[[], Any] | None = None
        self.result: Any = None

    def f(self, z: np.ndarray) -> np.ndarray:
        call, self.call = self.call, None
        if call is not None:
            self.result = call()
        return np.tanh(z)

    @staticmethod
    def df(z: np.ndarray) -> np.ndarray:
        return 1 - np.tanh(z) ** 2

    def activation(self) -> gc.Activation:
        return gc.Activation.custom(self.f, self.df, name="hooked_tanh")


def make(kind: str, act: Any, seed: int = 0) -> Any:
    if kind == "mlp":
        return gc.MLP([6, 16, 16, 3], activation=act, norm="batch", seed=seed)
    return gc.RNN(6, 16, activation=act, output_size=3, seed=seed)


def inputs(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "mlp":
        return (rng.standard_normal((8, 6)).astype(np.float32),
                rng.standard_normal((8, 3)).astype(np.float32))
    return (rng.standard_normal((5, 4, 6)).astype(np.float32),
            rng.standard_normal((5, 4, 16)).astype(np.float32))


def full_pass(model: Any, x: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    out = model.forward(x)
    model.backward(g)
    return [out] + [a.copy() for a in model.grads()] + [b.copy() for _, b in
                                                         model.named_buffers()]


def reentrant_calls(model: Any, x: np.ndarray, g: np.ndarray) -> dict[str, Callable[[], Any]]:
    opt = gc.optim.SGD(model, lr=0.1)
    return {
        "gc.grad_norm": lambda: gc.grad_norm(model),
        "gc.clip_grad_norm": lambda: gc.clip_grad_norm(model, 1.0),
        "gc.clip_grad_value": lambda: gc.clip_grad_value(model, 1.0),
        "gc.clip_grad_norm_per_layer": lambda: gc.clip_grad_norm_per_layer(model, 1.0),
        f"{type(model).__name__}.forward": lambda: model.forward(x),
        f"{type(model).__name__}.backward": lambda: model.backward(g),
        f"{type(model).__name__}.zero_grad": model.zero_grad,
        f"{type(model).__name__}.state_dict": lambda: model.state_dict(copy=True),
        "SGD.step": opt.step,
        # the compiled core's own guard (no Python lock on this path)
        "grad_norms": lambda: model._core.grad_norms(),
        "clip_grad_norm": lambda: model._core.clip_grad_norm(1.0, False),
    }


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_call_back_into_own_model_raises_at_once(kind):
    hook = Hook()
    m = make(kind, hook.activation())
    x, g = inputs(kind)
    ref = in_thread(lambda: full_pass(make(kind, hook.activation()), x, g))
    in_thread(lambda: full_pass(m, x, g))  # gradients to clip
    running = f"{type(m).__name__}.forward"
    for what, call in reentrant_calls(m, x, g).items():
        # uncaught in the callback: the outer forward fails with the callback's error
        hook.call = call
        with pytest.raises(RuntimeError) as info:
            in_thread(lambda: m.forward(x))
        msg = str(info.value)
        assert what in msg, (what, msg)
        if what not in ("grad_norms", "clip_grad_norm"):  # the Python layer's message
            assert msg == (f"{running} is running on this model; a custom activation may not "
                           f"call {what} on the model it belongs to"), msg
        # the model is usable, and nothing was changed by the refused call
        assert not m._core.has_forward
        m.load_state_dict(make(kind, hook.activation()).state_dict())
        got = in_thread(lambda: full_pass(m, x, g))
        assert all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True)), what


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_caught_in_the_callback_the_pass_completes(kind):
    hook = Hook()
    m = make(kind, hook.activation())
    x, g = inputs(kind)
    ref = in_thread(lambda: full_pass(make(kind, hook.activation()), x, g))

    def guarded() -> str:
        try:
            gc.grad_norm(m)
        except RuntimeError as e:
            return str(e)
        return "no error"

    hook.call = guarded
    got = in_thread(lambda: full_pass(m, x, g))
    assert "is running on this model" in hook.result
    assert all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_calls_on_another_model_work(kind):
    hook = Hook()
    m = make(kind, hook.activation())
    other = make(kind, "tanh", seed=1)
    x, g = inputs(kind)
    twin = make(kind, "tanh", seed=1)
    full_pass(twin, x, g)
    expect = full_pass(twin, x, g)  # the second pass (batch norm's running statistics)
    in_thread(lambda: full_pass(other, x, g))

    def use_other() -> tuple[float, list[np.ndarray]]:
        norm = gc.grad_norm(other)
        return norm, full_pass(other, x, g)

    hook.call = use_other
    in_thread(lambda: m.forward(x))
    norm, got = hook.result
    assert norm == gc.grad_norm(other) > 0
    assert all(np.array_equal(a, b) for a, b in zip(expect, got, strict=True))
