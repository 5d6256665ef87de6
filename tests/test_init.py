"""Initialisation schemes (docs/CONVENTIONS.md, "Initialization"; names and gains as torch.nn.init).

Statistics are taken over a large layer. The tolerance on a variance is K standard errors
of the estimator: for i.i.d. zero-mean samples, mean(w^2) estimates sigma^2 with relative
standard error sqrt((kurtosis - 1) / N), i.e. sqrt(2/N) for a normal and sqrt(0.8/N) for a
uniform. K = 6 makes a false failure a ~1e-9 event, while every plausible bug (a wrong
gain: 5/3 vs sqrt(2) is a 39% change of variance; fan_in vs fan_out; uniform vs normal)
is tens of standard errors away. The kurtosis (3 for a normal, 1.8 for a uniform) tells the
two families apart; its standard error is about sqrt(24/N) < 0.01 here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc

K = 6.0
DTYPES = [np.float32, np.float64]
BIG = [600, 400, 300]  # two linear layers: (400, 600) and (300, 400), 360k weights together
RELU_GAIN = math.sqrt(2.0)

# docs/CONVENTIONS.md: identity->linear 1, sigmoid 1, tanh 5/3, relu sqrt2,
# leaky_relu sqrt(2/(1+slope^2)), selu 3/4, others sqrt2.
GAINS = {
    ("identity", ()): 1.0,
    ("linear", ()): 1.0,
    ("sigmoid", ()): 1.0,
    ("tanh", ()): 5.0 / 3.0,
    ("relu", ()): RELU_GAIN,
    ("leaky_relu", ()): math.sqrt(2.0 / (1.0 + 0.01**2)),
    ("leaky_relu", (("negative_slope", 0.2),)): math.sqrt(2.0 / (1.0 + 0.2**2)),
    ("leaky_relu", (("negative_slope", 3.0),)): math.sqrt(2.0 / (1.0 + 9.0)),
    ("selu", ()): 0.75,
    ("elu", ()): RELU_GAIN,
    ("elu", (("alpha", 0.5),)): RELU_GAIN,
    ("gelu", ()): RELU_GAIN,
    ("gelu_tanh", ()): RELU_GAIN,
    ("softplus", ()): RELU_GAIN,
    ("silu", ()): RELU_GAIN,
    ("swish", ()): RELU_GAIN,
    ("hardtanh", ()): RELU_GAIN,
}


def act_of(key):
    name, params = key
    return gc.Activation(name, **dict(params))


def weights(m):
    return [np.asarray(p, dtype=np.float64) for n, p in m.named_parameters()
            if n.startswith("layers.") and n.endswith(".weight")]


def biases(m):
    return [np.asarray(p, dtype=np.float64) for n, p in m.named_parameters()
            if n.startswith("layers.") and n.endswith(".bias")]


def fans(sizes):
    return list(zip(sizes[:-1], sizes[1:], strict=False))  # (fan_in, fan_out) per layer


def check_stats(w, *, std, family, label, bound=None, dtype=np.float64):
    """w ~ (uniform on +-bound | normal) with standard deviation std, mean 0."""
    w = np.asarray(w, dtype=np.float64).ravel()
    n = w.size
    m2 = float(np.mean(w * w))
    kurt_minus_1 = 2.0 if family == "normal" else 0.8
    rel = K * math.sqrt(kurt_minus_1 / n)
    assert abs(m2 / std**2 - 1.0) < rel, (
        f"{label}: variance {m2:.6g} vs expected {std**2:.6g} (ratio {m2 / std**2:.4f}, "
        f"allowed +-{rel:.4f} for N={n})")
    assert abs(float(np.mean(w))) < K * std / math.sqrt(n), f"{label}: mean {np.mean(w):.3g}"
    kurt = float(np.mean(w**4)) / m2**2
    want = 3.0 if family == "normal" else 1.8
    ktol = K * math.sqrt(24.0 / n)  # the normal's standard error; the uniform's is smaller
    assert ktol < 0.6, "sample too small to tell a normal from a uniform"
    assert abs(kurt - want) < ktol, f"{label}: kurtosis {kurt:.3f}, a {family} has {want}"
    if family == "uniform":
        b = float(np.asarray(bound, dtype=dtype))  # the bound as the model's dtype rounds it
        assert float(np.max(np.abs(w))) <= b, f"{label}: |w| up to {np.max(np.abs(w))} > {b}"
        # both ends are approached: P(no sample within b*40/n of one end) ~ exp(-20)
        near = b * (1 - 40.0 / n)
        assert w.min() < -near and w.max() > near, (
            f"{label}: samples span [{w.min():.6g}, {w.max():.6g}], bound {b:.6g}")


def expected(scheme, fan_in, fan_out, gain):
    """(family, std, bound) of the weights of a scheme, from docs/CONVENTIONS.md / torch.nn.init."""
    if scheme == "xavier_uniform":
        a = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return "uniform", a / math.sqrt(3.0), a
    if scheme == "xavier_normal":
        return "normal", gain * math.sqrt(2.0 / (fan_in + fan_out)), None
    if scheme == "kaiming_uniform":
        a = gain * math.sqrt(3.0 / fan_in)
        return "uniform", a / math.sqrt(3.0), a
    if scheme == "kaiming_normal":
        return "normal", gain / math.sqrt(fan_in), None
    if scheme == "lecun_normal":
        return "normal", gain / math.sqrt(fan_in), None
    if scheme == "torch_default":
        a = 1.0 / math.sqrt(fan_in)
        return "uniform", a / math.sqrt(3.0), a
    raise AssertionError(scheme)


# --------------------------------------------------------------------------- gains
@pytest.mark.parametrize("key", list(GAINS), ids=[f"{k[0]}{dict(k[1])}" for k in GAINS])
def test_activation_gain(key):
    assert act_of(key).gain() == pytest.approx(GAINS[key], rel=1e-15)


def test_custom_activation_gain_is_sqrt2():
    assert gc.Activation.custom(np.tanh, np.tanh).gain() == pytest.approx(RELU_GAIN, rel=1e-15)


def test_gains_match_torch_calculate_gain():
    torch = pytest.importorskip("torch")
    cg = torch.nn.init.calculate_gain
    for name in ("linear", "sigmoid", "tanh", "relu", "selu"):
        assert gc.Activation(name).gain() == pytest.approx(cg(name), rel=1e-12), name
    for slope in (0.01, 0.2, 3.0):
        got = gc.Activation("leaky_relu", negative_slope=slope).gain()
        assert got == pytest.approx(cg("leaky_relu", slope), rel=1e-12), slope


# --------------------------------------------------------------------------- statistics
STAT_SCHEMES = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "lecun_normal", "torch_default"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", STAT_SCHEMES)
def test_scheme_statistics_default_gain(scheme, dtype):
    """Activation tanh: kaiming uses its gain 5/3; xavier, lecun and torch_default do not."""
    m = gc.MLP(BIG, activation="tanh", init=scheme, dtype=dtype, seed=11)
    gain = 5.0 / 3.0 if scheme.startswith("kaiming") else 1.0
    for layer, (w, (fi, fo)) in enumerate(zip(weights(m), fans(BIG), strict=True)):
        assert w.shape == (fo, fi)
        family, std, bound = expected(scheme, fi, fo, gain)
        check_stats(w, std=std, family=family, bound=bound, dtype=dtype,
                    label=f"{scheme} layer {layer} ({fo}x{fi}, {np.dtype(dtype).name})")
    for layer, b in enumerate(biases(m)):
        if scheme == "torch_default":
            assert np.all(np.abs(b) <= 1 / math.sqrt(BIG[layer])) and np.any(b != 0)
        else:
            assert np.all(b == 0), f"{scheme}: biases of layer {layer} must be zero"


@pytest.mark.parametrize("scheme", ["kaiming_uniform", "kaiming_normal"])
@pytest.mark.parametrize("key", list(GAINS), ids=[f"{k[0]}{dict(k[1])}" for k in GAINS])
def test_kaiming_uses_the_activation_gain(scheme, key):
    sizes = [500, 400]
    m = gc.MLP(sizes, activation=act_of(key), init=scheme, dtype=np.float64, seed=2)
    family, std, bound = expected(scheme, 500, 400, GAINS[key])
    check_stats(weights(m)[0], std=std, family=family, bound=bound,
                label=f"{scheme} on {key[0]}{dict(key[1])} (gain {GAINS[key]:.4f})")
    # and exactly the draw of an identity model with that gain given explicitly
    ref = gc.MLP(sizes, activation="identity", init=getattr(gc.init, scheme)(gain=GAINS[key]),
                 dtype=np.float64, seed=2)
    np.testing.assert_allclose(weights(m)[0], weights(ref)[0], rtol=1e-14, atol=0)


def test_kaiming_custom_activation_uses_sqrt2():
    act = gc.Activation.custom(np.tanh, lambda x: 1 - np.tanh(x) ** 2)
    m = gc.MLP([500, 400], activation=act, init="kaiming_normal", dtype=np.float64, seed=4)
    check_stats(weights(m)[0], std=RELU_GAIN / math.sqrt(500), family="normal",
                label="kaiming_normal, custom activation")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,gain", [
    ("xavier_uniform", 3.0), ("xavier_normal", 0.3), ("kaiming_uniform", 0.5),
    ("kaiming_normal", 2.5), ("lecun_normal", 1.7), ("kaiming_normal", 0.0),
])
def test_explicit_gain_overrides(scheme, gain, dtype):
    """relu model: an explicit gain wins over the activation's sqrt(2)."""
    m = gc.MLP(BIG, activation="relu", init=getattr(gc.init, scheme)(gain=gain), dtype=dtype,
               seed=5)
    for layer, (w, (fi, fo)) in enumerate(zip(weights(m), fans(BIG), strict=True)):
        if gain == 0.0:
            assert np.all(w == 0), "gain 0 gives zero weights"
            continue
        family, std, bound = expected(scheme, fi, fo, gain)
        check_stats(w, std=std, family=family, bound=bound, dtype=dtype,
                    label=f"{scheme}(gain={gain}) layer {layer}")


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                    "kaiming_normal", "lecun_normal", "orthogonal", "identity"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gain_scales_the_same_draw_exactly(scheme, dtype):
    """gain=2 is exactly twice gain=1 for the same seed (a power of two scales exactly)."""
    sizes = [8, 8, 5] if scheme == "identity" else [40, 30, 20]
    f = getattr(gc.init, scheme)
    one = gc.MLP(sizes, init=f(gain=1.0), dtype=dtype, seed=8)
    two = gc.MLP(sizes, init=f(gain=2.0), dtype=dtype, seed=8)
    for (n, p1), (_, p2) in zip(one.named_parameters(), two.named_parameters(), strict=True):
        if n.endswith(".weight"):
            np.testing.assert_array_equal(p2, 2 * p1, err_msg=n)
        else:
            np.testing.assert_array_equal(p2, p1, err_msg=n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma_w,sigma_b", [(1.5, 0.05), (0.8, 0.0), (2.0, 0.7)])
def test_mean_field_normal(sigma_w, sigma_b, dtype):
    sizes = [20, 10000, 10]  # 200k weights in layer 0, 10k biases
    m = gc.MLP(sizes, init=gc.init.normal(sigma_w=sigma_w, sigma_b=sigma_b), dtype=dtype,
               seed=13)
    for layer, (w, (fi, _)) in enumerate(zip(weights(m), fans(sizes), strict=True)):
        check_stats(w, std=sigma_w / math.sqrt(fi), family="normal",
                    label=f"normal({sigma_w}, {sigma_b}) W layer {layer}")
    b0 = biases(m)[0]
    if sigma_b == 0.0:
        assert all(np.all(b == 0) for b in biases(m)), "sigma_b = 0 gives zero biases"
    else:
        check_stats(b0, std=sigma_b, family="normal", label=f"normal(.., {sigma_b}) b")
        assert np.std(biases(m)[1]) > 0


def test_mean_field_normal_defaults():
    m = gc.MLP([500, 400], init=gc.init.normal(), dtype=np.float64, seed=1)
    check_stats(weights(m)[0], std=1 / math.sqrt(500), family="normal", label="normal()")
    assert np.all(biases(m)[0] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_default_weights_and_biases(dtype):
    sizes = [100, 20000, 10]  # layer 0: 2M weights, 20k biases
    m = gc.MLP(sizes, init="torch_default", dtype=dtype, seed=3)
    bound = 1 / math.sqrt(100)
    check_stats(weights(m)[0], std=bound / math.sqrt(3), family="uniform", bound=bound,
                dtype=dtype, label="torch_default W")
    check_stats(biases(m)[0], std=bound / math.sqrt(3), family="uniform", bound=bound,
                dtype=dtype, label="torch_default b")
    b1 = biases(m)[1]
    assert np.all(np.abs(b1) <= np.asarray(1 / math.sqrt(20000), dtype)) and np.any(b1 != 0)


def test_default_init_is_torch_default():
    a = gc.MLP(BIG, seed=21)
    b = gc.MLP(BIG, init="torch_default", seed=21)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=n)


# --------------------------------------------------------------------------- orthogonal, identity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gain", [None, 1.0, 0.5, 2.0])
@pytest.mark.parametrize("sizes", [[60, 40, 40, 90, 7], [7, 90, 1]], ids=["mixed", "tall-wide"])
def test_orthogonal(sizes, gain, dtype):
    init = gc.init.orthogonal() if gain is None else gc.init.orthogonal(gain=gain)
    g = 1.0 if gain is None else gain
    m = gc.MLP(sizes, activation="relu", init=init, dtype=dtype, seed=6)
    atol = 1e-5 if dtype == np.float32 else 1e-12
    for layer, (w, (fi, fo)) in enumerate(zip(weights(m), fans(sizes), strict=True)):
        # wide (fo <= fi): orthonormal rows, W W^T = g^2 I; tall: orthonormal columns
        gram = w @ w.T if fo <= fi else w.T @ w
        np.testing.assert_allclose(gram, g * g * np.eye(min(fo, fi)), atol=atol * g * g,
                                   err_msg=f"orthogonal(gain={gain}) layer {layer} {fo}x{fi}")
    assert all(np.all(b == 0) for b in biases(m))


def test_orthogonal_is_random():
    a = weights(gc.MLP([30, 30], init="orthogonal", dtype=np.float64, seed=1))[0]
    b = weights(gc.MLP([30, 30], init="orthogonal", dtype=np.float64, seed=2))[0]
    assert not np.allclose(a, b)
    # not a signed permutation either: the entries spread out
    assert np.mean(np.abs(a) > 1e-3) > 0.9


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity(dtype):
    m = gc.MLP([6, 6, 6], init="identity", dtype=dtype, seed=1)
    for w in weights(m):
        np.testing.assert_array_equal(w, np.eye(6))
    assert all(np.all(b == 0) for b in biases(m))
    m = gc.MLP([6, 6], init=gc.init.identity(gain=0.9), dtype=dtype, seed=1)
    np.testing.assert_array_equal(weights(m)[0], np.asarray(0.9 * np.eye(6), dtype))
    # rectangular: as torch.nn.init.eye_, ones on the main diagonal
    m = gc.MLP([4, 6, 3], init="identity", dtype=dtype)
    np.testing.assert_array_equal(weights(m)[0], np.eye(6, 4))
    np.testing.assert_array_equal(weights(m)[1], np.eye(3, 6))
    # no randomness: any seed, the same weights
    a = gc.MLP([5, 5], init="identity", seed=1)
    b = gc.MLP([5, 5], init="identity", seed=2)
    np.testing.assert_array_equal(weights(a)[0], weights(b)[0])


# --------------------------------------------------------------------------- norms, seeds, dtypes
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_layers_start_at_identity(norm):
    m = gc.MLP([5, 7, 7, 3], norm=norm, init="kaiming_normal", seed=1)
    sd = m.state_dict()
    for layer in range(2):
        np.testing.assert_array_equal(sd[f"norms.{layer}.weight"], np.ones(7))
        np.testing.assert_array_equal(sd[f"norms.{layer}.bias"], np.zeros(7))
        if norm == "batch":
            np.testing.assert_array_equal(sd[f"norms.{layer}.running_mean"], np.zeros(7))
            np.testing.assert_array_equal(sd[f"norms.{layer}.running_var"], np.ones(7))
            assert int(sd[f"norms.{layer}.num_batches_tracked"]) == 0


ALL_INITS = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
             "lecun_normal", "orthogonal", "torch_default", "normal"]


