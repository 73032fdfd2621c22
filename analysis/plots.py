"""Figures of the sweeps that exist: centroid iterations, Sinkhorn convergence, MC vs OT overlays,
the learning curves of the training sweeps, and every sweep's numeric grid axes
(:mod:`analysis.axis_plots`).

``python -m analysis.plots`` draws what it can and says what it skipped: a store that holds only
the table7 sweep still gives its overlays. Every PNG is written atomically under ``--out`` and
logged to its sweep run under ``plots/`` (unless ``--no-log``), so the figures stay with the
numbers they were drawn from.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import cli, paper, runs, tables, train_sweep_columns
from analysis.axis_plots import plot_grid_axes
from analysis.figures import Skip, figure_png
from analysis.figures import finite as _finite
from analysis.figures import log_if_wide as _log_if_wide
from analysis.figures import pyplot as _pyplot
from p2m_core.errors import P2MInputError
from p2m_core.io import atomic_write_bytes
from p2m_core.tracking import tags as T

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

PLOTS_ARTIFACT_DIR = "plots"
MODE, EPSILON, ITERS = "pseudo.sinkhorn_mode", "pseudo.sinkhorn_epsilon", "pseudo.sinkhorn_iters"
ASSIGNMENT = "pseudo.assignment"
LEVEL_SOLVERS = ("mc", "ot_exact")  # assignments the sinkhorn settings do not apply to
SINKHORN_PANELS = (("PQ", "PQ (%)"), ("rel_error", "misplaced mass rel_error"), ("disagreement_pct", "OT vs MC disagreement (%)"))
OVERLAY_ROWS = 3


# ---------------------------------------------------------------------------------------------
# (a) table 6: PQ against centroid iterations


def plot_centroid_iters(client: MlflowClient, experiment: str | None) -> tuple[bytes, str]:
    """PQ (mean ± std over seeds) against ``pseudo.centroid_iters``, the paper's PQ on its own axis.

    Two y axes because the measured pseudo masks (our data) and the paper's trained network
    (VOC) differ in level; the figure compares trends, not values.
    """
    df, meta = tables.build_table(client, "table6", experiment)
    key = "pseudo.centroid_iters"
    if key not in df.columns:
        raise Skip(f"table6 sweep {meta['sweep_run_id']} has no grid key {key}")
    df = df[df["PQ_n"] > 0].copy()
    if df.empty:
        raise Skip(f"table6 sweep {meta['sweep_run_id']} has no finished trial")
    df["x"] = pd.to_numeric(df[key], errors="coerce")
    df = df.sort_values("x")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(df["x"], df["PQ_mean"], yerr=df["PQ_std"].fillna(0.0), marker="o", capsize=3, color="C0",
                label=f"measured: pseudo masks, {meta['source']} (n={meta['n_seeds']} seeds)")
    ax.set_xlabel("centroid iterations (pseudo.centroid_iters)")
    ax.set_ylabel("measured PQ (%)", color="C0")
    handles, labels = ax.get_legend_handles_labels()
    if meta["paper_table"]:
        rows = paper.paper_frame(meta["paper_table"])
        twin = ax.twinx()
        (line,) = twin.plot(pd.to_numeric(rows.iloc[:, 0]), rows["PQ"], marker="s", linestyle="--", color="C1",
                            label="paper: trained network, VOC val (right axis)")
        twin.set_ylabel("paper PQ (%)", color="C1")
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, loc="lower right", fontsize=8)
    ax.set_title("Table 6: nearest-centroid iterations")
    ax.grid(alpha=0.3)
    return figure_png(fig), meta["sweep_run_id"]


# ---------------------------------------------------------------------------------------------
# (b) Sinkhorn: PQ, marginal error and disagreement against iterations and epsilon


def sinkhorn_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (solver, epsilon, iterations) of the finished trials.

    The solver is the Sinkhorn mode for ``assignment=ot`` and the assignment otherwise (``mc``,
    ``ot_exact``), whose epsilon and iterations do not apply: they show as levels."""
    done = frame[~frame["missing"]].copy()
    if done.empty:
        return pd.DataFrame()
    done[MODE] = done[MODE].fillna("?").astype(str)
    if ASSIGNMENT in done.columns:
        assignment = done[ASSIGNMENT].fillna("ot").astype(str)
        done[MODE] = done[MODE].where(assignment == "ot", assignment)
    for key in (EPSILON, ITERS):
        done[key] = pd.to_numeric(done[key], errors="coerce")
    metrics = [m for m, _ in SINKHORN_PANELS if m in done.columns]
    grouped = done.groupby([MODE, EPSILON, ITERS], dropna=False, sort=True)[metrics]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    return summary.reset_index()


