"""Benchmark suite: gradchain against its peers on the standard workloads (WORKLOADS.md).

One iteration is forward + full backward + the gradient report, on a fixed upstream
gradient. Every peer gets the same weights (gradchain's ``state_dict``), the same input
and the same upstream gradient, and is checked against gradchain before it is timed.
Peers are timed round-robin within one run (one iteration of each peer per repeat, in a
shuffled order, each starting once the previous peer's thread pools have stopped spinning),
so that a noisy machine slows them alike.

Run ``python -m gradchain.bench --help`` (or ``gradchain bench``). Optional peers (PyTorch,
JAX) are imported lazily and skipped with a note when they are not installed.

Extension point: :data:`WORKLOADS` maps names to workload descriptions, each of a ``kind``
("mlp": :class:`MLPWorkload`, "rnn": :class:`RNNWorkload`); :data:`CASE_MAKERS` builds the
shared inputs of a kind, :data:`REFERENCES` runs the NumPy spec of a kind in a given dtype,
and :data:`BUILDERS` maps ``kind -> peer name -> builder``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc as _pygc
import importlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

# OpenBLAS reads these when it is loaded: they force an older, slower kernel. The benchmark
# drops them for its own process only, by re-executing itself (main()) before any timing.
_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_UNSET_MARK = "GRADCHAIN_BENCH_UNSET_ENV"

__all__ = [
    "BUILDERS", "CASE_MAKERS", "PEERS", "QUICK", "REFERENCES", "WORKLOADS", "Agreement", "Case",
    "CpuMeter", "MLPWorkload", "Outputs", "PeerInfo", "PeerInstance", "RNNWorkload", "arbitrate",
    "check_agreement", "format_table", "gemm_ceiling", "kink_explained", "machine_info", "main",
    "measure_memory", "run", "wait_idle",
]


# =============================================================================================
# workloads
# =============================================================================================


@dataclass(frozen=True)
class MLPWorkload:
    """An MLP chain: ``sizes = [in] + [width] * depth + [out]``, batch ``batch``."""

    kind: ClassVar[str] = "mlp"
    name: str
    in_features: int
    width: int
    depth: int
    out_features: int
    batch: int
    activation: str = "tanh"
    norm: str | None = None
    residual: bool = False
    residual_scale: float = 1.0
    init: str = "xavier_normal"
    dtype: str = "float32"

    @property
    def sizes(self) -> list[int]:
        return [self.in_features] + [self.width] * self.depth + [self.out_features]

    def flops(self) -> float:
        """WORKLOADS.md: ``6 * B * sum(in_l * out_l)`` (forward 2, backward 4)."""
        s = self.sizes
        return 6.0 * self.batch * sum(a * b for a, b in zip(s[:-1], s[1:], strict=True))

    def quick(self) -> MLPWorkload:
        """A scaled-down copy for smoke runs (widths / 4, depth / 8, batch / 4)."""
        return replace(
            self,
            in_features=max(8, self.in_features // 4),
            width=max(8, self.width // 4),
            depth=max(2, self.depth // 8),
            out_features=max(8, self.out_features // 4),
            batch=max(8, self.batch // 4),
        )

    def describe(self) -> str:
        opts = [self.activation]
        if self.norm:
            opts.append(f"{self.norm} norm")
        if self.residual:
            opts.append("residual")
        opts += [f"init {self.init}", self.dtype]
        return (f"MLP in {self.in_features}, width {self.width}, depth {self.depth}, "
                f"out {self.out_features}, batch {self.batch}; " + ", ".join(opts))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class RNNWorkload:
    """A one-layer vanilla RNN (``torch.nn.RNN``): ``steps`` time steps of batch ``batch``,
    ``input_size -> hidden_size``; the upstream gradient is ``dL/dh_t`` for every step."""

    kind: ClassVar[str] = "rnn"
    name: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    activation: str = "tanh"
    init: str = "torch_default"  # W_hh (and b_hh): gc.RNN's default, as torch.nn.RNN
    input_init: str = "xavier_uniform"  # W_ih: gc.RNN's default
    dtype: str = "float32"

    def flops(self) -> float:
        """WORKLOADS.md: ``6 * T * B * (I*H + H*H)`` (forward 2, backward 4)."""
        I_, H = self.input_size, self.hidden_size
        return 6.0 * self.steps * self.batch * (I_ * H + H * H)

    def quick(self) -> RNNWorkload:
        """A scaled-down copy for smoke runs (T / 8, batch / 4, input and hidden / 4)."""
        return replace(
            self,
            steps=max(8, self.steps // 8),
            batch=max(4, self.batch // 4),
            input_size=max(8, self.input_size // 4),
            hidden_size=max(16, self.hidden_size // 4),
        )

    def describe(self) -> str:
        return (f"RNN T {self.steps}, batch {self.batch}, input {self.input_size}, hidden "
                f"{self.hidden_size}; {self.activation}, init W_hh {self.init}, W_ih "
                f"{self.input_init}, {self.dtype}")

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


Workload = MLPWorkload | RNNWorkload

_MLP_TANH = MLPWorkload("mlp-tanh", 256, 256, 64, 256, 128, activation="tanh",
                        init="xavier_normal")
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        _MLP_TANH,
        MLPWorkload("mlp-deep-narrow", 64, 64, 256, 64, 64, activation="relu", norm="batch",
                    residual=True, init="kaiming_normal"),
        MLPWorkload("mlp-wide", 2048, 2048, 16, 2048, 256, activation="relu",
                    init="kaiming_normal"),
        replace(_MLP_TANH, name="mlp-tanh-f64", dtype="float64"),
        RNNWorkload("rnn-mid", 512, 32, 64, 256, activation="tanh"),
        RNNWorkload("rnn-long-narrow", 4096, 16, 32, 64, activation="tanh"),
    )
}
"""The standard workloads of WORKLOADS.md, by name."""

QUICK: dict[str, Workload] = {name: w.quick() for name, w in WORKLOADS.items()}
"""The same workloads scaled down (``--quick``)."""


# =============================================================================================
# peers
# =============================================================================================


@dataclass
class Outputs:
    """What a peer computed in one iteration, as NumPy arrays (None: not computed).

    ``y``: the MLP's output, or the RNN's hidden states ``hs (T, B, H)``.
    ``weight_grad_norms``: one per linear layer (MLP), ``[||dW_ih||, ||dW_hh||]`` (RNN).
    ``timestep_grad_norms``: the RNN's ``||dL/dh_t||`` (total derivative), t = 1..T.
    """

    y: np.ndarray
    grads: dict[str, np.ndarray]
    activation_grad_norms: np.ndarray | None = None
    weight_grad_norms: np.ndarray | None = None
    timestep_grad_norms: np.ndarray | None = None


class PeerInstance(Protocol):
    """A peer set up for one workload."""

    def step(self) -> None:
        """One timed iteration (returns when the work is done)."""

    def outputs(self) -> Outputs:
        """The results of the last step, converted to NumPy (not timed)."""


@dataclass(frozen=True)
class PeerInfo:
    name: str
    label: str
    requires: tuple[str, ...] = ()  # modules that must be importable

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


PEERS: dict[str, PeerInfo] = {
    p.name: p
    for p in (
        PeerInfo("gradchain", "gradchain"),
        PeerInfo("gradchain-grads", "gradchain, grads only"),
        PeerInfo("torch", "PyTorch eager + report", ("torch",)),
        PeerInfo("torch-grads", "PyTorch eager, grads only", ("torch",)),
        PeerInfo("jax", "JAX jit", ("jax",)),
        PeerInfo("numpy", "NumPy (gradchain.reference)"),
    )
}
"""Peers by name; ``gradchain`` is always run (it is the reference of the checks)."""


@dataclass
class Case:
    """Everything shared by the peers of one workload: weights, inputs, options."""

    workload: Workload
    x: np.ndarray
    grad_y: np.ndarray  # dL/dy (MLP); dL/dh_t for every step, (T, B, H) (RNN)
    state: dict[str, np.ndarray]  # gradchain's state_dict, copied
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)


def _dtype(w: Workload) -> np.dtype:
    return np.dtype(w.dtype)


def _mlp_gc_model(w: MLPWorkload, seed: int) -> Any:
    import gradchain as gc

    return gc.MLP(w.sizes, activation=w.activation, init=w.init, norm=w.norm,
                  residual=w.residual, residual_scale=w.residual_scale,
                  dtype=_dtype(w), seed=seed)


def _mlp_case(w: Workload, seed: int, threads: int) -> Case:
    assert isinstance(w, MLPWorkload)
    model = _mlp_gc_model(w, seed)
    rng = np.random.default_rng(seed + 1)
    dt = _dtype(w)
    x = rng.standard_normal((w.batch, w.in_features)).astype(dt)
    gy = rng.standard_normal((w.batch, w.out_features)).astype(dt)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return Case(w, x, gy, state, threads, {"residual_flags": list(model.residual)})


def _mlp_reference(case: Case, dtype: Any) -> Outputs:
    """``gradchain.reference`` on the case's weights and data, cast to ``dtype``."""
    from . import reference

    w = case.workload
    assert isinstance(w, MLPWorkload)
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()
              if not k.endswith("num_batches_tracked")}
    y, cache = reference.mlp_forward(
        params, case.x.astype(dtype), activation=w.activation, norm=w.norm,
        residual=case.extra["residual_flags"], residual_scale=w.residual_scale, training=True)
    grads, _dx, rep = reference.mlp_backward(cache, case.grad_y.astype(dtype))
    return Outputs(y, dict(grads), np.asarray(rep["activation_grad_norms"]),
                   np.asarray(rep["weight_grad_norms"]))


