"""How much memory this process may still allocate, and the check made before every
large allocation (:func:`require`).

The available memory is the tightest of

* the host's ``MemAvailable`` (``/proc/meminfo``);
* every cgroup v2 ``memory.max`` on the way from the process's own cgroup up to the
  root of the mounted hierarchy, less that cgroup's ``memory.current`` (page cache
  the kernel can drop, ``inactive_file`` in ``memory.stat``, counted as free);
* the same for cgroup v1 (``memory.limit_in_bytes`` less ``memory.usage_in_bytes``);
* ``RLIMIT_AS`` less the address space already mapped (``VmSize``), and
  ``RLIMIT_DATA`` less the data segment (``VmData``), when they are set.

A container's limit is what kills a process (the OOM killer, not a ``MemoryError``),
so the library checks its own allocations against it first and raises a
``MemoryError`` that names what was asked for.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Limit", "limits", "available", "require", "human", "BLAS_INT_MAX",
           "check_blas_dim"]

# Allocations below this are not checked (reading the limits costs ~0.1 ms); HEADROOM
# keeps room for them, the interpreter and thread stacks.
SMALL = 1 << 20
HEADROOM = 32 << 20
# scipy-openblas32 takes 32-bit integers: a GEMM dimension past this is refused.
BLAS_INT_MAX = 2**31 - 1
# cgroup v1 writes "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages).
_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Limit:
    """One memory limit: the bytes that may still be allocated under it, and where it
    comes from (for messages)."""

    available: int
    source: str


def human(n: float) -> str:
    """``1536 * 2**20 -> '1.5 GiB'``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_field(path: str, key: str) -> int:
    """One field of a cgroup's memory.stat (0 when absent)."""
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, ch)
    return path


