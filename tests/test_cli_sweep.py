"""`gradchain sweep`: the table, CSV and JSON against gc.sweep's records, TOML grid files,
flags overriding them, --quiet, and bad flags (exit 2, one line on stderr)."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import struct

import pytest

import gradchain as gc
from gradchain import cli, sweeps

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ["sweep", "--activation", "tanh", "relu", "--depth", "3", "5", "--norm", "none",
         "layer", "--width", "12", "--batch", "6", "--executor", "serial"]
GRID = {"activation": ["tanh", "relu"], "depth": [3, 5], "norm": [None, "layer"]}
FIXED = {"width": 12, "batch": 6}


def records(grid=GRID, **fixed):
    return gc.sweep(grid, executor="serial", progress=False, as_frame=False,
                    **(fixed or FIXED))


def bits(v):
    if isinstance(v, float):
        return struct.pack("<d", v).hex()
    if isinstance(v, list):
        return [bits(x) for x in v]
    if isinstance(v, dict):
        return {k: bits(x) for k, x in v.items()}
    return v


def table_rows(out: str) -> list[list[str]]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].split()[:4] == ["#", "activation", "depth", "norm"]
    assert "||dL/da_0||/||dL/da_L||" in lines[0] and "verdict" in lines[0]
    return [ln.split() for ln in lines[1:]]


def test_table_matches_records(capsys):
    assert cli.main(FLAGS) == 0
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    recs = records()
    assert len(rows) == len(recs) == 8
    for i, (row, r) in enumerate(zip(rows, recs, strict=True)):
        norm = "none" if r["norm"] is None else r["norm"]
        assert row[:4] == [str(i), r["activation"], str(r["depth"]), norm]
        assert row[4] == f"{r['ratio']:.3e}"
        assert row[5] == f"{r['log10_slope']:+.3f}"
        assert row[6] == r["verdict"].split(":")[0]
    assert "gc.sweep" in captured.err  # the progress bar


def test_json_matches_records(capsys):
    assert cli.main([*FLAGS, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert bits(data) == bits(records())


def test_csv_matches_records(tmp_path, capsys):
    path = tmp_path / "sweep.csv"
    assert cli.main([*FLAGS, "--csv", str(path)]) == 0
    assert f"8 runs written to {path}" in capsys.readouterr().out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    recs = records()
    assert len(rows) == len(recs)
    assert list(rows[0]) == list(recs[0])
    for row, r in zip(rows, recs, strict=True):
        assert [float(v) for v in row["grad_norms"].split()] == r["grad_norms"]
        for k, v in r.items():
            if isinstance(v, float):
                assert bits(float(row[k])) == bits(v), k
            elif v is None:
                assert row[k] == "", k
            elif not isinstance(v, list):
                assert row[k] == str(v), k


def test_quiet(tmp_path, capsys):
    path = tmp_path / "q.csv"
    assert cli.main([*FLAGS, "--quiet", "--csv", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert len(path.read_text().splitlines()) == 9
    assert cli.main([*FLAGS, "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_single_values_are_fixed_and_residual_zero_is_none(capsys):
    assert cli.main(["sweep", "--residual", "0", "2", "--depth", "4", "--width", "8",
                     "--batch", "4", "--bias", "false", "--dtype", "float64", "--sigma-w",
                     "1.5", "--executor", "serial", "--json", "--seed", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = gc.sweep({"residual": [False, 2]}, depth=4, width=8, batch=4, bias=False,
                        dtype="float64", sigma_w=1.5, seed=3, executor="serial",
                        progress=False, as_frame=False)
    assert bits(data) == bits(expected)
    assert data[0]["init"] == "normal" and data[0]["residual"] is False


def test_rnn_sweep(capsys):
    assert cli.main(["sweep", "--model", "rnn", "--init", "orthogonal", "torch_default",
                     "--steps", "9", "--hidden-size", "8", "--batch", "3", "--executor",
                     "threads"]) == 0
    out = capsys.readouterr().out
    assert "||dL/dh_1||/||dL/dh_T||" in out and len(out.strip().splitlines()) == 3


def test_toml_config_and_flag_override(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text('seed = 4\n[grid]\nactivation = ["sigmoid", "tanh"]\ndepth = [2, 4]\n'
                    'norm = ["none", "batch"]\n[fixed]\nwidth = 8\nbatch = 4\n')
    assert cli.main(["sweep", "--config", str(path), "--executor", "serial", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = gc.sweep({"activation": ["sigmoid", "tanh"], "depth": [2, 4],
                         "norm": [None, "batch"]}, width=8, batch=4, seed=4,
                        executor="serial", progress=False, as_frame=False)
    assert bits(data) == bits(expected)
    # flags override the file: --depth 3 replaces the depth axis, --seed the seed
    assert cli.main(["sweep", "--config", str(path), "--depth", "3", "--width", "6",
                     "--seed", "0", "--executor", "serial", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = gc.sweep({"activation": ["sigmoid", "tanh"], "norm": [None, "batch"]},
                        depth=3, width=6, batch=4, executor="serial", progress=False,
                        as_frame=False)
    assert bits(data) == bits(expected)


def test_toml_train_table(tmp_path, capsys):
    path = tmp_path / "train.toml"
    path.write_text('[grid]\nactivation = ["tanh", "relu"]\n[fixed]\ndepth = 2\nwidth = 6\n'
                    'batch = 4\n[train]\nepochs = 1\nn = 32\nlr = 0.05\n')
    assert cli.main(["sweep", "--config", str(path), "--executor", "serial"]) == 0
    out = capsys.readouterr().out
    assert "final loss" in out
    assert cli.main(["sweep", "--config", str(path), "--executor", "serial", "--json",
                     "--epochs", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = gc.sweep({"activation": ["tanh", "relu"]}, depth=2, width=6, batch=4,
                        train={"epochs": 2, "n": 32, "lr": 0.05}, executor="serial",
                        progress=False, as_frame=False)
    assert bits(data) == bits(expected) and all(math.isfinite(r["final_loss"]) for r in data)


def test_example_grid_file(capsys):
    path = ROOT / "examples" / "sweep_grid.toml"
    cfg = sweeps.load_config(path)
    assert len(sweeps.configurations(cfg["grid"], **cfg["fixed"])) == 24
    assert cli.main(["sweep", "--config", str(path), "--width", "16", "--batch", "8",
                     "--executor", "serial"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 24
    by = {(r[1], r[2], r[3], r[4]): r[-1] for r in rows}
    # the classic result: plain deep sigmoid vanishes, a skip connection fixes it
    assert by[("sigmoid", "32", "none", "False")] == "vanishing"
    assert by[("sigmoid", "32", "none", "True")] == "healthy"


def test_dask_executor(capsys):
    pytest.importorskip("dask.distributed")
    assert cli.main(["sweep", "--depth", "2", "3", "--width", "6", "--batch", "4",
                     "--executor", "dask", "--workers", "1", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert bits(data) == bits(records({"depth": [2, 3]}, width=6, batch=4))


def test_dask_missing_exits_2(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    assert cli.main(["sweep", "--depth", "2", "--executor", "dask"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradchain sweep: error:") and "dask" in err


@pytest.mark.parametrize("args, word", [
    (["--depth", "0"], "depth"),
    (["--depth", "3", "-1"], "depth"),
    (["--activation", "swoosh"], "swoosh"),
    (["--init", "glorot"], "glorot"),
    (["--residual", "-1"], "residual"),
    (["--sigma-w", "nan"], "sigma_w"),
    (["--norm", "batch", "--batch", "1"], "batch"),
    (["--model", "rnn", "--depth", "3"], "depth"),
    (["--init", "orthogonal", "--sigma-w", "2"], "sigma_w"),
    (["--workers", "0"], "workers"),
    (["--config", "/nonexistent/grid.toml"], "grid.toml"),
    (["--csv", "/nonexistent/dir/out.csv"], "--csv"),
    (["--epochs", "1", "--data", "digits", "--loss", "mse"], "digits"),
    (["--lr", "-1"], "lr"),
])
def test_bad_values_exit_2_with_one_line(args, word, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(sweeps, "run_one", lambda *a, **k: calls.append(a))
    assert cli.main(["sweep", "--executor", "serial", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and calls == []
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("gradchain sweep: error: ") and word in captured.err


@pytest.mark.parametrize("text, word", [
    ("[grid]\ndepth = 3\n", "list"),
    ("[grid]\ndepth = [3]\n[extra]\nx = 1\n", "extra"),
    ("[grid\n", "TOML"),
    ("grid = 3\n", "table"),
    ("[grid]\ndept = [3]\n", "dept"),
])
def test_bad_toml_exit_2(text, word, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["sweep", "--config", str(path), "--executor", "serial"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradchain sweep: error: ") and word in err


@pytest.mark.parametrize("args", [
    ["--depth", "x"], ["--norm", "weird"], ["--executor", "gpu"], ["--bias", "maybe"],
    ["--depth"], ["--nope"],
])
def test_parse_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", *args])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # argparse: the subcommand's parser names itself; an unknown flag is the top level's
    assert last.startswith(("gradchain sweep: error: ", "gradchain: error: unrecognized"))


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--config examples/sweep_grid.toml" in out
    assert "--executor" in out and "--csv" in out
