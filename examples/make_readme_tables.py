"""Every figure of README.md that comes from running code, produced by running it.

    python examples/make_readme_tables.py           # rewrite README.md's generated blocks
                                                    # and docs/demo.png
    python examples/make_readme_tables.py --check   # exit 1, with a diff, where README.md
                                                    # differs from what the code gives now
    python examples/make_readme_tables.py --record-cells   # rerun the gated-cell comparison
                                                    # (minutes), then rewrite as above

README.md marks each generated block with ``<!-- BEGIN gen:NAME -->`` and
``<!-- END gen:NAME -->``; this script owns what lies between them: the ``gradchain demo``
output (and its figure, docs/demo.png), the digits case study and the examples table.
The figures are produced by the examples' own functions, with their seeds.

One block is too slow to recompute on every check: the gated-cell comparison
(examples/gated_adding.py: 5000 training steps of four cells at T = 200 and 1000 take
many minutes). ``--record-cells`` runs it (the two lengths in parallel, with the pinned
kernels below) into ``examples/data/gated_adding.json`` (every run's report at
initialisation, its training loss at every step and its validation curve); the README's
block is rendered from that file, and every run of this script (``--check`` included)
first reruns the report at initialisation and the first CELLS_CHECK_STEPS training steps
of every cell and length and requires them to equal the recorded ones to rounding
(CELLS_REPORT_RTOL, CELLS_LOSS_RTOL), so a change to the code that moves the comparison's
numbers fails the check until the file is recorded again, while a new order of the same
sums does not.

The results are bitwise the same for any thread count, but the last bits of float32
rounding depend on the SIMD kernels (the AVX2 and AVX-512 variants agree; the scalar one
does not) and, in the RNN's large products, on OpenBLAS's kernel. So the script pins
them before gradchain loads: ``GRADCHAIN_ISA=avx2``, ``OPENBLAS_CORETYPE=Haswell`` and
one thread. Any x86-64 CPU with AVX2 then reproduces the README bit for bit; where
AVX2 is missing, ``--check`` exits with code 3 (cannot check here).
"""

from __future__ import annotations

import os

# before gradchain (and its OpenBLAS) is loaded: see the docstring
os.environ["GRADCHAIN_ISA"] = "avx2"
os.environ["OPENBLAS_CORETYPE"] = "Haswell"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import difflib  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a CPU without AVX2: checked below
    import gradchain as gc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import batchnorm_no_skip  # noqa: E402
import digits_case_study  # noqa: E402
import dynamical_isometry  # noqa: E402
import gated_adding  # noqa: E402
import glorot_bengio  # noqa: E402
import he_init_relu  # noqa: E402
import irnn_adding  # noqa: E402
import phase_diagram_tanh  # noqa: E402
import rnn_clipping_pascanu  # noqa: E402

EXIT_CANNOT_CHECK = 3
CELLS_JSON = ROOT / "examples" / "data" / "gated_adding.json"
CELLS_CHECK_STEPS = 5  # training steps of every recorded run that each check reruns
# how closely a rerun must agree with the record: the report's norms are float64 sums
# (their order may change with the kernels: ~1e-16), the losses float32 (a few ulps)
CELLS_REPORT_RTOL = 1e-12
CELLS_LOSS_RTOL = 1e-6


# ---------------------------------------------------------------- the blocks
def demo_block(figure_to: Path | None) -> str:
    """``$ gradchain demo`` and what it prints (the progress bar goes to stderr); the
    figure it writes is copied to ``figure_to``."""
    from gradchain import cli

    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        out, err = io.StringIO(), io.StringIO()
        try:
            os.chdir(tmp)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["demo"])
        finally:
            os.chdir(old)
        if code != 0:
            raise RuntimeError(f"gradchain demo exited with {code}: {err.getvalue()}")
        if figure_to is not None:
            shutil.copyfile(Path(tmp) / "gradchain_demo.png", figure_to)
    return "```\n$ gradchain demo\n" + out.getvalue().rstrip("\n") + "\n```"