_RNN_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _rnn_gc_model(w: RNNWorkload, seed: int) -> Any:
    import gradchain as gc

    return gc.RNN(w.input_size, w.hidden_size, activation=w.activation, init=w.init,
                  input_init=w.input_init, dtype=_dtype(w), seed=seed)


def _rnn_case(w: Workload, seed: int, threads: int) -> Case:
    assert isinstance(w, RNNWorkload)
    model = _rnn_gc_model(w, seed)
    rng = np.random.default_rng(seed + 1)
    dt = _dtype(w)
    x = rng.standard_normal((w.steps, w.batch, w.input_size)).astype(dt)
    ghs = rng.standard_normal((w.steps, w.batch, w.hidden_size)).astype(dt)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return Case(w, x, ghs, state, threads)


def _rnn_outputs(hs: np.ndarray, grads: Mapping[str, np.ndarray], report: Mapping[str, Any]
                 ) -> Outputs:
    return Outputs(hs, dict(grads), weight_grad_norms=np.array(
        [report["weight_ih_grad_norm"], report["weight_hh_grad_norm"]], dtype=np.float64),
        timestep_grad_norms=np.asarray(report["timestep_grad_norms"], dtype=np.float64))


def _rnn_reference(case: Case, dtype: Any) -> Outputs:
    """``gradchain.reference.rnn_forward/rnn_backward`` on the case, cast to ``dtype``."""
    from . import reference

    w = case.workload
    assert isinstance(w, RNNWorkload)
    params = {k: np.asarray(v, dtype=dtype) for k, v in case.state.items()}
    hs, cache = reference.rnn_forward(params, case.x.astype(dtype), activation=w.activation)
    grads, _dx, _dh0, rep = reference.rnn_backward(cache, case.grad_y.astype(dtype))
    return _rnn_outputs(hs, grads, rep)


CASE_MAKERS: dict[str, Callable[[Workload, int, int], Case]] = {"mlp": _mlp_case,
                                                                "rnn": _rnn_case}
"""kind -> ``make(workload, seed, threads) -> Case``."""

REFERENCES: dict[str, Callable[[Case, Any], Outputs]] = {"mlp": _mlp_reference,
                                                         "rnn": _rnn_reference}
"""kind -> ``reference(case, dtype) -> Outputs``: the NumPy spec in the given dtype (float64
arbitrates the float32 checks)."""


# --------------------------------------------------------------------------- gradchain
class _Gradchain:
    """``gc.MLP`` / ``gc.RNN``: ``forward(x)`` + ``backward(dL/dy or dL/dh_t)``, the
    report coming with backward; ``report=False`` is the gradients-only baseline (the
    report's own passes skipped) that prices the report; ``panel=False`` sends every
    product the panel GEMM would take to OpenBLAS (the RNN's per-step products excepted),
    which prices gradchain's own GEMM."""

    def __init__(self, case: Case, report: bool = True, panel: bool = True) -> None:
        import gradchain as gc

        w = case.workload
        gc.set_num_threads(case.threads)
        self.rnn = isinstance(w, RNNWorkload)
        self.model = _rnn_gc_model(w, seed=0) if self.rnn else _mlp_gc_model(w, seed=0)
        self.model.load_state_dict(case.state)
        self.x, self.g = case.x, case.grad_y
        self.report = report
        self.panel = panel
        self._y: np.ndarray | None = None
        self._rep: Any = None

    def step(self) -> None:
        from gradchain import _core

        was = _core._panel_gemm()
        _core._set_panel_gemm(self.panel)
        try:
            self._y = self.model.forward(self.x)
            self._rep = self.model.backward(self.g, report=self.report)
        finally:
            _core._set_panel_gemm(was)

    def outputs(self) -> Outputs:
        assert self._y is not None
        y = np.array(self._y)
        grads = {k: np.array(g) for k, g in self.model.named_grads()}
        r = self._rep
        if not self.report:
            return Outputs(y=y, grads=grads)
        if self.rnn:
            return _rnn_outputs(y, grads, {"weight_ih_grad_norm": r.weight_ih_grad_norm,
                                           "weight_hh_grad_norm": r.weight_hh_grad_norm,
                                           "timestep_grad_norms": np.array(
                                               r.timestep_grad_norms)})
        return Outputs(y=y, grads=grads,
                       activation_grad_norms=np.array(r.activation_grad_norms),
                       weight_grad_norms=np.array(r.weight_grad_norms))


# --------------------------------------------------------------------------- PyTorch
_TORCH_ACTS = {
    "tanh": "tanh", "relu": "relu", "sigmoid": "sigmoid", "gelu": "gelu", "silu": "silu",
    "elu": "elu", "selu": "selu", "softplus": "softplus", "hardtanh": "hardtanh",
    "leaky_relu": "leaky_relu", "identity": None,
}


class _TorchMLP:
    """``torch.nn`` modules + autograd, as a PyTorch user would write the chain.

    ``report=True``: ``x.requires_grad`` and ``retain_grad()`` on every hidden activation,
    then ``||dL/da_l||`` and ``||dL/dW_l||`` each iteration (``Tensor.norm``, in the
    model's dtype). ``report=False``: parameter gradients only.
    """

    def __init__(self, case: Case, report: bool) -> None:
        import torch
        from torch import nn

        w = case.workload
        assert isinstance(w, MLPWorkload)
        torch.set_num_threads(case.threads)
        tdt = torch.float32 if w.dtype == "float32" else torch.float64
        sizes = w.sizes
        L = w.depth
        flags = case.extra["residual_flags"]
        alpha = w.residual_scale
        act_name = _TORCH_ACTS[w.activation]
        act: Callable[[Any], Any] = (
            (lambda t: t) if act_name is None else getattr(torch.nn.functional, act_name))

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = nn.ModuleList(
                    nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
                norm_cls = {None: None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[w.norm]
                self.norms = nn.ModuleList(
                    [] if norm_cls is None else [norm_cls(h) for h in sizes[1:-1]])

            def forward(self, x: Any, keep: list[Any] | None = None) -> Any:
                a = x
                for i in range(L):
                    z = self.layers[i](a)
                    if len(self.norms):
                        z = self.norms[i](z)
                    f = act(z)
                    a = (a + f if alpha == 1.0 else a + alpha * f) if flags[i] else f
                    if keep is not None:
                        a.retain_grad()
                        keep.append(a)
                return self.layers[L](a)

        self.torch = torch
        self.net: Any = Net().to(tdt)
        self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in case.state.items()})
        self.net.train()
        self.report = report
        self.x = torch.from_numpy(case.x.copy()).requires_grad_(report)
        self.gy = torch.from_numpy(case.grad_y.copy())
        self._y: Any = None
        self._act_norms: Any = None
        self._w_norms: Any = None

    def step(self) -> None:
        net = self.net
        net.zero_grad(set_to_none=True)
        if self.report:
            self.x.grad = None
            acts: list[Any] = [self.x]
            y = net(self.x, acts)
            y.backward(self.gy)
            self._act_norms = self.torch.stack([a.grad.norm() for a in acts])
            self._w_norms = self.torch.stack([lin.weight.grad.norm() for lin in net.layers])
        else:
            y = net(self.x)
            y.backward(self.gy)
        self._y = y

    def outputs(self) -> Outputs:
        grads = {k: p.grad.detach().numpy().copy() for k, p in self.net.named_parameters()}
        out = Outputs(y=self._y.detach().numpy().copy(), grads=grads)
        if self.report:
            out.activation_grad_norms = self._act_norms.detach().numpy().astype(np.float64)
            out.weight_grad_norms = self._w_norms.detach().numpy().astype(np.float64)
        return out


