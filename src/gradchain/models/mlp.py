"""The MLP: :class:`MLP`, a deep chain of Linear -> [Norm] -> activation layers, with
its place in the model protocol (config, data axes, report axis) and its lab
(:class:`MLPLab`: what ``gc.sweep``, ``gradchain probe`` and ``gc.theory`` need)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np

from .. import _core
from .. import activations as _acts
from .. import init as _init
from .. import losses as _losses
from .._memory import check_blas_dim, mlp_bytes
from .._validate import (
    check_bool,
    contiguous,
    float_array,
    model_dtype,
    positive_int,
    real,
    shape_str,
)
from ..linearize import Linearization, ProbeReport, check_at, probe_vectors
from ..losses import check_target
from ..report import GradReport
from .base import (
    ConfigReader,
    DataSet,
    Lab,
    Model,
    ProbeFlag,
    ProbeShapes,
    ReportAxis,
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

__all__ = ["MLP", "MLPLab", "NORMS"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


# The core's norm list (cpp/include/gradchain/norm_list.h) is the one table: name -> id.
NORMS: tuple[str | None, ...] = tuple(None if n == "none" else n for n in _core.NORM_IDS)
"""The norm layers an MLP takes (``norm=``); the CLI writes None as ``"none"``."""

_NORMS: dict[str | None, int] = {None: _core.NORM_IDS["none"], **_core.NORM_IDS}


def _sizes(sizes: Any) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence | np.ndarray):
        raise TypeError(f"sizes: expected a list of ints [in, h_1, ..., out], got {sizes!r}")
    out = [positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
    if len(out) < 2:
        raise ValueError(f"sizes: expected at least [in, out], got {out}")
    for i, s in enumerate(out):  # every width is a GEMM dimension
        check_blas_dim(s, f"sizes[{i}]")
    n_params = sum(a * b for a, b in zip(out[:-1], out[1:], strict=False))
    if n_params > 1 << 40:  # the core's own bound (4 TiB of float32 weights)
        raise MemoryError(f"sizes: {n_params} weights cannot be allocated")
    return out


def _residual_flags(sizes: list[int], residual: Any) -> list[bool]:
    """One bool per hidden layer ``l`` (mapping ``sizes[l-1] -> sizes[l]``): whether it has
    a skip connection (docs/CONVENTIONS.md, "MLP"). ``True``: every equal-width hidden
    layer; an int ``k >= 1``: the k-th, 2k-th, ... of them; a list: as given."""
    equal = [a == b for a, b in zip(sizes[:-2], sizes[1:-1], strict=True)]
    if isinstance(residual, (bool, np.bool_)):
        return list(equal) if residual else [False] * len(equal)
    if isinstance(residual, (int, np.integer)):
        k = int(residual)
        if k < 1:
            raise ValueError(f"residual: expected True/False, an int k >= 1 or a list of "
                             f"bools, got {k}")
        rank = np.cumsum(equal)  # the how-many-th equal-width layer each one is
        return [bool(e and r % k == 0) for e, r in zip(equal, rank, strict=True)]
    if isinstance(residual, (list, tuple, np.ndarray)):
        flags = list(residual)
        if not all(isinstance(f, (bool, np.bool_)) for f in flags):
            raise TypeError("residual: a list must hold only bools")
        if len(flags) != len(equal):
            raise ValueError(f"residual: expected one bool per hidden layer ({len(equal)}), "
                             f"got {len(flags)}")
        for i, (flag, eq) in enumerate(zip(flags, equal, strict=True)):
            if flag and not eq:
                raise ValueError(f"residual on hidden layer {i + 1} needs equal widths, got "
                                 f"{sizes[i]} -> {sizes[i + 1]}")
        return [bool(f) for f in flags]
    raise TypeError(f"residual: expected a bool, an int k >= 1 or a list of bools, "
                    f"got {type(residual).__name__}")


# ============================================================================ the lab
_MLP_DEFAULTS: dict[str, Any] = {
    "activation": "tanh", "init": "torch_default", "sigma_w": None, "sigma_b": None,
    "depth": 32, "width": 128, "in_features": None, "out_features": 10, "norm": None,
    "residual": False, "residual_scale": 1.0, "bias": True, "dtype": "float32", "batch": 64,
    "loss": "mse",
}


def _mlp_sizes(cfg: Mapping[str, Any]) -> list[int]:
    return [cfg["in_features"]] + [cfg["width"]] * cfg["depth"] + [cfg["out_features"]]


class MLPLab(Lab):
    """The MLP in the lab: ``gc.sweep``'s MLP options (depth, width, norm, residual, ...),
    its probe batch ``x (batch, in_features)`` and its training data (a random teacher,
    scikit-learn's digits), ``gradchain probe``'s MLP flags and the mean-field theory."""

    sweep_defaults = _MLP_DEFAULTS
    train_data = ("teacher", "digits")
    # the digits are 64 pixels and 10 classes
    data_implies = {"digits": {"in_features": 64, "out_features": 10, "loss": "cross_entropy"}}
    probe_flags = (
        ProbeFlag("depth", 32, "MLP hidden layers (default 32)"),
        ProbeFlag("width", 128, "MLP layer width (default 128)"),
        ProbeFlag("out", 10, "MLP outputs (default 10)"),
        ProbeFlag("norm", "none", "MLP norm layers (default none)", str,
                  tuple("none" if n is None else n for n in NORMS)),
        ProbeFlag("residual", None, "MLP: residual on every K-th layer", metavar="K"),
    )
    mean_field_theory = True

    # ------------------------------------------------------------------ gc.sweep
    def resolve(self, cfg: dict[str, Any], where: str) -> None:
        if cfg["in_features"] is None:
            cfg["in_features"] = cfg["width"]
        if cfg["norm"] == "batch" and cfg["batch"] < 2:
            raise ValueError(f"batch: batch norm in training mode needs batch >= 2, got "
                             f"{cfg['batch']} (in {where})")
        for key in ("in_features", "width", "out_features"):  # past the BLAS: a ValueError
            check_blas_dim(cfg[key], f"{key} (in {where})")
        # counted before the size list is built (depth=10**9 would exhaust memory there)
        w, d = cfg["width"], cfg["depth"]
        n_weights = cfg["in_features"] * w + (d - 1) * w * w + w * cfg["out_features"]
        if n_weights > 1 << 36:
            raise MemoryError(f"sizes: {n_weights} weights cannot be allocated (width={w}, "
                              f"depth={d}, in {where})")
        try:
            _sizes(_mlp_sizes(cfg))
        except (MemoryError, ValueError) as e:  # ValueError: past the BLAS's 32-bit range
            raise type(e)(f"{e} (width={cfg['width']}, depth={cfg['depth']}, in {where})"
                          ) from None

    def build(self, cfg: Mapping[str, Any], init: Any, dtype: np.dtype, seed: int) -> Model:
        return self.model(_mlp_sizes(cfg), activation=cfg["activation"], init=init,
                          norm=cfg["norm"], residual=cfg["residual"],
                          residual_scale=cfg["residual_scale"], bias=cfg["bias"], dtype=dtype,
                          seed=seed)

    def probe_shapes(self, cfg: Mapping[str, Any]) -> ProbeShapes:
        B = cfg["batch"]
        return ProbeShapes((B, cfg["in_features"]), (B,), cfg["out_features"], {})

    def check_training(self, data: str, cfg: Mapping[str, Any], where: str) -> None:
        from .base import describe_kinds

        if data not in self.train_data:
            owner = describe_kinds(where=lambda c: data in c.lab.train_data)
            raise ValueError(f"train['data']: {data!r} is an {owner} task, got "
                             f"model={self.model.kind!r} (in {where})")
        if data == "digits":
            if cfg["in_features"] != 64 or cfg["out_features"] != 10 \
                    or cfg["loss"] != "cross_entropy":
                raise ValueError(
                    "train: data='digits' needs in_features=64, out_features=10 and "
                    "loss='cross_entropy' (implied when not given; the digits are 64 pixels, "
                    f"10 classes), got in_features={cfg['in_features']}, "
                    f"out_features={cfg['out_features']}, loss={cfg['loss']!r} (in {where})")
            import importlib.util

            if importlib.util.find_spec("sklearn") is None:
                raise ImportError("train: data='digits' needs scikit-learn "
                                  '(pip install "gradchain[data]")')
        elif cfg["loss"] == "cross_entropy" and cfg["out_features"] < 2:
            raise ValueError(f"train: data='teacher' with cross_entropy needs out_features "
                             f">= 2, got {cfg['out_features']} (in {where})")

    def training_data(self, name: str, cfg: Mapping[str, Any], n: int, seed: int,
                      dtype: np.dtype) -> tuple[Any, Any, Any]:
        from .. import data as gc_data

        if name == "digits":
            x, y, x_te, y_te = gc_data.digits(seed=seed, dtype=dtype)
            return x, y, (x_te, y_te)
        x, y = gc_data.teacher(n=n, sizes=(cfg["in_features"], 64, cfg["out_features"]),
                               seed=seed, dtype=dtype)
        if cfg["loss"] == "cross_entropy":  # the teacher's classes: its largest output
            y = np.argmax(y, axis=1).astype(np.int64)
        return x, y, None

    def run_bytes(self, cfg: Mapping[str, Any], batch: int) -> int:
        s = np.dtype(cfg.get("dtype", "float32")).itemsize
        B = batch
        i, w, L, o = cfg["in_features"] or cfg["width"], cfg["width"], cfg["depth"], \
            cfg["out_features"]
        widest = max(i, w, o)
        n = i * w + (L - 1) * w * w + w * o + (L * w + o) + (2 * L * w if cfg["norm"] else 0)
        params = 2 * n * s + 5 * widest * w * 8  # the init draws in float64 (QR: 5 copies)
        hidden = L * w
        work = B * (i + (3 if cfg["norm"] else 2) * hidden + 5 * widest + o + i) * s
        data = B * (i + o) * (8 + s)
        return params + work + data

    # ------------------------------------------------------------ gradchain probe
    def probe_config(self, opts: Any) -> dict[str, Any]:
        return {"model": self.model.kind, "in_features": opts.width, "width": opts.width,
                "depth": opts.depth, "out_features": opts.out, "norm": opts.norm != "none",
                "dtype": opts.dtype}

    def probe_what(self, opts: Any, init: str) -> str:
        extra = "".join([f", {opts.norm} norm" if opts.norm != "none" else "",
                         f", residual every {opts.residual}" if opts.residual else ""])
        return (f"MLP {opts.activation} + {init}, {opts.depth} hidden layers of width "
                f"{opts.width}{extra}, batch {opts.batch}, {opts.dtype}")

    def probe_model(self, opts: Any, init: Any, dtype: Any) -> tuple[tuple[Any, ...],
                                                                    dict[str, Any]]:
        residual: bool | int = opts.residual if opts.residual is not None else False
        return (([opts.width] * (opts.depth + 1) + [opts.out],),
                {"activation": opts.activation, "init": init,
                 "norm": None if opts.norm == "none" else opts.norm, "residual": residual,
                 "dtype": dtype, "seed": opts.seed})

    def probe_batch(self, opts: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
        rng = np.random.default_rng(opts.seed)
        x = rng.normal(size=(opts.batch, opts.width)).astype(dtype)
        t = rng.normal(size=(opts.batch, opts.out)).astype(dtype)
        return x, t, {}

    # ---------------------------------------------------------------- gc.theory
    def mean_field(self, model: Any) -> tuple[_acts.Activation, float, float, int]:
        cfg = model.config()
        if cfg["norm"] is not None:
            raise ValueError(f"model: has norm={cfg['norm']!r} layers; the mean-field theory "
                             "applies only without normalisation")
        if any(cfg["residual"]):
            raise ValueError("model: has residual connections; the mean-field theory applies "
                             "only to a plain chain")
        init = cfg["init"]
        if init["name"] == "orthogonal":  # the same q-map and chi_1 in the wide limit
            gain = init.get("gain")
            return model.activation, 1.0 if gain is None else float(gain), 0.0, model.depth
        if init["name"] != "normal":
            raise ValueError(f"model: init is {init['name']!r}; the mean-field theory needs "
                             "init=gc.init.normal(sigma_w, sigma_b) (or gc.init.orthogonal("
                             "gain): sigma_w = gain, sigma_b = 0)")
        sb = float(init["sigma_b"]) if cfg["bias"] else 0.0  # bias=False: no b at all
        return model.activation, float(init["sigma_w"]), sb, model.depth


# ============================================================================ the model
@register
class MLP(Model):
    """A deep MLP chain run by the C++ core, with per-layer gradient reports.

    ``sizes = [in, h_1, ..., h_L, out]``: L hidden layers and one output layer.
    Hidden layer l: ``z = a @ W.T + b``, ``n = Norm(z)``, ``f = act(n)``,
    ``a_next = a + residual_scale * f`` where residual applies, else ``f``;
    output ``y = a_L @ W_out.T + b_out``. Shapes: ``x (B, in)``, ``y (B, out)``.

    Parameters
    ----------
    sizes : list of int
    activation : str or Activation
        A name from docs/CONVENTIONS.md, ``gc.Activation(name, **params)`` or
        ``gc.Activation.custom(f, df)`` (slow path).
    init : str or gc.init.Init
        Scheme name or ``gc.init.<scheme>(...)``; default ``"torch_default"``
        (what ``torch.nn.Linear`` does).
    norm : None, "batch" or "layer"
    residual : bool, int or list of bool
        True: every equal-width hidden layer; k: every k-th of those; or L flags.
    residual_scale : float
    bias : bool
    dtype : np.float32 or np.float64
    seed : int or None
        Makes the initialisation reproducible.
    eps, momentum : float
        Norm-layer epsilon and batch-norm running-statistics momentum (PyTorch's).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | _acts.Activation = "tanh",
        init: str | _init.Init = "torch_default",
        norm: str | None = None,
        residual: bool | int | Sequence[bool] = False,
        residual_scale: float = 1.0,
        bias: bool = True,
        dtype: Any = np.float32,
        seed: int | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        sizes_ = _sizes(sizes)
        act = _acts.resolve(activation)
        scheme = _init.resolve(init)
        if norm not in _NORMS or isinstance(norm, bool):
            raise ValueError(f"norm: expected None, 'batch' or 'layer', got {norm!r}")
        flags = _residual_flags(sizes_, residual)
        alpha = real(residual_scale, "residual_scale")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        dt = model_dtype(dtype)
        seed_ = _check_seed(seed)
        eps_ = real(eps, "eps")
        if eps_ <= 0:
            raise ValueError(f"eps: expected a number > 0, got {eps}")
        mom = real(momentum, "momentum", minimum=0.0)
        if mom > 1:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")

        cls = _core.MlpChainF32 if dt == np.float32 else _core.MlpChainF64
        aid, p0, p1 = act._core_spec(_core.ACTIVATION_IDS)
        # the flat buffers, zero-filled at once, then the initialisation's temporaries
        require(mlp_bytes(sizes_, None if norm == "none" else norm, bool(bias), dt.itemsize,
                          scheme.name),
                lambda: f"gc.MLP(sizes={_short_sizes(sizes_)}, dtype={dt.name}, "
                        f"init={scheme.name!r}, norm={norm!r}): its parameters, gradients "
                        "and initialisation")
        try:
            self._core = cls(sizes_, aid, p0, p1, _NORMS[norm], bool(bias), list(flags), alpha,
                             eps_, mom)
        except MemoryError as e:  # the core names the buffer and the bytes
            raise MemoryError(
                f"sizes: the parameters of an MLP with sizes {_short_sizes(sizes_)} "
                f"({dt.name}) cannot be allocated ({_core_message(e)})") from None
        if act.is_custom:
            self._core.set_custom_activation(_custom_callback(act))
        # the health report's saturation threshold (NaN for a custom activation)
        self._core.health_threshold = act.saturation_threshold()
        self.sizes = sizes_
        self.activation = act
        self.init = scheme
        self.norm = None if norm == "none" else norm
        self.residual = [bool(f) for f in flags]
        self.residual_scale = alpha
        self.bias = bool(bias)
        self.dtype = dt
        self.seed = seed_
        self.eps = eps_
        self.momentum = mom
        self._input_grad: np.ndarray | None = None
        # what gc.clip_per_example reruns: the last backward's dL/dy, whether it
        # accumulated, and its per-example norms (None until a backward)
        self._last_gy: np.ndarray | None = None
        self._last_accumulate = False
        self._example_norms: np.ndarray | None = None
        self._nonfinite_origin = None
        self._bind_views()
        # one counter per batch-norm layer, as each torch.nn.BatchNorm1d keeps its own
        n_bn = self.depth if self.norm == "batch" else 0
        self._num_batches_tracked = np.zeros(n_bn, dtype=np.int64)
        self.reset_parameters(seed_)

    # ----------------------------------------------------------------- set-up
    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.sizes) - 2

    @locked
    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw every weight and bias again from the init scheme (norm layers: gamma 1, beta 0)."""
        rng = np.random.default_rng(_check_seed(seed))
        for layer in range(self.depth + 1):
            fan_in, fan_out = self.sizes[layer], self.sizes[layer + 1]
            self._params[f"layers.{layer}.weight"][...] = self.init.weight(
                rng, (fan_out, fan_in), self.activation)
            if self.bias:
                self._params[f"layers.{layer}.bias"][...] = self.init.bias(rng, fan_out, fan_in)
        for name, p in self._params.items():
            if name.startswith("norms."):
                p[...] = 1.0 if name.endswith(".weight") else 0.0
        for name, b in self._buffers.items():
            b[...] = 0.0 if name.endswith("running_mean") else 1.0
        self._num_batches_tracked[...] = 0
        self._core.invalidate()

    @property
    def training(self) -> bool:
        return bool(self._core.training)

    @locked
    def train(self, mode: bool = True) -> MLP:
        """Training mode (batch statistics in batch norm); returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode: expected a bool, got {type(mode).__name__}")
        self._core.training = bool(mode)
        return self

    def eval(self) -> MLP:
        """Evaluation mode (running statistics in batch norm); returns self."""
        return self.train(False)

    # ------------------------------------------------------------ compute
    @locked
    @tracks_forward
    def forward(self, x: Any) -> np.ndarray:
        """``x (B, in) -> y (B, out)``; keeps what ``backward`` needs."""
        xa = float_array(x, "x", self.dtype, (None, self.sizes[0]), copy=False)
        if self.norm == "batch" and self.training and xa.shape[0] == 1:
            raise ValueError(
                "x: batch norm in training mode needs more than 1 sample per batch, got shape "
                f"{shape_str(xa.shape)} (as torch.nn.BatchNorm1d; use model.eval())"
            )
        B = xa.shape[0]
        check_blas_dim(B, "x: batch size")  # the weight gradients' inner GEMM dimension
        # the workspace (planned once per batch size), y, and the contiguous copy of x
        require(self._core.pass_bytes(B) + B * self.sizes[-1] * self.dtype.itemsize
                + (0 if xa.flags.c_contiguous else xa.nbytes),
                lambda: f"x: the forward pass of {self._describe()} over shape "
                        f"{shape_str(xa.shape)}")
        xa = contiguous(xa, "x")
        track = self.norm == "batch" and self.training
        done = self._core.forward_count
        self._last_gy = self._example_norms = None  # a new forward: nothing to clip again
        try:
            y = self._compute("forward", self._core.forward, xa)
        finally:  # counted when the core committed the running statistics (even if a
            # KeyboardInterrupt came right after)
            if track and self._core.forward_count != done:
                self._num_batches_tracked += 1
        return y

    __call__ = forward

    @overload
    def backward(self, grad_output: Any, accumulate: bool = ...,
                 report: Literal[True] = ..., per_example: bool = ...) -> GradReport: ...

    @overload
    def backward(self, grad_output: Any, accumulate: bool = ..., *,
                 report: Literal[False], per_example: bool = ...) -> None: ...

    def _check_per_example(self, per_example: Any, report: bool = True) -> bool:
        pe = check_bool(per_example, "per_example")
        if pe and not report:
            raise ValueError("per_example: the per-example norms are part of the report; "
                             "per_example=True needs report=True")
        if pe and self.norm == "batch" and self.training:
            raise ValueError(
                "per_example: batch norm in training mode couples the examples of a batch "
                "(each example's gradient depends on the others), so per-example gradients "
                "are not defined; call model.eval() (running statistics: exact) or use "
                "norm='layer'")
        return pe

    def supports_per_example(self) -> bool:
        """Whether ``per_example=True`` applies now (not with batch norm in training mode)."""
        return not (self.norm == "batch" and self.training)

    def _report(self, d: dict[str, Any], loss_stage: str | None = None,
                accumulate: bool = False) -> GradReport:
        rep = GradReport._from_core(d, [f"layers.{i}" for i in range(self.depth + 1)],
                                    loss_stage, self._core.forward_batch)
        if accumulate and rep.noise_scale is not None:
            rep.noise_scale = math.nan  # ||G|| would include the gradients accumulated before
        self._nonfinite_origin = rep.nonfinite_origin
        self._example_norms = rep.per_example_grad_norms
        return rep

    @locked
    def backward(self, grad_output: Any, accumulate: bool = False,
                 report: bool = True, per_example: bool = False) -> GradReport | None:
        """Backpropagate ``grad_output = dL/dy (B, out)`` through the last forward pass.

        Fills every parameter gradient (``accumulate=True`` adds to them instead)
        and ``input_grad = dL/dx``; returns the :class:`GradReport` (norms of the
        stored gradients). ``report=False`` computes the gradients only (the
        report's sums of squares are skipped) and returns None: the baseline the
        benchmark measures the report's cost against.

        Ctrl-C stops a forward or backward pass within a layer (KeyboardInterrupt). An
        interrupted forward keeps nothing (backward says so; batch-norm statistics are
        updated only by a complete forward); an interrupted backward keeps the forward
        but leaves the gradients partial: ``gc.optim`` steps refuse them until a
        backward completes or ``zero_grad()`` runs.

        ``per_example=True`` also gives every example's own gradient norm
        ``||grad l_i||`` (``L = mean_i l_i``: B times the example's share of the
        gradient), globally and per layer, and the gradient noise scale
        (``per_example_grad_norms``, ``per_example_layer_grad_norms``, ``noise_scale``);
        a ValueError with batch norm in training mode (examples are coupled).
        """
        if not self._core.has_forward:
            raise self._no_forward_error()
        B = self._core.forward_batch
        g = float_array(grad_output, "grad_output", self.dtype, (B, self.sizes[-1]))
        acc = check_bool(accumulate, "accumulate")
        rep = check_bool(report, "report")
        pe = self._check_per_example(per_example, rep)
        require(B * self.sizes[0] * self.dtype.itemsize,  # dL/dx
                lambda: f"grad_output: the backward pass of {self._describe()} over a "
                        f"batch of {B}")
        d, dx = self._compute("backward", self._core.backward, g, acc, rep, pe)
        self._input_grad = dx
        self._last_gy = self._kept_upstream("grad_output", g, grad_output)
        self._last_accumulate = acc
        self._example_norms = None
        if not rep:
            self._nonfinite_origin = None
            return None
        return self._report(d, accumulate=acc)

    @locked
    def loss_and_grad(
        self, x: Any, target: Any, loss: str = "mse", accumulate: bool = False,
        per_example: bool = False,
    ) -> tuple[float, GradReport]:
        """Forward, loss and backward in one call: returns ``(loss, report)``.

        ``loss="mse"``: ``mean((y - target)^2)``, target ``(B, out)`` in the model's
        dtype; ``loss="cross_entropy"``: integer class targets ``(B,)``.
        ``per_example=True``: as :meth:`backward`'s (``l_i`` is example i's own loss,
        the convention of ``torch.func.vmap(grad)``).
        """
        _losses.check_loss(loss)
        check_bool(accumulate, "accumulate")
        pe = self._check_per_example(per_example)
        xa = float_array(x, "x", self.dtype, (None, self.sizes[0]), copy=False)
        B = xa.shape[0]
        t = check_target(target, loss, self.dtype, (B, self.sizes[-1]))
        y = self.forward(xa)
        # the loss's float64 temporaries, then dL/dx
        require(6 * y.size * 8 + B * self.sizes[0] * self.dtype.itemsize,
                lambda: f"x: the loss and backward pass of {self._describe()} over shape "
                        f"{shape_str(xa.shape)}")
        with np.errstate(all="ignore"):  # an overflowed forward gives a NaN loss, not a warning
            value, dy = _losses.value_and_grad(y, t, loss)
        # straight to the core: a non-finite dL/dy is a result here (reported), not bad input
        gy = np.ascontiguousarray(dy, dtype=self.dtype)
        d, dx = self._compute("backward", self._core.backward, gy, bool(accumulate), True, pe)
        self._input_grad = dx
        self._last_gy = gy
        self._last_accumulate = bool(accumulate)
        loss_stage = None if math.isfinite(value) else "loss"
        if loss_stage is None and not np.isfinite(gy).all():
            loss_stage = "loss_gradient"
        rep = self._report(d, loss_stage, bool(accumulate))
        rep.loss = float(value)
        return float(value), rep

    @locked
    def _clip_per_example(self, max_norm: float) -> np.ndarray:
        """``gc.clip_per_example``: the last backward again with every example's dL/dy row
        scaled by ``min(1, max_norm / (||grad l_i|| + 1e-6))`` (so every dL/dz_i of every
        layer is), the gradients assigned. Returns the norms before clipping (B,)."""
        self._check_clippable(self._last_gy is not None, self._last_accumulate)
        self._check_per_example(True)
        gy = self._last_gy
        norms = self._example_norms
        if norms is None:  # the per-example norms of the last backward, once
            d, _ = self._compute("backward", self._core.backward, gy, False, True, True)
            norms = self._report(d).per_example_grad_norms
        assert norms is not None
        with np.errstate(all="ignore"):
            coef = np.minimum(max_norm / (norms + 1e-6), 1.0)
        scaled = np.ascontiguousarray(gy * coef.astype(self.dtype)[:, None], dtype=self.dtype)
        _, dx = self._compute("backward", self._core.backward, scaled, False, False, False)
        self._input_grad = dx
        self._example_norms = None  # the stored gradients are now the clipped ones
        self._last_gy = None
        return np.array(norms, dtype=np.float64)

    @property
    def input_grad(self) -> np.ndarray | None:
        """``dL/dx (B, in)`` of the last backward pass (None before any)."""
        return self._input_grad

    # ------------------------------------------------------------ signal propagation
    def _signal_input(self, x: Any, name: str = "x") -> np.ndarray:
        xa = float_array(x, name, self.dtype, (None, self.sizes[0]))
        check_blas_dim(xa.shape[0], f"{name}: batch size")
        return xa

    def _primal_bytes(self, B: int) -> int:
        """The core's primal pass of a linearisation over B rows (a generous bound)."""
        s = self.dtype.itemsize
        hidden = sum(self.sizes[1:-1])
        norm = (B + 2) * hidden if self.norm else 0
        return (B * (self.sizes[0] + 3 * hidden + self.sizes[-1]) + norm
                + 3 * max(self.sizes)) * s + (3 * B + 8) * max(self.sizes) * 8

    def _check_linearizable(self, what: str) -> None:
        if self.norm == "batch" and self.training:
            raise ValueError(
                f"{what}: batch norm in training mode normalises with the batch's own "
                "statistics, so its Jacobian couples the samples of the batch; call "
                "model.eval() first (it is then linearised with its running statistics)")

    @locked
    def linearize(self, x: Any) -> Linearization:
        """The model linearised at ``x (B, in)``: Jacobian-vector products in both
        directions (:class:`gradchain.linearize.Linearization`: ``jvp``, ``vjp``).

        The core runs its own primal pass at ``x``; the saved forward pass, the gradients
        and the batch-norm running statistics are left as they are. Batch norm must be in
        eval mode (a ValueError otherwise: in training mode its Jacobian couples the
        batch).
        """
        xa = self._signal_input(x)
        handle = self._linear_handle(xa, "linearize", self.flat_parameters().nbytes)
        return Linearization(self, handle, xa.copy())

    def _linear_handle(self, xa: np.ndarray, what: str, extra: int = 0) -> Any:
        """The core's linearisation at the checked input ``xa`` (its primal pass)."""
        self._check_linearizable(what)
        require(self._primal_bytes(xa.shape[0]) + extra,
                lambda: f"{what}: the primal pass of {self._describe()} over shape "
                        f"{shape_str(xa.shape)}")
        return self._core.linearize(xa, False, False, False)[0]

    @locked
    def preactivations(self, x: Any) -> list[np.ndarray]:
        """``z_l = a_{l-1} W_l^T + b_l`` of every hidden layer ``l = 1..L`` at ``x (B, in)``
        (before the norm): a list of ``(B, h_l)`` arrays, the measured side of
        ``gc.theory.propagate``. A forward pass that keeps nothing: the saved forward
        pass, the gradients and the running statistics are left as they are (batch norm in
        training mode normalises with the batch's statistics, as a forward pass would).
        """
        xa = self._signal_input(x)
        B = xa.shape[0]
        if self.norm == "batch" and self.training and B == 1:
            raise ValueError("x: batch norm in training mode needs more than 1 sample per "
                             "batch, got shape (1, ...) (use model.eval())")
        require(self._primal_bytes(B) + B * sum(self.sizes[1:-1]) * self.dtype.itemsize,
                lambda: f"preactivations: a forward pass of {self._describe()} over shape "
                        f"{shape_str(xa.shape)}")
        _, pre, _ = self._core.linearize(xa, True, True, False)
        out, at = [], 0
        for h in self.sizes[1:-1]:
            out.append(pre[at:at + B * h].reshape(B, h))
            at += B * h
        return out

    @locked
    def jacobian(self, x: Any, at: Any = None) -> np.ndarray | dict[int, np.ndarray]:
        """The input-output Jacobian ``dy/dx (out, in)`` at one input ``x`` (``(in,)`` or
        ``(1, in)``), computed in the core in forward mode: the identity pushed through
        the chain as ``in`` tangents (a chain of GEMMs, about the cost of a forward pass
        over a batch of ``in``).

        ``at``: a layer ``l`` in ``0..L+1`` gives the partial Jacobian ``da_l/dx (h_l,
        in)`` instead (``a_0 = x``: the identity; ``L+1``: ``y``); a sequence of them
        gives ``{l: Jacobian}``. Batch norm must be in eval mode.
        """
        a = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if getattr(a, "ndim", 0) == 1:
            a = a.reshape(1, -1)
        xa = self._signal_input(a)
        if xa.shape[0] != 1:
            raise ValueError(f"x: expected one input, shape ({self.sizes[0]},) or "
                             f"(1, {self.sizes[0]}), got {shape_str(np.shape(x))}")
        top = self.depth + 1
        layers, single = check_at(top if at is None else at, top)
        n = self.sizes[0]
        require(n * (n + 4 * max(self.sizes) + sum(self.sizes[i] for i in layers))
                * self.dtype.itemsize,
                lambda: f"jacobian: {n} tangents through {self._describe()}")
        handle = self._linear_handle(xa, "jacobian")
        out, rec = handle.jvp(np.eye(n, dtype=self.dtype), [i for i in layers if i < top])
        res = {i: np.ascontiguousarray((out if i == top else rec[i]).T) for i in layers}
        return res[layers[0]] if (at is None or single) else res

    @locked
    def probe(self, x: Any, n: int = 16, seed: int | None = 0) -> ProbeReport:
        """Loss-independent probes: ``n`` Gaussian vectors ``u (B, out)`` at the output,
        pulled back through the model linearised at ``x (B, in)`` in one batched pass
        through the core (``n * B`` cotangent rows). Returns a
        :class:`gradchain.linearize.ProbeReport` with ``||J_l^T u_p||^2`` per probe at
        every ``a_l`` (``l = 0..L``): ``factor`` (``E||J_l^T u||^2 / E||u||^2``), its
        ``spread`` over the probes and the per-layer ``step_factor`` that ``chi_1``
        predicts. Batch norm must be in eval mode. ``seed`` draws the probes.
        """
        xa = self._signal_input(x)
        self._check_linearizable("probe")
        B, K, L = xa.shape[0], self.sizes[-1], self.depth
        k = positive_int(n, "n")
        rows = k * B
        require(rows * (K + 3 * max(self.sizes)) * self.dtype.itemsize + rows * (L + 2) * 8,
                lambda: f"probe: {k} probes of a batch of {B} through {self._describe()}")
        U = probe_vectors(k, B, K, seed, self.dtype)
        ss = self._linear_handle(xa, "probe").vjp(U, False)[0]
        sq = ss.reshape(L + 1, k, B).sum(axis=2).T
        u_sq = np.square(U.astype(np.float64)).reshape(k, B * K).sum(axis=1)
        return ProbeReport("layer", self.report_axis.labels(L + 1), sq, u_sq, B)

    # ----------------------------------------------------- parameters, state
    def _state_keys(self) -> list[str]:
        keys = [k for k in self._params if k.startswith("layers.")]
        for layer in range(self.depth if self.norm else 0):
            p = f"norms.{layer}"
            keys += [f"{p}.weight", f"{p}.bias"]
            if self.norm == "batch":
                keys += [f"{p}.running_mean", f"{p}.running_var", f"{p}.num_batches_tracked"]
        return keys

    @locked
    def state_dict(self, *, copy: bool = False) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers under ``torch``'s names (``layers.{l}.weight``, ...,
        ``norms.{l}.running_mean``, ``norms.{l}.num_batches_tracked``): an equivalent
        PyTorch module with ``layers`` / ``norms`` ModuleLists loads it. Arrays are
        views of the model's memory (as PyTorch's state_dict shares storage), or copies
        taken under the model's lock with ``copy=True``."""
        return super().state_dict(copy=copy)

    def _ctor_args(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "activation": self.activation, "init": self.init,
                "norm": self.norm, "residual": list(self.residual),
                "residual_scale": self.residual_scale, "bias": self.bias,
                "dtype": self.dtype, "eps": self.eps, "momentum": self.momentum}

    def _rebuild(self, kwargs: dict[str, Any]) -> None:
        MLP.__init__(self, **kwargs)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready), as ``gc.save`` stores them."""
        return {
            "kind": self.config_kind,
            "sizes": list(self.sizes),
            "activation": self.activation.to_config(),
            "init": self.init.to_config(),
            "norm": self.norm,
            "residual": list(self.residual),
            "residual_scale": self.residual_scale,
            "bias": self.bias,
            "dtype": self.dtype.name,
            "eps": self.eps,
            "momentum": self.momentum,
            "training": self.training,
        }

    # ------------------------------------------------------------ the model protocol
    kind = "mlp"
    config_kind = "MLP"
    config_keys = frozenset({"sizes", "norm", "residual", "residual_scale", "eps", "momentum"})
    optional_config_keys = frozenset({"training"})
    report_axis = ReportAxis("layer", "a", 0, "activation_grad_norms",
                             "layer l (||dL/da_l||)", "||dL/da_0||/||dL/da_L||")
    has_modes = True
    lab = MLPLab()

    @classmethod
    def _read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader,
                     n_members: int | None) -> dict[str, Any]:
        sizes = cfg["sizes"]
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise reader.fail(f"config: sizes must be a list of at least 2 ints, got "
                              f"{reader.json_type(sizes)}" + (f" of {len(sizes)}" if isinstance(
                                  sizes, list) else ""))
        if n_members is not None and len(sizes) - 1 > n_members:
            # one weight per layer at least: before any loop
            raise reader.fail(f"config: sizes describes {len(sizes) - 1} layers, but the "
                              f"archive holds {n_members} arrays")
        out: dict[str, Any] = {"sizes": [reader.integer(v, f"sizes[{i}]")
                                         for i, v in enumerate(sizes)]}
        L = len(sizes) - 2
        norm = cfg["norm"]
        if norm not in NORMS:
            raise reader.fail(f"config: norm must be null, 'batch' or 'layer', got "
                              f"{reader.short(norm)}")
        out["norm"] = norm
        res = cfg["residual"]
        if not isinstance(res, list) or len(res) != L:
            raise reader.fail(f"config: residual must be a list of {L} bools (one per hidden "
                              f"layer), got {reader.json_type(res)}"
                              + (f" of {len(res)}" if isinstance(res, list) else ""))
        out["residual"] = [reader.flag(v, f"residual[{i}]") for i, v in enumerate(res)]
        out["residual_scale"] = reader.number(cfg["residual_scale"], "residual_scale")
        out["eps"] = reader.number(cfg["eps"], "eps")
        if out["eps"] <= 0:
            raise reader.fail(f"config: eps must be > 0, got {out['eps']}")
        out["momentum"] = reader.number(cfg["momentum"], "momentum")
        if not 0 <= out["momentum"] <= 1:
            raise reader.fail(f"config: momentum must be in [0, 1], got {out['momentum']}")
        return out

    @classmethod
    def tensor_shapes(cls, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        sz, norm = kwargs["sizes"], kwargs.get("norm")
        for i, (a, b) in enumerate(zip(sz[:-1], sz[1:], strict=False)):
            out[f"layers.{i}.weight"] = (b, a)
            if kwargs.get("bias", True):
                out[f"layers.{i}.bias"] = (b,)
        if norm:
            for i, h in enumerate(sz[1:-1]):
                names = ["weight", "bias"] + (
                    ["running_mean", "running_var", "num_batches_tracked"]
                    if norm == "batch" else [])
                for n in names:
                    out[f"norms.{i}.{n}"] = () if n == "num_batches_tracked" else (h,)
        return out

    @classmethod
    def describe_config(cls, kwargs: Mapping[str, Any]) -> str:
        dt = np.dtype(kwargs.get("dtype", np.float32))
        return f"{cls.__name__} with sizes {_short_sizes(kwargs['sizes'])} ({dt.name})"

    def check_data(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                   name: str = "data") -> DataSet:
        """``x (N, in)``; target ``(N, out)`` (mse, the model's dtype) or ``(N,)`` class
        indices (cross_entropy)."""
        xa = float_array(x, f"{name}[0]", self.dtype, ("N", self.sizes[0]))
        n = xa.shape[0]
        t = check_target(target, loss, self.dtype, (n, self.sizes[-1]), f"{name}[1]")
        return DataSet(xa, t, 0, 0, n)

    def loss_options(self, on: str = "last") -> dict[str, Any]:
        """None: an MLP's loss is on its one output (``on="last"``)."""
        if on != "last":
            raise ValueError(f"on: only an RNN takes on='all', got on={on!r} for an MLP")
        return {}

    def loss_outputs(self, x: Any, on: str = "last") -> np.ndarray:
        return np.asarray(self.forward(x))

    def check_batch_size(self, batch_size: int, n: int) -> None:
        if self.norm == "batch" and (batch_size == 1 or n % batch_size == 1):
            raise ValueError(
                f"batch_size: with batch norm a mini-batch would hold 1 sample "
                f"(N={n}, batch_size={batch_size}); choose a batch_size > 1 that leaves a "
                "remainder other than 1 (as torch.nn.BatchNorm1d, batch norm cannot train on "
                "1 sample)")

    def grad_norm_labels(self, data: DataSet) -> list[str]:
        return self.report_axis.labels(self.depth + 1)

    def weight_norm_labels(self) -> list[str]:
        return [f"layers.{i}.weight" for i in range(self.depth + 1)]

    def report_weight_norms(self, report: Any) -> np.ndarray:
        return np.array(report.weight_grad_norms, dtype=np.float64)

    def _describe(self) -> str:
        """``gc.MLP(sizes=[...], dtype=float32)``, for messages."""
        return f"gc.MLP(sizes={_short_sizes(self.sizes)}, dtype={self.dtype.name})"

    def __repr__(self) -> str:
        res = sum(self.residual)
        return (
            f"MLP(sizes={_short_sizes(self.sizes)}, activation={self.activation!r}, "
            f"init={self.init!r}, norm={self.norm!r}, residual={res}/{self.depth} layers, "
            f"dtype={self.dtype.name})"
        )


def _short_sizes(sizes: list[int]) -> str:
    if len(sizes) <= 8:
        return str(sizes)
    hidden = sizes[1:-1]
    if all(h == hidden[0] for h in hidden):
        return f"[{sizes[0]}] + [{hidden[0]}] * {len(hidden)} + [{sizes[-1]}]"
    return f"[{sizes[0]}, {sizes[1]}, ..., {sizes[-2]}, {sizes[-1]}]"

