"""The NumPy reference against PyTorch autograd, in float64 with the same weights.

A torch module with attributes ``layers`` (nn.ModuleList of nn.Linear) and ``norms``
(nn.ModuleList of BatchNorm1d / LayerNorm) has the state_dict names of gradchain, so its
state dict feeds ``reference.mlp_forward`` directly.  Skipped when torch is not installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

try:
    from gradchain import reference as ref
except ImportError:  # extension not built yet
    import importlib.util
    import pathlib

    _p = pathlib.Path(__file__).resolve().parents[1] / "src" / "gradchain" / "reference.py"
    _spec = importlib.util.spec_from_file_location("gradchain_reference", _p)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)

RTOL, ATOL = 1e-9, 1e-11  # float64: only rounding differences are allowed

CUSTOM_ACT_PARAMS = {
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 1.7},
    "softplus": {"beta": 2.0, "threshold": 5.0},
    "hardtanh": {"min_val": -0.5, "max_val": 2.0},
}

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def torch_activation(name: str, **params):
    """The torch function for a reference activation name, with ref's defaults."""
    p = {**ref.DEFAULT_ACT_PARAMS.get(name, {}), **params}
    return {
        "identity": lambda t: t,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, negative_slope=p.get("negative_slope")),
        "elu": lambda t: F.elu(t, alpha=p.get("alpha")),
        "selu": F.selu,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "softplus": lambda t: F.softplus(t, beta=p.get("beta"), threshold=p.get("threshold")),
        "silu": F.silu,
        "hardtanh": lambda t: F.hardtanh(t, min_val=p.get("min_val"), max_val=p.get("max_val")),
        "mish": F.mish,
    }[name]


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def close(actual, expected, what, rtol=RTOL, atol=ATOL):
    expected = to_numpy(expected) if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               err_msg=f"{what}: reference != torch")


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


def activation_grid(name: str, params: dict) -> np.ndarray:
    """Random points, every kink and branch point, large values and non-finite values."""
    p = {**ref.DEFAULT_ACT_PARAMS.get(name, {}), **params}
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, -1.0, 1e-10, -1e-10, 0.5, -0.5, 2.0, -2.0, 5.0, 20.0, 20.5,
               -20.0, 30.0, -30.0, 100.0, -100.0, 700.0, -700.0, 800.0, -800.0,
               np.inf, -np.inf, np.nan]
    if name == "softplus":
        special += [p["threshold"] / p["beta"], np.nextafter(p["threshold"] / p["beta"], 0),
                    np.nextafter(p["threshold"] / p["beta"], 100)]
    if name == "hardtanh":
        special += [p["min_val"], p["max_val"]]
    return np.concatenate([special, rng.normal(0, 3, 200), rng.uniform(-10, 10, 100)])


def derivative_comparable(name: str, z: np.ndarray) -> np.ndarray:
    """Mask of the points where torch's derivative is well defined.

    PyTorch's own derivative of hardtanh, elu and selu at NaN depends on the tensor's size
    (scalar fallback below ~8 elements: 1; vectorised kernels: 0 for hardtanh, NaN for
    elu/selu), so NaN inputs are compared only for the other activations; the reference's
    choice (the vectorised one) is pinned in test_derivative_at_nan_inputs.
    """
    if name in ("hardtanh", "elu", "selu"):
        return ~np.isnan(z)
    return np.ones(z.shape, dtype=bool)


@pytest.mark.parametrize("name", ref.ACTIVATIONS)
def test_derivative_at_nan_inputs(name):
    """On a large tensor (torch's vectorised kernels) the NaN derivatives agree."""
    z = np.full(64, np.nan)
    zt = torch.tensor(z, requires_grad=True)
    torch_activation(name)(zt).sum().backward()
    close(ref.act_grad(name, z), zt.grad, f"{name}'(NaN)", rtol=0, atol=0)


@pytest.mark.parametrize("name", ref.ACTIVATIONS)
@pytest.mark.parametrize("custom", [False, True], ids=["default", "custom"])
def test_activation_values_and_derivatives_float64(name, custom):
    params = CUSTOM_ACT_PARAMS.get(name, {}) if custom else {}
    z = activation_grid(name, params)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = torch_activation(name, **params)(zt)
    out.backward(torch.ones_like(out))
    # atol: saturating derivatives such as 1 - tanh(z)^2 cancel, so libm differences of 1 ulp
    # in tanh show up as absolute (not relative) errors of order 1e-16.
    close(ref.act_forward(name, z, **params), out, f"{name}{params} forward",
          rtol=1e-14, atol=1e-14)
    keep = derivative_comparable(name, z)
    close(ref.act_grad(name, z, **params)[keep], zt.grad[keep], f"{name}{params} derivative",
          rtol=1e-14, atol=1e-14)


