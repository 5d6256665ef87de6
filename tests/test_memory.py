"""Memory limits (issue 10, item 3): every allocation the library makes is checked against
the real limit first (host, cgroup v1/v2, RLIMIT_AS/RLIMIT_DATA) and refused as a
MemoryError naming what was asked for; input validation allocates no more than a small
block; GEMM dimensions past the BLAS's 32-bit integers are a ValueError.

The limit cases run in a child process under a real limit: an address-space limit
(RLIMIT_AS, set after the child's warm-up at what it has mapped + 1.5 GiB), and, where
this machine lets root create a cgroup with a memory limit, a 1.5 GiB cgroup (where an
allocation past the limit is not an error but the OOM killer). Each child must end
normally (never killed), with the refused call's exception and a small model still
working afterwards. The big sizes are only asked for: the point is that the check fires
before anything is allocated, so every case takes well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import uuid

import numpy as np
import pytest

import gradchain as gc
from gradchain import _memory, _validate
from gradchain._memory import Limit
from gradchain._validate import first_nonfinite

LIMIT_EXTRA = 1536 << 20  # the child's limit: its own footprint after warm-up + 1.5 GiB

PRELUDE = r'''
import json, os, resource, sys
cg = os.environ.get("GC_CGROUP")
if cg:  # join the test's cgroup before anything is allocated
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
import numpy as np
import gradchain as gc
# warm-up of what reserves address space lazily (OpenMP threads and their malloc
# arenas, OpenBLAS's buffers), so the limit below is the footprint + a known margin
m = gc.MLP([64, 64, 64, 4], seed=0)
m.forward(np.ones((64, 64), np.float32)); m.backward(np.ones((64, 4), np.float32))
r = gc.RNN(4, 32, output_size=2, seed=0)
r.loss_and_grad(np.ones((8, 16, 4), np.float32), np.ones((16, 2), np.float32))
if os.environ.get("GC_AS_EXTRA"):
    vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")]
    resource.setrlimit(resource.RLIMIT_AS,
                       (vm[0] + int(os.environ["GC_AS_EXTRA"]), resource.RLIM_INFINITY))


def outcome(fn):
    try:
        fn()
    except BaseException as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None, "message": ""}


def still_works():
    m = gc.MLP([32, 64, 8], init="orthogonal", seed=0)
    m.loss_and_grad(np.ones((16, 32), np.float32), np.ones((16, 8), np.float32))
    r = gc.RNN(4, 32, output_size=2, seed=0)
    r.loss_and_grad(np.ones((8, 16, 4), np.float32), np.ones((16, 2), np.float32))
    return True
'''

EPILOGUE = r'''
print(json.dumps({"result": res, "works": still_works()}))
'''

# (code that sets `res` = outcome(refused call) and then uses the same model again,
#  expected exception type, message fragments)
CASES = {
    "mlp-construction-orthogonal": (
        '''res = outcome(lambda: gc.MLP([12000, 12000], init="orthogonal", dtype=np.float32))''',
        "MemoryError",
        ["gc.MLP(sizes=[12000, 12000]", "float32", "'orthogonal'", "bytes", "available"]),
    "mlp-forward-workspace": (
        '''m = gc.MLP([256, 2048, 2048, 10], seed=0)
x = np.ones((40000, 256), np.float32)
res = outcome(lambda: m.forward(x))
m.forward(x[:8]); m.backward(np.ones((8, 10), np.float32))''',
        "MemoryError",
        ["x: the forward pass", "sizes=[256, 2048, 2048, 10]", "(40000, 256)", "bytes"]),
    "mlp-loss-and-grad-workspace": (
        '''m = gc.MLP([256, 2048, 2048, 10], seed=0)
x = np.ones((40000, 256), np.float32)
res = outcome(lambda: m.loss_and_grad(x, np.ones((40000, 10), np.float32)))
m.loss_and_grad(x[:8], np.ones((8, 10), np.float32))''',
        "MemoryError", ["x: the forward pass", "(40000, 256)", "bytes"]),
    "rnn-sequence": (
        '''r = gc.RNN(64, 1024, output_size=10, seed=0)
x = np.ones((4000, 32, 64), np.float32)
res = outcome(lambda: r.forward(x))
r.forward(x[:5, :3]); r.backward(grad_ys=np.ones((5, 3, 10), np.float32))''',
        "MemoryError",
        ["x: the forward pass", "(4000, 32, 64)", "hidden_size=1024", "float32", "bytes"]),
    "rnn-construction": (
        '''res = outcome(lambda: gc.RNN(2000, 12000, init="orthogonal"))''',
        "MemoryError", ["gc.RNN(input_size=2000, hidden_size=12000", "bytes"]),
    "broadcast-input-too-big": (
        '''m = gc.MLP([1000, 10], seed=0)
x = np.broadcast_to(np.ones(1000, np.float32), (1 << 22, 1000))  # 16 GiB, 4 KB real
res = outcome(lambda: m.forward(x))
m.forward(np.asarray(x[:4]))''',
        "MemoryError", ["x: the forward pass", "(4194304, 1000)", "bytes"]),
    "broadcast-input-nan": (
        '''m = gc.MLP([1000, 10], seed=0)
row = np.ones(1000, np.float32); row[7] = np.nan
x = np.broadcast_to(row, (1 << 22, 1000))  # the NaN check must not build 4 GiB of bools
res = outcome(lambda: m.forward(x))
m.forward(np.ones((4, 1000), np.float32))''',
        "ValueError", ["x contains NaN or Inf", "(0, 7)"]),
}

# The core's own messages when its allocation fails (only an address-space limit makes
# an allocation fail: under a cgroup it succeeds and the OOM killer comes later).
CORE_CASES = {
    "core-construction": (
        '''tanh = gc._core.ACTIVATION_IDS["tanh"]
res = outcome(lambda: gc._core.MlpChainF32([20000, 20000], tanh, 0.0, 0.0, 0, True, [], 1.0,
                                           1e-5, 0.1))''',
        "MemoryError",
        ["gradchain: cannot allocate the parameters, gradients and buffers of an MLP with "
         "sizes [20000, 20000] (float32)", "bytes"]),
    "core-message-through-the-model": (  # the model's own check switched off
        '''import gradchain.models
gradchain.models.require = lambda *a, **k: None
res = outcome(lambda: gc.MLP([20000, 20000]))''',
        "MemoryError",
        ["sizes: the parameters of an MLP with sizes [20000, 20000] (float32) cannot be "
         "allocated (gradchain: cannot allocate the parameters", "bytes"]),
    "core-mlp-workspace": (
        '''m = gc.MLP([256, 2048, 2048, 10], seed=0)
x = np.ones((40000, 256), np.float32)
res = outcome(lambda: m._core.forward(x))
m.forward(x[:8]); m.backward(np.ones((8, 10), np.float32))''',
        "MemoryError",
        ["gradchain: cannot allocate the workspace for a batch of 40000 rows of an MLP with "
         "sizes [256, 2048, 2048, 10] (float32)", "bytes"]),
    "core-rnn-workspace": (
        '''r = gc.RNN(64, 1024, output_size=10, seed=0)
x = np.ones((4000, 32, 64), np.float32)
hs = np.empty((4000, 32, 1024), np.float32)  # the outputs the binding allocates first
del hs
res = outcome(lambda: r._core.forward(x, None))
r.forward(x[:5, :3]); r.backward(grad_ys=np.ones((5, 3, 10), np.float32))''',
        "MemoryError",
        ["gradchain: cannot allocate", "hidden_size=1024", "bytes"]),
}


def run_child(code: str, env_extra: dict[str, str], timeout: float = 120) -> dict:
    script = PRELUDE + "\n" + textwrap.dedent(code) + "\n" + EPILOGUE
    env = {**os.environ, "OMP_NUM_THREADS": "2", **env_extra}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, (
        f"child ended with {p.returncode} (-9: killed, e.g. by the OOM killer)\n"
        f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_outcome(out: dict, exc: str, fragments: list[str], source: str) -> None:
    res = out["result"]
    assert res["type"] == exc, f"expected {exc}, got {res}"
    for frag in fragments:
        assert frag in res["message"], f"{frag!r} not in {res['message']!r}"
    assert res["message"] != "std::bad_alloc" and "bad_alloc" not in res["message"]
    if exc == "MemoryError" and source:
        assert source in res["message"], f"the limit {source!r} not named: {res['message']}"
    assert out["works"] is True


def _has_rlimit_as() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/status")


@pytest.mark.skipif(not _has_rlimit_as(), reason="needs Linux's /proc/self/status")
@pytest.mark.parametrize("case", list(CASES) + list(CORE_CASES))
def test_refused_under_an_address_space_limit(case):
    code, exc, fragments = {**CASES, **CORE_CASES}[case]
    out = run_child(code, {"GC_AS_EXTRA": str(LIMIT_EXTRA)})
    source = "" if case.startswith("core-") else "RLIMIT_AS"
    check_outcome(out, exc, fragments, source)


# ------------------------------------------------------------------- cgroup (root only)
def _make_cgroup(limit: int) -> tuple[str, list[str]] | None:
    """A child cgroup of this process's own memory cgroup with `limit` bytes, or None
    where this machine does not allow one. Returns (directory, files written)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    name = f"gradchain-test-{uuid.uuid4().hex[:8]}"
    for version, dirs in _memory._cgroup_chains():
        parent = dirs[0]
        if version == 2:
            # v2 enables a controller for children only in a cgroup without processes of
            # its own: our cgroup if it delegates memory, else a sibling of it
            parent = ""
            for cand in dirs[:2]:
                try:
                    with open(os.path.join(cand, "cgroup.subtree_control")) as f:
                        if "memory" in f.read().split():
                            parent = cand
                            break
                except OSError:
                    continue
            if not parent:
                continue
            knob = "memory.max"
        else:
            knob = "memory.limit_in_bytes"
        d = os.path.join(parent, name)
        try:
            os.mkdir(d)
        except OSError:
            continue
        try:
            with open(os.path.join(d, knob), "w") as f:
                f.write(str(limit))
            if version == 2 and os.path.exists(os.path.join(d, "memory.swap.max")):
                with open(os.path.join(d, "memory.swap.max"), "w") as f:
                    f.write("0")
            return d, [knob]
        except OSError:
            os.rmdir(d)
            continue
    return None


