"""Bad input for every RNN entry point (gc.RNN's constructor, forward, backward,
loss_and_grad, reset_parameters, load_state_dict, the clipping functions on an RNN,
gc.tasks.adding_problem).

Each rejected call is checked for
  * the exact exception type (ValueError / TypeError, StateError for backward before
    forward, MemoryError for absurd sizes),
  * a message naming the argument and, for shapes, both the expected and the seen shape,
  * a model left bitwise unchanged: parameters, gradients, the saved forward pass (steps,
    batch, readout outputs) and the last input / h0 gradients.

Also: non-contiguous, Fortran-ordered, transposed, negatively strided, read-only and
torch inputs, in both layouts, give exactly the numbers of contiguous copies, and the
caller's arrays are neither modified nor kept.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import same

DTYPES = [np.float32, np.float64]
T, B, I_, H, K = 5, 3, 4, 6, 2


# --------------------------------------------------------------------------- helpers
def used_rnn(dtype=np.float64, output_size=K, batch_first=False, nan_grad=True, **kw):
    """An RNN with state: a forward and backward done (gradients, input_grad, h0_grad and
    outputs filled) and, with nan_grad, a NaN planted in a gradient (so comparisons must
    handle NaN)."""
    m = gc.RNN(I_, H, output_size=output_size, dtype=dtype, seed=1, batch_first=batch_first,
               **kw)
    rng = np.random.default_rng(0)
    lead = (B, T) if batch_first else (T, B)
    m.forward(rng.normal(size=(*lead, I_)).astype(dtype), rng.normal(size=(B, H)).astype(dtype))
    gy = rng.normal(size=(*lead, output_size)).astype(dtype) if output_size else None
    m.backward(rng.normal(size=(*lead, H)).astype(dtype), gy)
    if nan_grad:
        dict(m.named_grads())["weight_hh_l0"][2, 3] = np.nan
    return m


def snapshot(m: gc.RNN) -> dict:
    s: dict = {}
    for n, p in m.named_parameters():
        s[f"parameter {n}"] = p.copy()
    for n, g in m.named_grads():
        s[f"gradient {n}"] = g.copy()
    s["has_forward"] = bool(m._core.has_forward)
    s["forward_steps"] = int(m._core.forward_steps)
    s["forward_batch"] = int(m._core.forward_batch)
    for name in ("input_grad", "h0_grad", "outputs"):
        v = getattr(m, name)
        s[name] = None if v is None else np.array(v)
    return s


def rejected(model, exc: type[BaseException], fn, *fragments: str) -> BaseException:
    """Call fn, expect exactly `exc` with every fragment in its message and (with a model)
    the model bitwise unchanged."""
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
        changed = [k for k in before if not same(before[k], after[k])]
        assert not changed, f"rejected call {fragments!r} changed the model: {changed}"
    return e


def other(dtype):
    return np.float64 if np.dtype(dtype) == np.float32 else np.float32


def arr(shape, dtype, seed=5):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# --------------------------------------------------------------------------- constructor
CTOR_CASES = [
    ("input-zero", (0, H), {}, ValueError, ["input_size", ">= 1", "0"]),
    ("hidden-zero", (I_, 0), {}, ValueError, ["hidden_size", ">= 1", "0"]),
    ("hidden-negative", (I_, -3), {}, ValueError, ["hidden_size", "-3"]),
    ("input-float", (4.0, H), {}, TypeError, ["input_size", "float"]),
    ("hidden-float", (I_, 6.0), {}, TypeError, ["hidden_size", "float"]),
    ("hidden-bool", (I_, True), {}, TypeError, ["hidden_size", "bool"]),
    ("hidden-str", (I_, "6"), {}, TypeError, ["hidden_size", "str"]),
    ("hidden-none", (I_, None), {}, TypeError, ["hidden_size"]),
    ("output-zero", (I_, H), {"output_size": 0}, ValueError, ["output_size", ">= 1", "0"]),
    ("output-negative", (I_, H), {"output_size": -1}, ValueError, ["output_size", "-1"]),
    ("output-float", (I_, H), {"output_size": 2.0}, TypeError, ["output_size", "float"]),
    ("output-bool", (I_, H), {"output_size": True}, TypeError, ["output_size", "bool"]),
    ("input-absurd", (1 << 25, H), {}, MemoryError, ["input_size"]),
    ("hidden-absurd", (I_, 1 << 25), {}, MemoryError, ["hidden_size"]),
    ("hidden-square-absurd", (I_, 1 << 20), {}, MemoryError, ["hidden_size"]),
    ("output-absurd", (I_, H), {"output_size": 1 << 25}, MemoryError, ["output_size"]),
    ("activation-unknown", (I_, H), {"activation": "foo"}, ValueError, ["activation", "'foo'"]),
    ("activation-case", (I_, H), {"activation": "Tanh"}, ValueError, ["activation", "'Tanh'"]),
    ("activation-int", (I_, H), {"activation": 3}, TypeError, ["activation", "int"]),
    ("activation-func", (I_, H), {"activation": np.tanh}, TypeError, ["activation"]),
    ("init-unknown", (I_, H), {"init": "foo"}, ValueError, ["init", "'foo'"]),
    ("init-prefix", (I_, H), {"init": "xavier"}, ValueError, ["init", "'xavier'"]),
    ("init-int", (I_, H), {"init": 3}, TypeError, ["init"]),
    ("init-none", (I_, H), {"init": None}, TypeError, ["init"]),
    ("init-hand-built", (I_, H), {"init": gc.init.Init("foo")}, ValueError, ["init", "'foo'"]),
    ("input_init-unknown", (I_, H), {"input_init": "bar"}, ValueError, ["init", "'bar'"]),
    ("input_init-int", (I_, H), {"input_init": 1}, TypeError, ["init"]),
    ("bias-int", (I_, H), {"bias": 1}, TypeError, ["bias", "int"]),
    ("bias-str", (I_, H), {"bias": "yes"}, TypeError, ["bias", "str"]),
    ("bias-none", (I_, H), {"bias": None}, TypeError, ["bias"]),
    ("batch_first-str", (I_, H), {"batch_first": "no"}, TypeError, ["batch_first", "str"]),
    ("batch_first-int", (I_, H), {"batch_first": 0}, TypeError, ["batch_first", "int"]),
    ("dtype-int", (I_, H), {"dtype": int}, TypeError, ["dtype", "int64"]),
    ("dtype-float16", (I_, H), {"dtype": np.float16}, TypeError, ["dtype", "float16"]),
    ("dtype-none", (I_, H), {"dtype": None}, TypeError, ["dtype", "None"]),
    ("dtype-garbage", (I_, H), {"dtype": "foo"}, TypeError, ["dtype", "'foo'"]),
    ("seed-negative", (I_, H), {"seed": -1}, ValueError, ["seed", "-1"]),
    ("seed-float", (I_, H), {"seed": 1.5}, TypeError, ["seed", "float"]),
    ("seed-bool", (I_, H), {"seed": True}, TypeError, ["seed", "bool"]),
]


@pytest.mark.parametrize("args,kwargs,exc,frags",
                         [c[1:] for c in CTOR_CASES], ids=[c[0] for c in CTOR_CASES])
def test_constructor_rejects(args, kwargs, exc, frags):
    rejected(None, exc, lambda: gc.RNN(*args, **kwargs), *frags)


def test_constructor_accepts_the_boundaries():
    m = gc.RNN(1, 1)
    assert (m.input_size, m.hidden_size, m.output_size) == (1, 1, None)
    assert gc.RNN(np.int64(3), np.int32(4), output_size=np.int64(1)).output_size == 1
    assert gc.RNN(2, 3, bias=np.bool_(False)).bias is False
    assert gc.RNN(2, 3, batch_first=np.bool_(True)).batch_first is True
    assert gc.RNN(2, 3, dtype="float64").dtype == np.float64
    assert gc.RNN(2, 3, activation="swish").activation.name == "silu"
    assert gc.RNN(2, 3, init=gc.init.orthogonal).init.name == "orthogonal"
    gc.RNN(2, 3, seed=0)
    gc.RNN(2, 3, seed=np.int64(2**40))


def test_constructor_reports_core_allocation_failure_by_argument(monkeypatch):
    def no_memory(*a, **k):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(gc._core, "RnnChainF32", no_memory)
    rejected(None, MemoryError, lambda: gc.RNN(3, 5), "hidden_size", "5", "float32")


# --------------------------------------------------------------------------- forward
def forward_cases(dtype, batch_first=False):
    o = other(dtype)
    lead = "(B, T, " if batch_first else "(T, B, "

    def x(shape, dt=dtype):
        return arr(shape, dt)

    good = (B, T, I_) if batch_first else (T, B, I_)
    return [
        ("x-wrong-I", lambda m: m.forward(x((*good[:2], I_ + 1))), ValueError,
         ["x", f"{lead}{I_})", f"({good[0]}, {good[1]}, {I_ + 1})"]),
        ("x-2d", lambda m: m.forward(x((T, I_))), ValueError,
         ["x", f"{lead}{I_})", f"({T}, {I_})"]),
        ("x-4d", lambda m: m.forward(x((T, B, 1, I_))), ValueError,
         ["x", f"{lead}{I_})", f"({T}, {B}, 1, {I_})"]),
        ("x-1d", lambda m: m.forward(x((I_,))), ValueError, ["x", f"({I_},)"]),
        ("x-scalar", lambda m: m.forward(np.array(1.0, dtype)), ValueError, ["x", "()"]),
        ("x-zero-steps", lambda m: m.forward(x((0, B, I_))), ValueError,
         ["x", f"{lead}{I_})", ">= 1", f"(0, {B}, {I_})"]),
        ("x-zero-batch", lambda m: m.forward(x((T, 0, I_))), ValueError,
         ["x", ">= 1", f"({T}, 0, {I_})"]),
        ("x-dtype", lambda m: m.forward(x(good, o)), TypeError,
         ["x", np.dtype(dtype).name, np.dtype(o).name, "astype"]),
        ("x-int", lambda m: m.forward(np.ones(good, np.int64)), TypeError, ["x", "int64"]),
        ("x-bool", lambda m: m.forward(np.ones(good, bool)), TypeError, ["x", "bool"]),
        ("x-object", lambda m: m.forward(np.ones(good, object)), TypeError, ["x", "object"]),
        ("x-complex", lambda m: m.forward(np.ones(good, np.complex128)), TypeError,
         ["x", "complex128"]),
        ("x-str", lambda m: m.forward("abc"), TypeError, ["x", "str"]),
        ("x-none", lambda m: m.forward(None), TypeError, ["x", "NoneType"]),
        ("x-dict", lambda m: m.forward({}), TypeError, ["x", "dict"]),
        ("x-ragged", lambda m: m.forward([[[1.0] * I_], [[1.0] * (I_ + 1)]]), TypeError, ["x"]),
        ("x-nan", lambda m: m.forward(_poison(x(good), (1, 2, 0), np.nan)), ValueError,
         ["x", "NaN or Inf", "(1, 2, 0)"]),
        ("x-inf", lambda m: m.forward(_poison(x(good), (2, 0, 3), -np.inf)), ValueError,
         ["x", "NaN or Inf", "(2, 0, 3)"]),
        ("h0-rows", lambda m: m.forward(x(good), x((B + 1, H))), ValueError,
         ["h0", f"({B}, {H})", f"({B + 1}, {H})"]),
        ("h0-cols", lambda m: m.forward(x(good), x((B, H - 1))), ValueError,
         ["h0", f"({B}, {H})", f"({B}, {H - 1})"]),
        ("h0-3d", lambda m: m.forward(x(good), x((1, B, H))), ValueError,
         ["h0", f"({B}, {H})", f"(1, {B}, {H})"]),
        ("h0-1d", lambda m: m.forward(x(good), x((H,))), ValueError,
         ["h0", f"({B}, {H})", f"({H},)"]),
        ("h0-dtype", lambda m: m.forward(x(good), x((B, H), o)), TypeError,
         ["h0", np.dtype(dtype).name, np.dtype(o).name]),
        ("h0-nan", lambda m: m.forward(x(good), _poison(x((B, H)), (1, 4), np.nan)), ValueError,
         ["h0", "NaN or Inf", "(1, 4)"]),
        ("h0-str", lambda m: m.forward(x(good), "zeros"), TypeError, ["h0", "str"]),
        ("call-x-dtype", lambda m: m(x(good, o)), TypeError, ["x", np.dtype(o).name]),
    ]


def _poison(a, idx, v):
    a = a.copy()
    a[idx] = v
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_forward_rejects(dtype, batch_first):
    m = used_rnn(dtype, batch_first=batch_first)
    for cid, fn, exc, frags in forward_cases(dtype, batch_first):
        try:
            rejected(m, exc, lambda fn=fn: fn(m), *frags)
        except AssertionError as e:
            raise AssertionError(f"case {cid}: {e}") from None
    # the saved forward pass is intact: backward still works with its shapes
    lead = (B, T) if batch_first else (T, B)
    m.backward(arr((*lead, H), dtype))


def test_forward_lists_follow_the_no_cast_rule():
    """Python lists become float64 (as np.asarray does): fine for a float64 model, a
    TypeError for a float32 one (no silent cast)."""
    x = np.ones((2, 1, 3)).tolist()
    assert gc.RNN(3, 2, dtype=np.float64, seed=0).forward(x).shape == (2, 1, 2)
    m = gc.RNN(3, 2, dtype=np.float32, seed=0)
    rejected(m, TypeError, lambda: m.forward(x), "x", "float32", "float64")
    rejected(m, TypeError, lambda: m.forward([[[1, 2, 3]]]), "x", "int64")


def _overcommit_mode() -> str:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


@pytest.mark.skipif(_overcommit_mode() not in ("0", "2"),
                    reason="with unconditional overcommit the kernel grants any allocation")
def test_forward_of_absurd_size_is_a_memory_error():
    """T * B * H far beyond any memory: MemoryError naming x (not the core's bare
    "std::bad_alloc"), and the model works afterwards."""
    m = gc.RNN(1, 4096, dtype=np.float32, seed=0)
    x = np.zeros((1 << 24, 1, 1), np.float32)  # 64 MB; hs alone would be 256 GB
    e = rejected(None, MemoryError, lambda: m.forward(x), "x", f"({1 << 24}, 1, 1)",
                 "hidden_size=4096")
    assert "bad_alloc" not in str(e)
    # the model still works afterwards
    hs = m.forward(np.ones((2, 3, 1), np.float32))
    assert hs.shape == (2, 3, 4096)
    m.backward(np.ones_like(hs))


def test_forward_memory_error_from_the_core_names_x(monkeypatch):
    m = used_rnn(np.float32)

    class NoMemoryCore:
        def __init__(self, core):
            self._c = core

        def forward(self, *a):
            raise MemoryError("std::bad_alloc")

        def __getattr__(self, name):
            return getattr(self._c, name)

    monkeypatch.setattr(m, "_core", NoMemoryCore(m._core))
    x = arr((T, B, I_), np.float32)
    rejected(m, MemoryError, lambda: m.forward(x), "x", f"({T}, {B}, {I_})", "float32")
    rejected(m, MemoryError, lambda: m.loss_and_grad(x, arr((B, K), np.float32)), "x")


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_before_forward_is_a_state_error(dtype):
    m = gc.RNN(I_, H, output_size=K, dtype=dtype, seed=0)
    g = arr((T, B, H), dtype)
    e = rejected(m, gc.StateError, lambda: m.backward(g), "backward", "forward")
    assert isinstance(e, RuntimeError) and isinstance(e, ValueError)
    rejected(m, gc.StateError, lambda: m.backward(None, arr((T, B, K), dtype)), "forward")
    # after load_state_dict / reset_parameters the weights changed: forward again
    m.forward(arr((T, B, I_), dtype))
    m.load_state_dict(m.state_dict())
    rejected(m, gc.StateError, lambda: m.backward(g), "forward")
    m.forward(arr((T, B, I_), dtype))
    m.reset_parameters(3)
    rejected(m, gc.StateError, lambda: m.backward(g), "forward")


def backward_cases(dtype, batch_first=False):
    o = other(dtype)
    lead = (B, T) if batch_first else (T, B)
    swapped = lead[::-1]
    gh_ok = arr((*lead, H), dtype)
    return [
        ("neither", lambda m: m.backward(), ValueError, ["grad_hs", "grad_ys"]),
        ("both-none", lambda m: m.backward(None, None), ValueError, ["grad_hs", "grad_ys"]),
        ("gh-H", lambda m: m.backward(arr((*lead, H + 1), dtype)), ValueError,
         ["grad_hs", f"({lead[0]}, {lead[1]}, {H})", f"({lead[0]}, {lead[1]}, {H + 1})"]),
        ("gh-T", lambda m: m.backward(arr((lead[0] + 1, lead[1], H), dtype)), ValueError,
         ["grad_hs", f"({lead[0]}, {lead[1]}, {H})", f"({lead[0] + 1}, {lead[1]}, {H})"]),
        ("gh-swapped", lambda m: m.backward(arr((*swapped, H), dtype)), ValueError,
         ["grad_hs", f"({lead[0]}, {lead[1]}, {H})", f"({swapped[0]}, {swapped[1]}, {H})"]),
        ("gh-2d", lambda m: m.backward(arr((B, H), dtype)), ValueError,
         ["grad_hs", f"({B}, {H})"]),
        ("gh-dtype", lambda m: m.backward(arr((*lead, H), o)), TypeError,
         ["grad_hs", np.dtype(dtype).name, np.dtype(o).name]),
        ("gh-int", lambda m: m.backward(np.ones((*lead, H), np.int32)), TypeError,
         ["grad_hs", "int32"]),
        ("gh-nan", lambda m: m.backward(_poison(gh_ok, (0, 1, 2), np.nan)), ValueError,
         ["grad_hs", "NaN or Inf", "(0, 1, 2)"]),
        ("gh-inf", lambda m: m.backward(_poison(gh_ok, (4 if lead[0] == T else 2, 0, 0),
                                                np.inf)), ValueError, ["grad_hs", "NaN or Inf"]),
        ("gh-str", lambda m: m.backward("ones"), TypeError, ["grad_hs", "str"]),
        ("gy-K", lambda m: m.backward(None, arr((*lead, K + 1), dtype)), ValueError,
         ["grad_ys", f"({lead[0]}, {lead[1]}, {K})", f"({lead[0]}, {lead[1]}, {K + 1})"]),
        ("gy-B", lambda m: m.backward(gh_ok, arr((lead[0], lead[1] + 2, K), dtype)), ValueError,
         ["grad_ys", f"({lead[0]}, {lead[1]}, {K})", f"({lead[0]}, {lead[1] + 2}, {K})"]),
        ("gy-dtype", lambda m: m.backward(gh_ok, arr((*lead, K), o)), TypeError,
         ["grad_ys", np.dtype(o).name]),
        ("gy-nan", lambda m: m.backward(None, _poison(arr((*lead, K), dtype), (1, 1, 1),
                                                      np.nan)), ValueError,
         ["grad_ys", "NaN or Inf", "(1, 1, 1)"]),
        ("gy-bad-gh-good", lambda m: m.backward(gh_ok, arr((*lead, 7), dtype)), ValueError,
         ["grad_ys"]),
        ("gh-bad-gy-good", lambda m: m.backward(arr((*lead, 1), dtype), arr((*lead, K), dtype)),
         ValueError, ["grad_hs"]),
        ("accumulate-str", lambda m: m.backward(gh_ok, accumulate="no"), TypeError,
         ["accumulate", "str"]),
        ("accumulate-int", lambda m: m.backward(gh_ok, accumulate=1), TypeError,
         ["accumulate", "int"]),
        ("accumulate-none", lambda m: m.backward(gh_ok, accumulate=None), TypeError,
         ["accumulate"]),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_backward_rejects(dtype, batch_first):
    m = used_rnn(dtype, batch_first=batch_first)
    for cid, fn, exc, frags in backward_cases(dtype, batch_first):
        try:
            rejected(m, exc, lambda fn=fn: fn(m), *frags)
        except AssertionError as e:
            raise AssertionError(f"case {cid}: {e}") from None


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_ys_without_readout(dtype):
    m = used_rnn(dtype, output_size=None)
    rejected(m, ValueError, lambda: m.backward(None, arr((T, B, K), dtype)),
             "grad_ys", "no readout", "output_size")
    rejected(m, ValueError, lambda: m.backward(arr((T, B, H), dtype), arr((T, B, K), dtype)),
             "grad_ys", "no readout")


# ----------------------------------------------------------------------- loss_and_grad
def loss_cases(dtype, output_size, batch_first=False):
    o = other(dtype)
    F = output_size or H
    lead = (B, T) if batch_first else (T, B)
    good = arr((*lead, I_), dtype)
    lab = np.zeros(B, np.int64)
    lab_all = np.zeros(lead, np.int64)

    def lg(m, target, **kw):
        return m.loss_and_grad(good, target, **kw)

    return [
        ("loss-unknown", lambda m: lg(m, arr((B, F), dtype), loss="l1"), ValueError,
         ["loss", "'l1'", "mse", "cross_entropy"]),
        ("loss-case", lambda m: lg(m, arr((B, F), dtype), loss="MSE"), ValueError,
         ["loss", "'MSE'"]),
        ("loss-none", lambda m: lg(m, arr((B, F), dtype), loss=None), ValueError,
         ["loss", "None"]),
        ("on-unknown", lambda m: lg(m, arr((B, F), dtype), on="first"), ValueError,
         ["on", "'first'", "'last'", "'all'"]),
        ("on-none", lambda m: lg(m, arr((B, F), dtype), on=None), ValueError, ["on", "None"]),
        ("on-int", lambda m: lg(m, arr((B, F), dtype), on=-1), ValueError, ["on", "-1"]),
        # mse, on="last": (B, F)
        ("mse-last-F", lambda m: lg(m, arr((B, F + 1), dtype)), ValueError,
         ["target", f"({B}, {F})", f"({B}, {F + 1})"]),
        ("mse-last-B", lambda m: lg(m, arr((B + 1, F), dtype)), ValueError,
         ["target", f"({B}, {F})", f"({B + 1}, {F})"]),
        ("mse-last-given-all", lambda m: lg(m, arr((*lead, F), dtype)), ValueError,
         ["target", f"({B}, {F})", f"({lead[0]}, {lead[1]}, {F})"]),
        ("mse-last-1d", lambda m: lg(m, arr((B,), dtype)), ValueError,
         ["target", f"({B}, {F})", f"({B},)"]),
        ("mse-dtype", lambda m: lg(m, arr((B, F), o)), TypeError,
         ["target", np.dtype(dtype).name, np.dtype(o).name]),
        ("mse-int", lambda m: lg(m, np.zeros((B, F), np.int64)), TypeError, ["target", "int64"]),
        ("mse-nan", lambda m: lg(m, _poison(arr((B, F), dtype), (2, 0), np.nan)), ValueError,
         ["target", "NaN or Inf", "(2, 0)"]),
        ("mse-str", lambda m: lg(m, "zeros"), TypeError, ["target", "str"]),
        # mse, on="all": the layout's (T, B, F) / (B, T, F)
        ("mse-all-given-last", lambda m: lg(m, arr((B, F), dtype), on="all"), ValueError,
         ["target", f"({lead[0]}, {lead[1]}, {F})", f"({B}, {F})"]),
        ("mse-all-swapped", lambda m: lg(m, arr((lead[1], lead[0], F), dtype), on="all"),
         ValueError, ["target", f"({lead[0]}, {lead[1]}, {F})", f"({lead[1]}, {lead[0]}, {F})"]),
        ("mse-all-F", lambda m: lg(m, arr((*lead, F + 2), dtype), on="all"), ValueError,
         ["target", f"({lead[0]}, {lead[1]}, {F})", f"({lead[0]}, {lead[1]}, {F + 2})"]),
        ("mse-all-dtype", lambda m: lg(m, arr((*lead, F), o), on="all"), TypeError,
         ["target", np.dtype(o).name]),
        # cross-entropy, on="last": (B,) ints in [0, F)
        ("ce-float", lambda m: lg(m, lab.astype(dtype), loss="cross_entropy"), TypeError,
         ["target", "integer", np.dtype(dtype).name]),
        ("ce-bool", lambda m: lg(m, lab.astype(bool), loss="cross_entropy"), TypeError,
         ["target", "bool"]),
        ("ce-shape", lambda m: lg(m, np.zeros(B + 1, np.int64), loss="cross_entropy"),
         ValueError, ["target", f"({B},)", f"({B + 1},)"]),
        ("ce-last-given-all", lambda m: lg(m, lab_all, loss="cross_entropy"), ValueError,
         ["target", f"({B},)", f"({lead[0]}, {lead[1]})"]),
        ("ce-high", lambda m: lg(m, _poison(lab, 1, F), loss="cross_entropy"), ValueError,
         ["target", f"[0, {F})", str(F)]),
        ("ce-negative", lambda m: lg(m, _poison(lab, 0, -1), loss="cross_entropy"), ValueError,
         ["target", f"[0, {F})", "-1"]),
        # cross-entropy, on="all": the layout's (T, B) / (B, T)
        ("ce-all-given-last", lambda m: lg(m, lab, loss="cross_entropy", on="all"), ValueError,
         ["target", f"({lead[0]}, {lead[1]})", f"({B},)"]),
        ("ce-all-swapped", lambda m: lg(m, lab_all.T, loss="cross_entropy", on="all"),
         ValueError, ["target", f"({lead[0]}, {lead[1]})", f"({lead[1]}, {lead[0]})"]),
        ("ce-all-high", lambda m: lg(m, _poison(lab_all, (1, 1), F + 3), loss="cross_entropy",
                                     on="all"), ValueError, ["target", f"[0, {F})"]),
        ("ce-all-negative", lambda m: lg(m, _poison(lab_all, (0, 2), -5),
                                         loss="cross_entropy", on="all"), ValueError,
         ["target", "-5"]),
        ("ce-all-float", lambda m: lg(m, lab_all.astype(dtype), loss="cross_entropy", on="all"),
         TypeError, ["target", "integer"]),
        # x and h0 through loss_and_grad
        ("x-dtype", lambda m: m.loss_and_grad(arr((*lead, I_), o), arr((B, F), dtype)),
         TypeError, ["x", np.dtype(o).name]),
        ("x-I", lambda m: m.loss_and_grad(arr((*lead, I_ + 1), dtype), arr((B, F), dtype)),
         ValueError, ["x", f"({lead[0]}, {lead[1]}, {I_ + 1})"]),
        ("x-nan", lambda m: m.loss_and_grad(_poison(good, (0, 0, 0), np.nan),
                                            arr((B, F), dtype)), ValueError, ["x", "NaN"]),
        ("h0-shape", lambda m: lg(m, arr((B, F), dtype), h0=arr((B, H + 1), dtype)), ValueError,
         ["h0", f"({B}, {H})", f"({B}, {H + 1})"]),
        ("h0-dtype", lambda m: lg(m, arr((B, F), dtype), h0=arr((B, H), o)), TypeError,
         ["h0", np.dtype(o).name]),
        ("h0-inf", lambda m: lg(m, arr((B, F), dtype), h0=_poison(arr((B, H), dtype), (0, 5),
                                                                  np.inf)),
         ValueError, ["h0", "NaN or Inf", "(0, 5)"]),
        ("accumulate-str", lambda m: lg(m, arr((B, F), dtype), accumulate="yes"), TypeError,
         ["accumulate", "str"]),
        ("accumulate-float", lambda m: lg(m, arr((B, F), dtype), accumulate=1.0), TypeError,
         ["accumulate", "float"]),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size", [None, K])
@pytest.mark.parametrize("batch_first", [False, True])
def test_loss_and_grad_rejects(dtype, output_size, batch_first):
    m = used_rnn(dtype, output_size=output_size, batch_first=batch_first)
    for cid, fn, exc, frags in loss_cases(dtype, output_size, batch_first):
        try:
            rejected(m, exc, lambda fn=fn: fn(m), *frags)
        except AssertionError as e:
            raise AssertionError(f"case {cid}: {e}") from None
    # the accepted forms, for contrast (so the rejections are not over-eager)
    F = output_size or H
    lead = (B, T) if batch_first else (T, B)
    x = arr((*lead, I_), dtype)
    m.loss_and_grad(x, arr((B, F), dtype))
    m.loss_and_grad(x, arr((*lead, F), dtype), on="all")
    m.loss_and_grad(x, np.full(B, F - 1, np.uint8), loss="cross_entropy")
    m.loss_and_grad(x, np.zeros(lead, np.int32), loss="cross_entropy", on="all")


# ----------------------------------------------------------- other entry points
@pytest.mark.parametrize("dtype", DTYPES)
def test_reset_parameters_and_state_dict_reject(dtype):
    m = used_rnn(dtype)
    rejected(m, ValueError, lambda: m.reset_parameters(-1), "seed", "-1")
    rejected(m, TypeError, lambda: m.reset_parameters(2.5), "seed", "float")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["weight_hh_l0"] = np.ones((H, H + 1))
    rejected(m, ValueError, lambda: m.load_state_dict(sd), "weight_hh_l0", f"({H}, {H})",
             f"({H}, {H + 1})")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    del sd["readout.bias"]
    rejected(m, ValueError, lambda: m.load_state_dict(sd), "missing", "readout.bias")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["weight_hh_l1"] = sd["weight_hh_l0"]
    rejected(m, ValueError, lambda: m.load_state_dict(sd), "unexpected", "weight_hh_l1")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["bias_ih_l0"] = _poison(sd["bias_ih_l0"], 1, np.nan)
    rejected(m, ValueError, lambda: m.load_state_dict(sd), "bias_ih_l0", "NaN")
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["weight_ih_l0"] = np.ones((H, I_), np.int64)
    rejected(m, TypeError, lambda: m.load_state_dict(sd), "weight_ih_l0", "int64")
    rejected(m, TypeError, lambda: m.load_state_dict([1, 2]), "state_dict", "list")


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_rejects_bad_arguments_on_an_rnn(dtype):
    m = used_rnn(dtype, nan_grad=False)
    rejected(m, ValueError, lambda: gc.clip_grad_norm(m, -1.0), "max_norm", "-1.0")
    rejected(m, ValueError, lambda: gc.clip_grad_norm(m, math.nan), "max_norm")
    rejected(m, TypeError, lambda: gc.clip_grad_norm(m, "1"), "max_norm", "str")
    rejected(m, ValueError, lambda: gc.clip_grad_norm(m, 1.0, norm_type=1.0), "norm_type")
    rejected(m, ValueError, lambda: gc.clip_grad_value(m, -0.5), "clip_value", "-0.5")
    rejected(m, ValueError, lambda: gc.clip_grad_value(m, math.nan), "clip_value")
    rejected(m, ValueError, lambda: gc.clip_grad_norm_per_layer(m, -2.0), "max_norm")
    rejected(m, TypeError, lambda: gc.clip_grad_norm_per_layer(m, None), "max_norm")
    m._grads["weight_ih_l0"][0, 0] = np.inf
    e = rejected(m, gc._core.NonFiniteError,
                 lambda: gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True), "non-finite")
    assert isinstance(e, RuntimeError)  # as torch's clip_grad_norm_


ADDING_CASES = [
    ("T-one", (1, 3), {}, ValueError, ["T", ">= 2", "1"]),
    ("T-zero", (0, 3), {}, ValueError, ["T", "0"]),
    ("T-float", (5.0, 3), {}, TypeError, ["T", "float"]),
    ("T-bool", (True, 3), {}, TypeError, ["T", "bool"]),
    ("n-zero", (5, 0), {}, ValueError, ["n", ">= 1", "0"]),
    ("n-negative", (5, -2), {}, ValueError, ["n", "-2"]),
    ("n-str", (5, "3"), {}, TypeError, ["n", "str"]),
    ("seed-negative", (5, 3), {"seed": -1}, ValueError, ["seed", "-1"]),
    ("seed-float", (5, 3), {"seed": 1.5}, TypeError, ["seed", "float"]),
    ("dtype-int", (5, 3), {"dtype": np.int32}, TypeError, ["dtype", "int32"]),
    ("dtype-float16", (5, 3), {"dtype": np.float16}, TypeError, ["dtype", "float16"]),
    ("dtype-none", (5, 3), {"dtype": None}, TypeError, ["dtype"]),
]


@pytest.mark.parametrize("args,kwargs,exc,frags",
                         [c[1:] for c in ADDING_CASES], ids=[c[0] for c in ADDING_CASES])
def test_adding_problem_rejects(args, kwargs, exc, frags):
    rejected(None, exc, lambda: gc.tasks.adding_problem(*args, **kwargs), *frags)


# ---------------------------------------------- layouts handled as contiguous copies
def _variants(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in other memory layouts."""
    out = {}
    out["fortran"] = np.asfortranarray(a)
    big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    big[::2] = a
    out["strided"] = big[::2]
    rev = np.ascontiguousarray(a[::-1])
    out["negative-stride"] = rev[::-1]
    ro = a.copy()
    ro.setflags(write=False)
    out["read-only"] = ro
    if a.ndim >= 2:
        out["transposed-view"] = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    return out