def torch_self_consistent(fn, z: np.ndarray) -> np.ndarray:
    """Mask of the points where torch's vectorised result equals its one-element result.

    On AVX-512 CPUs torch's float32 gelu kernel gives NaN at +-inf where its scalar path
    gives +inf / -0 (torch 2.13, seen on an AMD EPYC with AVX-512): at such points PyTorch
    has no single answer, so only finite inputs and self-consistent non-finite ones count.
    """
    batched = to_numpy(fn(torch.tensor(z)))
    single = np.array([to_numpy(fn(torch.tensor(z[i:i + 1])))[0] for i in range(z.size)],
                      dtype=batched.dtype)
    agree = (batched == single) | (np.isnan(batched) & np.isnan(single))
    return np.isfinite(z) | agree


@pytest.mark.parametrize("name", ref.ACTIVATIONS)
def test_activation_values_and_derivatives_float32(name):
    z = activation_grid(name, {}).astype(np.float32)
    zt = torch.tensor(z, requires_grad=True)
    out = torch_activation(name)(zt)
    out.backward(torch.ones_like(out))
    forward, grad = ref.act_forward(name, z), ref.act_grad(name, z)
    assert forward.dtype == np.float32 and grad.dtype == np.float32
    # atol: in float32, saturating forms such as 1 + erf(z) cancel to ~1e-7 absolute
    same = torch_self_consistent(torch_activation(name), z)
    close(forward[same], to_numpy(out)[same], f"{name} forward (float32)", rtol=2e-6, atol=1e-6)
    keep = derivative_comparable(name, z)
    close(grad[keep], zt.grad[keep], f"{name} derivative (float32)", rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["relu", "hardtanh", "leaky_relu", "elu", "selu", "softplus"])
def test_kink_derivatives_exactly_as_torch(name):
    p = ref.DEFAULT_ACT_PARAMS.get(name, {})
    points = {"relu": [0.0, -0.0], "hardtanh": [-1.0, 1.0], "leaky_relu": [0.0],
              "elu": [0.0], "selu": [0.0], "softplus": [20.0, 20.000001]}[name]
    zt = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    torch_activation(name)(zt).sum().backward()
    # exact at the kinks; softplus just below its threshold is sigmoid(20), to rounding
    np.testing.assert_allclose(ref.act_grad(name, np.array(points), **p), to_numpy(zt.grad),
                               rtol=1e-15, atol=0, err_msg=f"{name}' at {points}")


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------


def test_linear_matches_torch():
    rng = np.random.default_rng(1)
    x, W, b, R = (rng.normal(size=s) for s in [(5, 3), (4, 3), (4,), (5, 4)])
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    zt = F.linear(xt, Wt, bt)
    zt.backward(torch.tensor(R))
    close(ref.linear_forward(x, W, b), zt, "linear z")
    dx, dW, db = ref.linear_backward(R, x, W)
    close(dx, xt.grad, "linear dx")
    close(dW, Wt.grad, "linear dW")
    close(db, bt.grad, "linear db")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch", [2, 7])
