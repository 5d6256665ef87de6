"""The benchmark under load and across thread counts (issue 12, item 2): ``--contended N``
starts N busy-loop competitors and always stops them (checked by PID: none survives, none is
left unreaped), ``--threads 1 2 ...`` times every controlled peer at each count and
gradchain's default in one run, the summary compares them, and the optional small models
exist. Timings are never asserted; every run here is ``--quick`` with tiny repeats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradchain as gc
from gradchain import bench
from gradchain.bench import contention, timing

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="checks the competitors through /proc")

ROOT = Path(__file__).resolve().parents[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent PID) of ``pid``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _is_competitor(pid: int) -> bool:
    """A live busy loop of ours (or a zombie left unreaped) under this PID."""
    st = _stat(pid)
    if st is None:
        return False
    if st[0] == "Z":  # not reaped: still counts as left behind
        return st[1] == os.getpid()
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"getppid" in cmd and b"prctl" in cmd


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_is_competitor(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[contention.Competitors]:
    """Every :class:`Competitors` started during the test."""
    seen: list[contention.Competitors] = []
    original = contention.Competitors.start

    def start(self: contention.Competitors) -> contention.Competitors:
        seen.append(self)
        return original(self)

    monkeypatch.setattr(contention.Competitors, "start", start)
    return seen


def _quick(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"repeats": 2, "warmup": 1, "quick": True, "ceiling": False}
    args.update(kw)
    return bench.run(**args)


# ---- the competitors


def test_competitors_spin_and_are_reaped() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with bench.Competitors(2) as c:
        pids = c.pids
        assert len(pids) == 2 and len(set(pids)) == 2
        for pid in pids:
            assert _is_competitor(pid)
            st = _stat(pid)
            assert st is not None and st[1] == os.getpid() and st[0] != "Z"
            assert (contention._cpu_seconds(pid) or 0) > 0  # running, not just started
        assert signal.getsignal(signal.SIGTERM) is contention._on_signal  # the guard is on
        time.sleep(0.2)
        assert c.running
    assert not c.running and all(p.returncode is not None for p in c._procs)
    assert not any(_is_competitor(p) for p in pids)
    assert signal.getsignal(signal.SIGTERM) == before  # and off again
    load = c.load()
    assert load["competitors"] == 2 and load["pids"] == pids
    assert load["cores"] is not None and load["cores"] > 0
    assert c.stop() == load  # idempotent
    assert contention._live == []


def test_zero_competitors_and_bad_counts() -> None:
    with bench.Competitors(0) as c:
        assert c.pids == [] and not c.running
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            bench.Competitors(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contended"):
        _quick(workloads=["mlp-small"], peers=[], contended=-1)


def test_a_competitor_that_dies_before_it_spins_is_an_error() -> None:
    def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], **kw)

    c = bench.Competitors(2, spawn=spawn)
    with pytest.raises(RuntimeError, match="exited with status 3"):
        c.start()
    assert all(p.returncode is not None for p in c._procs) and contention._live == []


class _Failing:
    """The NumPy peer, raising ``exc`` at its ``fail_at``-th step (set-up and warm-up pass)."""

    def __init__(self, case: bench.Case, exc: BaseException, fail_at: int) -> None:
        self.inner = bench.BUILDERS[case.workload.kind]["numpy"](case)
        self.exc, self.fail_at, self.calls = exc, fail_at, 0

    def step(self) -> None:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise self.exc
        self.inner.step()

    def outputs(self) -> bench.Outputs:
        return self.inner.outputs()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_competitors_stopped_when_a_peer_raises(monkeypatch: pytest.MonkeyPatch,
                                                started: list[contention.Competitors],
                                                exc: BaseException) -> None:
    monkeypatch.setitem(bench.PEERS, "failing", bench.PeerInfo("failing", "fails while timed"))
    for kind in bench.BUILDERS:
        monkeypatch.setitem(bench.BUILDERS[kind], "failing", lambda c: _Failing(c, exc, 3))
    threads = gc.get_num_threads()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(type(exc)):
        _quick(workloads=["mlp-small"], peers=["failing"], threads=[1, 2], contended=2,
               repeats=5)
    (c,) = started
    assert len(c.pids) == 2
    assert all(p.returncode is not None for p in c._procs)  # reaped
    assert not any(_is_competitor(p) for p in c.pids)
    assert signal.getsignal(signal.SIGTERM) == before
    assert gc.get_num_threads() == threads  # the sweep's settings are undone too


class _Drops:
    """Delivers ``sig`` to this process from inside its ``__del__``: the handler's exception
    is raised there, and Python drops it ("Exception ignored in ..."), as it does in a
    garbage-collector callback such as JAX's."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)
        for _ in range(1000):  # the handler runs between these bytecodes
            time.sleep(0.001)


