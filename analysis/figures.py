"""What every figure module shares: headless matplotlib, PNG bytes, log axes for wide ranges."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Skip(Exception):
    """A sweep exists but holds nothing this figure can show (the reason is printed)."""


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures are files, never windows (Ray workers,
    CI and SSH sessions have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (closed afterwards, so long sessions do not pile figures up)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def finite(values: Sequence[Any]) -> np.ndarray:
    """The finite numbers among ``values`` (strings and None dropped)."""
    arr = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(dtype=float)
    return arr[np.isfinite(arr)]


def log_if_wide(ax: Any, values: Sequence[Any], axis: str = "x", ratio: float = 10.0) -> None:
    """Log scale when positive values span more than ``ratio`` (iterations 10..1000, epsilons)."""
    arr = finite(values)
    if arr.size and arr.min() > 0 and arr.max() / arr.min() > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
