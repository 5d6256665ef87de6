"""The model registry and protocol (gradchain.models): the kinds are registered, a config
rebuilds its model bit for bit, old import paths and pickles keep working, a new kind
registered from outside is picked up by io, training, sweeps, the CLI, clipping and the
optimisers without touching them, and no module outside gradchain/models/ asks which
kind of model it holds."""

from __future__ import annotations

import ast
import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import gradchain as gc
from gradchain import cli, losses, models, sweeps
from gradchain.models.mlp import MLPLab

PKG = Path(gc.__file__).resolve().parent


# ----------------------------------------------------------------------------- registry
def test_the_registry_lists_mlp_and_rnn() -> None:
    assert list(models.MODELS)[:4] == ["mlp", "rnn", "lstm", "gru"]
    assert models.MODELS["mlp"] is gc.MLP and models.MODELS["rnn"] is gc.RNN
    assert models.MODELS["lstm"] is gc.LSTM and models.MODELS["gru"] is gc.GRU
    assert models.get("LSTM") is gc.LSTM and models.get("GRU") is gc.GRU
    assert models.get("mlp") is gc.MLP and models.get("MLP") is gc.MLP
    assert models.get("rnn") is gc.RNN and models.get("RNN") is gc.RNN
    assert models.config_kinds()["MLP"] is gc.MLP and models.config_kinds()["RNN"] is gc.RNN
    assert models.DEFAULT_KIND == "mlp"
    for cls in (gc.MLP, gc.RNN, gc.LSTM, gc.GRU):
        assert issubclass(cls, models.Model) and cls.lab.model is cls
    for bad in ("transformer", None, 3, ["mlp"]):
        with pytest.raises(ValueError,
                           match="unknown model kind .* expected one of mlp, rnn, lstm, gru"):
            models.get(bad)
    assert models.describe_kinds("gc.") == "gc.MLP, gc.RNN, gc.LSTM or gc.GRU"


def test_register_refuses_what_is_not_a_new_model_kind() -> None:
    with pytest.raises(TypeError, match="Model subclass"):
        models.register(dict)  # type: ignore[arg-type]

    class Twin(gc.MLP):
        kind = "mlp"
        config_kind = "Twin"

    with pytest.raises(ValueError, match="is MLP's"):
        models.register(Twin)
    assert models.MODELS["mlp"] is gc.MLP


def test_the_old_names_keep_working() -> None:
    import gradchain.models as gm
    import gradchain.rnn as grnn

    assert grnn.RNN is gc.RNN and gm.RNN is gc.RNN and gm.MLP is gc.MLP
    assert gm.check_target is losses.check_target
    assert gm.StateError is gc.StateError and gm.IncompatibleKeys is gc.IncompatibleKeys
    assert dir(grnn) == ["RNN"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_that_name_the_old_modules_still_load(protocol, monkeypatch) -> None:
    """A pickle made before the models package names gradchain.models.MLP and
    gradchain.rnn.RNN: made here by giving the classes their old modules while pickling."""
    m = gc.MLP([3, 5, 2], norm="batch", seed=0)
    r = gc.RNN(2, 4, output_size=1, seed=1)
    for model, old in ((m, "gradchain.models"), (r, "gradchain.rnn")):
        with monkeypatch.context() as mp:
            mp.setattr(type(model), "__module__", old)
            data = pickle.dumps(model, protocol=protocol)
        assert old.encode() in data and type(model).__module__ != old
        back = pickle.loads(data)
        assert type(back) is type(model)
        for (k, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items(),
                                  strict=True):
            assert np.array_equal(a, b), k


# ------------------------------------------------------------------------- from_config
def _same_pass(a: models.Model, b: models.Model, x: np.ndarray, t: np.ndarray) -> None:
    la, ra = a.loss_and_grad(x, t)
    lb, rb = b.loss_and_grad(x, t)
    assert la == lb
    assert np.array_equal(a.report_axis.of(ra), b.report_axis.of(rb))
    for (k, ga), (_, gb) in zip(a.named_grads(), b.named_grads(), strict=True):
        assert np.array_equal(ga, gb), k


@pytest.mark.parametrize("kw", [
    {"activation": "gelu", "norm": "batch", "residual": True, "dtype": np.float64},
    {"activation": gc.Activation("leaky_relu", negative_slope=0.3), "init": "xavier_normal",
     "norm": "layer", "bias": False, "eps": 1e-3, "momentum": 0.2},
    {"init": gc.init.normal(sigma_w=1.3, sigma_b=0.2), "residual": [False, True]},
])
def test_from_config_round_trips_an_mlp_bit_for_bit(kw) -> None:
    m = gc.MLP([4, 6, 6, 3], seed=7, **kw)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(m.dtype)
    t = np.random.default_rng(1).normal(size=(5, 3)).astype(m.dtype)
    cfg = m.config()
    for m2 in (models.from_config(cfg, seed=7), gc.MLP.from_config(json.loads(json.dumps(cfg)),
                                                                  seed=7)):
        assert type(m2) is gc.MLP and m2.config() == cfg
        _same_pass(m, m2, x, t)
    m.eval()
    m3 = models.from_config(m.config(), seed=7)
    assert not m3.training  # the mode travels in the config


@pytest.mark.parametrize("kw", [
    {"output_size": 2, "batch_first": True, "init": "orthogonal"},
    {"activation": "relu", "init": "identity", "bias": False, "dtype": np.float64},
])
def test_from_config_round_trips_an_rnn_bit_for_bit(kw) -> None:
    r = gc.RNN(3, 5, seed=3, **kw)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 3)).astype(r.dtype)
    B = x.shape[0] if r.batch_first else x.shape[1]
    t = rng.normal(size=(B, r.output_size or 5)).astype(r.dtype)
    r2 = models.from_config(r.config(), seed=3)
    assert type(r2) is gc.RNN and r2.config() == r.config()
    _same_pass(r, r2, x, t)


