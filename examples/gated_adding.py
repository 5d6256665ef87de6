"""Why gates fix vanishing gradients: the adding problem (Hochreiter & Schmidhuber 1997;
Le, Jaitly & Hinton 2015) through a tanh RNN, the IRNN, an LSTM and a GRU.

Sequences of T = 200 and T = 1000 steps (``gc.data.adding``): the target is the sum of
the two marked values, so the answer depends on inputs up to T steps back; predicting 1
scores an MSE of about 1/6 ~ 0.167. Each cell: hidden 64, a linear readout, the loss on
the last step. For each cell and length:

- the gradient reaching step 1 at initialisation, ``||dL/dh_1|| / ||dL/dh_T||`` (the
  report of one backward pass): the tanh RNN's decays geometrically with T, the LSTM's
  additive cell state (forget gate biased open, Jozefowicz et al. 2015) and the GRU's
  update gate carry it much further;
- a short training run (Adam, gradient-norm clipping at 1 as Le et al., batches of 32
  fresh sequences; learning rate 1e-3 for the tanh RNN and the IRNN, 3e-3 for the LSTM
  and the GRU: ``gradchain.demo.CELL_LR``) with the validation MSE every 100 steps
  against the baseline.

This is ``gradchain demo --cells``; the figure shows every cell's ``||dL/dh_t||`` per
step at initialisation (the LSTM's ``||dL/dc_t||`` dashed), one panel per length. It
takes several minutes (5000 Adam steps per cell and length).

    python examples/gated_adding.py [--train-steps N] [--lengths T ...] [--json PATH] [out.png]

``--json PATH`` writes every run's numbers (the reports at initialisation, the training
loss of every step, the validation curve): README.md's comparison is rendered from such
a file, ``examples/data/gated_adding.json``, written by
``python examples/make_readme_tables.py --record-cells`` (which runs this script with
the README's pinned kernels) and checked against the code by ``--check`` (which reruns
the first steps of every run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gradchain as gc
from gradchain import demo

LENGTHS = (200, 1000)


def results(train_steps: int = demo.CELL_TRAIN_STEPS, steps: tuple[int, ...] = LENGTHS
            ) -> list[demo.CellResult]:
    """Every cell's result at every length (what the table and the figure show)."""
    gc.set_num_threads(1)  # small matrices: one thread avoids OpenMP synchronisation costs
    return demo.run_cells(steps, train_steps=train_steps)


def record(r: demo.CellResult) -> dict[str, Any]:
    """One run as JSON-ready values (floats round-trip exactly through ``json``)."""
    rep = r.report.to_dict()
    return {
        "cell": r.label, "short": r.short, "T": r.steps, "lr": r.lr,
        "reach": r.reach, "reach_trained": r.reach_trained,
        "timestep_grad_norms": [float(v) for v in rep["timestep_grad_norms"]],
        "cell_grad_norms": [float(v) for v in rep.get("cell_grad_norms") or []],
        "loss": [float(v) for v in r.loss],
        "val_curve": [[int(s), float(v)] for s, v in r.val_curve],
        "val_mse": r.val_mse, "baseline": r.baseline, "learned": r.learned,
        "steps_to_learn": r.steps_to_learn(),
    }


def settings(train_steps: int) -> dict[str, Any]:
    """What every run of the file shares (and what ``--check`` reruns with)."""
    return {"batch": demo.CELL_BATCH, "hidden": demo.CELL_HIDDEN, "train_steps": train_steps,
            "eval_every": demo.CELL_EVAL_EVERY, "val_size": demo.CELL_VAL, "clip": 1.0,
            "seed": 0, "dtype": "float32", "optimizer": "Adam",
            "lr": {short: lr for _, short, _, _, lr in demo.cell_cases()},
            "isa": gc.get_isa(), "gradchain": gc.__version__}


def main(argv: list[str] | None = None) -> list[demo.CellResult]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("png", nargs="?", default="gated_adding.png")
    p.add_argument("--train-steps", type=int, default=demo.CELL_TRAIN_STEPS)
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--json", help="write every run's numbers to this file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = results(args.train_steps, tuple(args.lengths))
    print(demo.cells_table(res))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        doc = {"settings": settings(args.train_steps), "runs": [record(r) for r in res]}
        Path(args.json).write_text(json.dumps(doc) + "\n", encoding="utf-8")
        print(f"numbers written to {args.json}")
    try:
        fig, _ = demo.cells_figure(res, path=args.png)
        print(f"figure written to {args.png}")
    except ImportError:
        print("no figure: matplotlib is not installed")
    return res


if __name__ == "__main__":
    main()
