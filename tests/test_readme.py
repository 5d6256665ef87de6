"""The README's "API in one screen" runs as written, saved as a script and run with
``python file.py`` in a scratch folder (its gc.sweep starts worker processes that
re-import the script, so this is the only honest way to run it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The API in one screen"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's API section"
    return m.group(1)


def run_script(path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    return subprocess.run([sys.executable, path.name], cwd=path.parent, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_the_readme_api_example_runs_as_a_script(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    script = tmp_path / "readme_api.py"
    script.write_text(api_block(), encoding="utf-8")
    out = run_script(script)
    assert out.returncode == 0, out.stderr[-3000:]
    for png in ("rnn_report.png", "history.png", "phase.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert (tmp_path / "model.npz").exists()
    # the script ran once: the worker processes imported it without running it
    m = re.findall(r"^(\d+) sweep runs; digits test accuracy ([\d.]+)%$", out.stdout, re.M)
    assert len(m) == 1, out.stdout[-2000:]
    assert int(m[0][0]) == 3 * 3 * 2 * 2
    assert float(m[0][1]) > 50
    assert out.stdout.count("||dL/dh_t||") == 1  # the RNN table, printed once


def test_the_readme_says_why_the_second_install_compiles_again():
    """README: the second install recompiles because scikit-build-core clears its build
    folder when the isolated build environment changes. If a scikit-build-core release
    stops doing so, this fails: then the build can be reused and the README must say so."""
    text = README.read_text(encoding="utf-8")
    top = text[:text.index("## ")]
    assert "The second command compiles the core again" in top
    assert 'pip install ".[test]" && gradchain demo && python -m pytest' in top
    assert 'pip install --no-build-isolation ".[test]"' in top
    cmake = pytest.importorskip("scikit_build_core.cmake")
    import inspect

    src = inspect.getsource(cmake)
    # the stale-build check that empties CMakeCache.txt and CMakeFiles/ per isolated env
    assert '"skbuild_path"' in src and "New isolated environment" in src
    assert 'joinpath("CMakeFiles")' in src
