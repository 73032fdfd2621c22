"""What a training sweep's table adds to the pseudo tables' layout (docs/TRACKING.md, "Training trials").

A training sweep (``stage: train``: ``table4``, ``table3_train``, ``table5_train``,
``table7_train``) is rendered by :func:`analysis.tables.build_table` like any sweep: one row
per setting, mean ± std over seeds, the paper beside it, paired differences. Only the meaning
of the columns differs, and one group of columns comes from another sweep:

- ``net <m>``: the trained network's panoptic prediction (``mIoU``: its semantic map P^s) on
  the sweep's split: for ``split: val`` the latest value of the trial run's metric ``<m>`` (its
  final evaluation), for a held-out split (``split: test``) the metric ``test/<m>`` it was
  scored on once at the end (:func:`held_out_view`). This is what the paper's ablations report, so the paper stands beside it.
- ``pseudo PQ (trained net)``: the trial run's ``pseudo_PQ``: PQ of the pseudo masks made from
  the trained network's own maps.
- ``pseudo PQ (pseudo stage)``: PQ of the pseudo masks of the pseudo-label stage for the same
  grid setting, from the latest ``stage: pseudo`` sweep answering the same paper table
  (``table7_train``'s ``assignment=ot`` row gets ``table7``'s ``assignment=ot`` row). Left
  out when the store has no such sweep.

This module holds the pure parts (labels, the header, the join); :mod:`analysis.tables` finds
the sweeps and computes the numbers with the one set of rules for every table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from analysis import paper

STAGE = "train"
PQ_COLUMNS = ("PQ", "PQ_th", "PQ_st")
#: A training trial's PQ of the pseudo masks made from the trained network's maps.
NET_PSEUDO_METRICS = ("pseudo_PQ", "pseudo_PQ_th", "pseudo_PQ_st")
#: Prefix of the columns taken from the pseudo-stage sweep of the same paper table.
STAGE_PREFIX = "pseudo_stage_"
#: Metrics of the pseudo-stage sweep carried over (all in CSV) and the ones shown in md/latex
#: beside the network's (the table is wide already: mean ± std, paper and Δ per network metric).
STAGE_METRICS = PQ_COLUMNS
SHOWN_PSEUDO = ("PQ",)


def label(metric: str) -> str:
    """Column label of a metric of a training table (see the module doc)."""
    if metric.startswith(STAGE_PREFIX):
        return f"pseudo {metric[len(STAGE_PREFIX):]} (pseudo stage)"
    if metric.startswith("pseudo_"):
        return f"pseudo {metric[len('pseudo_'):]} (trained net)"
    return f"net {metric}"


def held_out_view(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """The trial frame with the network's metrics taken from the held-out split it was scored on
    at the end (``<split>/PQ`` ... as ``PQ`` ...) when the sweep reports a split other than val:
    the val evaluations chose the settings, the table reports the split nothing was tuned on."""
    prefix = f"{split}/"
    held_out = [name for name in frame.attrs.get("metrics", []) if name.startswith(prefix)]
    if split == "val" or not held_out:
        return frame
    out = frame.assign(**{name[len(prefix):]: frame[name] for name in held_out})
    out.attrs = dict(frame.attrs)
    return out


def setting_key(setting: Mapping[str, Any]) -> tuple:
    """A setting as a hashable, order-free key, values normalised (``1`` matches ``1.0``)."""
    return tuple(sorted((k, paper.normalise(v)) for k, v in setting.items()))


def _iterations(frame: pd.DataFrame) -> str:
    """' after N iterations' from the trials' final ``iteration`` metric ('' when not logged)."""
    if "iteration" not in frame.columns:
        return ""
    values = sorted({int(v) for v in frame.loc[~frame["missing"], "iteration"] if v == v})
    if not values:
        return ""
    shown = str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return f" after {shown} iterations"