# --------------------------------------------------------------------------- JAX
def _import_jax(threads: int) -> Any:
    """``import jax``; with one thread, XLA is told to use one (before its first import)."""
    if threads == 1 and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
    import jax

    return jax


class _JaxMLP:
    """One ``jax.jit`` function: forward, ``jax.vjp`` with the fixed upstream gradient, and
    the same norms. ``dL/da_l`` comes from zero "probes" added to each hidden activation
    (the cotangent of a probe is the gradient of that activation)."""

    def __init__(self, case: Case) -> None:
        jax = _import_jax(case.threads)
        import jax.numpy as jnp

        w = case.workload
        assert isinstance(w, MLPWorkload)
        if w.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        L = w.depth
        flags = case.extra["residual_flags"]
        alpha = w.residual_scale
        norm = w.norm
        eps, momentum = 1e-5, 0.1
        act: Callable[[Any], Any] = {
            "tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
            "silu": jax.nn.silu, "identity": lambda t: t,
            "gelu": lambda t: jax.nn.gelu(t, approximate=False),
        }[w.activation]
        s = case.state
        params = {
            "W": [jnp.asarray(s[f"layers.{i}.weight"]) for i in range(L + 1)],
            "b": [jnp.asarray(s[f"layers.{i}.bias"]) for i in range(L + 1)],
            "gamma": [jnp.asarray(s[f"norms.{i}.weight"]) for i in range(L)] if norm else [],
            "beta": [jnp.asarray(s[f"norms.{i}.bias"]) for i in range(L)] if norm else [],
        }
        running = ([(jnp.asarray(s[f"norms.{i}.running_mean"]),
                     jnp.asarray(s[f"norms.{i}.running_var"])) for i in range(L)]
                   if norm == "batch" else [])
        B = w.batch

        def forward(p: Any, x: Any, probes: Any) -> tuple[Any, Any]:
            a = x
            stats = []
            for i in range(L):
                z = a @ p["W"][i].T + p["b"][i]
                if norm == "batch":
                    mu = jnp.mean(z, axis=0)
                    var = jnp.mean(jnp.square(z - mu), axis=0)
                    z = p["gamma"][i] * (z - mu) * jax.lax.rsqrt(var + eps) + p["beta"][i]
                    stats.append((mu, var))
                elif norm == "layer":
                    mu = jnp.mean(z, axis=1, keepdims=True)
                    var = jnp.mean(jnp.square(z - mu), axis=1, keepdims=True)
                    z = p["gamma"][i] * (z - mu) * jax.lax.rsqrt(var + eps) + p["beta"][i]
                f = act(z)
                a = a + alpha * f if flags[i] else f
                a = a + probes[i]
            return a @ p["W"][L].T + p["b"][L], stats

        def step(p: Any, running: Any, x: Any, gy: Any) -> Any:
            probes = [jnp.zeros((B, h), x.dtype) for h in w.sizes[1:-1]]
            y, vjp, stats = jax.vjp(forward, p, x, probes, has_aux=True)
            gp, gx, gprobes = vjp(gy)
            act_norms = jnp.stack([jnp.linalg.norm(g) for g in [gx, *gprobes]])
            w_norms = jnp.stack([jnp.linalg.norm(g) for g in gp["W"]])
            new_running = [((1 - momentum) * rm + momentum * mu,
                            (1 - momentum) * rv + momentum * var * (B / (B - 1)))
                           for (rm, rv), (mu, var) in zip(running, stats, strict=True)]
            return y, gp, act_norms, w_norms, new_running

        self.jax = jax
        self._fn = jax.jit(step)
        self.params = params
        self.running = running
        self.x = jnp.asarray(case.x)
        self.gy = jnp.asarray(case.grad_y)
        self.L = L
        self.norm = norm
        self._out: Any = None

    def step(self) -> None:
        out = self._fn(self.params, self.running, self.x, self.gy)
        self.jax.block_until_ready(out)
        self.running = out[4]
        self._out = out

    def outputs(self) -> Outputs:
        y, gp, act_norms, w_norms, _ = self._out
        grads: dict[str, np.ndarray] = {}
        for i in range(self.L + 1):
            grads[f"layers.{i}.weight"] = np.asarray(gp["W"][i])
            grads[f"layers.{i}.bias"] = np.asarray(gp["b"][i])
        if self.norm:
            for i in range(self.L):
                grads[f"norms.{i}.weight"] = np.asarray(gp["gamma"][i])
                grads[f"norms.{i}.bias"] = np.asarray(gp["beta"][i])
        return Outputs(np.asarray(y), grads, np.asarray(act_norms, dtype=np.float64),
                       np.asarray(w_norms, dtype=np.float64))


# --------------------------------------------------------------------------- NumPy
class _NumpyMLP:
    """``gradchain.reference``: the vectorised NumPy implementation (dtype kept)."""

    def __init__(self, case: Case) -> None:
        from . import reference

        w = case.workload
        assert isinstance(w, MLPWorkload)
        _limit_numpy_blas(case.threads)
        self.ref = reference
        self.w = w
        self.params = {k: np.array(v) for k, v in case.state.items()
                       if not k.endswith("num_batches_tracked")}
        self.flags = case.extra["residual_flags"]
        self.x, self.gy = case.x, case.grad_y
        self._last: tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]] | None = None

    def step(self) -> None:
        w = self.w
        y, cache = self.ref.mlp_forward(self.params, self.x, activation=w.activation,
                                        norm=w.norm, residual=self.flags,
                                        residual_scale=w.residual_scale, training=True)
        grads, _dx, report = self.ref.mlp_backward(cache, self.gy)
        self.params.update(cache["new_buffers"])
        self._last = (y, grads, report)

    def outputs(self) -> Outputs:
        assert self._last is not None
        y, grads, report = self._last
        return Outputs(y, dict(grads), np.asarray(report["activation_grad_norms"]),
                       np.asarray(report["weight_grad_norms"]))


# =============================================================================================
# RNN peers
# =============================================================================================


class _TorchRNN:
    """PyTorch eager on ``torch.nn.RNN``'s parameters (gradchain's state dict loads as is).

    ``report=False``: ``torch.nn.RNN`` itself, ``hs.backward(grad_hs)`` (the backward of
    ``sum(hs * grad_hs)``), parameter gradients only. ``torch.nn.RNN`` keeps the ``h_t``
    internal, so their total derivatives ``dL/dh_t`` are out of reach; ``report=True``
    unrolls the time loop by hand on the same parameters, as a PyTorch user has to: the
    input projection of all steps in one matmul (as ``torch.nn.RNN`` does on the CPU),
    ``unbind`` into steps, then ``h_t = act(addmm(xw_t, h_{t-1}, W_hh.T))`` with
    ``retain_grad()`` on every ``h_t``; after ``backward``, ``||h_t.grad||`` for every t
    (one batched norm) and ``||dW_ih||``, ``||dW_hh||``.
    """

    def __init__(self, case: Case, report: bool) -> None:
        import torch
        from torch import nn

        w = case.workload
        assert isinstance(w, RNNWorkload)
        if w.activation not in ("tanh", "relu"):
            raise ValueError(f"torch.nn.RNN has no {w.activation!r} nonlinearity")
        torch.set_num_threads(case.threads)
        tdt = torch.float32 if w.dtype == "float32" else torch.float64
        self.torch = torch
        self.rnn: Any = nn.RNN(w.input_size, w.hidden_size, nonlinearity=w.activation,
                               batch_first=False).to(tdt)
        self.rnn.load_state_dict({k: torch.from_numpy(np.array(v))
                                  for k, v in case.state.items()})
        self.act = torch.tanh if w.activation == "tanh" else torch.relu
        self.report = report
        self.x = torch.from_numpy(case.x.copy())
        self.ghs = torch.from_numpy(case.grad_y.copy())
        self._hs: Any = None
        self._t_norms: Any = None
        self._w_norms: Any = None

    def step(self) -> None:
        torch = self.torch
        rnn = self.rnn
        rnn.zero_grad(set_to_none=True)
        if not self.report:
            hs, _ = rnn(self.x)
            hs.backward(self.ghs)
            self._hs = hs
            return
        T, B = self.x.shape[0], self.x.shape[1]
        w_ih, w_hh = rnn.weight_ih_l0, rnn.weight_hh_l0
        xw = torch.nn.functional.linear(self.x, w_ih, rnn.bias_ih_l0 + rnn.bias_hh_l0)
        # unbind, not xw[t]: the backward of T selects builds T zero-filled (T, B, H)
        # gradients (quadratic in T); unbind's backward stacks the T pieces once
        xws = xw.unbind(0)
        w_hh_t = w_hh.t()
        h = torch.zeros(B, w_hh.shape[0], dtype=xw.dtype)
        keep: list[Any] = []
        for t in range(T):
            h = self.act(torch.addmm(xws[t], h, w_hh_t))
            h.retain_grad()
            keep.append(h)
        hs = torch.stack(keep)
        hs.backward(self.ghs)
        self._t_norms = torch.linalg.vector_norm(torch.stack([h.grad for h in keep]),
                                                 dim=(1, 2))
        self._w_norms = torch.stack([w_ih.grad.norm(), w_hh.grad.norm()])
        self._hs = hs

    def outputs(self) -> Outputs:
        grads = {k: p.grad.detach().numpy().copy() for k, p in self.rnn.named_parameters()}
        out = Outputs(y=self._hs.detach().numpy().copy(), grads=grads)
        if self.report:
            out.timestep_grad_norms = self._t_norms.detach().numpy().astype(np.float64)
            out.weight_grad_norms = self._w_norms.detach().numpy().astype(np.float64)
        return out


