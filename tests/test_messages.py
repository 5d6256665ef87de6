"""Messages that used to mislead (issue 10, item 8): backward after a failed forward, a
custom RNN activation's own MemoryError, and what ``dir()`` shows of the public modules."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import gradchain as gc


def _raising(exc: BaseException):
    def f(z):
        raise exc

    return gc.Activation.custom(f, lambda z: np.ones_like(z), name="raising")


def _mlp(**kw):
    return gc.MLP([3, 4, 2], seed=0, **kw)


def _rnn(**kw):
    return gc.RNN(3, 4, seed=0, **kw)


X_MLP = np.ones((2, 3), np.float32)
X_RNN = np.ones((5, 2, 3), np.float32)


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_backward_after_a_failed_forward_says_the_forward_failed(kind):
    model = (_mlp if kind == "mlp" else _rnn)(activation=_raising(RuntimeError("cb broke")))
    x = X_MLP if kind == "mlp" else X_RNN
    with pytest.raises(RuntimeError, match="cb broke"):
        model.forward(x)
    g = np.ones((2, 2), np.float32) if kind == "mlp" else np.ones((5, 2, 4), np.float32)
    with pytest.raises(gc.StateError) as e:
        model.backward(g)
    msg = str(e.value)
    assert "called before forward()" not in msg
    assert "the last forward() failed or was rejected (RuntimeError: cb broke)" in msg


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_backward_after_a_rejected_forward_names_the_rejection(kind):
    model = _mlp() if kind == "mlp" else _rnn()
    bad = np.full((2, 3), np.nan, np.float32) if kind == "mlp" else \
        np.full((5, 2, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        model.forward(bad)
    g = np.ones((2, 2), np.float32) if kind == "mlp" else np.ones((5, 2, 4), np.float32)
    with pytest.raises(gc.StateError, match=r"last forward\(\) failed or was rejected "
                                            r"\(ValueError: x contains NaN"):
        model.backward(g)


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_a_good_forward_clears_the_failure_and_a_fresh_model_says_before_forward(kind):
    model = _mlp() if kind == "mlp" else _rnn()
    g = np.ones((2, 2), np.float32) if kind == "mlp" else np.ones((5, 2, 4), np.float32)
    with pytest.raises(gc.StateError, match=r"called before forward\(\)"):
        model.backward(g)
    x = X_MLP if kind == "mlp" else X_RNN
    with pytest.raises(ValueError):
        model.forward(x[..., :2])  # wrong shape: rejected
    model.forward(x)
    model.backward(g)  # works: the failure is forgotten


def test_a_custom_rnn_activations_own_memory_error_comes_through_unchanged():
    own = MemoryError("my own: out of tokens")
    rnn = _rnn(activation=_raising(own))
    with pytest.raises(MemoryError) as e:
        rnn.forward(X_RNN)
    assert e.value is own and str(e.value) == "my own: out of tokens"
    with pytest.raises(MemoryError) as e:
        rnn.loss_and_grad(X_RNN, np.zeros((2, 4), np.float32))
    assert e.value is own
    mlp = _mlp(activation=_raising(own))
    with pytest.raises(MemoryError) as e:
        mlp.forward(X_MLP)
    assert e.value is own


PUBLIC = ["gradchain", "gradchain.optim", "gradchain.init", "gradchain.theory",
          "gradchain.data", "gradchain.tasks", "gradchain.reference", "gradchain.activations",
          "gradchain.clip", "gradchain.io", "gradchain.models", "gradchain.report",
          "gradchain.rnn", "gradchain.sweeps", "gradchain.training"]


@pytest.mark.parametrize("name", PUBLIC)
def test_dir_shows_public_names_only(name):
    mod = importlib.import_module(name)
    names = dir(mod)
    for leaked in ("annotations", "Any", "np", "math", "os", "Callable", "Sequence"):
        assert leaked not in names, (name, leaked)
    assert set(mod.__all__) <= set(names)
    for k in names:
        assert hasattr(mod, k), (name, k)
        assert not k.startswith("_") or k == "__version__", (name, k)
    assert names == sorted(names)


def test_dir_of_the_package():
    names = dir(gc)
    for k in ("MLP", "RNN", "sweep", "__version__", "optim", "sweeps", "grad_norm"):
        assert k in names
    assert "annotations" not in names and "_core" not in names
