"""Module-level helpers for tests/test_pickle.py: a custom activation pickle can store by
name, and the work a spawned process-pool worker does (it imports this module, not
the test module)."""

from __future__ import annotations

from typing import Any

import numpy as np


def softsign(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


def softsign_grad(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.abs(x)) ** 2


def train(model: Any, opt: Any, x: np.ndarray, target: np.ndarray, steps: int,
          loss: str = "mse") -> tuple[Any, Any, list[float]]:
    """``steps`` optimiser steps on one batch; returns the model, the optimiser and the
    losses (a worker sends all three back)."""
    losses = []
    for _ in range(steps):
        value, _ = model.loss_and_grad(x, target, loss=loss)
        opt.step()
        losses.append(value)
    return model, opt, losses