def network_layout(meta: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """``meta`` of a training sweep's table, relabelled: what was measured, column labels, which
    columns md/latex show and which get Δ columns. ``frame`` is the sweep's trial frame."""
    metrics = list(meta["metrics"])
    network = [m for m in metrics if not m.startswith("pseudo_")]
    seeds = meta["n_seeds"]
    meta = dict(meta)
    meta["header_measured"] = (
        f"measured: the network each trial trained (p2m train stage{_iterations(frame)}) on {meta['dataset']}, "
        f"evaluated on its {meta['split']} split, {seeds} seed{'' if seeds == 1 else 's'}"
    )
    meta["labels"] = {m: label(m) for m in metrics}
    meta["columns"] = metrics
    meta["delta_metrics"] = network
    legend = (
        "columns: net = the trained network's panoptic prediction (mIoU: its semantic map), its final evaluation; "
        "pseudo (trained net) = PQ of the pseudo masks made from the trained network's own maps"
    )
    meta["extra_notes"] = [legend, *meta.get("extra_notes", [])]
    return meta


def add_pseudo_stage(df: pd.DataFrame, meta: dict[str, Any], stage_df: pd.DataFrame | None,
                     stage_meta: Mapping[str, Any] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The training table with the pseudo-stage sweep's ``<m>_mean/_std/_n`` of the same setting
    as ``pseudo_stage_<m>_mean/_std/_n`` (NaN and n=0 where that sweep has no such setting).
    They are that sweep's values, not differences to a baseline: they get no interval.

    ``stage_df`` ``None`` (no pseudo sweep of this paper table) leaves the table as it is but
    for a note saying so.
    """
    meta = dict(meta)
    notes = list(meta.get("extra_notes", []))
    if stage_df is None or stage_meta is None:
        if meta.get("paper_table"):
            notes.append(f"no pseudo-stage sweep of paper table {meta['paper_table']} in the store: its columns are left out")
        meta["extra_notes"] = notes
        return df, meta
    rows = {setting_key(s): i for i, s in enumerate(stage_meta["settings"])}
    df = df.copy()
    matched = 0
    for m in STAGE_METRICS:
        means, stds, ns = [], [], []
        for setting in meta["settings"]:
            i = rows.get(setting_key(setting))
            has = i is not None and f"{m}_mean" in stage_df.columns
            means.append(float(stage_df.iloc[i][f"{m}_mean"]) if has else math.nan)
            stds.append(float(stage_df.iloc[i][f"{m}_std"]) if has else math.nan)
            ns.append(int(stage_df.iloc[i][f"{m}_n"]) if has else 0)
        df[f"{STAGE_PREFIX}{m}_mean"], df[f"{STAGE_PREFIX}{m}_std"], df[f"{STAGE_PREFIX}{m}_n"] = means, stds, ns
        matched = max(matched, sum(n > 0 for n in ns))
    added = [f"{STAGE_PREFIX}{m}" for m in STAGE_METRICS]
    meta["metrics"] = [*meta["metrics"], *added]
    meta["labels"] = {**meta.get("labels", {}), **{m: label(m) for m in added}}
    meta["decimals"] = {**meta["decimals"], **{f"{STAGE_PREFIX}{m}": stage_meta["decimals"].get(m, 1) for m in STAGE_METRICS}}
    meta["columns"] = [*meta.get("columns", meta["metrics"]), *(f"{STAGE_PREFIX}{m}" for m in SHOWN_PSEUDO)]
    meta["pseudo_stage"] = {k: stage_meta[k] for k in ("sweep_run_id", "spec", "source", "dataset", "split", "n_seeds")}
    seeds = stage_meta["n_seeds"]
    notes.append(
        f"pseudo (pseudo stage) = PQ of the pseudo masks of the pseudo-label stage for the same setting: sweep "
        f"{stage_meta['spec']} (run {stage_meta['sweep_run_id']}), maps {stage_meta['source']} on "
        f"{stage_meta['dataset']} {stage_meta['split']}, {seeds} seed{'' if seeds == 1 else 's'}"
        + ("" if matched == len(df) else f"; {len(df) - matched} of {len(df)} settings not in that sweep")
    )
    meta["extra_notes"] = notes
    return df, meta
