"""API fuzzing: random arguments (shapes, ranks, dtypes, layouts, NaN/Inf, wrong Python
types) into every model entry point. Only documented exceptions may come out, never a
crash or a silent cast, and a rejected call leaves the model bitwise unchanged."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradchain as gc

DOCUMENTED = (ValueError, TypeError, MemoryError)  # StateError is a ValueError
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64]
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def arrays(draw):
    """An array-like of random rank/shape/dtype/layout/content, or a wrong Python value."""
    kind = draw(st.sampled_from(["array", "array", "array", "list", "scalar", "none", "str"]))
    if kind == "none":
        return None
    if kind == "str":
        return "x"
    if kind == "scalar":
        return draw(st.sampled_from([0, 1.5, float("nan"), True]))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = rng.normal(size=shape).astype(dtype)
    if a.size and dtype in (np.float32, np.float64) and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    layout = draw(st.sampled_from(["c", "f", "strided", "readonly"]))
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif layout == "readonly":
        a.setflags(write=False)
    return a.tolist() if kind == "list" else a


def snapshot(m):
    state = [np.array(v, copy=True) for _, v in m.named_parameters()]
    state += [np.array(v, copy=True) for _, v in m.named_grads()]
    state += [np.array(v, copy=True) for _, v in m.named_buffers()]
    return state


def unchanged(before, after):
    return all(a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
               for a, b in zip(before, after, strict=True))


def call(m, fn):
    """Run fn; if it raises, it must be documented and the model untouched."""
    before = snapshot(m)
    try:
        fn()
    except DOCUMENTED:
        assert unchanged(before, snapshot(m)), "a rejected call changed the model"
        return False
    return True


MLP = gc.MLP([5, 6, 6, 3], activation="tanh", norm="batch", seed=0)
MLP64 = gc.MLP([5, 6, 3], activation="relu", norm="layer", dtype=np.float64, seed=1)
RNN = gc.RNN(4, 6, output_size=2, seed=0)


@FUZZ
@given(x=arrays(), g=arrays(), t=arrays(), loss=st.sampled_from(["mse", "cross_entropy", "l1"]),
       acc=st.sampled_from([False, True, 1, "no"]))
def test_mlp_entry_points(x, g, t, loss, acc):
    for m in (MLP, MLP64):
        if call(m, lambda m=m: m.forward(x)):
            call(m, lambda m=m: m.backward(g, accumulate=acc))
        call(m, lambda m=m: m.loss_and_grad(x, t, loss=loss, accumulate=acc))


@FUZZ
@given(x=arrays(), h0=arrays(), gh=arrays(), gy=arrays(), t=arrays(),
       on=st.sampled_from(["last", "all", "first"]))
def test_rnn_entry_points(x, h0, gh, gy, t, on):
    m = RNN
    if call(m, lambda: m.forward(x, h0=h0)):
        call(m, lambda: m.backward(gh, gy))
    call(m, lambda: m.loss_and_grad(x, t, on=on))


@FUZZ
@given(v=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                   st.none(), st.text(max_size=2)),
       nt=st.one_of(st.floats(allow_nan=True), st.integers(-3, 3)))
def test_clipping_arguments(v, nt):
    for m in (MLP, RNN):
        call(m, lambda m=m: gc.clip_grad_norm(m, v, norm_type=nt))
        call(m, lambda m=m: gc.clip_grad_value(m, v))
        call(m, lambda m=m: gc.clip_grad_norm_per_layer(m, v))


@FUZZ
@given(key=st.sampled_from(["layers.0.weight", "layers.0.bias", "norms.0.running_var",
                            "norms.0.num_batches_tracked", "nope"]),
       value=arrays(), strict=st.booleans())
def test_load_state_dict(key, value, strict):
    sd = {k: np.array(v) for k, v in MLP.state_dict().items()}
    sd[key] = value
    call(MLP, lambda: MLP.load_state_dict(sd, strict=strict))
    MLP.load_state_dict({k: np.array(v) for k, v in MLP.state_dict().items()})


@FUZZ
@given(sizes=st.lists(st.one_of(st.integers(-2, 40), st.floats(0, 3), st.none(),
                                st.booleans()), min_size=0, max_size=5),
       act=st.sampled_from(["tanh", "relu", "swoosh", 3, None]),
       init=st.sampled_from(["orthogonal", "identity", "torch_default", "bogus", 1.0]),
       norm=st.sampled_from([None, "batch", "layer", "group", True]),
       residual=st.one_of(st.booleans(), st.integers(-1, 3), st.lists(st.booleans(),
                                                                       max_size=4)),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, "float32", int, None]))
def test_constructors(sizes, act, init, norm, residual, dtype):
    try:
        gc.MLP(sizes, activation=act, init=init, norm=norm, residual=residual, dtype=dtype)
    except DOCUMENTED:
        pass
    h = sizes[0] if sizes else 3
    try:
        gc.RNN(3, h, activation=act, init=init, dtype=dtype)
    except DOCUMENTED:
        pass


@FUZZ
@given(data=st.binary(max_size=400))
def test_load_rejects_garbage(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.npz"
    path.write_bytes(data)
    try:
        gc.load(path)
    except ValueError:
        return
    raise AssertionError("gc.load accepted random bytes")


# ---------------------------------------------------------------- research entry points
ANY = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 5), st.none(),
                st.booleans(), st.text(max_size=3), st.tuples(st.floats(-1, 2), st.floats(-1, 2)))
SMALL = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])



@SMALL
@given(opt=st.sampled_from(["SGD", "Adam", "AdamW"]), lr=ANY, a=ANY, b=ANY,
       flag=st.sampled_from([False, True, 1, "yes", None]))
def test_optimiser_arguments(opt, lr, a, b, flag):
    """Any hyper-parameters: a documented error at construction, or an optimiser whose step
    leaves the model's shapes intact (a model is never corrupted by a rejected call)."""
    cls = getattr(gc.optim, opt)
    m = gc.MLP([4, 5, 3], seed=0)
    kw = ({"lr": lr, "momentum": a, "weight_decay": b, "nesterov": flag} if opt == "SGD"
          else {"lr": lr, "betas": a, "eps": b, "amsgrad": flag})
    before = snapshot(m)
    try:
        cls(m, **kw)
    except DOCUMENTED:
        assert unchanged(before, snapshot(m))


