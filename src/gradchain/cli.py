"""The ``gradchain`` command line (also ``python -m gradchain``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from . import __version__
from . import models as _models
from ._memory import require
from .losses import LOSSES
from .models.mlp import NORMS
from .models.rnn import ON
from .optim import OPTIMIZERS

# The command line's upper bounds (documented in each subcommand's --help): far above any
# sensible probe, far below sizes whose arithmetic alone would exhaust memory. The lower
# bounds are the models' own (steps >= 2 for the adding problem).
LIMITS: dict[str, tuple[int, int]] = {
    "depth": (1, 10_000), "width": (1, 65_536), "out": (1, 65_536), "hidden": (1, 65_536),
    "in_features": (1, 65_536), "out_features": (1, 65_536), "hidden_size": (1, 65_536),
    "input_size": (1, 65_536), "output_size": (1, 65_536), "batch": (1, 1_000_000),
    "steps": (2, 1_000_000), "residual": (1, 10_000), "seed": (0, 2**63 - 1),
    "workers": (1, 1024), "threads": (1, 1024), "epochs": (1, 100_000),
    "batch_size": (1, 1_000_000), "cell_steps": (2, 100_000), "train_steps": (1, 1_000_000),
}
_LIMITS_HELP = ("sizes up to 65536, depth up to 10000, batch up to 1000000, steps up to "
                "1000000; a run whose memory estimate exceeds the machine's memory is refused "
                "before it starts")

EXIT_BAD_INPUT = 2  # a bad flag or value, a missing optional dependency: nothing ran
EXIT_FAILED = 1  # the run itself failed (a message, no traceback unless --debug)
EXIT_BROKEN_PIPE = 128 + 13  # the reader of stdout went away, as for `git log | head -1`
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C, as a shell reports SIGINT
_DEBUG_ENV = "GRADCHAIN_DEBUG"


class _BadValue(ValueError):
    """A flag's value outside what the command line accepts (exit 2)."""


def _int_arg(text: str) -> int:
    """argparse type for the int flags: digits only, with a message for ``1e9``."""
    try:
        return int(text, 10)
    except ValueError:
        pass
    hint = ""
    try:
        f = float(text)
        if math.isfinite(f) and f == int(f):
            hint = f" (write it with digits: {int(f)})"
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected an int, got {text!r}{hint}")


_int_arg.__name__ = "int"


def _check_int(flag: str, value: Any, key: str | None = None,
               limits: tuple[int, int] | None = None) -> None:
    """``_BadValue`` unless each of ``value`` (an int or a list of ints) lies in
    ``LIMITS[key]`` (key defaults to the flag's name; ``limits`` where LIMITS has none)."""
    name = key or flag.lstrip("-").replace("-", "_")
    lo, hi = LIMITS[name] if name in LIMITS or limits is None else limits
    for v in value if isinstance(value, list) else [value]:
        if v is None:
            continue
        if v < lo:
            raise _BadValue(f"{flag}: expected an int >= {lo}, got {v}")
        if v > hi:
            raise _BadValue(f"{flag}: expected an int <= {hi} (the command line's limit), "
                            f"got {v}")


def _check_memory(nbytes: int, what: str) -> None:
    """MemoryError (exit 2) before any work when a run's estimated peak memory exceeds
    what this process may use (the container's limit included: gradchain._memory)."""
    require(nbytes, f"{what} (estimated peak; use smaller sizes)")


def run_bytes(cfg: Mapping[str, Any], batch: int) -> int:
    """A generous estimate of the peak bytes of one probe: building the model
    (parameters, gradients, the init's float64 temporaries), one forward/backward pass
    over ``batch`` rows (sequences) and the probe's data. ``cfg`` holds a configuration
    as :func:`gradchain.sweeps.configurations` returns it."""
    return _models.get(cfg.get("model", _models.DEFAULT_KIND)).lab.run_bytes(cfg, batch)


def _note(args: argparse.Namespace, msg: str) -> None:
    """A line that is not a table: stdout normally, stderr under --json, none under --quiet."""
    if not args.quiet:
        print(msg, file=sys.stderr if args.json else sys.stdout)


def _out_path(value: str | None, flag: str) -> str | None:
    """Check an output file's folder (exists, is a folder, writable) before any work is
    done (ValueError -> exit 2)."""
    from ._plotting import check_path

    p = check_path(value, flag)
    if p is not None:
        folder = p.parent
        if not folder.is_dir():
            raise ValueError(f"{flag}: {str(folder)!r} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{flag}: folder {str(folder)!r} is not writable")
    return value


