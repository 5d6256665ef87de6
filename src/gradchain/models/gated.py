"""The gated recurrent chains: :class:`LSTM` (``torch.nn.LSTM``) and :class:`GRU`
(``torch.nn.GRU``), one layer with an optional linear readout, run by the C++ core
(``GatedChainF32`` / ``GatedChainF64``), with per-timestep gradient reports
(:class:`~gradchain.GatedGradReport`: ``||dL/dh_t||``, the LSTM's ``||dL/dc_t||``, every
gate's mean value and saturated fraction per step, per-gate weight-gradient norms); their
place in the model protocol and their lab (:class:`GatedLab`: the adding problem, sweeps
and ``gradchain probe --model lstm``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, overload

import numpy as np

from .. import _core
from .. import activations as _acts
from .. import init as _init
from .. import losses as _losses
from .._memory import gated_bytes
from .._validate import (
    check_bool,
    float_array,
    model_dtype,
    shape_str,
)
from ..report import GatedGradReport
from .base import (
    ConfigReader,
    Model,
    _check_seed,
    _core_message,
    locked,
    register,
    tracks_forward,
)
from .base import _require as require
from .recurrent import ON, _Recurrent
from .rnn import RNNLab

__all__ = ["GRU", "LSTM", "GatedLab"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


_GATED_DEFAULTS: dict[str, Any] = {
    "init": "torch_default", "input_init": "torch_default", "sigma_w": None, "sigma_b": None,
    "hidden_size": 64, "input_size": 8, "output_size": None, "steps": 100, "batch": 32,
    "on": "last", "bias": True, "dtype": "float32", "loss": "mse",
}

_MAX_SIZE = 1 << 22  # the core's bound on input_size, hidden_size and output_size


class GatedLab(RNNLab):
    """An LSTM or GRU in the lab: the RNN's sweep options less the activation (``init``
    and ``input_init`` per gate block), its probe batch and training data (the adding
    problem) and ``gradchain probe``'s ``--steps`` / ``--hidden``."""

    sweep_defaults = _GATED_DEFAULTS

    def resolve(self, cfg: dict[str, Any], where: str) -> None:
        for k in ("hidden_size", "input_size", "output_size"):
            if cfg[k] is not None and cfg[k] > _MAX_SIZE:
                raise MemoryError(f"{k}: {cfg[k]} cannot be allocated (in {where})")

    def build(self, cfg: Mapping[str, Any], init: Any, dtype: np.dtype, seed: int) -> Model:
        return self.model(cfg["input_size"], cfg["hidden_size"], init=init,
                          input_init=cfg["input_init"], bias=cfg["bias"],
                          output_size=cfg["output_size"], dtype=dtype, seed=seed)

    def run_bytes(self, cfg: Mapping[str, Any], batch: int) -> int:
        s = np.dtype(cfg.get("dtype", "float32")).itemsize
        G = self.model._GATES_N
        I_, H, K, T = (cfg["input_size"], cfg["hidden_size"], cfg["output_size"] or 0,
                       cfg["steps"])
        n = G * H * (I_ + H + 2) + K * (H + 1)
        params = 2 * n * s + 5 * G * H * H * 8
        work = (T * batch * (3 * I_ + (3 * G + 8) * H + 2 * K) + 4 * batch * G * H) * s
        data = T * batch * (I_ + max(K, H)) * (8 + s)
        return params + work + data

    def probe_what(self, opts: Any, init: str) -> str:
        return (f"{self.model.__name__} + {init} W_hh, hidden {opts.hidden}, "
                f"T = {opts.steps}, batch {opts.batch}, {opts.dtype}")

    def probe_model(self, opts: Any, init: Any, dtype: Any) -> tuple[tuple[Any, ...],
                                                                    dict[str, Any]]:
        return ((2, opts.hidden), {"init": init, "output_size": 1, "dtype": dtype,
                                   "seed": opts.seed})


