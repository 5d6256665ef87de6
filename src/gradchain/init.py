"""Weight initialisation schemes (docs/CONVENTIONS.md, "Initialization"; names and gains
as ``torch.nn.init``).

Every scheme is a callable returning an :class:`Init`: ``gc.init.xavier_uniform(gain=1.0)``,
``gc.init.normal(sigma_w=1.5, sigma_b=0.05)``, ... A model takes either such an
object or the scheme's name (``init="kaiming_normal"``). Weights have shape
``(fan_out, fan_in)`` as in ``torch.nn.Linear``; biases are zero unless the scheme
says otherwise (``torch_default``, ``normal``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .activations import Activation

__all__ = [
    "Init", "SCHEMES", "resolve", "xavier_uniform", "xavier_normal", "kaiming_uniform",
    "kaiming_normal", "lecun_normal", "orthogonal", "identity", "torch_default", "normal",
]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


@dataclass(frozen=True)
class Init:
    """An initialisation scheme with its parameters.

    ``weight(rng, (fan_out, fan_in), activation)`` and ``bias(rng, fan_out, fan_in)``
    draw float64 arrays; the model casts them to its dtype.
    """

    name: str
    gain: float | None = None
    params: dict[str, float] = field(default_factory=dict)

    def _gain(self, activation: Activation | None, default: float) -> float:
        if self.gain is not None:
            return float(self.gain)
        if self.name.startswith("kaiming"):
            return activation.gain() if activation is not None else math.sqrt(2.0)
        return default

    def weight(
        self, rng: np.random.Generator, shape: tuple[int, int], activation: Activation | None = None
    ) -> np.ndarray:
        fan_out, fan_in = shape
        n = self.name
        if n == "xavier_uniform":
            bound = self._gain(activation, 1.0) * math.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-bound, bound, size=shape)
        if n == "xavier_normal":
            std = self._gain(activation, 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
            return rng.normal(0.0, std, size=shape)
        if n == "kaiming_uniform":
            bound = self._gain(activation, math.sqrt(2.0)) * math.sqrt(3.0 / fan_in)
            return rng.uniform(-bound, bound, size=shape)
        if n == "kaiming_normal":
            std = self._gain(activation, math.sqrt(2.0)) / math.sqrt(fan_in)
            return rng.normal(0.0, std, size=shape)
        if n == "lecun_normal":
            return rng.normal(0.0, self._gain(activation, 1.0) / math.sqrt(fan_in), size=shape)
        if n == "orthogonal":
            # torch.nn.init.orthogonal_: QR of a Gaussian matrix, signs fixed by diag(R).
            rows, cols = shape
            flat = rng.normal(0.0, 1.0, size=(rows, cols))
            if rows < cols:
                flat = flat.T
            q, r = np.linalg.qr(flat)
            q = q * np.sign(np.diag(r))
            if rows < cols:
                q = q.T
            return self._gain(activation, 1.0) * q
        if n == "identity":
            return self._gain(activation, 1.0) * np.eye(fan_out, fan_in)
        if n == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            return rng.uniform(-bound, bound, size=shape)
        if n == "normal":
            return rng.normal(0.0, self.params["sigma_w"] / math.sqrt(fan_in), size=shape)
        raise AssertionError(n)  # pragma: no cover  (names are validated at construction)

    def bias(self, rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
        if self.name == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            return rng.uniform(-bound, bound, size=fan_out)
        if self.name == "normal":
            return rng.normal(0.0, self.params["sigma_b"], size=fan_out)
        return np.zeros(fan_out)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "gain": self.gain, **self.params}

    def __repr__(self) -> str:
        args = [f"gain={self.gain!r}"] if self.gain is not None else []
        args += [f"{k}={v!r}" for k, v in self.params.items()]
        return f"gc.init.{self.name}({', '.join(args)})"


def _check_gain(gain: float | None) -> float | None:
    if gain is None:
        return None
    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.integer, np.floating)):
        raise TypeError(f"init: gain must be a number, got {type(gain).__name__}")
    if not math.isfinite(float(gain)) or gain < 0:
        raise ValueError(f"init: gain must be finite and >= 0, got {gain}")
    return float(gain)


def xavier_uniform(gain: float = 1.0) -> Init:
    """``U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    return Init("xavier_uniform", _check_gain(gain))


def xavier_normal(gain: float = 1.0) -> Init:
    """``N(0, std^2)``, ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    return Init("xavier_normal", _check_gain(gain))


def kaiming_uniform(gain: float | None = None) -> Init:
    """``U(-a, a)``, ``a = gain * sqrt(3 / fan_in)``; gain from the activation when None."""
    return Init("kaiming_uniform", _check_gain(gain))


def kaiming_normal(gain: float | None = None) -> Init:
    """``N(0, gain^2 / fan_in)``; gain from the activation when None."""
    return Init("kaiming_normal", _check_gain(gain))


def lecun_normal(gain: float = 1.0) -> Init:
    """``N(0, gain^2 / fan_in)`` (plain LeCun normal at gain 1)."""
    return Init("lecun_normal", _check_gain(gain))


def orthogonal(gain: float = 1.0) -> Init:
    """``gain * Q`` with Q a random (semi-)orthogonal matrix (``torch.nn.init.orthogonal_``)."""
    return Init("orthogonal", _check_gain(gain))


def identity(gain: float = 1.0) -> Init:
    """``gain * I`` (``torch.nn.init.eye_``; the IRNN's recurrent weights)."""
    return Init("identity", _check_gain(gain))


def torch_default() -> Init:
    """What ``torch.nn.Linear`` / ``torch.nn.RNN`` do: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    on weights and biases."""
    return Init("torch_default")


def normal(sigma_w: float = 1.0, sigma_b: float = 0.0) -> Init:
    """The mean-field parametrisation: ``W ~ N(0, sigma_w^2 / fan_in)``, ``b ~ N(0, sigma_b^2)``."""
    vals = {}
    for k, v in (("sigma_w", sigma_w), ("sigma_b", sigma_b)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"init.normal: {k} must be a number, got {type(v).__name__}")
        if not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"init.normal: {k} must be finite and >= 0, got {v}")
        vals[k] = float(v)
    return Init("normal", None, vals)


SCHEMES = {
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform, "kaiming_normal": kaiming_normal,
    "lecun_normal": lecun_normal, "orthogonal": orthogonal, "identity": identity,
    "torch_default": torch_default, "normal": normal,
}


def resolve(init: str | Init) -> Init:
    """An :class:`Init` from a scheme name or an Init."""
    if isinstance(init, Init):
        if init.name not in SCHEMES:  # a hand-built Init("...") would fail only when drawing
            raise ValueError(
                f"init: unknown scheme {init.name!r}; expected one of {', '.join(SCHEMES)}")
        return init
    if isinstance(init, str):
        if init not in SCHEMES:
            raise ValueError(
                f"init: unknown scheme {init!r}; expected one of {', '.join(SCHEMES)}"
            )
        return SCHEMES[init]()
    if callable(init) and getattr(init, "__name__", None) in SCHEMES:
        return init()  # gc.init.orthogonal passed without calling it
    raise TypeError(f"init: expected a scheme name or gc.init.<scheme>(...), got {init!r}")


def from_config(cfg: dict[str, Any]) -> Init:
    cfg = dict(cfg)
    name = cfg.pop("name")
    gain = cfg.pop("gain", None)
    if name == "normal":
        return normal(**cfg)
    if name == "torch_default":
        return torch_default()
    return SCHEMES[name](gain) if gain is not None else SCHEMES[name]()