class _JaxRNN:
    """One ``jax.jit`` function: the forward recurrence as ``jax.lax.scan`` over time (input
    projection of all steps in one matmul first), ``jax.vjp`` with the fixed ``grad_hs``,
    and the norms. The total ``dL/dh_t`` come from a zero "probe" added to each ``h_t``
    inside the scan: the probes' cotangents are the total derivatives (the backward scan
    carries them), so ``||dL/dh_t||`` for all t is one reduction."""

    def __init__(self, case: Case) -> None:
        jax = _import_jax(case.threads)
        import jax.numpy as jnp

        w = case.workload
        assert isinstance(w, RNNWorkload)
        if w.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        act: Callable[[Any], Any] = {
            "tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
            "silu": jax.nn.silu, "identity": lambda t: t,
            "gelu": lambda t: jax.nn.gelu(t, approximate=False),
        }[w.activation]
        B, H = w.batch, w.hidden_size

        def forward(p: Any, x: Any, probes: Any) -> Any:
            xw = x @ p["weight_ih_l0"].T + (p["bias_ih_l0"] + p["bias_hh_l0"])
            w_hh_t = p["weight_hh_l0"].T

            def cell(h: Any, inp: Any) -> tuple[Any, Any]:
                xw_t, probe_t = inp
                h = act(xw_t + h @ w_hh_t) + probe_t
                return h, h

            _, hs = jax.lax.scan(cell, jnp.zeros((B, H), x.dtype), (xw, probes))
            return hs

        def step(p: Any, x: Any, ghs: Any) -> Any:
            hs, vjp = jax.vjp(lambda p_, pr: forward(p_, x, pr), p, jnp.zeros_like(ghs))
            gp, gh = vjp(ghs)
            t_norms = jnp.sqrt(jnp.sum(jnp.square(gh), axis=(1, 2)))
            w_norms = jnp.stack([jnp.linalg.norm(gp["weight_ih_l0"]),
                                 jnp.linalg.norm(gp["weight_hh_l0"])])
            return hs, gp, t_norms, w_norms

        self.jax = jax
        self._fn = jax.jit(step)
        self.params = {k: jnp.asarray(case.state[k]) for k in _RNN_PARAMS}
        self.x = jnp.asarray(case.x)
        self.ghs = jnp.asarray(case.grad_y)
        self._out: Any = None

    def step(self) -> None:
        out = self._fn(self.params, self.x, self.ghs)
        self.jax.block_until_ready(out)
        self._out = out

    def outputs(self) -> Outputs:
        hs, gp, t_norms, w_norms = self._out
        return Outputs(np.asarray(hs), {k: np.asarray(gp[k]) for k in _RNN_PARAMS},
                       weight_grad_norms=np.asarray(w_norms, dtype=np.float64),
                       timestep_grad_norms=np.asarray(t_norms, dtype=np.float64))


class _NumpyRNN:
    """``gradchain.reference.rnn_forward/rnn_backward`` (dtype kept: float32 stays float32)."""

    def __init__(self, case: Case) -> None:
        from . import reference

        w = case.workload
        assert isinstance(w, RNNWorkload)
        _limit_numpy_blas(case.threads)
        self.ref = reference
        self.activation = w.activation
        self.params = {k: np.array(v) for k, v in case.state.items()}
        self.x, self.ghs = case.x, case.grad_y
        self._last: Outputs | None = None

    def step(self) -> None:
        hs, cache = self.ref.rnn_forward(self.params, self.x, activation=self.activation)
        grads, _dx, _dh0, report = self.ref.rnn_backward(cache, self.ghs)
        self._last = _rnn_outputs(hs, grads, report)

    def outputs(self) -> Outputs:
        assert self._last is not None
        return replace(self._last, grads=dict(self._last.grads))


Builder = Callable[[Case], PeerInstance]
BUILDERS: dict[str, dict[str, Builder]] = {
    "mlp": {
        "gradchain": _Gradchain,
        "gradchain-grads": lambda c: _Gradchain(c, report=False),
        "torch": lambda c: _TorchMLP(c, report=True),
        "torch-grads": lambda c: _TorchMLP(c, report=False),
        "jax": _JaxMLP,
        "numpy": _NumpyMLP,
    },
    "rnn": {
        "gradchain": _Gradchain,
        "gradchain-grads": lambda c: _Gradchain(c, report=False),
        "torch": lambda c: _TorchRNN(c, report=True),
        "torch-grads": lambda c: _TorchRNN(c, report=False),
        "jax": _JaxRNN,
        "numpy": _NumpyRNN,
    },
}
"""kind -> peer name -> ``build(case) -> PeerInstance``."""


_numpy_blas_note: str | None = None


def _limit_numpy_blas(threads: int) -> None:
    """Limit NumPy's own OpenBLAS pool to ``threads`` (not gradchain's, which the core
    manages itself). Needs threadpoolctl when ``threads`` differs from the core count."""
    global _numpy_blas_note
    if threads == (os.cpu_count() or threads) or _numpy_blas_note is not None:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        _numpy_blas_note = ("NumPy's BLAS threads not limited (install threadpoolctl); "
                            "it uses all cores")
        return
    np_dir = os.path.dirname(os.path.dirname(np.__file__))
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "scipy_openblas32" not in lib.filepath and (
                lib.filepath.startswith(np_dir) and "torch" not in lib.filepath):
            lib.set_num_threads(threads)
    _numpy_blas_note = f"NumPy's BLAS limited to {threads} threads (threadpoolctl)"


# =============================================================================================
# the agreement check
# =============================================================================================


@dataclass
class Agreement:
    """The outcome of comparing one implementation's outputs with another's.

    ``errors`` holds one error per checked quantity (``y``, each gradient, the norm
    vectors); ``failed`` the quantities beyond ``tolerance`` that nothing explains, and
    ``excused`` those beyond it that the float64 reference explains as float32 rounding
    at ReLU kinks (:func:`kink_explained`).
    """

    ok: bool
    max_err: float
    worst: str
    tolerance: float
    checked: int
    errors: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    excused: dict[str, str] = field(default_factory=dict)
    against: str = "gradchain"

    def summary(self) -> str:
        if not self.ok:
            return f"DISAGREE {self.max_err:.1e} ({', '.join(self.failed[:3])})"
        s = f"ok {self.max_err:.1e}"
        if self.excused:
            s += f", {len(self.excused)} excused by f64 ref*"
        return s


