"""state_dict / load_state_dict and gc.save / gc.load.

* The state dict has exactly the names, order and shapes of a torch module with ``layers``
  (nn.ModuleList of nn.Linear) and ``norms`` (nn.ModuleList of BatchNorm1d / LayerNorm):
  torch loads ours with strict=True and we load torch's, and the two then compute the same
  numbers in float64 (outputs, running statistics, gradients by name).
* Its arrays are views of the model's memory; load_state_dict copies.
* gc.save / gc.load round-trip exactly and save is atomic; corrupted files raise ValueError.
"""

from __future__ import annotations

import os
import threading
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain as gc

DTYPES = [np.float32, np.float64]


def _torch():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------- the torch twin
def torch_act(act: gc.Activation):
    torch = _torch()
    F = torch.nn.functional
    p = act.params
    return {
        "identity": lambda t: t,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, p.get("negative_slope", 0.01)),
        "elu": lambda t: F.elu(t, p.get("alpha", 1.0)),
        "selu": F.selu,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "softplus": lambda t: F.softplus(t, p.get("beta", 1.0), p.get("threshold", 20.0)),
        "silu": F.silu,
        "hardtanh": lambda t: F.hardtanh(t, p.get("min_val", -1.0), p.get("max_val", 1.0)),
    }[act.name]


def torch_twin(m: gc.MLP):
    """The torch module gradchain's names describe, with m's architecture (not its weights)."""
    torch = _torch()
    nn = torch.nn
    tdt = torch.float64 if m.dtype == np.float64 else torch.float32
    sizes, L = m.sizes, m.depth
    act = torch_act(m.activation)

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b, bias=m.bias, dtype=tdt)
                                        for a, b in zip(sizes[:-1], sizes[1:], strict=False))
            if m.norm == "batch":
                self.norms = nn.ModuleList(
                    nn.BatchNorm1d(h, eps=m.eps, momentum=m.momentum, dtype=tdt)
                    for h in sizes[1:-1])
            elif m.norm == "layer":
                self.norms = nn.ModuleList(nn.LayerNorm(h, eps=m.eps, dtype=tdt)
                                           for h in sizes[1:-1])

        def forward(self, x):
            a = x
            for layer in range(L):
                z = self.layers[layer](a)
                if m.norm is not None:
                    z = self.norms[layer](z)
                f = act(z)
                a = a + m.residual_scale * f if m.residual[layer] else f
            return self.layers[L](a)

    twin = Twin()
    twin.train(m.training)
    return twin


def to_torch(sd):
    torch = _torch()
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def assert_close(label, ours, theirs, rtol=1e-12, floor=0.0):
    """max |ours - theirs| <= rtol * max(max |theirs|, floor)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{label}: shape {ours.shape} vs {theirs.shape}"
    scale = max(float(np.max(np.abs(theirs))) if theirs.size else 0.0, floor, 1e-300)
    err = float(np.max(np.abs(ours - theirs))) / scale if ours.size else 0.0
    assert err <= rtol, f"{label}: scaled max difference {err:.3e} > {rtol:.0e}"


ARCHS = [
    # (sizes, norm, residual, bias, activation)
    ([4, 3], None, False, True, "tanh"),
    ([4, 6, 6, 6, 3], "batch", True, True, "tanh"),
    ([4, 6, 6, 5, 3], "layer", [False, True, False], True, gc.Activation("leaky_relu",
                                                                         negative_slope=0.2)),
    ([5, 7, 7, 2], "batch", 2, False, "relu"),
    ([5, 7, 7, 2], "layer", True, False, gc.Activation("softplus", beta=2.0, threshold=3.0)),
    ([3, 8, 2], None, False, False, "gelu"),
]
ARCH_IDS = ["linear", "batch-res", "layer-list", "batch-k-nobias", "layer-nobias", "none-nobias"]


def build(arch, dtype=np.float64, seed=0, **kw):
    sizes, norm, residual, bias, act = arch
    return gc.MLP(sizes, activation=act, norm=norm, residual=residual, bias=bias, dtype=dtype,
                  seed=seed, **kw)


def warm_up(m, steps=3, batch=6, seed=1):
    """A few training forward passes so that the running statistics are not trivial."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        m.forward((1.5 * rng.normal(size=(batch, m.sizes[0])) + 0.3).astype(m.dtype))