def params_of(m):
    return {n: np.array(p) for n, p in m.named_parameters()}


def assert_same_params(a, b, what):
    pa, pb = params_of(a), params_of(b)
    assert list(pa) == list(pb)
    for n in pa:
        assert pa[n].tobytes() == pb[n].tobytes(), f"{what}: {n} differs"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", ALL_INITS)
def test_seed_reproducibility(scheme, dtype):
    sizes = [20, 16, 16, 5]
    make = lambda seed: gc.MLP(sizes, init=scheme, norm="layer", dtype=dtype,  # noqa: E731
                               seed=seed)
    assert_same_params(make(7), make(7), f"{scheme}: seed 7 twice")
    a, b = params_of(make(7)), params_of(make(8))
    differ = [n for n in a if n.startswith("layers.") and not np.array_equal(a[n], b[n])]
    assert len(differ) >= 3, f"{scheme}: seeds 7 and 8 give the same weights ({differ})"
    # reset_parameters(seed) reproduces the constructor's draw
    m = make(9)
    m.reset_parameters(7)
    assert_same_params(m, make(7), f"{scheme}: reset_parameters(7)")
    # no seed: fresh randomness each time
    a, b = params_of(make(None)), params_of(make(None))
    assert not np.array_equal(a["layers.0.weight"], b["layers.0.weight"])


