"""What every gradchain model shares, and the model protocol.

:class:`Model` holds the machinery of every chain (NumPy views of the core's flat
memory, the lock, the state-dict protocol, pickling) and the *protocol* through which
the rest of the package uses a model without knowing its kind: building it from a
config (:meth:`Model.from_config`, :meth:`Model.read_config`), the tensors a config
implies (:meth:`Model.tensor_shapes`), the report's axis (:attr:`Model.report_axis`),
the data axes (:meth:`Model.check_data`), the loss options (:meth:`Model.loss_options`),
the flat parameter / gradient buffers and the lock (:meth:`Model.exclusive`), and
:attr:`Model.lab`: what ``gc.sweep``, the CLI's probe and ``gc.theory`` need of a kind.

The registry :data:`MODELS` maps a kind (``"mlp"``, ``"rnn"``) to its class; a class
joins it with the :func:`register` decorator. Adding a model kind is one module in
``gradchain/models/`` holding a registered :class:`Model` subclass (the package imports
every module in its folder).
"""

from __future__ import annotations

import copy as _copy
import functools
import math
import pickle
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, cast

import numpy as np

from .. import activations as _acts
from .. import init as _init
from .._validate import as_array, check_bool, positive_int, shape_str

__all__ = [
    "MODELS", "DEFAULT_KIND", "ConfigReader", "DataSet", "GradKernels", "IncompatibleKeys",
    "Lab", "Model", "ProbeFlag", "ProbeShapes", "ReportAxis", "StateError", "config_kinds",
    "describe_kinds", "from_config", "get", "register",
]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _hooks() -> Any:
    """The package ``gradchain.models``: the models look ``require`` (the memory check)
    and ``first_nonfinite`` up there at call time, so that replacing
    ``gradchain.models.require`` (as a test that switches the check off does) reaches
    every model, as when the models were one module."""
    return sys.modules[__package__]


def _require(nbytes: int, what: Any) -> None:
    """``gradchain._memory.require`` as ``gradchain.models.require`` is now (:func:`_hooks`)."""
    _hooks().require(nbytes, what)


# ============================================================================ protocol
@dataclass(frozen=True)
class ReportAxis:
    """What a model's gradient report runs along (the quantity ``ratio``, ``log10_slope``
    and the lab's tables and heat maps use).

    ``name``: "layer" or "timestep"; ``symbol`` and ``first``: the labels
    (``a0, a1, ...`` from 0 for the MLP's ``||dL/da_l||``, ``h1, h2, ...`` from 1 for the
    RNN's ``||dL/dh_t||``); ``norms``: the report attribute holding the norms;
    ``title``: a plot's axis title; ``ratio``: what the report's ``ratio`` divides.
    """

    name: str
    symbol: str
    first: int
    norms: str
    title: str
    ratio: str

    def labels(self, n: int) -> list[str]:
        """The labels of ``n`` norms along the axis (``["a0", ..., "aL"]``)."""
        return [f"{self.symbol}{i}" for i in range(self.first, self.first + n)]

    def of(self, report: Any) -> Any:
        """The report's norms along the axis (``report.activation_grad_norms``, ...)."""
        return getattr(report, self.norms)


@dataclass
class DataSet:
    """A checked data set ``(x, target)`` of ``n`` samples (what :meth:`Model.check_data`
    returns): the sample (batch) axis of ``x`` is ``x_axis``, that of the target
    ``target_axis``; :meth:`batch` cuts a mini-batch along them."""

    x: np.ndarray
    target: np.ndarray
    x_axis: int
    target_axis: int
    n: int

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The samples ``idx`` (indices along the sample axes): ``(x, target)``."""
        return (np.take(self.x, idx, axis=self.x_axis),
                np.take(self.target, idx, axis=self.target_axis))


class GradKernels(Protocol):
    """The core's gradient kernels that :meth:`Model.exclusive` hands to ``gc.clip_*``."""

    def clip_grad_norm(self, max_norm: float, error_if_nonfinite: bool) -> float: ...

    def clip_grad_value(self, clip_value: float) -> None: ...

    def clip_grad_norm_per_tensor(self, max_norm: float) -> list[float]: ...

    def grad_norms(self) -> list[float]: ...


