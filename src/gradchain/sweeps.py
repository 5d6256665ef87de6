"""``gc.sweep``: one probe (a forward/backward pass and its gradient report) for every
configuration of a grid, run on local processes, threads or any
``concurrent.futures.Executor`` (e.g. a Dask distributed client's), with results that
are bitwise identical whichever executor ran them.

    res = gc.sweep({"activation": ["sigmoid", "tanh", "relu"], "depth": [8, 32],
                    "norm": [None, "batch"]}, width=128, batch=64)

Each run builds its model with a seed derived from ``(seed, configuration)`` by a
stable hash (:func:`run_seed`), so a configuration gives the same numbers in any
sweep, in any order, on any worker; :func:`run_one` is a single run.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import difflib
import hashlib
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import activations as _acts
from . import init as _init
from . import losses as _losses
from . import models as _models
from ._validate import check_bool, positive_int, real
from .optim import OPTIMIZERS

__all__ = [
    "OPTIONS", "SweepError", "configurations", "format_table", "load_config", "run_one",
    "run_seed", "sweep", "write_csv",
]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


class _Options(Mapping[str, Mapping[str, Any]]):
    """The options of each registered model kind (``Model.lab.sweep_defaults``), read from
    the registry when asked (a kind registered later is there too)."""

    def __getitem__(self, kind: str) -> Mapping[str, Any]:
        return _models.MODELS[kind].lab.sweep_defaults

    def __iter__(self) -> Iterator[str]:
        return iter(_models.MODELS)

    def __len__(self) -> int:
        return len(_models.MODELS)

    def __repr__(self) -> str:
        return repr(dict(self))


# Every option of each model with its default, in the order records list them.
# ``in_features=None`` means ``width``; ``sigma_w`` / ``sigma_b`` select gc.init.normal.
OPTIONS: Mapping[str, Mapping[str, Any]] = _Options()
"""``{"mlp": {option: default}, "rnn": {...}}``: what a grid may set, for each model
(each kind's ``lab.sweep_defaults``)."""

_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1, "batch_size": 32, "lr": 0.01, "optimizer": "sgd", "data": None, "n": 512,
    "clip": None,
}
_EXECUTORS = ("serial", "threads", "processes")


class SweepError(RuntimeError):
    """A run of the sweep raised: ``config`` and ``index`` name it; the worker's exception
    is the ``__cause__``."""

    def __init__(self, message: str, index: int, config: dict[str, Any]) -> None:
        super().__init__(message)
        self.index = index
        self.config = config


# ---------------------------------------------------------------- validation
def _describe(v: Any) -> str:
    return repr(v) if not isinstance(v, type) else v.__name__


def _opt_float(v: Any, name: str, minimum: float | None = None) -> float:
    return real(v, name, minimum=minimum)


def _opt_choice(v: Any, name: str, choices: Sequence[Any]) -> Any:
    if not isinstance(v, str) and v is not None:
        raise TypeError(f"{name}: expected one of {', '.join(map(repr, choices))}, "
                        f"got {type(v).__name__}")
    if v not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def _opt_activation(v: Any, name: str) -> str | _acts.Activation:
    if isinstance(v, _acts.Activation):
        if v.is_custom:
            raise ValueError(f"{name}: a custom activation cannot be swept (its callables "
                             "do not travel to worker processes); use a built-in name")
        return v
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected a name or gc.Activation, got {type(v).__name__}")
    return _acts.Activation(v).name  # ValueError names the choices; aliases -> canonical name


def _opt_init(v: Any, name: str) -> str | _init.Init:
    if isinstance(v, _init.Init):
        _init.resolve(v)
        return v
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected a scheme name or gc.init.<scheme>(...), "
                        f"got {type(v).__name__}")
    if v not in _init.SCHEMES:
        raise ValueError(f"{name}: unknown scheme {v!r}; expected one of "
                         f"{', '.join(_init.SCHEMES)}")
    return v


def _opt_sigma(v: Any, name: str) -> float | None:
    return None if v is None else _opt_float(v, name, minimum=0.0)


def _opt_norm(v: Any, name: str) -> str | None:
    return None if v in (None, "none") else _opt_choice(v, name, (None, "none", "batch", "layer"))


def _opt_residual(v: Any, name: str) -> bool | int:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected False, True or an int k >= 1, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected False, True or an int k >= 1 (every k-th layer), "
                         f"got {v}")
    return int(v)