@pytest.mark.parametrize("scheme", ALL_INITS + ["identity"])
def test_both_dtypes_draw_the_same_numbers(scheme):
    """The float32 model holds the float64 model's draw, rounded."""
    sizes = [12, 12, 12, 4]
    m64 = gc.MLP(sizes, init=scheme, dtype=np.float64, seed=4)
    m32 = gc.MLP(sizes, init=scheme, dtype=np.float32, seed=4)
    for (n, p64), (_, p32) in zip(m64.named_parameters(), m32.named_parameters(), strict=True):
        assert p64.dtype == np.float64 and p32.dtype == np.float32
        np.testing.assert_array_equal(p32, p64.astype(np.float32), err_msg=n)


@pytest.mark.parametrize("scheme", ALL_INITS + ["identity"])
def test_names_objects_and_bare_callables_agree(scheme):
    sizes = [10, 10, 10, 3]
    f = getattr(gc.init, scheme)
    by_name = gc.MLP(sizes, activation="relu", init=scheme, seed=3)
    by_obj = gc.MLP(sizes, activation="relu", init=f(), seed=3)
    by_callable = gc.MLP(sizes, activation="relu", init=f, seed=3)
    assert_same_params(by_name, by_obj, f"init={scheme!r} vs gc.init.{scheme}()")
    assert_same_params(by_name, by_callable, f"init={scheme!r} vs gc.init.{scheme}")
    assert by_name.init == by_obj.init == by_callable.init
    assert isinstance(by_name.init, gc.init.Init) and by_name.init.name == scheme


