"""Ctrl-C during a long pass (issue 10, item 4): a real SIGINT sent to a child process in
the middle of a forward or backward pass must raise KeyboardInterrupt at once (it used to
wait for the whole pass: seconds), leaving the model usable: an interrupted forward keeps
nothing (backward says so; batch-norm running statistics unchanged), an interrupted
backward leaves gradients the optimisers refuse, and the next passes give exactly what an
uninterrupted model gives.

Each child builds a model whose passes take seconds (float64, about 0.5 GB), reports
when it enters a call; the parent waits a moment, sends SIGINT and measures how long the
child took to catch KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

LATENCY = 1.0  # s allowed from SIGINT to KeyboardInterrupt (about 0.2 s on an idle machine)
DELAY = 0.3    # s between the child entering a call and the signal (less for short calls)

COMMON = textwrap.dedent("""
    import sys, time
    import numpy as np
    import gradchain as gc

    def enter(what, expected):
        print("enter", what, expected, flush=True)

    def timed(fn):
        t = time.monotonic()
        fn()
        return time.monotonic() - t

    def interrupted_call(what, fn, expected=10.0):
        enter(what, expected)  # expected: about how long the call would take
        t = time.monotonic()
        try:
            fn()
        except KeyboardInterrupt:
            print("caught", time.monotonic(), flush=True)
            return
        print("completed", time.monotonic() - t, flush=True)  # the parent fails the test
        sys.exit(3)

    def expect(exc, fn, *words):
        try:
            fn()
        except exc as e:
            for w in words:
                assert w in str(e), (w, str(e))
            return
        raise AssertionError(f"no {exc.__name__}")

    def same(a, b):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
