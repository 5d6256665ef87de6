"""Saving and loading models as ``.npz`` files (state dict + a JSON config).

A file is a zip archive of ``.npy`` members, one per state-dict entry (PyTorch's names),
plus ``__gradchain_config__.npy``: the model's :meth:`config` as UTF-8 JSON bytes.

``save`` writes through symbolic links to their final target, refuses anything at the
path that is not a regular file, and replaces the target atomically (a temporary file
in the target's folder, fsync, rename, fsync of the folder). A new file gets the mode
the umask gives (``0o666 & ~umask``, as ``open()`` / ``np.savez`` / ``torch.save``); an
existing file keeps its mode.

``load`` treats the file as untrusted: it checks the archive (member names, sizes,
encryption, compression ratio), the config (known keys, types, ranges, nesting depth,
string lengths) and every array header (dtype, shape, byte count) against what the
config implies *before* it allocates anything, then reads each member with a size cap
straight into the new model. Every malformed file is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import io as _io
import json
import math
import os
import re
import secrets
import stat
import warnings
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from . import activations as _acts
from . import init as _init
from ._memory import require
from ._validate import check_bool, first_nonfinite

__all__ = ["save", "load"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


_META = "__gradchain_config__"
_FORMAT = 1

# Bounds for untrusted files (a real config is a few KB; 10k layers ~ 150 KB).
_MAX_CONFIG_BYTES = 16 << 20
_MAX_DEPTH = 4              # the config nests objects and lists 3 deep
_MAX_STR = 4096             # longest string in a config (an activation's name)
_MAX_HEADER = 10_000        # longest .npy header (NumPy's own limit)
_MAX_WIDTH = 1 << 31        # a layer width / RNN size past this is not a model
# np.savez stores members uncompressed; a deflated archive (np.savez_compressed) is
# accepted when it expands at most this much overall (plus a small allowance): float
# weights barely compress, so more than that is a zip bomb, not a model.
_MAX_RATIO = 20
_RATIO_ALLOWANCE = 1 << 20
_CHUNK = 1 << 22            # bytes read from a member at a time
_MAX_LINKS = 40             # symbolic links followed by save (the kernel's limit)


# =========================================================================== save
def save(model: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s config and state dict to ``path`` (.npz), atomically.

    A symbolic link is followed to its final target (a dangling link creates the file
    it points to), and the target is replaced by a rename from a temporary file in its
    own folder, so a reader sees either the old file or the new one, never half of
    either. Anything at the path that is not a regular file (a directory, a FIFO, a
    device, a socket) is refused before it is opened. A new file gets the mode the
    umask allows (as ``open``); an existing file keeps its mode (and, where allowed,
    its owner).
    """
    if not hasattr(model, "state_dict") or not hasattr(model, "config"):
        raise TypeError(f"model: expected a gradchain model, got {type(model).__name__}")
    try:
        name = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path: expected a file path, got {type(path).__name__}") from None
    target, st = _resolve_target(name)
    cfg = model.config()
    cfg["format"] = _FORMAT
    # a consistent snapshot (copied under the model's lock, checked against the memory limit)
    arrays = dict(model.state_dict(copy=True))
    arrays[_META] = np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)
    _atomic_write(target, st, lambda f: np.savez(f, **arrays))


