"""The models: :class:`MLP` (a deep chain of Linear -> [Norm] -> activation layers)."""

from __future__ import annotations

import copy as _copy
import functools
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar, cast, overload

import numpy as np

from . import _core
from . import activations as _acts
from . import init as _init
from . import losses as _losses
from ._memory import check_blas_dim, mlp_bytes, require
from ._validate import (
    as_array,
    check_bool,
    contiguous,
    first_nonfinite,
    float_array,
    model_dtype,
    positive_int,
    real,
    shape_str,
)
from .report import GradReport

__all__ = ["MLP", "StateError", "IncompatibleKeys"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


_NORMS = {None: 0, "none": 0, "batch": 1, "layer": 2}


class StateError(RuntimeError, ValueError):
    """A call made in the wrong state (e.g. ``backward`` before ``forward``)."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


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


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    return positive_int(seed, "seed", minimum=0)


_F = TypeVar("_F", bound=Callable[..., Any])


def locked(fn: _F) -> _F:
    """Run a method under the model's lock (``model._lock``, re-entrant), refusing a call
    from the model's own custom activation (:func:`check_not_running`)."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if getattr(self, "_running", None) is not None:
                check_not_running(self, f"{type(self).__name__}.{fn.__name__}")
            return fn(self, *args, **kwargs)

    return cast(_F, wrapper)


def check_not_running(model: Any, what: str) -> None:
    """Raise RuntimeError when one of ``model``'s passes is running: call with the model's
    lock held. The lock is re-entrant and only the thread running the pass can hold it, so
    this is a call back into the model from its own custom activation, which runs in the
    middle of the pass (with the core's lock on the model held: the call would wait for it
    for ever)."""
    running = getattr(model, "_running", None)
    if running is not None:
        raise RuntimeError(f"{type(model).__name__}.{running} is running on this model; a "
                           f"custom activation may not call {what} on the model it belongs to")


def tracks_forward(fn: _F) -> _F:
    """Remember why a forward pass failed or was rejected (``model._forward_error``), so
    that a later ``backward`` can say so instead of "called before forward()"."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            out = fn(self, *args, **kwargs)
        except BaseException as e:
            text = " ".join(str(e).split())
            text = text if len(text) <= 200 else text[:197] + "..."
            self._forward_error = f"{type(e).__name__}: {text}" if text else type(e).__name__
            raise
        self._forward_error = None
        return out

    return cast(_F, wrapper)


def no_forward_message(model: Any) -> str:
    """What a backward with no forward pass to go back through says."""
    failed = getattr(model, "_forward_error", None)
    if failed is not None:
        return (f"backward(): the last forward() failed or was rejected ({failed}), so there "
                "is no forward pass to backpropagate through; run model.forward(x) again")
    return "backward() called before forward(): run model.forward(x) first"


class _Chain:
    """What every gradchain model shares: NumPy views of the core's flat parameter,
    gradient and buffer memory, and the state-dict protocol (PyTorch's names).

    Threads: every method that reads or writes the model's memory (forward, backward,
    loss_and_grad, zero_grad, state_dict, load_state_dict, reset_parameters, train/eval)
    holds the model's re-entrant lock, as do ``gc.optim`` steps and the ``gc.clip_*``
    functions, so two threads sharing a model take turns instead of mixing state.
    The arrays that ``parameters()``, ``grads()`` and ``state_dict()`` return are views,
    so reading them while another thread trains sees a step half-done: take a snapshot
    with ``state_dict(copy=True)`` (copied under the lock), or hold ``model.lock`` (the
    same re-entrant lock) around your own reads and writes of the views.

    Pickling and copies: ``pickle`` (protocols 0-5) and ``copy.deepcopy`` carry the
    configuration and every observable piece of state - parameters, gradients,
    batch-norm running statistics and ``num_batches_tracked``, train/eval mode,
    ``input_grad`` / ``h0_grad`` / ``outputs`` of the last pass and public attributes
    (``seed``, your own) - so the copy computes bit for bit what the original does and
    trains independently of it. The saved activations of a forward pass are not
    carried: run ``forward`` again before ``backward`` (as after ``load_state_dict``).
    A custom activation pickles when its callables do (module-level functions);
    otherwise pickling raises ``pickle.PicklingError`` naming it (``deepcopy`` shares
    the callables, so it always works). ``copy.copy`` is *not* PyTorch's shallow copy
    that shares parameter tensors: the model's memory is one block owned by its C++
    core, together with the forward pass in flight, so a copy sharing it would let one
    object's ``forward`` feed the other's ``backward``. ``copy.copy`` therefore copies the
    core's memory too (a new, independent model) and shares only the attribute values
    (activation, init scheme, lists) with the original; use ``copy.deepcopy`` to copy
    those as well. A snapshot is taken under the model's lock.
    """

    _core: Any
    dtype: np.dtype
    _num_batches_tracked: np.ndarray

    def _bind_views(self) -> None:
        self._lock = threading.RLock()
        self._running: str | None = None  # the pass in progress ("forward"), see _compute
        self._forward_interrupted = False  # the last forward was stopped by Ctrl-C
        self._grads_interrupted = False    # the last backward was: the gradients are partial
        flat_p = self._core.param_array()
        flat_g = self._core.grad_array()
        flat_b = self._core.buffer_array() if hasattr(self._core, "buffer_array") else None
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
        for name, off, shape, kind in self._core.tensors():
            n = int(np.prod(shape))
            if kind == 0:
                self._params[name] = flat_p[off:off + n].reshape(shape)
                self._grads[name] = flat_g[off:off + n].reshape(shape)
            else:
                self._buffers[name] = flat_b[off:off + n].reshape(shape)
        self._num_batches_tracked = np.zeros(0, dtype=np.int64)

    def named_parameters(self) -> list[tuple[str, np.ndarray]]:
        """(name, array) pairs: writable NumPy views of the core's parameter memory."""
        return list(self._params.items())

    def parameters(self) -> list[np.ndarray]:
        return list(self._params.values())

    def named_grads(self) -> list[tuple[str, np.ndarray]]:
        """(name, array) pairs: writable views of the gradients of the last backward."""
        return list(self._grads.items())

    def grads(self) -> list[np.ndarray]:
        return list(self._grads.values())

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """Batch-norm running statistics (views)."""
        return list(self._buffers.items())

    @locked
    def zero_grad(self) -> None:
        for g in self._grads.values():
            g[...] = 0.0
        self._grads_interrupted = False

    def _compute(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the core's pass ``fn(*args)`` (``what``: "forward" or "backward"), with the
        model's lock held by the caller.

        While it runs the model is marked busy (:func:`check_not_running`). Ctrl-C stops the
        pass within a layer or timestep (the core's KeyboardInterrupt): an interrupted
        forward keeps nothing (``backward`` then says so; running statistics are committed
        only by a complete forward), an interrupted backward keeps the forward but leaves
        the gradients partial, which ``gc.optim`` steps refuse until a backward completes or
        ``zero_grad()`` runs. (A KeyboardInterrupt raised just after a complete pass finds
        the forward saved, or marks complete gradients partial: the safe side.)
        """
        self._running = what
        try:
            out = fn(*args)
            if what == "forward":
                self._forward_interrupted = False
            else:
                self._grads_interrupted = False
            return out
        except KeyboardInterrupt:
            if what == "forward":  # a forward the core stopped has nothing saved
                self._forward_interrupted = not self._core.has_forward
            else:
                self._grads_interrupted = True
            raise
        finally:
            self._running = None

    def _no_forward_error(self) -> StateError:
        if self._forward_interrupted:
            return StateError("backward() after an interrupted forward(): the forward pass was "
                              "stopped (KeyboardInterrupt) and kept nothing; run "
                              "model.forward(x) again")
        return StateError(no_forward_message(self))

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self._params.values()))

    def _state_keys(self) -> list[str]:
        return list(self._params)

    def _describe(self) -> str:
        """The model in a few words, for messages (each model says more)."""
        return type(self).__name__

    @property
    def lock(self) -> threading.RLock:
        """The model's re-entrant lock: every gradchain call that touches the model holds
        it; hold it yourself (``with model.lock:``) around direct reads or writes of the
        parameter / gradient views while other threads use the model."""
        return self._lock

    @locked
    def state_dict(self, *, copy: bool = False) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers under ``torch``'s names. The arrays are views of the
        model's memory (as PyTorch's state_dict shares storage); ``copy=True`` returns
        copies taken under the model's lock, a consistent snapshot even while another
        thread is training the model."""
        copy = check_bool(copy, "copy")
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for k in self._state_keys():
            if k.endswith("num_batches_tracked"):  # a 0-d view, as torch's buffer
                layer = int(k.split(".")[1])
                out[k] = self._num_batches_tracked[layer:layer + 1].reshape(())
            else:
                out[k] = self._params[k] if k in self._params else self._buffers[k]
        if copy:
            require(sum(v.nbytes for v in out.values()),
                    lambda: f"state_dict(copy=True): a copy of the {len(out)} tensors of "
                            f"{self._describe()}")
            for k in out:
                out[k] = out[k].copy()
        return out

    @locked
    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, allow_nonfinite: bool = False
    ) -> IncompatibleKeys:
        """Copy parameters and buffers in (NumPy arrays or torch tensors, any float dtype).

        Everything is checked (keys, shapes, dtypes and, unless ``allow_nonfinite``,
        finiteness) before anything is written, so a rejected call leaves the model
        unchanged. ``allow_nonfinite=True`` loads a diverged model for inspection.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        expected = self._state_keys()
        missing = [k for k in expected if k not in state_dict]
        known = set(expected)  # a set: the list would make this quadratic in the layers
        unexpected = [k for k in state_dict if k not in known]
        if strict and (missing or unexpected):
            raise ValueError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                + (f"missing keys {missing}" if missing else "")
                + ("; " if missing and unexpected else "")
                + (f"unexpected keys {unexpected}" if unexpected else "")
            )
        staged: list[tuple[str, np.ndarray]] = []
        for k in expected:
            if k not in state_dict:
                continue
            a = as_array(state_dict[k], f"state_dict[{k!r}]")
            if k.endswith("num_batches_tracked"):
                if a.dtype.kind not in "iu" or a.size != 1:
                    raise TypeError(
                        f"state_dict[{k!r}]: expected an integer scalar, got {a.dtype} "
                        f"shape {shape_str(a.shape)}")
                staged.append((k, a.reshape(())))
                continue
            target = self._params[k] if k in self._params else self._buffers[k]
            if a.dtype.kind != "f":
                raise TypeError(f"state_dict[{k!r}]: expected a float array, got dtype {a.dtype}")
            if a.shape != target.shape:
                raise ValueError(
                    f"state_dict[{k!r}]: expected shape {shape_str(target.shape)}, "
                    f"got {shape_str(a.shape)}")
            if not allow_nonfinite and first_nonfinite(a) is not None:
                raise ValueError(f"state_dict[{k!r}] contains NaN or Inf (pass "
                                 "allow_nonfinite=True to load it anyway)")
            staged.append((k, a))
        for k, a in staged:
            if k.endswith("num_batches_tracked"):
                self._num_batches_tracked[int(k.split(".")[1])] = int(a)
            else:
                target = self._params[k] if k in self._params else self._buffers[k]
                target[...] = a
        self._core.invalidate()
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ pickling, copies
    _PICKLE_VERSION = 1
    #: private attributes that hold results of the last pass (copied as they are)
    _LAST_PASS = ("_input_grad", "_h0_grad", "_outputs")

    def _ctor_args(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model's configuration (no seed)."""
        raise NotImplementedError

    def _rebuild(self, kwargs: dict[str, Any]) -> None:
        """Run the model class's own ``__init__`` with ``kwargs``."""
        raise NotImplementedError

    def _snapshot(self) -> dict[str, Any]:
        """Everything a copy needs, the arrays copied, taken under the model's lock."""
        with self._lock:
            core = self._core
            return {
                "version": self._PICKLE_VERSION,
                "ctor": self._ctor_args(),
                "params": core.param_array().copy(),
                "grads": core.grad_array().copy(),
                "buffers": core.buffer_array().copy() if hasattr(core, "buffer_array")
                else None,
                "num_batches_tracked": self._num_batches_tracked.copy(),
                "training": getattr(core, "training", None),
                "last": {k: (None if getattr(self, k) is None else getattr(self, k).copy())
                         for k in self._LAST_PASS if hasattr(self, k)},
                "attrs": {k: v for k, v in vars(self).items() if not k.startswith("_")},
            }

    def __getstate__(self) -> dict[str, Any]:
        act = getattr(self, "activation", None)
        if act is not None and act.is_custom:
            for what, fn in (("f", act.f), ("df", act.df)):
                try:
                    pickle.dumps(fn)
                except Exception as e:  # noqa: BLE001  (PicklingError, AttributeError, ...)
                    raise pickle.PicklingError(
                        f"cannot pickle this {type(self).__name__}: its custom activation "
                        f"{act.name!r} has {what}={fn!r}, which does not pickle ({e}). "
                        "Define f and df as module-level functions (pickle stores them by "
                        "name), or send gc.save's file and gc.load(path, activation=...) "
                        "it where it is needed; copy.deepcopy works either way.") from None
        return self._snapshot()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != self._PICKLE_VERSION:
            raise ValueError(f"cannot unpickle {type(self).__name__}: unknown state format "
                             f"{state.get('version') if isinstance(state, dict) else state!r}")
        self._rebuild(dict(state["ctor"]))
        core = self._core
        dst = [("params", core.param_array()), ("grads", core.grad_array())]
        if state["buffers"] is not None:
            dst.append(("buffers", core.buffer_array()))
        for key, target in dst:
            src = np.asarray(state[key])
            if src.shape != target.shape or src.dtype != target.dtype:
                raise ValueError(
                    f"cannot unpickle {type(self).__name__}: {key} of shape "
                    f"{shape_str(src.shape)} {src.dtype} do not fit the configuration "
                    f"({shape_str(target.shape)} {target.dtype})")
            target[...] = src
        self._num_batches_tracked[...] = state["num_batches_tracked"]
        if state["training"] is not None:
            core.training = bool(state["training"])
        for k, v in state["last"].items():
            setattr(self, k, v)
        for k, v in state["attrs"].items():
            setattr(self, k, v)
        core.invalidate()

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        state = self._snapshot()  # the arrays are fresh copies already
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state["ctor"] = _copy.deepcopy(state["ctor"], memo)
        state["attrs"] = _copy.deepcopy(state["attrs"], memo)
        new.__setstate__(state)
        return new

    def __copy__(self) -> Any:
        new = type(self).__new__(type(self))
        new.__setstate__(self._snapshot())
        return new


class MLP(_Chain):
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
                 report: Literal[True] = ...) -> GradReport: ...

    @overload
    def backward(self, grad_output: Any, accumulate: bool = ..., *,
                 report: Literal[False]) -> None: ...

    @locked
    def backward(self, grad_output: Any, accumulate: bool = False,
                 report: bool = True) -> GradReport | None:
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
        """
        if not self._core.has_forward:
            raise self._no_forward_error()
        B = self._core.forward_batch
        g = float_array(grad_output, "grad_output", self.dtype, (B, self.sizes[-1]))
        acc = check_bool(accumulate, "accumulate")
        rep = check_bool(report, "report")
        require(B * self.sizes[0] * self.dtype.itemsize,  # dL/dx
                lambda: f"grad_output: the backward pass of {self._describe()} over a "
                        f"batch of {B}")
        d, dx = self._compute("backward", self._core.backward, g, acc, rep)
        self._input_grad = dx
        if not rep:
            return None
        return GradReport._from_core(d, [f"layers.{i}" for i in range(self.depth + 1)])

    @locked
    def loss_and_grad(
        self, x: Any, target: Any, loss: str = "mse", accumulate: bool = False
    ) -> tuple[float, GradReport]:
        """Forward, loss and backward in one call: returns ``(loss, report)``.

        ``loss="mse"``: ``mean((y - target)^2)``, target ``(B, out)`` in the model's
        dtype; ``loss="cross_entropy"``: integer class targets ``(B,)``.
        """
        _losses.check_loss(loss)
        check_bool(accumulate, "accumulate")
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
        d, dx = self._compute("backward", self._core.backward,
                              np.ascontiguousarray(dy, dtype=self.dtype), accumulate, True)
        self._input_grad = dx
        rep = GradReport._from_core(d, [f"layers.{i}" for i in range(self.depth + 1)])
        rep.loss = float(value)
        return float(value), rep

    @property
    def input_grad(self) -> np.ndarray | None:
        """``dL/dx (B, in)`` of the last backward pass (None before any)."""
        return self._input_grad

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
            "kind": "MLP",
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


def _core_message(e: BaseException) -> str:
    """The core's allocation message (it names the buffer and the bytes); pybind11's
    bare "std::bad_alloc" is said in words."""
    text = str(e)
    return "out of memory" if text in ("", "std::bad_alloc") else text


def _short_sizes(sizes: list[int]) -> str:
    if len(sizes) <= 8:
        return str(sizes)
    hidden = sizes[1:-1]
    if all(h == hidden[0] for h in hidden):
        return f"[{sizes[0]}] + [{hidden[0]}] * {len(hidden)} + [{sizes[-1]}]"
    return f"[{sizes[0]}, {sizes[1]}, ..., {sizes[-2]}, {sizes[-1]}]"


def _custom_callback(act: _acts.Activation):  # noqa: ANN202
    f, df = act.f, act.df

    def call(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fx = np.asarray(f(x))
        dx = np.asarray(df(x))
        for what, v in (("f", fx), ("df", dx)):
            if v.shape != x.shape:
                raise ValueError(
                    f"custom activation {act.name!r}: {what}(x) returned shape "
                    f"{shape_str(v.shape)}, expected {shape_str(x.shape)}")
        return (np.ascontiguousarray(fx, dtype=x.dtype), np.ascontiguousarray(dx, dtype=x.dtype))

    return call


def check_target(target: Any, loss: str, dtype: np.dtype, y_shape: tuple[int, ...],
                 name: str = "target") -> np.ndarray:
    """Validate a loss target (called ``name`` in errors) against the output shape
    ``y_shape``: mse takes ``y_shape`` in the model's dtype, cross_entropy integer class
    indices of shape ``y_shape[:-1]`` in ``[0, y_shape[-1])``."""
    if loss == "mse":
        return float_array(target, name, dtype, y_shape)
    t = as_array(target, name)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: cross_entropy takes integer class indices, got dtype {t.dtype}")
    want = y_shape[:-1]
    if t.shape != want:
        raise ValueError(f"{name}: expected shape {shape_str(want)}, got {shape_str(t.shape)}")
    k = y_shape[-1]
    if t.size and (t.min() < 0 or t.max() >= k):
        raise ValueError(f"{name}: class indices must be in [0, {k}), got range "
                         f"[{t.min()}, {t.max()}]")
    return np.ascontiguousarray(t, dtype=np.int64)
