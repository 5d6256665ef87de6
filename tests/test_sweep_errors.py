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
