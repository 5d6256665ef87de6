"""gc.data: the digits split (checked against scikit-learn's raw data), the teacher
task (a linear teacher is recovered exactly by least squares), the adding problem
(the wrapped task, its 1/6 baseline) and argument checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gradchain as gc


def test_digits_split_shapes_dtypes_and_classes():
    xtr, ytr, xte, yte = gc.data.digits()
    assert xtr.shape == (1347, 64) and xte.shape == (450, 64)
    assert ytr.shape == (1347,) and yte.shape == (450,)
    assert xtr.dtype == np.float32 and xte.dtype == np.float32
    assert ytr.dtype == np.int64 and yte.dtype == np.int64
    # stratified: every class in both splits, about a quarter of each held out
    counts_te = np.bincount(yte, minlength=10)
    counts_all = counts_te + np.bincount(ytr, minlength=10)
    assert np.all(np.abs(counts_te / counts_all - 0.25) < 0.02)
    assert xtr.flags.c_contiguous and xte.flags.c_contiguous


def test_digits_are_the_sklearn_images():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    raw = load_digits()
    xtr, ytr, xte, yte = gc.data.digits(standardize=False, dtype=np.float64, test_size=0.2)
    x = np.concatenate([xtr, xte])
    y = np.concatenate([ytr, yte])
    assert len(x) == len(raw.data) and len(xte) == 360
    # the same multiset of (image, label) rows, nothing lost or duplicated
    ours = sorted(map(tuple, np.column_stack([x, y]).tolist()))
    theirs = sorted(map(tuple, np.column_stack([raw.data, raw.target]).tolist()))
    assert ours == theirs
    assert x.min() == 0 and x.max() == 16


def test_digits_standardized_with_training_statistics():
    xtr, _, xte, _ = gc.data.digits(dtype=np.float64)
    raw_tr, _, raw_te, _ = gc.data.digits(standardize=False, dtype=np.float64)
    mu, sd = raw_tr.mean(axis=0), raw_tr.std(axis=0)
    sd1 = np.where(sd == 0, 1.0, sd)
    np.testing.assert_allclose(xtr, (raw_tr - mu) / sd1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xte, (raw_te - mu) / sd1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xtr.mean(axis=0), 0.0, atol=1e-12)
    live = sd > 0
    np.testing.assert_allclose(xtr.std(axis=0)[live], 1.0, rtol=1e-12)
    assert (~live).any()  # some border pixels are always 0: only centred


def test_digits_seeded():
    a = gc.data.digits(seed=3)
    b = gc.data.digits(seed=3)
    c = gc.data.digits(seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_digits_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "gradchain\[data\]"'):
        gc.data.digits()


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"test_size": 0.0}, ValueError), ({"test_size": 1.0}, ValueError),
    ({"test_size": -0.5}, ValueError), ({"test_size": "0.2"}, TypeError),
    ({"test_size": float("nan")}, ValueError), ({"seed": -1}, ValueError),
    ({"seed": 1.5}, TypeError), ({"standardize": "yes"}, TypeError),
    ({"dtype": np.int32}, TypeError), ({"dtype": "float16"}, TypeError),
])
def test_digits_bad_arguments(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        gc.data.digits(**kwargs)


def test_teacher_shapes_standardized_and_seeded():
    x, y = gc.data.teacher()
    assert x.shape == (1024, 32) and y.shape == (1024, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_allclose(y.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(), 1.0, rtol=1e-5)
    x2, y2 = gc.data.teacher()
    np.testing.assert_array_equal(y, y2)
    _, y3 = gc.data.teacher(seed=1)
    assert not np.array_equal(y, y3)
    xs, ys = gc.data.teacher(n=50, sizes=[4, 8, 8, 3], activation="relu", dtype=np.float64)
    assert xs.shape == (50, 4) and ys.shape == (50, 3) and ys.dtype == np.float64
    np.testing.assert_allclose(ys.std(axis=0), 1.0, rtol=1e-12)


def test_linear_teacher_is_recovered_by_least_squares():
    x, y = gc.data.teacher(n=200, sizes=(5, 1), activation="identity", dtype=np.float64)
    a = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    np.testing.assert_allclose(a @ coef, y, atol=1e-10)
    # with noise, the residual variance is the noise variance
    x, y = gc.data.teacher(n=20000, sizes=(5, 1), activation="identity", noise=0.5,
                           dtype=np.float64)
    a = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    assert np.var(y - a @ coef) == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"n": 1}, ValueError), ({"n": 10.0}, TypeError), ({"sizes": (4,)}, ValueError),
    ({"sizes": "4,1"}, TypeError), ({"sizes": (4, 0)}, ValueError),
    ({"activation": "swoosh"}, ValueError), ({"noise": -0.1}, ValueError),
    ({"noise": float("inf")}, ValueError), ({"seed": -2}, ValueError),
    ({"dtype": int}, TypeError),
])
def test_teacher_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        gc.data.teacher(**kwargs)


def test_adding_wraps_the_task_and_its_baseline():
    x, y = gc.data.adding(T=12, n=30, seed=5)
    x2, y2 = gc.tasks.adding_problem(12, 30, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (12, 30, 2) and y.shape == (30, 1) and x.dtype == np.float32
    # the target is the sum of the two marked values
    np.testing.assert_allclose(y[:, 0], np.sum(x[..., 0] * x[..., 1], axis=0), rtol=1e-6)
    assert np.all(x[..., 1].sum(axis=0) == 2)
    _, yb = gc.data.adding(T=4, n=40000, seed=0, dtype=np.float64)
    assert np.mean((yb - 1.0) ** 2) == pytest.approx(gc.data.ADDING_BASELINE_MSE, rel=0.03)


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"T": 1, "n": 4}, ValueError), ({"T": 5, "n": 0}, ValueError),
    ({"T": 5.0, "n": 4}, TypeError), ({"T": 5, "n": 4, "seed": -1}, ValueError),
    ({"T": 5, "n": 4, "dtype": np.int64}, TypeError),
])
def test_adding_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        gc.data.adding(**kwargs)
