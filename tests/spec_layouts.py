"""The ``table`` entry the sweep driver writes to ``trials.json`` for a built-in spec.

Tests that write sweep runs by hand record it the way ``ray_jobs.plan.trials_record`` does, so
the tables they read have the columns the shipped spec declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2m_core.tracking.table_layout import layout_record
from ray_jobs.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[1] / "experiments" / "sweeps"


def declared_layout(spec: str) -> dict[str, Any] | None:
    """``trials.json``'s ``table`` for ``experiments/sweeps/<spec>.yaml``; None for other names."""
    path = SWEEPS / f"{spec}.yaml"
    if not path.is_file():
        return None
    loaded = load_spec(path)
    return layout_record(loaded.metrics, loaded.baseline or loaded.settings()[0], loaded.decimals)
