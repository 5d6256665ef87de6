"""gradchain.losses (one list of losses, one implementation used by the models and by
gc.train) and the independence of the NumPy reference: the package never calls
``gradchain.reference`` at run time, the reference imports nothing from the package, and
the package's own losses and activations agree with it to rounding."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import gradchain as gc
from gradchain import losses
from gradchain import reference as ref

PKG = Path(gc.__file__).resolve().parent
# The benchmark harness runs the reference on purpose: it is the "numpy" peer and the
# float64 truth the agreement checks arbitrate with (docs/WORKLOADS.md).
HARNESS = {"bench/cases.py", "bench/peers/numpy_peer.py"}


def _imports_of_reference(path: Path) -> list[str]:
    """How the module at ``path`` imports gradchain.reference (one entry per import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth = len(path.relative_to(PKG).parts) - 1  # how many dots reach the package root
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [a.name for a in node.names if a.name.startswith("gradchain.reference")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            at_root = (node.level == depth + 1 and mod in ("", "reference")) or (
                node.level == 0 and mod in ("gradchain", "gradchain.reference"))
            if not at_root:
                continue
            if mod.endswith("reference"):
                hits.append(f"from {'.' * node.level}{mod} import ...")
            hits += [f"from {'.' * node.level}{mod} import {a.name} as {a.asname}"
                     for a in node.names if a.name == "reference"]
    return hits


def test_no_module_imports_the_reference_but_the_public_reexport() -> None:
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel != "reference.py" and (hits := _imports_of_reference(path)):
            found[rel] = hits
    assert found.pop("__init__.py") == ["from . import reference as reference"]
    assert set(found) == HARNESS, f"modules importing gradchain.reference: {found}"


def test_the_detector_sees_every_form() -> None:
    src = PKG / "bench" / "peers" / "numpy_peer.py"
    assert _imports_of_reference(src)  # `from ... import reference` inside a function
    assert _imports_of_reference(PKG / "__init__.py")


def test_the_reference_imports_nothing_from_the_package() -> None:
    tree = ast.parse((PKG / "reference.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("gradchain"), (
                ast.dump(node))
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("gradchain") for a in node.names)


def test_nothing_calls_the_reference_at_run_time(monkeypatch) -> None:
    """Every function of gradchain.reference raises: models, losses, activations, theory,
    clipping and training still run."""
    for name, fn in inspect.getmembers(ref, inspect.isfunction):
        if fn.__module__ == ref.__name__:
            def boom(*a, _name=name, **k):
                raise AssertionError(f"gradchain.reference.{_name} called at run time")
            monkeypatch.setattr(ref, name, boom)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    for residual in (True, 1, [True, False]):
        m = gc.MLP([5, 5, 5, 3], activation="gelu", residual=residual, dtype=np.float64,
                   seed=0)
    for loss, t in (("mse", rng.normal(size=(8, 3))), ("cross_entropy", rng.integers(0, 3, 8))):
        value, rep = m.loss_and_grad(x, t, loss=loss)
        assert np.isfinite(value) and rep.loss == value
    r = gc.RNN(2, 4, output_size=3, dtype=np.float64, seed=0)
    xs = rng.normal(size=(6, 8, 2))
    r.loss_and_grad(xs, rng.integers(0, 3, (6, 8)), loss="cross_entropy", on="all")
    r.loss_and_grad(xs, rng.normal(size=(8, 3)), loss="mse", on="last")
    for name in gc.ACTIVATIONS:
        gc.Activation(name)(x)
        gc.Activation(name).grad(x)
    gc.theory.chi1("relu", 1.5, 0.1)
    gc.clip_grad_norm(m, 1.0)
    h = gc.train(m, (x, rng.integers(0, 3, 8)), gc.optim.SGD(m, lr=0.1), epochs=2,
                 batch_size=4, loss="cross_entropy", val=(x, rng.integers(0, 3, 8)),
                 progress=False)
    assert np.isfinite(h.val_loss).all()


# ------------------------------------------------------------------- losses vs reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", losses.LOSSES)
def test_losses_agree_with_the_reference(loss, dtype) -> None:
    rng = np.random.default_rng(7)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for trial in range(60):
        B, K = int(rng.integers(1, 50)), int(rng.integers(1, 10))
        y = (rng.normal(size=(B, K)) * [0.01, 1.0, 20.0][trial % 3]).astype(dtype)
        t = (rng.normal(size=(B, K)).astype(dtype) if loss == "mse"
             else rng.integers(0, K, size=B))
        v, d = losses.value_and_grad(y, t, loss)
        vr, dr = ref.loss_forward_backward(y, t, loss)
        assert d.dtype == y.dtype and d.shape == y.shape
        assert v == pytest.approx(vr, rel=tol, abs=tol)
        np.testing.assert_allclose(d, dr, rtol=tol, atol=tol * np.max(np.abs(dr)))
        # gc.train's evaluation: float64 whatever y's dtype
        v64 = losses.value(y, t, loss)
        vr64, _ = ref.loss_forward_backward(y.astype(np.float64), t.astype(np.float64)
                                            if loss == "mse" else t, loss)
        assert v64 == pytest.approx(vr64, rel=1e-12, abs=1e-15)
        # RNN shapes: on="last" and on="all"
        T = int(rng.integers(1, 5))
        o = rng.normal(size=(T, B, K)).astype(dtype)
        ta = (rng.normal(size=(T, B, K)).astype(dtype) if loss == "mse"
              else rng.integers(0, K, size=(T, B)))
        for on, tt in (("last", t), ("all", ta)):
            v, g = losses.sequence_value_and_grad(o, tt, loss, on)
            vr, gr = ref.rnn_loss_grads(o, tt, loss, on=on)
            assert g.shape == o.shape and g.dtype == o.dtype
            assert v == pytest.approx(vr, rel=tol, abs=tol)
            np.testing.assert_allclose(g, gr, rtol=tol, atol=tol * np.max(np.abs(gr)))


def test_loss_names_are_one_list() -> None:
    assert losses.LOSSES == ("mse", "cross_entropy")
    assert losses.check_loss("mse") == "mse"
    for bad in ("l1", None, 3, ["mse"]):
        with pytest.raises(ValueError, match="loss: expected one of mse, cross_entropy"):
            losses.check_loss(bad)
    m = gc.MLP([2, 2])
    with pytest.raises(ValueError, match="loss: expected one of mse, cross_entropy, got 'l1'"):
        m.loss_and_grad(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), loss="l1")
    with pytest.raises(ValueError, match="loss: expected one of"):
        gc.RNN(2, 2).loss_and_grad(np.zeros((1, 1, 2), np.float32), np.zeros((1, 2)), loss="l1")
    # no second list of names (the models are a package: every module of it)
    for path in [*sorted((PKG / "models").glob("*.py")), PKG / "rnn.py", PKG / "training.py"]:
        text = path.read_text(encoding="utf-8")
        assert '("mse", "cross_entropy")' not in text, path.name


def test_the_models_use_the_losses_module(monkeypatch) -> None:
    """MLP, RNN and gc.train's evaluation all go through gradchain.losses."""
    calls = []
    for name in ("value_and_grad", "value"):
        real = getattr(losses, name)
        monkeypatch.setattr(losses, name, lambda *a, _r=real, _n=name, **k: (
            calls.append(_n), _r(*a, **k))[1])
    x = np.ones((4, 3), np.float32)
    m = gc.MLP([3, 2], seed=0)
    m.loss_and_grad(x, np.zeros(4, np.int64), loss="cross_entropy")
    gc.RNN(3, 2, seed=0).loss_and_grad(x[None], np.zeros((4, 2), np.float32))
    gc.train(m, (x, np.zeros((4, 2), np.float32)), gc.optim.SGD(m), epochs=1,
             val=(x, np.zeros((4, 2), np.float32)), progress=False)
    assert calls.count("value_and_grad") >= 3 and "value" in calls


def test_activations_agree_with_the_reference() -> None:
    """The package's NumPy activations (its own table) against the reference's formulas,
    on random inputs and at the kinks, both dtypes."""
    rng = np.random.default_rng(3)
    variants = [(n, {}) for n in gc.ACTIVATIONS] + [
        ("leaky_relu", {"negative_slope": 0.3}), ("elu", {"alpha": 0.4}),
        ("softplus", {"beta": 3.0, "threshold": 2.0}),
        ("hardtanh", {"min_val": -2.0, "max_val": 0.5})]
    for dtype, tol in ((np.float64, 1e-14), (np.float32, 1e-6)):
        x = np.concatenate([rng.normal(size=4000) * s for s in (0.1, 1.0, 5.0, 50.0)]
                           + [[0.0, -1.0, 1.0, 20.0, np.inf, -np.inf, np.nan]]).astype(dtype)
        for name, params in variants:
            act = gc.Activation(name, **params)
            xs = np.concatenate([x, np.asarray(act.spec.kink_points(act.params), dtype)])
            for ours, theirs in ((act(xs), ref.act_forward(name, xs, **params)),
                                 (act.grad(xs), ref.act_grad(name, xs, **params))):
                assert ours.dtype == xs.dtype
                np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, equal_nan=True,
                                           err_msg=f"{name} {params} {dtype.__name__}")
    c = gc.Activation.custom(np.sin, np.cos)
    np.testing.assert_array_equal(c(x), ref.act_forward((np.sin, np.cos), x))
    with pytest.raises(TypeError, match="float32 or float64"):
        gc.Activation("tanh")(np.arange(3))
    with pytest.raises(ValueError, match="shape"):
        gc.Activation.custom(np.sum, np.sum)(np.ones(3))
