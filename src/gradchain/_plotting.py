"""Shared matplotlib plumbing: headless-safe import and PNG saving.

matplotlib is the optional extra ``plot`` (``pip install "gradchain[plot]"``).
Without a display (no ``DISPLAY``/``WAYLAND_DISPLAY`` on Linux) the Agg backend is
selected before pyplot is first imported, so plots work on servers and in CI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot``, with the Agg backend when there is no display.

    Raises ImportError with the install command when matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "plotting needs matplotlib: pip install \"gradchain[plot]\"") from e
    if "matplotlib.pyplot" not in sys.modules:
        headless = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if headless and "MPLBACKEND" not in os.environ:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike[str] | None, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG at ``path`` (no-op for None); parent folders must exist."""
    if path is None:
        return
    p = Path(path)
    if not p.parent.exists():
        raise ValueError(f"path: folder {str(p.parent)!r} does not exist")
    fig.savefig(p, dpi=dpi, format="png", bbox_inches="tight")
