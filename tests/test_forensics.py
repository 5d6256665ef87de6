"""Numerical forensics (issue 16): the report's health statistics (dead and saturated
units, zero and subnormal gradient entries, mean |activation|), where a NaN/Inf was born
(forward, loss or backward, and at which stage), per-example gradient norms, the gradient
noise scale and per-example clipping, each against the NumPy reference (and torch's
``torch.func.vmap(grad)`` where installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradchain as gc
from conftest import HEALTH, ref, rnn_report_same_for_threads
from gradchain.models.base import Model


def _params(m: gc.Model) -> dict[str, np.ndarray]:
    """The model's state dict as copies in its own dtype (the reference's input)."""
    return {k: np.array(v) for k, v in m.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _ref_mlp(m: gc.MLP, x: np.ndarray, gy: np.ndarray) -> tuple[dict, dict, np.ndarray]:
    """The reference's forward and backward of ``m`` on ``x`` in the model's dtype."""
    name = m.activation.name
    _, cache = ref.mlp_forward(_params(m), x, activation=name,
                               act_params=dict(m.activation.params), norm=m.norm,
                               residual=m.residual, residual_scale=m.residual_scale,
                               training=m.training, bias=m.bias)
    grads, dx, rep = ref.mlp_backward(cache, gy)
    return cache, rep, dx


def _check_health(rep: gc.GradReport, rep_r: dict, mean_tol: float) -> None:
    for f in HEALTH:
        np.testing.assert_array_equal(getattr(rep, f), rep_r[f], err_msg=f)
    np.testing.assert_allclose(rep.mean_abs_activations, rep_r["mean_abs_activations"],
                               rtol=mean_tol, err_msg="mean_abs_activations")


# ---------------------------------------------------------------------------- health
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dead_relu_layer_is_counted_exactly(dtype):
    rng = np.random.default_rng(0)
    m = gc.MLP([8, 16, 16, 16, 4], activation="relu", init="kaiming_normal", seed=1,
               dtype=dtype)
    b = dict(m.named_parameters())["layers.1.bias"]
    b[:10] = -100.0  # 10 of hidden layer 2's 16 units never fire
    b[10:] = 100.0
    dict(m.named_parameters())["layers.2.bias"][...] = 1.0  # layer 3 fires on any input
    m.invalidate()
    x = rng.normal(size=(40, 8)).astype(dtype)
    gy = rng.normal(size=(40, 4)).astype(dtype)
    m.forward(x)
    rep = m.backward(gy)
    _, rep_r, _ = _ref_mlp(m, x, gy)
    assert rep.dead_unit_fractions[1] == 10 / 16
    assert rep.saturated_unit_fractions[1] == 10 / 16  # |act'| = 0 < threshold too
    _check_health(rep, rep_r, 1e-6 if dtype == np.float32 else 1e-12)
    assert rep.verdict().endswith("; layer 2: 62 % of units dead")  # a run of one layer
    b[:] = -100.0  # the whole layer dead: the layers above see a constant input
    m.invalidate()
    m.forward(x)
    rep = m.backward(gy)
    assert rep.dead_unit_fractions[1] == 1.0
    assert "layer 2: 100 % of units dead" in rep.verdict()
    # no gradient gets below the dead layer: dL/da_1 and dL/dx are exact zeros
    assert rep.zero_grad_fractions[0] == 1.0 and rep.zero_grad_fractions[1] == 1.0
    ref_health = _ref_mlp(m, x, gy)[1]
    _check_health(rep, ref_health, 1e-6 if dtype == np.float32 else 1e-12)
    assert ref_health["dead_unit_fractions"][1] == 1.0


def test_saturated_tanh_layers_and_the_verdict():
    rng = np.random.default_rng(1)
    m = gc.MLP([16] * 8 + [4], activation="tanh", init="xavier_normal", seed=2,
               dtype=np.float64)
    params = dict(m.named_parameters())
    for lay in (2, 3, 4):  # hidden layers 3-5 (1-based): z = +-5, tanh' = 1.8e-4 everywhere
        params[f"layers.{lay}.weight"][...] = 0.0
        params[f"layers.{lay}.bias"][...] = 5.0 * np.where(np.arange(16) % 2, 1.0, -1.0)
    m.invalidate()
    x = rng.normal(size=(32, 16))
    gy = rng.normal(size=(32, 4))
    m.forward(x)
    rep = m.backward(gy)
    _, rep_r, _ = _ref_mlp(m, x, gy)
    _check_health(rep, rep_r, 1e-12)
    assert list(rep.saturated_unit_fractions[2:5]) == [1.0, 1.0, 1.0]
    assert rep.saturated_unit_fractions[0] < 0.5
    assert "layers 3-5: 100 % of units saturated" in rep.verdict()
    assert rep.verdict().startswith("vanishing")
    assert "health" in rep.table(health=True) and "satur." in rep.table(health=True)
    assert "health" not in rep.table()
    assert rep.mean_abs_activations[3] == pytest.approx(np.tanh(5.0), rel=1e-12)
    assert rep.zero_grad_fractions[0] == 1.0  # nothing passes a zero weight
    d = rep.to_dict()
    assert d["saturated_unit_fractions"][2] == 1.0 and d["nonfinite_origin"] is None
    # sigmoid's threshold is 1e-3 of sup sigmoid' = 0.25
    assert gc.Activation("sigmoid").saturation_threshold() == pytest.approx(2.5e-4, rel=1e-9)
    assert gc.Activation("tanh").saturation_threshold() == pytest.approx(1e-3, rel=1e-12)
    assert math.isnan(gc.Activation.custom(np.tanh, lambda z: 1 - np.tanh(z) ** 2)
                      .saturation_threshold())


def test_underflowing_gradient_counts_zeros_and_subnormals():
    """A diagonal identity chain: dL/da shrinks by 1e-3 per layer (exact products), through
    float32's subnormal range (below 1.2e-38) to exact zeros."""
    L = 16
    m = gc.MLP([4] * (L + 1) + [4], activation="identity", bias=False, dtype=np.float32)
    params = dict(m.named_parameters())
    for lay in range(L):
        params[f"layers.{lay}.weight"][...] = np.eye(4, dtype=np.float32) * np.float32(1e-3)
    params[f"layers.{L}.weight"][...] = np.eye(4, dtype=np.float32)
    m.invalidate()
    x = np.ones((8, 4), np.float32)
    gy = np.ones((8, 4), np.float32)
    m.forward(x)
    rep = m.backward(gy)
    _, rep_r, _ = _ref_mlp(m, x, gy)
    _check_health(rep, rep_r, 1e-6)
    z, sub = rep.zero_grad_fractions, rep.subnormal_grad_fractions
    # dL/da_l = 1e-3^(L-l): normal down to l = L-12, subnormal for l = L-13, L-14, then 0
    assert sub[L - 13] == 1.0 and sub[L - 14] == 1.0 and z[L - 14] == 0.0
    assert z[0] == 1.0 and sub[L - 12] == 0.0 and z[L] == 0.0
    assert rep.dead_unit_fractions.tolist() == [0.0] * L  # identity: act' = 1