def _run(m, x, h0, gh, gy, target, loss, on):
    hs = m.forward(x, h0)
    outs = None if m.outputs is None else m.outputs.copy()
    rep = m.backward(gh, gy)
    res = {"hs": hs.copy(), "outs": outs, "rep": rep.to_dict(), "dx": m.input_grad.copy(),
           "dh0": m.h0_grad.copy()}
    res.update({f"g {k}": v.copy() for k, v in m.named_grads()})
    value, rep2 = m.loss_and_grad(x, target, loss=loss, on=on, h0=h0)
    res.update(value=value, rep2=rep2.to_dict(), dx2=m.input_grad.copy())
    res.update({f"g2 {k}": v.copy() for k, v in m.named_grads()})
    return res


def _assert_same(a: dict, b: dict, what: str) -> None:
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert same(a[k], b[k]), f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k} differs"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("loss,on", [("mse", "all"), ("cross_entropy", "all"),
                                     ("mse", "last"), ("cross_entropy", "last")])
def test_layouts_give_exactly_the_contiguous_results(dtype, batch_first, loss, on):
    m = gc.RNN(I_, H, output_size=K, dtype=dtype, seed=2, batch_first=batch_first)
    lead = (B, T) if batch_first else (T, B)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(*lead, I_)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    gh = rng.normal(size=(*lead, H)).astype(dtype)
    gy = rng.normal(size=(*lead, K)).astype(dtype)
    if loss == "mse":
        target = rng.normal(size=(B, K) if on == "last" else (*lead, K)).astype(dtype)
    else:
        target = rng.integers(0, K, size=(B,) if on == "last" else lead)
    base = _run(m, x, h0, gh, gy, target, loss, on)
    inputs = {"x": x, "h0": h0, "gh": gh, "gy": gy, "target": target}
    for name, a in inputs.items():
        for vname, v in _variants(a).items():
            kw = dict(inputs, **{name: v})
            keep = {k: np.array(w) for k, w in kw.items()}
            got = _run(m, kw["x"], kw["h0"], kw["gh"], kw["gy"], kw["target"], loss, on)
            _assert_same(base, got, f"{name} as {vname}")
            for k, w in kw.items():  # the caller's arrays are not modified
                assert same(np.array(w), keep[k]), f"{k} modified ({name} as {vname})"


