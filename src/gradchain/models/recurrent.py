"""What the recurrent models share: :class:`_Recurrent`, the base of :class:`~gradchain.RNN`
and the gated cells (:class:`~gradchain.LSTM`, :class:`~gradchain.GRU`), not registered
itself.

The validation of ``x`` (shape, dtype, ``batch_first``, the BLAS's row limit, the pass's
memory), of a backward's ``grad_hs`` / ``grad_ys`` and of a sequence loss's target; the
layout (``tensor_shapes`` with ``G`` gate blocks: 1 for the RNN), the initialisation
(``reset_parameters``), the config reading, and the model protocol's data, loss and label
hooks. Each kind keeps its constructor, passes and report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .. import _core
from .. import init as _init
from .._memory import BLAS_INT_MAX
from .._validate import (
    as_array,
    check_bool,
    contiguous,
    float_array,
    positive_int,
    shape_str,
)
from ..losses import check_target
from .base import (
    ConfigReader,
    DataSet,
    Model,
    ReportAxis,
    _check_seed,
    locked,
)
from .base import _require as require

__all__: list[str] = []

ON: tuple[str, ...] = ("last", "all")
"""Where a recurrent model's loss applies (``on=``): the last step, or every step."""


class _Recurrent(Model):
    """The shared part of the recurrent models (see the module's docstring)."""

    #: gate blocks stacked in weight_ih_l0 / weight_hh_l0 (1: the vanilla RNN)
    _GATES_N: ClassVar[int] = 1
    #: the core's bound on input_size, hidden_size and output_size
    _MAX_SIZE: ClassVar[int] = 1 << 24
    #: per-step state outputs of a forward pass (hs; the LSTM's cs too)
    _STATE_OUTPUTS: ClassVar[int] = 1

    input_size: int
    hidden_size: int
    output_size: int | None
    batch_first: bool
    _outputs: np.ndarray | None
    _input_grad: np.ndarray | None
    _h0_grad: np.ndarray | None

    # ------------------------------------------------------------ construction
    @classmethod
    def _check_sizes(cls, input_size: Any, hidden_size: Any, output_size: Any
                     ) -> tuple[int, int, int]:
        """``(I, H, K)`` checked (K = 0 without a readout); refuses what cannot be allocated."""
        I_ = positive_int(input_size, "input_size")
        H = positive_int(hidden_size, "hidden_size")
        K = 0 if output_size is None else positive_int(output_size, "output_size")
        for name, v in (("input_size", I_), ("hidden_size", H), ("output_size", K)):
            if v > cls._MAX_SIZE:
                raise MemoryError(f"{name}: {v} cannot be allocated")
        if cls._GATES_N * H * (H + I_) + H * K > 1 << 34:
            raise MemoryError(f"hidden_size: an {cls.__name__} of size {H} cannot be "
                              "allocated")
        return I_, H, K

    @staticmethod
    def _check_flags(bias: Any, batch_first: Any) -> None:
        for name, v in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")

    @locked
    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw every parameter again: ``torch_default`` is ``U(+-1/sqrt(H))`` on every
        tensor (as ``torch.nn.RNN`` / ``LSTM`` / ``GRU``); any other scheme draws each gate
        block (``(H, H)`` of ``weight_hh_l0``, ``(H, I)`` of ``weight_ih_l0``) on its own."""
        rng = np.random.default_rng(_check_seed(seed))
        H, I_, G = self.hidden_size, self.input_size, self._GATES_N
        p = self._params
        bound = 1.0 / math.sqrt(H)

        def draw(scheme: _init.Init, cols: int) -> np.ndarray:
            if scheme.name == "torch_default":
                return rng.uniform(-bound, bound, size=(G * H, cols))
            return np.concatenate([scheme.weight(rng, (H, cols), self.activation)
                                   for _ in range(G)])

        p["weight_ih_l0"][...] = draw(self.input_init, I_)
        p["weight_hh_l0"][...] = draw(self.init, H)
        if self.bias:
            for name, scheme in (("bias_ih_l0", self.input_init), ("bias_hh_l0", self.init)):
                if scheme.name == "torch_default":
                    p[name][...] = rng.uniform(-bound, bound, size=G * H)
                elif scheme.name == "normal" and name == "bias_hh_l0":
                    p[name][...] = rng.normal(0.0, scheme.params["sigma_b"], size=G * H)
                else:
                    p[name][...] = 0.0
            self._apply_forget_bias()
        if self.output_size:
            lin = _init.torch_default()
            p["readout.weight"][...] = lin.weight(rng, (self.output_size, H))
            if self.bias:
                p["readout.bias"][...] = lin.bias(rng, self.output_size, H)
        self._core.invalidate()

    def _apply_forget_bias(self) -> None:
        """LSTM: the forget gate's bias (nothing for the others)."""

    # ------------------------------------------------------------ validation
    def _time_major(self, a: np.ndarray, name: str = "x") -> np.ndarray:
        """`a` time-major and C-contiguous (a checked copy when it is not already)."""
        return contiguous(a.transpose(1, 0, 2) if self.batch_first else a, name)

    def _user_major(self, a: np.ndarray) -> np.ndarray:
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _check_x(self, x: Any) -> np.ndarray:
        """``x (T, B, I)`` (``(B, T, I)`` with ``batch_first``) checked, time-major and
        contiguous; refuses T*B rows past the BLAS's limit and a pass that cannot fit."""
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
        # the workspace (planned once per (T, B)), hs (and cs), the readout's ys, the copy
        H, K = self.hidden_size, self.output_size or 0
        n_out = H * self._STATE_OUTPUTS + K
        require(self._core.pass_bytes(T, B) + T * B * n_out * self.dtype.itemsize
                + (0 if tm.flags.c_contiguous else tm.nbytes),
                lambda: f"x: the forward pass over shape {shape_str(tm.shape)} (time-major) "
                        f"of {self._describe()}")
        return self._time_major(xa)

    def _check_seq_grads(self, grad_hs: Any, grad_ys: Any) -> tuple[Any, Any, int, int]:
        """A backward's ``grad_hs (T, B, H)`` / ``grad_ys (T, B, K)`` against the saved pass:
        ``(gh, gy, T, B)``, each time-major and contiguous or None."""
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
                raise ValueError(f"grad_ys: this {type(self).__name__} has no readout "
                                 "(output_size=None)")
            gy = self._time_major(float_array(grad_ys, "grad_ys", self.dtype,
                                              (*lead, self.output_size), copy=False),
                                  "grad_ys")
        return gh, gy, T, B

    def _check_seq_target(self, target: Any, loss: str, on: str, T: int, B: int) -> np.ndarray:
        """A sequence loss's target for ``on`` (``"last"``: ``(B, F)``; ``"all"``:
        ``(T, B, F)``, ``(B, T, F)`` with ``batch_first``), time-major."""
        F = self.output_size or self.hidden_size
        if on == "last":
            t_shape: tuple[int, ...] = (B, F)
        else:
            t_shape = (B, T, F) if self.batch_first else (T, B, F)
        t = check_target(target, loss, self.dtype, t_shape)
        if on == "all" and self.batch_first:
            t = np.ascontiguousarray(np.swapaxes(t, 0, 1))
        return t

    # ------------------------------------------------------------ results
    @property
    def outputs(self) -> np.ndarray | None:
        """The readout outputs ``(T, B, K)`` of the last forward (None without a readout)."""
        return None if self._outputs is None else self._user_major(self._outputs)

    @property
    def input_grad(self) -> np.ndarray | None:
        """``dL/dx`` of the last backward (None before any)."""
        return self._input_grad

    @property
    def h0_grad(self) -> np.ndarray | None:
        """``dL/dh_0 (B, H)`` of the last backward."""
        return self._h0_grad

    def _config_base(self) -> dict[str, Any]:
        return {
            "kind": self.config_kind,
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

    # ------------------------------------------------------------ the model protocol
    config_keys = frozenset({"input_size", "hidden_size", "output_size", "input_init",
                             "batch_first"})
    report_axis = ReportAxis("timestep", "h", 1, "timestep_grad_norms",
                             "timestep t (||dL/dh_t||)", "||dL/dh_1||/||dL/dh_T||")

    @classmethod
    def _read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader,
                     n_members: int | None) -> dict[str, Any]:
        out, hi = cfg["output_size"], cls._MAX_SIZE
        return {
            "input_size": reader.integer(cfg["input_size"], "input_size", hi=hi),
            "hidden_size": reader.integer(cfg["hidden_size"], "hidden_size", hi=hi),
            "output_size": None if out is None else reader.integer(out, "output_size", hi=hi),
            "input_init": reader.init(cfg["input_init"], "input_init"),
            "batch_first": reader.flag(cfg["batch_first"], "batch_first"),
        }

    @classmethod
    def tensor_shapes(cls, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        H, I_, K = kwargs["hidden_size"], kwargs["input_size"], kwargs.get("output_size")
        GH = cls._GATES_N * H
        bias = kwargs.get("bias", True)
        out: dict[str, tuple[int, ...]] = {"weight_ih_l0": (GH, I_), "weight_hh_l0": (GH, H)}
        if bias:
            out["bias_ih_l0"] = (GH,)
            out["bias_hh_l0"] = (GH,)
        if K:
            out["readout.weight"] = (K, H)
            if bias:
                out["readout.bias"] = (K,)
        return out

    @classmethod
    def describe_config(cls, kwargs: Mapping[str, Any]) -> str:
        dt = np.dtype(kwargs.get("dtype", np.float32))
        return (f"{cls.__name__} with input_size={kwargs['input_size']}, "
                f"hidden_size={kwargs['hidden_size']}, "
                f"output_size={kwargs.get('output_size')} ({dt.name})")

    def check_data(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                   name: str = "data") -> DataSet:
        """``x (T, N, I)`` (``(N, T, I)`` with ``batch_first``); the target as
        :meth:`loss_and_grad` takes it for ``on``, with N samples."""
        dt = self.dtype
        bf = self.batch_first
        spec = ("N", "T", self.input_size) if bf else ("T", "N", self.input_size)
        xa = float_array(x, f"{name}[0]", dt, spec)
        bx = 0 if bf else 1
        n, T = xa.shape[bx], xa.shape[1 - bx]
        F = self.output_size or self.hidden_size
        if on == "last":
            t = check_target(target, loss, dt, (n, F), f"{name}[1]")
            return DataSet(xa, t, bx, 0, n)
        shape = (n, T, F) if bf else (T, n, F)
        t = check_target(target, loss, dt, shape, f"{name}[1]")
        return DataSet(xa, t, bx, bx, n)

    def loss_options(self, on: str = "last") -> dict[str, Any]:
        if on not in ON:
            raise ValueError(f"on: expected 'last' or 'all', got {on!r}")
        return {"on": on}

    def loss_outputs(self, x: Any, on: str = "last") -> np.ndarray:
        hs = self.forward(x)
        out = self.outputs if self.output_size else hs
        assert out is not None
        if on == "last":
            return np.asarray(out[:, -1] if self.batch_first else out[-1])
        return np.asarray(out)

    def grad_norm_labels(self, data: DataSet) -> list[str]:
        return self.report_axis.labels(data.x.shape[1 - data.x_axis])

    def weight_norm_labels(self) -> list[str]:
        return ["weight_ih_l0", "weight_hh_l0"] + (
            ["readout.weight"] if self.output_size else [])

    def report_weight_norms(self, report: Any) -> np.ndarray:
        w = [report.weight_ih_grad_norm, report.weight_hh_grad_norm]
        if self.output_size:
            w.append(report.readout_weight_grad_norm)
        return np.array(w, dtype=np.float64)

    def _describe(self) -> str:
        """``gc.RNN(input_size=..., hidden_size=..., ...)``, for messages."""
        return (f"gc.{type(self).__name__}(input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, output_size={self.output_size}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------ per-example gradients
    # what gc.clip_per_example reruns: the last backward's (grad_hs, grad_ys), time-major,
    # whether it accumulated, and its per-example norms (None until a backward)
    _last_grads: tuple[np.ndarray | None, np.ndarray | None] | None = None
    _last_accumulate = False
    _example_norms: np.ndarray | None = None
    #: gate blocks (1: the RNN; the gated cells set theirs)
    _GATES_N: ClassVar[int] = 1

    def _check_per_example(self, per_example: Any, report: bool = True) -> bool:
        pe = check_bool(per_example, "per_example")
        if pe and not report:
            raise ValueError("per_example: the per-example norms are part of the report; "
                             "per_example=True needs report=True")
        return pe

    def supports_per_example(self) -> bool:
        """Whether ``per_example=True`` applies now (always: the examples of a recurrent
        model's batch are independent)."""
        return True

    def _example_bytes(self, T: int, B: int) -> int:
        """The per-example pass's workspace (per_example_rnn.h: a slot per thread, the
        fused dW's block sums) and its results."""
        I_, H, K = self.input_size, self.hidden_size, self.output_size or 0
        G = self._GATES_N
        apart = int(getattr(self, "_CELL", 0) == 1)  # the GRU's W_hh side
        gram = T * T * (G * H * (1 + apart) + H + I_ + K) < T * (G * H * (I_ + H) + K * H)
        per = ((T + 1) ** 2 + (2 + (K > 0) + apart) * T * T) if gram else \
            max(G * H * I_, G * H * H, K * H)
        sums = min(B, 16) * G * H * (I_ + H)
        return int(_core.get_num_threads()) * (per * self.dtype.itemsize
                                               + 8 * max(G * H, K) * 8) + \
            sums * self.dtype.itemsize + (6 + 3 * T) * B * 8

    def _keep_grads(self, gh: np.ndarray | None, gy: np.ndarray | None, acc: bool,
                    sources: tuple[Any, Any] = (None, None)) -> None:
        """What gc.clip_per_example reruns: the backward's upstream gradients (time-major),
        validated from the caller's ``sources`` (None: the model's own;
        Model._kept_upstream)."""
        self._last_grads = (
            None if gh is None else self._kept_upstream("grad_hs", gh, sources[0]),
            None if gy is None else self._kept_upstream("grad_ys", gy, sources[1]))
        self._last_accumulate = acc
        self._example_norms = None

    def _pe_pass(self, gh: Any, gy: Any, report: bool, per_example: bool) -> Any:
        """One assigning backward from upstream gradients (time-major): fills the
        gradients and the input / state gradients; returns the report (None without)."""
        raise NotImplementedError

    @locked
    def _clip_per_example(self, max_norm: float) -> np.ndarray:
        """``gc.clip_per_example``: the last backward again with example i's upstream
        gradients (its column of ``grad_hs`` / ``grad_ys`` at every step) scaled by
        ``min(1, max_norm / (||grad l_i|| + 1e-6))`` (so are its ``dL/dz_t`` at every step:
        the chain is linear in them), the gradients assigned. Returns the norms before
        clipping (B,)."""
        self._check_clippable(self._last_grads is not None, self._last_accumulate)
        gh, gy = self._last_grads
        norms = self._example_norms
        if norms is None:  # the per-example norms of the last backward, once
            norms = self._pe_pass(gh, gy, True, True).per_example_grad_norms
        assert norms is not None
        with np.errstate(all="ignore"):
            coef = np.minimum(max_norm / (norms + 1e-6), 1.0).astype(self.dtype)[None, :, None]
        sh = None if gh is None else np.ascontiguousarray(gh * coef, dtype=self.dtype)
        sy = None if gy is None else np.ascontiguousarray(gy * coef, dtype=self.dtype)
        self._pe_pass(sh, sy, False, False)
        self._example_norms = None  # the stored gradients are now the clipped ones
        self._last_grads = None
        return np.array(norms, dtype=np.float64)