def test_health_is_identical_for_any_thread_count_and_skipped_without_report(restore_threads):
    rng = np.random.default_rng(3)
    m = gc.MLP([64] * 6 + [8], activation="relu", norm="layer", residual=2, seed=0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    gy = rng.normal(size=(200, 8)).astype(np.float32)
    reps = []
    for n in (1, 2, 3):
        gc.set_num_threads(n)
        m.forward(x)
        reps.append(m.backward(gy, per_example=True))
    for r in reps[1:]:
        for f in (*HEALTH, "mean_abs_activations", "per_example_grad_norms",
                  "per_example_layer_grad_norms"):
            assert np.array_equal(getattr(r, f), getattr(reps[0], f)), f
        assert r.noise_scale == reps[0].noise_scale
    m.forward(x)
    assert m.backward(gy, report=False) is None
    m._core.forensics = False  # the benchmark's A/B switch
    m.forward(x)
    rep = m.backward(gy)
    assert rep.dead_unit_fractions.size == 0 and rep.health_table() == ""
    m._core.forensics = True


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_health_with_norm_layers_matches_the_reference(norm):
    rng = np.random.default_rng(4)
    m = gc.MLP([12, 20, 20, 20, 3], activation="hardtanh", norm=norm, seed=5,
               dtype=np.float64)
    if norm is not None:  # 7 units of hidden layer 2 stuck at hardtanh(5) = 1: dead
        dict(m.named_parameters())["norms.1.weight"][:7] = 0.0
        dict(m.named_parameters())["norms.1.bias"][:7] = 5.0
        m.invalidate()
    x = rng.normal(size=(33, 12))
    gy = rng.normal(size=(33, 3))
    m.forward(x)
    rep = m.backward(gy)
    _, rep_r, _ = _ref_mlp(m, x, gy)
    _check_health(rep, rep_r, 1e-12)
    if norm is not None:
        assert rep.dead_unit_fractions[1] >= 7 / 20 - 1e-12


def test_rnn_health_per_step_matches_the_reference():
    rng = np.random.default_rng(5)
    r = gc.RNN(3, 10, output_size=2, activation="tanh", seed=0, dtype=np.float64)
    p = dict(r.named_parameters())
    p["weight_ih_l0"][...] = 1.0
    p["weight_hh_l0"][...] *= 0.01
    p["bias_ih_l0"][...] = 0.0
    p["bias_hh_l0"][...] = 0.0
    r.invalidate()
    x = rng.normal(size=(12, 7, 3))
    x[4:8] = 2.0  # steps 5-8: z ~ 6 for every unit and example, tanh' ~ 2.5e-5
    hs = r.forward(x)
    g = rng.normal(size=hs.shape)
    rep = r.backward(grad_hs=g)
    _, cache = ref.rnn_forward(_params(r), x, activation="tanh")
    _, _, _, rep_r = ref.rnn_backward(cache, grad_hs=g)
    for f in HEALTH:
        np.testing.assert_array_equal(getattr(rep, f), rep_r[f], err_msg=f)
    np.testing.assert_allclose(rep.mean_abs_activations, rep_r["mean_abs_activations"],
                               rtol=1e-12)
    assert list(rep.saturated_unit_fractions[4:8]) == [1.0] * 4
    assert "steps 5-8: 100 % of units saturated" in rep.verdict()
    assert "health" in rep.table(health=True)


# ---------------------------------------------------------------------------- origins
def _overflow_chain(dtype=np.float32) -> tuple[gc.MLP, np.ndarray]:
    m = gc.MLP([4] * 7 + [2], activation="identity", bias=False, dtype=dtype)
    params = dict(m.named_parameters())
    for lay in range(7):
        params[f"layers.{lay}.weight"][...] = np.eye(4 if lay < 6 else 2, 4, dtype=dtype)
    m.invalidate()
    return m, np.ones((5, 4), dtype)


def test_forward_overflow_is_born_at_the_chosen_layer():
    m, x = _overflow_chain()
    params = dict(m.named_parameters())
    params["layers.1.weight"][...] = np.eye(4, dtype=np.float32) * 1e20
    params["layers.2.weight"][...] = np.eye(4, dtype=np.float32) * 1e20  # a_3 = 1e40: Inf
    m.invalidate()
    value, rep = m.loss_and_grad(x, np.zeros((5, 2), np.float32))
    o = rep.nonfinite_origin
    assert (o.phase, o.index, o.stage) == ("forward", 3, "linear")
    assert rep.forward_first_nonfinite == 3
    cache, rep_r, _ = _ref_mlp(m, x, np.ones((5, 2), np.float32))
    assert cache["forward_first_nonfinite"] == 3 and cache["forward_nonfinite_stage"] == "linear"
    assert "forward pass layer 3" in str(o) and "born in the forward pass layer 3" in rep.verdict()
    with pytest.raises(gc.NonFiniteError, match="born in the forward pass layer 3: the linear"):
        gc.clip_grad_norm(m, 1.0, error_if_nonfinite=True)
    assert m.nonfinite_origin == o


def test_nan_planted_in_a_weight_is_a_parameter_origin():
    m, x = _overflow_chain(np.float64)
    dict(m.named_parameters())["layers.4.weight"][2, 1] = np.nan
    m.invalidate()
    m.forward(x)
    rep = m.backward(np.ones((5, 2)))
    o = rep.nonfinite_origin
    assert (o.phase, o.index, o.stage) == ("forward", 5, "parameter")
    cache, _, _ = _ref_mlp(m, x, np.ones((5, 2)))
    assert cache["forward_nonfinite_stage"] == "parameter"
    assert rep.to_dict()["nonfinite_origin"]["stage"] == "parameter"


def test_residual_and_norm_stages():
    m = gc.MLP([4] * 4 + [2], activation="tanh", residual=True, residual_scale=1e38,
               dtype=np.float32, seed=0)
    params = dict(m.named_parameters())
    x = np.full((3, 4), 3e38, np.float32)  # tanh(1) is finite, a + 1e38 tanh(1) overflows
    for lay in range(4):
        params[f"layers.{lay}.weight"][...] = 0.0
        params[f"layers.{lay}.bias"][...] = 1.0
    m.invalidate()
    m.forward(x)
    rep = m.backward(np.ones((3, 2), np.float32))
    assert rep.nonfinite_origin.stage == "residual" and rep.nonfinite_origin.index == 1
    cache, _, _ = _ref_mlp(m, x, np.ones((3, 2), np.float32))
    assert cache["forward_nonfinite_stage"] == "residual"


def test_log_of_zero_in_the_loss():
    """Cross-entropy of a target whose probability underflows to 0: the loss is Inf while
    the forward pass and dL/dy are finite."""
    m = gc.MLP([3, 4, 2], dtype=np.float32, seed=0)
    params = dict(m.named_parameters())
    params["layers.1.weight"][...] = 0.0
    params["layers.1.bias"][...] = np.array([3e38, -3e38], np.float32)
    m.invalidate()
    x = np.ones((2, 3), np.float32)
    value, rep = m.loss_and_grad(x, np.array([1, 1]), loss="cross_entropy")
    assert value == math.inf
    assert rep.forward_first_nonfinite is None and rep.first_nonfinite is None
    o = rep.nonfinite_origin
    assert (o.phase, o.index, o.stage) == ("loss", None, "loss")
    assert "log of a zero probability" in str(o)


def test_backward_product_overflow_is_born_in_the_backward_pass():
    m, _ = _overflow_chain()
    params = dict(m.named_parameters())
    params["layers.6.weight"][...] = 1e30  # dL/da_6 = gy W_out: 2e30, finite
    params["layers.5.weight"][...] = 1e30  # dL/da_5 = dL/da_6 W_5: Inf
    m.invalidate()
    x = np.zeros((5, 4), np.float32)  # a forward of zeros: finite
    m.forward(x)
    gy = np.ones((5, 2), np.float32)
    rep = m.backward(gy)
    o = rep.nonfinite_origin
    assert (o.phase, o.index, o.stage) == ("backward", 5, "product")
    _, rep_r, _ = _ref_mlp(m, x, gy)
    assert rep_r["first_nonfinite"] == 5 and rep_r["backward_nonfinite_stage"] == "product"
    # an overflow of dL/dz itself (the residual scale) is the activation's backward
    m2 = gc.MLP([4] * 3 + [2], activation="tanh", residual=True, residual_scale=1e30,
                bias=False, dtype=np.float32, seed=0)
    dict(m2.named_parameters())["layers.2.weight"][...] = 1e20
    m2.invalidate()
    m2.forward(np.zeros((5, 4), np.float32))  # every a_l is 0: finite
    rep2 = m2.backward(gy)  # dL/da_2 = 2e20, dL/dz_1 = 2e20 * 1e30 * tanh'(0): Inf
    o2 = rep2.nonfinite_origin
    assert (o2.phase, o2.index, o2.stage) == ("backward", 1, "activation_backward")
    _, rep2_r, _ = _ref_mlp(m2, np.zeros((5, 4), np.float32), gy)
    assert rep2_r["first_nonfinite"] == 1
    assert rep2_r["backward_nonfinite_stage"] == "activation_backward"


def test_rnn_origins():
    r = gc.RNN(2, 5, activation="tanh", seed=0, dtype=np.float64)
    dict(r.named_parameters())["weight_hh_l0"][1, 1] = np.nan
    r.invalidate()
    x = np.ones((4, 3, 2))
    hs = r.forward(x)
    rep = r.backward(grad_hs=np.ones_like(hs))
    assert (rep.nonfinite_origin.phase, rep.nonfinite_origin.index,
            rep.nonfinite_origin.stage) == ("forward", 1, "parameter")
    assert rep.nonfinite_origin.where == "step"
    r2 = gc.RNN(2, 5, activation="identity", seed=0, dtype=np.float64)
    dict(r2.named_parameters())["weight_hh_l0"][...] = np.eye(5) * 1e120
    r2.invalidate()
    hs = r2.forward(np.ones((4, 3, 2)))  # h_3 ~ 1e240, h_4 ~ 1e360: Inf at step 4
    rep2 = r2.backward(grad_hs=np.ones_like(hs))
    _, cache = ref.rnn_forward(_params(r2), np.ones((4, 3, 2)), activation="identity")
    assert rep2.nonfinite_origin.index == cache["forward_first_nonfinite"] == 4
    assert rep2.nonfinite_origin.stage == cache["forward_nonfinite_stage"] == "linear"


# ---------------------------------------------------------------------------- per example
CONFIGS = [
    dict(activation="tanh"),
    dict(activation="relu", residual=True, residual_scale=0.5),
    dict(activation="gelu", norm="layer"),
    dict(activation="silu", norm="batch", eval=True),
    dict(activation="sigmoid", bias=False),
]


def _per_example_model(cfg: dict) -> gc.MLP:
    kw = {k: v for k, v in cfg.items() if k != "eval"}
    m = gc.MLP([6, 9, 9, 9, 3], dtype=np.float64, seed=7, **kw)
    if cfg.get("eval"):
        rng = np.random.default_rng(0)
        m.forward(rng.normal(size=(16, 6)))  # running statistics to use
        m.eval()
    return m


@pytest.mark.parametrize("cfg", CONFIGS)
def test_per_example_norms_match_one_example_at_a_time(cfg):
    rng = np.random.default_rng(8)
    m = _per_example_model(cfg)
    x = rng.normal(size=(11, 6))
    gy = rng.normal(size=(11, 3))
    m.forward(x)
    rep = m.backward(gy, per_example=True)
    norms_r, layer_r = ref.mlp_per_example_grad_norms(
        _params(m), x, gy, activation=m.activation.name, norm=m.norm, residual=m.residual,
        residual_scale=m.residual_scale, training=m.training, bias=m.bias)
    np.testing.assert_allclose(rep.per_example_grad_norms, norms_r, rtol=1e-12)
    np.testing.assert_allclose(rep.per_example_layer_grad_norms, layer_r, rtol=1e-12)
    # the noise scale from its definition
    G = rep.global_norm
    trace = (np.sum(norms_r ** 2) - 11 * G * G) / 10
    assert rep.noise_scale == pytest.approx(trace / (G * G), rel=1e-9)
    assert "per-example" in rep.table(health=True)
    m.forward(x)
    rep2 = m.backward(gy, accumulate=True, per_example=True)
    np.testing.assert_array_equal(rep2.per_example_grad_norms, rep.per_example_grad_norms)
    assert math.isnan(rep2.noise_scale) and rep2.to_dict()["noise_scale"] is None


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_loss_and_grad_per_example_is_each_examples_own_loss(loss):
    rng = np.random.default_rng(9)
    m = gc.MLP([5, 8, 8, 4], activation="tanh", dtype=np.float64, seed=3)
    x = rng.normal(size=(6, 5))
    t = rng.normal(size=(6, 4)) if loss == "mse" else rng.integers(0, 4, size=6)
    _, rep = m.loss_and_grad(x, t, loss=loss, per_example=True)
    own = []
    for i in range(6):  # each example alone: its own loss, its own gradient
        m.loss_and_grad(x[i:i + 1], t[i:i + 1], loss=loss)
        own.append(gc.grad_norm(m))
    np.testing.assert_allclose(rep.per_example_grad_norms, own, rtol=1e-12)


def test_per_example_against_torch_vmap_grad():
    torch = pytest.importorskip("torch")
    from torch.func import functional_call, grad, vmap

    rng = np.random.default_rng(10)
    m = gc.MLP([5, 7, 7, 3], activation="tanh", dtype=np.float64, seed=4)
    x = rng.normal(size=(9, 5))
    t = rng.normal(size=(9, 3))
    _, rep = m.loss_and_grad(x, t, per_example=True)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 7),
                              torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    sd = m.state_dict()
    with torch.no_grad():
        for i, lay in enumerate((0, 2, 4)):
            net[lay].weight.copy_(torch.from_numpy(sd[f"layers.{i}.weight"]))
            net[lay].bias.copy_(torch.from_numpy(sd[f"layers.{i}.bias"]))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_one(p, xi, ti):
        y = functional_call(net, p, (xi[None],))
        return torch.nn.functional.mse_loss(y, ti[None])

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, torch.from_numpy(x),
                                                   torch.from_numpy(t))
    per = torch.sqrt(sum((v.reshape(9, -1) ** 2).sum(1) for v in g.values())).numpy()
    np.testing.assert_allclose(rep.per_example_grad_norms, per, rtol=1e-10)


