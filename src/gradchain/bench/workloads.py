"""The standard workloads of ``docs/WORKLOADS.md``: one dataclass per kind (``"mlp"``:
:class:`MLPWorkload`, ``"rnn"``: :class:`RNNWorkload`, ``"lstm"`` / ``"gru"``:
:class:`LSTMWorkload` / :class:`GRUWorkload`; a workload's ``kind`` is its
gradchain model's, ``gradchain.models.MODELS``), the table :data:`WORKLOADS` and its
scaled-down copy :data:`QUICK`, and the optional small models of issue 12 (:data:`SMALL`: run
only when named, or with ``-w all``). Each kind says what the harness asks of it:
``model_kwargs()`` (its gradchain model's constructor arguments) and ``skipped_grads()``
(gradients the agreement checks leave out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class MLPWorkload:
    """An MLP chain: ``sizes = [in] + [width] * depth + [out]``, batch ``batch``."""

    kind: ClassVar[str] = "mlp"
    name: str
    in_features: int
    width: int
    depth: int
    out_features: int
    batch: int
    activation: str = "tanh"
    norm: str | None = None
    residual: bool = False
    residual_scale: float = 1.0
    init: str = "xavier_normal"
    dtype: str = "float32"

    @property
    def sizes(self) -> list[int]:
        return [self.in_features] + [self.width] * self.depth + [self.out_features]

    def flops(self) -> float:
        """docs/WORKLOADS.md: ``6 * B * sum(in_l * out_l)`` (forward 2, backward 4)."""
        s = self.sizes
        return 6.0 * self.batch * sum(a * b for a, b in zip(s[:-1], s[1:], strict=True))

    def quick(self) -> MLPWorkload:
        """A scaled-down copy for smoke runs (widths / 4, depth / 8, batch / 4)."""
        return replace(
            self,
            in_features=max(8, self.in_features // 4),
            width=max(8, self.width // 4),
            depth=max(2, self.depth // 8),
            out_features=max(8, self.out_features // 4),
            batch=max(8, self.batch // 4),
        )

    def describe(self) -> str:
        opts = [self.activation]
        if self.norm:
            opts.append(f"{self.norm} norm")
        if self.residual:
            opts.append("residual")
        opts += [f"init {self.init}", self.dtype]
        return (f"MLP in {self.in_features}, width {self.width}, depth {self.depth}, "
                f"out {self.out_features}, batch {self.batch}; " + ", ".join(opts))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def model_kwargs(self) -> dict[str, Any]:
        """``gc.MLP(**model_kwargs(), seed=...)``: the workload's gradchain model."""
        return {"sizes": self.sizes, "activation": self.activation, "init": self.init,
                "norm": self.norm, "residual": self.residual,
                "residual_scale": self.residual_scale, "dtype": np.dtype(self.dtype)}

    def skipped_grads(self) -> set[str]:
        """The biases of linear layers followed by batch norm: their gradient is exactly 0
        in exact arithmetic, so only rounding noise would be compared."""
        if self.norm != "batch":
            return set()
        return {f"layers.{i}.bias" for i in range(self.depth)}


