"""Three floors, a lazy package and an independent oracle (issue 11, item 3; docs/API.md,
"Floors").

The core API (models, activations, init, losses, clipping, optimisers, the report's
numbers, io, runtime settings) imports nothing from the research lab (theory, training,
sweeps, data, tasks, plots, demo, CLI) or the benchmark harness (``gradchain.bench``);
``gradchain.reference`` imports nothing from the package and only the harness's NumPy
peer and cases import it; ``gradchain/__init__`` loads every public name lazily from its
home module, so ``import gradchain.reference`` loads nothing else of the package.

The scans read the source files by path, so ``models.py`` and a ``models/`` package are
covered alike.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradchain as gc

PKG = Path(gc.__file__).resolve().parent

# each module's floor, by the first part of its name below ``gradchain``
CORE = {"models", "rnn", "activations", "init", "losses", "clip", "optim", "report", "io",
        "runtime", "_validate", "_memory", "_core", "linearize"}
LAB = {"theory", "training", "sweeps", "data", "tasks", "plots", "_plotting", "demo", "cli",
       "__main__", "spectrum"}
BENCH = {"bench"}
ORACLE = {"reference"}
FLOORS = {**{m: "core" for m in CORE}, **{m: "lab" for m in LAB},
          **{m: "bench" for m in BENCH}, **{m: "oracle" for m in ORACLE}}

# the only modules of the package that may import the oracle: the harness runs it as its
# NumPy peer and as the float64 truth of its agreement checks
REFERENCE_IMPORTERS = {"gradchain.bench.cases", "gradchain.bench.peers.numpy_peer"}
# the only run-time (function-level) imports from the core into the lab: the reports'
# plot() methods, thin delegates to the lab's drawing code, and each model kind's lab
# hooks (``Model.lab``: the data sets a sweep trains on or a CLI probe runs on)
CORE_TO_LAB_DELEGATES = {("gradchain.report", "gradchain.plots"),
                         ("gradchain.models.mlp", "gradchain.data"),
                         ("gradchain.models.rnn", "gradchain.data")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["gradchain", *parts])


def _sources() -> dict[str, Path]:
    """Every Python module of the package: dotted name -> file."""
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))
            if "__pycache__" not in p.parts}


SOURCES = _sources()
MODULES = set(SOURCES) | {"gradchain._core"}  # _core: the compiled extension


def _floor(module: str) -> str | None:
    """The floor of a module of the package (None: the package itself)."""
    parts = module.split(".")
    return None if len(parts) == 1 else FLOORS.get(parts[1], "unplaced")


def _resolve(module: str, name: str) -> str:
    """What ``from <module> import <name>`` loads: a submodule, else the module itself
    (the package's lazily loaded names count as their home module)."""
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    if module == "gradchain" and name in gc._LAZY:
        return f"gradchain.{gc._LAZY[name]}"
    return module


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, at module level) for every import
    statement of ``module``'s source; imports inside a function run only when it is
    called, so they are not module level."""
    path = SOURCES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, top) for a in child.names
                           if a.name.split(".")[0] == "gradchain")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    src = ".".join(base + ([child.module] if child.module else []))
                else:
                    src = child.module or ""
                if src.split(".")[0] == "gradchain":
                    out.extend((_resolve(src, a.name), child.lineno, top) for a in child.names)
            visit(child, top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, True)
    return out


def test_every_module_stands_on_a_floor():
    unplaced = sorted(m for m in SOURCES if _floor(m) == "unplaced")
    assert not unplaced, (
        f"modules on no floor: {unplaced}; add them to CORE, LAB or BENCH here and to "
        "docs/API.md's 'Floors'")
    assert "gradchain.reference" in SOURCES and "gradchain.report" in SOURCES


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if _floor(m) == "core"))
def test_the_core_imports_nothing_from_the_lab_or_the_harness(module):
    bad = [f"{SOURCES[module].name}:{line}: {target} ({_floor(target)})"
           for target, line, top in _imports(module)
           if _floor(target) in ("lab", "bench", "oracle")
           and (top or (module, target) not in CORE_TO_LAB_DELEGATES)]
    assert not bad, f"{module} reaches above the core floor:\n" + "\n".join(bad)
    # nor through the package itself (``import gradchain as gc; gc.sweep``)
    assert not [t for t, _, _ in _imports(module) if t == "gradchain"], module


def test_the_plot_delegates_are_the_only_way_from_the_core_to_the_lab():
    uses = {(m, t) for m in SOURCES if _floor(m) == "core"
            for t, _, top in _imports(m) if _floor(t) == "lab" and not top}
    assert uses == CORE_TO_LAB_DELEGATES


def test_the_lab_imports_nothing_from_the_harness():
    bad = [f"{m}:{line}: {t}" for m in SOURCES if _floor(m) == "lab"
           for t, line, top in _imports(m) if top and _floor(t) == "bench"]
    assert not bad, bad


def test_the_reference_imports_nothing_from_the_package():
    path = SOURCES["gradchain.reference"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(
                ".")[0] == "gradchain"):
            bad.append(f"{node.lineno}: from {'.' * node.level}{node.module or ''}")
        elif isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "gradchain"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute) \
                and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "__import__", "import_module"):
            bad.append(f"{node.lineno}: a dynamic import")
    assert not bad, "gradchain.reference imports from the package:\n" + "\n".join(bad)


def test_only_the_harness_imports_the_reference():
    importers = {m for m in SOURCES if m != "gradchain"  # the front door re-exports it lazily
                 for t, _, _ in _imports(m) if t == "gradchain.reference"}
    assert importers <= REFERENCE_IMPORTERS, importers - REFERENCE_IMPORTERS
    assert importers, "the harness's NumPy peer should run the reference"
    assert all(_floor(m) == "bench" for m in REFERENCE_IMPORTERS)


def _env() -> dict[str, str]:
    """This environment less what makes ``import gradchain`` check the core's settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("GRADCHAIN_ISA", "OMP_NUM_THREADS", "PYTHONSTARTUP")}