def test_per_example_refuses_training_batch_norm_and_bad_arguments():
    m = gc.MLP([4, 6, 2], norm="batch", seed=0)
    x = np.ones((5, 4), np.float32)
    m.forward(x)
    with pytest.raises(ValueError, match="batch norm in training mode couples"):
        m.backward(np.ones((5, 2), np.float32), per_example=True)
    with pytest.raises(ValueError, match="per_example"):
        m.loss_and_grad(x, np.ones((5, 2), np.float32), per_example=True)
    assert not m.supports_per_example()
    m.eval()
    assert m.supports_per_example()
    m2 = gc.MLP([4, 6, 2], seed=0)
    m2.forward(x)
    with pytest.raises(ValueError, match="needs report=True"):
        m2.backward(np.ones((5, 2), np.float32), report=False, per_example=True)
    with pytest.raises(TypeError, match="per_example"):
        m2.backward(np.ones((5, 2), np.float32), per_example=1)
    assert gc.LSTM(2, 3).supports_per_example()  # issue 16: the gated cells have them now


@pytest.mark.parametrize("cfg", CONFIGS[:3])
def test_clip_per_example_is_dp_sgd_clipping(cfg):
    rng = np.random.default_rng(11)
    m = _per_example_model(cfg)
    x = rng.normal(size=(10, 6))
    t = rng.normal(size=(10, 3))
    _, rep = m.loss_and_grad(x, t, per_example=True)
    C = float(np.median(rep.per_example_grad_norms))
    norms = gc.clip_per_example(m, C)
    np.testing.assert_array_equal(norms, rep.per_example_grad_norms)
    # the oracle: every example's own gradient, clipped, averaged
    want: dict[str, np.ndarray] = {}
    for i in range(10):
        m.loss_and_grad(x[i:i + 1], t[i:i + 1])
        gi = {k: v.copy() for k, v in m.named_grads()}
        c = min(1.0, C / (math.sqrt(sum(float(np.sum(v * v)) for v in gi.values())) + 1e-6))
        for k, v in gi.items():
            want[k] = want.get(k, 0.0) + c * v / 10
    m.loss_and_grad(x, t)
    gc.clip_per_example(m, C)
    for k, v in m.named_grads():
        np.testing.assert_allclose(v, want[k], rtol=1e-11, atol=1e-15, err_msg=k)
    # every per-example norm of the clipped gradients is at most C: the mean is too
    assert gc.grad_norm(m) <= C * (1 + 1e-9)


