"""Input checks at the Python boundary: run before any state is touched."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def shape_str(shape: tuple[Any, ...]) -> str:
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(s) for s in shape) + ")"


def as_array(x: Any, name: str) -> np.ndarray:
    """An ndarray view of x (no copy for arrays; array-likes are converted as NumPy would)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        return np.asarray(x.detach().cpu().numpy())
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name}: cannot be read as an array ({e})") from None


def float_array(
    x: Any, name: str, dtype: np.dtype, shape: tuple[int | str | None, ...], *,
    finite: bool = True
) -> np.ndarray:
    """Check dtype (exactly `dtype`, no silent cast), shape and finiteness; return a
    C-contiguous array (copied once, only when needed). In `shape` an int is a fixed
    size, a str names a free axis of size >= 1 (None means "B")."""
    a = as_array(x, name)
    if a.dtype != dtype:
        hint = f"; convert explicitly with {name}.astype(np.{dtype.name})" if (
            a.dtype.kind in "fiub") else ""
        raise TypeError(
            f"{name}: expected dtype {dtype.name}, got {a.dtype} (gradchain does not cast "
            f"silently){hint}"
        )
    spec = tuple("B" if s is None else s for s in shape)
    want = shape_str(spec)
    fixed = [(i, s) for i, s in enumerate(spec) if not isinstance(s, str)]
    if a.ndim != len(spec) or any(a.shape[i] != s for i, s in fixed):
        raise ValueError(f"{name}: expected shape {want}, got {shape_str(a.shape)}")
    if a.size == 0:
        free = ", ".join(s for s in spec if isinstance(s, str)) or "every size"
        raise ValueError(f"{name}: expected shape {want} with {free} >= 1, "
                         f"got {shape_str(a.shape)}")
    if finite and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(
            f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})"
        )
    return np.ascontiguousarray(a)


def positive_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def real(v: Any, name: str, *, minimum: float | None = None, allow_inf: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    f = float(v)
    if math.isnan(f) or (not allow_inf and math.isinf(f)):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if minimum is not None and f < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {v}")
    return f


def model_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        raise TypeError("dtype: expected float32 or float64, got None")
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if d not in _FLOATS:
        raise TypeError(f"dtype: expected float32 or float64, got {d}")
    return d


def check_bool(v: Any, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
    return bool(v)


def available_memory() -> int | None:
    """Bytes the kernel reports as available (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(nbytes: int, what: str) -> None:
    """MemoryError before anything is touched when `nbytes` cannot fit in memory."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.1f} GiB, but only {avail / 2**30:.1f} GiB "
            "of memory is available")