def _opt_dtype(v: Any, name: str) -> str:
    if isinstance(v, str):
        if v not in ("float32", "float64"):
            raise ValueError(f"{name}: expected 'float32' or 'float64', got {v!r}")
        return v
    try:
        d = np.dtype(v)
    except TypeError:
        raise TypeError(f"{name}: expected 'float32', 'float64' or a NumPy float dtype, "
                        f"got {_describe(v)}") from None
    if d not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected float32 or float64, got {d}")
    return d.name


def _opt_optional_int(v: Any, name: str) -> int | None:
    return None if v is None else positive_int(v, name)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "activation": _opt_activation,
    "init": _opt_init,
    "input_init": _opt_init,
    "sigma_w": _opt_sigma,
    "sigma_b": _opt_sigma,
    "depth": positive_int,
    "width": positive_int,
    "in_features": _opt_optional_int,
    "out_features": positive_int,
    "norm": _opt_norm,
    "residual": _opt_residual,
    "residual_scale": _opt_float,
    "bias": check_bool,
    "dtype": _opt_dtype,
    "batch": positive_int,
    "loss": lambda v, n: _opt_choice(v, n, _losses.LOSSES),
    "hidden_size": positive_int,
    "input_size": positive_int,
    "output_size": _opt_optional_int,
    "steps": positive_int,
    "on": lambda v, n: _opt_choice(v, n, ("last", "all")),
    "model": lambda v, n: _opt_choice(v, n, tuple(OPTIONS)),
}


def _checker(option: Any) -> Callable[[Any, str], Any] | None:
    """The check of a sweep option: this module's table, or a model kind's own."""
    if not isinstance(option, str):
        return None
    if option in _CHECKS:
        return _CHECKS[option]
    for cls in _models.MODELS.values():
        if option in cls.lab.sweep_checks:
            return cls.lab.sweep_checks[option]
    return None


def _check_value(option: str, value: Any, where: str) -> Any:
    """The normalised value, or the checker's TypeError/ValueError with ``where`` added."""
    check = _checker(option)
    assert check is not None
    try:
        return check(value, option)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{e} (in {where})") from None


def _unknown(option: Any, model: str, where: str) -> ValueError:
    known = ["model", *OPTIONS[model]]
    if not isinstance(option, str):
        return ValueError(f"{where}: option names must be str, got {option!r}")
    close = difflib.get_close_matches(option, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown option {option!r} for model={model!r} in {where}{hint}; "
                      f"expected one of {', '.join(known)}")


# What a training data set implies for the options not given (an explicit other value
# is a ValueError): each kind's ``lab.data_implies`` (the digits are 64 pixels and 10
# classes, the adding problem has two inputs (value, marker) and one output).
def _implied(train: Mapping[str, Any] | None, raw: Mapping[str, Any]) -> dict[str, Any]:
    if train is None:
        return {}
    lab = _models.get(raw.get("model", _models.DEFAULT_KIND)).lab
    data = train["data"] or lab.train_data[0]
    return dict(lab.data_implies.get(data, {}))