def test_batchnorm_matches_torch(training, batch):
    rng = np.random.default_rng(2 + batch)
    width = 5
    z = rng.normal(0.7, 2.0, (batch, width))
    gamma, beta = rng.uniform(0.5, 1.5, width), rng.normal(size=width)
    mean, var = rng.normal(size=width), rng.uniform(0.5, 2, width)
    R = rng.normal(size=(batch, width))
    bn = nn.BatchNorm1d(width, momentum=0.1, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    bn.train(training)
    zt = torch.tensor(z, requires_grad=True)
    nt = bn(zt)
    nt.backward(torch.tensor(R))
    n, cache, new_mean, new_var = ref.batchnorm_forward(z, gamma, beta, mean, var, training)
    close(n, nt, "batchnorm n")
    close(new_mean, bn.running_mean, "running_mean")
    close(new_var, bn.running_var, "running_var")
    dz, dgamma, dbeta = ref.batchnorm_backward(R, cache)
    close(dz, zt.grad, "batchnorm dz")
    close(dgamma, bn.weight.grad, "batchnorm dgamma")
    close(dbeta, bn.bias.grad, "batchnorm dbeta")


def test_batchnorm_batch_of_one_is_an_error_in_both():
    bn = nn.BatchNorm1d(3, dtype=torch.float64)
    with pytest.raises(ValueError):
        bn(torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        ref.batchnorm_forward(np.zeros((1, 3)), np.ones(3), np.zeros(3), np.zeros(3),
                              np.ones(3), True)


@pytest.mark.parametrize("width", [1, 3, 8])
def test_layernorm_matches_torch(width):
    rng = np.random.default_rng(4 + width)
    z = rng.normal(0.3, 2.0, (4, width))
    gamma, beta = rng.uniform(0.5, 1.5, width), rng.normal(size=width)
    R = rng.normal(size=(4, width))
    ln = nn.LayerNorm(width, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(gamma))
        ln.bias.copy_(torch.tensor(beta))
    zt = torch.tensor(z, requires_grad=True)
    nt = ln(zt)
    nt.backward(torch.tensor(R))
    n, cache = ref.layernorm_forward(z, gamma, beta)
    close(n, nt, "layernorm n")
    dz, dgamma, dbeta = ref.layernorm_backward(R, cache)
    close(dz, zt.grad, "layernorm dz")
    close(dgamma, ln.weight.grad, "layernorm dgamma")
    close(dbeta, ln.bias.grad, "layernorm dbeta")


# ----------------------------------------------------------------------------------------------
# the MLP
# ----------------------------------------------------------------------------------------------


class TorchMLP(nn.Module):
    """The MLP of docs/CONVENTIONS.md in torch, with gradchain's state_dict names."""

    def __init__(self, sizes, activation, act_params, norm, residual, residual_scale, bias):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(sizes[l], sizes[l + 1], bias=bias, dtype=torch.float64)
            for l in range(len(sizes) - 1))
        make_norm = {"batch": lambda h: nn.BatchNorm1d(h, dtype=torch.float64),
                     "layer": lambda h: nn.LayerNorm(h, dtype=torch.float64)}.get(norm)
        self.norms = nn.ModuleList(make_norm(h) for h in sizes[1:-1]) if make_norm else None
        self.act = torch_activation(activation, **(act_params or {}))
        self.skip = ref.resolve_residual(sizes, residual)
        self.alpha = residual_scale
        self.activations = []

    def forward(self, x):
        a = x
        self.activations = [a]
        for l, layer in enumerate(self.layers[:-1]):
            n = layer(a)
            if self.norms is not None:
                n = self.norms[l](n)
            f = self.act(n)
            a = a + self.alpha * f if self.skip[l] else f
            a.retain_grad()
            self.activations.append(a)
        return self.layers[-1](a)


@st.composite
def mlp_configs(draw):
    depth = draw(st.integers(0, 5))
    if draw(st.booleans()):
        width = draw(st.integers(1, 8))
        hidden = [width] * depth
        n_in = draw(st.sampled_from([width, draw(st.integers(1, 8))]))
    else:
        hidden = draw(st.lists(st.integers(1, 8), min_size=depth, max_size=depth))
        n_in = draw(st.integers(1, 8))
    activation = draw(st.sampled_from(ref.ACTIVATIONS))
    return {
        "sizes": [n_in, *hidden, draw(st.integers(1, 5))],
        "batch": draw(st.integers(2, 6)),
        "activation": activation,
        "act_params": (CUSTOM_ACT_PARAMS.get(activation) if draw(st.booleans()) else None),
        "norm": draw(st.sampled_from([None, "batch", "layer"])),
        "residual": draw(st.sampled_from([False, True, 1, 2, 3])),
        "residual_scale": draw(st.sampled_from([1.0, 0.3])),
        "bias": draw(st.booleans()),
        "loss": draw(st.sampled_from(["upstream", "mse", "cross_entropy"])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_torch_mlp(config):
    torch.manual_seed(config["seed"])
    model = TorchMLP(config["sizes"], config["activation"], config["act_params"], config["norm"],
                     config["residual"], config["residual_scale"], config["bias"])
    if model.norms is not None:  # non-default norm parameters and running statistics
        with torch.no_grad():
            for norm in model.norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.3)
                if isinstance(norm, nn.BatchNorm1d):
                    norm.running_mean.normal_(0, 0.5)
                    norm.running_var.uniform_(0.5, 2.0)
    return model


def mlp_loss(config, y_t, y, rng):
    """(torch loss, reference value, reference dL/dy) for the configured loss."""
    if config["loss"] == "upstream":
        R = rng.normal(size=y.shape)
        return (y_t * torch.tensor(R)).sum(), None, R
    if config["loss"] == "mse":
        target = rng.normal(size=y.shape)
        value, dy = ref.loss_forward_backward(y, target, "mse")
        return F.mse_loss(y_t, torch.tensor(target)), value, dy
    target = rng.integers(0, y.shape[1], y.shape[0])
    value, dy = ref.loss_forward_backward(y, target, "cross_entropy")
    return F.cross_entropy(y_t, torch.tensor(target)), value, dy


def compare_mlp(config, training):
    rng = np.random.default_rng(config["seed"])
    model = build_torch_mlp(config)
    model.train(training)
    params = {k: to_numpy(v) for k, v in model.state_dict().items()}
    x = rng.normal(size=(config["batch"], config["sizes"][0]))
    kwargs = {key: config[key] for key in ("activation", "act_params", "norm", "residual",
                                           "residual_scale", "bias")}

    y, cache = ref.mlp_forward(params, x, training=training, **kwargs)
    xt = torch.tensor(x, requires_grad=True)
    y_t = model(xt)
    close(y, y_t, f"y ({config})")
    loss_t, value, dy = mlp_loss(config, y_t, y, rng)
    if value is not None:
        assert value == pytest.approx(loss_t.item(), rel=1e-12), f"loss value ({config})"
    loss_t.backward()

    grads, dx, report = ref.mlp_backward(cache, dy)
    torch_grads = {name: p.grad for name, p in model.named_parameters()}
    assert sorted(grads) == sorted(torch_grads)
    for name, g in torch_grads.items():
        close(grads[name], g, f"grad {name} ({config})")
    close(dx, xt.grad, f"dx ({config})")
    act_norms = [torch.linalg.vector_norm(a.grad).item() for a in model.activations]
    close(report["activation_grad_norms"], np.array(act_norms),
          f"activation_grad_norms ({config})")
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in torch_grads.values()]))
    assert report["global_norm"] == pytest.approx(total.item(), rel=1e-9)
    L = len(config["sizes"]) - 2
    close(report["weight_grad_norms"],
          np.array([model.layers[l].weight.grad.norm().item() for l in range(L + 1)]),
          "weight_grad_norms")

    # running statistics after a training step; unchanged in eval mode
    buffers = {k: to_numpy(v) for k, v in model.state_dict().items()
               if k.endswith(("running_mean", "running_var"))}
    assert sorted(cache["new_buffers"]) == sorted(buffers)
    for name, value in buffers.items():
        close(cache["new_buffers"][name], value, f"{name} after forward ({config})")
        if not training:
            np.testing.assert_array_equal(cache["new_buffers"][name], params[name])


