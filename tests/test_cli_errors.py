"""The command line's errors (issue 10, item 7): every bad value is one line on stderr and
exit code 2 before any work (types, documented upper bounds, the memory a run would
need, optional dependencies, output folders); ``--version``; a closed stdout pipe ends
quietly; an unexpected error is one line and exit 1 (``--debug`` shows the traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import gradchain as gc
from gradchain import cli

AS_LIMIT = 3 << 30  # address space of the subprocesses: a run that allocated would fail


# The limit is set by the child itself (no preexec_fn: a fork in a process that imported
# JAX or other threaded libraries warns, and the warning is an error under pytest here).
_LIMITED = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT})); "
            "sys.argv[0] = 'gradchain'; "
            "runpy.run_module('gradchain', run_name='__main__', alter_sys=True)")


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GRADCHAIN_DEBUG", None)
    return subprocess.run([sys.executable, "-c", _LIMITED, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("args, words", [
    # an int flag given a float: argparse's message, with the digits to write instead
    (["probe", "--batch", "1e9"], ["--batch", "expected an int", "1000000000"]),
    (["sweep", "--depth", "2.5"], ["--depth", "expected an int"]),
    # past the documented upper bounds
    (["probe", "--batch", "1000000000"], ["--batch", "<= 1000000"]),
    (["probe", "--batch", "30000000"], ["--batch", "<= 1000000"]),
    (["probe", "--model", "rnn", "--steps", "1000000000"], ["--steps", "<= 1000000"]),
    (["demo", "--width", "10000000"], ["--width", "<= 65536"]),
    (["demo", "--steps", "100000000"], ["--steps", "<= 1000000"]),
    (["sweep", "--depth", "1000000000"], ["--depth", "<= 10000"]),
    (["sweep", "--width", "1000000"], ["--width", "<= 65536"]),
    (["sweep", "--depth", "3", "--epochs", "10000000"], ["--epochs", "<="]),
    (["sweep", "--workers", "100000"], ["--workers", "<="]),
    # within the bounds, but more memory than the machine has: refused before building
    (["probe", "--width", "65536", "--depth", "10000"], ["needs", "GiB", "is available"]),
    (["probe", "--batch", "1000000", "--width", "65536", "--depth", "1"],
     ["needs", "is available"]),
    (["probe", "--model", "rnn", "--hidden", "65536", "--steps", "1000000",
      "--batch", "1000000"], ["needs", "is available"]),
    (["demo", "--width", "65536", "--depth", "10000"], ["needs", "is available"]),
    (["sweep", "--width", "65536", "--depth", "100", "--executor", "serial"], ["weights"]),
    (["sweep", "--width", "8192", "--depth", "1000", "--batch", "1000000",
      "--executor", "serial"], ["needs", "is available"]),
])
def test_bad_values_are_one_line_and_exit_2_before_any_work(args, words):
    t0 = time.perf_counter()
    out = run(*args)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"gradchain {args[0]}: error: ")
    for w in words:
        assert w in out.stderr, (w, out.stderr)
    assert time.perf_counter() - t0 < 30  # nothing was built


def test_the_memory_check_uses_the_limit(monkeypatch, capsys):
    from gradchain import _memory
    small = _memory.Limit(available=_memory.HEADROOM + (1 << 20), source="a test limit")
    monkeypatch.setattr(_memory, "available", lambda root="/": small)
    assert cli.main(["probe", "--depth", "3", "--width", "256", "--batch", "64"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1
    assert "the probe (MLP tanh + torch_default, 3 hidden layers of width 256" in cap.err
    assert "is available (a test limit" in cap.err
    assert cli.main(["demo", "--depth", "3", "--width", "256", "--no-png"]) == 2
    assert "the demo (depth 3" in capsys.readouterr().err
    assert cli.main(["sweep", "--depth", "2", "3", "--width", "256", "--workers", "2"]) == 2
    assert "the sweep (2 run(s) at once" in capsys.readouterr().err


def test_the_memory_estimate_covers_a_measured_peak():
    """run_bytes is an upper bound of what a probe really takes (peak RSS growth)."""
    code = """if True:
        import contextlib, io, resource, sys
        from gradchain import cli
        a = cli.build_parser().parse_args(sys.argv[1:])
        cli._probe_sizes(a)
        cfg = dict(model="mlp", in_features=a.width, width=a.width, depth=a.depth,
                   out_features=a.out, norm=a.norm != "none", dtype=a.dtype)
        def hwm():  # peak RSS of this process since the last reset, in bytes
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        # ru_maxrss would carry the forking parent's peak across exec: reset the mark instead
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = hwm()
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(sys.argv[1:]) == 0
        after = hwm()
        print(after - before, cli.run_bytes(cfg, a.batch))
    """
    args = ["probe", "--quiet", "--depth", "6", "--width", "1024", "--batch", "2048",
            "--init", "orthogonal", "--dtype", "float64"]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    used, estimate = map(int, out.stdout.split())
    assert used > 50 << 20  # the probe did allocate
    assert estimate >= used, (used, estimate)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout == f"gradchain {gc.__version__}\n"
    assert gc.__version__ == "0.1.0"


def test_a_closed_pipe_ends_quietly():
    """`gradchain probe ... | head -1`: no BrokenPipeError traceback, exit 141 (as a
    program killed by SIGPIPE reports itself in a shell)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([sys.executable, "-m", "gradchain", "probe", "--depth", "3000",
                           "--width", "8", "--batch", "2", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as p:
        try:
            first = p.stdout.readline()  # like head -1: one line, then the reader goes away
            p.stdout.close()
            err = p.stderr.read().decode()
            code = p.wait(timeout=60)
        finally:
            p.kill()
    assert first == b"{\n"
    assert err == "", err
    assert code == cli.EXIT_BROKEN_PIPE == 141


def test_shell_pipe_into_head(tmp_path):
    sh = "/bin/sh"
    if not os.path.exists(sh):
        pytest.skip("no /bin/sh")
    cmd = (f"'{sys.executable}' -m gradchain probe --depth 3000 --width 8 --batch 2 "
           f"--json | head -1")
    out = subprocess.run([sh, "-c", cmd], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout == "{\n" and out.stderr == "" and out.returncode == 0


def test_digits_without_scikit_learn_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were missing
    calls = []
    monkeypatch.setattr(cli, "_check_sweep_memory", lambda *a: calls.append(a))
    assert cli.main(["sweep", "--data", "digits", "--epochs", "1", "--loss", "cross_entropy",
                     "--in-features", "64", "--depth", "2", "--width", "8",
                     "--executor", "serial"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and calls == []
    assert cap.err == ('gradchain sweep: error: --data digits needs scikit-learn '
                       '(pip install "gradchain[data]")\n')


@pytest.mark.parametrize("argv", [
    ["demo", "--depth", "2", "--width", "4", "--batch", "2", "--steps", "3", "--png", "{f}/x.png"],
    ["probe", "--depth", "2", "--width", "4", "--png", "{f}/x.png"],
    ["probe", "--depth", "2", "--width", "4", "--json-out", "{f}/x.json"],
    ["sweep", "--depth", "2", "--width", "4", "--executor", "serial", "--csv", "{f}/x.csv"],
])
def test_an_output_path_under_a_file_is_refused_first(argv, tmp_path, capsys, monkeypatch):
    f = tmp_path / "a_file"
    f.write_text("")
    ran = []
    monkeypatch.setattr(gc.MLP, "loss_and_grad", lambda *a, **k: ran.append(1))
    assert cli.main([a.replace("{f}", str(f)) for a in argv]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and ran == []
    assert cap.err.count("\n") == 1 and "is not a folder" in cap.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused_first(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli.main(["probe", "--depth", "2", "--width", "4", "--json-out",
                         str(ro / "x.json")]) == 2
    finally:
        ro.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


def _boom(*args, **kwargs):
    raise RuntimeError("boom:\nsecond line")


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.delenv("GRADCHAIN_DEBUG", raising=False)
    monkeypatch.setattr(gc, "MLP", _boom)
    assert cli.main(["probe", "--depth", "2", "--width", "4"]) == 1
    err = capsys.readouterr().err
    assert err == ("gradchain probe: error: RuntimeError: boom: second line (run with "
                   "--debug or GRADCHAIN_DEBUG=1 for the traceback)\n")


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback(how, monkeypatch):
    monkeypatch.setattr(gc, "MLP", _boom)
    argv = ["probe", "--depth", "2", "--width", "4"]
    if how == "flag-before":
        argv = ["--debug", *argv]
    elif how == "flag-after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("GRADCHAIN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(argv)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gc, "MLP", interrupted)
    assert cli.main(["probe", "--depth", "2", "--width", "4"]) == 130
    assert capsys.readouterr().err.strip() == "gradchain probe: interrupted"
