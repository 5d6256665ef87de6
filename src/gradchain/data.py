"""Small datasets for training experiments: the UCI digits (bundled with
scikit-learn, no download), a random-teacher regression task and the RNN adding
problem. Every loader returns NumPy arrays in the dtype asked for (features) and
int64 class labels, ready for :func:`gradchain.train`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import activations as _acts
from ._validate import check_bool, model_dtype, positive_int, real

__all__ = ["digits", "teacher", "adding", "ADDING_BASELINE_MSE"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _seed(seed: Any) -> int | None:
    return None if seed is None else positive_int(seed, "seed", minimum=0)


def digits(test_size: float = 0.25, seed: int | None = 0, standardize: bool = True,
           dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits (1797 images, 10 classes; ``sklearn.datasets.load_digits``,
    bundled with scikit-learn, so nothing is downloaded), split into train and test.

    Parameters
    ----------
    test_size : float in (0, 1)
        Fraction of the samples held out (stratified by class, as
        ``sklearn.model_selection.train_test_split(stratify=y)``).
    seed : int or None
        Makes the split reproducible.
    standardize : bool
        Scale every pixel to zero mean and unit variance with the training split's
        statistics (pixels constant on the training split are only centred); else the
        raw values 0..16.
    dtype : np.float32 or np.float64

    Returns
    -------
    x_train (N_train, 64), y_train (N_train,) int64, x_test (N_test, 64), y_test (N_test,) int64

    Raises
    ------
    ImportError
        scikit-learn is missing (the optional extra ``data``).
    """
    ts = real(test_size, "test_size")
    if not 0.0 < ts < 1.0:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size}")
    seed_ = _seed(seed)
    std = check_bool(standardize, "standardize")
    dt = model_dtype(dtype)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            'gc.data.digits needs scikit-learn: pip install "gradchain[data]"') from e
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=ts, random_state=seed_,
                                              stratify=y)
    if std:
        mu = x_tr.mean(axis=0)
        sd = x_tr.std(axis=0)
        sd[sd == 0] = 1.0
        x_tr = (x_tr - mu) / sd
        x_te = (x_te - mu) / sd
    return (np.ascontiguousarray(x_tr, dtype=dt), np.ascontiguousarray(y_tr, dtype=np.int64),
            np.ascontiguousarray(x_te, dtype=dt), np.ascontiguousarray(y_te, dtype=np.int64))


def teacher(n: int = 1024, sizes: Sequence[int] = (32, 64, 1),
            activation: str | _acts.Activation = "tanh", noise: float = 0.0,
            seed: int | None = 0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A regression task from a random teacher network.

    ``x ~ N(0, 1)`` of shape ``(n, sizes[0])``; the teacher is ``gc.MLP(sizes,
    activation, init="kaiming_normal")`` (gain of the activation, so the signal
    neither dies nor saturates across its layers) drawn from ``seed``; its outputs
    are standardised to zero mean and unit variance per output, then
    ``noise * N(0, 1)`` is added. Predicting 0 therefore scores an MSE of about
    ``1 + noise**2``; the teacher itself scores ``noise**2``.

    Returns
    -------
    x (n, sizes[0]), y (n, sizes[-1]), both in ``dtype`` (an ``mse`` target).
    """
    from .models import MLP

    n_ = positive_int(n, "n", minimum=2)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence | np.ndarray):
        raise TypeError(f"sizes: expected a list of ints [in, hidden..., out], got {sizes!r}")
    sz = [positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
    if len(sz) < 2:
        raise ValueError(f"sizes: expected at least [in, out], got {sz}")
    act = _acts.resolve(activation)
    nz = real(noise, "noise", minimum=0.0)
    seed_ = _seed(seed)
    dt = model_dtype(dtype)
    rng = np.random.default_rng(seed_)
    net = MLP(sz, activation=act, init="kaiming_normal", dtype=np.float64,
              seed=int(rng.integers(2**31)))
    x = rng.normal(size=(n_, sz[0]))
    y = np.asarray(net.forward(x), dtype=np.float64)
    sd = y.std(axis=0)
    sd[~(sd > 0)] = 1.0
    y = (y - y.mean(axis=0)) / sd
    if nz > 0:
        y = y + nz * rng.normal(size=y.shape)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):  # pragma: no cover
        raise ValueError(f"teacher: the teacher network overflowed (sizes={sz}); "
                         "use fewer or narrower layers")
    return np.ascontiguousarray(x, dtype=dt), np.ascontiguousarray(y, dtype=dt)


def adding(T: int, n: int, seed: int | None = 0,
           dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015's IRNN task),
    the package's one door to it (``gc.tasks.adding_problem`` is the same task under
    its older name, with ``seed=None`` by default).

    Each of the ``n`` sequences has ``T`` steps of 2 features: a value drawn from
    ``U(0, 1)`` and a marker that is 1 at exactly two steps (one in the first half,
    one in the second) and 0 elsewhere. The target is the sum of the two marked
    values, so the answer depends on inputs up to ``T`` steps back.

    Returns ``x (T, n, 2)`` (time-major, as ``gc.RNN`` takes it) and the mse target
    ``(n, 1)``: train an ``gc.RNN(2, H, output_size=1)`` with ``loss="mse"``,
    ``on="last"``. Predicting the mean (1.0) scores about ``1/6 ~ 0.167``
    (:data:`ADDING_BASELINE_MSE`): that is the baseline to beat. ``seed=None`` draws
    afresh."""
    return _adding(T, n, _seed(seed), dtype)


def _adding(T: Any, n: Any, seed: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`adding` itself (also ``gc.tasks.adding_problem``'s): T, n, dtype and seed
    checked in that order."""
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


#: MSE of always predicting 1 on the adding problem: Var(U1 + U2) = 2/12
ADDING_BASELINE_MSE = 1.0 / 6.0
