"""The ``gradchain`` command line (also ``python -m gradchain``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from .losses import LOSSES
from .optim import OPTIMIZERS


def _note(args: argparse.Namespace, msg: str) -> None:
    """A line that is not a table: stdout normally, stderr under --json, none under --quiet."""
    if not args.quiet:
        print(msg, file=sys.stderr if args.json else sys.stdout)


def _out_path(value: str | None, flag: str) -> str | None:
    """Check an output file's folder before any work is done (ValueError -> exit 2)."""
    from ._plotting import check_path

    check_path(value, flag)
    return value


def _have_matplotlib() -> bool:
    from ._plotting import pyplot

    try:
        pyplot()
    except ImportError:
        return False
    return True


def _demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import demo

    # the figure: --no-png none; --png PATH; else gradchain_demo.png (not with --json)
    png = None if args.no_png else args.png if args.png is not None else (
        None if args.json else "gradchain_demo.png")
    _out_path(png, "--png")
    if args.steps < 2:  # the adding problem needs two marked steps
        raise ValueError(f"--steps: expected an int >= 2, got {args.steps}")
    hidden = args.width // 2 or 1
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


def _probe_sizes(args: argparse.Namespace) -> None:
    """Fill the model-specific defaults; ValueError for a flag of the other model or a
    size out of range (before anything is built)."""
    mlp_only = {"depth": 32, "width": 128, "out": 10, "norm": "none", "residual": None}
    rnn_only = {"steps": 100, "hidden": 128}
    mine, other = (mlp_only, rnn_only) if args.model == "mlp" else (rnn_only, mlp_only)
    for name in other:
        if getattr(args, name) is not None:
            raise ValueError(f"--{name} applies to --model "
                             f"{'rnn' if args.model == 'mlp' else 'mlp'} only")
    for name, default in mine.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    minimum = {"depth": 1, "width": 1, "out": 1, "residual": 1, "steps": 2, "hidden": 1,
               "batch": 1}
    for name, lo in minimum.items():
        v = getattr(args, name, None)
        if v is not None and v < lo:
            raise ValueError(f"--{name}: expected an int >= {lo}, got {v}")