def _resolve(raw: dict[str, Any], where: str,
             implied: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A full, normalised configuration from the given options: every option of the model
    in the documented order, defaults filled in (``implied`` over the defaults: what the
    training data implies), the cross-option rules checked."""
    model = raw.get("model", _models.DEFAULT_KIND)
    defaults = OPTIONS[model]
    for k in raw:
        if k != "model" and k not in defaults:
            raise _unknown(k, model, where)
    cfg: dict[str, Any] = {"model": model}
    cfg.update(defaults)
    cfg.update(implied or {})
    cfg.update({k: v for k, v in raw.items() if k != "model"})

    sigma = cfg["sigma_w"] is not None or cfg["sigma_b"] is not None
    if sigma or cfg["init"] == "normal":
        if "init" in raw and cfg["init"] != "normal":
            raise ValueError(f"init: {cfg['init']!r} and sigma_w/sigma_b both given in {where}; "
                             "sigma_w/sigma_b select init='normal' (gc.init.normal)")
        cfg["init"] = "normal"
        cfg["sigma_w"] = 1.0 if cfg["sigma_w"] is None else cfg["sigma_w"]
        cfg["sigma_b"] = 0.0 if cfg["sigma_b"] is None else cfg["sigma_b"]

    _models.get(model).lab.resolve(cfg, where)
    return cfg


def _fixed_model(fixed: Mapping[str, Any]) -> str:
    m = fixed.get("model")
    return m if isinstance(m, str) and m in OPTIONS else _models.DEFAULT_KIND


def _values(axis: Any, option: str) -> list[Any]:
    if isinstance(axis, np.ndarray):
        if axis.ndim != 1:
            raise ValueError(f"grid[{option!r}]: expected a 1-d list of values, got an array of "
                             f"shape {axis.shape}")
        axis = axis.tolist()
    if isinstance(axis, (str, bytes, Mapping)) or not isinstance(axis, Iterable):
        raise TypeError(f"grid[{option!r}]: expected a list of values, got "
                        f"{type(axis).__name__} (put single values in the keyword options)")
    values = list(axis)
    if not values:
        raise ValueError(f"grid[{option!r}]: expected a non-empty list of values, got []")
    return values


def configurations(grid: Mapping[str, Any], *, train: Mapping[str, Any] | None = None,
                   **fixed: Any) -> list[dict[str, Any]]:
    """Every configuration of the sweep, in run order, validated and normalised (and, with
    ``train``, checked against the training task).

    The order is ``itertools.product`` over the grid's axes in the order the grid lists
    them: the last axis varies fastest (as nested for-loops, the first axis outermost).
    Each configuration holds every option of its model, defaults filled in
    (``in_features`` becomes ``width``; ``sigma_w``/``sigma_b`` set ``init="normal"``;
    ``train`` data ``"digits"`` sets ``in_features=64, out_features=10,
    loss="cross_entropy"`` and ``"adding"`` ``input_size=2, output_size=1`` where not
    given), ``norm="none"`` becomes None and dtypes become ``"float32"``/``"float64"``.

    Raises ValueError (TypeError for a wrong type) naming the option, before anything runs.
    """
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid: expected a dict option -> list of values, got "
                        f"{type(grid).__name__}")
    both = sorted(set(grid) & set(fixed), key=str)
    if both:
        raise ValueError(f"option(s) {both} given both in the grid and as keyword options")
    axes: list[tuple[str, list[Any]]] = []
    for option, axis in grid.items():
        if _checker(option) is None:
            raise _unknown(option, _fixed_model(fixed), "the grid")
        values = _values(axis, option)
        axes.append((option, [_check_value(option, v, f"grid[{option!r}][{i}]")
                              for i, v in enumerate(values)]))
    fixed_n: dict[str, Any] = {}
    for option, v in fixed.items():
        if _checker(option) is None:
            raise _unknown(option, _fixed_model(fixed), "the keyword options")
        fixed_n[option] = _check_value(option, v, f"{option}={v!r}")
    train_ = _check_train(train)
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        raw = dict(fixed_n)
        raw.update({name: v for (name, _), v in zip(axes, combo, strict=True)})
        where = "configuration " + ", ".join(f"{k}={v!r}" for k, v in raw.items()) if raw \
            else "the default configuration"
        out.append(_resolve(raw, where, _implied(train_, raw)))
    if train_ is not None:
        for i, cfg in enumerate(out):
            _check_train_config(train_, cfg, f"configuration {i}")
    return out


def _canonical(v: Any) -> Any:
    if isinstance(v, (_acts.Activation, _init.Init)):
        return v.to_config()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def run_seed(config: Mapping[str, Any], seed: int = 0) -> int:
    """The model seed of one run: the first 8 bytes of the ``sha256`` of the canonical
    JSON (sorted keys, no spaces, UTF-8) of ``{"config": config, "seed": seed}``, read as
    a little-endian integer and shifted right by one bit (a 63-bit seed).

    ``config`` is a full configuration as :func:`configurations` returns it. The hash is
    stable across processes, machines and Python versions (never ``hash()``).
    """
    seed_ = positive_int(seed, "seed", minimum=0)
    doc = {"config": {k: _canonical(v) for k, v in config.items()}, "seed": seed_}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------- runs
def _check_train(train: Any) -> dict[str, Any] | None:
    if train is None:
        return None
    if not isinstance(train, Mapping):
        raise TypeError(f"train: expected a dict (epochs=, batch_size=, lr=, optimizer=, data=, "
                        f"n=, clip=), got {type(train).__name__}")
    unknown = sorted(set(train) - set(_TRAIN_DEFAULTS), key=str)
    if unknown:
        raise ValueError(f"train: unknown key(s) {unknown}; expected {', '.join(_TRAIN_DEFAULTS)}")
    t = dict(_TRAIN_DEFAULTS)
    t.update(train)
    t["epochs"] = positive_int(t["epochs"], "train['epochs']")
    t["batch_size"] = positive_int(t["batch_size"], "train['batch_size']")
    t["n"] = positive_int(t["n"], "train['n']", minimum=2)
    t["lr"] = real(t["lr"], "train['lr']")
    if t["lr"] <= 0:
        raise ValueError(f"train['lr']: expected a number > 0, got {t['lr']}")
    if t["clip"] is not None:
        t["clip"] = real(t["clip"], "train['clip']", minimum=0.0)
    t["optimizer"] = _opt_choice(t["optimizer"], "train['optimizer']", tuple(OPTIMIZERS))
    t["data"] = _opt_choice(t["data"], "train['data']", (None, *_train_data()))
    return t


def _train_data() -> list[str]:
    """Every training data set of the registered kinds, in registry order."""
    names: list[str] = []
    for cls in _models.MODELS.values():
        names += [d for d in cls.lab.train_data if d not in names]
    return names


def _train_data_name(train: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    return train["data"] or _models.get(cfg["model"]).lab.train_data[0]


def _check_train_config(train: Mapping[str, Any], cfg: Mapping[str, Any], where: str) -> None:
    _models.get(cfg["model"]).lab.check_training(_train_data_name(train, cfg), cfg, where)


def _build(cfg: Mapping[str, Any], model_seed: int) -> Any:
    dtype = np.dtype(cfg["dtype"])
    init = cfg["init"]
    if init == "normal" and isinstance(init, str):
        init = _init.normal(sigma_w=cfg["sigma_w"], sigma_b=cfg["sigma_b"])
    return _models.get(cfg["model"]).lab.build(cfg, init, dtype, model_seed)


def _probe_data(cfg: Mapping[str, Any], model_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ~ N(0, 1) and targets (N(0, 1) for mse, uniform classes for cross_entropy),
    drawn in float64 from ``np.random.default_rng([model_seed, 1])`` then cast."""
    rng = np.random.default_rng([model_seed, 1])
    dtype = np.dtype(cfg["dtype"])
    shapes = _models.get(cfg["model"]).lab.probe_shapes(cfg)
    x = rng.standard_normal(shapes.x).astype(dtype)
    if cfg["loss"] == "mse":
        t = rng.standard_normal((*shapes.lead, shapes.classes)).astype(dtype)
    else:
        t = rng.integers(0, shapes.classes, size=shapes.lead)
    return x, t


def run_one(config: Mapping[str, Any], seed: int = 0,
            train: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One run of a sweep: the record of configuration ``config`` (options as
    :func:`sweep` takes them; missing ones take their defaults) under the sweep seed
    ``seed``.

    Builds the model with ``seed=run_seed(config, seed)``, draws the probe batch from
    ``np.random.default_rng([run_seed, 1])`` (inputs ``N(0, 1)``: ``(batch, in_features)``
    for the MLP, ``(steps, batch, input_size)`` for the RNN; mse targets ``N(0, 1)``,
    cross-entropy targets uniform classes), runs one ``loss_and_grad`` and, with
    ``train``, a short training afterwards. See :func:`sweep` for the record's fields.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict of options, got {type(config).__name__}")
    train_ = _check_train(train)
    cfg = configurations({}, train=train_, **config)[0]  # idempotent on its own output
    s = run_seed(cfg, seed)
    model = _build(cfg, s)
    x, t = _probe_data(cfg, s)
    # an overflowing configuration is a result, not an error: no NumPy warnings
    with np.errstate(all="ignore"):
        loss, rep = _probe(model, cfg, x, t)
        norms = model.report_axis.of(rep)
        record = dict(cfg)
        record.update(
            run_seed=s,
            loss_value=float(loss),
            ratio=float(rep.ratio),
            log10_slope=float(rep.log10_slope()),
            verdict=rep.verdict(),
            global_norm=float(rep.global_norm),
            first_nonfinite=rep.first_nonfinite,
            forward_first_nonfinite=rep.forward_first_nonfinite,
            input_grad_norm=float(norms[0]),
            top_grad_norm=float(norms[-1]),
            grad_norms=[float(v) for v in norms],
        )
        if train_ is not None:
            record.update(_train(model, cfg, seed, train_))
    return record


def _probe(model: Any, cfg: Mapping[str, Any], x: np.ndarray, t: np.ndarray) -> tuple[float, Any]:
    """``loss_and_grad`` (an overflowing forward pass gives a NaN loss and a report that
    says where NaN/Inf appeared, not an error)."""
    kw = _models.get(cfg["model"]).lab.probe_shapes(cfg).loss_options
    return model.loss_and_grad(x, t, loss=cfg["loss"], **kw)


def _train(model: Any, cfg: Mapping[str, Any], seed: int,
           train: Mapping[str, Any]) -> dict[str, Any]:
    """Train after the probe; the data (and the shuffling) depend on the sweep seed only,
    so every configuration learns the same task."""
    from . import optim
    from .training import train as gc_train

    dtype = np.dtype(cfg["dtype"])
    name = _train_data_name(train, cfg)
    x, y, val = _models.get(cfg["model"]).lab.training_data(name, cfg, train["n"], seed, dtype)
    opt = optim.build(train["optimizer"], model, lr=train["lr"])
    hist = gc_train(model, (x, y), opt, epochs=train["epochs"], batch_size=train["batch_size"],
                    loss=cfg["loss"], clip=train["clip"], val=val, seed=seed, progress=False)

    def last(v: Any) -> float | None:
        return None if v is None or len(v) == 0 else float(v[-1])

    return {
        "train_data": name,
        "final_loss": last(hist.epoch_loss),
        "accuracy": last(hist.accuracy),
        "val_accuracy": last(hist.val_accuracy),
        "diverged": bool(hist.diverged),
    }


def _run_task(index: int, config: dict[str, Any], seed: int, train: dict[str, Any] | None,
              parent_pid: int, threads: int | None, isa: str) -> tuple[int, dict[str, Any]]:
    """What a worker runs. In another process: use ``threads`` core threads (1 by
    default: the workers already share the cores) and the caller's SIMD variant."""
    if os.getpid() != parent_pid:
        import gradchain as gc

        if gc.get_num_threads() != (threads or 1):
            gc.set_num_threads(threads or 1)
        if gc.get_isa() != isa and isa in gc.available_isas():
            gc.set_isa(isa)
    return index, run_one(config, seed, train)


# ------------------------------------------------------------------ executors
def _pool_context() -> Any:
    import multiprocessing as mp

    # never "fork": the parent may hold OpenMP/OpenBLAS threads, which fork does not copy
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method)


def _start_method(executor: Any) -> str | None:
    """The start method of the worker processes the sweep would start (None: no new
    processes, or an executor that is not a local process pool)."""
    import multiprocessing as mp

    if executor is None or executor == "processes":
        return str(_pool_context().get_start_method())
    if isinstance(executor, cf.ProcessPoolExecutor):
        ctx = getattr(executor, "_mp_context", None)
        return str(ctx.get_start_method() if ctx is not None else mp.get_start_method())
    return None


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    if len(t.ops) != 1 or not isinstance(t.ops[0], ast.Eq):
        return False
    sides = [t.left, t.comparators[0]]
    names = [x.id for x in sides if isinstance(x, ast.Name)]
    consts = [x.value for x in sides if isinstance(x, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def _unguarded_main_line() -> tuple[str, int] | None:
    """``(script, line)`` when this call comes from top-level code of the ``__main__``
    script that is not under ``if __name__ == "__main__":``; None otherwise (a guarded
    call, an interactive session, a script whose source cannot be read)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str):
        return None
    g = vars(main)
    f = sys._getframe(1)
    while f is not None and not (f.f_globals is g and f.f_code.co_name == "<module>"):
        f = f.f_back
    if f is None:
        return None
    try:
        with open(f.f_code.co_filename, "rb") as src:
            tree = ast.parse(src.read())
    except (OSError, SyntaxError, ValueError):
        return None
    line = f.f_lineno
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return None if _is_main_guard(node) else (path, line)
    return None


def _check_main_guard(executor: Any) -> None:
    """RuntimeError, before any process starts, when worker processes would re-import
    the caller's script and run this sweep again (spawn / forkserver re-run the main
    module's top-level code in every worker)."""
    method = _start_method(executor)
    if method is None or method == "fork":
        return
    where = _unguarded_main_line()
    if where is None:
        return
    raise RuntimeError(
        f"gc.sweep: the worker processes ({method!r} start method) re-import the script "
        f"{where[0]}, whose line {where[1]} would run this sweep again in each of them: put "
        "the script's code under `if __name__ == \"__main__\":` (as the multiprocessing "
        "docs ask), or pass executor=\"serial\" or \"threads\"")


def _check_executor(executor: Any) -> None:
    if executor is None or isinstance(executor, cf.Executor):
        return
    if isinstance(executor, str):
        if executor not in _EXECUTORS:
            raise ValueError(f"executor: expected None, {', '.join(map(repr, _EXECUTORS))} or "
                             f"a concurrent.futures.Executor, got {executor!r}")
        return
    raise TypeError(f"executor: expected None, a str or a concurrent.futures.Executor, got "
                    f"{type(executor).__name__}")


def sweep(
    grid: Mapping[str, Sequence[Any]],
    *,
    executor: str | cf.Executor | None = None,
    progress: bool = True,
    train: Mapping[str, Any] | None = None,
    seed: int = 0,
    as_frame: bool | None = None,
    max_workers: int | None = None,
    threads: int | None = None,
    **fixed: Any,
) -> Any:
    """Probe the gradient flow of every configuration of a grid.

    The configurations are the cartesian product of the grid's axes, in the grid's order
    with the last axis varying fastest (as nested for-loops), each merged with the
    keyword options ``fixed``. Each run builds the model (seeded by :func:`run_seed`, a
    stable hash of ``(seed, configuration)``), draws one batch and runs one
    ``loss_and_grad`` (:func:`run_one`).

    Parameters
    ----------
    grid : dict option -> list of values
        Grid axes. Options for ``model="mlp"`` (default): ``activation``, ``init`` (a
        scheme name; or ``sigma_w`` / ``sigma_b`` for ``gc.init.normal``), ``depth``
        (hidden layers, 32), ``width`` (128), ``in_features`` (width), ``out_features``
        (10), ``norm`` (None, "batch", "layer"), ``residual`` (False, True, k),
        ``residual_scale``, ``bias``, ``dtype`` ("float32", "float64" or NumPy dtypes),
        ``batch`` (64), ``loss`` ("mse", "cross_entropy"). For ``model="rnn"``:
        ``activation``, ``init`` (of W_hh), ``input_init``, ``sigma_w``, ``sigma_b``,
        ``hidden_size`` (64), ``input_size`` (8), ``output_size`` (None), ``steps``
        (T, 100), ``batch`` (32), ``on`` ("last", "all"), ``bias``, ``dtype``, ``loss``.
        ``gc.sweeps.OPTIONS`` lists them with their defaults.
    executor : None, "serial", "threads", "processes" or concurrent.futures.Executor
        None / "processes": a local process pool (``forkserver`` or ``spawn``, never
        ``fork``) of ``max_workers`` workers (default ``os.cpu_count()``), each running
        the core on ``threads`` threads (default 1). "serial": in this process, one run
        after another. "threads": a thread pool in this process. An Executor instance
        (e.g. ``dask.distributed.Client(...).get_executor()``) is used and left open.
        The records are bitwise identical whichever executor ran them.
    progress : bool
        A tqdm bar (on stderr) over finished runs.
    train : dict or None
        ``dict(epochs=1, batch_size=32, lr=0.01, optimizer="sgd", data=..., n=512,
        clip=None)`` (``optimizer``: a name of ``gc.optim.OPTIMIZERS``): after the probe,
        train the model with ``gc.train`` on ``data``:
        ``"teacher"`` (MLP default; ``gc.data.teacher(n, sizes=(in_features, 64,
        out_features))``, its argmax as the classes for cross_entropy), ``"digits"``
        (MLP; implies ``in_features=64``, ``out_features=10`` and
        ``loss="cross_entropy"`` where they are not given, an explicit other value is a
        ValueError; the held-out split is the validation set) or ``"adding"`` (RNN
        default; ``gc.data.adding(steps, n)``; implies ``input_size=2`` and
        ``output_size=1``; needs mse). The data and the shuffling derive from
        ``seed`` alone, so every configuration learns the same task. Records get
        ``train_data``, ``final_loss`` (mean loss of the last epoch), ``accuracy`` and
        ``val_accuracy`` (None where they do not apply) and ``diverged``.
    seed : int
        The sweep seed every run's seed derives from.
    as_frame : bool or None
        None: a pandas DataFrame when pandas is installed, else a list of dicts;
        True: a DataFrame (ImportError without pandas); False: a list of dicts.
    max_workers : int or None
        Pool size for None/"processes"/"threads" (default ``os.cpu_count()``).
    threads : int or None
        Core threads per run (``gc.set_num_threads``): in worker processes, including a
        Dask cluster's (default 1, as the workers already share the cores), and, for
        "serial" / "threads", in this process for the sweep's duration (default:
        unchanged). The results do not depend on it.
    **fixed
        Options shared by every run (``width=256, batch=128``, ``model="rnn"``, ...).

    Returns
    -------
    pandas.DataFrame or list of dict
        One row per run, in grid order: the full configuration (every option, defaults
        filled in), then ``run_seed``, ``loss_value``, ``ratio`` (``||dL/da_0|| / ||dL/da_L||``;
        RNN ``||dL/dh_1|| / ||dL/dh_T||``), ``log10_slope``, ``verdict``,
        ``global_norm``, ``first_nonfinite``, ``forward_first_nonfinite``,
        ``input_grad_norm`` (``||dL/da_0||``; RNN ``||dL/dh_1||``), ``top_grad_norm``
        (``||dL/da_L||``; RNN ``||dL/dh_T||``) and ``grad_norms``, the list of all
        ``L+1`` activation (RNN: ``T`` timestep) gradient norms.

    Raises
    ------
    ValueError, TypeError
        An unknown option, an empty axis or a bad value, naming the option; every
        configuration is checked before any run starts.
    SweepError
        A run raised; the pending runs are cancelled. ``err.config`` is its
        configuration, the worker's exception the ``__cause__``.
    RuntimeError
        A process pool that re-imports the caller's script (``spawn`` / ``forkserver``)
        called from the script's top-level code outside ``if __name__ == "__main__":``.

    Notes
    -----
    A configuration's record depends only on it and ``seed``: not on the rest of the
    grid, the order, the executor or the thread count. Worker processes also use this
    process's SIMD variant (``gc.get_isa()``) when their CPU has it. A configuration
    whose forward pass overflows is a result, not an error: its record has a NaN loss,
    NaN/Inf norms and a ``"non-finite: ..."`` verdict (NumPy's overflow warnings are
    silenced inside runs). As with any process pool started by ``spawn`` or
    ``forkserver``, a script calling ``gc.sweep`` with the default executor needs the
    ``if __name__ == "__main__":`` guard: the workers re-import the script. A call from
    a script's unguarded top-level code is a RuntimeError that says so, before any
    process starts.

    Examples
    --------
    >>> res = gc.sweep({"activation": ["sigmoid", "relu"], "depth": [8, 32]},
    ...                width=64, batch=32, progress=False)          # doctest: +SKIP
    >>> res[["activation", "depth", "ratio", "verdict"]]            # doctest: +SKIP
    """
    _check_executor(executor)
    check_bool(progress, "progress")
    if as_frame is not None:
        check_bool(as_frame, "as_frame")
    seed_ = positive_int(seed, "seed", minimum=0)
    workers = None if max_workers is None else positive_int(max_workers, "max_workers")
    threads_ = None if threads is None else positive_int(threads, "threads")
    train_ = _check_train(train)
    configs = configurations(grid, train=train_, **fixed)
    _check_main_guard(executor)
    pd = _pandas(as_frame)
    records = _execute(configs, seed_, train_, executor, progress, workers, threads_)
    return pd.DataFrame.from_records(records) if pd is not None else records


def _pandas(as_frame: bool | None) -> Any:
    if as_frame is False:
        return None
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise ImportError("as_frame=True needs pandas (pip install 'gradchain[pandas]')"
                              ) from None
        return None
    return pd


def _execute(configs: list[dict[str, Any]], seed: int, train: dict[str, Any] | None,
             executor: Any, progress: bool, workers: int | None,
             threads: int | None) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from . import get_isa, get_num_threads, set_num_threads

    n = len(configs)
    results: list[dict[str, Any] | None] = [None] * n
    args = (seed, train, os.getpid(), threads, get_isa())
    bar = tqdm(total=n, desc="gc.sweep", unit="run", disable=not progress, leave=False)
    own: cf.Executor | None = None
    saved = get_num_threads()
    in_process = executor in ("serial", "threads")
    interrupted = False
    try:
        if in_process and threads is not None:
            set_num_threads(threads)
        if executor == "serial":
            for i, cfg in enumerate(configs):
                try:
                    results[i] = _run_task(i, cfg, *args)[1]
                except Exception as e:
                    raise _failed(i, cfg, e) from e
                bar.update(1)
        else:
            if isinstance(executor, cf.Executor):
                ex = executor
            elif executor == "threads":
                ex = own = cf.ThreadPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, n))
            else:
                own = cf.ProcessPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, n),
                                             mp_context=_pool_context())
                ex = own
            futures = {ex.submit(_run_task, i, cfg, *args): i for i, cfg in enumerate(configs)}
            try:
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    err = fut.exception()
                    if err is not None:
                        raise _failed(i, configs[i], err) from err
                    results[i] = fut.result()[1]
                    bar.update(1)
            finally:
                for fut in futures:
                    fut.cancel()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if own is not None:  # Ctrl-C: return now; the runs in progress end on their own
            own.shutdown(wait=not interrupted, cancel_futures=True)
        if in_process and threads is not None:
            set_num_threads(saved)
        bar.close()
    return [r for r in results if r is not None]