@SMALL
@given(x=arrays(), t=arrays(), epochs=ANY, batch_size=ANY, loss=st.sampled_from(
    ["mse", "cross_entropy", "hinge", None]), clip=ANY, record_every=ANY)
def test_train_arguments(x, t, epochs, batch_size, loss, clip, record_every):
    m = gc.MLP([5, 6, 3], seed=0)
    opt = gc.optim.SGD(m, lr=0.01)
    before = snapshot(m)
    try:
        gc.train(m, (x, t), opt, epochs=epochs, batch_size=batch_size, loss=loss, clip=clip,
                 record_every=record_every, progress=False)
    except DOCUMENTED:
        assert unchanged(before, snapshot(m)), "a rejected gc.train call changed the model"


@SMALL
@given(act=st.sampled_from(["tanh", "relu", "sigmoid", "nope", 3, None]), sw=ANY, sb=ANY)
def test_theory_arguments(act, sw, sb):
    for fn in (gc.theory.fixed_point, gc.theory.chi1, gc.theory.depth_scale):
        try:
            v = fn(act, sw, sb)
        except DOCUMENTED:
            continue
        assert isinstance(v, float)


@SMALL
@given(key=st.sampled_from(["activation", "depth", "width", "norm", "residual", "batch",
                            "dtype", "sigma_w", "bogus"]),
       values=st.one_of(st.lists(ANY, max_size=3), ANY))
def test_sweep_options_are_checked_before_any_run(key, values):
    """Bad grids are refused up front; valid ones are tiny here and run serially."""
    try:
        gc.sweep({key: values}, executor="serial", progress=False, as_frame=False, depth=2,
                 width=4, batch=2)
    except DOCUMENTED:
        pass