def case_study_block() -> str:
    cs = digits_case_study
    runs = cs.results()
    x_tr, _, x_te, _ = gc.data.digits(seed=0)
    rows = {label: cs.row(label, hist, acc) for label, hist, acc in runs}
    lines = [cs.HEAD, "-" * len(cs.HEAD), *(line for _, line in rows.values())]
    acc = {label: values[1] for label, (values, _) in rows.items()}
    first = {label: values[2] for label, (values, _) in rows.items()}
    sig = "sigmoid, torch_default init, SGD"
    sig_adam = "sigmoid, torch_default init, Adam"
    fixes = ["relu + He init, SGD", "relu + He init, Adam", "tanh + Glorot init, SGD",
             "sigmoid + residual, SGD"]
    bn = "sigmoid + batch norm, SGD"
    lo, hi = min(acc[k] for k in fixes), max(acc[k] for k in fixes)
    return "\n".join([
        f"`python examples/digits_case_study.py` trains 64 → {cs.DEPTH} hidden layers of "
        f"{cs.WIDTH} → 10 on",
        f"scikit-learn's digits ({len(x_tr)} train / {len(x_te)} test images, {cs.EPOCHS} "
        f"epochs, batch {cs.BATCH};",
        "SGD lr 0.01 momentum 0.9, or Adam lr 1e-3) and prints:",
        "",
        "```", *lines, "```",
        "",
        f"The deep sigmoid network stays at chance ({acc[sig]:.1%} with SGD, "
        f"{acc[sig_adam]:.1%} with Adam): the",
        f"gradient reaching its first layer is {first[sig]:.0e} of the one at the top, and "
        "even Adam cannot",
        "rescale it (it is far below Adam's eps). He init, Glorot init and a residual path "
        "keep the",
        f"gradient alive and learn ({lo:.1%} to {hi:.1%} test accuracy); batch norm keeps it "
        f"alive too ({acc[bn]:.1%}",
        f"after {cs.EPOCHS} epochs). The runs still far from converged (relu + He with SGD, "
        "sigmoid + batch",
        "norm) move by a few points when the last bits of float32 rounding change (another "
        "GEMM",
        "kernel, the scalar SIMD variant): read the table for its message, not its last digit.",
    ])