# --------------------------------------------------------------------------- names and order
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_state_dict_names_order_shapes_as_torch(arch, dtype):
    torch = _torch()
    m = build(arch, dtype)
    twin = torch_twin(m)
    ours = m.state_dict()
    theirs = twin.state_dict()
    assert list(ours) == list(theirs), (
        f"state_dict keys differ from torch's:\n ours   {list(ours)}\n torch  {list(theirs)}")
    for k, v in ours.items():
        assert isinstance(v, np.ndarray), k
        assert tuple(v.shape) == tuple(theirs[k].shape), f"{k}: {v.shape} vs {theirs[k].shape}"
        if k.endswith("num_batches_tracked"):
            assert v.dtype == np.int64 and theirs[k].dtype == torch.int64
        else:
            assert v.dtype == np.dtype(dtype), f"{k}: dtype {v.dtype}"
    # the parameter names are the state dict's, minus the buffers, in the same order
    params = [n for n, _ in m.named_parameters()]
    assert params == [n for n, _ in twin.named_parameters()]
    assert [n for n, _ in m.named_grads()] == params
    assert [n for n, _ in m.named_buffers()] == [
        n for n, _ in twin.named_buffers() if not n.endswith("num_batches_tracked")]


# --------------------------------------------------------------------------- torch <-> ours
def _compare_forward_backward(m, twin, x, g, label):
    torch = _torch()
    y = m.forward(x)
    rep = m.backward(g)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = twin(xt)
    twin.zero_grad()
    yt.backward(torch.from_numpy(g.copy()))
    assert_close(f"{label}: forward output", y, yt.detach().numpy())
    assert_close(f"{label}: dL/dx", m.input_grad, xt.grad.numpy())
    tparams = dict(twin.named_parameters())
    # under batch norm in training mode dL/db of a hidden layer is 0 in exact arithmetic:
    # compare it on the scale of all the gradients instead of its own rounding noise
    floor = max(float(p.grad.abs().max()) for p in tparams.values())
    for n, gr in m.named_grads():
        assert_close(f"{label}: gradient {n}", gr, tparams[n].grad.numpy(), floor=floor)
    assert_close(f"{label}: ||dL/dx||", rep.activation_grad_norms[0],
                 np.linalg.norm(xt.grad.numpy()))
    theirs = twin.state_dict()
    for k, v in m.state_dict().items():  # running statistics after the step
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(theirs[k]), f"{label}: {k} {int(v)} vs {int(theirs[k])}"
        else:
            assert_close(f"{label}: {k}", v, theirs[k].numpy())


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_torch_loads_ours_strict_and_computes_the_same(arch):
    torch = _torch()
    m = build(arch, np.float64, seed=3, eps=1e-3, momentum=0.25)
    warm_up(m)
    twin = torch_twin(m)
    res = twin.load_state_dict(to_torch(m.state_dict()), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, m.sizes[0]))
    g = rng.normal(size=(5, m.sizes[-1]))
    _compare_forward_backward(m, twin, x, g, "train mode")
    m.eval()
    twin.eval()
    _compare_forward_backward(m, twin, x[:1], g[:1], "eval mode")
    with torch.no_grad():
        assert m.training is twin.training is False


@pytest.mark.parametrize("keep_vars", [False, True])
@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
def test_we_load_torch_strict_and_compute_the_same(arch, keep_vars):
    torch = _torch()
    m = build(arch, np.float64, seed=5)
    twin = torch_twin(m)
    torch.manual_seed(0)
    with torch.no_grad():  # torch's own init, plus non-trivial norm parameters
        for n, p in twin.named_parameters():
            if n.startswith("norms."):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if n.endswith("weight") else 0.0))
        for _ in range(3):
            twin(torch.randn(7, m.sizes[0], dtype=torch.float64) * 2 + 0.5)
    sd = twin.state_dict(keep_vars=keep_vars)  # tensors (Parameters with requires_grad)
    res = m.load_state_dict(sd, strict=True)
    assert res == ([], [])
    for k, v in m.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(sd[k]) == 3
        else:
            np.testing.assert_array_equal(v, sd[k].detach().numpy(), err_msg=k)
    rng = np.random.default_rng(6)
    x, g = rng.normal(size=(4, m.sizes[0])), rng.normal(size=(4, m.sizes[-1]))
    m.eval()
    twin.eval()
    _compare_forward_backward(m, twin, x, g, "eval mode")
    m.train()
    twin.train()
    _compare_forward_backward(m, twin, x, g, "train mode")