def _rel_to_max(got: np.ndarray, ref: np.ndarray) -> float:
    """``max|got - ref| / max|ref|`` (absolute when ref is all zero); inf on shape mismatch
    or non-finite values."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    diff = float(np.max(np.abs(got - ref)))
    if not math.isfinite(diff):
        return math.inf
    scale = float(np.max(np.abs(ref)))
    return diff / scale if scale > 0 else diff


def _rel_elementwise(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest ``|got - ref| / |ref|`` over entries (for norm vectors spanning decades)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    m = float(np.max(err))
    return m if math.isfinite(m) else math.inf


def tolerance_for(dtype: str) -> float:
    """float32: 1e-3 relative; float64: 1e-9."""
    return 1e-3 if dtype == "float32" else 1e-9


def agreement_errors(ref: Outputs, got: Outputs, workload: Workload) -> dict[str, float]:
    """One error per quantity: ``y`` and every parameter gradient of ``ref`` relative to
    the largest magnitude of ``ref``'s tensor; the activation, weight and (RNN) timestep
    gradient norms (where both compute them) entry by entry. Skipped: the biases of linear layers
    followed by batch norm (their gradient is exactly 0 in exact arithmetic, so only
    rounding noise would be compared)."""
    errors: dict[str, float] = {"y": _rel_to_max(got.y, ref.y)}
    skip: set[str] = set()
    if isinstance(workload, MLPWorkload) and workload.norm == "batch":
        skip = {f"layers.{i}.bias" for i in range(workload.depth)}
    for name, g in ref.grads.items():
        if name in skip:
            continue
        errors[name] = _rel_to_max(got.grads[name], g) if name in got.grads else math.inf
    for label, r, p in (("activation_grad_norms", ref.activation_grad_norms,
                         got.activation_grad_norms),
                        ("weight_grad_norms", ref.weight_grad_norms, got.weight_grad_norms),
                        ("timestep_grad_norms", ref.timestep_grad_norms,
                         got.timestep_grad_norms)):
        if r is not None and p is not None:
            errors[label] = _rel_elementwise(p, r)
    return errors


def _agreement(errors: dict[str, float], tol: float, excuse: Callable[[str, float], str | None],
               against: str) -> Agreement:
    failed: list[str] = []
    excused: dict[str, str] = {}
    for q, e in errors.items():
        if e <= tol:
            continue
        why = excuse(q, e)
        if why is None:
            failed.append(q)
        else:
            excused[q] = why
    failed.sort(key=lambda q: -errors[q])
    worst = max(errors, key=lambda k: errors[k])
    return Agreement(ok=not failed, max_err=errors[worst], worst=worst, tolerance=tol,
                     checked=len(errors), errors=errors, failed=failed, excused=excused,
                     against=against)


def check_agreement(ref: Outputs, got: Outputs, workload: Workload,
                    tolerance: float | None = None) -> Agreement:
    """Compare a peer's outputs with gradchain's directly (no float64 arbitration)."""
    tol = tolerance_for(workload.dtype) if tolerance is None else tolerance
    return _agreement(agreement_errors(ref, got, workload), tol, lambda q, e: None, "gradchain")


KINKED_ACTIVATIONS = frozenset({"relu", "leaky_relu", "hardtanh", "selu", "elu"})
KINK_RANK = 8  # rank-one terms a gradient's departure from float64 may consist of (<= B/8)
KINK_MAX_ERR = 0.1  # and never more than this (relative to the largest magnitude)


def _residual_after_low_rank(d: np.ndarray, k: int) -> np.ndarray:
    """``d`` minus its projection on its (approximate) top-``k`` left singular subspace:
    a randomized range finder with ``k`` columns and three power iterations."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(d @ rng.standard_normal((d.shape[1], min(k, min(d.shape)))))
    for _ in range(3):
        q, _ = np.linalg.qr(d @ (d.T @ q))
    return d - q @ (q.T @ d)


def kink_explained(got: Outputs, truth: Outputs, name: str, errors: Mapping[str, float],
                   tol: float, rank: int = KINK_RANK) -> bool:
    """Whether ``got``'s departure from the float64 result in gradient ``name`` looks like
    float32 rounding at ReLU kinks rather than a bug.

    A ReLU input that is ~1e-7 in float64 can round to the other side in float32: that
    element's derivative flips, which changes one sample's contribution to each upstream
    weight gradient, a rank-one term (and spreads through batch norm's batch coupling). So
    a weight gradient is explained when it is within ``tol`` after removing at most ``rank``
    rank-one terms from its difference; a bias or norm-parameter gradient when the
    weight gradient of its layer agrees or is explained. Never beyond ``KINK_MAX_ERR``.
    """
    err = errors.get(name, math.inf)
    if not err <= KINK_MAX_ERR or name not in got.grads or name not in truth.grads:
        return False
    parts = name.split(".")
    g, t = got.grads[name], truth.grads[name]
    if parts[0] == "layers" and parts[-1] == "weight" and t.ndim == 2:
        scale = float(np.max(np.abs(t)))
        d = np.asarray(g, dtype=np.float64) - np.asarray(t, dtype=np.float64)
        rest = float(np.max(np.abs(_residual_after_low_rank(d, rank))))
        return rest <= tol * scale
    if len(parts) == 3 and parts[1].isdigit():
        partner = f"layers.{parts[1]}.weight"
        return errors.get(partner, math.inf) <= tol or kink_explained(
            got, truth, partner, errors, tol, rank)
    return False