def _probe(args: argparse.Namespace) -> int:
    from . import MLP, RNN
    from . import init as gc_init
    from .tasks import adding_problem

    _probe_sizes(args)
    _out_path(args.png, "--png")
    _out_path(args.json_out, "--json-out")
    if args.png is not None and not _have_matplotlib():
        print('gradchain probe: error: --png needs matplotlib (pip install "gradchain[plot]")',
              file=sys.stderr)
        return 1
    init = args.init
    if args.sigma_w is not None:
        init = gc_init.normal(sigma_w=args.sigma_w, sigma_b=args.sigma_b)
    dtype = np.float64 if args.dtype == "float64" else np.float32
    model: MLP | RNN
    try:
        if args.model == "mlp":
            residual: bool | int = args.residual if args.residual is not None else False
            model = MLP([args.width] * (args.depth + 1) + [args.out],
                        activation=args.activation, init=init,
                        norm=None if args.norm == "none" else args.norm, residual=residual,
                        dtype=dtype, seed=args.seed)
        else:
            model = RNN(2, args.hidden, activation=args.activation, init=init, output_size=1,
                        dtype=dtype, seed=args.seed)
    except MemoryError as e:  # a size that cannot be allocated is a bad value here
        raise ValueError(str(e)) from None
    if args.model == "mlp":
        rng = np.random.default_rng(args.seed)
        x = rng.normal(size=(args.batch, args.width)).astype(dtype)
        t = rng.normal(size=(args.batch, args.out)).astype(dtype)
        _, rep = model.loss_and_grad(x, t, loss="mse")
    else:
        xs, ys = adding_problem(args.steps, args.batch, seed=args.seed, dtype=dtype)
        _, rep = model.loss_and_grad(xs, ys, loss="mse", on="last")
    data = {"model": model.config(), "report": rep.to_dict()}
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        _note(args, repr(model))
        print(rep.table())
    try:
        if args.json_out is not None:
            with open(args.json_out, "w") as f:
                json.dump(data, f, indent=1)
            _note(args, f"report written to {args.json_out}")
        if args.png is not None:
            from ._plotting import pyplot

            fig, _ = rep.plot(path=args.png)
            pyplot().close(fig)
            _note(args, f"figure written to {args.png}")
    except OSError as e:
        print(f"gradchain probe: error: cannot write: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------- sweep
_SWEEP_OPTIONS = (  # (flag, option, type, choices, help); each takes one or more values
    ("--model", "model", str, ("mlp", "rnn"), "mlp (default) or rnn"),
    ("--activation", "activation", str, None, "activation names (default tanh)"),
    ("--init", "init", str, None, "init scheme names (default torch_default; RNN: W_hh's)"),
    ("--input-init", "input_init", str, None, "RNN: W_ih's init (default xavier_uniform)"),
    ("--sigma-w", "sigma_w", float, None, "mean-field init N(0, sigma_w^2/fan_in)"),
    ("--sigma-b", "sigma_b", float, None, "mean-field bias std (default 0)"),
    ("--depth", "depth", int, None, "MLP hidden layers (default 32)"),
    ("--width", "width", int, None, "MLP layer width (default 128)"),
    ("--in-features", "in_features", int, None, "MLP inputs (default: the width)"),
    ("--out-features", "out_features", int, None, "MLP outputs (default 10)"),
    ("--norm", "norm", str, ("none", "batch", "layer"), "MLP norm layers (default none)"),
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
    ("--on", "on", str, ("last", "all"), "RNN loss on the last step (default) or all"),
)
_SWEEP_TRAIN = (("--epochs", "epochs", int), ("--lr", "lr", float),
                ("--optimizer", "optimizer", str), ("--data", "data", str),
                ("--train-batch-size", "batch_size", int))

_SWEEP_TRAIN_HELP = {
    "epochs": "train every model N epochs after its probe (gc.train; MLP only)",
    "lr": "training learning rate (default 0.01)",
    "optimizer": f"one of {', '.join(OPTIMIZERS)} (default sgd)",
    "data": "training data: teacher (default) or digits",
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
    for _flag, option, _type, _choices, _help in _SWEEP_OPTIONS:
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
    if args.csv is not None:
        _out_path(args.csv, "--csv")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected an int >= 1, got {args.workers}")
    # everything is checked before a pool or a cluster starts
    sweeps.configurations(grid, train=train, **fixed)

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


def _add_sweep_parser(sub: Any) -> None:
    s = sub.add_parser(
        "sweep", help="a grid of MLP/RNN configurations: one gradient probe each, as a table",
        description="Runs one forward/backward probe (gc.sweep) for every configuration of a "
        "grid, in parallel, and prints one row per run: the grid options, "
        "||dL/da_0||/||dL/da_L||, the log10 slope per layer and the verdict. A progress bar "
        "runs on stderr.",
        epilog=_SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, option, typ, choices, text in _SWEEP_OPTIONS:
        s.add_argument(flag, dest=option, nargs="+", type=typ, choices=choices, default=None,
                       metavar=None if choices else {int: "N", float: "X"}.get(typ, "NAME"),
                       help=text)
    for flag, key, typ in _SWEEP_TRAIN:
        s.add_argument(flag, dest=f"train_{key}", type=typ, default=None,
                       metavar=None if key in ("optimizer", "data") else
                       {int: "N", float: "X"}[typ],
                       choices={"optimizer": tuple(OPTIMIZERS),
                                "data": ("teacher", "digits")}.get(key),
                       help=_SWEEP_TRAIN_HELP[key])
    s.add_argument("--seed", type=int, default=None, help="the sweep seed (default 0)")
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
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="pool size / Dask worker processes (default: the CPU count)")
    s.add_argument("--threads", type=int, default=None, metavar="N",
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
               "each subcommand has --help.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="vanishing gradients in deep MLPs and RNNs, and the fixes (tables + PNG)",
        description="Runs deep sigmoid/tanh MLPs and a long tanh RNN next to the fixes, "
        "prints the per-layer / per-step gradient tables and writes one PNG figure "
        "(both panels, log scale). A progress bar runs on stderr meanwhile.")
    d.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    d.add_argument("--width", type=int, default=256, help="layer width (default 256)")
    d.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    d.add_argument("--steps", type=int, default=200, help="RNN sequence length (default 200)")
    d.add_argument("--seed", type=int, default=0)
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
        "probe", help="one MLP or RNN configuration: its gradient table, JSON and plot",
        description="One forward/backward pass of one configuration: the per-layer "
        "(MLP: random normal data, MSE) or per-timestep (RNN: the adding problem, 2 inputs, "
        "1 output, MSE on the last step) gradient norms as a table, JSON or PNG plot. Bad "
        "values exit with code 2 and a one-line message.")
    q.add_argument("--model", choices=["mlp", "rnn"], default="mlp",
                   help="mlp (default) or rnn (a one-layer vanilla RNN)")
    q.add_argument("--depth", type=int, default=None, help="MLP hidden layers (default 32)")
    q.add_argument("--width", type=int, default=None, help="MLP layer width (default 128)")
    q.add_argument("--out", type=int, default=None, help="MLP outputs (default 10)")
    q.add_argument("--steps", type=int, default=None, help="RNN sequence length T (default 100)")
    q.add_argument("--hidden", type=int, default=None, help="RNN hidden size (default 128)")
    q.add_argument("--batch", type=int, default=64)
    q.add_argument("--activation", default="tanh")
    q.add_argument("--init", default="torch_default",
                   help="init scheme name (for the RNN: of W_hh; W_ih is xavier_uniform)")
    q.add_argument("--sigma-w", type=float, default=None,
                   help="mean-field init N(0, sigma_w^2/fan_in) (overrides --init)")
    q.add_argument("--sigma-b", type=float, default=0.0)
    q.add_argument("--norm", choices=["none", "batch", "layer"], default=None,
                   help="MLP norm layers (default none)")
    q.add_argument("--residual", type=int, default=None, metavar="K",
                   help="MLP: residual on every K-th layer")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--json", action="store_true",
                   help="print the model config and report as JSON instead of the table")
    q.add_argument("--json-out", metavar="PATH", default=None,
                   help="also write that JSON to PATH")
    q.add_argument("--png", metavar="PATH", default=None,
                   help="also write the report's plot (log scale) to PATH (needs matplotlib)")
    q.add_argument("--quiet", "-q", action="store_true",
                   help="print the table (or the JSON) only: no model line, no notes")

    _add_sweep_parser(sub)

    sub.add_parser("bench", help="the standard workloads against installed peers",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
        print(f"gradchain {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