class _DroppingPeer(_Failing):
    """The NumPy peer, dropping a SIGINT / SIGTERM at its ``fail_at``-th step and going on."""

    def step(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            _Drops(self.exc.args[0])  # noqa: B018 -- dropped at once: __del__ runs here
        self.inner.step()


def _exit_as_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@pytest.fixture
def default_signals():
    """SIGINT raising KeyboardInterrupt, as in a shell; SIGTERM exiting as its default action
    would, but as an exception (a stray SIGTERM must not kill the test process)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_as_sigterm)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
def test_a_dropped_interrupt_is_raised_again(default_signals) -> None:
    with contention.interrupt_guard():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        contention.check_interrupt()  # nothing pending: nothing happens
        _Drops(signal.SIGINT)  # the KeyboardInterrupt is dropped with __del__'s frame
        with pytest.raises(KeyboardInterrupt):
            contention.check_interrupt()
        contention.check_interrupt()  # raised once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    contention.check_interrupt()  # outside the guard: nothing remembered


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_ends_when_a_signal_s_exception_is_dropped(monkeypatch: pytest.MonkeyPatch,
                                                          started: list[contention.Competitors],
                                                          default_signals, sig: int) -> None:
    """A run of 100000 rounds with competitors, whose peer has a SIGINT / SIGTERM dropped
    at its 5th step, ends at the next round (the competitors stopped, the signal handlers
    restored): the bench's Ctrl-C works even when a gc callback swallowed it."""
    monkeypatch.setitem(bench.PEERS, "dropping", bench.PeerInfo("dropping", "drops a signal"))
    for kind in bench.BUILDERS:
        monkeypatch.setitem(bench.BUILDERS[kind], "dropping",
                            lambda c: _DroppingPeer(c, RuntimeError(sig), 5))
    expected = KeyboardInterrupt if sig == signal.SIGINT else SystemExit
    t0 = time.monotonic()
    with pytest.raises(expected) as info:
        _quick(workloads=["mlp-small"], peers=["dropping"], contended=2, repeats=100000)
    assert time.monotonic() - t0 < 600  # not the 100000 rounds (never a timing claim)
    if sig == signal.SIGTERM:
        assert info.value.code == 128 + signal.SIGTERM
    (c,) = started
    assert not any(_is_competitor(p) for p in c.pids)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is _exit_as_sigterm


def _start_bench(*extra: str) -> tuple[subprocess.Popen[str], list[int]]:
    """``python -m gradchain.bench`` with 2 competitors and far too many repeats; returns
    once its competitors run, with their PIDs (from its log)."""
    env = {k: v for k, v in os.environ.items() if k not in bench._OPENBLAS_ENV}
    # SIGINT and SIGTERM as in an interactive shell, whatever this process inherited
    boot = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
            "runpy.run_module('gradchain.bench', run_name='__main__', alter_sys=True)")
    p = subprocess.Popen(
        [sys.executable, "-c", boot, "--quick", "-w", "mlp-small", "-p",
         "gradchain", "--contended", "2", "-r", "100000", "--no-ceiling", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert p.stderr is not None
    log = []
    for line in p.stderr:
        log.append(line)
        if "competitors running: PIDs" in line:
            pids = [int(x) for x in line.split("PIDs", 1)[1].replace(",", " ").split()]
            assert len(pids) == 2 and all(_is_competitor(x) for x in pids)
            return p, pids
    p.wait(timeout=60)
    p.stderr.close()
    raise AssertionError("the benchmark ended before its competitors ran:\n" + "".join(log))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_competitors_stopped_when_the_benchmark_is_signalled(sig: int) -> None:
    p, pids = _start_bench("--threads", "1", "2")
    try:
        time.sleep(0.5)  # well into the set-up or the timing
        p.send_signal(sig)
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stderr is not None
        tail = p.stderr.read()[-3000:]  # what the benchmark said after its competitors ran
        p.stderr.close()
    # SIGTERM: the guard's exit status; SIGINT: KeyboardInterrupt, re-raised as SIGINT
    assert rc in ((128 + signal.SIGTERM,) if sig == signal.SIGTERM else (-signal.SIGINT, 130)), \
        f"exit status {rc}; the benchmark's stderr ended:\n{tail}"
    assert _gone(pids, timeout=5.0), "a competitor survived the benchmark"


def test_competitors_die_with_a_killed_benchmark() -> None:
    """SIGKILL leaves no handler to run: each competitor notices its parent is gone."""
    p, pids = _start_bench()
    p.kill()
    p.wait(timeout=60)
    assert p.stderr is not None
    p.stderr.close()
    assert _gone(pids, timeout=10.0), "a competitor outlived a SIGKILLed benchmark"


# ---- the thread sweep and the summary


def test_thread_sweep_rows_and_summary(started: list[contention.Competitors]) -> None:
    threads = gc.get_num_threads()
    res = _quick(workloads=["mlp-small", "rnn-small"], peers=["numpy"], threads=[1, 2],
                 contended=1)
    assert res["ok"] is True and gc.get_num_threads() == threads
    cfg = res["config"]
    assert cfg["thread_sweep"] == [1, 2] and cfg["contended"] == 1
    assert cfg["threads"] == threads == cfg["thread_defaults"]["gradchain"]
    (c,) = started
    assert res["contention"]["competitors"] == 1 and res["contention"]["pids"] == c.pids
    assert not any(_is_competitor(p) for p in c.pids)
    numpy_ctl = "numpy" in cfg["thread_control"]
    for w in res["workloads"]:
        rows = w["peers"]
        assert w["competitor_cores"] >= 0  # the competitors' share of the load
        assert {"gradchain", "gradchain@1", "gradchain@2"} <= set(rows)
        assert rows["gradchain"]["default"] and rows["gradchain"]["threads"] == threads
        assert rows["gradchain"]["status"] == "reference"
        for n in (1, 2):
            r = rows[f"gradchain@{n}"]
            assert r["threads"] == n and not r["default"] and r["status"] == "ok"
            assert r["bitwise_as_default"] is True  # determinism across counts
            assert len(r["times_s"]) == 2 and r["ratio_to"] == f"gradchain@{n}"
        if numpy_ctl:  # NumPy's default is its row at the count it started with
            d = cfg["thread_defaults"]["numpy"]
            assert rows["numpy"]["default"] and rows["numpy"]["threads"] == d
            assert {f"numpy@{n}" for n in (1, 2) if n != d} <= set(rows)
            assert all(r["status"] in ("ok", "reference") for r in rows.values())
        else:
            assert rows["numpy"]["label"].endswith("own threads")
    s = res["summary"]
    assert [r["workload"] for r in s["rows"]] == ["mlp-small", "rnn-small"]
    for r in s["rows"]:
        assert r["gradchain_default_ms"] > 0 and r["gradchain_1_thread_ms"] > 0
        assert r["default_over_1_thread"] == pytest.approx(
            r["gradchain_default_ms"] / r["gradchain_1_thread_ms"])
        assert r["torch_ms"] is None and r["gradchain_over_torch"] is None
        assert r["competitor_cores"] is not None
    assert s["load"]["competitors"] == 1 and s["acceptance"]["measured"] == 2
    text = bench.format_table(res)
    assert "summary under load: 1 busy-loop competitor process" in text
    assert "gradchain, default (" in text and "gradchain, 1 thread" in text
    assert "bitwise = default" in text
    json.dumps(res)


def test_one_thread_count_is_the_plain_run() -> None:
    res = _quick(workloads=["mlp-small"], peers=["numpy"], threads=1, repeats=1)
    cfg = res["config"]
    assert cfg["threads"] == 1 and cfg["thread_sweep"] is None and cfg["contended"] == 0
    rows = res["workloads"][0]["peers"]
    assert list(rows) == ["gradchain", "numpy"]
    assert rows["gradchain"]["threads"] == 1 and not rows["gradchain"]["default"]
    assert res["contention"] is None
    assert "summary under load" not in bench.format_table(res)
    # the same through a one-element list
    res2 = _quick(workloads=["mlp-small"], peers=[], threads=[1, 1], repeats=1)
    assert res2["config"]["thread_sweep"] is None and res2["config"]["threads"] == 1


def test_sweep_with_torch_sets_and_restores_its_threads() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    res = _quick(workloads=["mlp-small"], peers=["torch"], threads=[1, 2], repeats=1)
    assert torch.get_num_threads() == before
    rows = res["workloads"][0]["peers"]
    assert rows["torch"]["default"] and rows["torch"]["threads"] == before
    assert rows["torch"]["status"] == "ok"
    assert {f"torch@{n}" for n in (1, 2) if n != before} <= set(rows)
    r = res["summary"]["rows"][0]
    assert r["torch_ms"] > 0 and r["gradchain_over_torch"] == pytest.approx(
        r["gradchain_default_ms"] / r["torch_ms"])


def test_jax_runs_once_in_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer without thread control runs once, on its own threads."""
    monkeypatch.setitem(bench.PEERS, "plain", bench.PeerInfo("plain", "no thread control"))
    for kind in bench.BUILDERS:
        monkeypatch.setitem(bench.BUILDERS[kind], "plain", bench.BUILDERS[kind]["numpy"])
    res = _quick(workloads=["mlp-small"], peers=["plain"], threads=[1, 2], repeats=1)
    rows = res["workloads"][0]["peers"]
    assert [k for k in rows if k.startswith("plain")] == ["plain"]
    assert rows["plain"]["label"] == "no thread control, own threads"
    assert rows["plain"]["ratio_to"] == "gradchain"


def test_cli_contended_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str],
                             started: list[contention.Competitors]) -> None:
    for v in bench._OPENBLAS_ENV:
        monkeypatch.delenv(v, raising=False)
    path = tmp_path / "r.json"
    rc = bench.main(["--quick", "-w", "mlp-small", "-p", "numpy", "--threads", "1", "2",
                     "--contended", "1", "-r", "1", "--warmup", "0", "--no-ceiling",
                     "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr()
    assert "summary under load: 1 busy-loop competitor process" in out.out
    assert "default / 1 thread <= 1.25:" in out.out
    assert "competitors running: PIDs" in out.err
    data = json.loads(path.read_text())
    assert data["config"]["thread_sweep"] == [1, 2]
    assert data["contention"]["competitors"] == 1
    assert data["summary"]["rows"][0]["workload"] == "mlp-small"
    (c,) = started
    assert not any(_is_competitor(p) for p in c.pids)
    assert bench.main(["--contended", "-1", "--list"]) == 2
    assert bench.main(["--threads", "0", "--list"]) == 2


def test_bitwise_check() -> None:
    rng = np.random.default_rng(0)
    a = bench.Outputs(rng.standard_normal((3, 2)).astype(np.float32),
                      {"w": rng.standard_normal(4)}, np.array([1.0, np.nan]), np.array([2.0]))
    same = bench.Outputs(a.y.copy(), {"w": a.grads["w"].copy()},
                         a.activation_grad_norms.copy(), a.weight_grad_norms.copy())
    assert timing._bitwise_equal(a, same)
    off = bench.Outputs(a.y.copy(), {"w": np.nextafter(a.grads["w"], 9)},
                        a.activation_grad_norms, a.weight_grad_norms)
    assert not timing._bitwise_equal(a, off)
    assert not timing._bitwise_equal(a, bench.Outputs(a.y, {}, a.activation_grad_norms,
                                                      a.weight_grad_norms))
    assert not timing._bitwise_equal(a, bench.Outputs(a.y, dict(a.grads)))


def test_summary_flags() -> None:
    def row(peer: str, threads: int, default: bool, ms: float) -> dict[str, Any]:
        return {"label": peer, "peer": peer, "threads": threads, "default": default,
                "status": "ok", "median_s": ms / 1e3}

    def workload(name: str, d: float, one: float, torch: float) -> dict[str, Any]:
        return {"name": name, "machine_load": {"other_processes_cores": 1.0, "steal_cores": 0},
                "peers": {"gradchain": row("gradchain", 2, True, d),
                          "gradchain@1": row("gradchain", 1, False, one),
                          "torch": row("torch", 2, True, torch)}}

    results = {"machine": {"cores": 2}, "config": {"contended": 1, "thread_sweep": [1, 2]},
               "contention": {"cores": 0.9},
               "workloads": [workload("fine", 10, 9, 20), workload("slow", 30, 10, 20)]}
    s = bench.summarize(results)
    fine, slow = s["rows"]
    assert not fine["over_limit"] and not fine["behind_torch"]
    assert slow["over_limit"] and slow["behind_torch"]
    assert slow["default_over_1_thread"] == pytest.approx(3.0)
    assert s["acceptance"] == {"ratio_limit": bench.RATIO_LIMIT, "measured": 2,
                               "within_limit": 1, "over_limit": ["slow"],
                               "compared_with_torch": 2, "ahead_of_torch": 1,
                               "behind_torch": ["slow"]}
    text = "\n".join(bench.format_summary(results))
    assert "3.00 !!" in text and "1.50 !!" in text and "0.90 cores" in text
    assert "default / 1 thread <= 1.25: 1 of 2 (above: slow)" in text


# ---- the optional small models


def test_small_models() -> None:
    mlp, rnn = bench.SMALL["mlp-small"], bench.SMALL["rnn-small"]
    assert isinstance(mlp, bench.MLPWorkload) and isinstance(rnn, bench.RNNWorkload)
    assert mlp.sizes == [256] * 20 + [10] and mlp.batch == 64 and mlp.activation == "tanh"
    assert (rnn.steps, rnn.batch, rnn.hidden_size, rnn.activation) == (128, 16, 128, "tanh")
    assert not set(bench.SMALL) & set(bench.WORKLOADS)  # optional: not in the default set
    assert set(bench.QUICK_SMALL) == set(bench.SMALL)
    assert list(bench.workload_table(False)) == [*bench.WORKLOADS, *bench.SMALL]
    assert [w.name for w in timing._resolve_workloads(["all"], True)] == [
        *bench.WORKLOADS, *bench.SMALL]
    assert [w.name for w in timing._resolve_workloads(None, False)] == list(bench.WORKLOADS)
    doc = (ROOT / "docs/WORKLOADS.md").read_text(encoding="utf-8")
    for name in bench.SMALL:
        assert f"| {name} |" in doc
    out = subprocess.run([sys.executable, "-m", "gradchain.bench", "--list"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "mlp-small" in out.stdout and "(optional)" in out.stdout
