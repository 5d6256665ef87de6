"""The vanilla recurrent chain: :class:`RNN` (``torch.nn.RNN``, one layer, with an
optional linear readout), with per-timestep gradient reports."""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np

from . import _core
from . import activations as _acts
from . import init as _init
from . import losses as _losses
from . import models as _models
from ._memory import BLAS_INT_MAX, require, rnn_bytes
from ._validate import (
    as_array,
    check_bool,
    contiguous,
    float_array,
    model_dtype,
    positive_int,
    shape_str,
)
from .models import (
    _Chain,
    _check_seed,
    _core_message,
    _custom_callback,
    check_target,
    locked,
)
from .report import RNNGradReport

__all__ = ["RNN"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)



class RNN(_Chain):
    """A one-layer vanilla RNN run by the C++ core (``torch.nn.RNN`` semantics)::

        h_t = act(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh),  t = 1..T
        y_t = h_t @ W_out.T + b_out            (optional readout, output_size=K)

    Shapes: ``x (T, B, I)`` (``(B, T, I)`` with ``batch_first=True``), ``h0 (B, H)``,
    hidden states ``hs (T, B, H)``, readout outputs ``(T, B, K)``.

    Parameters
    ----------
    input_size, hidden_size : int
    activation : str or Activation
        Any built-in activation (tanh by default; relu for the IRNN), or
        ``gc.Activation.custom(f, df)``: the slow path, one NumPy call per timestep on
        ``z_t (B, H)`` (the GIL is taken and the time loop runs on one thread).
    init : str or gc.init.Init
        Scheme for ``W_hh``: ``"orthogonal"``, ``"identity"`` (IRNN),
        ``gc.init.normal(sigma_w, sigma_b)`` (mean-field; ``b_hh ~ N(0, sigma_b^2)``),
        ``"torch_default"`` (default: what ``torch.nn.RNN`` does, ``U(+-1/sqrt(H))`` on
        every parameter), xavier/kaiming/lecun.
    input_init : str or gc.init.Init
        Scheme for ``W_ih`` (default ``"xavier_uniform"``).
    bias : bool
    output_size : int or None
        Adds a linear readout ``readout.weight (K, H)``, ``readout.bias (K,)``
        (initialised as ``torch.nn.Linear``).
    dtype : np.float32 or np.float64
    seed : int or None
    batch_first : bool
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        activation: str | _acts.Activation = "tanh",
        init: str | _init.Init = "torch_default",
        input_init: str | _init.Init = "xavier_uniform",
        bias: bool = True,
        output_size: int | None = None,
        dtype: Any = np.float32,
        seed: int | None = None,
        batch_first: bool = False,
    ) -> None:
        I_ = positive_int(input_size, "input_size")
        H = positive_int(hidden_size, "hidden_size")
        K = 0 if output_size is None else positive_int(output_size, "output_size")
        for name, v in (("input_size", I_), ("hidden_size", H), ("output_size", K)):
            if v > 1 << 24:
                raise MemoryError(f"{name}: {v} cannot be allocated")
        if H * H + H * I_ + H * K > 1 << 34:
            raise MemoryError(f"hidden_size: an RNN of size {H} cannot be allocated")
        act = _acts.resolve(activation)
        scheme = _init.resolve(init)
        in_scheme = _init.resolve(input_init)
        for name, v in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
        dt = model_dtype(dtype)
        seed_ = _check_seed(seed)
        cls = _core.RnnChainF32 if dt == np.float32 else _core.RnnChainF64
        aid, p0, p1 = act._core_spec(_core.ACTIVATION_IDS)
        # parameters and gradients, zero-filled at once, then the initialisation's
        # temporaries: refuse what cannot fit
        require(rnn_bytes(I_, H, K, bool(bias), dt.itemsize, scheme.name, in_scheme.name),
                lambda: f"gc.RNN(input_size={I_}, hidden_size={H}, output_size={K or None}, "
                        f"dtype={dt.name}, init={scheme.name!r}): its parameters, gradients "
                        "and initialisation")
        try:
            self._core = cls(I_, H, K, aid, p0, p1, bool(bias))
        except MemoryError as e:  # the core names the buffer and the bytes
            raise MemoryError(
                f"hidden_size: the parameters of an RNN with input_size={I_}, hidden_size={H}"
                f", output_size={K or None} ({dt.name}) cannot be allocated "
                f"({_core_message(e)})") from None
        if act.is_custom:
            self._core.set_custom_activation(_custom_callback(act))
        self.input_size, self.hidden_size, self.output_size = I_, H, (K or None)
        self.activation = act
        self.init = scheme
        self.input_init = in_scheme
        self.bias = bool(bias)
        self.dtype = dt
        self.seed = seed_
        self.batch_first = bool(batch_first)
        self._input_grad: np.ndarray | None = None
        self._h0_grad: np.ndarray | None = None
        self._outputs: np.ndarray | None = None
        self._bind_views()
        self.reset_parameters(seed_)

    @locked
    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw every parameter again from the init schemes."""
        rng = np.random.default_rng(_check_seed(seed))
        H, I_ = self.hidden_size, self.input_size
        p = self._params
        # torch.nn.RNN draws every parameter from U(+-1/sqrt(H)), whatever its fan-in
        torch_bound = 1.0 / math.sqrt(H)

        def draw(scheme: _init.Init, shape: tuple[int, int]) -> np.ndarray:
            if scheme.name == "torch_default":
                return rng.uniform(-torch_bound, torch_bound, size=shape)
            return scheme.weight(rng, shape, self.activation)

        p["weight_ih_l0"][...] = draw(self.input_init, (H, I_))
        p["weight_hh_l0"][...] = draw(self.init, (H, H))
        if self.bias:
            for name, scheme in (("bias_ih_l0", self.input_init), ("bias_hh_l0", self.init)):
                if scheme.name == "torch_default":
                    p[name][...] = rng.uniform(-torch_bound, torch_bound, size=H)
                elif scheme.name == "normal" and name == "bias_hh_l0":
                    p[name][...] = rng.normal(0.0, scheme.params["sigma_b"], size=H)
                else:
                    p[name][...] = 0.0
        if self.output_size:
            lin = _init.torch_default()
            p["readout.weight"][...] = lin.weight(rng, (self.output_size, H))
            if self.bias:
                p["readout.bias"][...] = lin.bias(rng, self.output_size, H)
        self._core.invalidate()

    # ------------------------------------------------------------------ compute
    def _time_major(self, a: np.ndarray, name: str = "x") -> np.ndarray:
        """`a` time-major and C-contiguous (a checked copy when it is not already)."""
        return contiguous(a.transpose(1, 0, 2) if self.batch_first else a, name)

    def _user_major(self, a: np.ndarray) -> np.ndarray:
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _check_x(self, x: Any) -> np.ndarray:
        a = as_array(x, "x")
        lead = ("B", "T") if self.batch_first else ("T", "B")
        want = f"({lead[0]}, {lead[1]}, {self.input_size})"
        if a.ndim != 3 or a.shape[2] != self.input_size:
            raise ValueError(f"x: expected shape {want}, got {shape_str(a.shape)}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"x: expected shape {want} with {lead[0]}, {lead[1]} >= 1, "
                             f"got {shape_str(a.shape)}")
        xa = float_array(a, "x", self.dtype, (None, None, self.input_size), copy=False)
        tm = xa.transpose(1, 0, 2) if self.batch_first else xa
        T, B = tm.shape[0], tm.shape[1]
        if T * B > BLAS_INT_MAX:  # the merged GEMMs run over all T*B rows
            raise ValueError(f"x: T*B = {T}*{B} = {T * B} rows exceed the BLAS's 32-bit "
                             f"limit (2**31-1 = {BLAS_INT_MAX})")
        # the workspace (planned once per (T, B)), hs, the readout's ys, the copy of x
        H, K = self.hidden_size, self.output_size or 0
        require(self._core.pass_bytes(T, B) + T * B * (H + K) * self.dtype.itemsize
                + (0 if tm.flags.c_contiguous else tm.nbytes),
                lambda: f"x: the forward pass over shape {shape_str(tm.shape)} (time-major) "
                        f"of {self._describe()}")
        return self._time_major(xa)

    @locked
    @_models.tracks_forward
    def forward(self, x: Any, h0: Any = None) -> np.ndarray:
        """``x (T, B, I) -> hs (T, B, H)`` (batch-first layouts with ``batch_first``).

        ``h0 (B, H)`` defaults to zeros. With a readout, its outputs ``(T, B, K)`` are
        in :attr:`outputs` afterwards. Keeps what ``backward`` needs.
        """
        xa = self._check_x(x)
        B = xa.shape[1]
        h0a = None if h0 is None else float_array(h0, "h0", self.dtype, (B, self.hidden_size))
        hs, ys = self._core_forward(xa, h0a)
        self._outputs = ys
        return self._user_major(hs)

    @_models.tracks_forward
    def _core_forward(self, xa: np.ndarray, h0a: np.ndarray | None) -> tuple[Any, Any]:
        try:
            return self._compute("forward", self._core.forward, xa, h0a)
        except MemoryError as e:
            if str(e) != "std::bad_alloc":  # a custom activation's own: let it through
                raise
            # the core's std::bad_alloc says only "std::bad_alloc"
            raise MemoryError(
                f"x: the forward pass over shape {shape_str(xa.shape)} (time-major) with "
                f"hidden_size={self.hidden_size} ({self.dtype.name}) cannot be allocated"
            ) from None

    __call__ = forward

    @property
    def outputs(self) -> np.ndarray | None:
        """The readout outputs ``(T, B, K)`` of the last forward (None without a readout)."""
        return None if self._outputs is None else self._user_major(self._outputs)

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ...,
                 report: Literal[True] = ...) -> RNNGradReport: ...

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ..., *,
                 report: Literal[False]) -> None: ...

    @locked
    def backward(self, grad_hs: Any = None, grad_ys: Any = None,
                 accumulate: bool = False, report: bool = True) -> RNNGradReport | None:
        """Backpropagation through time from ``grad_hs = dL/dh_t (T, B, H)`` and/or
        ``grad_ys = dL/dy_t (T, B, K)`` (the readout's); either may be None (zeros).

        Fills every parameter gradient (``accumulate=True`` adds), ``input_grad``
        ``dL/dx`` and ``h0_grad``; returns the :class:`RNNGradReport`. ``report=False``
        computes the gradients only (the report's sums of squares are skipped) and
        returns None. Ctrl-C stops a pass within a timestep, as :meth:`MLP.backward`
        describes.
        """
        if not self._core.has_forward:
            raise self._no_forward_error()
        T, B = self._core.forward_steps, self._core.forward_batch
        lead = (B, T) if self.batch_first else (T, B)
        if grad_hs is None and grad_ys is None:
            raise ValueError("backward: give grad_hs and/or grad_ys")
        gh = gy = None
        if grad_hs is not None:
            gh = self._time_major(float_array(grad_hs, "grad_hs", self.dtype,
                                              (*lead, self.hidden_size), copy=False),
                                  "grad_hs")
        if grad_ys is not None:
            if not self.output_size:
                raise ValueError("grad_ys: this RNN has no readout (output_size=None)")
            gy = self._time_major(float_array(grad_ys, "grad_ys", self.dtype,
                                              (*lead, self.output_size), copy=False),
                                  "grad_ys")
        want = check_bool(report, "report")
        require((T * B * self.input_size + B * self.hidden_size) * self.dtype.itemsize,
                lambda: f"backward: dL/dx and dL/dh0 of {self._describe()} over T={T}, "
                        f"B={B}")
        d, dx, dh0 = self._compute("backward", self._core.backward, gh, gy,
                                   check_bool(accumulate, "accumulate"), want)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        if not want:
            return None
        return RNNGradReport._from_core(d, dh0)

    @locked
    def loss_and_grad(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                      h0: Any = None, accumulate: bool = False) -> tuple[float, RNNGradReport]:
        """Forward, loss and BPTT in one call; returns ``(loss, report)``.

        The loss applies to the readout outputs when there is a readout, else to the
        hidden states. ``on="last"``: step T only (target ``(B, F)`` for mse, ``(B,)``
        class indices for cross_entropy); ``on="all"``: every step (``(T, B, F)`` /
        ``(T, B)``, batch-first layouts with ``batch_first``).
        """
        _losses.check_loss(loss)
        if on not in ("last", "all"):
            raise ValueError(f"on: expected 'last' or 'all', got {on!r}")
        xa = self._check_x(x)
        T, B = xa.shape[0], xa.shape[1]
        F = self.output_size or self.hidden_size
        if on == "last":
            t_shape: tuple[int, ...] = (B, F)
        else:
            t_shape = (B, T, F) if self.batch_first else (T, B, F)
        t = check_target(target, loss, self.dtype, t_shape)
        if on == "all" and self.batch_first:
            t = np.ascontiguousarray(np.swapaxes(t, 0, 1))
        h0a = None if h0 is None else float_array(h0, "h0", self.dtype, (B, self.hidden_size))
        acc = check_bool(accumulate, "accumulate")
        hs, ys = self._core_forward(xa, h0a)
        self._outputs = ys
        outputs = ys if self.output_size else hs
        # the loss's float64 temporaries and dL/d(outputs), then dL/dx and dL/dh0
        require(6 * outputs.size * 8 + (T * B * self.input_size + B * self.hidden_size)
                * self.dtype.itemsize,
                lambda: f"x: the loss and backward pass over T={T}, B={B} of "
                        f"{self._describe()}")
        with np.errstate(all="ignore"):  # an overflowed forward gives a NaN loss, not a warning
            value, g = _losses.sequence_value_and_grad(outputs, t, loss, on)
        g = np.ascontiguousarray(g, dtype=self.dtype)
        if self.output_size:
            d, dx, dh0 = self._compute("backward", self._core.backward, None, g, acc)
        else:
            d, dx, dh0 = self._compute("backward", self._core.backward, g, None, acc)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        rep = RNNGradReport._from_core(d, dh0)
        rep.loss = float(value)
        return float(value), rep

    @property
    def input_grad(self) -> np.ndarray | None:
        """``dL/dx`` of the last backward (None before any)."""
        return self._input_grad

    @property
    def h0_grad(self) -> np.ndarray | None:
        """``dL/dh_0 (B, H)`` of the last backward."""
        return self._h0_grad

    def _ctor_args(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "activation": self.activation, "init": self.init,
                "input_init": self.input_init, "bias": self.bias,
                "output_size": self.output_size, "dtype": self.dtype,
                "batch_first": self.batch_first}

    def _rebuild(self, kwargs: dict[str, Any]) -> None:
        RNN.__init__(self, **kwargs)

    def config(self) -> dict[str, Any]:
        return {
            "kind": "RNN",
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
            "activation": self.activation.to_config(),
            "init": self.init.to_config(),
            "input_init": self.input_init.to_config(),
            "bias": self.bias,
            "dtype": self.dtype.name,
            "batch_first": self.batch_first,
        }

    def _describe(self) -> str:
        """``gc.RNN(input_size=..., hidden_size=..., ...)``, for messages."""
        return (f"gc.RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"output_size={self.output_size}, dtype={self.dtype.name})")

    def __repr__(self) -> str:
        ro = f", output_size={self.output_size}" if self.output_size else ""
        return (f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}{ro}, "
                f"activation={self.activation!r}, init={self.init!r}, dtype={self.dtype.name})")