def _failed(index: int, cfg: Mapping[str, Any], err: BaseException) -> SweepError:
    shown = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
    return SweepError(f"sweep run {index} ({shown}) failed: {type(err).__name__}: {err}",
                      index, dict(cfg))


# ------------------------------------------------- tables, CSV, grid files
def _cell(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.3e}" if v != 0 and math.isfinite(v) and not 1e-2 <= abs(v) < 1e4 else \
            f"{v:g}"
    return str(v)


def format_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
                 ) -> str:
    """A compact text table, one row per run: the option columns ``columns`` (default:
    the options that differ between runs), ``first/last`` (the record's ``ratio``,
    ``||dL/da_0|| / ||dL/da_L||``; RNN ``||dL/dh_1|| / ||dL/dh_T||``) as ``%.3e``,
    the ``log10 slope`` per layer (step) as ``%+.3f`` and the verdict's first word (plus
    ``final_loss`` / ``accuracy`` after training)."""
    recs = [dict(r) for r in records]
    if columns is None:
        opts = [k for k in recs[0] if _checker(k) is not None] if recs else []
        columns = [k for k in opts if len({repr(r.get(k)) for r in recs}) > 1]
    kinds = {r.get("model") for r in recs}
    kind = next(iter(kinds)) if len(kinds) == 1 else None
    ratio_head = (_models.MODELS[kind].report_axis.ratio
                  if isinstance(kind, str) and kind in _models.MODELS else "first/last")
    heads = ["#", *columns, ratio_head, "log10 slope", "verdict"]
    trained = any("final_loss" in r for r in recs)
    if trained:
        heads += ["final loss", "accuracy"]
    rows = []
    for i, r in enumerate(recs):
        slope = r["log10_slope"]
        row = [str(i), *(_cell(r.get(k)) for k in columns), f"{r['ratio']:.3e}",
               f"{slope:+.3f}" if math.isfinite(slope) else "nan",
               str(r["verdict"]).split(":")[0]]
        if trained:
            acc = r.get("accuracy")
            row += [f"{r['final_loss']:.4g}", "-" if acc is None else f"{acc:.3f}"]
        rows.append(row)
    widths = [max(len(h), *(len(row[j]) for row in rows)) if rows else len(h)
              for j, h in enumerate(heads)]
    left = {"verdict"} | {c for c in columns if c in ("activation", "init", "norm", "model",
                                                      "dtype", "loss", "on", "input_init")}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if h in left else c.rjust(w)
                         for c, w, h in zip(cells, widths, heads, strict=True)).rstrip()

    return "\n".join([line(heads), *(line(row) for row in rows)])


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(_csv_value(x) for x in v)
    if isinstance(v, (float, np.floating)):
        return repr(float(v))  # shortest repr: reads back to the same double
    return str(v)


