"""Optimisers over a gradchain model's parameters: :class:`SGD`, :class:`Adam`, :class:`AdamW`,
:class:`RMSprop`.

Update formulas, defaults and argument checks are ``torch.optim``'s (docs/CONVENTIONS.md,
"Regularisation and optimisers"), computed in the model's dtype in the order PyTorch's
CPU kernels use, so a float64 run matches ``torch.optim`` to rounding and a float32
run to a few units in the last place. An optimiser updates the model's *flat*
parameter buffer (one contiguous array holding every weight, bias and norm
``gamma``/``beta``) in one vectorised pass; its state (momentum buffers, moment
estimates) is kept as flat arrays of the same length. Batch-norm running statistics
are buffers, not parameters: optimisers never touch them.

    opt = gc.optim.Adam(mlp, lr=1e-3)      # or gc.optim.build("adam", mlp, lr=1e-3)
    loss, rep = mlp.loss_and_grad(x, target)
    opt.step()

:data:`OPTIMIZERS` maps each name (what ``gc.sweep``'s ``train={"optimizer": ...}`` and the
CLI's ``--optimizer`` take) to its class: adding an optimiser is one class and one row.

Non-finite gradients are not checked: as in PyTorch, NaN/Inf propagate into the
parameters (``gc.clip_grad_norm(..., error_if_nonfinite=True)`` or ``gc.train``'s
divergence flag catch them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ._memory import require
from ._validate import as_array, check_bool, real, shape_str
from .models import Model, StateError, describe_kinds

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS", "build"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


def _check_model(model: Any) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a gradchain model ({describe_kinds('gc.')}), got "
                        f"{type(model).__name__}")
    return model


def _nonneg(v: Any, name: str, torch_word: str) -> float:
    f = real(v, name, allow_inf=True)
    if not f >= 0.0:
        raise ValueError(f"{name}: expected a number >= 0 (torch.optim: Invalid {torch_word} "
                         f"value), got {v}")
    return f


def _check_lr(lr: Any) -> float:
    f = real(lr, "lr", allow_inf=True)
    if not f >= 0.0:
        raise ValueError(f"lr: expected a learning rate >= 0 (torch.optim: Invalid learning "
                         f"rate), got {lr}")
    return f


def _check_betas(betas: Any) -> tuple[float, float]:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence | np.ndarray):
        raise TypeError(f"betas: expected a pair of numbers (beta1, beta2), got {betas!r}")
    if len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {len(betas)} values")
    out = []
    for i, b in enumerate(betas):
        f = real(b, f"betas[{i}]")
        if not 0.0 <= f < 1.0:
            raise ValueError(f"betas[{i}]: expected a number in [0, 1) (torch.optim: Invalid "
                             f"beta parameter at index {i}), got {b}")
        out.append(f)
    return out[0], out[1]


class Optimizer:
    """Base class: holds the model, its flat parameter/gradient buffers, one
    PyTorch-shaped parameter group and the per-parameter state.

    Attributes
    ----------
    model : gc.MLP or gc.RNN
    param_groups : list of one dict
        ``param_groups[0]`` holds ``"params"`` (the parameter views, in
        ``model.named_parameters()`` order) and every hyperparameter; ``step()`` reads
        the hyperparameters from it, so ``opt.param_groups[0]["lr"] = 0.01`` works as
        in PyTorch (schedules written against ``param_groups`` carry over).
    defaults : dict
        The constructor's hyperparameters.

    Pickling and copies: an optimiser's parameters are views into its model's memory,
    so it cannot be pickled apart from the model (as PyTorch pickles an optimiser with
    the tensors it references). Pickling an optimiser pickles its model with it, and
    ``pickle.loads`` gives a new optimiser bound to the new model; pickle them together
    (``pickle.dumps((model, opt))``, or ``copy.deepcopy((model, opt))``) to keep the
    pair: the loaded optimiser then steps the *loaded* model, with its state (momentum
    buffers, Adam moments, step count, hyperparameters and any extra
    ``param_groups[0]`` keys) bit for bit equal. To snapshot both consistently while
    another thread trains the model, hold ``model.lock`` around the call.
    """

    #: names of the flat state buffers, in state_dict order
    _STATE_KEYS: tuple[str, ...] = ()
    #: whether the step count lives in the per-parameter state (Adam) or not (SGD)
    _STEP_IN_STATE = False

    def __init__(self, model: Any, defaults: dict[str, Any]) -> None:
        m = _check_model(model)
        named = list(m.named_parameters())
        self.model = model
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._sizes = [int(p.size) for _, p in named]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(int).tolist()
        flat_p, flat_g = m.flat_parameters(), m.flat_grads()
        n = self._offsets[-1]
        # The views of named_parameters() tile the flat buffer in order (models/base.py binds
        # them so); if that ever stops holding, fall back to one slab per tensor.
        tiled = flat_p.ndim == 1 and flat_p.size == n and all(
            p.flags.c_contiguous and p.dtype == flat_p.dtype
            and p.ctypes.data == flat_p.ctypes.data + off * flat_p.itemsize
            for (_, p), off in zip(named, self._offsets, strict=False))
        if tiled:
            self._slabs: list[tuple[np.ndarray, np.ndarray]] = [(flat_p, flat_g)]
        else:  # pragma: no cover - the models always tile
            grads = [g for _, g in model.named_grads()]
            self._slabs = [(p.reshape(-1), g.reshape(-1))
                           for (_, p), g in zip(named, grads, strict=True)]
        self._flat = tiled
        self.dtype = np.dtype(flat_p.dtype)
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = [
            {"params": [p for _, p in named], **defaults}]
        # state: one flat array per key and slab; {} until the first step needs it
        self._state: dict[str, list[np.ndarray]] = {}
        self._fresh: set[str] = set()
        self._steps = 0

    # ------------------------------------------------------------------ pickling
    _PICKLE_VERSION = 1

    def __getstate__(self) -> dict[str, Any]:
        with self.model.lock:
            return {
                "version": self._PICKLE_VERSION,
                "model": self.model,
                "defaults": dict(self.defaults),
                "group": {k: v for k, v in self.param_groups[0].items() if k != "params"},
                "state": {k: [b.copy() for b in bufs] for k, bufs in self._state.items()},
                "steps": self._steps,
                "fresh": set(self._fresh),
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != self._PICKLE_VERSION:
            raise ValueError(f"cannot unpickle {type(self).__name__}: unknown state format")
        Optimizer.__init__(self, state["model"], state["defaults"])
        self.param_groups[0].update(state["group"])
        for key, bufs in state["state"].items():
            if len(bufs) != len(self._slabs) or any(
                    b.shape != p.shape or b.dtype != p.dtype
                    for b, (p, _) in zip(bufs, self._slabs, strict=False)):
                raise ValueError(f"cannot unpickle {type(self).__name__}: its {key!r} state "
                                 "does not fit the model's parameters")
        self._state = {k: list(v) for k, v in state["state"].items()}
        self._steps = int(state["steps"])
        self._fresh = set(state["fresh"])

    # ------------------------------------------------------------------ hyperparameters
    @property
    def lr(self) -> float:
        """The learning rate (``param_groups[0]["lr"]``); settable."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        self.param_groups[0]["lr"] = _check_lr(value)

    @property
    def step_count(self) -> int:
        """Number of ``step()`` calls so far (restored by ``load_state_dict``)."""
        return self._steps

    def _check_hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a parameter group's hyperparameters; returns the checked values."""
        raise NotImplementedError

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Set every parameter gradient of the model to 0 (the gradient buffers stay;
        gradchain cannot set them to None as PyTorch's ``set_to_none`` does)."""
        with self.model.exclusive(f"{type(self).__name__}.zero_grad"):
            self.model.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter from the gradients of the last backward.

        ``closure`` (optional, as PyTorch's) is called first and its value returned.
        """
        loss = None
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"closure: expected a callable, got {type(closure).__name__}")
            loss = closure()
        group = self.param_groups[0]
        # the model's lock: another thread's forward/backward on this model waits for the
        # whole update (and this update for it) instead of seeing half-updated weights
        with self.model.exclusive(f"{type(self).__name__}.step"):
            if self.model.grads_partial:
                raise StateError(
                    f"{type(self).__name__}.step: the last backward() was interrupted "
                    "(KeyboardInterrupt), so the gradients are partial; run backward() again "
                    "(after zero_grad() when accumulating)")
            # state created by this step, and the update's parameter-sized temporaries
            # (Adam's: at most 5 alive at once): refused before anything is touched
            new = [k for k in self._STATE_KEYS if k not in self._state and self._needs(k, group)]
            total = sum(p.nbytes for p, _ in self._slabs)
            require(len(new) * total + 5 * max((p.nbytes for p, _ in self._slabs), default=0),
                    lambda: f"{type(self).__name__}.step: its state {new} and temporaries "
                            f"for {sum(p.size for p, _ in self._slabs)} parameters")
            self._steps += 1
            self._fresh = {k for k in self._STATE_KEYS if k not in self._state}
            # as torch: overflow and NaN propagate silently into the parameters
            with np.errstate(over="ignore", invalid="ignore", divide="ignore",
                             under="ignore"):
                for i, (p, g) in enumerate(self._slabs):
                    self._update(i, p, g, group)
            # saved activations no longer belong to these parameters (as autograd refuses a
            # backward through tensors modified in place)
            self.model.invalidate()
        return loss

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, group: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _buf(self, key: str, i: int, init: np.ndarray | None = None) -> np.ndarray:
        """The flat state array ``key`` of slab ``i`` (created zero or as a copy of init)."""
        bufs = self._state.get(key)
        if bufs is None:
            bufs = [np.zeros_like(p) for p, _ in self._slabs]
            self._state[key] = bufs
        if init is not None and key in self._fresh:
            bufs[i][...] = init
        return bufs[i]

    # ------------------------------------------------------------------ state dict
    def _state_entries(self) -> dict[str, Any]:
        """Scalar per-parameter state entries (e.g. Adam's step)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {i: {...}}, "param_groups": [{..., "params": [0, ..., n-1]}]}`` as
        ``torch.optim.Optimizer.state_dict()``: state per parameter index (in
        ``named_parameters()`` order), each entry an array shaped like the parameter.
        Unlike PyTorch's, the arrays are copies, so a checkpoint stays a checkpoint
        while training goes on."""
        state: dict[int, dict[str, Any]] = {}
        if self._state:
            for j in range(len(self._names)):
                entry: dict[str, Any] = dict(self._state_entries())
                for key in self._STATE_KEYS:
                    if key in self._state:
                        entry[key] = self._tensor_view(self._state[key], j).copy()
                state[j] = entry
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        group["params"] = list(range(len(self._names)))
        return {"state": state, "param_groups": [group], "step_count": self._steps}

    def _tensor_view(self, bufs: list[np.ndarray], j: int) -> np.ndarray:
        if self._flat:
            off = self._offsets[j]
            return bufs[0][off:off + self._sizes[j]].reshape(self._shapes[j])
        return bufs[j].reshape(self._shapes[j])  # pragma: no cover

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned, or a ``torch.optim`` state dict of the
        same optimiser over a module whose parameters are in ``named_parameters()``
        order (tensors are read as arrays; extra torch keys such as ``foreach`` are
        ignored). Everything is checked before anything is written: a rejected call
        leaves the optimiser unchanged. State arrays of another float dtype are
        converted to the model's (as PyTorch does); NaN/Inf are allowed."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict: missing key {key!r}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, Sequence) or len(groups) != 1:
            raise ValueError("state_dict['param_groups']: expected a list of one group, got "
                             f"{len(groups) if isinstance(groups, Sequence) else groups!r}")
        group = groups[0]
        if not isinstance(group, Mapping):
            raise TypeError("state_dict['param_groups'][0]: expected a mapping, got "
                            f"{type(group).__name__}")
        n = len(self._names)
        params = group.get("params")
        if not isinstance(params, Sequence) or len(params) != n:
            raise ValueError(f"state_dict['param_groups'][0]['params']: expected {n} "
                             f"parameters, got "
                             f"{len(params) if isinstance(params, Sequence) else params!r}")
        missing = [k for k in self.defaults if k not in group]
        if missing:
            raise ValueError(f"state_dict['param_groups'][0]: missing hyperparameters {missing}")
        hyper = self._check_hyper(group)
        state = state_dict["state"]
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict['state']: expected a mapping, got {type(state).__name__}")
        # state is keyed by the indices listed in params (torch's packed ids)
        ids = list(params)
        unknown = [k for k in state if k not in ids]
        if unknown:
            raise ValueError(f"state_dict['state']: unexpected parameter ids {unknown}")
        staged, steps = self._stage_state(state, ids, hyper)
        if "step_count" in state_dict:
            sc = state_dict["step_count"]
            if isinstance(sc, bool) or not isinstance(sc, (int, np.integer)) or sc < 0:
                raise ValueError(f"state_dict['step_count']: expected an int >= 0, got {sc!r}")
            steps = int(sc) if steps is None else steps
        # --- everything checked: write
        new_state: dict[str, list[np.ndarray]] = {}
        for key, arrays in staged.items():
            if self._flat:
                flat = np.empty_like(self._slabs[0][0])
                for j, a in enumerate(arrays):
                    flat[self._offsets[j]:self._offsets[j + 1]] = a.reshape(-1)
                new_state[key] = [flat]
            else:  # pragma: no cover
                new_state[key] = [np.array(a, dtype=self.dtype).reshape(-1) for a in arrays]
        if not staged and self._STEP_IN_STATE:
            steps = 0  # Adam's bias correction restarts with its moments (as torch's state)
        self._state = new_state
        self._steps = steps or 0
        self.param_groups[0].update(hyper)

    def _stage_state(self, state: Mapping[Any, Any], ids: list[Any],
                     hyper: Mapping[str, Any]) -> tuple[dict[str, list[np.ndarray]], int | None]:
        """Check per-parameter state; returns the arrays by key (in parameter order)
        and the step count it implies (None if it says nothing)."""
        entries = [state.get(i) for i in ids]
        present = [e for e in entries if e]
        if not present:
            return {}, None
        if len(present) != len(entries):
            raise ValueError("state_dict['state']: every parameter or none must have state "
                             f"(found state for {len(present)} of {len(entries)})")
        keys = [k for k in self._STATE_KEYS if self._needs(k, hyper)]
        staged: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for j, (i, e) in enumerate(zip(ids, entries, strict=True)):
            if not isinstance(e, Mapping):
                raise TypeError(f"state_dict['state'][{i!r}]: expected a mapping, got "
                                f"{type(e).__name__}")
            for k in keys:
                if k not in e or e[k] is None:
                    raise ValueError(f"state_dict['state'][{i!r}]: missing {k!r}")
                a = as_array(e[k], f"state_dict['state'][{i!r}][{k!r}]")
                if a.dtype.kind != "f":
                    raise TypeError(f"state_dict['state'][{i!r}][{k!r}]: expected a float "
                                    f"array, got dtype {a.dtype}")
                if a.shape != self._shapes[j]:
                    raise ValueError(
                        f"state_dict['state'][{i!r}][{k!r}]: expected shape "
                        f"{shape_str(self._shapes[j])} (parameter {self._names[j]!r}), got "
                        f"{shape_str(a.shape)}")
                staged[k].append(a)
        return staged, self._stage_steps(entries, ids)

    def _needs(self, key: str, hyper: Mapping[str, Any]) -> bool:
        return True

    def _stage_steps(self, entries: list[Any], ids: list[Any]) -> int | None:
        return None

    def __repr__(self) -> str:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        inner = "\n".join(f"    {k}: {v}" for k, v in group.items())
        return f"{type(self).__name__} (\nParameter Group 0\n{inner}\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (``torch.optim.SGD``)::

        g = -grad if maximize else grad
        g = g + weight_decay * p                       (weight_decay != 0)
        b = g  (first step),  b = momentum * b + (1 - dampening) * g   (momentum != 0)
        g = g + momentum * b  if nesterov  else  b
        p = p - lr * g

    Parameters
    ----------
    model : gc.MLP or gc.RNN
    lr : float, default 1e-3
    momentum, dampening, weight_decay : float, default 0
    nesterov, maximize : bool, default False

    Raises
    ------
    ValueError
        ``lr``, ``momentum`` or ``weight_decay`` negative; ``nesterov`` without a
        positive momentum or with a dampening (as PyTorch).
    """

    _STATE_KEYS = ("momentum_buffer",)

    def __init__(self, model: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False) -> None:
        _check_model(model)
        hyper = self._check_hyper({"lr": lr, "momentum": momentum, "dampening": dampening,
                                   "weight_decay": weight_decay, "nesterov": nesterov,
                                   "maximize": maximize})
        super().__init__(model, hyper)

    def _check_hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        lr = _check_lr(group["lr"])
        momentum = _nonneg(group["momentum"], "momentum", "momentum")
        dampening = real(group["dampening"], "dampening")
        weight_decay = _nonneg(group["weight_decay"], "weight_decay", "weight_decay")
        nesterov = check_bool(group["nesterov"], "nesterov")
        maximize = check_bool(group["maximize"], "maximize")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: Nesterov momentum requires a momentum > 0 and zero "
                             f"dampening, got momentum={momentum}, dampening={dampening}")
        return {"lr": lr, "momentum": momentum, "dampening": dampening,
                "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}

    def _needs(self, key: str, hyper: Mapping[str, Any]) -> bool:
        return bool(hyper["momentum"] != 0)

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, group: Mapping[str, Any]) -> None:
        t = p.dtype.type
        lr, momentum = float(group["lr"]), float(group["momentum"])
        wd, damp = float(group["weight_decay"]), float(group["dampening"])
        grad = -g if group["maximize"] else g           # never write into the model's grads
        if wd != 0:
            grad = grad + t(wd) * p
        if momentum != 0:
            first = "momentum_buffer" in self._fresh
            buf = self._buf("momentum_buffer", i, init=grad)
            if not first:
                buf *= t(momentum)
                buf += t(1.0 - damp) * grad
            grad = grad + t(momentum) * buf if group["nesterov"] else buf
        p -= t(lr) * grad


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``; ``AdamW`` decouples the weight decay)::

        t = t + 1;  g = -grad if maximize else grad
        g = g + weight_decay * p            (Adam)  |  p = p * (1 - lr * weight_decay)   (AdamW)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                    (amsgrad; v_max replaces v below)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Parameters
    ----------
    model : gc.MLP or gc.RNN
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0 (AdamW: 1e-2)
    amsgrad, maximize : bool, default False
    decoupled_weight_decay : bool, default False
        True makes it AdamW (as ``torch.optim.Adam``'s argument of that name).

    Raises
    ------
    ValueError
        ``lr``, ``eps`` or ``weight_decay`` negative, a beta outside ``[0, 1)``.
    """

    _STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _STEP_IN_STATE = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False, *, decoupled_weight_decay: bool = False) -> None:
        _check_model(model)
        hyper = self._check_hyper({"lr": lr, "betas": betas, "eps": eps,
                                   "weight_decay": weight_decay, "amsgrad": amsgrad,
                                   "maximize": maximize,
                                   "decoupled_weight_decay": decoupled_weight_decay})
        super().__init__(model, hyper)

    def _check_hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"lr": _check_lr(group["lr"]), "betas": _check_betas(group["betas"]),
                "eps": _nonneg(group["eps"], "eps", "epsilon"),
                "weight_decay": _nonneg(group["weight_decay"], "weight_decay", "weight_decay"),
                "amsgrad": check_bool(group["amsgrad"], "amsgrad"),
                "maximize": check_bool(group["maximize"], "maximize"),
                "decoupled_weight_decay": check_bool(
                    group.get("decoupled_weight_decay", isinstance(self, AdamW)),
                    "decoupled_weight_decay")}

    def _needs(self, key: str, hyper: Mapping[str, Any]) -> bool:
        return key != "max_exp_avg_sq" or bool(hyper["amsgrad"])

    def _state_entries(self) -> dict[str, Any]:
        return {"step": float(self._steps)}

    def _stage_steps(self, entries: list[Any], ids: list[Any]) -> int | None:
        steps = set()
        for i, e in zip(ids, entries, strict=True):
            if "step" not in e:
                raise ValueError(f"state_dict['state'][{i!r}]: missing 'step'")
            s = float(as_array(e["step"], f"state_dict['state'][{i!r}]['step']").reshape(-1)[0])
            if not (math.isfinite(s) and s >= 0 and s == int(s)):
                raise ValueError(f"state_dict['state'][{i!r}]['step']: expected a whole "
                                 f"number >= 0, got {s}")
            steps.add(int(s))
        if len(steps) != 1:
            raise ValueError("state_dict['state']: every parameter must have the same 'step' "
                             f"(gradchain steps them together), got {sorted(steps)}")
        return steps.pop()

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, group: Mapping[str, Any]) -> None:
        t = p.dtype.type
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        step = float(self._steps)
        grad = -g if group["maximize"] else g           # never write into the model's grads
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p *= t(1.0 - lr * wd)
            else:
                grad = grad + t(wd) * p
        m = self._buf("exp_avg", i)
        v = self._buf("exp_avg_sq", i)
        # torch's lerp: self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w)
        w = t(1.0 - beta1)
        if abs(w) < 0.5:
            m += w * (grad - m)
        else:
            np.subtract(grad, (grad - m) * (t(1) - w), out=m)
        v *= t(beta2)
        sq = grad * t(1.0 - beta2)                      # addcmul: v + (value * g) * g
        sq *= grad
        v += sq
        # bias corrections in double precision (python floats), as torch's CPU path
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
        step_size = lr / bc1
        if group["amsgrad"]:
            vmax = self._buf("max_exp_avg_sq", i)
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax)
        else:
            denom = np.sqrt(v)
        denom /= t(bc2_sqrt)
        denom += t(eps)
        upd = m * t(-step_size)                         # addcdiv: p + (value * m) / denom
        upd /= denom
        p += upd


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``):
    ``p = p * (1 - lr * weight_decay)`` before the Adam update; default
    ``weight_decay=1e-2``. See :class:`Adam` for the formulas."""

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True)

    def _check_hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        out = super()._check_hyper(group)
        out["decoupled_weight_decay"] = True        # as torch's AdamW.__setstate__
        return out


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``; Hinton's lecture 6e, with Graves' centred
    variant)::

        g = -grad if maximize else grad
        g = g + weight_decay * p                                  (weight_decay != 0)
        v = alpha * v + (1 - alpha) * g * g
        m = lerp(m, g, 1 - alpha);  avg = sqrt(v - m * m) + eps    (centered)
        avg = sqrt(v) + eps                                       (otherwise)
        b = momentum * b + g / avg;  p = p - lr * b               (momentum > 0)
        p = p - lr * g / avg                                      (otherwise)

    ``v`` (``square_avg``), ``m`` (``grad_avg``, centred only) and ``b``
    (``momentum_buffer``, momentum > 0 only) start at zero; the state's ``step`` counts
    the updates, as torch's (nothing in the update reads it).

    Parameters
    ----------
    model : gc.MLP or gc.RNN
    lr : float, default 1e-2
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average.
    eps : float, default 1e-8
    weight_decay, momentum : float, default 0
    centered, maximize : bool, default False

    Raises
    ------
    ValueError
        ``lr``, ``alpha``, ``eps``, ``weight_decay`` or ``momentum`` negative (as PyTorch).
    """

    _STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg")
    _STEP_IN_STATE = True

    def __init__(self, model: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False) -> None:
        _check_model(model)
        hyper = self._check_hyper({"lr": lr, "alpha": alpha, "eps": eps,
                                   "weight_decay": weight_decay, "momentum": momentum,
                                   "centered": centered, "maximize": maximize})
        super().__init__(model, hyper)

    def _check_hyper(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"lr": _check_lr(group["lr"]),
                "alpha": _nonneg(group["alpha"], "alpha", "alpha"),
                "eps": _nonneg(group["eps"], "eps", "epsilon"),
                "weight_decay": _nonneg(group["weight_decay"], "weight_decay", "weight_decay"),
                "momentum": _nonneg(group["momentum"], "momentum", "momentum"),
                "centered": check_bool(group["centered"], "centered"),
                "maximize": check_bool(group["maximize"], "maximize")}

    def _needs(self, key: str, hyper: Mapping[str, Any]) -> bool:
        if key == "momentum_buffer":
            return bool(hyper["momentum"] > 0)
        if key == "grad_avg":
            return bool(hyper["centered"])
        return True

    _state_entries = Adam._state_entries
    _stage_steps = Adam._stage_steps

    def _update(self, i: int, p: np.ndarray, g: np.ndarray, group: Mapping[str, Any]) -> None:
        t = p.dtype.type
        lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
        wd, momentum = float(group["weight_decay"]), float(group["momentum"])
        grad = -g if group["maximize"] else g           # never write into the model's grads
        if wd != 0:
            grad = grad + t(wd) * p
        v = self._buf("square_avg", i)
        v *= t(alpha)
        sq = grad * t(1.0 - alpha)                      # addcmul: v + (value * g) * g
        sq *= grad
        v += sq
        if group["centered"]:
            m = self._buf("grad_avg", i)
            w = t(1.0 - alpha)                          # torch's lerp (see Adam)
            if abs(w) < 0.5:
                m += w * (grad - m)
            else:
                np.subtract(grad, (grad - m) * (t(1) - w), out=m)
            avg = m * t(-1)                             # addcmul(m, m, value=-1)
            avg *= m
            avg += v
            np.sqrt(avg, out=avg)
        else:
            avg = np.sqrt(v)
        avg += t(eps)
        if momentum > 0:
            b = self._buf("momentum_buffer", i)
            b *= t(momentum)
            b += grad / avg                             # addcdiv with value 1
            p += t(-lr) * b                             # add(b, alpha=-lr)
        else:
            upd = grad * t(-lr)                         # addcdiv: p + (value * g) / avg
            upd /= avg
            p += upd


OPTIMIZERS: Mapping[str, type[Optimizer]] = MappingProxyType({
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
})
"""Every optimiser by name: the one table ``build``, ``gc.sweep`` and the CLI read."""


def build(name: str, model: Any, **hyper: Any) -> Optimizer:
    """``OPTIMIZERS[name](model, **hyper)``: the optimiser called ``name`` (one of
    :data:`OPTIMIZERS`) over ``model``'s parameters, e.g. ``build("adam", mlp, lr=1e-3)``."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer: expected a name ({', '.join(OPTIMIZERS)}), got "
                        f"{type(name).__name__}")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](model, **hyper)
