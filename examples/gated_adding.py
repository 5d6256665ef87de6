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
- a short training run (Adam, lr 3e-3, gradient-norm clipping at 1, batches of 32) and
  the validation MSE against the baseline.

It takes a few minutes (1000 Adam steps per cell and length). This is
``gradchain demo --cells``; the figure shows every cell's ``||dL/dh_t||`` per step
(the LSTM's ``||dL/dc_t||`` dashed), one panel per length.

    python examples/gated_adding.py [--train-steps N] [out.png]
"""

from __future__ import annotations

import argparse
import time

import gradchain as gc
from gradchain import demo


def results(train_steps: int = 1000, steps: tuple[int, ...] = (200, 1000)
            ) -> list[demo.CellResult]:
    """Every cell's result at every length (what the table and the figure show)."""
    gc.set_num_threads(1)  # small matrices: one thread avoids OpenMP synchronisation costs
    return demo.run_cells(steps, train_steps=train_steps)


def main(argv: list[str] | None = None) -> list[demo.CellResult]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("png", nargs="?", default="gated_adding.png")
    p.add_argument("--train-steps", type=int, default=1000)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = results(args.train_steps)
    print(demo.cells_table(res))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    try:
        fig, _ = demo.cells_figure(res, path=args.png)
        print(f"figure written to {args.png}")
    except ImportError:
        print("no figure: matplotlib is not installed")
    return res


if __name__ == "__main__":
    main()