def _examples_rows() -> list[tuple[str, str]]:
    rows = []

    deep = glorot_bengio.run(max(glorot_bengio.DEPTHS))
    fit = {label: glorot_bengio.fitted(deep[label]) for label, *_ in glorot_bengio.CASES}
    theory = {label: t for label, *_, t in glorot_bengio.CASES}
    rows.append((
        "examples/glorot_bengio.py",
        "Glorot & Bengio 2010: deep sigmoid/tanh with the standard U(±1/√n) init vanish "
        f"({fit['tanh, standard'].replace('x', '×')} per layer for tanh, "
        f"{fit['sigmoid, standard'].replace('x', '×')} for sigmoid, as the linearised "
        f"theory's {theory['tanh, standard']:.3f} / {theory['sigmoid, standard']:.3f}); the "
        f"normalised init keeps tanh at {fit['tanh, normalised'].replace('x', '×')}"))

    he = he_init_relu.results()
    f2 = he_init_relu.fitted(he["sigma_w^2 = 2 (He)"]) ** 2
    f1 = he_init_relu.fitted(he["sigma_w^2 = 1"]) ** 2
    rows.append((
        "examples/he_init_relu.py",
        f"He et al. 2015: relu with σ_w² = 2 keeps ‖dL/da_l‖² flat (fitted ×{f2:.3f} per "
        f"layer, width {he_init_relu.WIDTH}, {he_init_relu.DEPTH} layers); σ_w² = 1 halves "
        f"it (×{f1:.4f})"))

    points = phase_diagram_tanh.results()
    errs = np.abs([r.relative_error for r in points])
    rows.append((
        "examples/phase_diagram_tanh.py",
        "the order/chaos phase diagram of tanh (Poole et al. 2016, Schoenholz et al. 2017) "
        f"with measured networks on it: χ₁ predicted vs measured within {100 * errs.max():.1f}"
        f"% (median {100 * np.median(errs):.1f}%) at {len(points)} points"))

    bn = batchnorm_no_skip.results()
    grow = batchnorm_no_skip.fitted(bn["relu + BN, B=128"]) ** 2
    res = batchnorm_no_skip.fitted(bn["relu + BN + residual"]) ** 2
    rows.append((
        "examples/batchnorm_no_skip.py",
        "Yang et al. 2019: a deep relu + batch-norm MLP without skips explodes at "
        f"initialisation (×{grow:.3f} per layer in ‖·‖², theory π/(π−1) = "
        f"{math.pi / (math.pi - 1):.3f}); a residual path tames it (×{res:.3f})"))

    clip = rnn_clipping_pascanu.results()
    none, one = clip[None], clip[1.0]
    rows.append((
        "examples/rnn_clipping_pascanu.py",
        "Pascanu et al. 2013: an exploding relu RNN on the adding problem (‖grad‖ up to "
        f"{np.nanmax(none.global_norm):.1e}) stays at the baseline without clipping and "
        f"learns with `clip=1` (validation MSE {one.val_loss[-1]:.4f} vs "
        f"{none.val_loss[-1]:.3f})"))

    # the two models the row names (the example also trains tanh + orthogonal)
    gc.set_num_threads(1)
    x, y = gc.data.adding(T=irnn_adding.T, n=irnn_adding.N, seed=0)
    xv, yv = gc.data.adding(T=irnn_adding.T, n=1000, seed=1)
    base = float(np.mean((yv.astype(np.float64) - 1.0) ** 2))
    irnn, tanh = (irnn_adding.train(*m, (x, y, xv, yv)) for m in irnn_adding.MODELS[:2])
    rows.append((
        "examples/irnn_adding.py",
        f"Le et al. 2015: the IRNN solves the adding problem at T = {irnn_adding.T} "
        f"(validation MSE {irnn.val_loss[-1]:.4f}, baseline {base:.3f}), tanh with the "
        f"default init does not ({tanh.val_loss[-1]:.3f})"))

    rows.append((
        "examples/gated_adding.py",
        "Hochreiter & Schmidhuber 1997, Le et al. 2015: the adding problem at T = "
        f"{' and '.join(map(str, gated_adding.LENGTHS))} through a tanh RNN, the IRNN, an "
        "LSTM and a GRU: the gradient reaching step 1, and which cells learn (the section "
        "above)"))

    rows.append((
        "examples/dynamical_isometry.py",
        "Pennington, Schoenholz & Ganguli 2017: at criticality the Jacobian of a deep tanh "
        "network with orthogonal weights stays near isometry, Gaussian weights spread it "
        "with depth, relu never is; the isometric init trains faster (the section below)"))

    cfg = gc.sweeps.load_config(ROOT / "examples" / "sweep_grid.toml")
    n = len(gc.sweeps.configurations(cfg["grid"], train=cfg["train"], **cfg["fixed"]))
    rows.append((
        "examples/sweep_grid.toml",
        "a grid for `gradchain sweep --config` (activation × depth × norm × residual, "
        f"{n} runs)"))
    return rows


def examples_block() -> str:
    lines = ["| script | reproduces |", "|---|---|"]
    lines += [f"| `{script}` | {text} |" for script, text in _examples_rows()]
    return "\n".join(lines)


