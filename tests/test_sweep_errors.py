"""gc.sweep's own errors (issue 10, items 7, 9, 12): sizes too large to count, a script
without the ``if __name__ == "__main__":`` guard, and what ``data="digits"`` implies."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from gradchain import sweeps


def test_a_huge_depth_is_a_memory_error_with_a_message():
    with pytest.raises(MemoryError, match=r"weights cannot be allocated \(width=128, "
                                          r"depth=1000000000"):
        sweeps.configurations({}, depth=10**9)


# ------------------------------------------- a script without the __main__ guard (item 9)
UNGUARDED = """\
import gradchain as gc
{setup}
print("script body runs")
res = gc.sweep({{"depth": [2, 3]}}, width=8, batch=4, progress=False, as_frame=False{extra})
print("done", len(res))
"""

GUARDED = """\
import gradchain as gc
{setup}

def main():
    res = gc.sweep({{"depth": [2, 3]}}, width=8, batch=4, progress=False, as_frame=False{extra})
    print("done", len(res))


if __name__ == "__main__":
    main()
"""

SPAWN_POOL = ("import concurrent.futures as cf\nimport multiprocessing as mp\n"
              "pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context({method!r}))")


def _script(tmp_path, template: str, method: str | None) -> subprocess.CompletedProcess:
    setup = "" if method is None else SPAWN_POOL.format(method=method)
    extra = "" if method is None else ", executor=pool"
    path = tmp_path / "script.py"
    path.write_text(template.format(setup=setup, extra=extra), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, path.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_a_script_without_the_guard_is_told_at_once(tmp_path, method):
    if method is not None and method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    t0 = time.perf_counter()
    out = _script(tmp_path, UNGUARDED, method)
    assert out.returncode == 1
    assert out.stdout == "script body runs\n"  # once: no worker process re-ran it
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: gc.sweep: the worker processes"), out.stderr
    assert 'under `if __name__ == "__main__":`' in last
    assert f"{tmp_path / 'script.py'}, whose line" in last
    assert "BrokenProcessPool" not in out.stderr and "bootstrapping" not in out.stderr
    assert time.perf_counter() - t0 < 60


@pytest.mark.parametrize("method", [None, "spawn"])
def test_a_guarded_script_sweeps_on_processes(tmp_path, method):
    out = _script(tmp_path, GUARDED, method)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "done 2"


def test_in_process_executors_need_no_guard(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(UNGUARDED.format(setup="", extra=', executor="threads"'), encoding="utf-8")
    out = subprocess.run([sys.executable, path.name], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "script body runs\ndone 2\n"


# -------------------------------------------- what the training data implies (item 12)
def test_digits_imply_64_inputs_10_classes_and_cross_entropy():
    (cfg,) = sweeps.configurations({}, train={"data": "digits"}, depth=2, width=16)
    assert (cfg["in_features"], cfg["out_features"], cfg["loss"]) == (64, 10, "cross_entropy")
    assert cfg["width"] == 16  # the hidden width is the user's
    (same,) = sweeps.configurations({}, train={"data": "digits"}, depth=2, width=16,
                                    in_features=64, out_features=10, loss="cross_entropy")
    assert same == cfg  # explicit agreeing values: the same configuration
    # without training nothing is implied
    (probe,) = sweeps.configurations({}, depth=2, width=16)
    assert (probe["in_features"], probe["loss"]) == (16, "mse")


@pytest.mark.parametrize("explicit, word", [
    ({"in_features": 32}, "in_features=32"),
    ({"out_features": 5}, "out_features=5"),
    ({"loss": "mse"}, "loss='mse'"),
])
def test_digits_with_a_contradicting_explicit_value_is_an_error(explicit, word):
    with pytest.raises(ValueError, match=r"data='digits' needs in_features=64.*implied") as e:
        sweeps.configurations({}, train={"data": "digits"}, **explicit)
    assert word in str(e.value)


def test_the_adding_problem_implies_two_inputs_and_one_output():
    (cfg,) = sweeps.configurations({}, model="rnn", train={}, hidden_size=8)
    assert (cfg["input_size"], cfg["output_size"]) == (2, 1)
    with pytest.raises(ValueError, match="input_size=2"):
        sweeps.configurations({}, model="rnn", train={}, input_size=3)


def test_sweep_trains_on_digits_without_the_implied_flags(capsys):
    pytest.importorskip("sklearn")
    from gradchain import cli

    assert cli.main(["sweep", "--data", "digits", "--epochs", "1", "--optimizer", "adam",
                     "--lr", "0.01", "--depth", "2", "--width", "16", "--batch", "8",
                     "--executor", "serial", "--json", "--quiet"]) == 0
    import json

    (rec,) = json.loads(capsys.readouterr().out)
    assert (rec["in_features"], rec["out_features"], rec["loss"]) == (64, 10, "cross_entropy")
    assert rec["train_data"] == "digits" and rec["val_accuracy"] > 0.5