def test_from_config_with_the_state_dict_continues_a_trained_model() -> None:
    m = gc.MLP([4, 8, 8, 2], norm="batch", seed=0)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 2, 16)
    gc.train(m, (x, t), gc.optim.Adam(m, lr=1e-2), epochs=2, batch_size=4,
             loss="cross_entropy", progress=False)
    m2 = models.from_config(m.config())
    m2.load_state_dict(m.state_dict())
    assert np.array_equal(m.loss_and_grad(x, t, loss="cross_entropy")[0],
                          m2.loss_and_grad(x, t, loss="cross_entropy")[0])


def test_from_config_checks_the_config() -> None:
    cfg = gc.MLP([2, 3]).config()
    with pytest.raises(ValueError, match=r"config: sizes\[1\] must be an int"):
        models.from_config({**cfg, "sizes": [2, "3"]})
    with pytest.raises(ValueError, match="unknown keys"):
        models.from_config({**cfg, "depth": 3})
    with pytest.raises(ValueError, match="unknown model kind"):
        models.from_config({**cfg, "kind": "Transformer"})
    with pytest.raises(ValueError, match="malformed gradchain config"):
        models.from_config({**cfg, "kind": "GRU"})  # a known kind, the MLP's keys
    with pytest.raises(ValueError, match="is not 'RNN'"):
        gc.RNN.from_config(cfg)
    with pytest.raises(TypeError, match="config: expected a dict"):
        models.from_config([("kind", "MLP")])  # type: ignore[arg-type]


def test_the_protocol_describes_the_tensors_before_building() -> None:
    for model in (gc.MLP([3, 4, 4, 2], norm="batch", bias=False),
                  gc.RNN(2, 3, output_size=4), gc.LSTM(2, 3, output_size=4),
                  gc.GRU(2, 3, bias=False)):
        cls = type(model)
        kwargs = cls.read_config(model.config(), models.ConfigReader())
        shapes = cls.tensor_shapes(kwargs)
        assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert cls.describe_config(kwargs).startswith(cls.__name__ + " with ")


# ---------------------------------------------------------------- a third, dummy kind
class Wide(gc.MLP):
    """A model kind registered from outside the package (an MLP underneath)."""

    kind = "wide"
    config_kind = "Wide"
    lab = MLPLab()


@pytest.fixture
def wide():
    saved = dict(models.MODELS)
    models.register(Wide)
    try:
        yield Wide
    finally:
        models.MODELS.clear()
        models.MODELS.update(saved)


def test_a_registered_kind_is_picked_up_by_io(wide, tmp_path) -> None:
    m = wide([3, 5, 2], norm="batch", seed=0)
    assert m.config()["kind"] == "Wide" and Wide.lab.model is Wide
    gc.save(m, tmp_path / "w.npz")
    back = gc.load(tmp_path / "w.npz")
    assert type(back) is Wide
    x = np.ones((4, 3), np.float32)
    assert np.array_equal(back.forward(x), m.forward(x))
    assert type(models.from_config(m.config())) is Wide
    assert type(copy.deepcopy(m)) is Wide


