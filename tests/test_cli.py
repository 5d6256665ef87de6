"""The command line: demo, probe, --help and bad flags."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gradchain as gc
from gradchain import cli, demo


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradchain", *args], capture_output=True,
                          text=True)


def test_demo_shows_vanishing_and_fixes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default figure lands in the working directory
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


# ------------------------------------------------------------------ demo: figure, quiet
SMALL = ["--depth", "6", "--width", "16", "--batch", "8", "--steps", "12"]


def is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_writes_the_figure(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg

    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", *SMALL]) == 0
    cap = capsys.readouterr()
    default = tmp_path / "gradchain_demo.png"
    assert is_png(default)
    assert "figure written to gradchain_demo.png" in cap.out
    img = mpimg.imread(default)
    assert img.shape[1] > 2 * img.shape[0] > 300 and float(img[..., :3].var()) > 0
    n_runs = len(demo.mlp_cases()) + len(demo.rnn_cases())
    assert "gradchain demo:   0%|" in cap.err and f"0/{n_runs}" in cap.err  # the progress bar

    other = tmp_path / "sub" / "fig.png"
    other.parent.mkdir()
    assert cli.main(["demo", *SMALL, "--png", str(other)]) == 0
    assert is_png(other) and str(other) in capsys.readouterr().out


def test_demo_no_png(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", *SMALL, "--no-png"]) == 0
    out = capsys.readouterr().out
    assert "||dL/da_l||" in out and "figure" not in out
    assert list(tmp_path.iterdir()) == []


def test_demo_quiet_prints_the_tables_only(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", *SMALL, "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""  # no progress bar
    mlp = demo.mlp_table(demo.run_mlp(depth=6, width=16, batch=8))
    rnn = demo.rnn_table(demo.run_rnn(T=12, batch=8, hidden=8))
    assert cap.out == mlp + "\n\n" + rnn + "\n"
    assert is_png(tmp_path / "gradchain_demo.png")  # still written, silently


def test_demo_json_writes_no_figure_unless_asked(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", *SMALL, "--json", "-q"]) == 0
    json.loads(capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["demo", *SMALL, "--json", "--png", "f.png"]) == 0
    cap = capsys.readouterr()
    json.loads(cap.out)  # stdout stays pure JSON; the note goes to stderr
    assert "figure written to f.png" in cap.err and is_png(tmp_path / "f.png")


def test_demo_without_matplotlib_notes_and_exits_0(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["demo", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "||dL/da_l||" in out and "||dL/dh_t||" in out
    notes = [ln for ln in out.splitlines() if "matplotlib" in ln]
    assert len(notes) == 1 and "no figure written" in notes[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, match", [
    (["--png", "{tmp}/missing/x.png"], "--png: folder"),
    (["--png", "{tmp}"], "--png: expected a file name"),
    (["--steps", "1"], "--steps: expected an int >= 2, got 1"),
])
def test_demo_bad_values_exit_2(args, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["demo", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_demo_png_and_no_png_conflict():
    out = run("demo", "--png", "x.png", "--no-png")
    assert out.returncode == 2 and "not allowed with" in out.stderr


# ------------------------------------------------------------------ probe: rnn, files, quiet
def probe_rnn_reference(steps: int, hidden: int, batch: int, seed: int = 0, **kw):
    x, y = gc.tasks.adding_problem(steps, batch, seed=seed)
    model = gc.RNN(2, hidden, output_size=1, seed=seed, **kw)
    return model, model.loss_and_grad(x, y, loss="mse", on="last")[1]


def test_probe_rnn_json_out_and_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main(["probe", "--model", "rnn", "--steps", "30", "--hidden", "12", "--batch",
                     "4", "--init", "orthogonal", "--json-out", str(js),
                     "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("RNN(") and "||dL/dh_t||" in out
    assert f"report written to {js}" in out and f"figure written to {png}" in out
    data = json.loads(js.read_text())
    model, rep = probe_rnn_reference(30, 12, 4, init="orthogonal")
    assert data["model"] == json.loads(json.dumps(model.config()))
    np.testing.assert_allclose(data["report"]["timestep_grad_norms"],
                               rep.timestep_grad_norms, rtol=1e-6)
    assert data["report"]["global_norm"] == pytest.approx(rep.global_norm, rel=1e-6)
    assert is_png(png)


def test_probe_rnn_sigma_w_and_activation(capsys):
    assert cli.main(["probe", "--model", "rnn", "--steps", "20", "--hidden", "8", "--batch",
                     "3", "--activation", "relu", "--sigma-w", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    _, rep = probe_rnn_reference(20, 8, 3, activation="relu", init=gc.init.normal(0.5))
    assert data["model"]["init"]["name"] == "normal"
    np.testing.assert_allclose(data["report"]["timestep_grad_norms"],
                               rep.timestep_grad_norms, rtol=1e-6)


def test_probe_mlp_json_out_matches_stdout_json(capsys, tmp_path):
    js = tmp_path / "m.json"
    assert cli.main(["probe", "--depth", "4", "--width", "8", "--json",
                     "--json-out", str(js)]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out) == json.loads(js.read_text())
    assert "report written" in cap.err  # stdout stays pure JSON


def test_probe_mlp_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg

    png = tmp_path / "m.png"
    assert cli.main(["probe", "--depth", "5", "--width", "8", "--png", str(png)]) == 0
    img = mpimg.imread(png)
    assert 200 < img.shape[1] < 1000 and 150 < img.shape[0] < 600
    assert float(img[..., :3].var()) > 0


def test_probe_quiet(capsys, tmp_path):
    js = tmp_path / "q.json"
    assert cli.main(["probe", "--depth", "3", "--width", "8", "--quiet",
                     "--json-out", str(js)]) == 0
    cap = capsys.readouterr()
    rng = np.random.default_rng(0)
    model = gc.MLP([8] * 4 + [10], seed=0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    t = rng.normal(size=(64, 10)).astype(np.float32)
    _, rep = model.loss_and_grad(x, t, loss="mse")
    assert cap.out == rep.table() + "\n" and cap.err == ""
    assert js.exists()


@pytest.mark.parametrize("args, match", [
    (["--model", "rnn", "--depth", "3"], "--depth applies to --model mlp only"),
    (["--model", "rnn", "--norm", "batch"], "--norm applies to --model mlp only"),
    (["--steps", "5"], "--steps applies to --model rnn or lstm or gru only"),
    (["--hidden", "5"], "--hidden applies to --model rnn or lstm or gru only"),
    (["--model", "rnn", "--steps", "1"], "--steps: expected an int >= 2, got 1"),
    (["--model", "rnn", "--hidden", "0"], "--hidden: expected an int >= 1, got 0"),
    (["--depth", "0"], "--depth: expected an int >= 1, got 0"),
    (["--batch", "-3"], "--batch: expected an int >= 1, got -3"),
    (["--residual", "0"], "--residual: expected an int >= 1, got 0"),
    (["--model", "rnn", "--init", "nope"], "nope"),
    (["--model", "rnn", "--activation", "swoosh"], "swoosh"),
    (["--sigma-w", "nan"], "sigma_w"),
    (["--png", "{tmp}/missing/x.png"], "--png: folder"),
    (["--json-out", "{tmp}/missing/x.json"], "--json-out: folder"),
    (["--json-out", "{tmp}"], "--json-out: expected a file name"),
])
def test_probe_bad_values_exit_2(args, match, capsys, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    small = [] if "--batch" in args else ["--batch", "2"]
    assert cli.main(["probe", *small, *args]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""  # nothing ran
    assert match in cap.err and cap.err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--model", "transformer"], ["--steps", "x"], ["--json-out"]])
def test_probe_bad_flags_exit_2(args):
    out = run("probe", *args)
    assert out.returncode == 2 and "error" in out.stderr and out.stdout == ""


def test_probe_png_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "x.png"
    assert cli.main(["probe", "--depth", "2", "--width", "4", "--png", str(png)]) == 2
    err = capsys.readouterr().err
    assert "--png needs matplotlib" in err and err.strip().count("\n") == 0
    assert not png.exists()


@pytest.mark.parametrize("argv, prog", [
    (["sweep", "--nope"], "gradchain sweep"),
    (["demo", "--depth", "x"], "gradchain demo"),
    (["demo", "--depth", "0"], "gradchain demo"),
    (["probe", "--norm", "group"], "gradchain probe"),
    (["bogus"], "gradchain"),
    ([], "gradchain"),
])
def test_bad_flags_give_one_line_and_exit_code_2(argv, prog, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