def test_round_trip_through_torch_is_exact():
    """ours -> torch -> ours gives back the very same bits (float32 and float64)."""
    _torch()
    for dtype in DTYPES:
        m = build(ARCHS[1], dtype, seed=9)
        warm_up(m)
        twin = torch_twin(m)
        twin.load_state_dict(to_torch(m.state_dict()), strict=True)
        m2 = build(ARCHS[1], dtype, seed=10)
        m2.load_state_dict(twin.state_dict(), strict=True)
        for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), k


def test_load_state_dict_accepts_torch_tensors_of_any_float_dtype():
    torch = _torch()
    m64 = build(ARCHS[1], np.float64)
    m32 = build(ARCHS[1], np.float32)
    src = build(ARCHS[1], np.float64, seed=12)
    warm_up(src)
    sd = src.state_dict()
    t32 = {k: (torch.from_numpy(np.array(v)).float() if v.dtype.kind == "f"
               else torch.from_numpy(np.array(v))) for k, v in sd.items()}
    m64.load_state_dict(t32)  # float32 tensors into a float64 model: widened exactly
    for k, v in m64.state_dict().items():
        want = np.array(sd[k]).astype(np.float32).astype(np.float64) if v.dtype.kind == "f" \
            else np.array(sd[k])
        np.testing.assert_array_equal(v, want, err_msg=k)
    m32.load_state_dict(to_torch(sd))  # float64 tensors into a float32 model: rounded
    for k, v in m32.state_dict().items():
        np.testing.assert_array_equal(v, np.array(sd[k]).astype(v.dtype), err_msg=k)
    # a tensor that requires grad, and one that lives in a non-contiguous view
    td = to_torch(sd)
    td["layers.0.weight"] = td["layers.0.weight"].clone().requires_grad_(True)
    td["layers.1.weight"] = td["layers.1.weight"].T.contiguous().T
    m64.load_state_dict(td)
    np.testing.assert_array_equal(m64.state_dict()["layers.1.weight"], sd["layers.1.weight"])


# --------------------------------------------------------------------------- views and copies
@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_arrays_are_views(dtype):
    m = build(ARCHS[1], dtype, seed=1)
    warm_up(m)
    x = np.random.default_rng(2).normal(size=(3, m.sizes[0])).astype(dtype)
    m.eval()
    y0 = m.forward(x)
    sd = m.state_dict()
    params = dict(m.named_parameters())
    buffers = dict(m.named_buffers())
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        owner = params.get(k, buffers.get(k))
        assert np.shares_memory(v, owner), f"state_dict[{k!r}] is a copy, not a view"
        assert v.flags.writeable, k
    sd["layers.0.weight"][0, 0] += 1.0
    assert params["layers.0.weight"][0, 0] == sd["layers.0.weight"][0, 0]
    y1 = m.forward(x)
    assert not np.array_equal(y0, y1), "writing to state_dict()['layers.0.weight'] did nothing"
    sd["norms.0.running_mean"][...] = 5.0  # eval mode reads the running statistics
    np.testing.assert_array_equal(buffers["norms.0.running_mean"], 5.0)
    assert not np.array_equal(m.forward(x), y1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_copy_is_an_independent_snapshot(dtype):
    m = build(ARCHS[1], dtype, seed=1)
    warm_up(m)
    views, snap = m.state_dict(), m.state_dict(copy=True)
    assert list(snap) == list(views)
    for k, v in snap.items():
        assert not np.shares_memory(v, views[k]), k
        assert v.dtype == views[k].dtype and v.shape == views[k].shape, k
        np.testing.assert_array_equal(v, views[k])
    before = {k: v.copy() for k, v in snap.items()}
    m.load_state_dict(build(ARCHS[1], dtype, seed=2).state_dict())
    for k, v in snap.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert not np.array_equal(snap["layers.0.weight"], views["layers.0.weight"])
    m.load_state_dict(snap)  # a snapshot loads back
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(TypeError, match="copy: expected a bool"):
        m.state_dict(copy=1)
    r = gc.RNN(3, 5, output_size=2, seed=0)
    rs, rv = r.state_dict(copy=True), r.state_dict()
    assert list(rs) == list(rv)
    assert all(not np.shares_memory(rs[k], rv[k]) for k in rs)


def test_lock_is_the_models_reentrant_lock():
    m = build(ARCHS[1], np.float32, seed=1)
    done = threading.Event()
    with m.lock:
        with m.lock:  # re-entrant
            t = threading.Thread(target=lambda: (m.state_dict(copy=True), done.set()))
            t.start()
            assert not done.wait(0.2), "state_dict ran while another thread held model.lock"
    assert done.wait(30)
    t.join()


def test_load_state_dict_copies():
    m = build(ARCHS[1], np.float64, seed=1)
    src = {k: np.array(v) for k, v in build(ARCHS[1], np.float64, seed=2).state_dict().items()}
    m.load_state_dict(src)
    before = {k: np.array(v) for k, v in m.state_dict().items()}
    for v in src.values():
        v[...] = 0
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"model shares memory with {k}")