def test_batch_first_accepts_a_transposed_time_major_array():
    """A batch-first model given np.swapaxes of a time-major array (a view) computes
    what the time-major model computes on the original."""
    tm = gc.RNN(I_, H, dtype=np.float64, seed=4)
    bf = gc.RNN(I_, H, dtype=np.float64, seed=4, batch_first=True)
    x = arr((T, B, I_), np.float64)
    assert np.array_equal(bf.forward(np.swapaxes(x, 0, 1)), np.swapaxes(tm.forward(x), 0, 1))
    g = arr((T, B, H), np.float64, seed=9)
    assert tm.backward(g).to_dict() == bf.backward(np.swapaxes(g, 0, 1)).to_dict()
    assert np.array_equal(bf.input_grad, np.swapaxes(tm.input_grad, 0, 1))


def test_inputs_are_copied_not_kept():
    """Changing x after forward does not change what backward computes."""
    m = gc.RNN(I_, H, dtype=np.float64, seed=0)
    x = arr((T, B, I_), np.float64)
    g = arr((T, B, H), np.float64, seed=1)
    m.forward(x)
    ref_rep = m.backward(g).to_dict()
    ref_g = {k: v.copy() for k, v in m.named_grads()}
    m.forward(x)
    x[...] = 0.0
    assert m.backward(g).to_dict() == ref_rep
    for k, v in m.named_grads():
        assert np.array_equal(v, ref_g[k]), k


