"""fork after threaded passes (issue 10, item 1): libgomp's thread pool does not survive
fork, so a child that ran a region on more than one thread waited for ever. Each scenario
runs in its own process session with a timeout: a hung child is killed (with its whole
process group) and the test fails instead of hanging the suite. Results in the child must
equal the parent's bitwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

TIMEOUT = 90  # seconds for a whole scenario; each takes 1-3 s when nothing hangs

# Models big enough that every region runs on 2 threads (threads_for: >= 8192 elements).
COMMON = textwrap.dedent("""
    import os, pickle, select, signal, sys
    import numpy as np
    import gradchain as gc

    def run_models():
        out = {}
        rng = np.random.default_rng(0)
        m = gc.MLP([64] * 6 + [10], activation="tanh", norm="batch", seed=1)
        x = rng.standard_normal((128, 64)).astype(np.float32)
        y = m.forward(x)
        rep = m.backward(np.ones_like(y))
        out["mlp"] = (y, m.input_grad, [g.copy() for g in m.grads()],
                      list(rep.activation_grad_norms), [b.copy() for _, b in m.named_buffers()])
        r = gc.RNN(16, 96, output_size=4, seed=2, dtype=np.float64)
        xs = rng.standard_normal((20, 24, 16))
        hs = r.forward(xs)
        rrep = r.backward(np.ones_like(hs), np.ones((20, 24, 4)))
        out["rnn"] = (hs, r.outputs, r.input_grad, [g.copy() for g in r.grads()],
                      list(rrep.timestep_grad_norms))
        return out

    def same(a, b):
        # bitwise equality of nested dicts / lists / tuples of arrays and numbers
        if isinstance(a, np.ndarray):
            return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                    and a.tobytes() == b.tobytes())
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k])
                                                                        for k in a)
        if isinstance(a, (list, tuple)):
            return (type(a) is type(b) and len(a) == len(b)
                    and all(same(u, v) for u, v in zip(a, b)))
        return repr(a) == repr(b)
""")


def run_script(body: str) -> str:
    """Run COMMON + body in a new session; kill the whole group on timeout."""
    code = COMMON + textwrap.dedent(body)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the script and every child it forked
        out, err = p.communicate()
        pytest.fail(f"hung for {TIMEOUT} s (killed): a forked child waited for ever\n"
                    f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    assert p.returncode == 0, f"rc {p.returncode}\nstdout: {out[-2000:]}\nstderr: {err[-3000:]}"
    return out


def test_os_fork_child_after_threaded_passes():
    out = run_script("""
        gc.set_num_threads(2)
        parent = run_models()          # starts libgomp's pool in this process
        assert gc.get_num_threads() == 2 and not gc._core.forked_single_threaded()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                   # the child: no gradchain call may hang here
            code = 1
            try:
                os.close(r)
                info = (gc.get_num_threads(), gc._core.forked_single_threaded())
                gc.set_num_threads(2)  # accepted; cannot start threads in this process
                info += (gc.get_num_threads(),)
                res = run_models()
                os.write(w, pickle.dumps((info, res)))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        data = b""
        while True:
            ready, _, _ = select.select([r], [], [], 60)
            if not ready:              # the parent kills a hung child and fails
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                sys.exit("the forked child hung")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            data += chunk
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        info, child = pickle.loads(data)
        assert info == (1, True, 1), info
        assert same(child, parent), "the child's results differ from the parent's"
        assert same(run_models(), parent)  # the parent keeps its threads
        assert gc.get_num_threads() == 2
        print("OK")
    """)
    assert "OK" in out


def test_fork_before_any_threaded_pass_keeps_threads():
    # libgomp's pool starts with the first region on more than one thread: a child forked
    # before that may use threads (the forkserver case: gradchain imported, nothing run)
    out = run_script("""
        gc.set_num_threads(2)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert gc.get_num_threads() == 2 and not gc._core.forked_single_threaded()
                run_models()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("OK")
    """)
    assert "OK" in out


def test_multiprocessing_fork_pool():
    out = run_script("""
        import multiprocessing as mp

        def task(threads):
            gc.set_num_threads(threads)
            return gc.get_num_threads(), run_models()

        if __name__ == "__main__":
            gc.set_num_threads(2)
            parent = run_models()
            with mp.get_context("fork").Pool(2) as pool:
                try:
                    results = pool.map_async(task, [1, 2, 2]).get(timeout=60)
                except mp.TimeoutError:
                    pool.terminate()
                    sys.exit("a fork-pool worker hung")
            for n, res in results:
                assert n == 1, n
                assert same(res, parent), "a worker's results differ from the parent's"
            print("OK")
    """)
    assert "OK" in out


def test_sweep_on_a_fork_process_pool():
    # gc.sweep(executor=ProcessPoolExecutor(), threads=2): Linux's default start method
    # before Python 3.14 is fork (named here so the test means the same on every version)
    out = run_script("""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if __name__ == "__main__":
            grid = {"activation": ["tanh", "relu"], "norm": [None, "batch"]}
            fixed = dict(depth=4, width=64, batch=64, progress=False, as_frame=False)
            serial = gc.sweep(grid, executor="serial", threads=2, **fixed)  # threads start
            with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as ex:
                pooled = gc.sweep(grid, executor=ex, threads=2, **fixed)
            assert repr(pooled) == repr(serial), "the pool's records differ from serial's"
            rnn = gc.sweep({"activation": ["tanh"]}, model="rnn", hidden_size=64, steps=20,
                           batch=32, executor="serial", threads=2, progress=False,
                           as_frame=False)
            with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("fork")) as ex:
                assert repr(gc.sweep({"activation": ["tanh"]}, model="rnn", hidden_size=64,
                                     steps=20, batch=32, executor=ex, threads=2,
                                     progress=False, as_frame=False)) == repr(rnn)
            print("OK")
    """)
    assert "OK" in out