def test_load_state_dict_own_state_is_a_no_op():
    m = build(ARCHS[1], np.float32, seed=1)
    warm_up(m)
    before = {k: np.array(v) for k, v in m.state_dict().items()}
    m.load_state_dict(m.state_dict())
    for k, v in m.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k


# --------------------------------------------------------------------------- save / load
def full_state(m):
    s = {f"state {k}": np.array(v) for k, v in m.state_dict().items()}
    s["num_batches_tracked"] = m._num_batches_tracked.copy()  # one counter per BN layer
    s["training"] = m.training
    s["config"] = m.config()
    return s


def assert_same_state(a, b, what):
    assert list(a) == list(b), f"{what}: entries {list(a)} vs {list(b)}"
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k}"
            assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k}: {a[k]!r} vs {b[k]!r}"


_ACTS = [gc.Activation("tanh"), gc.Activation("relu"), gc.Activation("leaky_relu",
         negative_slope=0.3), gc.Activation("elu", alpha=0.7), gc.Activation("hardtanh",
         min_val=-0.5, max_val=2.0), gc.Activation("softplus", beta=3.0, threshold=4.0),
         gc.Activation("gelu_tanh"), gc.Activation("selu")]
_INITS = ["torch_default", "xavier_normal", gc.init.kaiming_uniform(gain=0.7),
          gc.init.orthogonal(gain=1.3), gc.init.normal(sigma_w=1.5, sigma_b=0.05), "identity"]


@st.composite
def models(draw):
    depth = draw(st.integers(0, 4))
    w = draw(st.integers(1, 9))
    hidden = [w if draw(st.booleans()) else draw(st.integers(1, 9)) for _ in range(depth)]
    sizes = [draw(st.integers(1, 9))] + hidden + [draw(st.integers(1, 9))]
    residual = draw(st.sampled_from([False, True, 2]))
    m = gc.MLP(sizes, activation=draw(st.sampled_from(_ACTS)),
               init=draw(st.sampled_from(_INITS)), norm=draw(st.sampled_from([None, "batch",
                                                                              "layer"])),
               residual=residual, residual_scale=draw(st.sampled_from([1.0, 0.25])),
               bias=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
               seed=draw(st.integers(0, 1000)), eps=draw(st.sampled_from([1e-5, 1e-2])),
               momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])))
    warm_up(m, steps=draw(st.integers(0, 3)), seed=draw(st.integers(0, 100)))
    m.train(draw(st.booleans()))
    return m