@pytest.fixture
def cgroup_dir():
    made = _make_cgroup(LIMIT_EXTRA)
    if made is None:
        pytest.skip("no writable cgroup with a memory controller here (needs root and "
                    "cgroup v1, or v2 with memory delegated)")
    d = made[0]
    yield d
    for _ in range(50):  # the child has exited; the kernel frees the cgroup shortly
        try:
            os.rmdir(d)
            break
        except OSError:
            import time

            time.sleep(0.1)


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_a_cgroup(case, cgroup_dir):
    code, exc, fragments = CASES[case]
    out = run_child(code, {"GC_CGROUP": cgroup_dir})
    check_outcome(out, exc, fragments, "container limit: cgroup")


# ------------------------------------------------------------ limits read from fake trees
def fake_tree(root, cgroup: str, mountinfo: list[str], files: dict[str, str],
              meminfo_kb: int = 64 << 20) -> str:
    """A fake filesystem under `root`: /proc/self/{cgroup,mountinfo,status}, /proc/meminfo
    and cgroup files. Returns the root path."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    (root / "proc" / "self" / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    (root / "proc" / "self" / "status").write_text("VmSize:\t 1000 kB\nVmData:\t 500 kB\n")
    (root / "proc" / "meminfo").write_text(f"MemTotal: {2 * meminfo_kb} kB\n"
                                           f"MemAvailable: {meminfo_kb} kB\n")
    for path, text in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


V2_MOUNT = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNT = ("40 30 0:35 / /sys/fs/cgroup/memory rw,nosuid shared:18 - cgroup cgroup "
            "rw,memory")
GiB, MiB = 1 << 30, 1 << 20


def cgroup_limits(root: str) -> list[Limit]:
    return [lim for lim in _memory.limits(root) if lim.source.startswith("container")]


def test_cgroup_v2_limit_less_usage_less_reclaimable_cache(tmp_path):
    root = fake_tree(tmp_path, "0::/user.slice/app\n", [V2_MOUNT], {
        "/sys/fs/cgroup/user.slice/app/memory.max": f"{GiB}\n",
        "/sys/fs/cgroup/user.slice/app/memory.current": f"{256 * MiB}\n",
        "/sys/fs/cgroup/user.slice/app/memory.stat": f"anon 1\ninactive_file {64 * MiB}\n",
        "/sys/fs/cgroup/user.slice/memory.max": "max\n",
        "/sys/fs/cgroup/user.slice/memory.current": f"{GiB}\n",
    })
    (lim,) = cgroup_limits(root)
    assert lim.available == GiB - 192 * MiB
    assert "cgroup v2" in lim.source and "user.slice/app/memory.max" in lim.source
    assert _memory.available(root) == lim  # tighter than the host's 64 GiB


def test_cgroup_v2_nested_tightest_wins(tmp_path):
    root = fake_tree(tmp_path, "0::/a/b/c\n", [V2_MOUNT], {
        "/sys/fs/cgroup/a/b/c/memory.max": f"{4 * GiB}\n",
        "/sys/fs/cgroup/a/b/c/memory.current": f"{GiB}\n",
        "/sys/fs/cgroup/a/b/memory.max": "max\n",
        "/sys/fs/cgroup/a/b/memory.current": f"{GiB}\n",
        "/sys/fs/cgroup/a/memory.max": f"{2 * GiB}\n",
        "/sys/fs/cgroup/a/memory.current": f"{1536 * MiB}\n",
    })
    assert sorted(lim.available for lim in cgroup_limits(root)) == [512 * MiB, 3 * GiB]
    best = _memory.available(root)
    assert best.available == 512 * MiB and "/a/memory.max" in best.source


def test_cgroup_v2_max_everywhere_leaves_the_host(tmp_path):
    root = fake_tree(tmp_path, "0::/app\n", [V2_MOUNT], {
        "/sys/fs/cgroup/app/memory.max": "max\n",
        "/sys/fs/cgroup/app/memory.current": f"{GiB}\n",
    }, meminfo_kb=3 << 20)
    assert cgroup_limits(root) == []
    best = _memory.available(root)
    assert best.available == 3 * GiB and "MemAvailable" in best.source


def test_cgroup_v2_namespace_sees_its_cgroup_at_the_mount(tmp_path):
    # inside a cgroup namespace the process's path is "/" and the mount shows its cgroup
    root = fake_tree(tmp_path, "0::/\n", [V2_MOUNT], {
        "/sys/fs/cgroup/memory.max": f"{GiB}\n",
        "/sys/fs/cgroup/memory.current": f"{100 * MiB}\n",
    })
    (lim,) = cgroup_limits(root)
    assert lim.available == GiB - 100 * MiB


def test_cgroup_v1_container_mount_root(tmp_path):
    # docker without a cgroup namespace: /proc/self/cgroup names /docker/abc and the
    # container's /sys/fs/cgroup/memory is that cgroup (mountinfo's root field)
    mount = ("41 30 0:36 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup "
             "rw,memory")
    root = fake_tree(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
                     [mount], {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{2 * GiB}\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{GiB + 10 * MiB}\n",
        "/sys/fs/cgroup/memory/memory.stat": f"cache 1\ntotal_inactive_file {10 * MiB}\n",
    })
    (lim,) = cgroup_limits(root)
    assert lim.available == GiB
    assert "cgroup v1" in lim.source and "memory.limit_in_bytes" in lim.source


def test_cgroup_v1_nested_and_unlimited(tmp_path):
    root = fake_tree(tmp_path, "4:memory:/jobs/j1\n0::/\n", [V2_MOUNT, V1_MOUNT], {
        "/sys/fs/cgroup/memory/jobs/j1/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/jobs/j1/memory.usage_in_bytes": f"{GiB}\n",
        "/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes": f"{3 * GiB}\n",
        "/sys/fs/cgroup/memory/jobs/memory.usage_in_bytes": f"{2 * GiB}\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{5 * GiB}\n",
    })
    (lim,) = cgroup_limits(root)  # the unlimited levels and the v2 root without a limit
    assert lim.available == GiB and "/jobs/memory.limit_in_bytes" in lim.source


def test_hybrid_v1_and_v2_both_read(tmp_path):
    root = fake_tree(tmp_path, "4:memory:/m\n0::/u\n", [V2_MOUNT, V1_MOUNT], {
        "/sys/fs/cgroup/u/memory.max": f"{2 * GiB}\n",
        "/sys/fs/cgroup/u/memory.current": "0\n",
        "/sys/fs/cgroup/memory/m/memory.limit_in_bytes": f"{GiB}\n",
        "/sys/fs/cgroup/memory/m/memory.usage_in_bytes": "0\n",
    })
    assert sorted(lim.available for lim in cgroup_limits(root)) == [GiB, 2 * GiB]
    assert "cgroup v1" in _memory.available(root).source


def test_no_proc_files_means_no_host_or_cgroup_limit(tmp_path):
    assert _memory._host(str(tmp_path)) == []
    assert _memory._cgroup_limits(str(tmp_path)) == []


def test_require_message_names_what_bytes_and_limit(tmp_path):
    root = fake_tree(tmp_path, "0::/app\n", [V2_MOUNT], {
        "/sys/fs/cgroup/app/memory.max": f"{GiB}\n",
        "/sys/fs/cgroup/app/memory.current": f"{GiB // 2}\n",
    })
    with pytest.raises(MemoryError) as ei:
        _memory.require(2 * GiB, "gc.MLP(sizes=[5, 5], dtype=float32): its parameters",
                        root=root)
    msg = str(ei.value)
    for frag in ("gc.MLP(sizes=[5, 5], dtype=float32): its parameters", "needs 2.0 GiB",
                 "(2147483648 bytes)", "only 512.0 MiB is available", "container limit",
                 "cgroup v2", "app/memory.max", "1.0 GiB"):
        assert frag in msg, (frag, msg)
    _memory.require(256 * MiB, "fits", root=root)  # within the limit, with the reserve
    with pytest.raises(MemoryError, match="kept in reserve"):
        _memory.require(512 * MiB - MiB, "at the edge", root=root)
    calls = []
    _memory.require(1000, lambda: calls.append(1) or "small", root=root)  # not checked
    assert calls == []


def test_human():
    assert _memory.human(12) == "12 bytes"
    assert _memory.human(1536 * MiB) == "1.5 GiB"
    assert _memory.human(3 * (1 << 40)) == "3.0 TiB"


# ---------------------------------------------------------------- construction estimates
MEASURE = r'''
import gc as pygc, json, sys
import numpy as np
import gradchain as gc
from gradchain import _memory

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

gc.MLP([8, 8, 8], init="orthogonal")
out = []
for kind, kw in json.loads(sys.argv[1]):
    pygc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError as e:
        print(json.dumps({"skip": f"cannot reset the peak RSS: {e}"}))
        sys.exit(0)
    before = rss()
    m = gc.MLP(**kw) if kind == "mlp" else gc.RNN(**kw)
    peak = hwm() - before
    if kind == "mlp":
        est = _memory.mlp_bytes(m.sizes, m.norm, m.bias, m.dtype.itemsize, m.init.name)
    else:
        est = _memory.rnn_bytes(m.input_size, m.hidden_size, m.output_size or 0, m.bias,
                                m.dtype.itemsize, m.init.name, m.input_init.name)
    out.append({"kw": kw, "peak": peak, "estimate": est})
    del m
print(json.dumps(out))
'''

CONFIGS = [
    ("mlp", {"sizes": [1500, 1500], "init": "orthogonal", "dtype": "float32"}),
    ("mlp", {"sizes": [600, 2000], "init": "orthogonal", "dtype": "float64"}),
    ("mlp", {"sizes": [2000, 500, 10], "init": "orthogonal", "dtype": "float32"}),
    ("mlp", {"sizes": [1200, 1200, 1200], "init": "identity", "dtype": "float32",
             "norm": "batch"}),
    ("mlp", {"sizes": [1500, 1500], "init": "torch_default", "dtype": "float64"}),
    ("rnn", {"input_size": 300, "hidden_size": 1200, "output_size": 50,
             "init": "orthogonal"}),
]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_construction_estimate_bounds_the_measured_peak():
    """The estimate require() checks is an upper bound of the real peak (the float64
    draws and orthogonal init's QR temporaries included), and not a wild one."""
    # glibc's fixed mmap threshold: every array gets its own mapping, returned to the
    # system when freed, so one configuration's freed memory cannot hide the next one's
    # peak (with the default, adaptive threshold it may stay on the heap and be reused)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    p = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(CONFIGS)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    if isinstance(results, dict):
        pytest.skip(results["skip"])
    for r in results:
        assert r["peak"] <= r["estimate"] + 2 * MiB, r  # 2 MiB: page tables, small objects
        assert r["estimate"] <= 2.5 * r["peak"] + 8 * MiB, r


# ---------------------------------------------------------- the non-finite scan's memory
def test_nonfinite_scan_of_a_broadcast_input_allocates_little():
    m = gc.MLP([1000, 4], seed=0)
    row = np.ones(1000, np.float32)
    row[3] = np.inf
    x = np.broadcast_to(row, (1 << 18, 1000))  # 1 GiB logical, 4 KB real
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"x contains NaN or Inf \(first at index \(0, 3\)\)"):
            m.forward(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak


def test_nonfinite_scan_of_a_large_real_input_is_bounded():
    x = np.ones((600, 1000), np.float32)
    x[555, 777] = np.nan
    tracemalloc.start()
    try:
        assert first_nonfinite(x) == (555, 777)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= _validate._SCAN_BLOCK * 2 + MiB // 4, peak  # two blocks of booleans


@pytest.mark.parametrize("seed", range(30))
def test_nonfinite_scan_matches_argwhere(seed, monkeypatch):
    """Blockwise (tiny blocks here), strided, negatively strided and broadcast arrays:
    the same first index as NumPy's argwhere over the whole array."""
    monkeypatch.setattr(_validate, "_SCAN_BLOCK", 5)
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(1, 7, size=ndim))
    a = rng.normal(size=shape).astype(rng.choice([np.float32, np.float64]))
    for _ in range(int(rng.integers(0, 3))):
        a[tuple(int(rng.integers(0, s)) for s in shape)] = rng.choice([np.nan, np.inf, -np.inf])
    variants = [a, a.T, a[::-1], np.asfortranarray(a)]
    big = (int(rng.integers(1, 5)),) + shape
    variants.append(np.broadcast_to(a, big))
    if ndim >= 2:
        variants.append(np.broadcast_to(a[:, :1], a.shape))
    for v in variants:
        bad = np.argwhere(~np.isfinite(v))
        want = tuple(int(i) for i in bad[0]) if len(bad) else None
        assert first_nonfinite(v) == want, (v.shape, v.strides)