@SETTINGS
@given(config=mlp_configs())
def test_mlp_train_mode_matches_torch(config):
    compare_mlp(config, training=True)


@settings(max_examples=60, deadline=None)
@given(config=mlp_configs())
def test_mlp_eval_mode_matches_torch(config):
    compare_mlp(config, training=False)


def test_mlp_with_injected_inf_matches_torch_nan_pattern():
    """Non-finite values propagate the same way (relu's select included)."""
    config = {"sizes": [3, 4, 4, 2], "activation": "relu", "act_params": None, "norm": None,
              "residual": False, "residual_scale": 1.0, "bias": True, "seed": 3}
    model = build_torch_mlp(config)
    params = {k: to_numpy(v) for k, v in model.state_dict().items()}
    x = np.random.default_rng(3).normal(size=(4, 3))
    grad_y = np.ones((4, 2))
    grad_y[1, 0] = np.inf
    y, cache = ref.mlp_forward(params, x, activation="relu")
    grads, dx, report = ref.mlp_backward(cache, grad_y)
    xt = torch.tensor(x, requires_grad=True)
    model(xt).backward(torch.tensor(grad_y))
    for name, p in model.named_parameters():
        close(grads[name], p.grad, f"grad {name} with Inf upstream")
    close(dx, xt.grad, "dx with Inf upstream")
    assert report["first_nonfinite"] == 2


