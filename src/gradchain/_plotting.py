"""Shared matplotlib plumbing: headless-safe import and PNG saving.

matplotlib is a dependency of gradchain (also the extra ``plot``), imported only here,
when something is drawn, so ``import gradchain`` stays light.
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


def check_path(path: Any, name: str = "path") -> Path | None:
    """None, or a PNG file path whose folder exists: checked before anything is drawn.

    TypeError for a non-path value, ValueError for a folder or a missing parent folder.
    """
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise ValueError(f"{name}: expected a file name, got the folder {str(path)!r}")
    if not p.parent.exists():
        raise ValueError(f"{name}: folder {str(p.parent)!r} does not exist")
    return p


def axes(ax: Any, figsize: tuple[float, float] = (7.0, 4.0)) -> tuple[Any, Any]:
    """(fig, ax): a new figure of ``figsize`` inches when ax is None, else ax (checked:
    TypeError unless a matplotlib Axes) and its figure."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax: expected a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.get_figure(), ax


def save(fig: Any, path: str | os.PathLike[str] | None, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG at ``path`` (no-op for None); the folder must exist."""
    p = check_path(path)
    if p is None:
        return
    fig.savefig(p, dpi=dpi, format="png", bbox_inches="tight")