def _have_matplotlib() -> bool:
    from ._plotting import pyplot

    try:
        pyplot()
    except ImportError:
        return False
    return True


def _demo_cells(args: argparse.Namespace) -> int:
    """``gradchain demo --cells``: the adding problem through a tanh RNN, the IRNN, an LSTM
    and a GRU at each ``--cell-steps`` length (demo.run_cells)."""
    from tqdm import tqdm

    from . import demo

    lengths = args.cell_steps
    for T in lengths:
        _check_int("--cell-steps", T)
    _check_int("--train-steps", args.train_steps)
    _check_int("--seed", args.seed)
    png = None if args.no_png else args.png
    _out_path(png, "--png")
    hidden = 64
    batch = 32
    n = args.train_steps * batch
    _check_memory(3 * max(run_bytes({"model": "lstm", "input_size": 2, "hidden_size": hidden,
                                     "output_size": 1, "steps": T}, batch) + n * T * 2 * 12
                          for T in lengths),
                  f"the cells demo (T = {', '.join(map(str, lengths))}, "
                  f"{args.train_steps} training steps)")
    with tqdm(total=len(lengths) * len(demo.cell_cases()), desc="gradchain demo --cells",
              unit="run", file=sys.stderr, disable=args.quiet, leave=False) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

        results = demo.run_cells(tuple(lengths), batch=batch, hidden=hidden,
                                 train_steps=args.train_steps, seed=args.seed, progress=step)
    if args.json:
        print(json.dumps([{"cell": r.label, "T": r.steps, "reach": r.reach,
                           "val_mse": r.val_mse, "baseline": r.baseline,
                           "report": r.report.to_dict()} for r in results], indent=1))
    else:
        _note(args, f"gradchain demo --cells: hidden {hidden}, a linear readout, batch "
                    f"{batch}; {args.train_steps} Adam steps (clip 1) per cell, learning "
                    f"rates {demo.cell_lrs()}\n")
        print(demo.cells_table(results))
    if png is not None:
        if not _have_matplotlib():
            print('gradchain demo: no figure written: matplotlib is not installed '
                  '(pip install "gradchain[plot]")', file=sys.stderr)
            return 0
        from ._plotting import pyplot

        try:
            fig, _ = demo.cells_figure(results, path=png)
        except OSError as e:
            print(f"gradchain demo: error: cannot write {png}: {e}", file=sys.stderr)
            return 1
        pyplot().close(fig)
        _note(args, f"\nfigure written to {png}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import demo

    if args.cells:
        return _demo_cells(args)

    # the figure: --no-png none; --png PATH; else gradchain_demo.png (not with --json)
    png = None if args.no_png else args.png if args.png is not None else (
        None if args.json else "gradchain_demo.png")
    for name in ("depth", "width", "batch", "steps"):
        _check_int(f"--{name}", getattr(args, name))  # steps >= 2: two marked steps
    _check_int("--seed", args.seed)
    _out_path(png, "--png")
    hidden = args.width // 2 or 1
    mlp_cfg = {"model": "mlp", "in_features": args.width, "width": args.width,
               "depth": args.depth, "out_features": 10, "norm": "batch"}
    rnn_cfg = {"model": "rnn", "input_size": 2, "hidden_size": hidden, "output_size": 1,
               "steps": args.steps}
    # the runs follow one another; the data and the previous model may still be alive
    _check_memory(2 * max(run_bytes(mlp_cfg, args.batch), run_bytes(rnn_cfg, args.batch)),
                  f"the demo (depth {args.depth}, width {args.width}, batch "
                  f"{args.batch}, steps {args.steps})")
    n_runs = len(demo.mlp_cases()) + len(demo.rnn_cases())
    with tqdm(total=n_runs, desc="gradchain demo", unit="run", file=sys.stderr,
              disable=args.quiet, leave=False) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

        results = demo.run_mlp(depth=args.depth, width=args.width, batch=args.batch,
                               seed=args.seed, progress=step)
        rnn = demo.run_rnn(T=args.steps, batch=args.batch, hidden=hidden, seed=args.seed,
                           progress=step)
    if args.json:
        print(json.dumps({"mlp": {c.label: r.to_dict() for c, r in results},
                          "rnn": {r.label: r.report.to_dict() for r in rnn}}, indent=1))
    else:
        _note(args, f"gradchain demo: deep MLP, {args.depth} hidden layers of width "
                    f"{args.width}, batch {args.batch}, float32, one MSE backward pass each\n")
        print(demo.mlp_table(results))
        problems = [r for c, r in results if c.kind == "problem"]
        fixes = [r for c, r in results if c.kind == "fix"]
        worst = max(r.ratio for r in problems)
        _note(args, f"\nWithout a fix the gradient reaching the input is at most {worst:.1e} "
                    f"of the one at the top; with the fixes it stays within "
                    f"{min(r.ratio for r in fixes):.1e} .. {max(r.ratio for r in fixes):.1e} "
                    "of it.")
        _note(args, f"\nVanilla RNN, T = {args.steps} steps of the adding problem, hidden "
                    f"{hidden}, batch {args.batch}, loss on the last step\n")
        if args.quiet:
            print()
        print(demo.rnn_table(rnn))
    if png is not None:
        if not _have_matplotlib():
            # not what was asked for: said even under --quiet (on stderr then)
            print('gradchain demo: no figure written: matplotlib is not installed '
                  '(pip install "gradchain[plot]")',
                  file=sys.stderr if args.quiet or args.json else sys.stdout)
            return 0
        from ._plotting import pyplot

        try:
            fig, _ = demo.figure(results, rnn, path=png)
        except OSError as e:
            print(f"gradchain demo: error: cannot write {png}: {e}", file=sys.stderr)
            return 1
        pyplot().close(fig)
        _note(args, f"\nfigure written to {png}")
    return 0


def _probe_flags() -> dict[str, tuple[Any, list[str]]]:
    """Every model kind's probe flag: name -> (its ProbeFlag, the kinds that take it)."""
    out: dict[str, tuple[Any, list[str]]] = {}
    for kind, cls in _models.MODELS.items():
        for f in cls.lab.probe_flags:
            out.setdefault(f.name, (f, []))[1].append(kind)
    return out


def _probe_sizes(args: argparse.Namespace) -> None:
    """Fill the model-specific defaults; ValueError for a flag of the other model or a
    size out of range (before anything is built)."""
    flags = _probe_flags()
    for name, (_, kinds) in flags.items():
        if args.model not in kinds and getattr(args, name, None) is not None:
            raise ValueError(f"--{name} applies to --model {' or '.join(kinds)} only")
    for f in _models.get(args.model).lab.probe_flags:
        if getattr(args, f.name) is None:
            setattr(args, f.name, f.default)
    for name, (f, _) in flags.items():
        if f.type is int:
            _check_int(f"--{name}", getattr(args, name, None), limits=f.limits)
    for name in ("batch", "seed"):
        _check_int(f"--{name}", getattr(args, name, None))


def _probe_init_text(args: argparse.Namespace) -> str:
    return (f"normal(sigma_w={args.sigma_w:g}, sigma_b={args.sigma_b:g})"
            if args.sigma_w is not None else args.init)


def _probe_what(args: argparse.Namespace) -> str:
    """The probed configuration in words (memory messages, figure titles)."""
    return _models.get(args.model).lab.probe_what(args, _probe_init_text(args))


def _probe(args: argparse.Namespace) -> int:
    import gradchain

    from . import init as gc_init

    _probe_sizes(args)
    _out_path(args.png, "--png")
    _out_path(args.json_out, "--json-out")
    _out_path(args.spectrum, "--spectrum")
    for flag, value in (("--png", args.png), ("--spectrum", args.spectrum)):
        if value is not None and not _have_matplotlib():
            print(f'gradchain probe: error: {flag} needs matplotlib (pip install '
                  '"gradchain[plot]")', file=sys.stderr)
            return EXIT_BAD_INPUT
    lab = _models.get(args.model).lab
    _check_memory(run_bytes(lab.probe_config(args), args.batch),
                  f"the probe ({_probe_what(args)})")
    init = args.init
    if args.sigma_w is not None:
        init = gc_init.normal(sigma_w=args.sigma_w, sigma_b=args.sigma_b)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    # the class as the package exports it (gc.MLP, ...): replaceable there
    cls = getattr(gradchain, lab.model.__name__, lab.model)
    pos, kw = lab.probe_model(args, init, dtype)
    try:
        model = cls(*pos, **kw)
    except MemoryError as e:  # a size that cannot be allocated is a bad value here
        raise ValueError(str(e)) from None
    if args.forward:  # before any work: the q/c maps need the mean-field setting
        if not lab.mean_field_theory:
            raise ValueError(f"--forward: the mean-field q/c maps describe "
                             f"{_models.describe_kinds(where=lambda c: c.lab.mean_field_theory)}"
                             f" models, not --model {args.model}")
        lab.mean_field(model)  # ValueError naming what is in the way (norm, init, ...)
    x, t, loss_kw = lab.probe_batch(args, dtype)
    _, rep = model.loss_and_grad(x, t, loss="mse", **loss_kw)
    data = {"model": model.config(), "report": rep.to_dict()}
    prop = None
    if args.forward:
        from . import theory

        prop = theory.propagate(model, x)
        data["forward"] = prop.to_dict()
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        _note(args, repr(model))
        print(rep.table(health=args.health))
        if prop is not None:
            print()
            print(prop.table())
    try:
        if args.json_out is not None:
            with open(args.json_out, "w") as f:
                json.dump(data, f, indent=1)
            _note(args, f"report written to {args.json_out}")
        if args.png is not None:
            from ._plotting import pyplot, save

            fig, ax = rep.plot(health=args.health)
            # the configuration on top, the verdict (the report's own title) below it
            ax.set_title(f"{_probe_what(args)}\n{rep.verdict()}", fontsize=9)
            save(fig, args.png)
            pyplot().close(fig)
            _note(args, f"figure written to {args.png}")
        if args.spectrum is not None:
            from . import spectrum
            from ._plotting import pyplot

            # the Jacobian at the batch's first sample, batch norm with its running statistics
            first = model.check_data(x, t, loss="mse", **loss_kw).batch(np.array([0]))[0]
            if model.has_modes:
                model.eval()
            sp = spectrum.jacobian_spectrum(model, first)
            fig, ax = sp.plot(label=f"J {sp.shape[0]}x{sp.shape[1]}")
            ax.set_title(f"{_probe_what(args)}\nJacobian singular values: mean s^2 = "
                         f"{sp.mean_sq:.4g}, max {sp.singular_values[0]:.4g}", fontsize=9)
            from ._plotting import save

            save(fig, args.spectrum)
            pyplot().close(fig)
            _note(args, f"spectrum written to {args.spectrum}")
    except OSError as e:
        print(f"gradchain probe: error: cannot write: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------- sweep
def _kinds_help() -> str:
    """``mlp (default) or rnn``: the registered kinds, the default first."""
    others = [k for k in _models.MODELS if k != _models.DEFAULT_KIND]
    return " or ".join([f"{_models.DEFAULT_KIND} (default)", *others])


_SWEEP_OPTIONS = (  # (flag, option, type, choices, help); each takes one or more values
    ("--model", "model", str, tuple(_models.MODELS), _kinds_help()),
    ("--activation", "activation", str, None, "activation names (default tanh)"),
    ("--init", "init", str, None, "init scheme names (default torch_default; RNN: W_hh's)"),
    ("--input-init", "input_init", str, None, "RNN: W_ih's init (default xavier_uniform)"),
    ("--sigma-w", "sigma_w", float, None, "mean-field init N(0, sigma_w^2/fan_in)"),
    ("--sigma-b", "sigma_b", float, None, "mean-field bias std (default 0)"),
    ("--depth", "depth", int, None, "MLP hidden layers (default 32)"),
    ("--width", "width", int, None, "MLP layer width (default 128)"),
    ("--in-features", "in_features", int, None, "MLP inputs (default: the width)"),
    ("--out-features", "out_features", int, None, "MLP outputs (default 10)"),
    ("--norm", "norm", str, tuple("none" if n is None else n for n in NORMS),
     "MLP norm layers (default none)"),
    ("--residual", "residual", int, None, "MLP: 0 none (default), K every K-th layer"),
    ("--residual-scale", "residual_scale", float, None, "MLP skip scale (default 1)"),
    ("--bias", "bias", str, ("true", "false"), "biases (default true)"),
    ("--dtype", "dtype", str, ("float32", "float64"), "default float32"),
    ("--batch", "batch", int, None, "probe batch size (default 64; RNN 32)"),
    ("--loss", "loss", str, LOSSES, "default mse"),
    ("--hidden-size", "hidden_size", int, None, "RNN hidden size (default 64)"),
    ("--input-size", "input_size", int, None, "RNN inputs (default 8)"),
    ("--output-size", "output_size", int, None, "RNN readout size (default: none)"),
    ("--steps", "steps", int, None, "RNN sequence length T (default 100)"),
    ("--on", "on", str, ON, "RNN loss on the last step (default) or all"),
)


def _sweep_options() -> tuple[tuple[str, str, Any, Any, str], ...]:
    """``_SWEEP_OPTIONS``, then a flag for every sweep option of a registered kind that
    the table does not name (``--num-layers`` for ``num_layers``; its type from the
    default), so that a new kind's options reach the command line."""
    rows = [(flag, opt, typ, tuple(_models.MODELS), _kinds_help()) if opt == "model"
            else (flag, opt, typ, choices, text)  # the kinds registered by now
            for flag, opt, typ, choices, text in _SWEEP_OPTIONS]
    known = {opt for _, opt, _, _, _ in rows}
    extra: list[tuple[str, str, Any, Any, str]] = []
    for kind, cls in _models.MODELS.items():
        for opt, default in cls.lab.sweep_defaults.items():
            if opt in known:
                continue
            known.add(opt)
            typ = type(default) if isinstance(default, (int, float)) and not isinstance(
                default, bool) else str
            extra.append((f"--{opt.replace('_', '-')}", opt, typ, None,
                          f"{kind}: {opt} (default {default})"))
    return (*rows, *extra)
_SWEEP_TRAIN = (("--epochs", "epochs", int), ("--lr", "lr", float),
                ("--optimizer", "optimizer", str), ("--data", "data", str),
                ("--train-batch-size", "batch_size", int))

_SWEEP_TRAIN_HELP = {
    "epochs": "train every model N epochs after its probe (gc.train; MLP only)",
    "lr": "training learning rate (default 0.01)",
    "optimizer": f"one of {', '.join(OPTIMIZERS)} (default sgd)",
    "data": "training data: teacher (default) or digits (implies --in-features 64 "
            "--out-features 10 --loss cross_entropy; RNN: the adding problem)",
    "batch_size": "training batch size (default 32)",
}

_SWEEP_EPILOG = """\
examples:
  gradchain sweep --activation sigmoid tanh relu --depth 8 32 --norm none batch \\
                  --residual 0 1 --width 128 --batch 64
  gradchain sweep --config examples/sweep_grid.toml --csv sweep.csv
  gradchain sweep --model rnn --activation tanh relu --init orthogonal identity \\
                  --steps 50 200 --hidden-size 64 --json > sweep.json
  gradchain sweep --sigma-w 0.5 1 1.5 2 --depth 64 --activation tanh --executor dask --workers 2

Flags given several values are the grid's axes (the last one varies fastest); a flag
given one value is fixed for every run. A --config TOML file has a [grid] table
(option = [values]), a [fixed] table, an optional [train] table and seed = N; flags
override its entries. --residual 0 means no skip connections, K every K-th layer.
Bad flags or values exit with code 2 and a one-line message."""


def _sweep_value(option: str, v: Any) -> Any:
    if option == "norm" and v == "none":
        return None
    if option == "bias":
        return v == "true"
    if option == "residual" and v == 0:
        return False
    return v


def _check_sweep_memory(configs: list[dict[str, Any]], train: Mapping[str, Any] | None,
                        args: argparse.Namespace) -> None:
    """MemoryError before any run when the runs that go at once would not fit."""
    from .sweeps import _TRAIN_DEFAULTS

    if not configs:
        return
    t = dict(_TRAIN_DEFAULTS)
    t.update(train or {})

    def need(cfg: dict[str, Any]) -> int:
        b = run_bytes(cfg, cfg["batch"])
        if train is not None:  # the optimiser's state and the training batches
            b += run_bytes(cfg, t["batch_size"]) + 2 * b
        return b

    per_run = max(configs, key=need)
    at_once = 1 if args.executor == "serial" else min(
        len(configs), args.workers or os.cpu_count() or 1)
    shown = ", ".join(f"{k}={v!r}" for k, v in per_run.items()
                      if k in ("model", "depth", "width", "hidden_size", "steps", "batch"))
    _check_memory(at_once * need(per_run),
                  f"the sweep ({at_once} run(s) at once, the largest {shown})")


def _sweep(args: argparse.Namespace) -> int:
    import logging
    import os

    from . import sweeps

    grid: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    train: dict[str, Any] | None = None
    seed = 0
    if args.config is not None:
        cfg = sweeps.load_config(args.config)
        grid, fixed, train = cfg["grid"], cfg["fixed"], cfg["train"]
        seed = 0 if cfg["seed"] is None else cfg["seed"]
    for _flag, option, _type, _choices, _help in _sweep_options():
        values = getattr(args, option)
        if values is None:
            continue
        grid.pop(option, None)
        fixed.pop(option, None)
        values = [_sweep_value(option, v) for v in values]
        if len(values) > 1:
            grid[option] = values
        else:
            fixed[option] = values[0]
    for _flag, key, _type in _SWEEP_TRAIN:
        if getattr(args, f"train_{key}") is not None:
            train = dict(train or {})
            train[key] = getattr(args, f"train_{key}")
    if args.seed is not None:
        seed = args.seed
    for flag, option, typ, _choices, _help in _sweep_options():
        values = getattr(args, option)
        if typ is int and values is not None:
            if option == "residual":  # 0: no skip connections
                values = [v for v in values if v != 0]
            _check_int(flag, values, option)
    for flag, key, typ in _SWEEP_TRAIN:
        if typ is int:
            _check_int(flag, getattr(args, f"train_{key}"), key)
    for flag, value in (("--seed", args.seed), ("--workers", args.workers),
                        ("--threads", args.threads)):
        _check_int(flag, value)
    if args.csv is not None:
        _out_path(args.csv, "--csv")
    data = (train or {}).get("data")
    if data == "digits":
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            print("gradchain sweep: error: --data digits needs scikit-learn "
                  '(pip install "gradchain[data]")', file=sys.stderr)
            return EXIT_BAD_INPUT
    # everything is checked before a pool or a cluster starts
    configs = sweeps.configurations(grid, train=train, **fixed)
    _check_sweep_memory(configs, train, args)

    executor: Any = None if args.executor == "processes" else args.executor
    close: list[Any] = []
    if args.executor == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            print("gradchain sweep: error: --executor dask needs dask.distributed "
                  '(pip install "gradchain[dask]")', file=sys.stderr)
            return 2
        cluster = LocalCluster(n_workers=args.workers or os.cpu_count() or 1,
                               threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        close += [client, cluster]
        executor = client.get_executor()
    try:
        records = sweeps.sweep(grid, executor=executor, progress=not args.quiet, train=train,
                               seed=seed, as_frame=False,
                               max_workers=None if args.executor == "dask" else args.workers,
                               threads=args.threads, **fixed)
    except sweeps.SweepError as e:
        print(f"gradchain sweep: error: {e}", file=sys.stderr)
        return 1
    finally:
        for c in close:
            c.close()
    if args.csv is not None:
        try:
            sweeps.write_csv(records, args.csv)
        except OSError as e:
            print(f"gradchain sweep: error: cannot write {args.csv}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(records, indent=1, default=str))
    elif not args.quiet:
        print(sweeps.format_table(records, columns=list(grid)))
        if args.csv is not None:
            print(f"\n{len(records)} runs written to {args.csv}")
    return 0


def _add_sweep_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "sweep", parents=[common],
        help="a grid of MLP/RNN configurations: one gradient probe each, as a table",
        description="Runs one forward/backward probe (gc.sweep) for every configuration of a "
        "grid, in parallel, and prints one row per run: the grid options, "
        "||dL/da_0||/||dL/da_L||, the log10 slope per layer and the verdict. A progress bar "
        "runs on stderr. Limits: " + _LIMITS_HELP + " (all runs that go at once together).",
        epilog=_SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, option, typ, choices, text in _sweep_options():
        s.add_argument(flag, dest=option, nargs="+", type=_int_arg if typ is int else typ,
                       choices=choices, default=None,
                       metavar=None if choices else {int: "N", float: "X"}.get(typ, "NAME"),
                       help=text)
    for flag, key, typ in _SWEEP_TRAIN:
        s.add_argument(flag, dest=f"train_{key}", type=_int_arg if typ is int else typ,
                       default=None,
                       metavar=None if key in ("optimizer", "data") else
                       {int: "N", float: "X"}[typ],
                       choices={"optimizer": tuple(OPTIMIZERS),
                                "data": ("teacher", "digits")}.get(key),
                       help=_SWEEP_TRAIN_HELP[key])
    s.add_argument("--seed", type=_int_arg, default=None, help="the sweep seed (default 0)")
    s.add_argument("--config", metavar="TOML", default=None,
                   help="a grid file: [grid], [fixed], [train] tables and seed")
    s.add_argument("--csv", metavar="PATH", default=None,
                   help="also write every record to PATH (grad_norms space-separated)")
    s.add_argument("--json", action="store_true",
                   help="print the records as JSON instead of the table")
    s.add_argument("--quiet", "-q", action="store_true",
                   help="no table and no progress bar (use with --csv)")
    s.add_argument("--executor", choices=["processes", "serial", "threads", "dask"],
                   default="processes",
                   help="local processes (default), in-process, threads, or a Dask "
                        "LocalCluster")
    s.add_argument("--workers", type=_int_arg, default=None, metavar="N",
                   help="pool size / Dask worker processes (default: the CPU count)")
    s.add_argument("--threads", type=_int_arg, default=None, metavar="N",
                   help="core threads per run (default 1 in worker processes)")


def _bench(rest: Sequence[str]) -> int:
    from . import bench

    return int(bench.main(list(rest)))


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``gradchain sweep: error: ... (see --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gradchain",
        description="Deep MLP/RNN backprop chains with per-layer gradient reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  gradchain demo                       # tables + gradchain_demo.png\n"
               "  gradchain probe --activation relu --init kaiming_normal --depth 64 "
               "--png relu.png\n"
               "  gradchain probe --model rnn --steps 200 --init orthogonal\n"
               "  gradchain sweep --activation sigmoid tanh relu --depth 8 32 "
               "--norm none batch --csv out.csv\n"
               "  gradchain bench -w mlp-tanh rnn-mid  # vs PyTorch / JAX / NumPy\n"
               "each subcommand has --help.\n\n"
               "exit codes: 0 done; 2 a bad flag or value, or a missing optional dependency "
               "(one line on stderr, nothing ran); 1 the run failed (one line; --debug or "
               f"{_DEBUG_ENV}=1 for the traceback); {EXIT_BROKEN_PIPE} stdout closed early "
               f"(gradchain ... | head); {EXIT_INTERRUPTED} Ctrl-C.")
    p.add_argument("--version", action="version", version=f"gradchain {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an unexpected error (also {_DEBUG_ENV}=1)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", parents=[common],
        help="vanishing gradients in deep MLPs and RNNs, and the fixes (tables + PNG)",
        description="Runs deep sigmoid/tanh MLPs and a long tanh RNN next to the fixes, "
        "prints the per-layer / per-step gradient tables and writes one PNG figure "
        "(both panels, log scale). A progress bar runs on stderr meanwhile. Limits: "
        + _LIMITS_HELP + ".")
    d.add_argument("--depth", type=_int_arg, default=50, help="hidden layers (default 50)")
    d.add_argument("--width", type=_int_arg, default=256, help="layer width (default 256)")
    d.add_argument("--batch", type=_int_arg, default=128, help="batch size (default 128)")
    d.add_argument("--steps", type=_int_arg, default=200,
                   help="RNN sequence length (default 200)")
    d.add_argument("--seed", type=_int_arg, default=0)
    d.add_argument("--cells", action="store_true",
                   help="instead: the adding problem through a tanh RNN, the IRNN, an LSTM "
                        "and a GRU (the gradient reaching step 1, and a short training run "
                        "per cell against the 0.167 baseline); a figure only with --png")
    d.add_argument("--cell-steps", type=_int_arg, nargs="+", default=[200, 1000],
                   metavar="T", help="--cells: the sequence lengths (default 200 1000)")
    d.add_argument("--train-steps", type=_int_arg, default=5000,
                   help="--cells: Adam steps per cell and length (default 5000, "
                        "demo.CELL_TRAIN_STEPS; the run takes several minutes)")
    d.add_argument("--json", action="store_true",
                   help="print the reports as JSON instead of the tables (no figure unless "
                        "--png is given; notes go to stderr)")
    fig = d.add_mutually_exclusive_group()
    fig.add_argument("--png", metavar="PATH", default=None,
                     help="where to write the figure (default gradchain_demo.png in the "
                          "working directory); without matplotlib a note says so, exit 0")
    fig.add_argument("--no-png", action="store_true", help="do not write the figure")
    d.add_argument("--quiet", "-q", action="store_true",
                   help="print the two tables only: no progress bar, no headings, no "
                        "summary, no 'figure written' note (the figure is still written; "
                        "if matplotlib is missing, that one-line note goes to stderr)")

    q = sub.add_parser(
        "probe", parents=[common],
        help="one MLP or RNN configuration: its gradient table, JSON and plot",
        description="One forward/backward pass of one configuration: the per-layer "
        "(MLP: random normal data, MSE) or per-timestep (RNN: the adding problem, 2 inputs, "
        "1 output, MSE on the last step) gradient norms as a table, JSON or PNG plot. Bad "
        "values exit with code 2 and a one-line message. Limits: " + _LIMITS_HELP + ".")
    q.add_argument("--model", choices=list(_models.MODELS), default=_models.DEFAULT_KIND,
                   help=_kinds_help())
    for name, (f, _) in _probe_flags().items():  # each kind's own flags
        q.add_argument(f"--{name}", type=_int_arg if f.type is int else f.type, default=None,
                       choices=f.choices, metavar=f.metavar, help=f.help)
    q.add_argument("--batch", type=_int_arg, default=64)
    q.add_argument("--activation", default="tanh")
    q.add_argument("--init", default="torch_default",
                   help="init scheme name (for the RNN: of W_hh; W_ih is xavier_uniform)")
    q.add_argument("--sigma-w", type=float, default=None,
                   help="mean-field init N(0, sigma_w^2/fan_in) (overrides --init)")
    q.add_argument("--sigma-b", type=float, default=0.0)
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    q.add_argument("--seed", type=_int_arg, default=0)
    q.add_argument("--json", action="store_true",
                   help="print the model config and report as JSON instead of the table")
    q.add_argument("--json-out", metavar="PATH", default=None,
                   help="also write that JSON to PATH")
    q.add_argument("--png", metavar="PATH", default=None,
                   help="also write the report's plot (log scale) to PATH (needs matplotlib)")
    q.add_argument("--spectrum", metavar="PATH", default=None,
                   help="also write a histogram of the singular values of the input-output "
                        "Jacobian at the batch's first sample to PATH (MLP: dy/dx; RNN: "
                        "dh_T/dh_0; needs matplotlib)")
    q.add_argument("--forward", action="store_true",
                   help="also print the forward q/c table: measured pre-activation lengths "
                        "and pair correlations beside the mean-field maps (MLP with "
                        "--sigma-w or --init orthogonal, no norm, no residual)")
    q.add_argument("--quiet", "-q", action="store_true",
                   help="print the table (or the JSON) only: no model line, no notes")
    q.add_argument("--health", action="store_true",
                   help="add the health table (dead / saturated units, zero and subnormal "
                        "gradients, mean |activation|) and where a NaN/Inf was born; with "
                        "--png, a health panel below the norms (the JSON always has them)")

    _add_sweep_parser(sub, common)

    sub.add_parser("bench", help="the standard workloads against installed peers",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``gradchain --help``)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `gradchain probe ... | head -1`: stop quietly, as git and coreutils do. Point
        # stdout at devnull so that the interpreter's final flush cannot fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _debug(args: argparse.Namespace | None = None) -> bool:
    env = os.environ.get(_DEBUG_ENV, "")
    return bool(getattr(args, "debug", False)) or env not in ("", "0")


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # errors name the subcommand ("gradchain sweep: error: ..."), exit code 2
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = subs.choices[args.command]
    if extra:
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    prog = f"gradchain {args.command}"
    try:
        if args.command == "demo":
            for name in ("depth", "width", "batch", "steps"):
                if getattr(args, name) < 1:
                    sub.error(f"--{name} must be >= 1")
            return _demo(args)
        if args.command == "sweep":
            return _sweep(args)
        return _probe(args)
    except (ValueError, TypeError) as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as e:  # sizes that cannot fit: a bad value too
        print(f"{prog}: error: {_one_line(e) or 'out of memory'}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as e:  # an optional dependency; the message names the extra
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as e:
        if _debug(args):
            raise
        print(f"{prog}: error: {type(e).__name__}: {_one_line(e)} (run with --debug or "
              f"{_DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
