"""Synthetic tasks for experiments: the adding problem under its older name.

The one door to the adding problem is :func:`gradchain.data.adding` (docs/API.md);
:func:`adding_problem` here is the same task and the same numbers, kept so that code
written against it keeps working.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import data as _data

__all__ = ["adding_problem"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def adding_problem(T: int, n: int, seed: int | None = None,
                   dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem: an alias of :func:`gradchain.data.adding` (see there), whose
    ``seed`` defaults to None (a fresh draw) where ``gc.data.adding``'s is 0; the same
    seed gives the same arrays from both.

    Returns ``x (T, n, 2)`` (time-major) and the mse target ``(n, 1)``.
    """
    return _data._adding(T, n, seed, dtype)