def test_state_dict_load_scans_without_a_full_temporary(monkeypatch):
    m = gc.MLP([4, 3], seed=0)
    sd = m.state_dict(copy=True)
    sd["layers.0.weight"][2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.load_state_dict(sd)
    called = []
    real = _validate.first_nonfinite
    import gradchain.models as models

    monkeypatch.setattr(models, "first_nonfinite", lambda a: called.append(a.shape) or real(a))
    m.load_state_dict(m.state_dict(copy=True))
    assert (3, 4) in called


# --------------------------------------------------------------- the BLAS's 32-bit range
def test_width_past_the_blas_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"sizes\[1\]=3000000000 exceeds the BLAS's 32-bit"):
        gc.MLP([3, 3_000_000_000, 2])
    with pytest.raises(ValueError, match=r"sizes\[0\]=2147483648 exceeds"):
        gc.MLP([2**31, 1])
    gc.MLP([3, 4, 2])  # the bound is 2**31 - 1, nothing near small sizes


def test_core_refuses_a_width_past_the_blas_range_itself():
    tanh = gc._core.ACTIVATION_IDS["tanh"]
    with pytest.raises(ValueError, match=r"sizes\[1\]=2147483648 exceeds the BLAS's 32-bit"):
        gc._core.MlpChainF32([3, 2**31, 2], tanh, 0.0, 0.0, 0, True, [False], 1.0, 1e-5, 0.1)


