"""The vanilla recurrent chain: :class:`RNN` (``torch.nn.RNN``, one layer, with an
optional linear readout), with per-timestep gradient reports; its place in the model
protocol and its lab (:class:`RNNLab`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, overload

import numpy as np

from .. import _core
from .. import activations as _acts
from .. import init as _init
from .. import losses as _losses
from .._memory import BLAS_INT_MAX, rnn_bytes
from .._validate import (
    as_array,
    check_bool,
    float_array,
    model_dtype,
    positive_int,
    shape_str,
)
from ..linearize import ProbeReport, check_at, probe_vectors
from ..report import RNNGradReport
from .base import (
    Lab,
    Model,
    ProbeFlag,
    ProbeShapes,
    _check_seed,
    _core_message,
    _custom_callback,
    locked,
    register,
    tracks_forward,
)
from .base import (
    _require as require,
)
from .recurrent import ON, _Recurrent

__all__ = ["RNN", "RNNLab", "ON"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


# the batched probe's replicated pass: at most this many values (else chunks of probes)
_PROBE_VALUES = 1 << 26

_RNN_DEFAULTS: dict[str, Any] = {
    "activation": "tanh", "init": "torch_default", "input_init": "xavier_uniform",
    "sigma_w": None, "sigma_b": None, "hidden_size": 64, "input_size": 8, "output_size": None,
    "steps": 100, "batch": 32, "on": "last", "bias": True, "dtype": "float32", "loss": "mse",
}


class RNNLab(Lab):
    """The RNN in the lab: ``gc.sweep``'s RNN options (hidden_size, steps, on, ...), its
    probe batch ``x (steps, batch, input_size)`` and its training data (the adding
    problem), and ``gradchain probe``'s RNN flags."""

    sweep_defaults = _RNN_DEFAULTS
    train_data = ("adding",)
    # the adding problem has two inputs (value, marker) and one output
    data_implies = {"adding": {"input_size": 2, "output_size": 1}}
    probe_flags = (
        ProbeFlag("steps", 100, "RNN sequence length T (default 100)"),
        ProbeFlag("hidden", 128, "RNN hidden size (default 128)"),
    )

    # ------------------------------------------------------------------ gc.sweep
    def resolve(self, cfg: dict[str, Any], where: str) -> None:
        for k in ("hidden_size", "input_size", "output_size"):
            if cfg[k] is not None and cfg[k] > 1 << 24:
                raise MemoryError(f"{k}: {cfg[k]} cannot be allocated (in {where})")

    def build(self, cfg: Mapping[str, Any], init: Any, dtype: np.dtype, seed: int) -> Model:
        return self.model(cfg["input_size"], cfg["hidden_size"], activation=cfg["activation"],
                          init=init, input_init=cfg["input_init"], bias=cfg["bias"],
                          output_size=cfg["output_size"], dtype=dtype, seed=seed)

    def probe_shapes(self, cfg: Mapping[str, Any]) -> ProbeShapes:
        T, B = cfg["steps"], cfg["batch"]
        lead = (B,) if cfg["on"] == "last" else (T, B)
        return ProbeShapes((T, B, cfg["input_size"]), lead,
                           cfg["output_size"] or cfg["hidden_size"], {"on": cfg["on"]})

    def check_training(self, data: str, cfg: Mapping[str, Any], where: str) -> None:
        if data not in self.train_data:
            raise ValueError(f"train['data']: an {self.model.__name__} trains on "
                             f"{' or '.join(map(repr, self.train_data))}, got {data!r} "
                             f"(in {where})")
        if cfg["input_size"] != 2 or cfg["output_size"] != 1 or cfg["loss"] != "mse" \
                or cfg["on"] != "last":
            raise ValueError(
                "train: data='adding' needs input_size=2, output_size=1 (implied when not "
                "given), loss='mse' and "
                f"on='last', got input_size={cfg['input_size']}, "
                f"output_size={cfg['output_size']}, loss={cfg['loss']!r}, on={cfg['on']!r} "
                f"(in {where})")
        if cfg["steps"] < 2:
            raise ValueError(f"train: data='adding' needs steps >= 2, got {cfg['steps']} "
                             f"(in {where})")

    def training_data(self, name: str, cfg: Mapping[str, Any], n: int, seed: int,
                      dtype: np.dtype) -> tuple[Any, Any, Any]:
        from .. import data as gc_data

        x, y = gc_data.adding(cfg["steps"], n, seed=seed, dtype=dtype)
        return x, y, None

    def run_bytes(self, cfg: Mapping[str, Any], batch: int) -> int:
        s = np.dtype(cfg.get("dtype", "float32")).itemsize
        B = batch
        I_, H, K, T = (cfg["input_size"], cfg["hidden_size"], cfg["output_size"] or 0,
                       cfg["steps"])
        n = H * (I_ + H + 2) + K * (H + 1)
        params = 2 * n * s + 5 * H * H * 8
        work = (T * B * (3 * I_ + 6 * H + 2 * K) + 3 * B * H) * s
        data = T * B * (I_ + max(K, H)) * (8 + s)
        return params + work + data

    # ------------------------------------------------------------ gradchain probe
    def probe_config(self, opts: Any) -> dict[str, Any]:
        return {"model": self.model.kind, "input_size": 2, "hidden_size": opts.hidden,
                "output_size": 1, "steps": opts.steps, "dtype": opts.dtype}

    def probe_what(self, opts: Any, init: str) -> str:
        return (f"RNN {opts.activation} + {init} W_hh, hidden {opts.hidden}, "
                f"T = {opts.steps}, batch {opts.batch}, {opts.dtype}")

    def probe_model(self, opts: Any, init: Any, dtype: Any) -> tuple[tuple[Any, ...],
                                                                    dict[str, Any]]:
        return ((2, opts.hidden), {"activation": opts.activation, "init": init,
                                   "output_size": 1, "dtype": dtype, "seed": opts.seed})

    def probe_batch(self, opts: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
        from ..data import adding  # the lab's data, loaded only when the lab asks

        xs, ys = adding(opts.steps, opts.batch, seed=opts.seed, dtype=dtype)
        return xs, ys, {"on": "last"}


@register
class RNN(_Recurrent):
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
        I_, H, K = self._check_sizes(input_size, hidden_size, output_size)
        act = _acts.resolve(activation)
        scheme = _init.resolve(init)
        in_scheme = _init.resolve(input_init)
        self._check_flags(bias, batch_first)
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
        # the health report's saturation threshold (NaN for a custom activation)
        self._core.health_threshold = act.saturation_threshold()
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
        self._nonfinite_origin = None
        # what gc.clip_per_example reruns: the last backward's (grad_hs, grad_ys), time-major,
        # whether it accumulated, and its per-example norms (None until a backward)
        self._last_grads: tuple[np.ndarray | None, np.ndarray | None] | None = None
        self._last_accumulate = False
        self._example_norms: np.ndarray | None = None
        self._bind_views()
        self.reset_parameters(seed_)

    # ------------------------------------------------------------------ compute
    @locked
    @tracks_forward
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
        self._last_grads = self._example_norms = None  # a new forward: nothing to clip again
        return self._user_major(hs)

    @tracks_forward
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

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ...,
                 report: Literal[True] = ..., per_example: bool = ...) -> RNNGradReport: ...

    @overload
    def backward(self, grad_hs: Any = ..., grad_ys: Any = ..., accumulate: bool = ..., *,
                 report: Literal[False], per_example: bool = ...) -> None: ...

    @locked
    def backward(self, grad_hs: Any = None, grad_ys: Any = None,
                 accumulate: bool = False, report: bool = True,
                 per_example: bool = False) -> RNNGradReport | None:
        """Backpropagation through time from ``grad_hs = dL/dh_t (T, B, H)`` and/or
        ``grad_ys = dL/dy_t (T, B, K)`` (the readout's); either may be None (zeros).

        Fills every parameter gradient (``accumulate=True`` adds), ``input_grad``
        ``dL/dx`` and ``h0_grad``; returns the :class:`RNNGradReport`. ``report=False``
        computes the gradients only (the report's sums of squares are skipped) and
        returns None. Ctrl-C stops a pass within a timestep, as :meth:`MLP.backward`
        describes.

        ``per_example=True`` also gives every example's own gradient norm
        ``||grad l_i||`` (``L = mean_i l_i``), per tensor and globally, its
        ``||dl_i/dh_t||`` per step, and the gradient noise scale
        (``per_example_grad_norms``, ``per_example_tensor_grad_norms``,
        ``per_example_timestep_grad_norms``, ``noise_scale``); exact (see
        ``per_example_rnn.h``), with report=True only.
        """
        gh, gy, T, B = self._check_seq_grads(grad_hs, grad_ys)
        want = check_bool(report, "report")
        acc = check_bool(accumulate, "accumulate")
        pe = self._check_per_example(per_example, want)
        require((T * B * self.input_size + B * self.hidden_size) * self.dtype.itemsize
                + (self._example_bytes(T, B) if pe else 0),
                lambda: f"backward: dL/dx and dL/dh0 of {self._describe()} over T={T}, "
                        f"B={B}")
        d, dx, dh0 = self._compute("backward", self._core.backward, gh, gy, acc, want, pe)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        self._keep_grads(gh, gy, acc, (grad_hs, grad_ys))
        if not want:
            self._nonfinite_origin = None
            return None
        return self._report(d, dh0, None, acc)

    @locked
    def loss_and_grad(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                      h0: Any = None, accumulate: bool = False,
                      per_example: bool = False) -> tuple[float, RNNGradReport]:
        """Forward, loss and BPTT in one call; returns ``(loss, report)``.

        The loss applies to the readout outputs when there is a readout, else to the
        hidden states. ``on="last"``: step T only (target ``(B, F)`` for mse, ``(B,)``
        class indices for cross_entropy); ``on="all"``: every step (``(T, B, F)`` /
        ``(T, B)``, batch-first layouts with ``batch_first``). ``per_example=True``: as
        :meth:`backward`'s (``l_i`` is example i's own loss, the convention of
        ``torch.func.vmap(grad)``).
        """
        _losses.check_loss(loss)
        if on not in ON:
            raise ValueError(f"on: expected 'last' or 'all', got {on!r}")
        xa = self._check_x(x)
        T, B = xa.shape[0], xa.shape[1]
        t = self._check_seq_target(target, loss, on, T, B)
        h0a = None if h0 is None else float_array(h0, "h0", self.dtype, (B, self.hidden_size))
        acc = check_bool(accumulate, "accumulate")
        pe = self._check_per_example(per_example)
        hs, ys = self._core_forward(xa, h0a)
        self._last_grads = self._example_norms = None
        self._outputs = ys
        outputs = ys if self.output_size else hs
        # the loss's float64 temporaries and dL/d(outputs), then dL/dx and dL/dh0
        require(6 * outputs.size * 8 + (T * B * self.input_size + B * self.hidden_size)
                * self.dtype.itemsize + (self._example_bytes(T, B) if pe else 0),
                lambda: f"x: the loss and backward pass over T={T}, B={B} of "
                        f"{self._describe()}")
        with np.errstate(all="ignore"):  # an overflowed forward gives a NaN loss, not a warning
            value, g = _losses.sequence_value_and_grad(outputs, t, loss, on)
        g = np.ascontiguousarray(g, dtype=self.dtype)
        gh, gy = (None, g) if self.output_size else (g, None)
        d, dx, dh0 = self._compute("backward", self._core.backward, gh, gy, acc, True, pe)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        self._keep_grads(gh, gy, acc)
        loss_stage = None if math.isfinite(value) else "loss"
        if loss_stage is None and not np.isfinite(g).all():
            loss_stage = "loss_gradient"
        rep = self._report(d, dh0, loss_stage, acc)
        rep.loss = float(value)
        return float(value), rep

    # ------------------------------------------------------------ per-example gradients
    # (_check_per_example, supports_per_example, _example_bytes, _keep_grads and
    # _clip_per_example are _Recurrent's)
    def _pe_pass(self, gh: Any, gy: Any, report: bool, per_example: bool
                 ) -> RNNGradReport | None:
        """One assigning backward from the kept upstream gradients (gc.clip_per_example)."""
        d, dx, dh0 = self._compute("backward", self._core.backward, gh, gy, False, report,
                                   per_example)
        self._input_grad = self._user_major(dx)
        self._h0_grad = dh0
        return self._report(d, dh0, None, False) if report else None

    def _tensor_names(self) -> list[str]:
        return list(self.tensor_shapes({"input_size": self.input_size,
                                        "hidden_size": self.hidden_size,
                                        "output_size": self.output_size, "bias": self.bias}))

    def _report(self, d: dict[str, Any], dh0: np.ndarray, loss_stage: str | None,
                accumulate: bool) -> RNNGradReport:
        rep = RNNGradReport._from_core(d, dh0, loss_stage, self._tensor_names())
        if accumulate and rep.noise_scale is not None:
            rep.noise_scale = math.nan  # ||G|| would include the gradients accumulated before
        self._nonfinite_origin = rep.nonfinite_origin
        self._example_norms = rep.per_example_grad_norms
        return rep

    # ------------------------------------------------------------ signal propagation
    def _twin(self) -> Any:
        """A core chain holding this model's parameters: probes and Jacobians run on it,
        so the model's saved forward pass, gradients and last results stay as they are."""
        require(2 * self.flat_parameters().nbytes,
                lambda: f"a copy of the parameters of {self._describe()}")
        aid, p0, p1 = self.activation._core_spec(_core.ACTIVATION_IDS)
        twin = type(self._core)(self.input_size, self.hidden_size, self.output_size or 0,
                                aid, p0, p1, self.bias)
        twin.param_array()[...] = self._core.param_array()
        if self.activation.is_custom:
            twin.set_custom_activation(_custom_callback(self.activation))
        return twin

    @locked
    def probe(self, x: Any, n: int = 16, seed: int | None = 0) -> ProbeReport:
        """Loss-independent probes through time: ``n`` Gaussian vectors ``u (B, F)`` at the
        last step's output (the readout's ``y_T``, else ``h_T``), pulled back to every
        ``h_t``. Returns a :class:`gradchain.linearize.ProbeReport` along the timesteps
        (``h1..hT``): ``factor[t] = E||dh_T/dh_t^T ...u||^2 / E||u||^2``, its spread, and
        the per-step ``step_factor`` (the empirical counterpart of the report's fitted
        per-step factor). One forward pass at ``x (T, B, I)``, then one backward pass per
        probe, on a copy of the core: the model's saved pass and gradients are kept. (The
        batched form, :meth:`_probe_batched`, gives the same numbers but measured slower on
        2 cores: one backward over ``n*B`` rows leaves the caches that ``n`` backward
        passes over ``B`` rows stay in; benchmarks/README.md.)
        """
        xa = self._check_x(x)
        T, B = xa.shape[0], xa.shape[1]
        k = positive_int(n, "n")
        F = self.output_size or self.hidden_size
        require((k * B * F + 2 * T * B * F + T * B * self.input_size) * self.dtype.itemsize,
                lambda: f"probe: {k} probes of a batch of {B} through {self._describe()}")
        U = probe_vectors(k, B, F, seed, self.dtype).reshape(k, B, F)
        twin = self._twin()
        twin.forward(xa, None)
        g = np.zeros((T, B, F), dtype=self.dtype)
        sq = np.empty((k, T))
        for p in range(k):
            g[-1] = U[p]
            d, _, _ = (twin.backward(None, g, False, True) if self.output_size
                       else twin.backward(g, None, False, True))
            sq[p] = np.square(np.asarray(d["timestep_grad_norms"], dtype=np.float64))
        u_sq = np.square(U.astype(np.float64)).reshape(k, B * F).sum(axis=1)
        return ProbeReport("timestep", self.report_axis.labels(T), sq, u_sq, B)

    @locked
    def _probe_batched(self, x: Any, n: int = 16, seed: int | None = 0) -> ProbeReport:
        """:meth:`probe` in one batched pass through the core (issue 15 item 2): one forward
        at ``x``, its saved pass replicated for every probe (probe p on rows
        ``p*B..(p+1)*B``: ``replicate_batch``) and one backward whose per-example
        ``||dL/dh_{t,i}||^2`` are summed per probe (in chunks of probes when the replicated
        batch would exceed ``_PROBE_VALUES`` values), on a copy of the core."""
        xa = self._check_x(x)
        T, B = xa.shape[0], xa.shape[1]
        k = positive_int(n, "n")
        F = self.output_size or self.hidden_size
        U = probe_vectors(k, B, F, seed, self.dtype).reshape(k, B, F)
        # probes per pass: the replicated batch's values (x, the workspace's h, act', dL/dh,
        # dz, the readout's, the upstream gradient) within _PROBE_VALUES, T*B*c in the BLAS
        per_probe = T * B * (self.input_size + 6 * self.hidden_size + 3 * F + 2)
        c = max(1, min(k, _PROBE_VALUES // max(1, per_probe), BLAS_INT_MAX // (T * B)))
        twin = self._twin()
        require(twin.pass_bytes(T, c * B) + c * per_probe * self.dtype.itemsize,
                lambda: f"probe: {c} probes of a batch of {B} through {self._describe()}")
        twin.example_tensors = False  # the steps' per-example norms only
        sq = np.empty((k, T))
        g = np.zeros((T, c * B, F), dtype=self.dtype)
        for p0 in range(0, k, c):
            m = min(c, k - p0)
            if m < c:
                g = np.zeros((T, m * B, F), dtype=self.dtype)
            twin.forward(xa, None)
            twin.replicate_batch(m)
            g[-1] = U[p0:p0 + m].reshape(m * B, F)
            d, _, _ = (twin.backward(None, g, False, True, True) if self.output_size
                       else twin.backward(g, None, False, True, True))
            rows = np.asarray(d["example_step_sumsq"], dtype=np.float64)  # (T, m * B)
            sq[p0:p0 + m] = rows.reshape(T, m, B).sum(axis=2).T
        u_sq = np.square(U.astype(np.float64)).reshape(k, B * F).sum(axis=1)
        return ProbeReport("timestep", self.report_axis.labels(T), sq, u_sq, B)

    @locked
    def jacobian(self, x: Any, at: Any = None, h0: Any = None
                 ) -> np.ndarray | dict[int, np.ndarray]:
        """``dh_T/dh_t (H, H)`` at one sequence ``x`` (``(T, I)``, or ``(T, 1, I)``;
        ``(1, T, I)`` with ``batch_first``), row ``i`` the gradient of ``h_T[i]``.

        ``at``: ``t`` in ``0..T`` (default 0: ``dh_T/dh_0``; ``T``: the identity), or a
        sequence of them for ``{t: Jacobian}``. ``h0 (1, H)`` defaults to zeros. Each is one
        batched backward pass of ``H`` one-hot cotangents through steps ``t+1..T`` of the
        core (on a copy: the model's saved pass and gradients are kept).
        """
        a = as_array(x, "x")
        if a.ndim == 2:
            a = a[None] if self.batch_first else a[:, None]
        xa = self._check_x(a)
        T, B, H = xa.shape[0], xa.shape[1], self.hidden_size
        if B != 1:
            raise ValueError(f"x: expected one sequence, got a batch of {B}")
        steps, single = check_at(0 if at is None else at, T, "at")
        h0a = (np.zeros((1, H), dtype=self.dtype) if h0 is None
               else float_array(h0, "h0", self.dtype, (1, H)))
        require(T * H * (self.input_size + 2 * H + (self.output_size or 0))
                * self.dtype.itemsize * 2,
                lambda: f"jacobian: {H} one-hot cotangents through {T} steps of "
                        f"{self._describe()}")
        twin = self._twin()
        hs, _ = twin.forward(xa, h0a)
        res: dict[int, np.ndarray] = {}
        for t in steps:
            if t == T:
                res[t] = np.eye(H, dtype=self.dtype)
                continue
            ht = h0a if t == 0 else hs[t - 1]
            xr = np.ascontiguousarray(np.broadcast_to(xa[t:], (T - t, H, self.input_size)))
            twin.forward(xr, np.ascontiguousarray(np.broadcast_to(ht, (H, H))))
            g = np.zeros((T - t, H, H), dtype=self.dtype)
            g[-1] = np.eye(H, dtype=self.dtype)
            _, _, dh0 = twin.backward(g, None, False, False)
            res[t] = dh0
        return res[steps[0]] if (at is None or single) else res

    def _ctor_args(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "activation": self.activation, "init": self.init,
                "input_init": self.input_init, "bias": self.bias,
                "output_size": self.output_size, "dtype": self.dtype,
                "batch_first": self.batch_first}

    def _rebuild(self, kwargs: dict[str, Any]) -> None:
        RNN.__init__(self, **kwargs)

    def config(self) -> dict[str, Any]:
        return self._config_base()

    # ------------------------------------------------------------ the model protocol
    kind = "rnn"
    config_kind = "RNN"
    lab = RNNLab()

    def __repr__(self) -> str:
        ro = f", output_size={self.output_size}" if self.output_size else ""
        return (f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}{ro}, "
                f"activation={self.activation!r}, init={self.init!r}, dtype={self.dtype.name})")