@settings(max_examples=25)
@given(m=models())
def test_save_load_round_trip_is_exact(tmp_path_factory, m):
    path = tmp_path_factory.mktemp("rt") / "model.npz"
    gc.save(m, path)
    m2 = gc.load(path)
    assert type(m2) is gc.MLP
    assert_same_state(full_state(m), full_state(m2), "gc.load(gc.save(m))")
    assert m2.activation == m.activation and m2.init == m.init
    assert m2.sizes == m.sizes and m2.residual == m.residual and m2.dtype == m.dtype
    x = np.random.default_rng(0).normal(size=(3, m.sizes[0])).astype(m.dtype)
    m.eval()
    m2.eval()
    assert m.forward(x).tobytes() == m2.forward(x).tobytes(), "loaded model computes otherwise"
    assert sorted(os.listdir(path.parent)) == ["model.npz"], "save left a temporary file"


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_round_trip_with_str_path_and_file_object(tmp_path, dtype):
    m = build(ARCHS[1], dtype, seed=4)
    warm_up(m)
    m.eval()
    gc.save(m, str(tmp_path / "a.npz"))
    assert_same_state(full_state(m), full_state(gc.load(str(tmp_path / "a.npz"))), "str path")
    with open(tmp_path / "a.npz", "rb") as f:
        assert_same_state(full_state(m), full_state(gc.load(f)), "file object")
    assert gc.load(tmp_path / "a.npz").training is False


def test_save_overwrites_atomically_on_success(tmp_path):
    a = build(ARCHS[1], np.float32, seed=1)
    b = build(ARCHS[1], np.float32, seed=2)
    path = tmp_path / "m.npz"
    gc.save(a, path)
    gc.save(b, path)
    assert_same_state(full_state(b), full_state(gc.load(path)), "second save")
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_into_a_directory_path_fails_cleanly(tmp_path):
    m = build(ARCHS[1], np.float32)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OSError):
        gc.save(m, target)
    assert target.is_dir() and os.listdir(target) == ["keep.txt"]
    assert os.listdir(tmp_path) == ["target"], "save left a temporary file behind"
    with pytest.raises(FileNotFoundError):
        gc.save(m, tmp_path / "missing-dir" / "m.npz")
    assert os.listdir(tmp_path) == ["target"]