def test_every_scheme_of_the_conventions_is_a_gc_init_callable():
    names = {"xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
             "lecun_normal", "orthogonal", "identity", "torch_default", "normal"}
    assert set(gc.init.SCHEMES) == names
    for n in names:
        assert callable(getattr(gc.init, n)) and isinstance(getattr(gc.init, n)(), gc.init.Init)


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                    "kaiming_normal", "lecun_normal", "orthogonal", "identity"])
def test_gain_validation(scheme):
    f = getattr(gc.init, scheme)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="gain") as ei:
            f(gain=bad)
        assert type(ei.value) is ValueError
    for bad in ("1", True, [1.0]):
        with pytest.raises(TypeError, match="gain") as ei:
            f(gain=bad)
        assert type(ei.value) is TypeError


def test_normal_validation():
    for kw in ({"sigma_w": -1.0}, {"sigma_b": -0.1}, {"sigma_w": math.nan},
               {"sigma_b": math.inf}):
        (k,) = kw
        with pytest.raises(ValueError, match=k):
            gc.init.normal(**kw)
    for kw in ({"sigma_w": "1"}, {"sigma_b": None}, {"sigma_w": True}):
        (k,) = kw
        with pytest.raises(TypeError, match=k):
            gc.init.normal(**kw)


def test_hand_built_init_with_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="init: unknown scheme 'bogus'"):
        gc.MLP([3, 2], init=gc.init.Init("bogus"))
