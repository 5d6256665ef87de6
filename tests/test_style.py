"""The code base is ruff-clean (skipped where ruff is not installed)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    paths = [p for p in ("src", "tests", "benchmarks") if (ROOT / p).exists()]
    out = subprocess.run([ruff, "check", "--no-cache", *paths], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