class ProbeShapes(NamedTuple):
    """The probe batch of a sweep configuration (:meth:`Lab.probe_shapes`): the input's
    shape, the target's leading shape (the class indices' shape for cross_entropy; mse
    appends ``classes``), the output width and the ``loss_and_grad`` options."""

    x: tuple[int, ...]
    lead: tuple[int, ...]
    classes: int
    loss_options: dict[str, Any]


@dataclass(frozen=True)
class ProbeFlag:
    """One flag of ``gradchain probe`` that a model kind owns (``--depth``, ``--steps``):
    its name (without dashes), default, help text and argparse type / choices /
    metavar; ``limits`` (lo, hi) for an int flag the CLI's ``LIMITS`` table lacks."""

    name: str
    default: Any
    help: str
    type: Any = int
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    limits: tuple[int, int] | None = None


class Lab:
    """What the research lab needs of one model kind: ``gc.sweep`` (its options, how a
    configuration resolves, builds its model, draws its probe batch and trains),
    ``gradchain probe`` (its flags, model and batch) and ``gc.theory`` (the mean-field
    setting). One instance per kind, in the model class's ``lab`` attribute; ``model``
    is bound to the class that defines it."""

    model: type[Model]
    #: every sweep option of the kind with its default, in the order records list them
    sweep_defaults: Mapping[str, Any] = {}
    #: extra sweep-option checkers ``name -> check(value, name)`` (gc.sweep's own table
    #: covers the options of the built-in kinds)
    sweep_checks: Mapping[str, Callable[[Any, str], Any]] = {}
    #: the training data sets ``gc.sweep(train=...)`` offers for the kind, default first
    train_data: tuple[str, ...] = ()
    #: data set -> the options it implies where they are not given
    data_implies: Mapping[str, Mapping[str, Any]] = {}
    #: ``gradchain probe``'s flags of this kind
    probe_flags: tuple[ProbeFlag, ...] = ()
    #: whether ``gc.theory``'s mean-field comparison applies to the kind
    mean_field_theory: bool = False

    # ------------------------------------------------------------------ gc.sweep
    def resolve(self, cfg: dict[str, Any], where: str) -> None:
        """Fill the derived options of a configuration and check the cross-option rules
        (in place; ``where`` names the configuration in errors)."""

    def build(self, cfg: Mapping[str, Any], init: Any, dtype: np.dtype, seed: int) -> Model:
        """The model of a resolved configuration (``init``: the scheme, sigmas applied)."""
        raise NotImplementedError

    def probe_shapes(self, cfg: Mapping[str, Any]) -> ProbeShapes:
        """The probe batch's shapes and the loss options of a configuration."""
        raise NotImplementedError

    def check_training(self, data: str, cfg: Mapping[str, Any], where: str) -> None:
        """ValueError unless the configuration can train on data set ``data``."""
        if data not in self.train_data:
            raise ValueError(f"train['data']: {self.model.__name__} trains on "
                             f"{', '.join(map(repr, self.train_data))}, got {data!r} "
                             f"(in {where})")

    def training_data(self, name: str, cfg: Mapping[str, Any], n: int, seed: int,
                      dtype: np.dtype) -> tuple[Any, Any, Any]:
        """``(x, target, val)`` of data set ``name`` for a configuration (``val``: a
        held-out ``(x, target)`` or None); depends on ``seed``, not on the run."""
        raise NotImplementedError

    def run_bytes(self, cfg: Mapping[str, Any], batch: int) -> int:
        """A generous estimate of the peak bytes of one probe of ``cfg`` over ``batch``."""
        raise NotImplementedError

    # ------------------------------------------------------------ gradchain probe
    def probe_config(self, opts: Any) -> dict[str, Any]:
        """The probe's configuration in sweep terms (for its memory estimate)."""
        raise NotImplementedError

    def probe_what(self, opts: Any, init: str) -> str:
        """The probed configuration in words (``init``: the scheme as written)."""
        raise NotImplementedError

    def probe_model(self, opts: Any, init: Any, dtype: Any) -> tuple[tuple[Any, ...],
                                                                    dict[str, Any]]:
        """The constructor's positional and keyword arguments of the probed model."""
        raise NotImplementedError

    def probe_batch(self, opts: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(x, target, loss options)`` of the probe's one mse pass."""
        raise NotImplementedError

    # ---------------------------------------------------------------- gc.theory
    def mean_field(self, model: Any) -> tuple[_acts.Activation, float, float, int]:
        """``(activation, sigma_w, sigma_b, depth)`` of a model the mean-field theory
        describes; ValueError naming what is in the way."""
        raise NotImplementedError


class ConfigReader:
    """Checks the values of a model config (a JSON object: ``Model.config()``, or what
    ``gc.load`` reads from an untrusted file) and raises ``error`` (ValueError; ``gc.load``
    its own) with a message naming the key. Integers are bounded by ``max_size``."""

    max_size = 1 << 31  # a layer width / RNN size past this is not a model
    _INIT_KEYS: ClassVar[dict[str, set[str]]] = {"normal": {"name", "gain", "sigma_w",
                                                            "sigma_b"}}

    def __init__(self, error: Callable[[str], BaseException] = ValueError) -> None:
        self.error = error

    def fail(self, message: str) -> BaseException:
        """The exception to raise for a malformed config."""
        return self.error(message)

    @staticmethod
    def json_type(v: Any) -> str:
        return {dict: "an object", list: "a list", str: "a string", bool: "a bool",
                int: "an int", float: "a number", type(None): "null"}.get(type(v),
                                                                         type(v).__name__)

    @staticmethod
    def short(v: Any) -> str:
        s = repr(v)
        return s if len(s) <= 60 else s[:57] + "..."

    @staticmethod
    def first(names: list[str], n: int = 5) -> str:
        """The first n names, and how many there are in all when that is more."""
        shown = ", ".join(repr(k[:100]) for k in names[:n])
        return f"[{shown}]" if len(names) <= n else f"[{shown}, ...] ({len(names)} in all)"

    def integer(self, v: Any, name: str, lo: int = 1, hi: int | None = None) -> int:
        hi = self.max_size if hi is None else hi
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"config: {name} must be an int, got {self.json_type(v)}")
        if not lo <= v <= hi:
            raise self.fail(f"config: {name} must be in [{lo}, {hi}], got {self.short(v)}")
        return v

    def number(self, v: Any, name: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"config: {name} must be a number, got {self.json_type(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise self.fail(f"config: {name} must be finite, got {self.short(v)}")
        return f

    def flag(self, v: Any, name: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(f"config: {name} must be true or false, got {self.json_type(v)}")
        return v

    def init(self, v: Any, name: str) -> _init.Init:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise self.fail(f"config: {name} must be an object with a name, got "
                            f"{self.short(v)}")
        scheme = v["name"]
        if scheme not in _init.SCHEMES:
            raise self.fail(f"config: {name}: unknown scheme {self.short(scheme)}")
        allowed = self._INIT_KEYS.get(scheme, {"name", "gain"})
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise self.fail(f"config: {name}: unknown keys {self.first(unknown)} for "
                            f"{scheme!r}")
        for k, x in v.items():
            if k != "name" and not (k == "gain" and x is None):
                self.number(x, f"{name}.{k}")
        try:
            return _init.from_config(v)
        except (TypeError, ValueError) as e:
            raise self.fail(f"config: {name}: {e}") from None

    def activation(self, a: Any, override: Any = None) -> _acts.Activation:
        """The config's activation; ``override`` (the caller's, e.g. a custom one that a
        config cannot hold) replaces it."""
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise self.fail(f"config: activation must be an object with a name, got "
                            f"{self.short(a)}")
        custom = a.get("custom", False)
        if custom is not False and (custom is not True or set(a) != {"name", "custom"}):
            raise self.fail(f"config: bad custom activation entry {self.short(a)}")
        if override is not None:
            return _acts.resolve(override)  # the caller's own errors stay TypeError etc.
        if custom:
            raise self.fail(f"the model was saved with the custom activation {a['name']!r}; "
                            "pass it again: gc.load(path, activation=gc.Activation.custom("
                            "f, df))")
        params = {k: v for k, v in a.items() if k != "name"}
        for k, v in params.items():
            self.number(v, f"activation.{k}")
        try:
            return _acts.Activation(a["name"], **params)
        except (TypeError, ValueError) as e:
            raise self.fail(f"config: {e}") from None


class _Exclusive:
    """What :meth:`Model.exclusive` returns (a plain class: it runs on every optimiser
    step and clipping call, where a generator-based context manager costs more)."""

    __slots__ = ("_model", "_what")

    def __init__(self, model: Model, what: str) -> None:
        self._model, self._what = model, what

    def __enter__(self) -> GradKernels:
        lock = self._model._lock
        lock.acquire()
        try:
            check_not_running(self._model, self._what)
        except BaseException:
            lock.release()
            raise
        return cast(GradKernels, self._model._core)

    def __exit__(self, *exc: object) -> None:
        self._model._lock.release()


#: the config keys every model kind has (its own come from ``Model.config_keys``)
_COMMON_KEYS = frozenset({"kind", "activation", "init", "bias", "dtype"})


# ============================================================================ machinery
class StateError(RuntimeError, ValueError):
    """A call made in the wrong state (e.g. ``backward`` before ``forward``)."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]



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



def _core_message(e: BaseException) -> str:
    """The core's allocation message (it names the buffer and the bytes); pybind11's
    bare "std::bad_alloc" is said in words."""
    text = str(e)
    return "out of memory" if text in ("", "std::bad_alloc") else text


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


class Model:
    """What every gradchain model shares: NumPy views of the core's flat parameter,
    gradient and buffer memory, and the state-dict protocol (PyTorch's names); and the
    model protocol that io, training, sweeps, the CLI, clipping and the optimisers use
    instead of asking which kind of model they hold (the module docstring lists it).

    A subclass sets the class attributes ``kind`` (its registry key, ``"mlp"``),
    ``config_kind`` (the ``"kind"`` of its config, ``"MLP"``), ``config_keys`` /
    ``optional_config_keys`` (the keys of its config beyond the common ones),
    ``report_axis``, ``has_modes`` and ``lab``, implements the protocol's methods and
    joins the registry with :func:`register`.

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

    #: the registry key (``gradchain.models.MODELS``); also ``gc.sweep``'s ``model=``
    kind: ClassVar[str] = ""
    #: the ``"kind"`` entry of :meth:`config` (and of a ``gc.save`` file)
    config_kind: ClassVar[str] = ""
    #: the config keys of this kind beyond ``kind, activation, init, bias, dtype``
    config_keys: ClassVar[frozenset[str]] = frozenset()
    #: the config keys this kind may omit
    optional_config_keys: ClassVar[frozenset[str]] = frozenset()
    #: what the gradient report runs along
    report_axis: ClassVar[ReportAxis]
    #: whether ``train()`` / ``eval()`` switch the model's behaviour (batch norm)
    has_modes: ClassVar[bool] = False
    #: what the research lab needs of this kind (``gc.sweep``, the CLI's probe, theory)
    lab: ClassVar[Lab]

    _core: Any
    dtype: np.dtype
    _num_batches_tracked: np.ndarray

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "lab" in cls.__dict__:  # a lab belongs to the class that defines it
            cls.lab.model = cls

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready), as ``gc.save`` stores them."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any], activation: Any = None,
                    seed: int | None = None) -> Model:
        """A new model built from :meth:`config`'s dict (``activation``: the custom
        activation a config cannot hold; ``seed``: the initialisation's, which the config
        does not carry). Every value is checked (ValueError naming the key)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a dict, got {type(config).__name__}")
        if config.get("kind") not in (cls.kind, cls.config_kind):
            raise ValueError(f"config: kind {config.get('kind')!r} is not "
                             f"{cls.config_kind!r}")
        reader = ConfigReader()
        cfg = dict(config)
        kwargs = cls.read_config(cfg, reader, activation)
        training = reader.flag(cfg.get("training", True), "training")
        model = cls(**kwargs, seed=seed)
        if cls.has_modes:
            model.train(training)
        return model

    @classmethod
    def read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader, activation: Any = None,
                    n_members: int | None = None) -> dict[str, Any]:
        """The constructor's keyword arguments from a config, every key and value checked
        by ``reader`` (its ``error`` names the key). ``n_members``: the number of arrays
        a saved file holds (``gc.load`` bounds the config by it before any loop)."""
        required = _COMMON_KEYS | cls.config_keys
        optional = cls.optional_config_keys | {"format"}
        missing = sorted(required - set(cfg))
        unknown = sorted(set(cfg) - required - optional)
        if missing or unknown:
            raise reader.fail(
                "malformed gradchain config ("
                + "; ".join(([f"missing keys {missing}"] if missing else [])
                            + ([f"unknown keys {reader.first(unknown)}"] if unknown else []))
                + ")")
        kwargs: dict[str, Any] = {"bias": reader.flag(cfg["bias"], "bias")}
        if cfg["dtype"] not in ("float32", "float64"):
            raise reader.fail(f"config: dtype must be 'float32' or 'float64', got "
                              f"{reader.short(cfg['dtype'])}")
        kwargs["dtype"] = np.dtype(cfg["dtype"])
        kwargs["activation"] = reader.activation(cfg["activation"], activation)
        kwargs["init"] = reader.init(cfg["init"], "init")
        kwargs.update(cls._read_config(cfg, reader, n_members))
        return kwargs

    @classmethod
    def _read_config(cls, cfg: Mapping[str, Any], reader: ConfigReader,
                     n_members: int | None) -> dict[str, Any]:
        """The kind's own constructor arguments (every key present, checked)."""
        raise NotImplementedError

    @classmethod
    def tensor_shapes(cls, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """State-dict name -> shape of the model ``cls(**kwargs)`` would be, in the
        model's order, without building it."""
        raise NotImplementedError

    @classmethod
    def describe_config(cls, kwargs: Mapping[str, Any]) -> str:
        """The model ``cls(**kwargs)`` in a few words (``MLP with sizes [...] (float32)``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ data, loss
    def check_data(self, x: Any, target: Any, loss: str = "mse", on: str = "last",
                   name: str = "data") -> DataSet:
        """A data set ``(x, target)`` checked against the model (``name[0]`` and
        ``name[1]`` in errors), its sample axes found: what ``gc.train`` cuts
        mini-batches from. The target as ``loss_and_grad`` takes it for ``loss`` and
        ``on``."""
        raise NotImplementedError

    def loss_options(self, on: str = "last") -> dict[str, Any]:
        """The keyword arguments ``loss_and_grad`` takes for the loss placement ``on``
        (ValueError when the model does not take it)."""
        raise NotImplementedError

    def loss_outputs(self, x: Any, on: str = "last") -> np.ndarray:
        """Forward only: the outputs the loss compares with the target (for ``on``)."""
        raise NotImplementedError

    def check_batch_size(self, batch_size: int, n: int) -> None:
        """ValueError when mini-batches of ``batch_size`` out of ``n`` samples cannot
        train the model (batch norm and a 1-sample batch)."""

    def grad_norm_labels(self, data: DataSet) -> list[str]:
        """The labels of the report's norms along :attr:`report_axis` for batches of
        ``data`` (``a0..aL``; ``h1..hT``)."""
        raise NotImplementedError

    def weight_norm_labels(self) -> list[str]:
        """The parameter names of :meth:`report_weight_norms`'s entries."""
        raise NotImplementedError

    def report_weight_norms(self, report: Any) -> np.ndarray:
        """The report's weight-gradient norms (float64), as :meth:`weight_norm_labels`
        names them."""
        raise NotImplementedError

    # ------------------------------------------------------------- forensics
    _nonfinite_origin: Any = None

    @property
    def nonfinite_origin(self) -> Any:
        """Where the last backward's first NaN/Inf was born (a
        :class:`~gradchain.report.NonFiniteOrigin`, as its report's), or None: what
        ``gc.clip_grad_norm(error_if_nonfinite=True)`` names."""
        return self._nonfinite_origin

    def supports_per_example(self) -> bool:
        """Whether ``backward(..., per_example=True)`` applies to the model now (the
        per-example gradient norms; ``gc.train`` records the noise scale where it does)."""
        return False

    def _clip_per_example(self, max_norm: float) -> np.ndarray:
        """``gc.clip_per_example``'s work (a kind with per-example gradients overrides it)."""
        raise TypeError(f"model: gc.clip_per_example needs per-example gradients, which "
                        f"{type(self).__name__} does not compute")

    def _kept_upstream(self, key: str, a: np.ndarray, source: Any) -> np.ndarray:
        """What ``gc.clip_per_example`` reruns: the validated upstream gradient ``a`` (named
        ``key``) as it is now. ``a`` itself when it is not (in) the caller's ``source`` array
        (None: the model made it, e.g. a loss's gradient; or validation copied it): nobody
        else holds it. Else a copy, into the array of the last copy under ``key`` when that
        has a's shape and dtype. A fresh copy per backward cost rnn-mid and rnn-long-narrow
        12-18 % (page faults on 16 MiB of new pages every pass, and the churn slowed the
        next forward too)."""
        if not (isinstance(source, np.ndarray) and np.may_share_memory(a, source)):
            return a
        spares = getattr(self, "_upstream_spares", None)
        if spares is None:
            spares = self._upstream_spares = {}
        spare = spares.get(key)
        if spare is not None and spare.shape == a.shape and spare.dtype == a.dtype:
            np.copyto(spare, a)
            return spare
        spares[key] = np.array(a, copy=True)
        return spares[key]

    def _check_clippable(self, kept: bool, accumulated: bool) -> None:
        """gc.clip_per_example's preconditions: a backward after the last forward whose
        upstream gradients were kept (``kept``), and one that assigned (not ``accumulated``)."""
        if not self._core.has_forward or not kept:
            raise ValueError("model: gc.clip_per_example needs a backward pass (backward or "
                             "loss_and_grad) after the last forward pass to clip")
        if accumulated:
            raise ValueError("model: the last backward accumulated (accumulate=True), so the "
                             "stored gradients mix several batches; gc.clip_per_example "
                             "clips the examples of one batch")

    # ------------------------------------------------------- buffers, lock, kernels
    def exclusive(self, what: str) -> _Exclusive:
        """A context manager: hold the model's lock for the operation ``what`` (named in
        the error when the model's own custom activation calls it during a pass) and hand
        out the core's gradient kernels (:class:`GradKernels`): how ``gc.clip_*`` and
        ``gc.optim`` work on the model's memory. ``with model.exclusive("...") as k:``."""
        return _Exclusive(self, what)

    def flat_parameters(self) -> np.ndarray:
        """The core's flat parameter buffer (a writable view): every tensor of
        :meth:`named_parameters`, one after the other."""
        return cast(np.ndarray, self._core.param_array())

    def flat_grads(self) -> np.ndarray:
        """The core's flat gradient buffer (a writable view), laid out as
        :meth:`flat_parameters`."""
        return cast(np.ndarray, self._core.grad_array())

    @property
    def grads_partial(self) -> bool:
        """Whether the last backward was interrupted (Ctrl-C), leaving the gradients
        partial; ``zero_grad()`` or a complete backward clears it."""
        return bool(self._grads_interrupted)

    def invalidate(self) -> None:
        """Forget the saved forward pass: the parameters changed in place (an optimiser
        step, a load), so a backward must follow a new forward."""
        self._core.invalidate()

    # ----------------------------------------------------------- signal propagation
    # (docs/CONVENTIONS.md, "Signal propagation"; gc.jacobian, gc.jacobian_spectrum and
    # gc.theory.propagate use a model only through these.)
    def probe(self, x: Any, n: int = 16, seed: int | None = 0) -> Any:
        """``n`` Gaussian probe vectors at the output pulled back through the model
        linearised at ``x``: a :class:`gradchain.linearize.ProbeReport`."""
        raise NotImplementedError(f"{type(self).__name__} has no probe()")

    def jacobian(self, x: Any, at: Any = None) -> Any:
        """The Jacobian of the model's function at one input (its kind says which)."""
        raise NotImplementedError(f"{type(self).__name__} has no jacobian()")

    def linearize(self, x: Any) -> Any:
        """The model linearised at ``x``: a :class:`gradchain.linearize.Linearization`
        (Jacobian-vector products in both directions)."""
        raise NotImplementedError(f"{type(self).__name__} has no linearize()")

    def preactivations(self, x: Any) -> list[np.ndarray]:
        """Each layer's pre-activations at ``x`` (the measured side of the q/c maps)."""
        raise NotImplementedError(f"{type(self).__name__} has no preactivations()")

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
        self._core.grad_array()[...] = 0.0  # every gradient view, in one pass
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
            _require(sum(v.nbytes for v in out.values()),
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
            if not allow_nonfinite and _hooks().first_nonfinite(a) is not None:
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


_Chain = Model  # the name of the shared base before the models package


# ============================================================================ registry
MODELS: dict[str, type[Model]] = {}
"""The model kinds by registry key (``"mlp"``, ``"rnn"``), in registration order."""

DEFAULT_KIND = "mlp"
"""The kind ``gc.sweep`` and the CLI use when none is named."""

_M = TypeVar("_M", bound=type[Model])


def register(cls: _M) -> _M:
    """Class decorator: add a :class:`Model` subclass to :data:`MODELS` under its ``kind``
    (ValueError for a kind or config kind that another class holds)."""
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"register: expected a gradchain.models.Model subclass, got {cls!r}")
    if not cls.kind or not cls.config_kind:
        raise ValueError(f"register: {cls.__name__} sets no kind / config_kind")
    for other in MODELS.values():
        same = (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
        if not same and {cls.kind, cls.config_kind} & {other.kind, other.config_kind}:
            raise ValueError(f"register: the kind {cls.kind!r} / {cls.config_kind!r} of "
                             f"{cls.__name__} is {other.__name__}'s")
    MODELS[cls.kind] = cls
    return cls


def get(kind: Any) -> type[Model]:
    """The model class of a kind: its registry key (``"mlp"``) or its config's kind
    (``"MLP"``); ValueError naming the known kinds otherwise."""
    if isinstance(kind, str):
        if kind in MODELS:
            return MODELS[kind]
        for cls in MODELS.values():
            if cls.config_kind == kind:
                return cls
    raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODELS)}")


def config_kinds() -> dict[str, type[Model]]:
    """The registered classes by their config's ``"kind"`` (``{"MLP": MLP, "RNN": RNN}``):
    what a saved file names."""
    return {cls.config_kind: cls for cls in MODELS.values()}


def from_config(config: Mapping[str, Any], activation: Any = None,
                seed: int | None = None) -> Model:
    """A new model from a config (``model.config()``, or a ``gc.save`` file's): the class
    its ``"kind"`` names builds it (:meth:`Model.from_config`)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    return get(config.get("kind")).from_config(config, activation=activation, seed=seed)


def describe_kinds(prefix: str = "", where: Callable[[type[Model]], bool] | None = None
                   ) -> str:
    """The registered classes in words, for messages: ``"gc.MLP or gc.RNN"`` (``prefix``
    before each name; ``where`` keeps only some)."""
    names = [prefix + c.__name__ for c in MODELS.values() if where is None or where(c)]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]