def write_csv(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write the records as CSV (a header row, then one row per run). Floats are written
    with ``repr`` (they read back bitwise), None as an empty cell and the per-layer norms
    ``grad_norms`` as one space-separated cell."""
    import csv

    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in records:
            w.writerow([_csv_value(r.get(k)) for k in columns])


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML grid file: ``{"grid": {...}, "fixed": {...}, "train": {...} or None,
    "seed": int or None}``.

    The file has a ``[grid]`` table (option = [values, ...]: the axes, in file order), an
    optional ``[fixed]`` table (option = value), an optional ``[train]`` table (the
    ``train=`` dict of :func:`sweep`) and an optional top-level ``seed``. TOML has no
    None: write ``norm = "none"``. ValueError for a file that is not such a TOML file.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {os.fspath(path)!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{os.fspath(path)!r} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"grid", "fixed", "train", "seed"})
    if unknown:
        raise ValueError(f"{os.fspath(path)!r}: unknown key(s) or table(s) {unknown}; expected "
                         "[grid], [fixed], [train] and seed")
    out: dict[str, Any] = {"grid": {}, "fixed": {}, "train": doc.get("train"),
                           "seed": doc.get("seed")}
    for table in ("grid", "fixed"):
        t = doc.get(table, {})
        if not isinstance(t, dict):
            raise ValueError(f"{os.fspath(path)!r}: {table} must be a table ([{table}])")
        out[table] = dict(t)
    for k, v in out["grid"].items():
        if not isinstance(v, list):
            raise ValueError(f"{os.fspath(path)!r}: [grid] {k} must be a list of values, "
                             f"got {v!r} (single values go in [fixed])")
    if out["train"] is not None and not isinstance(out["train"], dict):
        raise ValueError(f"{os.fspath(path)!r}: train must be a table ([train])")
    return out