def test_batch_past_the_blas_range_is_a_value_error():
    m = gc.MLP([2, 3], seed=0)
    x = np.broadcast_to(np.zeros((1, 2), np.float32), (2**31, 2))
    with pytest.raises(ValueError, match=r"x: batch size=2147483648 exceeds the BLAS's 32-bit"):
        m.forward(x)
    m.forward(np.zeros((2, 2), np.float32))


def test_rnn_rows_past_the_blas_range_are_a_value_error():
    r = gc.RNN(1, 3, seed=0)
    x = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (1 << 16, 1 << 15, 1))
    with pytest.raises(ValueError, match=r"x: T\*B = 65536\*32768 = 2147483648 rows exceed"):
        r.forward(x)
    r.forward(np.zeros((2, 2, 1), np.float32))


# ---------------------------------------------------------------- other allocations
def _tiny_limit(monkeypatch, nbytes: int = 8 * MiB) -> None:
    monkeypatch.setattr(_memory, "available",
                        lambda root="/": Limit(nbytes + _memory.HEADROOM, "test limit"))


def test_optimizer_state_is_checked(monkeypatch):
    m = gc.MLP([1024, 1024, 2], seed=0)  # 4 MiB of float32 parameters
    m.loss_and_grad(np.ones((4, 1024), np.float32), np.ones((4, 2), np.float32))
    opt = gc.optim.Adam(m, lr=1e-3)
    before = m.state_dict(copy=True)
    _tiny_limit(monkeypatch, 2 * MiB)
    with pytest.raises(MemoryError, match=r"Adam.step: its state \['exp_avg', 'exp_avg_sq'\]"
                                          r".*bytes.*test limit"):
        opt.step()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert opt.state_dict()["step_count"] == 0  # nothing half-done
    monkeypatch.undo()
    opt.step()
    assert opt.state_dict()["step_count"] == 1