def _run(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=_env() if env is None else env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


LOADED = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'gradchain'))"


def test_importing_the_reference_loads_nothing_else_of_the_package():
    assert _run(f"import gradchain.reference; {LOADED}") == str(
        ["gradchain", "gradchain.reference"])


def test_importing_the_package_loads_none_of_its_modules():
    assert _run(f"import gradchain; {LOADED}") == str(["gradchain"])


def test_passes_training_and_reports_never_load_the_reference_or_matplotlib():
    code = (
        "import os, sys, tempfile, numpy as np, gradchain as gc\n"
        "m = gc.MLP([8, 16, 4], norm='layer', residual=True, seed=0)\n"
        "x = np.ones((6, 8), np.float32)\n"
        "loss, rep = m.loss_and_grad(x, np.zeros(6, np.int64), loss='cross_entropy')\n"
        "rep.table(); rep.to_dict(); rep.verdict()\n"
        "r = gc.RNN(2, 8, output_size=1, seed=0)\n"
        "xs, ys = gc.data.adding(5, 4)\n"
        "loss, rr = r.loss_and_grad(xs, ys, loss='mse', on='last'); rr.table()\n"
        "gc.train(m, (x, np.zeros((6, 4), np.float32)), gc.optim.Adam(m), epochs=1,\n"
        "         batch_size=3, loss='mse', clip=1.0, progress=False)\n"
        "gc.clip_grad_norm_per_layer(r, 1.0)\n"
        "p = os.path.join(tempfile.mkdtemp(), 'm.npz'); gc.save(m, p); gc.load(p)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'matplotlib'\n"
        "             or k in ('gradchain.reference', 'gradchain.plots', 'gradchain.bench')))\n")
    assert _run(code) == "[]"


def test_the_environment_checks_still_warn_on_a_bare_import():
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import gradchain\n"
            "print([str(x.message) for x in w if x.category is RuntimeWarning])\n")
    warned = _run(code, env={**_env(), "GRADCHAIN_ISA": "no-such-isa"})
    assert "GRADCHAIN_ISA='no-such-isa' cannot run here" in warned, warned


def _lazy_block_names() -> set[str]:
    """The names ``gradchain/__init__.py`` imports for type checkers only."""
    tree = ast.parse(SOURCES["gradchain"].read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom):
                    names |= {a.asname or a.name for a in imp.names}
    return names


def test_the_lazy_table_is_what_type_checkers_see():
    assert _lazy_block_names() == set(gc._LAZY)
    assert set(gc.__all__) <= set(gc._LAZY)
    assert set(gc._SUBMODULES) <= set(gc._LAZY)
    # dir() shows those and any other submodule loaded since (gradchain.cli, ...): all there
    assert all(hasattr(gc, k) for k in dir(gc))


def test_every_lazy_name_resolves_to_its_home():
    import importlib

    for name, home in sorted(gc._LAZY.items()):
        module = importlib.import_module(f"gradchain.{home}")
        want = module if name == home else getattr(module, name)
        assert getattr(gc, name) is want, name
    star: dict[str, object] = {}
    exec("from gradchain import *", star)  # what __all__ promises
    assert {k for k in star if k != "__builtins__"} == set(gc.__all__)
    assert all(star[k] is getattr(gc, k) for k in gc.__all__)


def test_every_lazy_name_loads_first_in_a_fresh_process():
    """Loaded first, each home module imports what it needs itself (no import cycle
    hides behind the order the package used to import them in)."""
    homes: dict[str, list[str]] = {}
    for name, home in gc._LAZY.items():
        homes.setdefault(home, []).append(name)
    procs = {home: subprocess.Popen(
        [sys.executable, "-c", "import gradchain as gc\n"
         + "".join(f"assert gc.{n} is not None\n" for n in names)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for home, names in sorted(homes.items())}
    failed = {}
    for home, p in procs.items():
        _, err = p.communicate(timeout=120)
        if p.returncode:
            failed[home] = err[-1500:]
    assert not failed, failed