""")

MLP = COMMON + textwrap.dedent("""
    rng = np.random.default_rng(0)
    W, B, DEPTH = 1024, 1024, 10  # forward about 2.5 s, backward 4 s on a loaded 2-core machine
    m = gc.MLP([W] * (DEPTH + 1) + [W], activation="tanh", norm="batch", dtype=np.float64,
               seed=0)
    opt = gc.optim.SGD(m, lr=0.1)
    x = rng.standard_normal((B, W))
    g = rng.standard_normal((B, W)) / B
    xs, gs = x[:64].copy(), g[:64].copy()
    fwd = 8 * timed(lambda: m.forward(x[: B // 8]))  # (before the statistics are saved)

    def small_run():
        y = m.forward(xs)
        rep = m.backward(gs)
        return [y, m.input_grad] + [a.copy() for a in m.grads()] + [rep.activation_grad_norms]

    ref = small_run()
    stats = m.state_dict(copy=True)

    interrupted_call("forward", lambda: m.forward(x), fwd)
    expect(gc.StateError, lambda: m.backward(g), "interrupted forward()")
    after = m.state_dict(copy=True)
    assert all(same(stats[k], after[k]) for k in stats), "running statistics were committed"
    got = small_run()
    assert all(same(a, b) for a, b in zip(ref, got)), "the model changed"

    m.forward(x)  # completes
    interrupted_call("backward", lambda: m.backward(g), 2 * fwd)
    expect(gc.StateError, opt.step, "interrupted", "partial")
    got = small_run()
    assert all(same(a, b) for a, b in zip(ref, got)), "the model changed"
    opt.step()  # a complete backward: accepted
    print("OK", flush=True)
""")

RNN = COMMON + textwrap.dedent("""
    rng = np.random.default_rng(0)
    H, T, B, I = 2048, 80, 32, 64  # forward about 2.5 s, backward 3.5 s (loaded 2 cores)
    m = gc.RNN(I, H, output_size=8, init="orthogonal", dtype=np.float64, seed=0)
    opt = gc.optim.Adam(m, lr=1e-3)
    x = rng.standard_normal((T, B, I))
    gh = rng.standard_normal((T, B, H)) / B
    xs, ghs = x[:10, :4].copy(), gh[:10, :4].copy()

    def small_run():
        hs = m.forward(xs)
        rep = m.backward(ghs)
        return ([hs, m.outputs, m.input_grad, m.h0_grad] + [a.copy() for a in m.grads()]
                + [rep.timestep_grad_norms])

    ref = small_run()
    fwd = 8 * timed(lambda: m.forward(x[: T // 8]))
    interrupted_call("forward", lambda: m.forward(x), fwd)
    expect(gc.StateError, lambda: m.backward(gh), "interrupted forward()")
    got = small_run()
    assert all(same(a, b) for a, b in zip(ref, got)), "the model changed"

    m.forward(x)  # completes
    interrupted_call("backward", lambda: m.backward(gh), 1.5 * fwd)
    expect(gc.StateError, opt.step, "interrupted", "partial")
    got = small_run()
    assert all(same(a, b) for a, b in zip(ref, got)), "the model changed"
    opt.step()
    print("OK", flush=True)
""")


def drive(code: str) -> dict[str, float]:
    """Run the child; SIGINT it DELAY s after each "enter"; return the latencies."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    latencies: dict[str, float] = {}
    lines: list[str] = []
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as p:
        watchdog = threading.Timer(180, p.kill)  # a hung child fails the test, never hangs it
        watchdog.start()
        try:
            assert p.stdout is not None and p.stderr is not None
            pending: str | None = None
            sent = 0.0
            for line in p.stdout:
                lines.append(line)
                word, _, rest = line.strip().partition(" ")
                if word == "enter":  # "enter <call> <expected seconds>"
                    pending, expected = rest.split()
                    time.sleep(min(DELAY, float(expected) / 4))  # a fast machine too
                    sent = time.monotonic()
                    os.kill(p.pid, signal.SIGINT)
                elif word == "caught":
                    assert pending is not None, lines
                    latencies[pending] = late = float(rest) - sent
                    assert late < LATENCY, (f"{pending}: KeyboardInterrupt {late:.2f} s after "
                                            f"SIGINT (allowed {LATENCY} s)")
                    pending = None
                elif word == "completed":
                    pytest.fail(f"{pending} completed ({rest} s) before SIGINT could stop it")
            err = p.stderr.read()
            p.wait(timeout=60)
        finally:
            watchdog.cancel()
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0, f"rc {p.returncode}\n{''.join(lines)}\n{err[-3000:]}"
    assert lines and lines[-1].strip() == "OK", "".join(lines)
    return latencies


@pytest.mark.parametrize("model", ["mlp", "rnn"])
def test_sigint_interrupts_forward_and_backward(model):
    latencies = drive(MLP if model == "mlp" else RNN)  # checks each latency
    assert set(latencies) == {"forward", "backward"}, latencies
    print(model, {k: round(v, 3) for k, v in latencies.items()})


def test_sigint_in_a_custom_activation_pass():
    # the callback runs Python: the default handler raises KeyboardInterrupt inside it, and
    # the error leaves the pass as any callback error does
    code = COMMON + textwrap.dedent("""
        def f(z):
            time.sleep(0.002)
            return np.tanh(z)

        act = gc.Activation.custom(f, lambda z: 1 - np.tanh(z) ** 2)
        m = gc.RNN(4, 16, activation=act, seed=0)
        x = np.ones((3000, 2, 4), np.float32)   # 3000 callbacks: 6 s or more
        interrupted_call("forward", lambda: m.forward(x))
        expect(gc.StateError, lambda: m.backward(np.ones((3000, 2, 16), np.float32)),
               "interrupted forward()")
        small = m.forward(x[:5])
        assert small.shape == (5, 2, 16)
        print("OK", flush=True)
    """)
    assert set(drive(code)) == {"forward"}


def test_no_interrupt_from_other_threads_or_custom_handlers():
    # KeyboardInterrupt belongs to the main thread: a pass on another thread runs to its
    # end; with the user's own SIGINT handler a pass runs to its end and the handler runs
    # after it (as before). Then the default handler is back and interrupts again.
    code = COMMON + textwrap.dedent("""
        import os, signal, threading
        m = gc.MLP([1024] * 5, dtype=np.float64, seed=0)  # a forward takes about 1 s
        x = np.random.default_rng(0).standard_normal((1024, 1024))
        y_ref = m.forward(x)
        # a pass on a worker thread, SIGINT while it runs: the main thread gets the
        # KeyboardInterrupt, the worker's pass completes with the right numbers
        out = {}
        t = threading.Thread(target=lambda: out.update(y=m.forward(x)))
        t.start()
        time.sleep(0.2)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            t.join()
            time.sleep(0.1)
        except KeyboardInterrupt:
            t.join()
        assert same(out["y"], y_ref)
        # the user's own handler: the pass is not cancelled
        hits = []
        old = signal.signal(signal.SIGINT, lambda *a: hits.append(1))
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        y = m.forward(x)
        time.sleep(0.1)
        assert same(y, y_ref) and hits == [1], hits
        signal.signal(signal.SIGINT, old)
        print("OK", flush=True)
    """)
    drive(code)


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_sigint_stops_a_sweep(executor):
    # the Python-level loops: a sweep on a thread pool used to wait for the runs in
    # progress (passes on worker threads run to their end) before raising
    code = COMMON + textwrap.dedent(f"""
        grid = {{"activation": ["tanh", "relu", "sigmoid", "gelu"], "depth": [128, 256]}}
        interrupted_call("sweep", lambda: gc.sweep(
            grid, width=256, batch=256, dtype="float64", executor={executor!r},
            max_workers=2, progress=False, as_frame=False))
        print("OK", flush=True)
    """)
    assert set(drive(code)) == {"sweep"}
