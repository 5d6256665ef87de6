"""An absurd thread count (issue 10, item 3): ``gc.set_num_threads(10**6)`` used to be
accepted and fail later (``std::bad_alloc`` for the per-thread buffers, or libgomp's
``exit(1)`` when thread creation fails); ``OMP_NUM_THREADS=100000`` at import the same.
The limit is 4 threads per processor, never below 16."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradchain as gc


def processors() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_the_limit_is_documented_and_follows_the_processors():
    cap = gc._core.max_num_threads()
    assert cap == max(16, 4 * processors())
    assert "4 * processors" in gc.set_num_threads.__doc__


@pytest.mark.parametrize("n", [10**6, 2**31 - 1, "cap+1"])
def test_absurd_counts_are_a_value_error(n, restore_threads):
    cap = gc._core.max_num_threads()
    n = cap + 1 if n == "cap+1" else n
    before = gc.get_num_threads()
    with pytest.raises(ValueError) as info:
        gc.set_num_threads(n)
    msg = str(info.value)
    assert msg.startswith("n: ") and f"[1, {cap}]" in msg and str(n) in msg, msg
    assert gc.get_num_threads() == before, "a rejected count changed the setting"
    with pytest.raises(ValueError, match=f"got {n}"):  # the core refuses it too
        gc._core.set_num_threads(n)
    assert gc.get_num_threads() == before


def test_the_limit_itself_is_accepted(restore_threads):
    cap = gc._core.max_num_threads()
    gc.set_num_threads(cap)
    assert gc.get_num_threads() == cap
    m = gc.MLP([64, 64, 4], seed=0)  # a pass with that many threads runs
    y = m.forward(np.ones((256, 64), np.float32))
    gc.set_num_threads(1)
    assert np.array_equal(y, m.forward(np.ones((256, 64), np.float32)))


@pytest.mark.parametrize("value", ["100000", "99999999999", "100000,2"])
def test_absurd_omp_num_threads_warns_and_falls_back(value):
    code = ("import warnings, numpy as np\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import gradchain as gc\n"
            "print([str(x.message) for x in w if x.category is RuntimeWarning])\n"
            "print(gc.get_num_threads())\n"
            "m = gc.MLP([64, 64, 4], seed=0)\n"
            "print(m.forward(np.ones((256, 64), np.float32)).shape)\n")
    env = dict(os.environ, OMP_NUM_THREADS=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    warned, n, shape = out.stdout.strip().splitlines()
    first = value.split(",")[0]
    assert f"OMP_NUM_THREADS={first} is more than gradchain's limit" in warned, warned
    assert int(n) == min(processors(), gc._core.max_num_threads())
    assert shape == "(256, 4)"


def test_sane_omp_num_threads_is_kept_without_warning():
    code = "import gradchain as gc; print(gc.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "3"