def test_clip_per_example_needs_a_backward_of_one_batch():
    m = gc.MLP([4, 6, 2], dtype=np.float64, seed=0)
    x = np.ones((3, 4))
    m.forward(x)
    with pytest.raises(ValueError, match="needs a backward pass"):
        gc.clip_per_example(m, 1.0)
    m.backward(np.ones((3, 2)), accumulate=True)
    with pytest.raises(ValueError, match="accumulate"):
        gc.clip_per_example(m, 1.0)
    m.backward(np.ones((3, 2)))  # no per-example norms yet: computed on the way
    assert gc.clip_per_example(m, 1e-3).shape == (3,)
    with pytest.raises(ValueError, match="max_norm"):
        gc.clip_per_example(m, -1.0)
    r = gc.LSTM(2, 3)  # issue 16: the gated cells have per-example gradients now
    with pytest.raises(ValueError, match="needs a backward pass"):
        gc.clip_per_example(r, 1.0)
    with pytest.raises(TypeError, match="per-example"):  # a kind without them (the base's)
        Model._clip_per_example(r, 1.0)


def test_history_records_health_and_noise_scale():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 2)).astype(np.float32)
    m = gc.MLP([8, 16, 16, 2], activation="relu", seed=0)
    hist = gc.train(m, (x, y), gc.optim.SGD(m, lr=0.01), epochs=2, batch_size=16,
                    record_every=2, progress=False)
    R = len(hist.steps)
    assert hist.health["dead_unit_fractions"].shape == (R, 2)
    assert hist.health["zero_grad_fractions"].shape == (R, 3)
    assert hist.noise_scale.shape == (R,) and np.isfinite(hist.noise_scale).all()
    d = hist.to_dict()
    assert len(d["noise_scale"]) == R and set(d["health"]) == set(hist.health)
    mb = gc.MLP([8, 16, 2], norm="batch", seed=0)  # no per-example gradients: NaN
    hb = gc.train(mb, (x, y), gc.optim.SGD(mb, lr=0.01), epochs=1, batch_size=16,
                  progress=False)
    assert np.isnan(hb.noise_scale).all()


