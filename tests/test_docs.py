"""The mathematics, the workloads and the API live in the repository (docs/), every
pointer to them resolves there, they name what the code has, and the version is
written once."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
import sys
from pathlib import Path

import pytest

import gradchain as gc
from gradchain import bench

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# where pointers may be written (docs/ itself refers to its files by their bare names)
SOURCES = ("README.md", "src", "cpp", "tests", "benchmarks", "examples")
TEXT = {".py", ".pyi", ".md", ".txt", ".toml", ".cfg", ".cpp", ".cc", ".c", ".h", ".hpp",
        ".sh", ".cmake"}
REQUIRED = ("CONVENTIONS.md", "WORKLOADS.md", "API.md")


def _text_files(*roots: str) -> list[Path]:
    out: list[Path] = []
    for r in roots:
        p = ROOT / r
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT
                          and "__pycache__" not in f.parts)
    return out


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _doc(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return _read(path)


def test_the_docs_are_in_the_repository() -> None:
    for name in REQUIRED:
        assert len(_doc(name)) > 1000, f"docs/{name} is nearly empty"


def test_no_pointer_outside_the_repository() -> None:
    """Nothing points at the shared spec folder beside the checkout (it is not in a clone
    or the wheel): what ``git grep`` of that folder's path over README.md, src, docs, cpp,
    tests, benchmarks and examples checks, without needing git."""
    outside = "shared" + "/spec"  # spelled so that this file does not match itself
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
            for f in _text_files(*SOURCES, "docs")
            for i, line in enumerate(_read(f).splitlines(), 1) if outside in line]
    assert not hits, "pointers outside the repository:\n" + "\n".join(hits)


def test_every_docs_pointer_resolves() -> None:
    """Every ``docs/...`` path named in README, sources, tests, benchmarks and examples
    exists, and a docs file is never named without its folder there (``CONVENTIONS.md``
    alone would send a reader looking next to the file that says it)."""
    names = sorted(p.name for p in DOCS.glob("*.md"))
    assert set(REQUIRED) <= set(names)
    bare = re.compile(r"(?<![\w/.-])(" + "|".join(re.escape(n) for n in names) + r")\b")
    missing, unqualified = [], []
    seen = 0
    for f in _text_files(*SOURCES):
        if f == Path(__file__).resolve():  # this file names them to read them
            continue
        for i, line in enumerate(_read(f).splitlines(), 1):
            for m in re.finditer(r"(?<![\w/.])docs/[\w./-]*\w", line):
                seen += 1
                if not (ROOT / m.group(0)).exists():
                    missing.append(f"{f.relative_to(ROOT)}:{i}: {m.group(0)}")
            unqualified += [f"{f.relative_to(ROOT)}:{i}: {m.group(1)}"
                            for m in bare.finditer(line)]
    assert seen >= 10, "the sources should point at docs/ (found almost no pointer)"
    assert not missing, "pointers to files that do not exist:\n" + "\n".join(missing)
    assert not unqualified, ("name docs files with their folder, docs/<name>:\n"
                             + "\n".join(unqualified))
    # inside docs/, files name each other by their bare names: those must exist too
    for name in names:
        for m in re.finditer(r"`([A-Z][A-Z_]*\.md)`", _doc(name)):
            assert (DOCS / m.group(1)).is_file(), f"docs/{name} names {m.group(1)}"


def _missing(text: str, words: list[str], fmt: str = "{}") -> list[str]:
    return [w for w in words if fmt.format(w) not in text]


def test_conventions_name_every_activation_init_loss_norm_clip_optimiser_and_report_field(
) -> None:
    text = _doc("CONVENTIONS.md")
    report_fields = [f.name for cls in (gc.GradReport, gc.RNNGradReport, gc.GatedGradReport)
                     for f in dataclasses.fields(cls) if f.name != "layer_names"]
    wanted = {
        "activations": list(gc.ACTIVATIONS),
        "init schemes": list(gc.init.SCHEMES),
        "losses": ["mse", "cross_entropy"],
        "norm layers": ["BatchNorm", "LayerNorm"],
        "clipping": [*gc.clip.__all__, "grad_norm"],
        "optimisers": [n for n in gc.optim.__all__ if n != "Optimizer"],
        "report quantities": [*report_fields, "ratio", "log10_slope", "verdict"],
        "theory": ["q*", "chi_1", "xi_grad"],
    }
    gaps = {k: _missing(text, v) for k, v in wanted.items()}
    assert not any(gaps.values()), f"docs/CONVENTIONS.md does not cover: {gaps}"
    # every activation parameter with its default, as gc.Activation takes them
    for name in gc.ACTIVATIONS:
        for param, default in gc.Activation(name).params.items():
            assert param in text, f"docs/CONVENTIONS.md: {name}'s parameter {param}"
            assert f"{param}={default:g}" in text or f"{param}={default!r}" in text, (
                f"docs/CONVENTIONS.md: {name}'s default {param}={default:g}")
    for marker in ("[PyTorch]", "[gradchain]"):  # where the original spec was silent
        assert marker in text


def _public(cls: type) -> list[str]:
    return sorted(n for n, _ in inspect.getmembers(cls) if not n.startswith("_"))


def test_api_names_every_public_name() -> None:
    text = _doc("API.md")
    gaps = {
        "gc": _missing(text, list(gc.__all__), "gc.{}"),
        "gc.optim": _missing(text, list(gc.optim.__all__), "gc.optim.{}"),
        "gc.theory": _missing(text, list(gc.theory.__all__), "gc.theory.{}"),
        "gc.init": _missing(text, list(gc.init.SCHEMES), "gc.init.{}("),
    }
    for cls in (gc.MLP, gc.RNN, gc.LSTM, gc.GRU, gc.GradReport, gc.RNNGradReport,
                gc.GatedGradReport, gc.History):
        gaps[cls.__name__] = [n for n in _missing(text, _public(cls), ".{}")
                              ]
    assert not any(gaps.values()), f"docs/API.md does not show: {gaps}"
    for snippet in ("state_dict(copy=True)", "mlp.lock", "report=False", "__version__"):
        assert snippet in text


def test_workloads_doc_lists_every_workload_and_peer() -> None:
    text = _doc("WORKLOADS.md")
    assert not _missing(text, list(bench.WORKLOADS), "| {} |")
    assert not _missing(text, list(bench.PEERS), "`{}`")
    formulas = {"mlp": "6 * B * sum(in_l * out_l)", "rnn": "6 * T * B * (I*H + H*H)",
                "lstm": "6 * T * B * 4 * (I*H + H*H)", "gru": "6 * T * B * 3 * (I*H + H*H)"}
    for w in bench.WORKLOADS.values():  # the FLOP formulas of the table are the code's
        assert formulas[w.kind] in text


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads the version from the package (scikit-build-core's regex
    provider); the string itself is written only in the file it reads."""
    cfg = _pyproject()
    assert "version" not in cfg["project"], "pyproject.toml writes the version itself"
    assert "version" in cfg["project"]["dynamic"]
    provider = cfg["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["provider"] == "scikit_build_core.metadata.regex"
    source = _read(ROOT / provider["input"])
    written = re.findall(r'(?m)^__version__ *= *["\']([^"\']+)["\']', source)
    assert written == [gc.__version__]


def test_installed_metadata_version_is_the_package_version() -> None:
    assert importlib.metadata.version("gradchain") == gc.__version__


# --------------------------------------------------------------- docs/ARCHITECTURE.md
_PATH_EXTS = (".h", ".cpp", ".py", ".pyi", ".md", ".txt", ".toml", ".json")
PKG = ROOT / "src" / "gradchain"


def _architecture_spans() -> list[str]:
    """The code spans of docs/ARCHITECTURE.md outside its fenced blocks, each on one line."""
    text = re.sub(r"```.*?```", "", _doc("ARCHITECTURE.md"), flags=re.S)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


def _is_path(span: str) -> bool:
    """A file or folder (``cpp/src/``, ``math-inl.h``), not a kind of file (``.cpp``)."""
    return " " not in span and ("/" in span or (
        span.endswith(_PATH_EXTS) and (span[0].isalnum() or span[0] == "_")))


def _path_exists(span: str) -> bool:
    """A path from the repository root (``cpp/src/mlp.cpp``, ``cpp/src/*.cpp``), from the
    package (``models/base.py``), a bare file name of the sources or docs (``math-inl.h``),
    or a template (``src/gradchain/models/<kind>.py``: its folder)."""
    if "<" in span:
        span = span[:span.index("<")].rpartition("/")[0] or "."
    if "/" in span:
        top = ROOT if (ROOT / span.split("/")[0]).exists() else PKG
        return any(top.glob(span.rstrip("/"))) if "*" in span else (top / span).exists()
    return (ROOT / span).is_file() or any(
        f.name == span for f in _text_files(*SOURCES, "docs"))


def test_architecture_paths_and_tests_exist() -> None:
    """Every file, folder and test function that docs/ARCHITECTURE.md names exists."""
    spans = _architecture_spans()
    paths = [s for s in spans if _is_path(s)]
    assert len(paths) >= 50, "docs/ARCHITECTURE.md should name the files it maps"
    assert not [s for s in paths if not _path_exists(s)], (
        "docs/ARCHITECTURE.md names paths that do not exist: "
        + ", ".join(s for s in paths if not _path_exists(s)))
    tests = "\n".join(_read(f) for f in sorted((ROOT / "tests").glob("test_*.py")))
    gone = [s for s in spans if re.fullmatch(r"test_\w+", s) and f"def {s}(" not in tests]
    assert not gone, f"docs/ARCHITECTURE.md names tests that do not exist: {gone}"


def test_architecture_maps_every_file_module_and_registry_entry() -> None:
    """docs/ARCHITECTURE.md names every C++ source and header, every module of the package
    and every entry of the model, norm, optimiser and loss registries: a new one gets its
    place on the map."""
    from gradchain import _core, losses, models, optim

    spans = set(_architecture_spans())
    named_files = {s.rstrip("/").rpartition("/")[2] for s in spans if _is_path(s)}
    cpp = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "cpp").rglob("*")
                 if p.suffix in (".h", ".cpp") and p.name not in named_files)
    modules = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in PKG.glob("*/__init__.py")} | {"_core"}
    registries = {"model kinds": list(models.MODELS), "norms": list(_core.NORM_IDS),
                  "optimisers": list(optim.OPTIMIZERS), "losses": list(losses.LOSSES)}
    gaps = {"C++ files": cpp, "modules": sorted(modules - spans),
            **{k: [n for n in v if n not in spans] for k, v in registries.items()}}
    assert not any(gaps.values()), f"docs/ARCHITECTURE.md does not map: {gaps}"