def _sinkhorn_figure(summary: pd.DataFrame, x: str, line_keys: tuple[str, str], xlabel: str, title: str) -> Figure:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SINKHORN_PANELS), figsize=(5 * len(SINKHORN_PANELS), 4))
    for ax, (metric, ylabel) in zip(axes, SINKHORN_PANELS):
        for i, (group, rows) in enumerate(summary.groupby(list(line_keys), dropna=False, sort=True)):
            rows = rows.dropna(subset=[x]).sort_values(x)
            mean = rows.get(f"{metric}_mean")
            if mean is None or not np.isfinite(mean.to_numpy(dtype=float)).any():
                continue
            if group[0] in LEVEL_SOLVERS:  # no epsilon, no iterations: a level to compare with
                ax.axhline(float(mean.iloc[0]), color=f"C{i % 10}", linestyle=":", linewidth=1.5,
                           label=f"assignment={group[0]}")
                continue
            label = f"{line_keys[0].rsplit('.', 1)[-1]}={group[0]}, {line_keys[1].rsplit('.', 1)[-1]}={group[1]:g}"
            std = rows[f"{metric}_std"].fillna(0.0)
            ax.errorbar(rows[x], mean, yerr=std, marker="o", capsize=3, color=f"C{i % 10}", label=label)
            if len(rows) == 1:
                # One value of x (a converged solver has one iteration cap): a level to compare with.
                ax.axhline(float(mean.iloc[0]), color=f"C{i % 10}", linestyle=":", linewidth=1)
        _log_if_wide(ax, summary[x])
        if metric == "rel_error":
            _log_if_wide(ax, summary.get("rel_error_mean", []), axis="y", ratio=100.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def plot_sinkhorn(client: MlflowClient, experiment: str | None) -> list[tuple[str, bytes, str]]:
    """``sinkhorn.png`` (against iterations) and ``sinkhorn_epsilon.png`` (against epsilon)."""
    sweep = runs.find_sweep(client, "sinkhorn", experiment)
    frame = runs.trial_frame(client, sweep, param_keys=(MODE, EPSILON, ITERS, ASSIGNMENT))
    summary = sinkhorn_summary(frame)
    if summary.empty:
        raise Skip(f"sinkhorn sweep {sweep.info.run_id} has no finished trial")
    run_id = sweep.info.run_id
    out = []
    fig = _sinkhorn_figure(summary, ITERS, (MODE, EPSILON), "Sinkhorn iterations (pseudo.sinkhorn_iters)",
                           "Sinkhorn: quality and marginal error against iterations")
    out.append(("sinkhorn.png", figure_png(fig), run_id))
    if _finite(summary[EPSILON]).size:
        fig = _sinkhorn_figure(summary, EPSILON, (MODE, ITERS), "entropic epsilon (pseudo.sinkhorn_epsilon)",
                               "Sinkhorn: quality and marginal error against epsilon")
        for ax in fig.axes:
            if _finite(summary[EPSILON]).min() > 0:
                ax.set_xscale("log")
        out.append(("sinkhorn_epsilon.png", figure_png(fig), run_id))
    else:
        print(f"note: sinkhorn sweep {run_id}: no {EPSILON} values, sinkhorn_epsilon.png skipped", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------
# (c) table 7: overlays of minimum cost and optimal transport side by side


def _overlay_names(client: MlflowClient, run_id: str) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, "overlays") if not f.is_dir and f.path.endswith(".png"))