def test_torch_tensors_are_accepted_like_arrays():
    torch = pytest.importorskip("torch")
    m = gc.RNN(I_, H, output_size=K, dtype=np.float64, seed=0)
    x = arr((T, B, I_), np.float64)
    h0 = arr((B, H), np.float64, seed=2)
    hs = m.forward(x, h0).copy()
    rep = m.backward(None, np.ones((T, B, K))).to_dict()
    xt = torch.tensor(x, requires_grad=True)
    assert np.array_equal(m.forward(xt, torch.from_numpy(h0)), hs)
    assert m.backward(None, torch.ones(T, B, K, dtype=torch.float64)).to_dict() == rep
    rejected(m, TypeError, lambda: m.forward(torch.from_numpy(x).float()), "x", "float32")


def test_a_failed_call_keeps_the_previous_forward_usable():
    m = gc.RNN(I_, H, output_size=K, dtype=np.float32, seed=0)
    x = arr((T, B, I_), np.float32)
    g = arr((T, B, H), np.float32, seed=3)
    m.forward(x)
    expected = m.backward(g).to_dict()
    m.forward(x)
    for bad in (lambda: m.forward(arr((T + 1, B, I_ + 1), np.float32)),
                lambda: m.forward(arr((T, B, I_), np.float64)),
                lambda: m.loss_and_grad(arr((T + 2, B + 1, I_), np.float32),
                                        np.zeros((B, 9), np.float32)),
                lambda: m.loss_and_grad(x, np.zeros(B, np.int64), loss="cross_entropy",
                                        on="all")):
        with pytest.raises((ValueError, TypeError)):
            bad()
    assert m.backward(g).to_dict() == expected