def _join(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def _cgroup_chains(root: str = "/") -> list[tuple[int, list[str]]]:
    """For each cgroup hierarchy with a memory controller: (version, the directories
    from the process's own cgroup up to the hierarchy's mount point)."""
    cg = _read(_join(root, "/proc/self/cgroup"))
    if cg is None:
        return []
    v1_path = v2_path = None
    for line in cg.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    # mount points (and the cgroup each one shows as its root) from mountinfo
    v2_mounts: list[tuple[str, str]] = []
    v1_mounts: list[tuple[str, str]] = []
    for line in (_read(_join(root, "/proc/self/mountinfo")) or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 1:
            continue
        mroot, mpoint = _unescape(fields[3]), _unescape(fields[4])
        if rfields[0] == "cgroup2":
            v2_mounts.append((mroot, mpoint))
        elif rfields[0] == "cgroup" and len(rfields) >= 3 and "memory" in rfields[2].split(","):
            v1_mounts.append((mroot, mpoint))
    if not v2_mounts and not v1_mounts and not os.path.exists(_join(root, "/proc/self/mountinfo")):
        v2_mounts = [("/", "/sys/fs/cgroup")]
        v1_mounts = [("/", "/sys/fs/cgroup/memory")]
    chains = []
    for version, path, mounts in ((2, v2_path, v2_mounts), (1, v1_path, v1_mounts)):
        if path is None:
            continue
        for mroot, mpoint in mounts:
            chain = _chain(root, path, mroot, mpoint)
            if chain:
                chains.append((version, chain))
                break
    return chains


def _chain(root: str, path: str, mroot: str, mpoint: str) -> list[str]:
    """The directories from cgroup `path` up to the mount point `mpoint` (which shows
    cgroup `mroot`), or [] when the cgroup is not visible under this mount."""
    path = "/" + path.strip("/")
    mroot = "/" + mroot.strip("/")
    if mroot == "/":
        rel = path
    elif path == mroot or path.startswith(mroot + "/"):
        rel = path[len(mroot):]
    else:  # e.g. a cgroup namespace: the path is already relative to the mount
        rel = path
    top = _join(root, mpoint)
    leaf = os.path.normpath(os.path.join(top, rel.lstrip("/"))) if rel.strip("/") else top
    if not os.path.isdir(leaf):
        leaf = top  # the container sees its own cgroup at the mount point
        if not os.path.isdir(leaf):
            return []
    out = [leaf]
    d = leaf
    while os.path.normpath(d) != os.path.normpath(top):
        d = os.path.dirname(d)
        out.append(d)
    return out


# the cgroup directories depend on the process (a fork may be moved elsewhere)
_chains_cache: dict[tuple[int, str], list[tuple[int, list[str]]]] = {}


def _cgroup_limits(root: str) -> list[Limit]:
    key = (os.getpid(), root)
    chains = _chains_cache.get(key)
    if chains is None:
        chains = _cgroup_chains(root)
        if len(_chains_cache) > 16:
            _chains_cache.clear()
        _chains_cache[key] = chains
    out = []
    for version, dirs in chains:
        for d in dirs:
            if version == 2:
                limit = _read_int(os.path.join(d, "memory.max"))
                used = _read_int(os.path.join(d, "memory.current"))
                cache = _stat_field(os.path.join(d, "memory.stat"), "inactive_file")
                name = "memory.max"
            else:
                limit = _read_int(os.path.join(d, "memory.limit_in_bytes"))
                used = _read_int(os.path.join(d, "memory.usage_in_bytes"))
                cache = _stat_field(os.path.join(d, "memory.stat"), "total_inactive_file")
                name = "memory.limit_in_bytes"
            if limit is None or limit >= _UNLIMITED or used is None:
                continue
            in_use = max(used - min(cache, used), 0)
            out.append(Limit(
                max(limit - in_use, 0),
                f"container limit: cgroup v{version} {os.path.join(d, name)} = "
                f"{human(limit)}, {human(in_use)} in use"))
    return out


def _status(root: str) -> dict[str, int]:
    out = {}
    for line in (_read(_join(root, "/proc/self/status")) or "").splitlines():
        k, _, v = line.partition(":")
        if k in ("VmSize", "VmData") and v.split() and v.split()[0].isdigit():
            out[k] = int(v.split()[0]) * 1024
    return out


def _rlimits(root: str) -> list[Limit]:
    out = []
    status: dict[str, int] | None = None
    for res, key, name, what in (
        (resource.RLIMIT_AS, "VmSize", "RLIMIT_AS", "address-space limit"),
        (resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA", "data-segment limit"),
    ):
        soft = resource.getrlimit(res)[0]
        if soft == resource.RLIM_INFINITY:
            continue
        if status is None:
            status = _status(root)
        used = status.get(key, 0)
        out.append(Limit(max(soft - used, 0),
                         f"{what}: {name} = {human(soft)}, {human(used)} mapped"))
    return out


def _host(root: str) -> list[Limit]:
    for line in (_read(_join(root, "/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                n = int(parts[1]) * 1024
                return [Limit(n, f"host memory: MemAvailable = {human(n)}")]
    return []


def limits(root: str = "/") -> list[Limit]:
    """Every memory limit that applies to this process (``root`` prefixes the /proc and
    cgroup paths read: tests point it at fake trees)."""
    return _host(root) + _cgroup_limits(root) + _rlimits(root)


def available(root: str = "/") -> Limit | None:
    """The tightest limit (None when none can be read, e.g. not on Linux)."""
    found = limits(root)
    return min(found, key=lambda lim: lim.available) if found else None


def require(nbytes: int, what: str | Callable[[], str], *, root: str = "/") -> None:
    """Raise ``MemoryError`` before allocating ``nbytes`` when they do not fit under the
    tightest memory limit (keeping :data:`HEADROOM` free). ``what`` (or a callable that
    returns it, so the message costs nothing when it is not needed) names what is being
    allocated: the model, its sizes and the part."""
    nbytes = int(nbytes)
    if nbytes < SMALL:
        return
    lim = available(root)
    if lim is None or nbytes + HEADROOM <= lim.available:
        return
    name = what() if callable(what) else what
    reserve = (f"; {human(HEADROOM)} of it is kept in reserve"
               if nbytes <= lim.available else "")
    raise MemoryError(
        f"{name}: needs {human(nbytes)} ({nbytes} bytes) but only {human(lim.available)} "
        f"is available ({lim.source}{reserve})")


def check_blas_dim(value: int, name: str) -> None:
    """ValueError when a GEMM dimension exceeds the BLAS's 32-bit integers."""
    if value > BLAS_INT_MAX:
        raise ValueError(f"{name}={value} exceeds the BLAS's 32-bit limit (2**31-1 = "
                         f"{BLAS_INT_MAX}; scipy-openblas32 takes 32-bit integers)")


# ----------------------------------------------------------------------------- estimates
# Peak temporaries of drawing one weight matrix of `rows x cols` (gc.init: float64 draws,
# cast into the model's memory without a temporary), in float64 matrices of that size.
# Measured (peak RSS of the construction less the flat buffers, tests/test_memory.py
# checks the bound): uniform/normal draws 1.0; identity 1.0-2.0 (np.eye, then the gain:
# NumPy elides the second temporary only sometimes); orthogonal 4.9-6.1 (the Gaussian
# matrix, QR's own copies of it, Q, R and the sign/gain products).
_INIT_TEMPORARIES = {"orthogonal": 7.0, "identity": 2.0}


def init_bytes(scheme: str, rows: int, cols: int) -> int:
    """Upper bound on the temporary bytes of initialising one ``rows x cols`` weight."""
    factor = _INIT_TEMPORARIES.get(scheme, 1.0)
    return int(factor * 8 * rows * cols) + 64 * 8 * (rows + cols)  # + LAPACK's work


def mlp_bytes(sizes: list[int], norm: str | None, bias: bool, itemsize: int,
              init: str) -> int:
    """Upper bound on the peak bytes of building ``gc.MLP(sizes, ...)``: the core's flat
    parameter + gradient (+ running statistics) buffers, zero-filled at once, its batch
    statistics, then the largest layer's initialisation temporaries."""
    hidden = sizes[1:-1]
    n_params = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:],
                                                              strict=False))
    n_buffers = 0
    if norm in ("batch", "layer"):
        n_params += 2 * sum(hidden)
    if norm == "batch":
        n_buffers = 2 * sum(hidden)
    stats = 2 * len(hidden) * max(sizes) * 8 if norm == "batch" else 0
    core = (2 * n_params + n_buffers) * itemsize + stats
    draw = max(init_bytes(init, b, a) for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return core + draw


def rnn_bytes(input_size: int, hidden_size: int, output_size: int, bias: bool,
              itemsize: int, init: str, input_init: str) -> int:
    """Upper bound on the peak bytes of building ``gc.RNN(...)`` (flat buffers, then the
    largest weight's initialisation temporaries)."""
    H, I_, K = hidden_size, input_size, output_size
    n_params = H * I_ + H * H + K * H + ((2 * H + K) if bias else 0)
    draw = max(init_bytes(input_init, H, I_), init_bytes(init, H, H),
               init_bytes("torch_default", K, H) if K else 0)
    return 2 * n_params * itemsize + draw


def gated_bytes(gates: int, input_size: int, hidden_size: int, output_size: int, bias: bool,
                itemsize: int, init: str, input_init: str) -> int:
    """Upper bound on the peak bytes of building ``gc.LSTM(...)`` (``gates=4``) or
    ``gc.GRU(...)`` (``gates=3``): the flat buffers, then the largest weight block's
    initialisation temporaries (each gate block is drawn on its own)."""
    H, I_, K, G = hidden_size, input_size, output_size, gates
    n_params = G * H * (I_ + H) + K * H + ((2 * G * H + K) if bias else 0)
    draw = max(init_bytes(input_init, H, I_), init_bytes(init, H, H),
               init_bytes("torch_default", K, H) if K else 0) + 8 * G * H * max(I_, H)
    return 2 * n_params * itemsize + draw
