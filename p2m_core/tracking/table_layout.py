"""What a sweep's table shows: its metric columns, the row differences are taken against, decimals.

A sweep spec may declare these (``metrics:``, ``baseline:``, ``decimals:``); the sweep driver
records what it resolved in the sweep run's ``trials.json`` (key ``table``), so
``python -m analysis.tables --table NAME`` rebuilds the table of any sweep from the store alone,
without the spec file and without a Python edit per spec. A spec that declares nothing gets its
stage's defaults: the columns below, and its first grid point as the baseline.

Writers (``ray_jobs.spec``) and readers (``analysis.tables``) both take the defaults from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The columns of a table whose spec declares no ``metrics:``, per stage. pseudo: the masks'
#: panoptic quality and the solver's diagnostics (disagreement with minimum cost, capacity
#: violation, the transport plan's largest column error, seconds per image). train: the trained
#: network's panoptic quality and semantic mIoU, and the PQ of the pseudo masks made from its maps.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "pseudo": ("PQ", "PQ_th", "PQ_st", "disagreement_pct", "k_violation_pct", "col_error", "seconds_per_image"),
    "train": ("PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ"),
}
#: Largest number of decimals a spec may ask for a metric (more would print noise).
MAX_DECIMALS = 6
#: Key of the layout in ``trials.json``.
RECORD_KEY = "table"


def layout_record(metrics: tuple[str, ...], baseline: Mapping[str, Any], decimals: Mapping[str, int]) -> dict[str, Any]:
    """The ``table`` entry of ``trials.json``: ``metrics`` empty means "the stage's defaults"
    (recorded as ``null``, so a reader can tell a declaration from a default)."""
    return {"metrics": list(metrics) or None, "baseline": dict(baseline), "decimals": dict(decimals)}


def metrics_of(record: Mapping[str, Any], stage: str) -> tuple[tuple[str, ...], bool]:
    """The columns a sweep's ``trials.json`` asks for, and whether its spec declared them.

    A record written before specs could declare columns has no ``table`` entry: the stage's
    defaults apply, as they do to a spec that declares none.
    """
    declared = (record.get(RECORD_KEY) or {}).get("metrics")
    if declared:
        return tuple(str(m) for m in declared), True
    return DEFAULT_METRICS.get(stage, DEFAULT_METRICS["pseudo"]), False


def baseline_of(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The baseline grid point a ``trials.json`` names, or ``None`` (then the first row is)."""
    baseline = (record.get(RECORD_KEY) or {}).get("baseline")
    return dict(baseline) if isinstance(baseline, dict) and baseline else None


def decimals_of(record: Mapping[str, Any]) -> dict[str, int]:
    """Decimals the spec asked for per metric (the rest follow the metric's kind)."""
    return {str(k): int(v) for k, v in ((record.get(RECORD_KEY) or {}).get("decimals") or {}).items()}
