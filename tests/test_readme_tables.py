"""The README's figures are the code's (issue 10, item 11): examples/make_readme_tables.py
regenerates every block of README.md marked ``<!-- BEGIN gen:... -->`` (the demo output,
the digits case study, the examples table) and ``--check`` compares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "make_readme_tables.py"
CANNOT_CHECK = 3  # the script's exit code on a CPU without AVX2


def check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    pytest.importorskip("sklearn")  # the case study trains on the digits
    pytest.importorskip("matplotlib")  # the demo writes its figure
    out = subprocess.run([sys.executable, str(SCRIPT), "--check", *args], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode == CANNOT_CHECK:
        pytest.skip(out.stderr.strip())
    return out


def test_readme_figures_match_the_code():
    out = check()
    assert out.returncode == 0, "README.md and the code disagree; run python " \
        f"examples/make_readme_tables.py and commit README.md:\n{out.stdout}{out.stderr}"


def test_a_drifted_figure_is_caught(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- BEGIN gen:demo -->"):readme.index("<!-- END gen:demo")]
    line = next(ln for ln in block.splitlines() if ln.startswith("  tanh + orthogonal W_hh"))
    drifted = line.replace("vanishing", "healthy")
    (tmp_path / "README.md").write_text(readme.replace(line, drifted), encoding="utf-8")
    out = check("--only", "demo", "--readme", str(tmp_path / "README.md"))
    assert out.returncode == 1
    assert f"-{drifted}\n" in out.stdout and f"+{line}\n" in out.stdout