class _Gated(_Recurrent):
    """What :class:`LSTM` and :class:`GRU` share (not registered itself)."""

    #: the core's cell id (0: LSTM, 1: GRU), the gate blocks (torch's order)
    _CELL: ClassVar[int]
    GATES: ClassVar[tuple[str, ...]]
    _GATES_N: ClassVar[int]
    _MAX_SIZE = _MAX_SIZE

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        output_size: int | None = None,
        bias: bool = True,
        dtype: Any = np.float32,
        seed: int | None = None,
        init: str | _init.Init = "torch_default",
        input_init: str | _init.Init = "torch_default",
        batch_first: bool = False,
        forget_bias: float | None = None,
    ) -> None:
        I_, H, K = self._check_sizes(input_size, hidden_size, output_size)
        G = self._GATES_N
        scheme = _init.resolve(init)
        in_scheme = _init.resolve(input_init)
        self._check_flags(bias, batch_first)
        fb = self._check_forget_bias(forget_bias, bool(bias))
        dt = model_dtype(dtype)
        seed_ = _check_seed(seed)
        cls = _core.GatedChainF32 if dt == np.float32 else _core.GatedChainF64
        name = type(self).__name__
        require(gated_bytes(G, I_, H, K, bool(bias), dt.itemsize, scheme.name, in_scheme.name),
                lambda: f"gc.{name}(input_size={I_}, hidden_size={H}, output_size={K or None}"
                        f", dtype={dt.name}, init={scheme.name!r}): its parameters, "
                        "gradients and initialisation")
        try:
            self._core = cls(self._CELL, I_, H, K, bool(bias))
        except MemoryError as e:  # the core names the buffer and the bytes
            raise MemoryError(
                f"hidden_size: the parameters of an {name} with input_size={I_}, "
                f"hidden_size={H}, output_size={K or None} ({dt.name}) cannot be allocated "
                f"({_core_message(e)})") from None
        self.input_size, self.hidden_size, self.output_size = I_, H, (K or None)
        #: the candidate's nonlinearity (fixed: tanh, as torch's cells)
        self.activation = _acts.Activation("tanh")
        self.init = scheme
        self.input_init = in_scheme
        self.bias = bool(bias)
        self.dtype = dt
        self.seed = seed_
        self.batch_first = bool(batch_first)
        self.forget_bias = fb
        self._input_grad: np.ndarray | None = None
        self._h0_grad: np.ndarray | None = None
        self._c0_grad: np.ndarray | None = None
        self._outputs: np.ndarray | None = None
        self._cell_states: np.ndarray | None = None
        self._bind_views()
        self.reset_parameters(seed_)

    _LAST_PASS = ("_input_grad", "_h0_grad", "_c0_grad", "_outputs", "_cell_states")

    def _check_forget_bias(self, forget_bias: Any, bias: bool) -> float | None:
        if forget_bias is not None:
            raise TypeError(f"forget_bias: a {type(self).__name__} has no forget gate "
                            "(only gc.LSTM takes forget_bias)")
        return None

    # ------------------------------------------------------------------ compute
    def _check_states(self, B: int, h0: Any, c0: Any) -> tuple[Any, Any]:
        """h0 and c0, checked: (B, H) in the model's dtype, finite; c0 only for an LSTM."""
        if c0 is not None and self._CELL != 0:
            raise ValueError(f"c0: a {type(self).__name__} has no cell state (only gc.LSTM "
                             "takes c0); pass h0 alone")
        h0a = None if h0 is None else float_array(h0, "h0", self.dtype, (B, self.hidden_size))
        c0a = None if c0 is None else float_array(c0, "c0", self.dtype, (B, self.hidden_size))
        return h0a, c0a

    @locked
    @tracks_forward
    def forward(self, x: Any, h0: Any = None, c0: Any = None) -> np.ndarray:
        """``x (T, B, I) -> hs (T, B, H)`` (batch-first layouts with ``batch_first``).

        ``h0 (B, H)`` (and, LSTM, ``c0 (B, H)``) default to zeros. The LSTM's cell states
        are in :attr:`cell_states` afterwards, a readout's outputs ``(T, B, K)`` in
        :attr:`outputs`. Keeps what ``backward`` needs.
        """
        xa = self._check_x(x)
        h0a, c0a = self._check_states(xa.shape[1], h0, c0)
        hs, _ = self._core_forward(xa, h0a, c0a)
        self._last_grads = self._example_norms = None  # a new forward: nothing to clip again
        return self._user_major(hs)

    def _core_forward(self, xa: np.ndarray, h0a: Any, c0a: Any) -> tuple[Any, Any]:
        try:
            hs, cs, ys = self._compute("forward", self._core.forward, xa, h0a, c0a)
        except MemoryError as e:
            if str(e) != "std::bad_alloc":
                raise
            raise MemoryError(
                f"x: the forward pass over shape {shape_str(xa.shape)} (time-major) with "
                f"hidden_size={self.hidden_size} ({self.dtype.name}) cannot be allocated"
            ) from None
        self._outputs = ys
        self._cell_states = cs
        return hs, ys

    __call__ = forward

    @property
    def cell_states(self) -> np.ndarray | None:
        """LSTM: the cell states ``c_1..c_T`` ``(T, B, H)`` of the last forward (None for a
        GRU, or before any forward)."""
        return None if self._cell_states is None else self._user_major(self._cell_states)

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ...,
                 report: Literal[True] = ..., per_example: bool = ...) -> GatedGradReport: ...

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ..., *,
                 report: Literal[False], per_example: bool = ...) -> None: ...

    @locked
    def backward(self, grad_hs: Any = None, grad_ys: Any = None,
                 accumulate: bool = False, report: bool = True,
                 per_example: bool = False) -> GatedGradReport | None:
        """Backpropagation through time from ``grad_hs = dL/dh_t (T, B, H)`` and/or
        ``grad_ys = dL/dy_t (T, B, K)`` (the readout's); either may be None (zeros).

        Fills every parameter gradient (``accumulate=True`` adds), ``input_grad``,
        ``h0_grad`` (and, LSTM, ``c0_grad``); returns the
        :class:`~gradchain.GatedGradReport` (None with ``report=False``: gradients only).
        ``per_example=True`` (report=True only) also gives every example's own gradient
        norm ``||grad l_i||`` (``L = mean_i l_i``), per tensor and globally, its
        ``||dl_i/dh_t||`` per step and the gradient noise scale, as
        :meth:`gradchain.RNN.backward` (exact: ``per_example_rnn.h`` with G gate blocks).
        """
        gh, gy, T, B = self._check_seq_grads(grad_hs, grad_ys)
        want = check_bool(report, "report")
        acc = check_bool(accumulate, "accumulate")
        pe = self._check_per_example(per_example, want)
        return self._backward(gh, gy, acc, want, T, B, pe, sources=(grad_hs, grad_ys))

    def _backward(self, gh: Any, gy: Any, acc: bool, want: bool, T: int, B: int,
                  pe: bool = False, loss_stage: str | None = None,
                  sources: tuple[Any, Any] = (None, None)) -> GatedGradReport | None:
        """The core's backward from validated time-major upstream gradients; ``sources``:
        what the caller passed (None: the model's own, e.g. a loss's gradient)."""
        require((T * B * self.input_size + 2 * B * self.hidden_size) * self.dtype.itemsize
                + (self._example_bytes(T, B) if pe else 0),
                lambda: f"backward: dL/dx and dL/dh0 of {self._describe()} over T={T}, "
                        f"B={B}")
        d, dx, dh0, dc0 = self._compute("backward", self._core.backward, gh, gy, acc, want,
                                        pe)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        self._c0_grad = dc0
        self._keep_grads(gh, gy, acc, sources)
        if not want:
            self._nonfinite_origin = None
            return None
        rep = GatedGradReport._from_core(d, self.kind, self.GATES, dh0, dc0,
                                         loss_stage, self._tensor_names())
        if acc and rep.noise_scale is not None:
            rep.noise_scale = math.nan  # ||G|| would include the gradients accumulated before
        self._example_norms = rep.per_example_grad_norms
        self._nonfinite_origin = rep.nonfinite_origin
        return rep

    def _pe_pass(self, gh: Any, gy: Any, report: bool, per_example: bool
                 ) -> GatedGradReport | None:
        """One assigning backward from the kept upstream gradients (gc.clip_per_example)."""
        T, B = self._core.forward_steps, self._core.forward_batch
        keep = (self._last_grads, self._last_accumulate)
        rep = self._backward(gh, gy, False, report, T, B, per_example)
        self._last_grads, self._last_accumulate = keep
        return rep

    def _tensor_names(self) -> list[str]:
        return list(self.tensor_shapes({"input_size": self.input_size,
                                        "hidden_size": self.hidden_size,
                                        "output_size": self.output_size, "bias": self.bias}))

    @locked
    def loss_and_grad(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                      h0: Any = None, c0: Any = None, accumulate: bool = False,
                      per_example: bool = False) -> tuple[float, GatedGradReport]:
        """Forward, loss and BPTT in one call; returns ``(loss, report)``.

        The loss applies to the readout outputs when there is a readout, else to the
        hidden states; ``on="last"`` (target ``(B, F)`` for mse, ``(B,)`` for
        cross_entropy) or ``on="all"`` (``(T, B, F)`` / ``(T, B)``), as
        :meth:`gradchain.RNN.loss_and_grad`. ``per_example=True``: as :meth:`backward`'s
        (``l_i`` is example i's own loss, the convention of ``torch.func.vmap(grad)``).
        """
        _losses.check_loss(loss)
        if on not in ON:
            raise ValueError(f"on: expected 'last' or 'all', got {on!r}")
        xa = self._check_x(x)
        T, B = xa.shape[0], xa.shape[1]
        t = self._check_seq_target(target, loss, on, T, B)
        h0a, c0a = self._check_states(B, h0, c0)
        acc = check_bool(accumulate, "accumulate")
        pe = self._check_per_example(per_example)
        hs, ys = self._core_forward(xa, h0a, c0a)
        self._last_grads = self._example_norms = None
        outputs = ys if self.output_size else hs
        require(6 * outputs.size * 8, lambda: f"x: the loss over T={T}, B={B} of "
                                              f"{self._describe()}")
        with np.errstate(all="ignore"):
            value, g = _losses.sequence_value_and_grad(outputs, t, loss, on)
        g = np.ascontiguousarray(g, dtype=self.dtype)
        # where a NaN/Inf of the loss was born (the forward's own origin comes first)
        loss_stage = None if math.isfinite(value) else "loss"
        if loss_stage is None and not np.isfinite(g).all():
            loss_stage = "loss_gradient"
        if self.output_size:
            rep = self._backward(None, g, acc, True, T, B, pe, loss_stage)
        else:
            rep = self._backward(g, None, acc, True, T, B, pe, loss_stage)
        assert rep is not None
        rep.loss = float(value)
        return float(value), rep

    @property
    def c0_grad(self) -> np.ndarray | None:
        """LSTM: ``dL/dc_0 (B, H)`` of the last backward (None for a GRU)."""
        return self._c0_grad

    def _ctor_args(self) -> dict[str, Any]:
        out = {"input_size": self.input_size, "hidden_size": self.hidden_size,
               "init": self.init, "input_init": self.input_init, "bias": self.bias,
               "output_size": self.output_size, "dtype": self.dtype,
               "batch_first": self.batch_first}
        if self._CELL == 0:
            out["forget_bias"] = self.forget_bias
        return out

    def _rebuild(self, kwargs: dict[str, Any]) -> None:
        type(self).__init__(self, **kwargs)

    def config(self) -> dict[str, Any]:
        cfg = self._config_base()
        if self._CELL == 0:
            cfg["forget_bias"] = self.forget_bias
        return cfg

    # ------------------------------------------------------------ the model protocol

    @classmethod
    def read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader, activation: Any = None,
                    n_members: int | None = None) -> dict[str, Any]:
        kwargs = super().read_config(cfg, reader, None, n_members)
        act = kwargs.pop("activation")
        if activation is not None or act.name != "tanh" or act.params:
            raise reader.fail(f"config: a {cls.__name__}'s activation is tanh (fixed), got "
                              f"{reader.short(cfg['activation'])}"
                              + (" and an activation argument" if activation is not None
                                 else ""))
        return kwargs

    def __repr__(self) -> str:
        ro = f", output_size={self.output_size}" if self.output_size else ""
        return (f"{type(self).__name__}(input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}{ro}, init={self.init!r}, "
                f"dtype={self.dtype.name})")