# ----------------------------------------------------------------------------------------------
# the RNN
# ----------------------------------------------------------------------------------------------


@st.composite
def rnn_configs(draw):
    return {
        "T": draw(st.integers(1, 6)),
        "B": draw(st.integers(1, 4)),
        "I": draw(st.integers(1, 4)),
        "H": draw(st.integers(1, 5)),
        "K": draw(st.sampled_from([None, 2])),
        "nonlinearity": draw(st.sampled_from(["tanh", "relu"])),
        "bias": draw(st.booleans()),
        "h0": draw(st.booleans()),
        "loss": draw(st.sampled_from(["upstream", "mse", "cross_entropy"])),
        "on": draw(st.sampled_from(["last", "all"])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@SETTINGS
@given(config=rnn_configs())
def test_rnn_matches_torch(config):
    T, B, I, H, K = (config[k] for k in "TBIHK")
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    rnn = nn.RNN(I, H, nonlinearity=config["nonlinearity"], bias=config["bias"],
                 dtype=torch.float64)
    readout = nn.Linear(H, K, dtype=torch.float64) if K else None
    params = {k: to_numpy(v) for k, v in rnn.state_dict().items()}
    if readout is not None:
        params.update({f"readout.{k}": to_numpy(v) for k, v in readout.state_dict().items()})
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(B, H)) if config["h0"] else None

    hs, cache = ref.rnn_forward(params, x, h0, activation=config["nonlinearity"])
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0 if h0 is not None else np.zeros((B, H)), requires_grad=True)
    hs_t, h_last = rnn(xt, h0t.unsqueeze(0))
    close(hs, hs_t, "hs")
    close(hs[-1], h_last[0], "h_T")
    outputs_t = hs_t if readout is None else readout(hs_t)
    outputs = hs if readout is None else cache["ys"]
    close(outputs, outputs_t, "outputs")

    width = outputs.shape[-1]
    if config["loss"] == "upstream":
        R = rng.normal(size=outputs.shape)
        loss_t, grad_out = (outputs_t * torch.tensor(R)).sum(), R
    else:
        last = config["on"] == "last"
        if config["loss"] == "mse":
            target = rng.normal(size=outputs.shape[1:] if last else outputs.shape)
            loss_t = F.mse_loss(outputs_t[-1] if last else outputs_t, torch.tensor(target))
        else:
            target = rng.integers(0, width, (B,) if last else (T, B))
            loss_t = F.cross_entropy(outputs_t[-1] if last else outputs_t.reshape(T * B, width),
                                     torch.tensor(target).reshape(-1))
        value, grad_out = ref.rnn_loss_grads(outputs, target, config["loss"], on=config["on"])
        assert value == pytest.approx(loss_t.item(), rel=1e-12), "loss value"
    loss_t.backward()

    if readout is None:
        grads, dx, dh0, report = ref.rnn_backward(cache, grad_hs=grad_out)
    else:
        grads, dx, dh0, report = ref.rnn_backward(cache, grad_ys=grad_out)
    torch_grads = {name: p.grad for name, p in rnn.named_parameters()}
    if readout is not None:
        torch_grads.update({f"readout.{n}": p.grad for n, p in readout.named_parameters()})
    assert sorted(grads) == sorted(torch_grads)
    for name, g in torch_grads.items():
        close(grads[name], g, f"grad {name} ({config})")
    close(dx, xt.grad, f"dx ({config})")
    close(dh0, h0t.grad, f"dh0 ({config})")
    assert report["h0_grad_norm"] == pytest.approx(h0t.grad.norm().item(), rel=1e-9, abs=1e-300)
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in torch_grads.values()]))
    assert report["global_norm"] == pytest.approx(total.item(), rel=1e-9, abs=1e-300)

    # per-timestep total derivatives, from an unrolled torch loop with retained gradients
    W_ih, W_hh = (torch.tensor(params[n], requires_grad=True)
                  for n in ("weight_ih_l0", "weight_hh_l0"))
    b = (torch.tensor(params["bias_ih_l0"]) + torch.tensor(params["bias_hh_l0"])
         if config["bias"] else 0.0)
    act = torch_activation(config["nonlinearity"])
    h = torch.tensor(h0 if h0 is not None else np.zeros((B, H)), requires_grad=True)
    states = []
    for t in range(T):
        h = act(torch.tensor(x[t]) @ W_ih.T + h @ W_hh.T + b)
        h.retain_grad()
        states.append(h)
    unrolled = torch.stack(states)
    close(hs, unrolled, "unrolled hs")
    unrolled_out = unrolled if readout is None else (
        unrolled @ torch.tensor(params["readout.weight"]).T + torch.tensor(params["readout.bias"]))
    (unrolled_out * torch.tensor(grad_out)).sum().backward()
    close(report["timestep_grad_norms"],
          np.array([torch.linalg.vector_norm(s.grad).item() for s in states]),
          f"timestep_grad_norms ({config})")


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (7, 10)])
def test_losses_match_torch(shape):
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    y = rng.normal(0, 3, shape)
    target = rng.normal(size=shape)
    yt = torch.tensor(y, requires_grad=True)
    loss_t = F.mse_loss(yt, torch.tensor(target))
    loss_t.backward()
    value, dy = ref.loss_forward_backward(y, target, "mse")
    assert value == pytest.approx(loss_t.item(), rel=1e-13)
    close(dy, yt.grad, "mse dy")

    classes = rng.integers(0, shape[1], shape[0])
    yt = torch.tensor(y * 50, requires_grad=True)  # large logits too
    loss_t = F.cross_entropy(yt, torch.tensor(classes))
    loss_t.backward()
    value, dy = ref.loss_forward_backward(y * 50, classes, "cross_entropy")
    assert value == pytest.approx(loss_t.item(), rel=1e-13, abs=1e-15)
    close(dy, yt.grad, "cross_entropy dy")


