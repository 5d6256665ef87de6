"""The PyTorch peers: eager ``torch.nn`` + autograd, with the report (``retain_grad``) and
without it (gradients only); MLP and RNN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from ...activations import SPECS
from ..cases import Case, Outputs
from ..workloads import LSTMWorkload, MLPWorkload, RNNWorkload


class _TorchMLP:
    """``torch.nn`` modules + autograd, as a PyTorch user would write the chain.

    ``report=True``: ``x.requires_grad`` and ``retain_grad()`` on every hidden activation,
    then ``||dL/da_l||`` and ``||dL/dW_l||`` each iteration (``Tensor.norm``, in the
    model's dtype). ``report=False``: parameter gradients only.
    """

    def __init__(self, case: Case, report: bool) -> None:
        import torch
        from torch import nn

        w = cast(MLPWorkload, case.workload)
        torch.set_num_threads(case.threads)
        tdt = torch.float32 if w.dtype == "float32" else torch.float64
        sizes = w.sizes
        L = w.depth
        flags = case.extra["residual_flags"]
        alpha = w.residual_scale
        # the activation table's torch twin, with PyTorch's default parameters
        act: Callable[[Any], Any] = SPECS[w.activation].torch_call(torch.nn.functional)

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

        w = cast(RNNWorkload, case.workload)
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


class _TorchGated:
    """PyTorch eager on ``torch.nn.LSTM`` / ``torch.nn.GRU``'s parameters (gradchain's
    state dict loads as is).

    ``report=False``: the fused module itself (``torch.nn.LSTM`` / ``GRU``, oneDNN on the
    CPU), ``hs.backward(grad_hs)``, parameter gradients only. ``report=True``: the cells
    unrolled by hand on the same parameters, as a PyTorch user has to (the fused module
    keeps its ``h_t`` and ``c_t`` internal): the input projection of all steps in one
    matmul, ``unbind``, then per step one ``addmm`` and the gate arithmetic of
    ``torch.nn.LSTMCell`` / ``GRUCell``, with ``retain_grad()`` on every ``h_t`` (and
    ``c_t``); after ``backward``, ``||h_t.grad||`` for every t (one batched norm), the
    LSTM's ``||c_t.grad||`` likewise, and ``||dW_ih||``, ``||dW_hh||``.
    """

    def __init__(self, case: Case, report: bool) -> None:
        import torch
        from torch import nn

        w = cast(LSTMWorkload, case.workload)
        torch.set_num_threads(case.threads)
        tdt = torch.float32 if w.dtype == "float32" else torch.float64
        self.torch = torch
        self.lstm = w.cell_state
        cls = nn.LSTM if self.lstm else nn.GRU
        self.mod: Any = cls(w.input_size, w.hidden_size, batch_first=False).to(tdt)
        self.mod.load_state_dict({k: torch.from_numpy(np.array(v))
                                  for k, v in case.state.items()})
        self.report = report
        self.x = torch.from_numpy(case.x.copy())
        self.ghs = torch.from_numpy(case.grad_y.copy())
        self._hs: Any = None
        self._t_norms: Any = None
        self._c_norms: Any = None
        self._w_norms: Any = None

    def step(self) -> None:
        torch = self.torch
        mod = self.mod
        mod.zero_grad(set_to_none=True)
        if not self.report:
            hs, _ = mod(self.x)
            hs.backward(self.ghs)
            self._hs = hs
            return
        T, B = self.x.shape[0], self.x.shape[1]
        w_ih, w_hh = mod.weight_ih_l0, mod.weight_hh_l0
        H = w_hh.shape[1]
        w_hh_t = w_hh.t()
        h = torch.zeros(B, H, dtype=self.x.dtype)
        keep_h: list[Any] = []
        keep_c: list[Any] = []
        if self.lstm:
            xws = torch.nn.functional.linear(self.x, w_ih,
                                             mod.bias_ih_l0 + mod.bias_hh_l0).unbind(0)
            c = torch.zeros(B, H, dtype=self.x.dtype)
            for t in range(T):
                z = torch.addmm(xws[t], h, w_hh_t)
                i, f, g, o = z.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                c.retain_grad()
                h.retain_grad()
                keep_c.append(c)
                keep_h.append(h)
        else:
            xws = torch.nn.functional.linear(self.x, w_ih, mod.bias_ih_l0).unbind(0)
            b_hh = mod.bias_hh_l0
            for t in range(T):
                a_r, a_z, a_n = xws[t].chunk(3, 1)
                b_r, b_z, b_n = torch.addmm(b_hh, h, w_hh_t).chunk(3, 1)
                r = torch.sigmoid(a_r + b_r)
                zg = torch.sigmoid(a_z + b_z)
                n = torch.tanh(a_n + r * b_n)
                h = (1 - zg) * n + zg * h
                h.retain_grad()
                keep_h.append(h)
        hs = torch.stack(keep_h)
        hs.backward(self.ghs)
        self._t_norms = torch.linalg.vector_norm(torch.stack([v.grad for v in keep_h]),
                                                 dim=(1, 2))
        if self.lstm:
            self._c_norms = torch.linalg.vector_norm(torch.stack([v.grad for v in keep_c]),
                                                     dim=(1, 2))
        self._w_norms = torch.stack([w_ih.grad.norm(), w_hh.grad.norm()])
        self._hs = hs

    def outputs(self) -> Outputs:
        grads = {k: p.grad.detach().numpy().copy() for k, p in self.mod.named_parameters()}
        out = Outputs(y=self._hs.detach().numpy().copy(), grads=grads)
        if self.report:
            out.timestep_grad_norms = self._t_norms.detach().numpy().astype(np.float64)
            out.weight_grad_norms = self._w_norms.detach().numpy().astype(np.float64)
        return out


def get_threads() -> int:
    """PyTorch's intra-op thread count (``torch.get_num_threads``)."""
    import torch

    return int(torch.get_num_threads())


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` (only when it differs)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