def arbitrate(gc_out: Outputs, peer_outs: Mapping[str, Outputs], workload: Workload,
              truth: Outputs | None = None,
              tolerance: float | None = None) -> dict[str, Agreement]:
    """Check every peer against gradchain, and gradchain against the float64 reference.

    ``truth``: the NumPy reference run in float64 on the same (float32) weights and data.
    Without it this is :func:`check_agreement` for each peer. With it (float32 workloads),
    gradchain's own row (key ``"gradchain"``) compares it with ``truth``, and a quantity
    where two implementations differ beyond the tolerance is excused when the activation has
    a kink and every side that is also beyond the tolerance from ``truth`` there is
    :func:`kink_explained`: float32 rounding at ReLU kinks, which any float32
    implementation meets now and then in a deep or wide ReLU network (each one at other
    elements). Smooth activations (tanh, ...) excuse nothing.
    """
    tol = tolerance_for(workload.dtype) if tolerance is None else tolerance
    if truth is None:
        return {n: check_agreement(gc_out, o, workload, tol) for n, o in peer_outs.items()}
    all_outs = {"gradchain": gc_out, **peer_outs}
    dev = {n: agreement_errors(truth, o, workload) for n, o in all_outs.items()}
    kinks = getattr(workload, "activation", None) in KINKED_ACTIVATIONS
    memo: dict[tuple[str, str], bool] = {}

    # a weight gradient has rank <= B: allow few rank-one terms against it
    rank = min(KINK_RANK, max(1, int(getattr(workload, "batch", 8)) // 8))

    def explained(side: str, q: str) -> bool:
        if (side, q) not in memo:
            memo[side, q] = kinks and kink_explained(all_outs[side], truth, q, dev[side], tol,
                                                     rank)
        return memo[side, q]

    def excuser(sides: list[str]) -> Callable[[str, float], str | None]:
        def excuse(q: str, e: float) -> str | None:
            off = [s for s in sides if dev[s].get(q, math.inf) > tol]
            if not all(explained(s, q) for s in off):
                return None
            vs = ", ".join(f"{s} {dev[s].get(q, math.inf):.1e}" for s in sides)
            return f"{e:.1e}; from the float64 reference: {vs}"
        return excuse

    out = {n: _agreement(agreement_errors(gc_out, o, workload), tol,
                         excuser(["gradchain", n]), "gradchain")
           for n, o in peer_outs.items()}
    out["gradchain"] = _agreement(dev["gradchain"], tol, excuser(["gradchain"]),
                                  "float64 reference")
    return out


# =============================================================================================
# machine
# =============================================================================================


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception as e:  # a broken install is worth recording, not crashing on
        return f"import failed: {e}"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


NOISY_CORES = 0.2  # other processes' average CPU use above which a row is flagged


class CpuMeter:
    """CPU time used by *other* processes while this one times: system-wide busy time
    (/proc/stat) minus this process's own, in cores on average. On a shared 2-core machine
    it says how far a row's numbers can be trusted (0 = the machine was ours)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / hz  # user nice system irq softirq
        return time.perf_counter(), busy, v[7] / hz, time.process_time()

    def stop(self) -> dict[str, float] | None:
        end = self._read()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        if wall <= 0:
            return None
        own = end[3] - self._start[3]
        other = (end[1] - self._start[1]) - own
        return {"other_processes_cores": round(max(0.0, other) / wall, 3),
                "steal_cores": round((end[2] - self._start[2]) / wall, 3)}


def _core_build_time() -> str | None:
    try:
        from . import _core

        mtime = os.path.getmtime(str(_core.__file__))
    except (ImportError, OSError, AttributeError):
        return None
    return _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """CPU, cores, gradchain's ISA / threads / OpenBLAS core, library versions, date."""
    import gradchain as gc

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gradchain": gc.__version__,
        "gradchain_commit": _git_commit(),
        "gradchain_core_built": _core_build_time(),
        "gradchain_isa": gc.get_isa(),
        "gradchain_threads": gc.get_num_threads(),
        "openblas_core": str(gc._core.blas_corename()),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "jax": _version("jax"),
        "env_unset": [v for v in os.environ.get(_UNSET_MARK, "").split(",") if v],
        "env_still_set": [v for v in _OPENBLAS_ENV if v in os.environ],
        "loadavg_start": _loadavg(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def gemm_ceiling(dtype: Any = np.float32, sizes: Sequence[int] = (2048, 4096),
                 repeats: int = 3) -> dict[str, float]:
    """NumPy matmul GFLOP/s at each size (best of ``repeats`` after one warm-up call), and
    ``best``: the machine's GEMM ceiling as this benchmark reports it."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype=dtype)
        np.matmul(a, b, out=c)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[str(n)] = 2.0 * n**3 / best / 1e9
        del a, b, c
    out["best"] = max(out.values())
    return out


# =============================================================================================
# timing
# =============================================================================================


def wait_idle(quiet_s: float = 0.005, max_cpu_frac: float = 0.1, timeout_s: float = 0.5) -> float:
    """Sleep until this process's threads are idle: until a ``quiet_s`` sleep costs less than
    ``max_cpu_frac`` of it in process CPU time (all threads), at most ``timeout_s``.

    Thread pools spin after their work: NumPy's OpenBLAS for about 0.1 s, OpenMP runtimes
    (gradchain, PyTorch) for 10-20 ms. On a 2-core machine a spinning pool halves the
    next peer's speed, so each timed iteration starts from an idle process. Returns the
    time waited."""
    t0 = time.perf_counter()
    c = time.process_time()
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(quiet_s)
        c2 = time.process_time()
        if c2 - c < max_cpu_frac * quiet_s:
            break
        c = c2
    return time.perf_counter() - t0


def _stats(times: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "min_s": float(t.min()), "iqr_s": float(q3 - q1),
            "mean_s": float(t.mean())}


def _peer_names(peers: Sequence[str] | None) -> list[str]:
    names = list(PEERS) if peers is None else list(peers)
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return ["gradchain"] + [p for p in dict.fromkeys(names) if p != "gradchain"]


def _resolve_workloads(workloads: Sequence[str | Workload] | None, quick: bool) -> list[Workload]:
    table = QUICK if quick else WORKLOADS
    if workloads is None:
        return list(table.values())
    out: list[Workload] = []
    for w in workloads:
        if isinstance(w, str):
            if w not in table:
                raise ValueError(f"unknown workload {w!r}; known: {list(table)}")
            out.append(table[w])
        else:
            out.append(w)
    return out


def run(
    workloads: Sequence[str | Workload] | None = None,
    peers: Sequence[str] | None = None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    settle: float = 0.0,
    ceiling: bool = True,
    panel_ab: int = 0,
    report_ab: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return the results (JSON-ready).

    ``workloads``: names (of :data:`WORKLOADS`, or of :data:`QUICK` with ``quick=True``) or
    workload objects; None for all. ``peers``: names of :data:`PEERS` (gradchain is always
    added, first). ``threads``: for gradchain, PyTorch and NumPy's BLAS (default
    ``gc.get_num_threads()``). ``settle``: seconds to sleep before each timed iteration;
    0 (default) waits until the process is idle instead (:func:`wait_idle`: the thread
    pools of the peer timed before stop spinning). ``ceiling=False`` skips the GEMM
    ceiling measurement. ``panel_ab=N``: after the timings, N rounds of gradchain with its
    panel GEMM on and off, on the same model; ``report_ab=N``: N rounds with and without
    the report, on the same model (:func:`_ab`).
    """
    import gradchain as gc

    say = log or (lambda s: None)
    if repeats < 1 or warmup < 0 or panel_ab < 0 or report_ab < 0:
        raise ValueError("repeats must be >= 1, warmup, panel_ab and report_ab >= 0")
    threads = gc.get_num_threads() if threads is None else int(threads)
    gc.set_num_threads(threads)
    _limit_numpy_blas(threads)
    wls = _resolve_workloads(workloads, quick)
    names = _peer_names(peers)

    results: dict[str, Any] = {
        "machine": machine_info(),
        "config": {"repeats": repeats, "warmup": warmup, "threads": threads, "quick": quick,
                   "seed": seed, "settle_s": settle, "peers": names,
                   "numpy_blas": _numpy_blas_note,
                   "jax_threads": ("1 (XLA_FLAGS)" if threads == 1 else
                                   "XLA's own pool (all cores)")},
        "ceiling": {},
        "workloads": [],
    }
    dtypes = ["float32"] + (["float64"] if any(w.dtype == "float64" for w in wls) else [])

    def measure_ceiling(when: str) -> None:
        for dt in dtypes:
            say(f"measuring the {'s' if dt == 'float32' else 'd'}gemm ceiling ({when}: NumPy "
                f"{dt} matmul at 2048 and 4096)...")
            wait_idle()
            meter = CpuMeter()
            c = gemm_ceiling(np.dtype(dt))
            c_all = results["ceiling"].setdefault(dt, {"runs": []})
            c_all["runs"].append({"when": when, **c, "machine_load": meter.stop()})
            # the ceiling is what the machine can do: the best of the runs, per size
            for k in c:
                c_all[k] = max(r[k] for r in c_all["runs"])

    if ceiling:
        measure_ceiling("start")

    all_ok = True
    for w in wls:
        say(f"{w.name}: {w.describe()}")
        res = _run_workload(w, names, repeats, warmup, threads, seed, settle, say, panel_ab,
                            report_ab)
        all_ok &= all(r["status"] in ("ok", "skipped", "reference")
                      for r in res["peers"].values())
        results["workloads"].append(res)
    if ceiling:
        measure_ceiling("end")  # a busy moment at the start must not lower the ceiling
    for res in results["workloads"]:
        ceil = results["ceiling"].get(res["config"]["dtype"], {}).get("best")
        for r in res["peers"].values():
            if "gflops" in r and ceil:
                r["fraction_of_ceiling"] = r["gflops"] / ceil
        res["ceiling_gflops"] = ceil
        res["gradchain_fraction_of_ceiling"] = res["peers"]["gradchain"].get(
            "fraction_of_ceiling")
    results["ok"] = bool(all_ok)
    results["machine"]["loadavg_end"] = _loadavg()
    return results


def _run_workload(w: Workload, names: list[str], repeats: int, warmup: int, threads: int,
                  seed: int, settle: float, say: Callable[[str], None],
                  panel_ab: int = 0, report_ab: int = 0) -> dict[str, Any]:
    flops = w.flops()
    out: dict[str, Any] = {"name": w.name, "kind": w.kind, "description": w.describe(),
                           "config": w.config(), "flops": flops, "peers": {}}
    case = CASE_MAKERS[w.kind](w, seed, threads)
    builders = BUILDERS[w.kind]
    instances: dict[str, PeerInstance] = {}
    rows: dict[str, dict[str, Any]] = out["peers"]
    for name in names:
        info = PEERS[name]
        row: dict[str, Any] = {"label": info.label}
        rows[name] = row
        missing = info.missing()
        if missing:
            row.update(status="skipped", note=f"not installed: {', '.join(missing)}")
            continue
        if name not in builders:
            row.update(status="skipped", note=f"no {w.kind} implementation")
            continue
        try:
            t0 = time.perf_counter()
            inst = builders[name](case)
            inst.step()  # first call: compiles (JAX), allocates
            row["first_call_s"] = time.perf_counter() - t0
            instances[name] = inst
        except Exception as e:  # a peer that fails is reported, not fatal
            row.update(status="error", note=f"{type(e).__name__}: {e}")
            if name == "gradchain":
                raise
    # ---- the agreement check (before any timing)
    ref = instances["gradchain"].outputs()
    outs: dict[str, Outputs] = {}
    for name, inst in list(instances.items()):
        if name == "gradchain":
            continue
        try:
            outs[name] = inst.outputs()
        except Exception as e:
            rows[name].update(status="error", note=f"outputs: {type(e).__name__}: {e}")
            del instances[name]
    truth = None
    if w.dtype == "float32" and w.kind in REFERENCES:
        truth = REFERENCES[w.kind](case, np.float64)
    del case  # each peer holds its own copy
    agreements = arbitrate(ref, outs, w, truth=truth)
    del truth, outs, ref
    rows["gradchain"]["status"] = "reference"
    for name, agr in agreements.items():
        row = rows[name]
        row["agreement"] = asdict(agr)
        if name != "gradchain":
            row["status"] = "ok" if agr.ok else "disagree"
        elif not agr.ok:
            row["status"] = "disagree"
        if not agr.ok:
            bad = ", ".join(f"{q} {agr.errors[q]:.2e}" for q in agr.failed[:5])
            who = ("gradchain DISAGREES with the float64 reference" if name == "gradchain"
                   else f"{PEERS[name].label} DISAGREES with gradchain")
            msg = (f"!!! {w.name}: {who}: max rel err {agr.max_err:.3e} > tol "
                   f"{agr.tolerance:g}; {len(agr.failed)} quantities fail, worst: {bad} "
                   "-- timed anyway, row marked DISAGREE")
            print(msg, file=sys.stderr)
            row["note"] = msg

    order = list(instances)
    times: dict[str, list[float]] = {n: [] for n in order}
    for n in order:
        for _ in range(max(0, warmup - 1)):  # the first call above counts as one warm-up
            instances[n].step()
    _pygc.collect()
    gc_was_enabled = _pygc.isenabled()
    _pygc.disable()
    rng = np.random.default_rng(seed)
    meter = CpuMeter()
    try:
        for _ in range(repeats):
            for i in rng.permutation(len(order)):  # each peer follows each other one alike
                n = order[i]
                if settle > 0:
                    time.sleep(settle)
                else:
                    wait_idle()
                t0 = time.perf_counter()
                instances[n].step()
                times[n].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            _pygc.enable()
    out["machine_load"] = meter.stop()

    t_gc = _stats(times["gradchain"])["median_s"]
    for n in order:
        st = _stats(times[n])
        rows[n].update(st)
        rows[n]["times_s"] = times[n]
        rows[n]["gflops"] = flops / st["median_s"] / 1e9
        rows[n]["ratio"] = st["median_s"] / t_gc
    if "gradchain-grads" in times:  # the report's price: round r of one against round r
        paired = np.array(times["gradchain"]) / np.array(times["gradchain-grads"])
        out["report_overhead"] = {
            "paired_median": float(np.median(paired) - 1.0),
            "of_medians": float(rows["gradchain"]["median_s"]
                                / rows["gradchain-grads"]["median_s"] - 1.0)}
    if panel_ab > 0:  # OpenBLAS time / panel time
        out["panel_speedup"] = _ab(instances["gradchain"], "panel", panel_ab)
    if report_ab > 0:  # with the report / gradients only, minus 1
        ab = _ab(instances["gradchain"], "report", report_ab)
        out["report_overhead_one_model"] = {
            "paired_median": 1.0 / ab["paired_median"] - 1.0,
            "iqr": [1.0 / ab["iqr"][1] - 1.0, 1.0 / ab["iqr"][0] - 1.0], "rounds": report_ab}
    say("  " + ", ".join(f"{n} {rows[n]['median_s'] * 1e3:.2f} ms" for n in order))
    instances.clear()
    _pygc.collect()
    return out


def _ab(inst: _Gradchain, flag: str, rounds: int) -> dict[str, Any]:
    """Time gradchain's own model with ``inst.<flag>`` (``"panel"``: its panel GEMM;
    ``"report"``: the report) False and True, alternating which goes first, on one model
    instance (two instances of the same model can differ by several per cent on their
    own, e.g. by where their memory landed): per round the ratio time(False) /
    time(True), its median and quartiles. The flag is left True."""
    ratios = []
    for r in range(rounds):
        t: dict[bool, float] = {}
        for on in ((True, False) if r % 2 else (False, True)):
            setattr(inst, flag, on)
            wait_idle()
            t0 = time.perf_counter()
            inst.step()
            t[on] = time.perf_counter() - t0
        ratios.append(t[False] / t[True])
    setattr(inst, flag, True)
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"paired_median": float(np.median(ratios)), "iqr": [float(q1), float(q3)],
            "rounds": rounds, "ratios": [float(x) for x in ratios]}


# =============================================================================================
# peak memory (each workload x peer in its own process)
# =============================================================================================


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_child(workload: str, peer: str, quick: bool, threads: int, iters: int,
                  seed: int) -> int:
    """Run in a fresh process: import, set up, run ``iters`` iterations; print one JSON
    line with the RSS after imports, the peak RSS of the set-up and the peak RSS while
    iterating (the kernel's high-water mark, reset through /proc/self/clear_refs after
    the set-up; where that fails the iteration peak includes the set-up)."""
    import gradchain as gc

    gc.set_num_threads(threads)
    w = (QUICK if quick else WORKLOADS)[workload]
    if peer.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
    elif peer == "jax":
        import jax.numpy as jnp

        jnp.zeros(1).block_until_ready()
    baseline = _rss_kib("VmRSS")
    case = CASE_MAKERS[w.kind](w, seed, threads)
    inst = BUILDERS[w.kind][peer](case)
    del case
    inst.step()
    _pygc.collect()
    setup_peak = _rss_kib("VmHWM")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak-RSS high-water mark to the current RSS
        reset = True
    except OSError:
        pass
    for _ in range(iters):
        inst.step()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"baseline_kib": baseline, "setup_peak_kib": setup_peak,
                      "peak_iter_kib": peak, "hwm_reset": reset}))
    return 0


