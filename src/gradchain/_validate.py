"""Input checks at the Python boundary: run before any state is touched."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._memory import require

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


def _cast_hint(x: Any, a: np.ndarray, name: str, dtype: np.dtype) -> str:
    """How to convert `x` to `dtype`, in the words of its own type."""
    if a.dtype.kind not in "fiub":
        return ""
    if isinstance(x, np.ndarray):
        return f"; convert explicitly with {name}.astype(np.{dtype.name})"
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        return f"; convert explicitly with {name}.to(torch.{dtype.name})"
    return f"; convert explicitly with np.asarray({name}, dtype=np.{dtype.name})"


# Elements per block of the non-finite scan: its boolean temporaries stay this small
# whatever the input's size.
_SCAN_BLOCK = 1 << 18


def first_nonfinite(a: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN/Inf of float array `a` (C order), or None; allocates at
    most a block of booleans, whatever a's size. Axes of stride 0 (a broadcast input)
    hold one value repeated: only index 0 of them is read, so a broadcast array costs
    what its real memory does."""
    if a.size <= _SCAN_BLOCK:  # the common case: one vectorised pass
        if bool(np.isfinite(a).all()):
            return None
        return tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    real = a[tuple(slice(0, 1) if st == 0 else slice(None)
                   for st in a.strides)]
    return _scan(real)


def _scan(a: np.ndarray) -> tuple[int, ...] | None:
    if a.size <= _SCAN_BLOCK or a.ndim == 0:
        if bool(np.isfinite(a).all()):
            return None
        return tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    if a.ndim == 1:
        for i in range(0, a.shape[0], _SCAN_BLOCK):
            hit = _scan(a[i:i + _SCAN_BLOCK])
            if hit is not None:
                return (i + hit[0],)
        return None
    per_row = a.size // a.shape[0]
    rows = max(_SCAN_BLOCK // per_row, 1)
    for i in range(0, a.shape[0], rows):
        block = a[i:i + rows] if rows > 1 else a[i]
        hit = _scan(block)
        if hit is not None:
            return (i + hit[0], *hit[1:]) if rows > 1 else (i, *hit)
    return None


def contiguous(a: np.ndarray, name: str) -> np.ndarray:
    """`a` as a C-contiguous array: `a` itself when it is one, else a copy whose size
    is checked against the memory limit first."""
    if a.flags.c_contiguous:
        return a
    require(a.size * a.dtype.itemsize,
            lambda: f"{name}: a contiguous copy of shape {shape_str(a.shape)} ({a.dtype})")
    return np.ascontiguousarray(a)


def float_array(
    x: Any, name: str, dtype: np.dtype, shape: tuple[int | str | None, ...], *,
    finite: bool = True, copy: bool = True
) -> np.ndarray:
    """Check dtype (exactly `dtype`, no silent cast), shape and finiteness; return a
    C-contiguous array (copied once, only when needed, after checking that the copy
    fits in memory). In `shape` an int is a fixed size, a str names a free axis of
    size >= 1 (None means "B"). ``copy=False`` returns the checked array as it is (the
    caller checks its memory and calls :func:`contiguous`). The checks allocate no more
    than a small block, whatever the size of `x` (a broadcast input included)."""
    a = as_array(x, name)
    if a.dtype != dtype:
        hint = _cast_hint(x, a, name, dtype)
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
    if finite:
        bad = first_nonfinite(a)
        if bad is not None:
            raise ValueError(f"{name} contains NaN or Inf (first at index {bad})")
    return contiguous(a, name) if copy else a


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