def test_a_registered_kind_is_picked_up_by_training_clip_and_optim(wide) -> None:
    m = wide([3, 5, 5, 2], seed=0)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 2))
    h = gc.train(m, (x, t.astype(np.float32)), gc.optim.SGD(m, lr=0.1), epochs=1,
                 batch_size=4, clip=1.0, progress=False)
    assert h.kind == "wide" and h.grad_norm_labels == ["a0", "a1", "a2"]
    assert h.num_steps == 3 and np.isfinite(h.loss).all()
    gc.clip_grad_value(m, 0.1)
    assert gc.grad_norm(m) >= 0
    with pytest.raises(ValueError, match="only an RNN takes on='all'"):
        gc.train(m, (x, t.astype(np.float32)), gc.optim.SGD(m, lr=0.1), on="all",
                 progress=False)


def test_a_registered_kind_is_picked_up_by_sweeps_and_the_cli(wide, capsys) -> None:
    assert "wide" in sweeps.OPTIONS and sweeps.OPTIONS["wide"] is MLPLab.sweep_defaults
    recs = gc.sweep({"depth": [2, 3]}, model="wide", width=6, batch=4, executor="serial",
                    progress=False, as_frame=False)
    assert [r["model"] for r in recs] == ["wide", "wide"]
    assert [len(r["grad_norms"]) for r in recs] == [3, 4]  # a0..aL: the MLP lab's report
    assert list(recs[0])[:len(MLPLab.sweep_defaults) + 1] == ["model", *MLPLab.sweep_defaults]
    assert "||dL/da_0||/||dL/da_L||" in sweeps.format_table(recs)
    assert cli.main(["probe", "--model", "wide", "--depth", "2", "--width", "4", "--json",
                     "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["kind"] == "Wide"
    assert cli.main(["sweep", "--model", "wide", "--depth", "2", "3", "--width", "4",
                     "--batch", "4", "--executor", "serial", "--json", "-q"]) == 0
    assert [r["model"] for r in json.loads(capsys.readouterr().out)] == ["wide", "wide"]


def test_a_registered_kind_is_picked_up_by_theory(wide) -> None:
    m = wide([16] * 13 + [4], init=gc.init.normal(1.0, 0.0), seed=0)
    _, rep = m.loss_and_grad(np.ones((8, 16), np.float32), np.zeros((8, 4), np.float32))
    assert gc.theory.compare(rep, model=m).activation == "tanh"
    with pytest.raises(TypeError, match=r"model: expected a gc.MLP or gc.Wide, got RNN"):
        gc.theory.compare(rep, model=gc.RNN(2, 3))


# ------------------------------------------------------- no kind branches outside models/
MODEL_NAMES = {"MLP", "RNN", "LSTM", "GRU"}
KINDS = {"mlp", "rnn", "lstm", "gru", "MLP", "RNN", "LSTM", "GRU"}


def _literals(node: ast.AST) -> list[object]:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for e in node.elts for v in _literals(e)]
    return []


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for e in node.elts for n in _names(e)]
    if isinstance(node, ast.BinOp):  # isinstance(x, MLP | RNN)
        return _names(node.left) + _names(node.right)
    return []


def _kind_branches(path: Path) -> list[str]:
    """Each ``isinstance(..., MLP / RNN)`` and each comparison with a model kind's name
    (``kind == "rnn"``, ``cfg["model"] in ("mlp", ...)``) in the module at ``path``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2
                and MODEL_NAMES & set(_names(node.args[1]))):
            hits.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(v, str) and v in KINDS for s in sides for v in _literals(s)):
                hits.append(f"{node.lineno}: {ast.unparse(node)}")
    return hits


def test_the_detector_sees_kind_branches(tmp_path) -> None:
    src = tmp_path / "m.py"
    src.write_text('isinstance(m, MLP)\nisinstance(m, (gc.RNN, int))\nisinstance(m, MLP | X)\n'
                   'kind == "rnn"\ncfg["model"] != "mlp"\nk in ("mlp", "x")\n'
                   '"MLP" == spec.kind\nisinstance(m, Model)\nc.kind == "fix"\n')
    assert [h.split(":")[0] for h in _kind_branches(src)] == ["1", "2", "3", "4", "5", "6", "7"]


def test_no_module_outside_models_branches_on_the_model_kind() -> None:
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("models/") or rel == "reference.py":  # the oracle stands alone
            continue
        if hits := _kind_branches(path):
            found[rel] = hits
    assert not found, f"model-kind branches outside gradchain/models/: {found}"