def test_health_panel_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from gradchain._plotting import pyplot

    rng = np.random.default_rng(13)
    m = gc.MLP([8] * 4 + [2], activation="relu", seed=0)
    m.forward(rng.normal(size=(16, 8)).astype(np.float32))
    rep = m.backward(np.ones((16, 2), np.float32))
    fig, ax = rep.plot(health=True, path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    assert fig.axes[1].get_ylabel() == "fraction"
    pyplot().close(fig)
    fig, ax = rep.plot_health()
    assert len(ax.get_lines()) == 4
    pyplot().close(fig)
    with pytest.raises(ValueError, match="ax"):
        rep.plot(ax=ax, health=True)


def test_probe_prints_and_writes_the_health(capsys):
    import json

    from gradchain import cli

    assert cli.main(["probe", "--depth", "4", "--width", "8", "--activation", "relu",
                     "--health"]) == 0
    out = capsys.readouterr().out
    assert "health (hidden layer l" in out and "dead" in out
    assert cli.main(["probe", "--depth", "4", "--width", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["report"]
    assert len(rep["dead_unit_fractions"]) == 4 and len(rep["zero_grad_fractions"]) == 5
    assert rep["nonfinite_origin"] is None


def test_saturation_thresholds_agree_with_the_reference():
    from gradchain.activations import SPECS

    for name, spec in SPECS.items():
        ours = gc.Activation(name).saturation_threshold()
        assert ours == pytest.approx(ref.saturation_threshold(name), rel=1e-12), name
        assert ours == pytest.approx(1e-3 * spec.max_derivative(), rel=1e-15), name
    assert gc.Activation("selu").saturation_threshold() == pytest.approx(
        1e-3 * 1.0507009873554805 * 1.6732632423543772, rel=1e-9)
    assert gc.Activation("leaky_relu", negative_slope=3.0).saturation_threshold() == 3e-3


def test_rnn_health_is_identical_for_any_thread_count(restore_threads):
    rng = np.random.default_rng(14)
    r = gc.RNN(8, 64, activation="relu", seed=0)
    x = rng.normal(size=(40, 48, 8)).astype(np.float32)
    g = rng.normal(size=(40, 48, 64)).astype(np.float32)
    rnn_report_same_for_threads(r, x, g, (*HEALTH, "mean_abs_activations"))
