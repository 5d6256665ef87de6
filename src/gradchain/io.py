"""Saving and loading models as ``.npz`` files (state dict + a JSON config)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import activations as _acts
from . import init as _init

__all__ = ["save", "load"]


def __dir__() -> list[str]:  # the public names, not the imports (np, Any, ...)
    return sorted(__all__)


_META = "__gradchain_config__"
_FORMAT = 1


def save(model: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s config and state dict to ``path`` (.npz), atomically
    (a temporary file in the same folder, then a rename)."""
    if not hasattr(model, "state_dict") or not hasattr(model, "config"):
        raise TypeError(f"model: expected a gradchain model, got {type(model).__name__}")
    cfg = model.config()
    cfg["format"] = _FORMAT
    arrays = {k: np.array(v) for k, v in model.state_dict().items()}
    arrays[_META] = np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(
    path: str | os.PathLike[str], activation: Any = None, allow_nonfinite: bool = False
) -> Any:
    """Rebuild a model saved by :func:`save`. A custom activation cannot be stored:
    pass it again as ``activation=``. Truncated, corrupted or mismatched files raise
    ``ValueError``; nothing half-loaded is ever returned."""
    from .models import MLP
    from .rnn import RNN

    # Whatever a corrupted file makes NumPy / zipfile raise (BadZipFile, EOFError, OSError,
    # ValueError for a bad .npy header or pickled data, NotImplementedError for a garbled
    # zip flag, ...) is reported as one ValueError; a missing file stays FileNotFoundError.
    # The file is opened here, not by np.load, which leaks its handle when the zip is bad.
    unreadable = (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError,
                  NotImplementedError, UnicodeDecodeError)
    if hasattr(path, "read"):
        fctx: Any = contextlib.nullcontext(path)
    else:
        try:
            fname = os.fspath(path)
        except TypeError:
            raise TypeError(f"path: expected a file path, got {type(path).__name__}") from None
        try:
            fctx = open(fname, "rb")  # closed by the with below
        except FileNotFoundError:
            raise
        except OSError as e:
            raise ValueError(f"{path}: cannot read gradchain model file ({e})") from e
    with fctx as f:
        try:
            z = np.load(f, allow_pickle=False)
        except unreadable as e:
            raise ValueError(f"{path}: cannot read gradchain model file ({e})") from e
        if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy array
            raise ValueError(f"{path}: not a gradchain model file (not an .npz archive)")
        with z:
            if _META not in z.files:
                raise ValueError(f"{path}: not a gradchain model file (no config entry)")
            try:
                cfg = json.loads(bytes(z[_META]).decode())
                state = {k: z[k] for k in z.files if k != _META}
            except unreadable as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}: cannot read gradchain model file ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"{path}: unsupported gradchain file format")
    try:
        kind = cfg["kind"]
        if activation is None:
            a = dict(cfg["activation"])
            if a.get("custom"):
                raise ValueError(
                    f"{path}: the model was saved with the custom activation {a.get('name')!r}; "
                    "pass it again: gc.load(path, activation=gc.Activation.custom(f, df))")
            act = _acts.Activation(a.pop("name"), **a)
        else:
            act = _acts.resolve(activation)
        if kind == "MLP":
            model: Any = MLP(
                cfg["sizes"], activation=act, init=_init.from_config(cfg["init"]),
                norm=cfg["norm"], residual=cfg["residual"], residual_scale=cfg["residual_scale"],
                bias=cfg["bias"], dtype=np.dtype(cfg["dtype"]), eps=cfg["eps"],
                momentum=cfg["momentum"],
            )
        elif kind == "RNN":
            model = RNN(
                cfg["input_size"], cfg["hidden_size"], activation=act,
                init=_init.from_config(cfg["init"]),
                input_init=_init.from_config(cfg["input_init"]), bias=cfg["bias"],
                output_size=cfg["output_size"], dtype=np.dtype(cfg["dtype"]),
                batch_first=cfg["batch_first"],
            )
        else:
            raise ValueError(f"{path}: unknown model kind {kind!r}")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed gradchain config ({e})") from e
    model.load_state_dict(state, strict=True, allow_nonfinite=allow_nonfinite)
    if hasattr(model, "train"):
        model.train(bool(cfg.get("training", True)))
    return model
