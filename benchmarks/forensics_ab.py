"""The cost of issue 16's forensics, measured side by side on one model instance.

    python benchmarks/forensics_ab.py                 # mlp-tanh and rnn-mid, 30 rounds
    python benchmarks/forensics_ab.py --rounds 60 --json out.json
    python benchmarks/forensics_ab.py --quick         # scaled-down smoke run
    python benchmarks/forensics_ab.py --only lstm-mid gru-mid   # the gated cells alone

Per workload, alternating which goes first in each round (one forward + backward each):

* ``health``: the report with its health statistics and non-finite stages on against off
  (``model._core.forensics``), ``backward(report=True)`` both (mlp-tanh, rnn-mid, and the
  gated cells lstm-mid, gru-mid: their forward's unit maxima and sums of ``|h_t|``,
  ``|c_t|``, their backward's zero / subnormal counts);
* ``per_example`` (MLP and RNN): ``backward(report=False, per_example=False)`` against
  ``backward(report=True, per_example=True)``, and against ``report=True`` alone (RNN:
  also the path the flop count did not pick, ``_core.example_path``; and the plain
  backward with dW by the shape, path 0, against the merged GEMMs, path 2);
* ``clip`` (with torch, on ``mlp-small``: vmap materialises B copies of the parameters,
  2 GiB for mlp-tanh): one DP-SGD step's gradients, ``loss_and_grad`` +
  ``gc.clip_per_example``, against ``torch.func.vmap(grad)`` per-sample gradients, their
  norms, clipping and the mean (the same model in torch, float32, same thread count).

Prints the median ratio and its quartiles per pair (>1: the second is slower) and, with
``--json``, every round.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradchain as gc
from gradchain.bench.workloads import QUICK, SMALL, WORKLOADS


def _paired(a: Callable[[], Any], b: Callable[[], Any], rounds: int) -> dict[str, Any]:
    """time(b) / time(a) per round, alternating the order; median and quartiles."""
    a()
    b()  # warm
    ratios, ta, tb = [], [], []
    for r in range(rounds):
        t = {}
        for name, f in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
            t0 = time.perf_counter()
            f()
            t[name] = time.perf_counter() - t0
        ratios.append(t["b"] / t["a"])
        ta.append(t["a"])
        tb.append(t["b"])
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"median_ratio": float(np.median(ratios)), "iqr": [float(q1), float(q3)],
            "a_median_s": float(np.median(ta)), "b_median_s": float(np.median(tb)),
            "ratios": [float(x) for x in ratios]}


def _mlp(w: Any, rounds: int) -> dict[str, Any]:
    m = gc.MLP(**w.model_kwargs(), seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(w.batch, w.in_features)).astype(m.dtype)
    gy = (rng.normal(size=(w.batch, w.out_features)) / w.batch).astype(m.dtype)

    def step(report: bool = True, per_example: bool = False, forensics: bool = True) -> None:
        m._core.forensics = forensics
        m.forward(x)
        m.backward(gy, report=report, per_example=per_example)

    out = {
        "health": _paired(lambda: step(forensics=False), lambda: step(), rounds),
        "per_example_vs_grads_only": _paired(lambda: step(report=False),
                                             lambda: step(per_example=True), rounds),
        "per_example_vs_report": _paired(lambda: step(),
                                         lambda: step(per_example=True), rounds),
    }
    m._core.forensics = True
    return out


def _clip(w: Any, rounds: int) -> dict[str, Any]:
    m = gc.MLP(**w.model_kwargs(), seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(w.batch, w.in_features)).astype(m.dtype)
    t = rng.normal(size=(w.batch, w.out_features)).astype(m.dtype)
    return {"clip_vs_torch_vmap": _torch_clip(m, x, t, rounds)}


def _torch_clip(m: gc.MLP, x: np.ndarray, t: np.ndarray, rounds: int) -> dict[str, Any]:
    """a: torch.func.vmap(grad) per-sample clipping; b: gc.clip_per_example. The ratio is
    time(gradchain) / time(torch)."""
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return {"skipped": "torch not installed"}
    torch.set_num_threads(gc.get_num_threads())
    acts = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
    layers: list[Any] = []
    for i in range(m.depth + 1):
        layers.append(torch.nn.Linear(m.sizes[i], m.sizes[i + 1]))
        if i < m.depth:
            layers.append(acts[m.activation.name]())
    net = torch.nn.Sequential(*layers)
    params = {k: v.detach() for k, v in net.named_parameters()}
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    C = 1.0

    def loss_one(p: Any, xi: Any, ti: Any) -> Any:
        return torch.nn.functional.mse_loss(functional_call(net, p, (xi[None],)), ti[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def torch_step() -> None:
        g = per_sample(params, xt, tt)
        norms = torch.sqrt(sum((v.reshape(len(xt), -1) ** 2).sum(1) for v in g.values()))
        c = torch.clamp(C / (norms + 1e-6), max=1.0)
        for v in g.values():
            (v * c.reshape(-1, *([1] * (v.dim() - 1)))).mean(0)

    def gc_step() -> None:
        m.loss_and_grad(x, t)
        gc.clip_per_example(m, C)

    return _paired(torch_step, gc_step, rounds)


def _rnn(w: Any, rounds: int) -> dict[str, Any]:
    r = gc.RNN(**w.model_kwargs(), seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(w.steps, w.batch, w.input_size)).astype(r.dtype)
    g = (rng.normal(size=(w.steps, w.batch, w.hidden_size)) / w.batch).astype(r.dtype)

    def step(forensics: bool = True, report: bool = True, per_example: bool = False,
             path: int = 0) -> None:
        r._core.forensics = forensics
        r._core.example_path = path
        r.forward(x)
        r.backward(grad_hs=g, report=report, per_example=per_example)

    out = {"health": _paired(lambda: step(False), lambda: step(True), rounds),
           "per_example_vs_grads_only": _paired(lambda: step(report=False),
                                                lambda: step(per_example=True), rounds),
           "per_example_vs_report": _paired(lambda: step(),
                                            lambda: step(per_example=True), rounds)}
    # the path the flop count did not pick (Gram matrices when T > H), for the record
    other = 2 if w.steps < w.hidden_size else 1
    out[f"per_example_path{other}_vs_report"] = _paired(
        lambda: step(), lambda: step(per_example=True, path=other), max(3, rounds // 5))
    # path 3: the per-example gradients' sum always replaces the merged dW GEMMs
    out["per_example_path3_vs_grads_only"] = _paired(
        lambda: step(report=False), lambda: step(per_example=True, path=3), rounds)
    # the plain backward's dW by the shape (path 0: the examples' sum on long sequences)
    # against the merged GEMMs (path 2, what every shape used before)
    out["grads_only_auto_vs_merged"] = _paired(
        lambda: step(report=False, path=2), lambda: step(report=False), rounds)
    r._core.forensics = True
    r._core.example_path = 0
    return out


def _gated(w: Any, rounds: int) -> dict[str, Any]:
    m = (gc.LSTM if w.kind == "lstm" else gc.GRU)(**w.model_kwargs(), seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(w.steps, w.batch, w.input_size)).astype(m.dtype)
    g = (rng.normal(size=(w.steps, w.batch, w.hidden_size)) / w.batch).astype(m.dtype)

    def step(forensics: bool = True) -> None:
        m._core.forensics = forensics
        m.forward(x)
        m.backward(grad_hs=g)

    out = {"health": _paired(lambda: step(False), lambda: step(True), rounds)}
    m._core.forensics = True
    return out


_RUNS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "mlp-tanh": _mlp, "rnn-mid": _rnn, "lstm-mid": _gated, "gru-mid": _gated}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", nargs="+", choices=sorted(_RUNS), default=None,
                    help="these workloads only (default: all of them, and the torch clip)")
    args = ap.parse_args()
    table = QUICK if args.quick else WORKLOADS
    load = os.getloadavg()
    print(f"gradchain {gc.__version__}, isa {gc.get_isa()}, {gc.get_num_threads()} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    res = {name: run(table[name], args.rounds) for name, run in _RUNS.items()
           if args.only is None or name in args.only}
    if not args.no_torch and args.only is None:
        small = SMALL["mlp-small"].quick() if args.quick else SMALL["mlp-small"]
        res["mlp-small"] = _clip(small, max(5, args.rounds // 3))
    for wname, pairs in res.items():
        for pname, r in pairs.items():
            if "median_ratio" in r:
                print(f"{wname:9s} {pname:26s} ratio {r['median_ratio']:.3f} "
                      f"[{r['iqr'][0]:.3f}, {r['iqr'][1]:.3f}]  "
                      f"a {1e3 * r['a_median_s']:.2f} ms  b {1e3 * r['b_median_s']:.2f} ms")
            else:
                print(f"{wname:9s} {pname:26s} {r}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before_after": load, **res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