def plot_table7_overlays(client: MlflowClient, experiment: str | None) -> tuple[bytes, str]:
    """Up to three overlays of the first seed: minimum cost left, optimal transport right.

    The first seed (grid order) for which both assignments finished, so the two columns show
    the same images, points and corruption.
    """
    sweep = runs.find_sweep(client, "table7", experiment)
    frame = runs.trial_frame(client, sweep)
    key = "pseudo.assignment"
    if key not in frame.columns:
        raise Skip(f"table7 sweep {sweep.info.run_id} has no grid key {key}")
    done = frame[~frame["missing"]]
    pair = None
    for seed in dict.fromkeys(frame["seed"]):
        mc = done[(done["seed"] == seed) & (done[key] == "mc")]
        ot = done[(done["seed"] == seed) & (done[key] == "ot")]
        if len(mc) and len(ot):
            pair = (seed, mc.iloc[0]["run_id"], ot.iloc[0]["run_id"])
            break
    if pair is None:
        raise Skip(f"table7 sweep {sweep.info.run_id}: no seed with finished mc and ot trials")
    seed, mc_id, ot_id = pair
    mc_names, ot_names = _overlay_names(client, mc_id), _overlay_names(client, ot_id)
    common = [n for n in mc_names if n in set(ot_names)]
    # The same images in both columns when the runs share names; else side by side in name order.
    rows = [(n, n) for n in common] if common else list(zip(mc_names, ot_names))
    rows = rows[:OVERLAY_ROWS]
    if not rows:
        raise Skip(f"table7 sweep {sweep.info.run_id}: trial runs {mc_id} / {ot_id} have no overlays/*.png")
    from PIL import Image

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.6 * len(rows)), squeeze=False)
    with tempfile.TemporaryDirectory(prefix="p2m-overlays-") as tmp:
        for r, (mc_path, ot_path) in enumerate(rows):
            for c, (run_id, path, title) in enumerate(((mc_id, mc_path, "minimum cost"), (ot_id, ot_path, "optimal transport"))):
                local = client.download_artifacts(run_id, path, str(Path(tmp) / run_id))
                with Image.open(local) as image:
                    axes[r][c].imshow(np.asarray(image.convert("RGB")))
                axes[r][c].set_xticks([])
                axes[r][c].set_yticks([])
                if r == 0:
                    axes[r][c].set_title(title)
                if c == 0:
                    axes[r][c].set_ylabel(Path(mc_path).stem, fontsize=8)
    fig.suptitle(f"Table 7, seed {seed}: [image + points | pseudo masks | ground truth]")
    return figure_png(fig), sweep.info.run_id


# ---------------------------------------------------------------------------------------------
# (d) training sweeps: val PQ (and the training loss) against the iteration, per setting

CURVE_PANELS = (("PQ", "val PQ of the network (%)"), ("pseudo_PQ", "val PQ of its pseudo masks (%)"),
                ("loss/total", "training loss (loss/total)"))


