"""The ``gradchain`` command line (also ``python -m gradchain``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    results = demo.run_mlp(depth=args.depth, width=args.width, batch=args.batch, seed=args.seed)
    rnn = demo.run_rnn(T=args.steps, batch=args.batch, hidden=args.width // 2 or 1,
                       seed=args.seed)
    if args.json:
        print(json.dumps({"mlp": {c.label: r.to_dict() for c, r in results},
                          "rnn": {r.label: r.report.to_dict() for r in rnn}}, indent=1))
        return 0
    print(f"gradchain demo: deep MLP, {args.depth} hidden layers of width {args.width}, "
          f"batch {args.batch}, float32, one MSE backward pass each\n")
    print(demo.mlp_table(results))
    problems = [r for c, r in results if c.kind == "problem"]
    fixes = [r for c, r in results if c.kind == "fix"]
    worst = max(r.ratio for r in problems)
    print(f"\nWithout a fix the gradient reaching the input is at most {worst:.1e} of the one "
          f"at the top; with the fixes it stays within "
          f"{min(r.ratio for r in fixes):.1e} .. {max(r.ratio for r in fixes):.1e} of it.")
    print(f"\nVanilla RNN, T = {args.steps} steps of the adding problem, hidden "
          f"{args.width // 2 or 1}, batch {args.batch}, loss on the last step\n")
    print(demo.rnn_table(rnn))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from . import MLP
    from . import init as gc_init

    init = args.init
    if args.sigma_w is not None:
        init = gc_init.normal(sigma_w=args.sigma_w, sigma_b=args.sigma_b)
    residual: bool | int = args.residual if args.residual is not None else False
    dtype = np.float64 if args.dtype == "float64" else np.float32
    model = MLP([args.width] * (args.depth + 1) + [args.out], activation=args.activation,
                init=init, norm=None if args.norm == "none" else args.norm, residual=residual,
                dtype=dtype, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.batch, args.width)).astype(dtype)
    t = rng.normal(size=(args.batch, args.out)).astype(dtype)
    _, rep = model.loss_and_grad(x, t, loss="mse")
    if args.json:
        print(json.dumps({"model": model.config(), "report": rep.to_dict()}, indent=1))
    else:
        print(repr(model))
        print(rep.table())
    return 0


def _bench(rest: Sequence[str]) -> int:
    from . import bench

    return int(bench.main(list(rest)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradchain",
        description="Deep MLP/RNN backprop chains with per-layer gradient reports.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="vanishing gradients in deep MLPs, and the fixes")
    d.add_argument("--depth", type=int, default=50, help="hidden layers (default 50)")
    d.add_argument("--width", type=int, default=256, help="layer width (default 256)")
    d.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    d.add_argument("--steps", type=int, default=200, help="RNN sequence length (default 200)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print the reports as JSON")

    q = sub.add_parser("probe", help="one MLP configuration: its per-layer gradient table")
    q.add_argument("--depth", type=int, default=32)
    q.add_argument("--width", type=int, default=128)
    q.add_argument("--out", type=int, default=10)
    q.add_argument("--batch", type=int, default=64)
    q.add_argument("--activation", default="tanh")
    q.add_argument("--init", default="torch_default")
    q.add_argument("--sigma-w", type=float, default=None,
                   help="mean-field init N(0, sigma_w^2/fan_in) (overrides --init)")
    q.add_argument("--sigma-b", type=float, default=0.0)
    q.add_argument("--norm", choices=["none", "batch", "layer"], default="none")
    q.add_argument("--residual", type=int, default=None, metavar="K",
                   help="residual on every K-th layer")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--json", action="store_true")

    sub.add_parser("bench", help="the standard workloads against installed peers",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            for name in ("depth", "width", "batch", "steps"):
                if getattr(args, name) < 1:
                    parser.error(f"--{name} must be >= 1")
            return _demo(args)
        return _probe(args)
    except (ValueError, TypeError) as e:
        print(f"gradchain {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
