"""Any sweep's numeric grid axes as figures: each table metric against the axis value.

A researcher's own sweep (``pseudo.beta: [0.5, 1, 2]`` x ``pseudo.k_scheme: [...]``) gets its
plots without a Python edit: for every grid key whose values are all numbers, one figure
``<spec>_by_<key>.png`` with one panel per column of the sweep's table (the metrics its spec
declared, or the stage's defaults), one line per setting of the other grid keys, and error bars
of the sample std over seeds. The numbers are the table's own (:func:`analysis.tables.sweep_table`),
so a plot and its table never disagree.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import runs, tables
from analysis.figures import Skip, figure_png, log_if_wide, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

#: Panels per row of a figure (a sweep with many metrics wraps onto more rows).
PANELS_PER_ROW = 4


def numeric_axes(df: pd.DataFrame, grid_keys: Sequence[str]) -> list[str]:
    """Grid keys whose values (where a row has one) are all numbers, with at least two of them.

    Booleans and lists are settings, not positions on an axis; a key that only some grid blocks
    set counts when the rows that set it hold numbers.
    """
    axes = []
    for key in grid_keys:
        values = [v for v in df[key] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values) and len(set(values)) >= 2:
            axes.append(key)
    return axes


def _others_label(row: pd.Series, others: Sequence[str]) -> str:
    parts = []
    for key in others:
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        shown = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={shown}")
    return ", ".join(parts) or "all"


def axis_figure(df: pd.DataFrame, meta: dict[str, Any], axis: str) -> Figure:
    """Metric (mean, std error bars) against ``axis``, one line per setting of the other keys."""
    metrics = [m for m in meta["metrics"] if f"{m}_mean" in df.columns]
    labels = meta.get("labels", {})
    others = [k for k in meta["grid_keys"] if k != axis]
    rows = df[df[axis].notna()].copy()
    rows["_x"] = pd.to_numeric(rows[axis], errors="coerce")
    rows["_line"] = [_others_label(r, others) for _, r in rows.iterrows()]
    plt = pyplot()
    ncols = min(PANELS_PER_ROW, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        for j, (line, points) in enumerate(rows.groupby("_line", sort=False)):
            points = points.sort_values("_x")
            mean = points[f"{metric}_mean"].astype(float)
            if not mean.notna().any():
                continue
            ax.errorbar(points["_x"], mean, yerr=points[f"{metric}_std"].astype(float).fillna(0.0), marker="o",
                        capsize=3, color=f"C{j % 10}", label=line)
        log_if_wide(ax, rows["_x"])
        ax.set_xlabel(axis)
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    seeds = meta["n_seeds"]
    fig.suptitle(f"{meta['table']}: by {axis} ({meta['split']} split, mean ± std over {seeds} seed{'' if seeds == 1 else 's'})")
    return fig


def plot_grid_axes(client: MlflowClient, experiment: str | None) -> list[tuple[str, bytes, str]]:
    """``<spec>_by_<key>.png`` for every numeric grid axis of the latest sweep of every spec."""
    sweeps = runs.latest_sweeps(client, {}, experiment)
    if not sweeps:
        raise runs.NoSweepError(f"tracking store {client.tracking_uri}: no sweep run")
    out = []
    for spec, sweep in sweeps.items():
        df, meta = tables.sweep_table(client, sweep, spec)
        done = df[df["n"] > 0]
        for axis in numeric_axes(done, meta["grid_keys"]):
            fig = axis_figure(done, meta, axis)
            out.append((f"{spec}_by_{axis.rsplit('.', 1)[-1]}.png", figure_png(fig), sweep.info.run_id))
    if not out:
        raise Skip("no sweep has a numeric grid axis with finished trials")
    return out