_KINDS = [(stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket")]


def _resolve_target(path: str) -> tuple[str, os.stat_result | None]:
    """Follow symbolic links from ``path`` to the file they name; returns that path and
    its stat (None if it does not exist yet). Refuses non-regular files."""
    p = path
    for _ in range(_MAX_LINKS + 1):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return p, None  # a new file (or a dangling link's target)
        if stat.S_ISLNK(st.st_mode):
            p = os.path.join(os.path.dirname(p), os.readlink(p))
            continue
        if stat.S_ISREG(st.st_mode):
            return p, st
        via = f" (the target of {path!r})" if p != path else ""
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "special file")
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(
                errno.EISDIR, f"gc.save: the path{via} is a directory, not a file", p)
        raise ValueError(f"path: {p!r}{via} is a {kind}, not a regular file; gc.save "
                         "writes only regular files (and never opens this one)")
    raise OSError(errno.ELOOP, "gc.save: too many levels of symbolic links", path)


def _atomic_write(target: str, st: os.stat_result | None,
                  write: Callable[[BinaryIO], None]) -> None:
    folder = os.path.dirname(target) or "."
    tmp = ""
    try:
        fd, tmp = _create_temp(folder, os.path.basename(target))
        with os.fdopen(fd, "wb") as f:
            if st is not None:  # keep the replaced file's owner (if allowed) and mode
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(OSError):
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = ""
        _fsync_dir(folder)
    except BaseException as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and tmp and tmp in (
                e.filename, e.filename2):
            # name the file the caller asked for, not our hidden temporary
            raise type(e)(e.errno, e.strerror, target) from None
        raise


def _create_temp(folder: str, name: str) -> tuple[int, str]:
    """A new hidden file in ``folder``, created with mode 0o666 so that the umask (and a
    default ACL) applies as for any new file (mkstemp would force 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(
        os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise type(e)(e.errno, e.strerror, os.path.join(folder, name)) from None
    raise FileExistsError(errno.EEXIST, "gc.save: no free temporary name",
                          os.path.join(folder, name))


def _fsync_dir(folder: str) -> None:
    """Make the rename durable. Filesystems that cannot fsync a folder are skipped."""
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(dfd)


# =========================================================================== load
class _Bad(Exception):
    """A malformed file; ``load`` reports it as ValueError naming the file."""


def load(
    path: str | os.PathLike[str] | BinaryIO, activation: Any = None,
    allow_nonfinite: bool = False
) -> Any:
    """Rebuild a model saved by :func:`save`.

    A custom activation cannot be stored: pass it again as ``activation=``. The file is
    treated as untrusted: its config and every array header are checked against each
    other before anything is allocated, and members are read with a size cap, so a
    forged or corrupted file (truncated, bit-flipped, a zip bomb, an encrypted or
    pickled member, a config describing a model the file does not hold) raises
    ``ValueError`` naming the file, quickly and without allocating what it claims.
    Nothing half-loaded is ever returned. A missing file is ``FileNotFoundError``;
    ``allow_nonfinite=True`` loads a diverged model (NaN/Inf parameters).
    """
    allow_nonfinite = check_bool(allow_nonfinite, "allow_nonfinite")
    if hasattr(path, "read"):
        label = str(getattr(path, "name", None) or type(path).__name__)
        return _load(path, label, activation, allow_nonfinite)  # type: ignore[arg-type]
    try:
        fname = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"path: expected a file path, got {type(path).__name__}") from None
    try:
        st = os.stat(fname)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block open() below
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "special file")
            raise ValueError(f"{fname}: cannot read gradchain model file (a {kind}, not a "
                             "regular file)")
        f = open(fname, "rb")  # noqa: SIM115  (closed by the with below)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{fname}: cannot read gradchain model file ({e})") from e
    with f:
        return _load(f, fname, activation, allow_nonfinite)


def _load(f: BinaryIO, label: str, activation: Any, allow_nonfinite: bool) -> Any:
    try:
        return _load_checked(f, label, activation, allow_nonfinite)
    except _Bad as e:
        raise ValueError(f"{label}: {e}") from None


# Whatever a corrupted archive makes zipfile raise while reading (BadZipFile for a bad
# CRC or header, EOFError / OSError for a truncated one, zlib.error, NotImplementedError
# for an unknown flag, ...).
_UNREADABLE = (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError, KeyError, IndexError, OverflowError, UnicodeDecodeError)


def _load_checked(f: BinaryIO, label: str, activation: Any, allow_nonfinite: bool) -> Any:
    try:
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
        f.seek(0)
        zf = zipfile.ZipFile(f)
    except _UNREADABLE as e:
        with contextlib.suppress(*_UNREADABLE):
            f.seek(0)
            if f.read(6) == b"\x93NUMPY":
                raise _Bad("not a gradchain model file (a single .npy array, not an .npz "
                           "archive)") from None
        what = "not an .npz archive" if isinstance(e, zipfile.BadZipFile) else "unreadable"
        raise _Bad(f"cannot read gradchain model file ({what}: {e})") from None
    with zf:
        members = _check_archive(zf, file_size)
        meta = members.pop(_META, None)
        if meta is None:
            raise _Bad("not a gradchain model file (no config entry "
                       f"{_META!r}; members {_first(list(members))})")
        cfg = _read_config(zf, meta, n_members=len(members))
        spec = _Spec.from_config(cfg, activation, n_members=len(members))
        names = spec.tensors()
        missing = [k for k in names if k not in members]
        unexpected = [k for k in members if k not in names]
        if missing or unexpected:
            parts = ([f"missing {_first(missing)}"] if missing else []) + (
                [f"unexpected {_first(unexpected)}"] if unexpected else [])
            raise _Bad(f"the arrays do not match the config ({'; '.join(parts)})")
        headers = {k: _read_header(zf, members[k], k, shape, spec.dtype)
                   for k, shape in names.items()}
        require(spec.nbytes(names), f"gc.load: the {spec.describe()}")
        model = spec.build()
        _fill(model, zf, members, headers, allow_nonfinite)
    if spec.kind == "MLP":
        model.train(spec.training)
    model._core.invalidate()
    return model


def _first(names: list[str], n: int = 5) -> str:
    """The first n names, and how many there are in all when that is more."""
    shown = ", ".join(repr(k[:100]) for k in names[:n])
    return f"[{shown}]" if len(names) <= n else f"[{shown}, ...] ({len(names)} in all)"


def _check_archive(zf: zipfile.ZipFile, file_size: int) -> dict[str, zipfile.ZipInfo]:
    """Member name (without .npy) -> ZipInfo, after checking what the central directory
    says against the file: unique .npy names, no encryption, known compression, every
    member's bytes inside the file, a sane overall compression ratio."""
    out: dict[str, zipfile.ZipInfo] = {}
    packed = unpacked = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise _Bad(f"not a gradchain model file (member {name[:100]!r} is not a .npy "
                       "array)")
        key = name[:-4]
        if key in out:
            raise _Bad(f"member {name[:100]!r} appears twice in the archive")
        if info.flag_bits & 0x1:
            raise _Bad(f"member {name[:100]!r} is encrypted (gradchain files never are)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Bad(f"member {name[:100]!r} uses compression method "
                       f"{info.compress_type} (gradchain reads stored or deflated members)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise _Bad(f"member {name[:100]!r}: stored, yet its sizes differ "
                       f"({info.compress_size} vs {info.file_size} bytes)")
        if info.header_offset + 30 + info.compress_size > file_size:
            raise _Bad(f"member {name[:100]!r} claims {info.compress_size} bytes past the "
                       f"end of the file ({file_size} bytes): truncated or forged")
        packed += info.compress_size
        unpacked += info.file_size
        out[key] = info
    if unpacked > _MAX_RATIO * packed + _RATIO_ALLOWANCE:
        raise _Bad(f"the archive would expand {unpacked} bytes from {packed} (more than "
                   f"{_MAX_RATIO}:1): a zip bomb, not a model")
    return out


def _read_member(m: Any, n: int, what: str, into: memoryview | None = None) -> bytes:
    """Read exactly ``n`` bytes from an open member, in chunks (into ``into`` when
    given), never more: a member that inflates past its declared size is cut there
    and then fails its CRC."""
    parts: list[bytes] = []
    pos = 0
    while pos < n:
        chunk = m.read(min(_CHUNK, n - pos))
        if not chunk:
            raise _Bad(f"{what}: the member ends after {pos} of {n} bytes")
        if into is not None:
            into[pos:pos + len(chunk)] = chunk
        else:
            parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def _open(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    try:
        return zf.open(info)
    except _UNREADABLE as e:
        raise _Bad(f"cannot read gradchain model file (member {info.filename[:100]!r}: "
                   f"{e})") from None


def _npy_header(m: Any, what: str) -> tuple[int, tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header from an open member, reading at most the header's bytes.
    Returns (header length in bytes, shape, fortran_order, dtype)."""
    lead = _read_member(m, 10, what)
    if lead[:6] != b"\x93NUMPY":
        raise _Bad(f"{what}: not a .npy array")
    major = lead[6]
    if major not in (1, 2):
        raise _Bad(f"{what}: unsupported .npy format version {major}.{lead[7]}")
    size_bytes = lead[8:10] if major == 1 else lead[8:10] + _read_member(m, 2, what)
    hlen = int.from_bytes(size_bytes, "little")
    if hlen > _MAX_HEADER:
        raise _Bad(f"{what}: .npy header of {hlen} bytes (at most {_MAX_HEADER})")
    header = _read_member(m, hlen, what)
    fast = _CANONICAL.fullmatch(header)
    if fast is not None:  # what np.save writes: parsed here, 10x faster than literal_eval
        dtype = _DESCR.get(fast[1]) or np.dtype(fast[1].decode())
        fortran = fast[2] == b"True"
        shape = tuple(int(d) for d in fast[3].split(b",") if d.strip())
    else:
        reader = (np.lib.format.read_array_header_1_0 if major == 1
                  else np.lib.format.read_array_header_2_0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NumPy warns about Python 2 era headers
                shape, fortran, dtype = reader(_io.BytesIO(size_bytes + header),
                                               max_header_size=_MAX_HEADER)
        except Exception as e:  # noqa: BLE001  (literal_eval, descr_to_dtype: anything)
            raise _Bad(f"{what}: bad .npy header ({str(e).splitlines()[0][:200]})") from None
    if dtype.hasobject:
        raise _Bad(f"{what}: holds Python objects (pickled data); a gradchain model file "
                   "holds numbers only, and gc.load never unpickles")
    return 6 + 2 + len(size_bytes) + hlen, tuple(shape), bool(fortran), dtype


# The header np.save writes for a plain numeric array, e.g.
# {'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }  + spaces + newline
_CANONICAL = re.compile(rb"\{'descr': '([<>|=][fiub][1248])', 'fortran_order': (True|False), "
                        rb"'shape': \(((?:[0-9]{1,19}, ?)*[0-9]{0,19})\), \} *\n")
_DESCR = {d.encode(): np.dtype(d) for d in ("<f4", "<f8", "<i8", "|u1")}


def _read_config(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n_members: int) -> dict[str, Any]:
    what = f"config entry {_META!r}"
    # a real config takes under 30 bytes per layer, and each layer has an array: a
    # config much larger than the archive's array count describes a model it lacks
    limit = min(_MAX_CONFIG_BYTES, (64 << 10) + 64 * n_members)
    if info.file_size > limit:
        raise _Bad(f"{what} of {info.file_size} bytes is too large for an archive of "
                   f"{n_members} arrays (at most {limit} bytes)")
    try:
        with _open(zf, info) as m:
            hlen, shape, _, dtype = _npy_header(m, what)
            n = info.file_size - hlen
            if dtype != np.uint8 or shape != (n,):
                raise _Bad(f"{what}: expected {n} bytes (uint8), got {dtype} shape {shape}")
            raw = _read_member(m, n, what)
    except _UNREADABLE as e:
        raise _Bad(f"cannot read gradchain model file ({what}: {e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"{what} is not UTF-8 text ({e})") from None
    depth = _json_depth(text)
    if depth > _MAX_DEPTH:
        raise _Bad(f"{what} nests {depth} levels deep (at most {_MAX_DEPTH})")

    def no_constants(c: str) -> Any:
        raise _Bad(f"{what} contains {c} (a config holds finite numbers only)")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise _Bad(f"{what} repeats a key")
        return d

    try:
        cfg = json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int digits limit
        raise _Bad(f"{what} is not valid JSON ({e})") from None
    _check_strings(cfg)
    if not isinstance(cfg, dict):
        raise _Bad(f"{what} is not a JSON object")
    return cfg


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _json_depth(text: str) -> int:
    """Deepest nesting of [ and { in a JSON text (strings skipped), in linear time and
    without recursion: json.loads would recurse once per level."""
    b = np.frombuffer(_STRING.sub('""', text).encode(), dtype=np.uint8)
    if not b.size:
        return 0
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(
        b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _check_strings(v: Any) -> None:
    """Every string (key or value) at most _MAX_STR characters (depth is already bounded)."""
    if isinstance(v, str):
        if len(v) > _MAX_STR:
            raise _Bad(f"config: a string of {len(v)} characters (at most {_MAX_STR})")
    elif isinstance(v, dict):
        for k, x in v.items():
            _check_strings(k)
            _check_strings(x)
    elif isinstance(v, list):
        for x in v:
            if isinstance(x, (str, dict, list)):
                _check_strings(x)


# --------------------------------------------------------------------- config checks
def _int(v: Any, name: str, lo: int = 1, hi: int = _MAX_WIDTH) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"config: {name} must be an int, got {_json_type(v)}")
    if not lo <= v <= hi:
        raise _Bad(f"config: {name} must be in [{lo}, {hi}], got {_short(v)}")
    return v


def _num(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"config: {name} must be a number, got {_json_type(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise _Bad(f"config: {name} must be finite, got {_short(v)}")
    return f


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"config: {name} must be true or false, got {_json_type(v)}")
    return v


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool",
            int: "an int", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_COMMON = {"kind", "format", "activation", "init", "bias", "dtype"}
_KEYS = {
    "MLP": (_COMMON | {"sizes", "norm", "residual", "residual_scale", "eps", "momentum"},
            {"training"}),
    "RNN": (_COMMON | {"input_size", "hidden_size", "output_size", "input_init",
                       "batch_first"}, set()),
}
_INIT_KEYS = {"normal": {"name", "gain", "sigma_w", "sigma_b"}}


class _Spec:
    """A validated config: the constructor arguments and the tensors they imply."""

    kind: str
    dtype: np.dtype
    training: bool
    bias: bool
    activation: _acts.Activation
    init: _init.Init
    # MLP
    sizes: list[int]
    norm: str | None
    residual: list[bool]
    residual_scale: float
    eps: float
    momentum: float
    # RNN
    input_size: int
    hidden_size: int
    output_size: int | None
    input_init: _init.Init
    batch_first: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any], activation: Any, n_members: int) -> _Spec:
        s = cls()
        if cfg.get("format") != _FORMAT:
            raise _Bad(f"unsupported gradchain file format {_short(cfg.get('format'))} "
                       f"(this version reads format {_FORMAT})")
        kind = cfg.get("kind")
        if kind not in _KEYS:
            raise _Bad(f"config: unknown model kind {_short(kind)} (expected 'MLP' or 'RNN')")
        required, optional = _KEYS[kind]
        missing = sorted(required - set(cfg))
        unknown = sorted(set(cfg) - required - optional)
        if missing or unknown:
            raise _Bad("malformed gradchain config ("
                       + "; ".join(([f"missing keys {missing}"] if missing else [])
                                   + ([f"unknown keys {_first(unknown)}"] if unknown else []))
                       + ")")
        s.kind = kind
        s.bias = _bool(cfg["bias"], "bias")
        if cfg["dtype"] not in ("float32", "float64"):
            raise _Bad(f"config: dtype must be 'float32' or 'float64', got {_short(cfg['dtype'])}")
        s.dtype = np.dtype(cfg["dtype"])
        s.activation = s._activation(cfg["activation"], activation)
        s.init = _init_from(cfg["init"], "init")
        s.training = True
        if kind == "MLP":
            sizes = cfg["sizes"]
            if not isinstance(sizes, list) or len(sizes) < 2:
                raise _Bad(f"config: sizes must be a list of at least 2 ints, got "
                           f"{_json_type(sizes)}" + (f" of {len(sizes)}" if isinstance(
                               sizes, list) else ""))
            if len(sizes) - 1 > n_members:  # one weight per layer at least: before any loop
                raise _Bad(f"config: sizes describes {len(sizes) - 1} layers, but the "
                           f"archive holds {n_members} arrays")
            s.sizes = [_int(v, f"sizes[{i}]") for i, v in enumerate(sizes)]
            L = len(sizes) - 2
            norm = cfg["norm"]
            if norm not in (None, "batch", "layer"):
                raise _Bad(f"config: norm must be null, 'batch' or 'layer', got {_short(norm)}")
            s.norm = norm
            res = cfg["residual"]
            if not isinstance(res, list) or len(res) != L:
                raise _Bad(f"config: residual must be a list of {L} bools (one per hidden "
                           f"layer), got {_json_type(res)}"
                           + (f" of {len(res)}" if isinstance(res, list) else ""))
            s.residual = [_bool(v, f"residual[{i}]") for i, v in enumerate(res)]
            s.residual_scale = _num(cfg["residual_scale"], "residual_scale")
            s.eps = _num(cfg["eps"], "eps")
            if s.eps <= 0:
                raise _Bad(f"config: eps must be > 0, got {s.eps}")
            s.momentum = _num(cfg["momentum"], "momentum")
            if not 0 <= s.momentum <= 1:
                raise _Bad(f"config: momentum must be in [0, 1], got {s.momentum}")
            s.training = _bool(cfg.get("training", True), "training")
        else:
            s.input_size = _int(cfg["input_size"], "input_size", hi=1 << 24)
            s.hidden_size = _int(cfg["hidden_size"], "hidden_size", hi=1 << 24)
            out = cfg["output_size"]
            s.output_size = None if out is None else _int(out, "output_size", hi=1 << 24)
            s.input_init = _init_from(cfg["input_init"], "input_init")
            s.batch_first = _bool(cfg["batch_first"], "batch_first")
        return s

    @staticmethod
    def _activation(a: Any, override: Any) -> _acts.Activation:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise _Bad(f"config: activation must be an object with a name, got {_short(a)}")
        custom = a.get("custom", False)
        if custom is not False and (custom is not True or set(a) != {"name", "custom"}):
            raise _Bad(f"config: bad custom activation entry {_short(a)}")
        if override is not None:
            return _acts.resolve(override)  # the caller's own errors stay TypeError etc.
        if custom:
            raise _Bad(f"the model was saved with the custom activation {a['name']!r}; "
                       "pass it again: gc.load(path, activation=gc.Activation.custom(f, df))")
        params = {k: v for k, v in a.items() if k != "name"}
        for k, v in params.items():
            _num(v, f"activation.{k}")
        try:
            return _acts.Activation(a["name"], **params)
        except (TypeError, ValueError) as e:
            raise _Bad(f"config: {e}") from None

    # ------------------------------------------------------------------ tensors
    def tensors(self) -> dict[str, tuple[int, ...]]:
        """State-dict name -> shape, in the model's order."""
        out: dict[str, tuple[int, ...]] = {}
        if self.kind == "MLP":
            sz = self.sizes
            for i, (a, b) in enumerate(zip(sz[:-1], sz[1:], strict=False)):
                out[f"layers.{i}.weight"] = (b, a)
                if self.bias:
                    out[f"layers.{i}.bias"] = (b,)
            if self.norm:
                for i, h in enumerate(sz[1:-1]):
                    names = ["weight", "bias"] + (
                        ["running_mean", "running_var", "num_batches_tracked"]
                        if self.norm == "batch" else [])
                    for n in names:
                        out[f"norms.{i}.{n}"] = () if n == "num_batches_tracked" else (h,)
        else:
            H, I_, K = self.hidden_size, self.input_size, self.output_size
            out["weight_ih_l0"] = (H, I_)
            out["weight_hh_l0"] = (H, H)
            if self.bias:
                out["bias_ih_l0"] = (H,)
                out["bias_hh_l0"] = (H,)
            if K:
                out["readout.weight"] = (K, H)
                if self.bias:
                    out["readout.bias"] = (K,)
        return out

    def nbytes(self, names: dict[str, tuple[int, ...]]) -> int:
        """What loading allocates: parameters + gradients + buffers in the model's dtype,
        plus the construction's float64 initial draw of the largest tensor (x3 for the
        orthogonal scheme's QR) and one staging copy of it."""
        sizes = [math.prod(s) for s in names.values()]
        biggest = max(sizes, default=0)
        return (2 * sum(sizes) * self.dtype.itemsize + biggest * (3 * 8 + self.dtype.itemsize))

    def describe(self) -> str:
        if self.kind == "MLP":
            from .models import _short_sizes
            return f"MLP with sizes {_short_sizes(self.sizes)} ({self.dtype.name})"
        return (f"RNN with input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"output_size={self.output_size} ({self.dtype.name})")

    def build(self) -> Any:
        from .models import MLP
        from .rnn import RNN

        try:
            if self.kind == "MLP":
                return MLP(self.sizes, activation=self.activation, init=self.init,
                           norm=self.norm, residual=self.residual,
                           residual_scale=self.residual_scale, bias=self.bias,
                           dtype=self.dtype, eps=self.eps, momentum=self.momentum)
            return RNN(self.input_size, self.hidden_size, activation=self.activation,
                       init=self.init, input_init=self.input_init, bias=self.bias,
                       output_size=self.output_size, dtype=self.dtype,
                       batch_first=self.batch_first)
        except (TypeError, ValueError) as e:
            raise _Bad(f"malformed gradchain config ({e})") from None


def _init_from(v: Any, name: str) -> _init.Init:
    if not isinstance(v, dict) or not isinstance(v.get("name"), str):
        raise _Bad(f"config: {name} must be an object with a name, got {_short(v)}")
    scheme = v["name"]
    if scheme not in _init.SCHEMES:
        raise _Bad(f"config: {name}: unknown scheme {_short(scheme)}")
    allowed = _INIT_KEYS.get(scheme, {"name", "gain"})
    unknown = sorted(set(v) - allowed)
    if unknown:
        raise _Bad(f"config: {name}: unknown keys {_first(unknown)} for {scheme!r}")
    for k, x in v.items():
        if k != "name" and not (k == "gain" and x is None):
            _num(x, f"{name}.{k}")
    try:
        return _init.from_config(v)
    except (TypeError, ValueError) as e:
        raise _Bad(f"config: {name}: {e}") from None


# ------------------------------------------------------------------ array headers, data
class _Header:
    __slots__ = ("hlen", "shape", "fortran", "dtype", "nbytes")

    def __init__(self, hlen: int, shape: tuple[int, ...], fortran: bool,
                 dtype: np.dtype) -> None:
        self.hlen, self.shape, self.fortran, self.dtype = hlen, shape, fortran, dtype
        self.nbytes = math.prod(shape) * dtype.itemsize


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                 shape: tuple[int, ...], dtype: np.dtype) -> _Header:
    what = f"array {key!r}"
    try:
        with _open(zf, info) as m:
            h = _Header(*_npy_header(m, what))
    except _UNREADABLE as e:
        raise _Bad(f"cannot read gradchain model file ({what}: {e})") from None
    if h.shape != shape:
        raise _Bad(f"{what}: expected shape {_shape(shape)} (from the config), got "
                   f"{_shape(h.shape)}")
    if key.endswith("num_batches_tracked"):
        if h.dtype.kind not in "iu" or h.dtype.itemsize > 8:
            raise _Bad(f"{what}: expected an integer counter, got dtype {h.dtype}")
    elif h.dtype.newbyteorder("=") != dtype or h.dtype.kind != "f":
        raise _Bad(f"{what}: expected dtype {dtype.name} (from the config), got {h.dtype}")
    if info.file_size != h.hlen + h.nbytes:
        raise _Bad(f"{what}: the archive says {info.file_size} bytes, its header "
                   f"{h.hlen + h.nbytes}")
    return h


def _shape(s: tuple[int, ...]) -> str:
    return f"({s[0]},)" if len(s) == 1 else "(" + ", ".join(map(str, s)) + ")"


def _fill(model: Any, zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo],
          headers: dict[str, _Header], allow_nonfinite: bool) -> None:
    """Read every array into the new model's memory, checking CRCs and finiteness."""
    params, buffers = model._params, model._buffers
    for key, h in headers.items():
        what = f"array {key!r}"
        try:
            with _open(zf, members[key]) as m:
                _read_member(m, h.hlen, what)
                counter = key.endswith("num_batches_tracked")
                target = None if counter else (params[key] if key in params else buffers[key])
                direct = target is not None and h.dtype == target.dtype and not (
                    h.fortran and len(h.shape) > 1)
                staged = None if direct else np.empty(h.shape, h.dtype)
                dest = target if direct else staged
                assert dest is not None
                _read_member(m, h.nbytes, what, memoryview(dest.reshape(-1)).cast("B"))
                if m.read(1):
                    raise _Bad(f"{what}: the member is longer than its header says")
        except _UNREADABLE as e:
            raise _Bad(f"cannot read gradchain model file ({what}: {e})") from None
        if counter:
            assert staged is not None
            v = int(staged.reshape(-1)[0])
            if not 0 <= v < 1 << 63:
                raise _Bad(f"{what}: counter {v} out of range")
            model._num_batches_tracked[int(key.split(".")[1])] = v
            continue
        if not direct:
            assert staged is not None and target is not None
            if h.fortran:
                staged = staged.reshape(h.shape[::-1]).T
            target[...] = staged
        if not allow_nonfinite and first_nonfinite(target) is not None:
            raise _Bad(f"state_dict[{key!r}] contains NaN or Inf (pass allow_nonfinite=True "
                       "to load it anyway)")
