"""The JAX peers: one ``jax.jit`` function per workload (the RNN through ``jax.lax.scan``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from ..cases import _RNN_PARAMS, Case, Outputs
from ..workloads import LSTMWorkload, MLPWorkload, RNNWorkload


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

        w = cast(MLPWorkload, case.workload)
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


class _JaxRNN:
    """One ``jax.jit`` function: the forward recurrence as ``jax.lax.scan`` over time (input
    projection of all steps in one matmul first), ``jax.vjp`` with the fixed ``grad_hs``,
    and the norms. The total ``dL/dh_t`` come from a zero "probe" added to each ``h_t``
    inside the scan: the probes' cotangents are the total derivatives (the backward scan
    carries them), so ``||dL/dh_t||`` for all t is one reduction."""

    def __init__(self, case: Case) -> None:
        jax = _import_jax(case.threads)
        import jax.numpy as jnp

        w = cast(RNNWorkload, case.workload)
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


class _JaxGated:
    """One ``jax.jit`` function for an LSTM / GRU workload: the input projection of all
    steps in one matmul, the recurrence as ``jax.lax.scan``, ``jax.vjp`` with the fixed
    ``grad_hs``, and the norms. The total ``dL/dh_t`` (and the LSTM's ``dL/dc_t``) come
    from zero "probes" added to each ``h_t`` (``c_t``) inside the scan, as for the RNN."""

    def __init__(self, case: Case) -> None:
        jax = _import_jax(case.threads)
        import jax.numpy as jnp

        w = cast(LSTMWorkload, case.workload)
        if w.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        B, H = case.x.shape[1], case.grad_y.shape[2]
        lstm = w.cell_state

        def forward(p: Any, x: Any, probes: Any) -> Any:
            w_hh_t = p["weight_hh_l0"].T
            if lstm:
                xw = x @ p["weight_ih_l0"].T + (p["bias_ih_l0"] + p["bias_hh_l0"])

                def cell(carry: Any, inp: Any) -> tuple[Any, Any]:
                    h, c = carry
                    xw_t, ph, pc = inp
                    i, f, g, o = jnp.split(xw_t + h @ w_hh_t, 4, axis=1)
                    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g) + pc
                    h = jax.nn.sigmoid(o) * jnp.tanh(c) + ph
                    return (h, c), h

                init = (jnp.zeros((B, H), x.dtype), jnp.zeros((B, H), x.dtype))
                _, hs = jax.lax.scan(cell, init, (xw, probes[0], probes[1]))
                return hs
            xw = x @ p["weight_ih_l0"].T + p["bias_ih_l0"]

            def gcell(h: Any, inp: Any) -> tuple[Any, Any]:
                xw_t, ph = inp
                a_r, a_z, a_n = jnp.split(xw_t, 3, axis=1)
                b_r, b_z, b_n = jnp.split(h @ w_hh_t + p["bias_hh_l0"], 3, axis=1)
                r = jax.nn.sigmoid(a_r + b_r)
                z = jax.nn.sigmoid(a_z + b_z)
                n = jnp.tanh(a_n + r * b_n)
                h = (1 - z) * n + z * h + ph
                return h, h

            _, hs = jax.lax.scan(gcell, jnp.zeros((B, H), x.dtype), (xw, probes[0]))
            return hs

        def step(p: Any, x: Any, ghs: Any) -> Any:
            probes = (jnp.zeros_like(ghs), jnp.zeros_like(ghs))
            hs, vjp = jax.vjp(lambda p_, pr: forward(p_, x, pr), p, probes)
            gp, gprobes = vjp(ghs)
            t_norms = jnp.sqrt(jnp.sum(jnp.square(gprobes[0]), axis=(1, 2)))
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