# ----------------------------------------------------------------------------------------------
# clipping
# ----------------------------------------------------------------------------------------------


def torch_params_with_grads(grads):
    out = []
    for g in grads.values():
        p = nn.Parameter(torch.zeros(g.shape, dtype=torch.float64))
        p.grad = torch.tensor(g)
        out.append(p)
    return out


def random_grads(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(0, scale, (3, 4)), "b": rng.normal(0, scale, 4),
            "c": rng.normal(0, scale, (2, 2))}


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 3.0, 1e6])
@pytest.mark.parametrize("seed", [0, 1])
def test_clip_grad_norm_matches_torch(max_norm, seed):
    grads = random_grads(seed)
    ps = torch_params_with_grads(grads)
    total_t = nn.utils.clip_grad_norm_(ps, max_norm)
    total, clipped = ref.clip_grad_norm(grads, max_norm)
    assert total == pytest.approx(total_t.item(), rel=1e-13)
    for (name, g), p in zip(clipped.items(), ps, strict=True):
        close(g, p.grad, f"clipped {name}", rtol=1e-14, atol=0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_grad_norm_nonfinite_matches_torch(bad):
    grads = random_grads(2)
    grads["b"][1] = bad
    with pytest.raises(RuntimeError):
        nn.utils.clip_grad_norm_(torch_params_with_grads(grads), 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        ref.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    ps = torch_params_with_grads(grads)
    total_t = nn.utils.clip_grad_norm_(ps, 1.0, error_if_nonfinite=False)
    total, clipped = ref.clip_grad_norm(grads, 1.0)
    assert (math.isnan(total) and math.isnan(total_t.item())) or total == total_t.item()
    for (name, g), p in zip(clipped.items(), ps, strict=True):
        close(g, p.grad, f"clipped {name} with a non-finite gradient", rtol=0, atol=0)


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 2.0])
def test_clip_grad_value_matches_torch(clip_value):
    grads = random_grads(3)
    grads["a"][0, 0] = np.nan
    grads["c"][1, 1] = -np.inf
    ps = torch_params_with_grads(grads)
    nn.utils.clip_grad_value_(ps, clip_value)
    clipped = ref.clip_grad_value(grads, clip_value)
    for (name, g), p in zip(clipped.items(), ps, strict=True):
        close(g, p.grad, f"clip_grad_value {name}", rtol=0, atol=0)


def test_clip_grad_norm_per_layer_matches_torch_per_tensor():
    grads = random_grads(4, scale=2.0)
    norms, clipped = ref.clip_grad_norm_per_layer(grads, 1.5)
    for name, g in grads.items():
        [p] = torch_params_with_grads({name: g})
        total_t = nn.utils.clip_grad_norm_([p], 1.5)
        assert norms[name] == pytest.approx(total_t.item(), rel=1e-13)
        close(clipped[name], p.grad, f"per-layer clipped {name}", rtol=1e-14, atol=0)
