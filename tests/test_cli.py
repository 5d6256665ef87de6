"""The command line: demo, probe, --help and bad flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradchain import cli, demo


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradchain", *args], capture_output=True,
                          text=True)


def test_demo_shows_vanishing_and_fixes(capsys):
    assert cli.main(["demo", "--depth", "20", "--width", "64", "--batch", "32",
                     "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid, standard init" in out and "relu + He init" in out
    assert "IRNN" in out and "clip_grad_norm" in out
    assert out.count("vanishing") >= 3 and out.count("healthy") >= 4


def test_rnn_demo_numbers():
    res = {r.short: r for r in demo.run_rnn(T=80, batch=16, hidden=32)}
    assert res["tanh"].report.ratio < 1e-6
    assert 1e-2 < res["IRNN"].report.ratio < 1e2
    assert res["relu x1.6"].report.ratio > 10 and res["relu x1.6"].report.log10_slope() > 0
    assert res["relu x1.6"].clipped_norm == pytest.approx(1.0, rel=1e-3)


def test_demo_numbers():
    results = demo.run_mlp(depth=30, width=64, batch=32)
    by = {c.label: r for c, r in results}
    assert by["sigmoid, standard init"].ratio < 1e-6
    assert by["tanh, standard init"].ratio < 1e-3
    for c, r in results:
        if c.kind == "fix":
            assert 1e-2 < r.ratio < 1e2, (c.label, r.ratio)


def test_demo_json(capsys):
    assert cli.main(["demo", "--depth", "5", "--width", "16", "--batch", "8", "--steps", "7",
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["mlp"]) == len(demo.mlp_cases())
    assert all(len(v["activation_grad_norms"]) == 6 for v in data["mlp"].values())
    assert all(len(v["timestep_grad_norms"]) == 7 for v in data["rnn"].values())


def test_probe_table_and_json(capsys):
    assert cli.main(["probe", "--depth", "6", "--width", "16", "--activation", "relu",
                     "--norm", "batch", "--residual", "2"]) == 0
    assert "||dL/dW||" in capsys.readouterr().out
    assert cli.main(["probe", "--depth", "3", "--width", "8", "--sigma-w", "1.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["init"]["name"] == "normal"
    assert len(data["report"]["weight_grad_norms"]) == 4


@pytest.mark.parametrize("args", [
    ["nope"], ["demo", "--depth", "x"], ["demo", "--depth", "0"],
    ["probe", "--norm", "weird"],
])
def test_bad_flags_exit_2(args):
    out = run(*args)
    assert out.returncode == 2
    assert "error" in out.stderr


def test_bad_values_give_one_line_and_exit_2():
    out = run("probe", "--activation", "swoosh")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "swoosh" in out.stderr


def test_help():
    out = run("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "bench" in out.stdout