def learning_curve_figure(history: pd.DataFrame, title: str) -> Figure:
    """One panel per metric of ``history`` (:func:`runs.metric_histories`), one colour per setting,
    one line per seed; the evaluation metrics are sparse, so their points are marked."""
    keys = [k for k, _ in CURVE_PANELS if k in set(history["key"])]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(history["label"]))}
    several_seeds = history.groupby("label")["seed"].nunique().max() > 1
    for ax, key in zip(axes[0], keys):
        for (label, seed), rows in history[history["key"] == key].groupby(["label", "seed"], sort=False):
            ax.plot(rows["step"], rows["value"], marker=None if key.startswith("loss/") else "o", markersize=3,
                    color=colours[label], alpha=0.8, label=f"{label} (seed {seed})" if several_seeds else label)
        if key.startswith("loss/"):
            _log_if_wide(ax, history.loc[history["key"] == key, "value"], axis="y")
        ax.set_xlabel("iteration")
        ax.set_ylabel(dict(CURVE_PANELS)[key])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def plot_learning_curves(client: MlflowClient, experiment: str | None) -> list[tuple[str, bytes, str]]:
    """``<spec>_learning_curves.png`` for the latest sweep of every training spec in the store."""
    sweeps = runs.latest_sweeps(client, {T.STAGE: train_sweep_columns.STAGE}, experiment)
    if not sweeps:
        raise runs.NoSweepError(f"tracking store {client.tracking_uri}: no training sweep (tag p2m.stage=train)")
    out = []
    for spec, sweep in sweeps.items():
        history = runs.metric_histories(client, runs.trial_frame(client, sweep), [k for k, _ in CURVE_PANELS])
        if history.empty or "PQ" not in set(history["key"]):
            print(f"note: training sweep {spec} ({sweep.info.run_id}) has no finished trial with a PQ history; "
                  "its learning curves skipped", file=sys.stderr)
            continue
        fig = learning_curve_figure(history, f"{spec}: the network on {sweep.data.tags.get(T.SPLIT, 'val')} while it trains")
        out.append((f"{spec}_learning_curves.png", figure_png(fig), sweep.info.run_id))
    if not out:
        raise Skip("no training sweep has a finished trial with a PQ history")
    return out


# ---------------------------------------------------------------------------------------------


def _single(fn: Callable[[MlflowClient, str | None], tuple[bytes, str]], name: str):
    def wrapped(client: MlflowClient, experiment: str | None) -> list[tuple[str, bytes, str]]:
        data, run_id = fn(client, experiment)
        return [(name, data, run_id)]

    return wrapped


PLOTS: dict[str, Callable[[MlflowClient, str | None], list[tuple[str, bytes, str]]]] = {
    "table6": _single(plot_centroid_iters, "table6_centroid_iters.png"),
    "sinkhorn": plot_sinkhorn,
    "table7": _single(plot_table7_overlays, "table7_overlays.png"),
    "train": plot_learning_curves,  # every training sweep (table4, table*_train, ...)
    "grid axes": plot_grid_axes,  # every sweep's numeric grid axes (analysis/axis_plots.py)
}


def make_plots(client: MlflowClient, out_dir: str | Path, experiment: str | None = None, log: bool = True) -> list[Path]:
    """Write (and log to each sweep run) every figure whose sweep exists; the paths written.

    Raises :class:`runs.NoSweepError` when none of the sweeps exists: an empty folder would
    look like success.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    absent: list[str] = []
    for spec, make in PLOTS.items():
        try:
            figures = make(client, experiment)
        except runs.NoSweepError:
            absent.append(spec)
            print(f"note: no {spec} sweep, its plot skipped", file=sys.stderr)
            continue
        except Skip as exc:
            print(f"note: {exc}; plot skipped", file=sys.stderr)
            continue
        for name, data, run_id in figures:
            path = atomic_write_bytes(out_dir / name, data)
            written.append(path)
            if log:
                client.log_artifact(run_id, str(path), PLOTS_ARTIFACT_DIR)
            print(f"wrote {path}" + (f" (logged to run {run_id} under {PLOTS_ARTIFACT_DIR}/)" if log else ""), file=sys.stderr)
    if len(absent) == len(PLOTS):
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise runs.NoSweepError(f"tracking store {client.tracking_uri}: no sweep of {', '.join(PLOTS)} in {where}")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.plots", description="Plot the sweeps found in MLflow.")
    cli.add_store_arguments(p)
    p.add_argument("--out", default="plots", help="output folder (default %(default)s/)")
    p.add_argument("--no-log", action="store_true", help="do not log the PNGs to the sweep runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client, _ = runs.connect(args.tracking_uri)
        make_plots(client, args.out, args.experiment, log=not args.no_log)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
