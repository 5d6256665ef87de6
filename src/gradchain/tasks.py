"""Synthetic tasks for experiments."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import model_dtype, positive_int

__all__ = ["adding_problem"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def adding_problem(T: int, n: int, seed: int | None = None,
                   dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; the IRNN benchmark of Le et al.).

    Each of the ``n`` sequences has ``T`` steps of 2 features: a value drawn from
    ``U(0, 1)`` and a marker that is 1 at exactly two steps (one in the first half,
    one in the second) and 0 elsewhere. The target is the sum of the two marked
    values, so the answer depends on inputs up to ``T`` steps back.

    Returns ``x (T, n, 2)`` (time-major, as ``gc.RNN`` takes it) and the mse target
    ``(n, 1)`` for ``loss_and_grad(..., on="last")`` with ``output_size=1``. Predicting
    the mean (1.0) gives an MSE of about 1/6: that is the baseline to beat.
    """
    T_ = positive_int(T, "T", minimum=2)
    n_ = positive_int(n, "n")
    dt = model_dtype(dtype)
    if seed is not None:
        seed = positive_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(T_, n_))
    markers = np.zeros((T_, n_))
    half = T_ // 2
    first = rng.integers(0, half, size=n_)
    second = rng.integers(half, T_, size=n_)
    cols = np.arange(n_)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=2).astype(dt)
    y = (values[first, cols] + values[second, cols]).reshape(n_, 1).astype(dt)
    return x, y