def measure_memory(workloads: Sequence[str], peers: Sequence[str], *, quick: bool,
                   threads: int, iters: int = 3, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Peak RSS of each (workload, peer), each in a fresh ``python -m gradchain.bench``
    process (Linux: read from /proc/self/status).

    Per row: ``peak_iter_mib`` (highest RSS while iterating: the model, its gradients,
    the library and the working memory), ``over_baseline_mib`` (that minus the RSS right
    after importing the peer's library) and ``process_peak_mib`` (the peak of the whole
    process, set-up included: the set-up holds gradchain's model and a copy of its weights
    while it builds the peer).
    """
    say = log or (lambda s: None)
    rows: list[dict[str, Any]] = []
    table = QUICK if quick else WORKLOADS
    for wname in workloads:
        w = table[wname]
        for peer in _peer_names(peers):
            row: dict[str, Any] = {"workload": wname, "peer": peer}
            rows.append(row)
            if PEERS[peer].missing() or peer not in BUILDERS.get(w.kind, {}):
                row["status"] = "skipped"
                continue
            cmd = [sys.executable, "-m", "gradchain.bench", "--_memory-child", wname, peer,
                   "--threads", str(threads), "--memory-iters", str(iters),
                   "--seed", str(seed)] + (["--quick"] if quick else [])
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = p.stdout.strip().splitlines()
            if p.returncode != 0 or not lines:
                row["status"] = "error"
                row["note"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                continue
            d = json.loads(lines[-1])
            if d["peak_iter_kib"] is None:
                row["status"] = "error"
                row["note"] = "no /proc/self/status VmHWM on this system"
                continue
            row["status"] = "ok"
            row["peak_iter_mib"] = d["peak_iter_kib"] / 1024
            row["over_baseline_mib"] = (d["peak_iter_kib"] - (d["baseline_kib"] or 0)) / 1024
            row["process_peak_mib"] = max(d["peak_iter_kib"], d["setup_peak_kib"] or 0) / 1024
            row["hwm_reset"] = d["hwm_reset"]
            say(f"  memory {wname} / {peer}: peak {row['peak_iter_mib']:.0f} MiB")
    return rows


# =============================================================================================
# output
# =============================================================================================


def _fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The results as a readable plain-text table."""
    m = results["machine"]
    cfg = results["config"]
    load = (f"; load average {m['loadavg_start'][0]:.2f} at start"
            if m.get("loadavg_start") else "")
    if m.get("loadavg_end"):
        load += f", {m['loadavg_end'][0]:.2f} at end"
    timing = (f", repeats {cfg['repeats']} (round-robin), warm-up {cfg['warmup']}"
              if "repeats" in cfg else "")
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; gradchain {m['gradchain']} "
        f"(commit {m.get('gradchain_commit') or '?'}, core built "
        f"{m.get('gradchain_core_built') or '?'}) isa {m['gradchain_isa']}, OpenBLAS core "
        f"{m['openblas_core']}; numpy {m['numpy']}, torch {m['torch'] or '-'}, "
        f"jax {m['jax'] or '-'}; {m['date']}",
        f"threads {cfg['threads']}{timing}" + (", QUICK workloads" if cfg["quick"] else "")
        + load
        + (f"; unset for this run: {', '.join(m['env_unset'])}" if m["env_unset"] else "")
        + (f"; STILL SET: {', '.join(m['env_still_set'])}" if m["env_still_set"] else ""),
    ]
    for dt, c in results.get("ceiling", {}).items():
        kind = "sgemm" if dt == "float32" else "dgemm"
        runs = "; ".join(
            f"{r['when']} " + ", ".join(f"{k}: {v:.1f}" for k, v in r.items()
                                        if k.isdigit())
            for r in c.get("runs", []))
        lines.append(f"{kind} ceiling (NumPy {dt} matmul, GFLOP/s, best of {runs}) -> "
                     f"{c['best']:.1f}")
    head = (f"  {'peer':<27} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'GFLOP/s':>8} "
            f"{'%ceil':>6} {'peer/gc':>8}  check")
    for wr in results["workloads"]:
        if "peers" not in wr:  # --memory-only
            continue
        lines += ["", f"{wr['name']}: {wr['description']}; {wr['flops'] / 1e9:.3g} GFLOP/iter"]
        ml = wr.get("machine_load")
        if ml:
            noisy = ml["other_processes_cores"] + ml["steal_cores"] > NOISY_CORES
            lines.append(f"  while timing, other processes used {ml['other_processes_cores']:.2f} "
                         f"of {m['cores']} cores on average (steal {ml['steal_cores']:.2f})"
                         + (": NOISY, rerun on a quiet machine" if noisy else ""))
        lines.append(head)
        notes: list[str] = []
        for row in wr["peers"].values():
            label = row["label"]
            status = row["status"]
            if status in ("skipped", "error"):
                lines.append(f"  {label:<27} {status}: {row.get('note', '')}")
                continue
            agr = Agreement(**row["agreement"]) if "agreement" in row else None
            if agr is None:
                check = "reference"
            elif agr.against == "gradchain":
                check = agr.summary()
            else:
                check = "vs f64 ref: " + agr.summary()
            if agr is not None and agr.excused:
                items = list(agr.excused.items())
                notes += [f"  * {label}: {q}: {why}" for q, why in items[:3]]
                if len(items) > 3:
                    notes.append(f"  * {label}: ... and {len(items) - 3} more")
            frac = row.get("fraction_of_ceiling")
            lines.append(
                f"  {label:<27} {_fmt_ms(row['median_s']):>10} {_fmt_ms(row['min_s']):>9} "
                f"{_fmt_ms(row['iqr_s']):>8} {row['gflops']:>8.1f} "
                f"{'-' if frac is None else f'{100 * frac:.0f}%':>6} {row['ratio']:>8.2f}  "
                f"{check}")
        over = wr.get("report_overhead")
        if over:
            lines.append(f"  the report costs {100 * over['paired_median']:+.1f}% over "
                         "gradchain's gradients alone (median of the per-round ratios; "
                         f"ratio of the medians {100 * over['of_medians']:+.1f}%)")
        ro = wr.get("report_overhead_one_model")
        if ro:
            lines.append(f"  the report costs {100 * ro['paired_median']:+.1f}% measured on one "
                         f"model ({ro['rounds']} rounds alternating with and without it; IQR "
                         f"{100 * ro['iqr'][0]:+.1f}% to {100 * ro['iqr'][1]:+.1f}%)")
        sp = wr.get("panel_speedup")
        if sp:
            lines.append(f"  gradchain's panel GEMM: {sp['paired_median']:.3f}x the speed of "
                         f"OpenBLAS for the same products (one model, {sp['rounds']} rounds "
                         "alternating the two, median of the per-round ratios; IQR "
                         f"{sp['iqr'][0]:.3f}-{sp['iqr'][1]:.3f})")
        if notes:
            lines.append("  * beyond tolerance but explained by the float64 reference as "
                         "float32 rounding at ReLU kinks:")
            lines += notes
    mem = results.get("memory")
    if mem:
        lines += ["", "peak memory (each in its own process; MiB)",
                  f"  {'workload':<16} {'peer':<16} {'while iterating':>16} "
                  f"{'over imports':>13} {'process peak':>13}"]
        for row in mem:
            if row["status"] != "ok":
                lines.append(f"  {row['workload']:<16} {row['peer']:<16} {row['status']}")
                continue
            lines.append(f"  {row['workload']:<16} {row['peer']:<16} "
                         f"{row['peak_iter_mib']:>16.0f} {row['over_baseline_mib']:>13.0f} "
                         f"{row['process_peak_mib']:>13.0f}")
    if not results.get("ok", True):
        lines += ["", "!!! SOME PEERS DISAGREE WITH GRADCHAIN OR FAILED: see the rows above"]
    return "\n".join(lines)