@register
class LSTM(_Gated):
    """A one-layer LSTM run by the C++ core (``torch.nn.LSTM`` semantics and names)::

        z_t = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh     (B, 4H): blocks i, f, g, o
        i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
        c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)
        y_t = h_t @ W_out.T + b_out            (optional readout, output_size=K)

    Shapes: ``x (T, B, I)`` (``(B, T, I)`` with ``batch_first=True``), ``h0, c0 (B, H)``,
    ``hs (T, B, H)``; parameters ``weight_ih_l0 (4H, I)``, ``weight_hh_l0 (4H, H)``,
    ``bias_ih_l0``, ``bias_hh_l0 (4H,)`` (torch's layout: ``torch.nn.LSTM`` loads the
    state dict as it is).

    Parameters
    ----------
    input_size, hidden_size : int
    output_size : int or None
        Adds a linear readout ``readout.weight (K, H)``, ``readout.bias (K,)``.
    bias : bool
    dtype : np.float32 or np.float64
    seed : int or None
    init : str or gc.init.Init
        ``W_hh``'s scheme: ``"torch_default"`` (default: ``U(+-1/sqrt(H))`` on every
        parameter, as torch), ``"orthogonal"`` (each of the four ``(H, H)`` gate blocks
        orthogonal), or any other scheme of ``gc.init``, drawn per gate block.
    input_init : str or gc.init.Init
        ``W_ih``'s scheme (default ``"torch_default"``), per gate block.
    batch_first : bool
    forget_bias : float or None
        Sets the forget gate's bias: ``bias_ih_l0[H:2H] = forget_bias`` and
        ``bias_hh_l0[H:2H] = 0`` (1.0 as Jozefowicz et al. recommend); needs ``bias``.
    """

    kind = "lstm"
    config_kind = "LSTM"
    _CELL = 0
    GATES = ("i", "f", "g", "o")
    _GATES_N = 4
    _STATE_OUTPUTS = 2  # hs and cs
    config_keys = _Gated.config_keys | {"forget_bias"}
    lab = GatedLab()

    def _check_forget_bias(self, forget_bias: Any, bias: bool) -> float | None:
        if forget_bias is None:
            return None
        if isinstance(forget_bias, (bool, np.bool_)) or not isinstance(
                forget_bias, (int, float, np.integer, np.floating)):
            raise TypeError(f"forget_bias: expected a float or None, got "
                            f"{type(forget_bias).__name__}")
        v = float(forget_bias)
        if not math.isfinite(v):
            raise ValueError(f"forget_bias: expected a finite number, got {forget_bias!r}")
        if not bias:
            raise ValueError("forget_bias: the LSTM has no biases (bias=False)")
        return v

    def _apply_forget_bias(self) -> None:
        if self.forget_bias is not None:
            H = self.hidden_size
            self._params["bias_ih_l0"][H:2 * H] = self.forget_bias
            self._params["bias_hh_l0"][H:2 * H] = 0.0

    @classmethod
    def _read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader,
                     n_members: int | None) -> dict[str, Any]:
        out = super()._read_config(cfg, reader, n_members)
        fb = cfg["forget_bias"]
        out["forget_bias"] = None if fb is None else reader.number(fb, "forget_bias")
        return out


@register
class GRU(_Gated):
    """A one-layer GRU run by the C++ core (``torch.nn.GRU`` semantics and names)::

        a = x_t @ W_ih.T + b_ih,  b = h_{t-1} @ W_hh.T + b_hh     (B, 3H): blocks r, z, n
        r = sigmoid(a_r + b_r),  z = sigmoid(a_z + b_z),  n = tanh(a_n + r * b_n)
        h_t = (1 - z) * n + z * h_{t-1}
        y_t = h_t @ W_out.T + b_out            (optional readout, output_size=K)

    Shapes as :class:`LSTM` with three gate blocks (``weight_ih_l0 (3H, I)``, ...) and no
    cell state (``c0`` is refused). Parameters as :class:`LSTM`, without ``forget_bias``.
    """

    kind = "gru"
    config_kind = "GRU"
    _CELL = 1
    GATES = ("r", "z", "n")
    _GATES_N = 3
    lab = GatedLab()