@pytest.mark.parametrize("failure", ["savez", "fsync", "replace", "interrupt"])
def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    import gradchain.io as gio

    old = build(ARCHS[1], np.float64, seed=1)
    new = build(ARCHS[1], np.float64, seed=2)
    path = tmp_path / "m.npz"
    gc.save(old, path)
    old_bytes = path.read_bytes()
    exc = KeyboardInterrupt if failure == "interrupt" else OSError

    if failure in ("savez", "interrupt"):
        real = np.savez

        def broken(f, **arrays):  # write part of the archive, then fail
            real(f, **dict(list(arrays.items())[:2]))
            raise exc("disk full")

        monkeypatch.setattr(gio.np, "savez", broken)
    elif failure == "fsync":
        monkeypatch.setattr(gio.os, "fsync", lambda fd: (_ for _ in ()).throw(exc("io")))
    else:
        monkeypatch.setattr(gio.os, "replace", lambda a, b: (_ for _ in ()).throw(exc("x")))
    with pytest.raises(exc):
        gc.save(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes, "a failed save replaced the target"
    assert os.listdir(tmp_path) == ["m.npz"], "a failed save left a temporary file"
    assert_same_state(full_state(old), full_state(gc.load(path)), "old file after failure")


def test_custom_activation_models_save_and_need_the_activation_to_load(tmp_path):
    act = gc.Activation.custom(np.tanh, lambda x: 1 - np.tanh(x) ** 2, name="mytanh")
    m = gc.MLP([4, 5, 5, 2], activation=act, norm="batch", residual=True, seed=3)
    warm_up(m)
    path = tmp_path / "c.npz"
    gc.save(m, path)
    with pytest.raises(ValueError, match="custom activation 'mytanh'.*activation="):
        gc.load(path)
    m2 = gc.load(path, activation=act)
    assert_same_state(full_state(m), full_state(m2), "custom activation model")
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(m.forward(x), m2.forward(x))
    assert os.listdir(tmp_path) == ["c.npz"]


def test_load_with_an_activation_override(tmp_path):
    m = build(ARCHS[1], np.float64)
    gc.save(m, tmp_path / "m.npz")
    m2 = gc.load(tmp_path / "m.npz", activation="relu")
    assert m2.activation == gc.Activation("relu")
    np.testing.assert_array_equal(m2.state_dict()["layers.0.weight"],
                                  m.state_dict()["layers.0.weight"])


def test_saved_file_is_a_plain_npz_with_torch_names(tmp_path):
    m = build(ARCHS[1], np.float32)
    warm_up(m)
    gc.save(m, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        names = [k for k in z.files if k != "__gradchain_config__"]
        assert names == list(m.state_dict())
        for k in names:
            np.testing.assert_array_equal(z[k], m.state_dict()[k])


# --------------------------------------------------------------------------- corrupted files
@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    m = build(ARCHS[1], np.float32, seed=2)
    warm_up(m)
    path = tmp_path_factory.mktemp("saved") / "m.npz"
    gc.save(m, path)
    return path.read_bytes(), full_state(m)


def _load_bytes(tmp_path, data, name="f.npz"):
    p = tmp_path / name
    p.write_bytes(data)
    return gc.load(p)


def test_corrupted_bytes_raise_value_error_or_load_the_same_model(tmp_path, saved_bytes):
    """Flip bytes all over the file (headers, names, sizes, CRCs, the config, the data):
    gc.load raises ValueError, or - where the flip hits a field nobody checks, e.g. a
    timestamp - returns exactly the saved model. Never anything else."""
    data, state = saved_bytes
    n_err = 0
    # every 23rd byte, and every 2nd of the tail (the zip central directory)
    positions = sorted(set(range(0, len(data), 23)) | set(range(len(data) - 250, len(data), 2)))
    for i in positions:
        b = bytearray(data)
        b[i] ^= 0x5A
        try:
            m = _load_bytes(tmp_path, bytes(b))
        except ValueError:
            n_err += 1
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"byte {i} flipped: {type(e).__name__}: {e}")
        assert_same_state(state, full_state(m), f"byte {i} flipped, load succeeded")
    assert n_err > len(positions) // 2, "most flips should be detected"


def test_truncated_files_raise_value_error(tmp_path, saved_bytes):
    data, _ = saved_bytes
    for n in list(range(0, len(data), max(1, len(data) // 50))) + [len(data) - 1]:
        with pytest.raises(ValueError, match="cannot read gradchain model file"):
            _load_bytes(tmp_path, data[:n])


def test_other_zip_files_raise_value_error(tmp_path):
    p = tmp_path / "other.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="gradchain"):
        gc.load(p)
    p = tmp_path / "pickle.npz"
    np.savez(p, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="gradchain"):
        gc.load(p)
    with pytest.raises(TypeError, match="path"):
        gc.load(3)


def test_each_batch_norm_layer_keeps_its_own_counter(tmp_path):
    m = gc.MLP([3, 4, 4, 2], norm="batch", seed=0)
    m.forward(np.ones((5, 3), np.float32))
    sd = {k: np.array(v) for k, v in m.state_dict().items()}
    assert int(sd["norms.0.num_batches_tracked"]) == int(sd["norms.1.num_batches_tracked"]) == 1
    sd["norms.0.num_batches_tracked"] = np.array(7)
    sd["norms.1.num_batches_tracked"] = np.array(9)
    m.load_state_dict(sd)
    assert [int(m.state_dict()[f"norms.{i}.num_batches_tracked"]) for i in (0, 1)] == [7, 9]
    gc.save(m, tmp_path / "m.npz")
    m2 = gc.load(tmp_path / "m.npz")
    assert [int(m2.state_dict()[f"norms.{i}.num_batches_tracked"]) for i in (0, 1)] == [7, 9]
    m2.eval().forward(np.ones((1, 3), np.float32))  # eval does not count
    assert int(m2.state_dict()["norms.0.num_batches_tracked"]) == 7


def test_diverged_model_loads_only_when_asked(tmp_path):
    m = gc.MLP([3, 4, 2], seed=0)
    m._params["layers.0.weight"][0, 0] = np.nan
    gc.save(m, tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="allow_nonfinite"):
        gc.load(tmp_path / "bad.npz")
    m2 = gc.load(tmp_path / "bad.npz", allow_nonfinite=True)
    assert np.isnan(m2._params["layers.0.weight"][0, 0])
