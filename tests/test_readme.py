"""The README's "API in one screen" runs as written (in a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The API in one screen"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's API section"
    return m.group(1)


def test_the_readme_api_example_runs(tmp_path, monkeypatch, restore_threads):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    code = api_block()
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - our own README
    for png in ("rnn_report.png", "history.png", "phase.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert len(ns["res"]) == 3 * 3 * 2 * 2
    assert ns["hist"].val_accuracy[-1] > 0.5
    assert (tmp_path / "model.npz").exists()
