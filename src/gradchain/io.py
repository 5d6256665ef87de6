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

from . import models as _models
from ._memory import require
from ._validate import check_bool, first_nonfinite
from .models import ConfigReader, Model

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
        names = spec.tensors
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
    if spec.cls.has_modes:
        model.train(spec.training)
    model.invalidate()
    return model


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
_READER = ConfigReader(error=_Bad)  # the models' config checks, raising _Bad
_short = _READER.short
_first = _READER.first


class _Spec:
    """A validated config: the model class, its constructor arguments and the tensors
    they imply (the class checks its own keys: ``Model.read_config``)."""

    cls: type[Model]
    kwargs: dict[str, Any]
    training: bool
    tensors: dict[str, tuple[int, ...]]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.kwargs["dtype"])

    @classmethod
    def from_config(cls, cfg: dict[str, Any], activation: Any, n_members: int) -> _Spec:
        s = cls()
        if cfg.get("format") != _FORMAT:
            raise _Bad(f"unsupported gradchain file format {_short(cfg.get('format'))} "
                       f"(this version reads format {_FORMAT})")
        kind = cfg.get("kind")
        by_kind = _models.config_kinds()
        model_cls = by_kind.get(kind) if isinstance(kind, str) else None
        if model_cls is None:
            known = " or ".join(map(repr, by_kind))
            raise _Bad(f"config: unknown model kind {_short(kind)} (expected {known})")
        s.cls = model_cls
        s.kwargs = model_cls.read_config(cfg, _READER, activation, n_members)
        s.training = _READER.flag(cfg.get("training", True), "training")
        s.tensors = model_cls.tensor_shapes(s.kwargs)
        return s

    def nbytes(self, names: dict[str, tuple[int, ...]]) -> int:
        """What loading allocates: parameters + gradients + buffers in the model's dtype,
        plus the construction's float64 initial draw of the largest tensor (x3 for the
        orthogonal scheme's QR) and one staging copy of it."""
        sizes = [math.prod(s) for s in names.values()]
        biggest = max(sizes, default=0)
        return (2 * sum(sizes) * self.dtype.itemsize + biggest * (3 * 8 + self.dtype.itemsize))

    def describe(self) -> str:
        return self.cls.describe_config(self.kwargs)

    def build(self) -> Any:
        try:
            return self.cls(**self.kwargs)
        except (TypeError, ValueError) as e:
            raise _Bad(f"malformed gradchain config ({e})") from None


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
    """Read every array into the new model's memory (its state dict's views), checking
    CRCs and finiteness."""
    views = model.state_dict()
    for key, h in headers.items():
        what = f"array {key!r}"
        try:
            with _open(zf, members[key]) as m:
                _read_member(m, h.hlen, what)
                counter = key.endswith("num_batches_tracked")
                target = None if counter else views[key]
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
            views[key][...] = v  # the counter's 0-d view
            continue
        if not direct:
            assert staged is not None and target is not None
            if h.fortran:
                staged = staged.reshape(h.shape[::-1]).T
            target[...] = staged
        if not allow_nonfinite and first_nonfinite(target) is not None:
            raise _Bad(f"state_dict[{key!r}] contains NaN or Inf (pass allow_nonfinite=True "
                       "to load it anyway)")