@dataclass(frozen=True)
class RNNWorkload:
    """A one-layer vanilla RNN (``torch.nn.RNN``): ``steps`` time steps of batch ``batch``,
    ``input_size -> hidden_size``; the upstream gradient is ``dL/dh_t`` for every step."""

    kind: ClassVar[str] = "rnn"
    name: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    activation: str = "tanh"
    init: str = "torch_default"  # W_hh (and b_hh): gc.RNN's default, as torch.nn.RNN
    input_init: str = "xavier_uniform"  # W_ih: gc.RNN's default
    dtype: str = "float32"

    def flops(self) -> float:
        """docs/WORKLOADS.md: ``6 * T * B * (I*H + H*H)`` (forward 2, backward 4)."""
        I_, H = self.input_size, self.hidden_size
        return 6.0 * self.steps * self.batch * (I_ * H + H * H)

    def quick(self) -> RNNWorkload:
        """A scaled-down copy for smoke runs (T / 8, batch / 4, input and hidden / 4)."""
        return replace(
            self,
            steps=max(8, self.steps // 8),
            batch=max(4, self.batch // 4),
            input_size=max(8, self.input_size // 4),
            hidden_size=max(16, self.hidden_size // 4),
        )

    def describe(self) -> str:
        return (f"RNN T {self.steps}, batch {self.batch}, input {self.input_size}, hidden "
                f"{self.hidden_size}; {self.activation}, init W_hh {self.init}, W_ih "
                f"{self.input_init}, {self.dtype}")

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def model_kwargs(self) -> dict[str, Any]:
        """``gc.RNN(**model_kwargs(), seed=...)``: the workload's gradchain model."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "activation": self.activation, "init": self.init,
                "input_init": self.input_init, "dtype": np.dtype(self.dtype)}

    def skipped_grads(self) -> set[str]:
        """None: every gradient is compared."""
        return set()


@dataclass(frozen=True)
class LSTMWorkload:
    """A one-layer LSTM (``torch.nn.LSTM``): ``steps`` time steps of batch ``batch``,
    ``input_size -> hidden_size``, torch's default init; the upstream gradient is
    ``dL/dh_t`` for every step."""

    kind: ClassVar[str] = "lstm"
    gates: ClassVar[int] = 4
    cell_state: ClassVar[bool] = True  # whether the cell carries c_t beside h_t
    name: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    init: str = "torch_default"
    input_init: str = "torch_default"
    dtype: str = "float32"

    def flops(self) -> float:
        """docs/WORKLOADS.md: ``6 * T * B * G * (I*H + H*H)`` with G gate blocks (LSTM 4,
        GRU 3)."""
        I_, H = self.input_size, self.hidden_size
        return 6.0 * self.steps * self.batch * self.gates * (I_ * H + H * H)

    def quick(self) -> LSTMWorkload:
        """A scaled-down copy for smoke runs (T / 8, batch / 4, input and hidden / 4)."""
        return replace(self, steps=max(8, self.steps // 8), batch=max(4, self.batch // 4),
                       input_size=max(8, self.input_size // 4),
                       hidden_size=max(16, self.hidden_size // 4))

    def describe(self) -> str:
        return (f"{self.kind.upper()} T {self.steps}, batch {self.batch}, input "
                f"{self.input_size}, hidden {self.hidden_size}; init W_hh {self.init}, W_ih "
                f"{self.input_init}, {self.dtype}")

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def model_kwargs(self) -> dict[str, Any]:
        """``gc.LSTM(**model_kwargs(), seed=...)`` (``gc.GRU`` for a GRU workload)."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "init": self.init, "input_init": self.input_init,
                "dtype": np.dtype(self.dtype)}

    def skipped_grads(self) -> set[str]:
        """None: every gradient is compared."""
        return set()


@dataclass(frozen=True)
class GRUWorkload(LSTMWorkload):
    """A one-layer GRU (``torch.nn.GRU``), as :class:`LSTMWorkload`."""

    kind: ClassVar[str] = "gru"
    gates: ClassVar[int] = 3
    cell_state: ClassVar[bool] = False


Workload = MLPWorkload | RNNWorkload | LSTMWorkload

_MLP_TANH = MLPWorkload("mlp-tanh", 256, 256, 64, 256, 128, activation="tanh",
                        init="xavier_normal")
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        _MLP_TANH,
        MLPWorkload("mlp-deep-narrow", 64, 64, 256, 64, 64, activation="relu", norm="batch",
                    residual=True, init="kaiming_normal"),
        MLPWorkload("mlp-wide", 2048, 2048, 16, 2048, 256, activation="relu",
                    init="kaiming_normal"),
        replace(_MLP_TANH, name="mlp-tanh-f64", dtype="float64"),
        RNNWorkload("rnn-mid", 512, 32, 64, 256, activation="tanh"),
        RNNWorkload("rnn-long-narrow", 4096, 16, 32, 64, activation="tanh"),
        LSTMWorkload("lstm-mid", 512, 32, 64, 256),
        GRUWorkload("gru-mid", 512, 32, 64, 256),
    )
}
"""The standard workloads of docs/WORKLOADS.md, by name."""

QUICK: dict[str, Workload] = {name: w.quick() for name, w in WORKLOADS.items()}
"""The same workloads scaled down (``--quick``)."""

SMALL: dict[str, Workload] = {
    w.name: w
    for w in (
        MLPWorkload("mlp-small", 256, 256, 19, 10, 64, activation="tanh", init="xavier_normal"),
        RNNWorkload("rnn-small", 128, 16, 32, 128, activation="tanh"),
    )
}
"""Optional workloads (docs/WORKLOADS.md): the two small models of issue 12, where a pass is
a few milliseconds and waking threads costs the most -- ``gc.MLP([256] * 20 + [10])`` at
batch 64 (tanh) and an RNN of T 128, batch 16, hidden 128. Not in the default set; name
them (``-w mlp-small rnn-small``) or ask for ``-w all``."""

QUICK_SMALL: dict[str, Workload] = {name: w.quick() for name, w in SMALL.items()}
""":data:`SMALL` scaled down (``--quick``)."""


def workload_table(quick: bool) -> dict[str, Workload]:
    """Every workload by name, standard first, then :data:`SMALL` (``quick``: scaled down)."""
    return {**QUICK, **QUICK_SMALL} if quick else {**WORKLOADS, **SMALL}