# =============================================================================================
# command line
# =============================================================================================


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradchain bench",
        description="Time gradchain against PyTorch, JAX and NumPy on the standard workloads "
                    "(forward + backward + gradient report), side by side in one run.")
    p.add_argument("--workloads", "-w", nargs="*", metavar="NAME",
                   help=f"workloads (default all): {', '.join(WORKLOADS)}")
    p.add_argument("--peers", "-p", nargs="*", metavar="NAME",
                   help=f"peers (default all installed): {', '.join(PEERS)}")
    p.add_argument("--repeats", "-r", type=int, default=20,
                   help="timed iterations per peer (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="threads for gradchain, PyTorch and NumPy (default: gradchain's)")
    p.add_argument("--quick", action="store_true",
                   help="scaled-down workloads (MLP: widths/4, depth/8, batch/4; RNN: T/8, "
                        "batch/4, sizes/4): a smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                   help="sleep this long before each timed iteration (default: wait until "
                        "the other peers' thread pools stop spinning)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the GEMM ceiling")
    p.add_argument("--report-ab", type=int, default=0, metavar="ROUNDS",
                   help="also time gradchain with and without its report, alternating on one "
                        "model for ROUNDS rounds (the report's cost)")
    p.add_argument("--panel-ab", type=int, default=0, metavar="ROUNDS",
                   help="also time gradchain with its panel GEMM on and off, alternating on "
                        "one model for ROUNDS rounds (its gain over OpenBLAS)")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of each workload x peer in a subprocess")
    p.add_argument("--memory-only", action="store_true",
                   help="only the peak-memory measurement (no timing)")
    p.add_argument("--memory-iters", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="write all results and machine info here")
    p.add_argument("--list", action="store_true", help="list workloads and peers, then exit")
    p.add_argument("--_memory-child", nargs=2, metavar=("WORKLOAD", "PEER"),
                   help=argparse.SUPPRESS)
    return p


def _reexec_without_openblas_env(argv: list[str]) -> None:
    bad = [v for v in _OPENBLAS_ENV if v in os.environ]
    if not bad:
        return
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_ENV}
    prev = [v for v in os.environ.get(_UNSET_MARK, "").split(",") if v]
    env[_UNSET_MARK] = ",".join(dict.fromkeys(prev + bad))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gradchain.bench", *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    """``gradchain bench``: returns 0, or 1 when a peer disagrees with gradchain or fails."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    _reexec_without_openblas_env(args_list)
    args = _parser().parse_args(args_list)
    threads = args.threads
    if threads is not None and threads < 1:
        print("--threads must be >= 1", file=sys.stderr)
        return 2

    if args._memory_child:
        import gradchain as gc

        t = gc.get_num_threads() if threads is None else threads
        return _memory_child(args._memory_child[0], args._memory_child[1], args.quick, t,
                             args.memory_iters, args.seed)

    if args.list:
        table = QUICK if args.quick else WORKLOADS
        for w in table.values():
            print(f"{w.name:<18} {w.describe()}; {w.flops() / 1e9:.3g} GFLOP/iter")
        for p in PEERS.values():
            miss = p.missing()
            print(f"{p.name:<18} {p.label}" + (f" (not installed: {miss})" if miss else ""))
        return 0

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    results: dict[str, Any]
    try:
        if args.memory_only:
            import gradchain as gc

            t = gc.get_num_threads() if threads is None else threads
            results = {"machine": machine_info(),
                       "config": {"threads": t, "quick": args.quick, "seed": args.seed,
                                  "peers": _peer_names(_split(args.peers))},
                       "workloads": [{"name": w.name} for w in
                                     _resolve_workloads(_split(args.workloads), args.quick)],
                       "ok": True}
        else:
            results = run(_split(args.workloads), _split(args.peers), args.repeats,
                          args.warmup, threads, quick=args.quick, seed=args.seed,
                          settle=args.settle, ceiling=not args.no_ceiling,
                          panel_ab=args.panel_ab, report_ab=args.report_ab, log=log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.memory or args.memory_only:
        log("measuring peak memory (one subprocess per workload x peer)...")
        results["memory"] = measure_memory(
            [w["name"] for w in results["workloads"]], results["config"]["peers"],
            quick=args.quick, threads=results["config"]["threads"], iters=args.memory_iters,
            seed=args.seed, log=log)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=_json_default)
            f.write("\n")
        log(f"wrote {args.json}")
    return 0 if results["ok"] else 1


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
