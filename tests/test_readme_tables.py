"""The README's figures are the code's (issue 10, item 11): examples/make_readme_tables.py
regenerates every block of README.md marked ``<!-- BEGIN gen:... -->`` (the demo output,
the digits case study, the examples table) and ``--check`` compares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "make_readme_tables.py"
CELLS_JSON = ROOT / "examples" / "data" / "gated_adding.json"
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


def test_the_cells_record_is_the_code_s_to_rounding(tmp_path):
    """The gated-cell comparison is rendered from a recorded file (its training takes
    minutes); every check reruns the start of each recorded run and refuses a record that
    the code no longer reproduces to rounding: here one run, its third training loss moved
    by 1e-5 (refused) and by one float64 ulp (accepted: rounding), then its reach at
    initialisation by 1e-10 (refused) and by 1e-14 (accepted)."""
    import numpy as np

    doc = json.loads(CELLS_JSON.read_text(encoding="utf-8"))
    assert {(r["short"], r["T"]) for r in doc["runs"]} == {
        (c, T) for c in ("tanh RNN", "IRNN", "LSTM", "GRU") for T in (200, 1000)}
    run = next(r for r in doc["runs"] if r["short"] == "tanh RNN" and r["T"] == 200)
    doc["runs"] = [run]
    path = tmp_path / "one.json"
    args = ("--only", "cells", "--cells-json", str(path), "--readme", str(ROOT / "README.md"))

    def verdict(loss2: float, reach: float) -> str:
        run["loss"][2], run["reach"] = loss2, reach
        path.write_text(json.dumps(doc), encoding="utf-8")
        out = check(*args)
        assert out.returncode == 1  # either stale or, verified, its one-run table differs
        if "no longer matches" in out.stderr:
            return out.stderr
        assert "-| IRNN" in out.stdout
        return "verified"

    loss2, reach = run["loss"][2], run["reach"]
    assert verdict(loss2, reach) == "verified"
    assert "(tanh RNN at T=200: loss differs from the recorded one by more than 1e-06" in \
        verdict(loss2 * (1 + 1e-5), reach)
    assert verdict(float(np.nextafter(loss2, np.inf)), reach) == "verified"
    assert "reach differs" in verdict(loss2, reach * (1 + 1e-10))
    assert verdict(loss2, reach * (1 + 1e-14)) == "verified"