def test_state_dict_copy_is_checked(monkeypatch):
    m = gc.RNN(8, 1024, seed=0)  # 4 MiB of float32 weight_hh_l0
    _tiny_limit(monkeypatch, 2 * MiB)
    with pytest.raises(MemoryError, match=r"state_dict\(copy=True\): .*hidden_size=1024.*bytes"):
        m.state_dict(copy=True)
    assert m.state_dict()["weight_hh_l0"].shape == (1024, 1024)  # views: nothing to check


def test_contiguous_copy_is_checked(monkeypatch):
    m = gc.MLP([512, 4], seed=0)
    x = np.asfortranarray(np.ones((4096, 512), np.float32))  # an 8 MiB copy
    _tiny_limit(monkeypatch, 4 * MiB)
    with pytest.raises(MemoryError, match=r"x: .*\(4096, 512\).*bytes.*test limit"):
        m.forward(x)
    r = gc.RNN(256, 8, batch_first=True, seed=0)
    with pytest.raises(MemoryError, match=r"x: .*bytes.*test limit"):
        r.forward(np.ones((64, 128, 256), np.float32))  # batch-first: a transposed copy


# -------------------------------------------------------------- item 8: the cast hint
def test_cast_hint_fits_the_input_type():
    m = gc.MLP([2, 3], seed=0)
    with pytest.raises(TypeError) as ei:
        m.forward([[1, 2]])
    assert "np.asarray(x, dtype=np.float32)" in str(ei.value)
    assert ".astype" not in str(ei.value)
    with pytest.raises(TypeError, match=r"x\.astype\(np\.float32\)"):
        m.forward(np.ones((1, 2), np.int64))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"x\.to\(torch\.float32\)"):
        m.forward(torch.ones((1, 2), dtype=torch.float64))
