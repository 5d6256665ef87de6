"""Bad input for every public entry point.

Each rejected call is checked for
  * the exact exception type the code documents (ValueError / TypeError, StateError for
    backward before forward, MemoryError for absurd sizes),
  * a message that names the argument and, for shapes, both the expected and the seen shape,
  * a model left bitwise unchanged: every parameter, gradient and buffer, the batch-norm
    counter, the training flag, the saved forward pass and the last input gradient.

Also: non-contiguous, Fortran-ordered, transposed, negatively strided and read-only inputs
give exactly the numbers of a contiguous copy, and custom activations that misbehave leave
the model usable.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain as gc
from conftest import same

DTYPES = [np.float32, np.float64]
SIZES = [5, 6, 6, 3]  # two equal-width hidden layers: residual applies to layer 2
B = 4
ALL_ISAS = ("avx512", "avx2", "scalar")


# --------------------------------------------------------------------------- helpers
def used_model(dtype=np.float32, norm="batch", activation="tanh", nan_grad=True, **kw):
    """A model with non-trivial state: two forward/backward passes in training mode
    (running statistics and num_batches_tracked moved, gradients and input_grad filled),
    and, with nan_grad, one NaN planted in a gradient so that the comparisons must handle
    NaN positions."""
    m = gc.MLP(SIZES, activation=activation, norm=norm, residual=True, dtype=dtype, seed=1,
               **kw)
    rng = np.random.default_rng(0)
    for _ in range(2):
        m.forward(rng.normal(size=(B, SIZES[0])).astype(dtype))
        m.backward(rng.normal(size=(B, SIZES[-1])).astype(dtype))
    if nan_grad:
        dict(m.named_grads())["layers.1.weight"][2, 3] = np.nan
    return m


def snapshot(m: gc.MLP) -> dict:
    s: dict = {}
    for n, p in m.named_parameters():
        s[f"parameter {n}"] = p.copy()
    for n, g in m.named_grads():
        s[f"gradient {n}"] = g.copy()
    for n, b in m.named_buffers():
        s[f"buffer {n}"] = b.copy()
    s["num_batches_tracked"] = m._num_batches_tracked.copy()
    s["training"] = m.training
    s["has_forward"] = bool(m._core.has_forward)
    s["forward_batch"] = int(m._core.forward_batch)
    s["input_grad"] = None if m.input_grad is None else m.input_grad.copy()
    return s


def assert_unchanged(before: dict, after: dict, what: str = "") -> None:
    changed = [k for k in before if not same(before[k], after[k])]
    assert not changed, f"rejected call {what} changed the model: {changed}"


def rejected(model, exc: type[BaseException], fn, *fragments: str,
             forward_lost: bool = False) -> BaseException:
    """Call fn, expect exactly `exc` with every fragment in the message, and (with a model)
    the model bitwise unchanged. Returns the exception.

    forward_lost: the call failed half-way through a forward pass, which overwrote the
    saved one; the model must then have forgotten it (backward refuses) rather than keep it.
    """
    before = snapshot(model) if model is not None else None
    with pytest.raises(BaseException) as ei:
        fn()
    e = ei.value
    assert type(e) is exc, f"expected exactly {exc.__name__}, got {type(e).__name__}: {e}"
    msg = str(e)
    for frag in fragments:
        assert frag in msg, f"message {msg!r} does not mention {frag!r}"
    if model is not None:
        after = snapshot(model)
        if forward_lost:
            assert not after["has_forward"], "a failed forward pass must not count as one"
            for k in ("has_forward", "forward_batch"):
                before.pop(k)
        assert_unchanged(before, after, repr(fragments))
    return e


def x_of(dtype, batch=B, n=SIZES[0], seed=5):
    return np.random.default_rng(seed).normal(size=(batch, n)).astype(dtype)


def g_of(dtype, batch=B, n=SIZES[-1], seed=6):
    return np.random.default_rng(seed).normal(size=(batch, n)).astype(dtype)


def other(dtype):
    return np.float64 if np.dtype(dtype) == np.float32 else np.float32


# --------------------------------------------------------------------------- constructor
CTOR_CASES = [
    # (id, args, kwargs, exception, message fragments)
    ("sizes-str", ("34",), {}, TypeError, ["sizes"]),
    ("sizes-int", (5,), {}, TypeError, ["sizes"]),
    ("sizes-none", (None,), {}, TypeError, ["sizes"]),
    ("sizes-dict", ({3: 4},), {}, TypeError, ["sizes"]),
    ("sizes-empty", ([],), {}, ValueError, ["sizes", "at least"]),
    ("sizes-one", ([3],), {}, ValueError, ["sizes", "at least"]),
    ("width-zero", ([3, 0, 2],), {}, ValueError, ["sizes[1]", ">= 1", "0"]),
    ("width-negative", ([3, 4, -2],), {}, ValueError, ["sizes[2]", "-2"]),
    ("input-zero", ([0, 4],), {}, ValueError, ["sizes[0]"]),
    ("width-bool", ([3, True, 2],), {}, TypeError, ["sizes[1]", "bool"]),
    ("width-float", ([3, 4.0, 2],), {}, TypeError, ["sizes[1]", "float"]),
    ("width-str", ([3, "4"],), {}, TypeError, ["sizes[1]", "str"]),
    ("width-none", ([3, None],), {}, TypeError, ["sizes[1]"]),
    ("width-past-blas", ([3, 1 << 31, 2],), {}, ValueError, ["sizes[1]", "2147483648", "32-bit"]),
    ("width-absurd", ([3, (1 << 31) - 1, 1 << 20],), {}, MemoryError, ["sizes"]),
    ("weights-past-memory", ([3, 1 << 20, 1 << 16],), {}, MemoryError,
     ["gc.MLP", "sizes=[3, 1048576, 65536]", "bytes", "available"]),
    ("weights-absurd", ([1 << 20, 1 << 20, 2],), {}, MemoryError, ["sizes"]),
    ("weights-absurd-deep", ([2] + [1 << 22] * 3 + [2],), {}, MemoryError, ["sizes"]),
    ("activation-unknown", (SIZES,), {"activation": "foo"}, ValueError, ["activation", "'foo'"]),
    ("activation-case", (SIZES,), {"activation": "Tanh"}, ValueError, ["activation", "'Tanh'"]),
    ("activation-empty", (SIZES,), {"activation": ""}, ValueError, ["activation"]),
    ("activation-int", (SIZES,), {"activation": 3}, TypeError, ["activation", "int"]),
    ("activation-func", (SIZES,), {"activation": np.tanh}, TypeError, ["activation"]),
    ("init-unknown", (SIZES,), {"init": "foo"}, ValueError, ["init", "'foo'"]),
    ("init-prefix", (SIZES,), {"init": "xavier"}, ValueError, ["init", "'xavier'"]),
    ("init-int", (SIZES,), {"init": 3}, TypeError, ["init"]),
    ("init-other-callable", (SIZES,), {"init": np.zeros}, TypeError, ["init"]),
    ("norm-unknown", (SIZES,), {"norm": "group"}, ValueError, ["norm", "'group'"]),
    ("norm-true", (SIZES,), {"norm": True}, ValueError, ["norm", "True"]),
    ("norm-int", (SIZES,), {"norm": 1}, ValueError, ["norm"]),
    ("norm-case", (SIZES,), {"norm": "Batch"}, ValueError, ["norm", "'Batch'"]),
    ("residual-list-short", (SIZES,), {"residual": [True]}, ValueError, ["residual", "2", "1"]),
    ("residual-list-long", (SIZES,), {"residual": [False] * 3}, ValueError, ["residual", "3"]),
    ("residual-unequal", ([3, 4, 4, 2],), {"residual": [True, False]}, ValueError,
     ["residual", "layer 1", "3 -> 4"]),
    ("residual-k0", (SIZES,), {"residual": 0}, ValueError, ["residual", "k >= 1", "0"]),
    ("residual-kneg", (SIZES,), {"residual": -2}, ValueError, ["residual", "-2"]),
    ("residual-str", (SIZES,), {"residual": "yes"}, TypeError, ["residual", "str"]),
    ("residual-float", (SIZES,), {"residual": 1.5}, TypeError, ["residual", "float"]),
    ("residual-list-ints", (SIZES,), {"residual": [1, 0]}, TypeError, ["residual", "bools"]),
    ("residual-list-str", (SIZES,), {"residual": ["a", "b"]}, TypeError, ["residual"]),
    ("residual_scale-nan", (SIZES,), {"residual_scale": math.nan}, ValueError,
     ["residual_scale"]),
    ("residual_scale-str", (SIZES,), {"residual_scale": "1"}, TypeError, ["residual_scale"]),
    ("bias-str", (SIZES,), {"bias": "yes"}, TypeError, ["bias"]),
    ("dtype-int", (SIZES,), {"dtype": int}, TypeError, ["dtype", "int64"]),
    ("dtype-int32", (SIZES,), {"dtype": np.int32}, TypeError, ["dtype", "int32"]),
    ("dtype-float16", (SIZES,), {"dtype": np.float16}, TypeError, ["dtype", "float16"]),
    ("dtype-str-float16", (SIZES,), {"dtype": "float16"}, TypeError, ["dtype", "float16"]),
    ("dtype-complex", (SIZES,), {"dtype": np.complex128}, TypeError, ["dtype"]),
    ("dtype-garbage", (SIZES,), {"dtype": "foo"}, TypeError, ["dtype", "'foo'"]),
    ("seed-negative", (SIZES,), {"seed": -1}, ValueError, ["seed", "-1"]),
    ("seed-float", (SIZES,), {"seed": 1.5}, TypeError, ["seed", "float"]),
    ("seed-bool", (SIZES,), {"seed": True}, TypeError, ["seed", "bool"]),
    ("seed-str", (SIZES,), {"seed": "1"}, TypeError, ["seed"]),
    ("eps-zero", (SIZES,), {"eps": 0.0}, ValueError, ["eps", "> 0"]),
    ("eps-negative", (SIZES,), {"eps": -1e-5}, ValueError, ["eps"]),
    ("eps-nan", (SIZES,), {"eps": math.nan}, ValueError, ["eps"]),
    ("eps-inf", (SIZES,), {"eps": math.inf}, ValueError, ["eps"]),
    ("eps-str", (SIZES,), {"eps": "1e-5"}, TypeError, ["eps"]),
    ("momentum-above", (SIZES,), {"momentum": 1.5}, ValueError, ["momentum", "1.5"]),
    ("momentum-negative", (SIZES,), {"momentum": -0.1}, ValueError, ["momentum", "-0.1"]),
    ("momentum-nan", (SIZES,), {"momentum": math.nan}, ValueError, ["momentum"]),
    ("momentum-none", (SIZES,), {"momentum": None}, TypeError, ["momentum"]),
]


@pytest.mark.parametrize("args,kwargs,exc,frags",
                         [c[1:] for c in CTOR_CASES], ids=[c[0] for c in CTOR_CASES])
def test_constructor_rejects(args, kwargs, exc, frags):
    rejected(None, exc, lambda: gc.MLP(*args, **kwargs), *frags)


def test_constructor_accepts_the_boundaries():
    """The documented edges are accepted (so the rejections above are not over-eager)."""
    assert gc.MLP([1, 1]).depth == 0
    assert gc.MLP((3, np.int64(4), 2)).sizes == [3, 4, 2]
    assert gc.MLP(np.array([3, 4, 2])).sizes == [3, 4, 2]
    gc.MLP(SIZES, momentum=0.0)
    gc.MLP(SIZES, momentum=1.0)
    gc.MLP(SIZES, seed=0)
    gc.MLP(SIZES, seed=np.int64(2**40))
    assert gc.MLP(SIZES, dtype="float64").dtype == np.float64
    assert gc.MLP(SIZES, residual=np.array([False, True])).residual == [False, True]
    # residual=True on widths that never match is no skip connection, not an error
    assert gc.MLP([3, 4, 5, 2], residual=True).residual == [False, False]
    assert gc.MLP(SIZES, activation="swish").activation.name == "silu"


def test_constructor_reports_core_allocation_failure_as_sizes(monkeypatch):
    """A size the Python guard lets through but the core cannot allocate: MemoryError
    naming sizes (not the bare 'std::bad_alloc' of the core)."""

    def no_memory(*a, **k):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(gc._core, "MlpChainF32", no_memory)
    rejected(None, MemoryError, lambda: gc.MLP([3, 4, 2]), "sizes", "[3, 4, 2]")


_elem = st.one_of(
    st.integers(-2, 6), st.booleans(), st.floats(allow_nan=True, width=32),
    st.none(), st.text(max_size=2), st.integers(0, 6).map(np.int64),
)


@settings(max_examples=150)
@given(st.lists(_elem, max_size=5))
def test_sizes_validation_matches_oracle(sizes):
    """Any list: the first bad entry (in order) decides the error, then the length."""
    expected = None
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            expected = (TypeError, [f"sizes[{i}]"])
            break
        if s < 1:
            expected = (ValueError, [f"sizes[{i}]", str(s)])
            break
    if expected is None and len(sizes) < 2:
        expected = (ValueError, ["sizes"])
    if expected is None:
        m = gc.MLP(sizes)
        assert m.sizes == [int(s) for s in sizes]
    else:
        rejected(None, expected[0], lambda: gc.MLP(sizes), *expected[1])


ACT_CASES = [
    ("name-int", (3,), {}, TypeError, ["activation"]),
    ("name-unknown", ("swishy",), {}, ValueError, ["activation", "'swishy'"]),
    ("param-unknown", ("leaky_relu",), {"slope": 0.1}, ValueError, ["slope", "negative_slope"]),
    ("param-on-plain", ("tanh",), {"alpha": 1.0}, ValueError, ["'tanh'", "alpha"]),
    ("param-str", ("leaky_relu",), {"negative_slope": "0.1"}, TypeError, ["negative_slope"]),
    ("param-bool", ("elu",), {"alpha": True}, TypeError, ["alpha"]),
    ("param-nan", ("leaky_relu",), {"negative_slope": math.nan}, ValueError,
     ["negative_slope"]),
    ("param-inf", ("elu",), {"alpha": math.inf}, ValueError, ["alpha"]),
    ("hardtanh-order", ("hardtanh",), {"min_val": 1.0, "max_val": 0.0}, ValueError,
     ["min_val", "max_val"]),
    ("hardtanh-equal", ("hardtanh",), {"min_val": 0.5, "max_val": 0.5}, ValueError,
     ["min_val", "max_val"]),
    ("softplus-beta0", ("softplus",), {"beta": 0}, ValueError, ["beta"]),
    ("softplus-threshold-nan", ("softplus",), {"threshold": math.nan}, ValueError,
     ["threshold"]),
]


@pytest.mark.parametrize("args,kwargs,exc,frags",
                         [c[1:] for c in ACT_CASES], ids=[c[0] for c in ACT_CASES])
def test_activation_rejects(args, kwargs, exc, frags):
    rejected(None, exc, lambda: gc.Activation(*args, **kwargs), *frags)


def test_activation_custom_rejects():
    rejected(None, TypeError, lambda: gc.Activation.custom(np.tanh, "df"), "callable")
    rejected(None, TypeError, lambda: gc.Activation.custom(None, np.tanh), "callable")
    rejected(None, TypeError, lambda: gc.Activation.custom(np.tanh, np.tanh, name=""), "name")
    rejected(None, TypeError, lambda: gc.Activation.custom(np.tanh, np.tanh, name=3), "name")


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_rejects(dtype):
    m = used_model(dtype)
    n = SIZES[0]
    x = x_of(dtype)
    od = np.dtype(other(dtype)).name
    dn = np.dtype(dtype).name
    rejected(m, ValueError, lambda: m.forward(x[0]), "x", f"(B, {n})", f"({n},)")
    rejected(m, ValueError, lambda: m.forward(x[None]), "x", f"(B, {n})", f"(1, {B}, {n})")
    rejected(m, ValueError, lambda: m.forward(np.array(1.0, dtype)), "x", f"(B, {n})", "()")
    rejected(m, ValueError, lambda: m.forward(x[:, :3]), "x", f"(B, {n})", f"({B}, 3)")
    rejected(m, ValueError, lambda: m.forward(np.zeros((B, n + 1), dtype)), "x",
             f"(B, {n})", f"({B}, {n + 1})")
    rejected(m, ValueError, lambda: m.forward(x[:0]), "x", "B >= 1", f"(0, {n})")
    rejected(m, TypeError, lambda: m.forward(x.astype(other(dtype))), "x", dn, od)
    rejected(m, TypeError, lambda: m.forward(x.astype(np.int64)), "x", dn, "int64")
    rejected(m, TypeError, lambda: m.forward(x.astype(np.int32)), "x", dn, "int32")
    rejected(m, TypeError, lambda: m.forward(x > 0), "x", dn, "bool")
    rejected(m, TypeError, lambda: m.forward(x.astype(np.float16)), "x", dn, "float16")
    rejected(m, TypeError, lambda: m.forward(x.astype(np.complex128)), "x", "complex128")
    rejected(m, TypeError, lambda: m.forward(None), "x")
    rejected(m, TypeError, lambda: m.forward("abc"), "x")
    rejected(m, TypeError, lambda: m.forward([[1.0, 2.0], [3.0]]), "x")
    # dtype is checked before shape: a wrong dtype with a wrong shape is a TypeError
    rejected(m, TypeError, lambda: m.forward(np.zeros(3, other(dtype))), "x", dn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (B - 1, SIZES[0] - 1), (2, 1)])
def test_forward_rejects_nonfinite_anywhere(dtype, bad, where):
    m = used_model(dtype)
    x = x_of(dtype)
    x[where] = bad
    if where != (B - 1, SIZES[0] - 1):
        x[B - 1, SIZES[0] - 1] = np.nan  # a later one: the message reports the first
    rejected(m, ValueError, lambda: m.forward(x), "x", "NaN or Inf", f"index {where}")


@settings(max_examples=120)
@given(
    dtype=st.sampled_from(DTYPES),
    arr_dtype=st.sampled_from([np.float32, np.float64, np.int64, np.float16, np.bool_]),
    shape=st.lists(st.integers(0, 6), max_size=3),
    norm=st.sampled_from([None, "batch", "layer"]),
    training=st.booleans(),
)
def test_forward_validation_matches_oracle(dtype, arr_dtype, shape, norm, training):
    m = used_model(dtype, norm=norm, nan_grad=False)
    m.train(training)
    x = np.ones(shape, dtype=arr_dtype)
    n = SIZES[0]
    if np.dtype(arr_dtype) != np.dtype(dtype):
        rejected(m, TypeError, lambda: m.forward(x), "x", np.dtype(dtype).name,
                 np.dtype(arr_dtype).name)
    elif x.ndim != 2 or x.shape[1] != n:
        rejected(m, ValueError, lambda: m.forward(x), "x", f"(B, {n})", str(tuple(shape)))
    elif x.shape[0] == 0:
        rejected(m, ValueError, lambda: m.forward(x), "x", "B >= 1")
    elif norm == "batch" and training and x.shape[0] == 1:
        rejected(m, ValueError, lambda: m.forward(x), "x", "batch norm", f"(1, {n})")
    else:
        y = m.forward(x)
        assert y.shape == (x.shape[0], SIZES[-1]) and y.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_of_one_batch_norm(dtype):
    m = used_model(dtype)
    x1 = x_of(dtype, batch=1)
    rejected(m, ValueError, lambda: m.forward(x1), "x", "batch norm", f"(1, {SIZES[0]})",
             "eval")
    m.eval()
    before = snapshot(m)
    y = m.forward(x1)
    assert y.shape == (1, SIZES[-1]) and np.isfinite(y).all()
    after = snapshot(m)
    for k in before:  # eval mode: running statistics and counter untouched
        if k.startswith("buffer") or k == "num_batches_tracked":
            assert same(before[k], after[k]), f"eval forward changed {k}"
    m.backward(g_of(dtype, batch=1))
    # layer norm and no norm take a single sample in training mode
    for norm in (None, "layer"):
        gc.MLP(SIZES, norm=norm, dtype=dtype).forward(x1)


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_before_forward(dtype):
    m = gc.MLP(SIZES, norm="batch", dtype=dtype, seed=0)
    e = rejected(m, gc.StateError, lambda: m.backward(g_of(dtype)), "backward", "forward")
    assert isinstance(e, RuntimeError) and isinstance(e, ValueError)
    # a rejected forward does not count as a forward
    rejected(m, ValueError, lambda: m.forward(x_of(dtype, n=2)), "x")
    rejected(m, gc.StateError, lambda: m.backward(g_of(dtype)), "forward")
    # replacing the parameters forgets the saved forward pass
    m.forward(x_of(dtype))
    m.load_state_dict(m.state_dict())
    rejected(m, gc.StateError, lambda: m.backward(g_of(dtype)), "forward")
    m.forward(x_of(dtype))
    m.reset_parameters(3)
    rejected(m, gc.StateError, lambda: m.backward(g_of(dtype)), "forward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_rejects(dtype):
    m = used_model(dtype)
    m.forward(x_of(dtype, batch=3))
    k = SIZES[-1]
    g = g_of(dtype, batch=3)
    dn = np.dtype(dtype).name
    rejected(m, ValueError, lambda: m.backward(g_of(dtype, batch=4)), "grad_output",
             f"(3, {k})", f"(4, {k})")
    rejected(m, ValueError, lambda: m.backward(g[:2]), "grad_output", f"(3, {k})", f"(2, {k})")
    rejected(m, ValueError, lambda: m.backward(np.zeros((3, k + 1), dtype)), "grad_output",
             f"(3, {k})", f"(3, {k + 1})")
    rejected(m, ValueError, lambda: m.backward(g.ravel()), "grad_output", f"(3, {k})",
             f"({3 * k},)")
    rejected(m, TypeError, lambda: m.backward(g.astype(other(dtype))), "grad_output", dn,
             np.dtype(other(dtype)).name)
    rejected(m, TypeError, lambda: m.backward(g.astype(np.int64)), "grad_output", "int64")
    for bad in (np.nan, np.inf):
        g2 = g.copy()
        g2[1, 2] = bad
        rejected(m, ValueError, lambda g2=g2: m.backward(g2), "grad_output", "NaN or Inf",
                 "(1, 2)")
    m.backward(g)  # still works after all that


# --------------------------------------------------------------------------- loss_and_grad
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grad_rejects(dtype):
    m = used_model(dtype)
    x = x_of(dtype)
    k = SIZES[-1]
    t = g_of(dtype)
    ci = np.array([0, 1, 2, 0])
    dn = np.dtype(dtype).name
    for loss in ("foo", "MSE", "", None, ["mse"]):
        rejected(m, ValueError, lambda loss=loss: m.loss_and_grad(x, t, loss=loss), "loss",
                 repr(loss))
    rejected(m, ValueError, lambda: m.loss_and_grad(x, t[:3]), "target", f"({B}, {k})",
             f"(3, {k})")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, t[:, :2]), "target", f"({B}, {k})",
             f"({B}, 2)")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, t.ravel()), "target", f"({B}, {k})")
    rejected(m, TypeError, lambda: m.loss_and_grad(x, t.astype(other(dtype))), "target", dn)
    rejected(m, TypeError, lambda: m.loss_and_grad(x, ci), "target", dn, "int64")
    for bad in (np.nan, -np.inf):
        t2 = t.copy()
        t2[3, 1] = bad
        rejected(m, ValueError, lambda t2=t2: m.loss_and_grad(x, t2), "target", "NaN or Inf",
                 "(3, 1)")
    # the input is checked as in forward
    rejected(m, TypeError, lambda: m.loss_and_grad(x.astype(other(dtype)), t), "x")
    rejected(m, ValueError, lambda: m.loss_and_grad(x[:, :2], t), "x", f"(B, {SIZES[0]})")
    x2 = x.copy()
    x2[0, 0] = np.nan
    rejected(m, ValueError, lambda: m.loss_and_grad(x2, t), "x", "NaN")
    rejected(m, ValueError, lambda: m.loss_and_grad(x[:1], t[:1]), "x", "batch norm")
    # cross entropy: integer class indices of shape (B,) in [0, k)
    ce = "cross_entropy"
    rejected(m, TypeError, lambda: m.loss_and_grad(x, ci.astype(dtype), loss=ce), "target",
             "integer", dn)
    rejected(m, TypeError, lambda: m.loss_and_grad(x, ci > 0, loss=ce), "target", "bool")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, np.array([0, 1, 3, 0]), loss=ce),
             "target", f"[0, {k})", "3")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, np.array([0, -1, 2, 0]), loss=ce),
             "target", f"[0, {k})", "-1")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, ci[:3], loss=ce), "target",
             f"({B},)", "(3,)")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, ci[None], loss=ce), "target",
             f"({B},)", f"(1, {B})")
    rejected(m, ValueError, lambda: m.loss_and_grad(x, ci[:, None], loss=ce), "target",
             f"({B},)", f"({B}, 1)")
    rejected(m, TypeError, lambda: m.loss_and_grad(x, None, loss=ce), "target")
    # and a good call still works
    value, rep = m.loss_and_grad(x, ci, loss=ce)
    assert math.isfinite(value) and rep.loss == value


# --------------------------------------------------------------------------- load_state_dict
@pytest.mark.parametrize("dtype", DTYPES)
def test_load_state_dict_rejects(dtype):
    m = used_model(dtype)
    good = {k: np.array(v) for k, v in m.state_dict().items()}
    rng = np.random.default_rng(9)
    # every candidate below also carries new values for the keys that are fine, so a
    # partial write before the rejection would show up in the snapshot
    base = {k: (v + rng.normal(size=v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 5)
            for k, v in good.items()}

    def with_(**changes):
        sd = dict(base)
        for k, v in changes.items():
            k = k.replace("__", ".")
            if v is None:
                del sd[k]
            else:
                sd[k] = v
        return sd

    w0 = good["layers.0.weight"]
    rejected(m, TypeError, lambda: m.load_state_dict([("layers.0.weight", w0)]), "state_dict",
             "list")
    rejected(m, TypeError, lambda: m.load_state_dict(None), "state_dict")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__1__bias=None)),
             "missing", "'layers.1.bias'")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(norms__0__running_var=None)),
             "missing", "'norms.0.running_var'")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__9__weight=w0)),
             "unexpected", "'layers.9.weight'")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__9__weight=w0,
                                                            layers__0__bias=None)),
             "missing", "'layers.0.bias'", "unexpected", "'layers.9.weight'")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__0__weight=w0.T)),
             "'layers.0.weight'", "(6, 5)", "(5, 6)")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(norms__1__bias=np.zeros(7))),
             "'norms.1.bias'", "(6,)", "(7,)")
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__2__bias=np.float64(0.0))),
             "'layers.2.bias'", "(3,)", "()")
    rejected(m, TypeError, lambda: m.load_state_dict(with_(layers__0__weight=w0.astype(int))),
             "'layers.0.weight'", "int64")
    rejected(m, TypeError, lambda: m.load_state_dict(
        with_(layers__0__weight=w0.astype(np.complex128))), "'layers.0.weight'", "complex")
    rejected(m, TypeError, lambda: m.load_state_dict(with_(layers__0__weight="w")),
             "'layers.0.weight'")
    rejected(m, TypeError, lambda: m.load_state_dict(
        with_(norms__0__num_batches_tracked=np.array(2.5))), "'norms.0.num_batches_tracked'",
        "integer")
    for bad in (np.nan, np.inf):
        last = good["norms.1.running_var"].copy()
        last[-1] = bad
        rejected(m, ValueError, lambda last=last: m.load_state_dict(
            with_(norms__1__running_var=last)), "'norms.1.running_var'", "NaN or Inf")
    # strict=False: reports what is missing / unexpected and loads the rest
    sd = with_(layers__1__bias=None, extra__thing="not even an array")
    before = snapshot(m)
    res = m.load_state_dict(sd, strict=False)
    assert isinstance(res, gc.IncompatibleKeys)
    assert res.missing_keys == ["layers.1.bias"] and res.unexpected_keys == ["extra.thing"]
    assert res == (["layers.1.bias"], ["extra.thing"])
    after = snapshot(m)
    assert same(after["parameter layers.1.bias"], before["parameter layers.1.bias"]), (
        "a missing key with strict=False must leave that tensor alone")
    np.testing.assert_array_equal(after["parameter layers.0.weight"], base["layers.0.weight"])
    assert after["num_batches_tracked"][0] == int(base["norms.0.num_batches_tracked"])
    # strict=False does not relax the checks on the keys that are present
    rejected(m, ValueError, lambda: m.load_state_dict(with_(layers__0__weight=w0.T),
                                                      strict=False), "'layers.0.weight'")
    assert m.load_state_dict(good) == ([], [])


# --------------------------------------------------------------------------- clipping
CLIPS = {
    "clip_grad_norm": lambda m, v: gc.clip_grad_norm(m, v),
    "clip_grad_value": lambda m, v: gc.clip_grad_value(m, v),
    "clip_grad_norm_per_layer": lambda m, v: gc.clip_grad_norm_per_layer(m, v),
}
CLIP_ARG = {"clip_grad_norm": "max_norm", "clip_grad_value": "clip_value",
            "clip_grad_norm_per_layer": "max_norm"}


@pytest.mark.parametrize("fn", list(CLIPS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_rejects(fn, dtype):
    m = used_model(dtype)
    clip = CLIPS[fn]
    arg = CLIP_ARG[fn]
    for not_model in (None, 3, "model", np.zeros(3), {"_core": 1}):
        rejected(m, TypeError, lambda nm=not_model: clip(nm, 1.0), "model")
    rejected(m, ValueError, lambda: clip(m, -1.0), arg, "-1.0")
    rejected(m, ValueError, lambda: clip(m, -np.inf), arg)
    rejected(m, ValueError, lambda: clip(m, math.nan), arg, "nan")
    rejected(m, TypeError, lambda: clip(m, "1.0"), arg, "str")
    rejected(m, TypeError, lambda: clip(m, None), arg)
    rejected(m, TypeError, lambda: clip(m, True), arg, "bool")


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_rejects_norm_types(dtype):
    m = used_model(dtype)
    for nt in (1, 1.0, 3.0, math.inf, 0):
        rejected(m, ValueError, lambda nt=nt: gc.clip_grad_norm(m, 1.0, norm_type=nt),
                 "norm_type", str(nt))
    rejected(m, ValueError, lambda: gc.clip_grad_norm(m, 1.0, norm_type=math.nan), "norm_type")
    rejected(m, TypeError, lambda: gc.clip_grad_norm(m, 1.0, norm_type="2"), "norm_type")
    # with a NaN gradient and error_if_nonfinite the clip is refused, nothing scaled
    e = rejected(m, gc._core.NonFiniteError,
                 lambda: gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True))
    assert isinstance(e, RuntimeError), "documented: a RuntimeError"


# --------------------------------------------------------------------------- global settings
def test_set_num_threads_rejects():
    n = gc.get_num_threads()
    try:
        rejected(None, ValueError, lambda: gc.set_num_threads(0), "n", "0")
        rejected(None, ValueError, lambda: gc.set_num_threads(-1), "n", "-1")
        rejected(None, TypeError, lambda: gc.set_num_threads(1.5), "n", "float")
        rejected(None, TypeError, lambda: gc.set_num_threads(True), "n", "bool")
        rejected(None, TypeError, lambda: gc.set_num_threads("2"), "n", "str")
        rejected(None, TypeError, lambda: gc.set_num_threads(None), "n")
        assert gc.get_num_threads() == n, "a rejected set_num_threads changed the setting"
        gc.set_num_threads(1)
        assert gc.get_num_threads() == 1
    finally:
        gc.set_num_threads(n)
    assert gc.get_num_threads() == n


def test_set_isa_rejects():
    isa = gc.get_isa()
    available = gc.available_isas()
    assert available and set(available) <= set(ALL_ISAS) and "scalar" in available
    try:
        for bad in ("foo", "AVX2", "", "sse"):
            rejected(None, ValueError, lambda b=bad: gc.set_isa(b), f"'{bad}'", "ISA")
            assert gc.get_isa() == isa
        rejected(None, TypeError, lambda: gc.set_isa(2), "name", "int")
        rejected(None, TypeError, lambda: gc.set_isa(None), "name")
        assert gc.get_isa() == isa
        for name in available:
            gc.set_isa(name)
            assert gc.get_isa() == name
    finally:
        gc.set_isa(isa)


@pytest.mark.parametrize("name", ALL_ISAS)
def test_set_isa_this_cpu_lacks(name):
    if name in gc.available_isas():
        pytest.skip(f"this CPU runs {name}")
    isa = gc.get_isa()
    rejected(None, ValueError, lambda: gc.set_isa(name), f"'{name}'", "not supported",
             *gc.available_isas())
    assert gc.get_isa() == isa, "a rejected set_isa changed the active ISA"


# --------------------------------------------------------------------------- save / load
def test_save_rejects_non_models(tmp_path):
    p = tmp_path / "m.npz"
    for obj in (None, 3, "model", {"a": 1}, np.zeros(3)):
        rejected(None, TypeError, lambda o=obj: gc.save(o, p), "model")
    assert list(tmp_path.iterdir()) == [], "a rejected save left a file behind"


def _npz_with(path, cfg, arrays):
    meta = np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)
    np.savez(path, __gradchain_config__=meta, **arrays)


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_rejects(tmp_path, dtype):
    m = used_model(dtype)
    path = tmp_path / "m.npz"
    gc.save(m, path)
    data = path.read_bytes()
    good_state = {k: np.array(v) for k, v in m.state_dict().items()}
    cfg = {**m.config(), "format": 1}

    def bad_file(name, content):
        p = tmp_path / name
        p.write_bytes(content)
        return p

    for n in (0, 1, 22, 100, len(data) // 2, len(data) - 1):
        p = bad_file(f"trunc{n}.npz", data[:n])
        rejected(None, ValueError, lambda p=p: gc.load(p), str(p), "cannot read")
    for seed in range(3):
        p = bad_file(f"random{seed}.npz", np.random.default_rng(seed).bytes(2000))
        rejected(None, ValueError, lambda p=p: gc.load(p), str(p))
    p = bad_file("zip-magic.npz", b"PK\x03\x04" + np.random.default_rng(7).bytes(500))
    rejected(None, ValueError, lambda: gc.load(p), str(p))
    # a plain .npy array
    p = tmp_path / "array.npy"
    np.save(p, np.zeros(3))
    rejected(None, ValueError, lambda: gc.load(p), str(p), "not a gradchain model file")
    # a valid npz without the config entry
    p = tmp_path / "noconfig.npz"
    np.savez(p, **good_state)
    rejected(None, ValueError, lambda: gc.load(p), str(p), "config")
    # a config whose arrays do not fit it
    p = tmp_path / "mismatch.npz"
    _npz_with(p, cfg, {**good_state, "layers.1.weight": np.zeros((6, 7), dtype)})
    rejected(None, ValueError, lambda: gc.load(p), "'layers.1.weight'", "(6, 6)", "(6, 7)")
    p = tmp_path / "missing.npz"
    _npz_with(p, cfg, {k: v for k, v in good_state.items() if k != "norms.0.bias"})
    rejected(None, ValueError, lambda: gc.load(p), "missing", "'norms.0.bias'")
    p = tmp_path / "extra.npz"
    _npz_with(p, cfg, {**good_state, "layers.7.weight": np.zeros(2)})
    rejected(None, ValueError, lambda: gc.load(p), "unexpected", "'layers.7.weight'")
    p = tmp_path / "nan.npz"
    w = good_state["layers.0.weight"].copy()
    w[0, 0] = np.nan
    _npz_with(p, cfg, {**good_state, "layers.0.weight": w})
    rejected(None, ValueError, lambda: gc.load(p), "'layers.0.weight'", "NaN")
    # broken configs
    for name, c in [
        ("format", {**cfg, "format": 99}),
        ("nosizes", {k: v for k, v in cfg.items() if k != "sizes"}),
        ("sizes", {**cfg, "sizes": "abc"}),
        ("kind", {**cfg, "kind": "Transformer"}),
        ("norm", {**cfg, "norm": "group"}),
        ("act", {**cfg, "activation": {"name": "swishy"}}),
        ("list", [1, 2]),
    ]:
        p = tmp_path / f"cfg-{name}.npz"
        _npz_with(p, c, good_state)
        rejected(None, ValueError, lambda p=p: gc.load(p))
    p = tmp_path / "json.npz"
    np.savez(p, __gradchain_config__=np.frombuffer(b"{not json", dtype=np.uint8), **good_state)
    rejected(None, ValueError, lambda: gc.load(p), str(p))
    # a folder, a missing file
    rejected(None, ValueError, lambda: gc.load(tmp_path), str(tmp_path))
    rejected(None, FileNotFoundError, lambda: gc.load(tmp_path / "nope.npz"))
    # the good file still loads
    m2 = gc.load(path)
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, good_state[k], err_msg=k)


# --------------------------------------------------------------------------- custom activations
class Boom(Exception):
    pass


class Scripted:
    """A tanh custom activation whose f / df misbehave on demand."""

    def __init__(self):
        self.mode = "ok"
        self.calls = 0
        self.exc: BaseException | None = None

    def f(self, x):
        self.calls += 1
        mode = self.mode
        if mode == "raise" or (mode == "raise-second" and self.calls == 2):
            raise self.exc
        if mode == "f-shape":
            return x[:, :1]
        if mode == "f-1d":
            return np.tanh(x).ravel()
        if mode == "f-scalar":
            return 0.5
        if mode == "f-zerodiv":
            return 1 / 0
        return np.tanh(x)

    def df(self, x):
        if self.mode == "df-raise":
            raise self.exc
        if self.mode == "df-shape":
            return np.ones((x.shape[0] + 1, x.shape[1]))
        if self.mode == "df-none":
            return None
        return 1.0 - np.tanh(x) ** 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,exc,frags", [
    ("raise", Boom, ["inside f"]),
    ("raise", KeyError, ["inside f"]),
    ("raise-second", Boom, ["inside f"]),
    ("df-raise", Boom, ["inside f"]),
    ("f-zerodiv", ZeroDivisionError, ["division"]),
    ("f-shape", ValueError, ["f(x)", "(4, 1)", "(4, 6)"]),
    ("f-1d", ValueError, ["f(x)", "(24,)", "(4, 6)"]),
    ("f-scalar", ValueError, ["f(x)", "()", "(4, 6)"]),
    ("df-shape", ValueError, ["df(x)", "(5, 6)", "(4, 6)"]),
    ("df-none", ValueError, ["df(x)", "(4, 6)"]),
])
def test_custom_activation_failure_leaves_model_usable(dtype, mode, exc, frags):
    s = Scripted()
    act = gc.Activation.custom(s.f, s.df, name="scripted")
    m = used_model(dtype, activation=act, nan_grad=False)
    x, g = x_of(dtype), g_of(dtype)
    s.mode, s.calls = mode, 0
    s.exc = exc("inside f")
    e = rejected(m, exc, lambda: m.forward(x), *frags, forward_lost=True)
    if mode in ("raise", "raise-second", "df-raise"):
        assert e is s.exc, "the exception raised inside the activation must propagate as itself"
    if mode == "raise-second":
        assert s.calls == 2, "the first layer should have run before the failure"
    # the saved forward pass is gone, so backward refuses ...
    rejected(m, gc.StateError, lambda: m.backward(g), "forward")
    # ... and a good forward / backward then matches the built-in tanh on the same weights
    s.mode = "ok"
    ref = used_model(dtype, nan_grad=False)
    for (n1, p1), (n2, p2) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(p1, p2, err_msg=n1)
    y, y_ref = m.forward(x), ref.forward(x)
    rep, rep_ref = m.backward(g), ref.backward(g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, y_ref, **tol, err_msg="output after the failure")
    np.testing.assert_allclose(rep.activation_grad_norms, rep_ref.activation_grad_norms, **tol)
    for (n1, g1), (_, g2) in zip(m.named_grads(), ref.named_grads(), strict=True):
        np.testing.assert_allclose(g1, g2, **tol, err_msg=n1)
    for (n1, b1), (_, b2) in zip(m.named_buffers(), ref.named_buffers(), strict=True):
        np.testing.assert_allclose(b1, b2, **tol, err_msg=n1)
    assert np.array_equal(m._num_batches_tracked, ref._num_batches_tracked)
    assert int(m._num_batches_tracked[0]) == 3


# --------------------------------------------------------------------------- layouts
def _strided_cols(a):
    big = np.full((a.shape[0], 2 * a.shape[1]), np.nan, a.dtype)
    big[:, ::2] = a
    return big[:, ::2]


def _strided_rows(a):
    big = np.full((2 * a.shape[0],) + a.shape[1:], -7, a.dtype)
    big[::2] = a
    return big[::2]


def _negative(a):
    flip = (slice(None, None, -1),) * a.ndim
    return a[flip].copy()[flip]


def _readonly(a):
    c = a.copy()
    c.setflags(write=False)
    return c


def _readonly_strided(a):
    c = _strided_rows(a)
    c.setflags(write=False)
    return c


LAYOUTS_2D = {
    "cols[::2]": _strided_cols,
    "rows[::2]": _strided_rows,
    "fortran": np.asfortranarray,
    "transposed-view": lambda a: np.ascontiguousarray(a.T).T,
    "negative-strides": _negative,
    "read-only": _readonly,
    "read-only-strided": _readonly_strided,
}
LAYOUTS_1D = {
    "[::2]": _strided_rows,
    "negative-strides": _negative,
    "read-only": _readonly,
    "read-only-strided": _readonly_strided,
}


def _check_layout(orig, view, name):
    np.testing.assert_array_equal(view, orig)
    if "read-only" in name:
        assert not view.flags.writeable
    if name != "read-only":
        assert not view.flags.c_contiguous, f"{name} is C-contiguous: the test proves nothing"
    return view


def _results(m, y, rep):
    return {"y": y, "report": rep.to_dict(), "input_grad": m.input_grad.copy(),
            **{f"grad {n}": g.copy() for n, g in m.named_grads()},
            **{f"buffer {n}": b.copy() for n, b in m.named_buffers()}}


def _assert_same_results(a, b, what):
    for k in a:
        if isinstance(a[k], dict):
            assert a[k] == b[k], f"{what}: {k} differs\n{a[k]}\n{b[k]}"
        else:
            assert same(np.asarray(a[k]), np.asarray(b[k])), f"{what}: {k} differs"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS_2D))
def test_layouts_give_identical_results(dtype, layout):
    make = LAYOUTS_2D[layout]
    x, g = x_of(dtype, batch=5), g_of(dtype, batch=5)
    t = g_of(dtype, batch=5, seed=11)
    xv = _check_layout(x, make(x), layout)
    gv = _check_layout(g, make(g), layout)
    tv = _check_layout(t, make(t), layout)
    ci = np.array([0, 2, 1, 1, 0])
    civ = LAYOUTS_1D.get(layout, _negative)(ci)
    a = used_model(dtype, nan_grad=False)
    b = used_model(dtype, nan_grad=False)
    # forward + backward
    ra = _results(a, a.forward(x), a.backward(g))
    rb = _results(b, b.forward(xv), b.backward(gv))
    _assert_same_results(ra, rb, f"forward/backward with {layout} input")
    # loss_and_grad, mse and cross entropy
    la, rpa = a.loss_and_grad(x, t)
    lb, rpb = b.loss_and_grad(xv, tv)
    assert la == lb
    _assert_same_results(_results(a, la, rpa), _results(b, lb, rpb), f"mse with {layout}")
    la, rpa = a.loss_and_grad(x, ci, loss="cross_entropy")
    lb, rpb = b.loss_and_grad(xv, civ, loss="cross_entropy")
    assert la == lb
    _assert_same_results(_results(a, la, rpa), _results(b, lb, rpb),
                         f"cross_entropy with {layout}")
    # the caller's arrays are untouched
    np.testing.assert_array_equal(xv, x)
    np.testing.assert_array_equal(gv, g)


@pytest.mark.parametrize("layout", list(LAYOUTS_2D))
def test_layouts_in_load_state_dict(layout):
    a = used_model(np.float64, nan_grad=False)
    b = used_model(np.float64, nan_grad=False)
    rng = np.random.default_rng(3)
    sd = {k: (np.array(v) + rng.normal(size=np.shape(v)) if np.asarray(v).dtype.kind == "f"
              else np.array(v)) for k, v in a.state_dict().items()}
    sdv = {k: (LAYOUTS_2D[layout](v) if v.ndim == 2 else
               LAYOUTS_1D.get(layout, _negative)(v) if v.ndim == 1 else v)
           for k, v in sd.items()}
    a.load_state_dict(sd)
    b.load_state_dict(sdv)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert same(np.asarray(p), np.asarray(q)), n


def test_list_input_float64():
    m = used_model(np.float64, nan_grad=False)
    ref = used_model(np.float64, nan_grad=False)
    x, g, t = x_of(np.float64), g_of(np.float64), g_of(np.float64, seed=12)
    ra = _results(m, m.forward(x.tolist()), m.backward(g.tolist()))
    rb = _results(ref, ref.forward(x), ref.backward(g))
    _assert_same_results(ra, rb, "list input")
    la, _ = m.loss_and_grad(x.tolist(), t.tolist())
    lb, _ = ref.loss_and_grad(x, t)
    assert la == lb
    la, _ = m.loss_and_grad(x.tolist(), [0, 1, 2, 0], loss="cross_entropy")
    lb, _ = ref.loss_and_grad(x, np.array([0, 1, 2, 0]), loss="cross_entropy")
    assert la == lb
    # lists read as float64 (or int64): a float32 model refuses them, no silent cast
    m32 = used_model(np.float32)
    rejected(m32, TypeError, lambda: m32.forward(x.tolist()), "x", "float32", "float64")
    rejected(m32, TypeError, lambda: m32.forward([[1] * SIZES[0]] * 2), "x", "int64")