def isometry_block(figure_to: Path | None) -> str:
    """examples/dynamical_isometry.py's numbers (a table) and its figure
    (docs/isometry.png, written beside the demo's figure when ``figure_to`` is given)."""
    di = dynamical_isometry
    sw = di.critical_sigma_w()
    q = gc.theory.fixed_point("tanh", sw, di.SIGMA_B)
    sp = di.spectra()
    lines = [
        f"Critical tanh (σ_w = {sw:.4f}, σ_b = {di.SIGMA_B}, q* = {q:.4f}), width "
        f"{di.WIDTH}, inputs at q*: the squared singular values s² of the Jacobian "
        "da_L/dx at each depth of one network (one forward-mode pass), measured and "
        "predicted (`gc.theory.jacobian_moments`); relu at σ_w² = 2. The orthogonal tanh "
        "spectrum stays near 1 as predicted; the Gaussian and relu ones are heavy-tailed "
        "(most s near 0, a few large), so one network's variance is a noisy estimate of "
        "the predicted growth ∝ L.",
        "",
        "| weights | depth L | mean s² | predicted | var s² | predicted | max s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (act, weights, L), s in sp.items():
        th = (gc.theory.jacobian_moments("tanh", sw, di.SIGMA_B, L, weights) if act == "tanh"
              else gc.theory.jacobian_moments("relu", math.sqrt(2.0), 0.0, L, weights))
        lines.append(f"| {act}, {weights} | {L} | {s.mean_sq:.3f} | {th[0]:.3f} | "
                     f"{s.var_sq:.3f} | {th[1]:.3f} | {s.singular_values[0]:.2f} |")
    hist = di.training()
    lines += ["", f"Training on the digits (depth {di.TRAIN_DEPTH}, width {di.TRAIN_WIDTH}, "
              f"critical tanh, SGD with momentum, {di.EPOCHS} epochs): mean training loss per "
              "epoch and test accuracy.", "",
              "| weights | loss per epoch | test accuracy |", "|---|---|---|"]
    for weights, h in hist.items():
        lines.append(f"| {weights} | {', '.join(f'{v:.3f}' for v in h.epoch_loss)} | "
                     f"{h.val_accuracy[-1]:.3f} |")
    lines += ["", "![dynamical isometry](docs/isometry.png)"]
    if figure_to is not None:
        from gradchain._plotting import pyplot

        plt = pyplot()
        fig, axs = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, (act, weights) in zip(axs, [("tanh", "orthogonal"), ("tanh", "gaussian"),
                                            ("relu", "orthogonal")], strict=True):
            gc.spectrum.plot_spectra({L: sp[act, weights, L] for L in di.DEPTHS}, ax=ax,
                                     bins=60, log=True)
            ax.set_title(f"{act}, {weights} weights (critical)", fontsize=10)
        fig.tight_layout()
        fig.savefig(figure_to.parent / "isometry.png", dpi=80)
        plt.close(fig)
    return "\n".join(lines)


# ---------------------------------------------------------------- the gated cells
class StaleRecord(Exception):
    """The recorded comparison (CELLS_JSON) no longer matches what the code gives."""


def record_cells(path: Path = CELLS_JSON, train_steps: int | None = None) -> None:
    """Run examples/gated_adding.py for each length in its own process (both with this
    script's pinned kernels, inherited through the environment) and merge their numbers
    into ``path``."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for T in gated_adding.LENGTHS:
            cmd = [sys.executable, str(ROOT / "examples" / "gated_adding.py"), "--lengths",
                   str(T), "--json", str(Path(tmp) / f"{T}.json"), str(Path(tmp) / f"{T}.png")]
            if train_steps is not None:
                cmd += ["--train-steps", str(train_steps)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        docs = []
        for T, proc in zip(gated_adding.LENGTHS, procs, strict=True):
            out, _ = proc.communicate()
            print(out)
            if proc.returncode != 0:
                raise RuntimeError(f"examples/gated_adding.py --lengths {T} exited with "
                                   f"{proc.returncode}")
            docs.append(json.loads((Path(tmp) / f"{T}.json").read_text(encoding="utf-8")))
    doc = {"settings": docs[0]["settings"], "runs": [r for d in docs for r in d["runs"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def load_cells(path: Path = CELLS_JSON) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def verify_cells(doc: dict, steps: int = CELLS_CHECK_STEPS) -> None:
    """Rerun, for every recorded run, the report at initialisation and the first
    ``steps`` training steps, and raise StaleRecord unless the recorded settings are the
    code's and every rerun number equals the recorded one exactly."""
    from gradchain import demo

    st = doc["settings"]
    here = gated_adding.settings(st["train_steps"])
    for key in ("batch", "hidden", "eval_every", "val_size", "clip", "seed", "dtype", "lr"):
        if st[key] != here[key]:
            raise StaleRecord(f"setting {key!r}: recorded {st[key]!r}, the code has "
                              f"{here[key]!r}")
    cases = {c[1]: c for c in demo.cell_cases()}
    gc.set_num_threads(1)
    for run in doc["runs"]:
        name = f"{run['short']} at T={run['T']}"
        if run["short"] not in cases:
            raise StaleRecord(f"{name}: the code has no such cell")
        r = demo.train_cell(cases[run["short"]], run["T"], train_steps=steps)
        rep = r.report.to_dict()
        got = {"reach": r.reach,
               "timestep_grad_norms": [float(v) for v in rep["timestep_grad_norms"]],
               "cell_grad_norms": [float(v) for v in rep.get("cell_grad_norms") or []],
               "loss": [float(v) for v in r.loss]}
        want = {k: run[k] for k in got}
        want["loss"] = run["loss"][:steps]
        for k in got:
            g = np.asarray(got[k], dtype=np.float64)
            w = np.asarray(want[k], dtype=np.float64)
            tol = CELLS_LOSS_RTOL if k == "loss" else CELLS_REPORT_RTOL
            if g.shape != w.shape or not np.allclose(g, w, rtol=tol, atol=0.0,
                                                     equal_nan=True):
                raise StaleRecord(f"{name}: {k} differs from the recorded one by more than "
                                  f"{tol:g} relative")


def cells_block(doc: dict) -> str:
    """The comparison's table and text, from the recorded numbers."""
    st = doc["settings"]
    runs = doc["runs"]
    lengths = sorted({r["T"] for r in runs})
    cells = list(dict.fromkeys(r["short"] for r in runs))
    by = {(r["short"], r["T"]): r for r in runs}
    base = {T: next(r["baseline"] for r in runs if r["T"] == T) for T in lengths}
    label = {r["short"]: r["cell"] for r in runs}

    def reach(v: float) -> str:
        return "0 (underflow)" if v == 0 else f"{v:.1e}"

    def learned(r: dict) -> str:
        return f"yes, by step {r['steps_to_learn']}" if r["steps_to_learn"] else "no"

    import textwrap

    intro = (
        "`python examples/gated_adding.py` (`gradchain demo --cells`): the adding problem "
        f"through each cell (hidden {st['hidden']}, a linear readout, the loss on the last "
        f"step), float32. At initialisation, the gradient reaching step 1, ‖dL/dh_1‖ / "
        "‖dL/dh_T‖, from one backward pass; then "
        f"{st['train_steps']} Adam steps (clipping at {st['clip']:g}, batches of "
        f"{st['batch']} fresh sequences; learning rate "
        + ", ".join(f"{k} {v:g}" for k, v in st["lr"].items())
        + f") and the validation MSE ({st['val_size']} sequences) every "
        f"{st['eval_every']} steps. Predicting 1 scores "
        + ", ".join(f"{base[T]:.3f} at T = {T}" for T in lengths)
        + "; \"learned\": the validation MSE below a tenth of that.")
    lines = [
        *textwrap.wrap(intro, 90, break_on_hyphens=False),
        "",
        "| cell | T | reach at init | val MSE, best | val MSE, last | learned |",
        "|---|---|---|---|---|---|",
    ]
    for T in lengths:
        for c in cells:
            r = by[(c, T)]
            best = min(v for _, v in r["val_curve"])
            lines.append(f"| {label[c]} | {T} | {reach(r['reach'])} | {best:.4f} | "
                         f"{r['val_mse']:.4f} | {learned(r)} |")
    lines += ["", *textwrap.wrap(
        "Recorded in `examples/data/gated_adding.json` (every step's training loss, the "
        "validation curves) by `python examples/make_readme_tables.py --record-cells`; the "
        f"README check reruns the report at initialisation and the first {CELLS_CHECK_STEPS} "
        "training steps of every run and requires the same numbers to rounding (1e-12 relative "
        "for the report's float64 norms, 1e-6 for the float32 losses); over thousands of "
        "steps training amplifies rounding, so each run is one sample of its trajectory.", 90,
        break_on_hyphens=False)]
    return "\n".join(lines)


def cells_from_record(_fig: Path | None) -> str:
    doc = load_cells(CELLS_PATH[0])
    verify_cells(doc)
    return cells_block(doc)


CELLS_PATH = [CELLS_JSON]  # --cells-json replaces it


BLOCKS: dict[str, Callable[[Path | None], str]] = {
    "demo": demo_block,
    "case-study": lambda _fig: case_study_block(),
    "examples": lambda _fig: examples_block(),
    "isometry": isometry_block,
    "cells": cells_from_record,
}


# ---------------------------------------------------------------- README plumbing
def _marker(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN gen:{re.escape(name)} -->\n)(.*?)(<!-- END gen:"
                      rf"{re.escape(name)} -->)", re.S)


def render(readme: str, figure_to: Path | None = None,
           only: list[str] | None = None) -> str:
    """README text with every generated block (or those in ``only``) recomputed."""
    for name, make in BLOCKS.items():
        if only is not None and name not in only:
            continue
        m = _marker(name).search(readme)
        if m is None:
            raise ValueError(f"README.md has no <!-- BEGIN gen:{name} --> block")
        text = make(figure_to)
        readme = readme[:m.start(2)] + text + "\n" + readme[m.end(2):]
    return readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="compare instead of writing: exit 1 with a diff where they differ")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="the README to use")
    p.add_argument("--only", nargs="+", choices=list(BLOCKS), help="these blocks only")
    p.add_argument("--record-cells", action="store_true",
                   help="first rerun the gated-cell comparison (minutes) into "
                        "examples/data/gated_adding.json")
    p.add_argument("--cells-json", default=str(CELLS_JSON),
                   help="the recorded comparison to render and verify")
    p.add_argument("--cells-train-steps", type=int, default=None,
                   help=argparse.SUPPRESS)  # --record-cells: a short run (tests)
    args = p.parse_args(argv)
    if gc.get_isa() != "avx2":
        print(f"make_readme_tables: the README's figures are made with the AVX2 kernels; "
              f"this CPU runs {gc.get_isa()!r}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    CELLS_PATH[0] = Path(args.cells_json)
    if args.record_cells:
        record_cells(CELLS_PATH[0], args.cells_train_steps)
    path = Path(args.readme)
    before = path.read_text(encoding="utf-8")
    try:
        after = render(before, None if args.check else ROOT / "docs" / "demo.png", args.only)
    except StaleRecord as e:
        print(f"{CELLS_PATH[0]} no longer matches the code ({e}): record it again with "
              "python examples/make_readme_tables.py --record-cells", file=sys.stderr)
        return 1
    if args.check:
        if after == before:
            print("README.md: every generated block matches the code")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            "README.md", "README.md (from the code)"))
        return 1
    path.write_text(after, encoding="utf-8")
    print(f"wrote {path} and {ROOT / 'docs' / 'demo.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
