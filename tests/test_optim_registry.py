"""The optimiser table (``gc.optim.OPTIMIZERS``) and ``gc.optim.build``: every optimiser
class has a row, building by name is building the class, and ``gc.sweep`` and the CLI
choose through the table (every name it holds, nothing else)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import gradchain as gc
from gradchain import cli, optim, sweeps


def _model() -> gc.MLP:
    return gc.MLP([4, 6, 3], dtype=np.float64, seed=0)


def test_every_optimiser_class_has_one_row() -> None:
    classes = {c for _, c in inspect.getmembers(optim, inspect.isclass)
               if issubclass(c, optim.Optimizer) and c is not optim.Optimizer}
    assert set(optim.OPTIMIZERS.values()) == classes
    assert list(optim.OPTIMIZERS) == ["sgd", "adam", "adamw", "rmsprop"]
    assert all(name == cls.__name__.lower() for name, cls in optim.OPTIMIZERS.items())
    with pytest.raises(TypeError):
        optim.OPTIMIZERS["adagrad"] = optim.SGD  # type: ignore[index]


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_build_is_the_class(name) -> None:
    """Same type, same hyper-parameters, bitwise the same steps as the class itself."""
    cls = optim.OPTIMIZERS[name]
    x = np.random.default_rng(1).normal(size=(5, 4))
    t = np.random.default_rng(2).normal(size=(5, 3))
    runs = []
    for make in (lambda m: optim.build(name, m, lr=0.05, weight_decay=0.01),
                 lambda m: cls(m, lr=0.05, weight_decay=0.01)):
        m = _model()
        opt = make(m)
        assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.05
        for _ in range(3):
            m.loss_and_grad(x, t)
            opt.step()
        runs.append(np.concatenate([p.ravel() for p in m.parameters()]))
    assert runs[0].tobytes() == runs[1].tobytes()
    assert isinstance(optim.build(name, _model()), cls)  # the class's defaults


def test_build_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"optimizer: expected one of sgd, adam, adamw, "
                                         r"rmsprop, got 'adagrad'"):
        optim.build("adagrad", _model())
    with pytest.raises(TypeError, match="optimizer: expected a name"):
        optim.build(optim.SGD, _model())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):  # the class's own checks still apply
        optim.build("adam", _model(), lr=-1.0)


def test_sweep_takes_every_name_of_the_table(monkeypatch) -> None:
    built = []
    real = optim.build
    monkeypatch.setattr(optim, "build", lambda name, *a, **k: (built.append(name),
                                                                 real(name, *a, **k))[1])
    for name in optim.OPTIMIZERS:
        rec = gc.sweep({"depth": [2]}, width=8, batch=4, seed=1, executor="serial",
                       progress=False, as_frame=False,
                       train={"epochs": 1, "n": 16, "optimizer": name})[0]
        assert np.isfinite(rec["final_loss"])
    assert built == list(optim.OPTIMIZERS)
    with pytest.raises(ValueError, match="train\\['optimizer'\\].*'sgd', 'adam', 'adamw'"):
        sweeps._check_train({"optimizer": "lbfgs"})


def test_cli_choices_are_the_table(capsys) -> None:
    assert cli.main(["sweep", "--depth", "2", "--width", "8", "--batch", "4", "--epochs", "1",
                     "--optimizer", "adamw", "--executor", "serial", "--json", "-q"]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert np.isfinite(rec["final_loss"])
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--optimizer", "lbfgs"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "lbfgs" in err and all(n in err for n in optim.OPTIMIZERS)
