"""Ablation tables from a sweep: measured mean ± std over seeds beside the paper, and paired differences.

``python -m analysis.tables --table NAME`` reads the latest sweep of any spec ``NAME`` (docs/TRACKING.md)
and prints one row per setting in grid order, one column per metric its spec declared
(``metrics:``; the stage's defaults otherwise, p2m_core.tracking.table_layout). Each measured
metric is the mean ± sample std (ddof=1) over the seeds whose trial FINISHED, with their count;
the paper's number stands beside it where the paper has that row. Differences are each row minus
the baseline row (the spec's ``baseline:``, else the first), taken
**per seed** and then averaged: seeds share data, points and corruption, so pairing removes their
common effect, and a seed missing from either side is left out rather than biasing one mean.
Each difference is printed with its t interval over the paired seeds (95 %,
:data:`analysis.stats.CONFIDENCE`) and marked ``*`` when that interval excludes 0
(:func:`analysis.stats.paired_interval`); a difference over one paired seed has no interval.

What we measure (pseudo masks of the label stage, on our data) is not what the paper reports
(a trained network on VOC); the header of every output says both, so the columns are not read as
a reproduction. A training sweep (``table4``, ``table*_train``) measures a trained network, as the
paper does, and is rendered by the same rules with its columns named for what they hold
(:mod:`analysis.train_sweep_columns`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import cli, paper, runs, stats, train_sweep_columns
from p2m_core.errors import P2MInputError
from p2m_core.tracking import table_layout
from p2m_core.tracking import tags as T

if TYPE_CHECKING:
    from mlflow import MlflowClient

PERCENT_METRICS = frozenset({
    "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st",
    "mIoU", "pixel_acc", "disagreement_pct", "k_violation_pct", *train_sweep_columns.NET_PSEUDO_METRICS,
})
ERROR_METRICS = frozenset({"row_error", "col_error", "max_col_error", "rel_error"})
PAPER_SETTING = "paper: trained Point2Mask network, ResNet-50, Pascal VOC 2012 val"
FORMATS = ("md", "latex", "csv")
# A Δ cell's mark (its interval excludes 0) and what a Δ over one paired seed says instead of one.
MARK = "*"
NO_INTERVAL = "no interval"


def decimals(metric: str, declared: Mapping[str, int] | None = None) -> int:
    """Decimals a metric is printed with: what its spec declared (``decimals:``), else percent 1,
    errors and seconds 3, counts 1."""
    if declared and metric in declared:
        return int(declared[metric])
    if metric in PERCENT_METRICS:
        return 1
    if metric in ERROR_METRICS or metric.endswith("_s") or metric.startswith("seconds"):
        return 3
    if metric == "converged_fraction":
        return 3
    return 1


def setting_label(setting: Mapping[str, Any]) -> str:
    """``assignment=ot, k_scheme=nearest_point``: last key component, lists joined by ``+``.

    Only for a trials.json entry without a label; the sweep's label is used when it has one.
    """
    if not setting:
        return "default"
    parts = []
    for key, value in setting.items():
        shown = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={shown}")
    return ", ".join(parts)


def canonical(setting: Mapping[str, Any]) -> str:
    """A setting as a key: JSON with sorted keys (the same setting gives the same text)."""
    return json.dumps(setting, sort_keys=True)


def per_seed(rows: pd.DataFrame, metric: str) -> dict[Any, float]:
    """Metric value of each seed of one setting (finished trials only; duplicates averaged)."""
    if metric not in rows.columns:
        return {}
    done = rows[~rows["missing"]][["seed", metric]].dropna()
    return {seed: float(v) for seed, v in done.groupby("seed", sort=False, dropna=False)[metric].mean().items()}


def delta_columns(metric: str, differences: Sequence[float], paper_delta: float = math.nan) -> dict[str, Any]:
    """The ``delta_<m>_*`` columns of one row from its per-seed differences (to the baseline, or
    between two sweeps in :mod:`analysis.compare`).

    ``_ci_low``/``_ci_high`` bound the t interval at :data:`analysis.stats.CONFIDENCE` (NaN for
    fewer than two pairs) and ``_significant`` says whether it excludes 0 (False without one).
    """
    mean, std, n = stats.mean_std_n(differences)
    interval = stats.paired_interval(differences)
    p = f"delta_{metric}_"
    return {f"{p}mean": mean, f"{p}std": std, f"{p}n": n, f"{p}ci_low": interval.low, f"{p}ci_high": interval.high,
            f"{p}significant": interval.significant, f"{p}paper": paper_delta}


def build_table(client: MlflowClient, table: str, experiment: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The numbers of the latest sweep of spec ``table`` (one row per setting) and what they describe.

    Any spec in the store renders: its columns, baseline and decimals come from the sweep's
    ``trials.json`` (p2m_core.tracking.table_layout), the stage's defaults where it declared none.

    Columns: ``setting`` (label), the grid keys, ``baseline``, ``trials``, ``missing``, ``n``,
    then per metric ``<m>_mean``, ``<m>_std``, ``<m>_n``, ``<m>_paper`` and the paired
    differences to the baseline ``delta_<m>_mean``, ``delta_<m>_std``, ``delta_<m>_n``, the
    bounds of their t interval ``delta_<m>_ci_low``, ``delta_<m>_ci_high`` (NaN for n < 2),
    ``delta_<m>_significant`` (the interval excludes 0) and ``delta_<m>_paper``. ``meta`` holds
    the sweep's tags, the headers and the missing trials.

    A training sweep (tag ``p2m.stage`` = ``train``) adds ``pseudo_stage_<m>_mean/_std/_n``
    when the store has a pseudo-stage sweep of the same paper table, and ``meta`` says which
    columns md/latex show under which labels (:mod:`analysis.train_sweep_columns`).
    """
    sweep = runs.find_sweep(client, table, experiment)
    df, meta = sweep_table(client, sweep, table)
    if meta["stage"] != train_sweep_columns.STAGE:
        return df, meta
    # A training sweep: the network's columns, and the pseudo masks of the same settings from
    # the latest pseudo-stage sweep of the same paper table, in whichever experiment it is.
    meta = train_sweep_columns.network_layout(meta, meta.pop("frame"))
    stage_df = stage_meta = None
    if meta["paper_table"]:
        twins = runs.latest_sweeps(client, {T.PAPER_TABLE: meta["paper_table"], T.STAGE: "pseudo"}, one=True)
        for twin in twins.values():
            stage_df, stage_meta = sweep_table(client, twin, twin.data.tags.get(T.SPEC, ""), train_sweep_columns.STAGE_METRICS)
    return train_sweep_columns.add_pseudo_stage(df, meta, stage_df, stage_meta)


def reported_frame(client: MlflowClient, sweep: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The sweep's trial frame as its table reads it (a training sweep's held-out metrics in place
    of val's), with a ``_setting`` column (:func:`canonical`), and the sweep's tags."""
    info = runs.sweep_info(sweep)
    frame = runs.trial_frame(client, sweep)
    if info["stage"] == train_sweep_columns.STAGE:
        frame = train_sweep_columns.held_out_view(frame, info["split"])
    keyed = frame.assign(_setting=[canonical(t["setting"]) for t in frame.attrs["trials"]["trials"]])
    keyed.attrs = dict(frame.attrs)
    return keyed, info


def table_metrics(trials_doc: Mapping[str, Any], stage: str, logged: Iterable[str] | None) -> tuple[tuple[str, ...], list[str]]:
    """The columns a sweep's table shows, and the declared ones no trial logged.

    Declared columns (``metrics:``) all stay, and are named when no trial logged them (a
    misspelt metric shows, not a silently narrower table); of the stage's defaults only those
    the trials logged. ``logged`` is None when no trial finished (then nothing is filtered).
    """
    asked, declared = table_layout.metrics_of(trials_doc, stage)
    if logged is None:
        return tuple(asked), []
    logged = set(logged)
    if declared:
        return tuple(asked), [m for m in asked if m not in logged]
    return tuple(m for m in asked if m in logged) or tuple(asked), []


def sweep_table(client: MlflowClient, sweep: Any, table: str, metrics: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`build_table` of one sweep run (``table``: its spec name); ``metrics`` replaces the
    columns its ``trials.json`` asks for.

    ``meta`` also holds ``settings`` (each row's setting, as in trials.json) and, for a training
    sweep, ``frame`` (the trial frame: its header reads the trials' iterations).
    """
    frame, info = reported_frame(client, sweep)
    trials_doc = frame.attrs["trials"]
    unlogged: list[str] = []
    if metrics is None:
        metrics, unlogged = table_metrics(trials_doc, info["stage"], frame.columns if frame["run_id"].notna().any() else None)
    metrics = tuple(metrics)
    paper_key = info["paper_table"]
    paper_columns: list[str] = []
    if paper_key:
        paper_columns = [str(c) for c in paper.paper_table(paper_key).get("columns", [])]

    settings = [t["setting"] for t in trials_doc["trials"]]
    order: list[str] = list(dict.fromkeys(frame["_setting"]))
    by_key = {canonical(s): s for s in settings}
    grid_keys = list(frame.attrs["grid_keys"])
    asked_baseline = table_layout.baseline_of(trials_doc)
    baseline_key = canonical(asked_baseline) if asked_baseline and canonical(asked_baseline) in order else (order[0] if order else None)
    baseline_rows = frame[frame["_setting"] == baseline_key] if baseline_key else frame.iloc[:0]
    baseline_paper = paper.match_row(paper_key, by_key[baseline_key]) if paper_key and baseline_key else None

    # The sweep's own label of a setting (trials.json), so tables and sweep logs name rows alike.
    labels: dict[str, str] = {}
    for key, trial in zip(frame["_setting"], trials_doc["trials"]):
        labels.setdefault(key, str(trial.get("label") or "") or setting_label(trial["setting"]))

    records = []
    for key in order:
        setting = by_key[key]
        rows = frame[frame["_setting"] == key]
        row_paper = paper.match_row(paper_key, setting) if paper_key else None
        record: dict[str, Any] = {"setting": labels[key]}
        record.update({k: setting.get(k) for k in grid_keys})
        record["baseline"] = key == baseline_key
        record["trials"] = int(len(rows))
        record["missing"] = int(rows["missing"].sum())
        record["n"] = int(rows.loc[~rows["missing"], "seed"].nunique())
        for m in metrics:
            mean, std, n = stats.mean_std_n(per_seed(rows, m).values())
            record.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_n": n})
            record[f"{m}_paper"] = row_paper.get(m, math.nan) if row_paper else math.nan
        for m in metrics:
            if key == baseline_key:
                record.update(delta_columns(m, [], math.nan))
            else:
                mine, base = per_seed(rows, m), per_seed(baseline_rows, m)
                has_paper = row_paper and baseline_paper and m in row_paper and m in baseline_paper
                d_paper = round(row_paper[m] - baseline_paper[m], 6) if has_paper else math.nan
                record.update(delta_columns(m, [mine[s] - base[s] for s in mine if s in base], d_paper))
        records.append(record)
    df = pd.DataFrame.from_records(records)

    seeds = list(dict.fromkeys(t.get("seed") for t in trials_doc["trials"]))
    missing = frame[frame["missing"]]
    experiment_name = client.get_experiment(info["experiment_id"]).name
    measured = (
        f"measured: pseudo-mask quality of the p2m pseudo-label stage (maps: {info['source']}) "
        f"on {info['dataset']} {info['split']}, {len(seeds)} seed{'' if len(seeds) == 1 else 's'}"
    )
    meta: dict[str, Any] = {
        **info,
        "table": table,
        "experiment": experiment_name,
        "tracking_uri": client.tracking_uri,
        "metrics": list(metrics),
        "paper_columns": [m for m in metrics if m in paper_columns],
        "grid_keys": grid_keys,
        "decimals": {m: decimals(m, table_layout.decimals_of(trials_doc)) for m in metrics},
        "seeds": seeds,
        "n_seeds": len(seeds),
        "trials_total": int(len(frame)),
        "trials_missing": int(len(missing)),
        "missing": [(labels[r["_setting"]], r["seed"]) for _, r in missing.iterrows()],
        "baseline": labels[baseline_key] if baseline_key else "",
        "header_measured": measured,
        "header_paper": f"{PAPER_SETTING} ({paper_key})" if paper_key else "paper: no corresponding table",
        "settings": [by_key[key] for key in order],
        "extra_notes": [f"metric {m}: no trial of this sweep logged it (its column shows -)" for m in unlogged],
    }
    if info["stage"] == train_sweep_columns.STAGE:
        meta["frame"] = frame
    return df, meta


# ---------------------------------------------------------------------------------------------
# Rendering


def _num(value: float, places: int) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if places >= 3 and value != 0 and abs(value) < 0.5 * 10 ** (-places):
        return f"{value:.1e}"  # a converged marginal error would print as 0.000 (percent stay plain)
    return f"{value:.{places}f}"


def _cell(mean: float, std: float, n: int, places: int, row_n: int, pm: str) -> str:
    if n == 0:
        return "-"
    text = f"{_num(mean, places)}{pm}{_num(std, places) if n > 1 else '-'}"
    return text if n == row_n else f"{text} (n={n})"


def _signed(value: float, places: int) -> str:
    """A difference with its sign always written (``+2.1``, ``-0.4``)."""
    text = _num(value, places)
    return text if text == "-" or text.startswith("-") else f"+{text}"


def delta_cell(row: pd.Series, metric: str, places: int) -> str:
    """``+2.1 [+0.3, +3.9] (n=3) *``: the paired mean, its interval, the pairs, the mark.

    One pair: ``+2.1 (n=1, no interval)``; none: ``-``.
    """
    p = f"delta_{metric}_"
    n = int(row[f"{p}n"])
    if n == 0:
        return "-"
    mean = _signed(row[f"{p}mean"], places)
    if n < 2:
        return f"{mean} (n={n}, {NO_INTERVAL})"
    bounds = f"[{_signed(row[f'{p}ci_low'], places)}, {_signed(row[f'{p}ci_high'], places)}]"
    return f"{mean} {bounds} (n={n})" + (f" {MARK}" if row[f"{p}significant"] else "")


def _display(df: pd.DataFrame, meta: Mapping[str, Any], pm: str, delta: str) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the Markdown and LaTeX outputs."""
    with_paper, places = set(meta["paper_columns"]), meta["decimals"]
    # What md/latex show (a training table shows fewer columns than it computes) and how it names them.
    shown, deltas = _shown(meta), _deltas(meta)
    name = {m: meta.get("labels", {}).get(m, m) for m in [*shown, *deltas]}
    header = ["setting", "n"]
    for m in shown:
        header += [name[m]] + ([f"{name[m]} paper"] if m in with_paper else [])
    for m in deltas:
        header += [f"{delta}{name[m]}"] + ([f"{delta}{name[m]} paper"] if m in with_paper else [])
    body = []
    for _, r in df.iterrows():
        cells = [str(r["setting"]), str(int(r["n"]))]
        for m in shown:
            cells.append(_cell(r[f"{m}_mean"], r[f"{m}_std"], int(r[f"{m}_n"]), places[m], int(r["n"]), pm))
            if m in with_paper:
                cells.append(_num(r[f"{m}_paper"], places[m]))
        for m in deltas:
            cells.append("(baseline)" if r["baseline"] else delta_cell(r, m, places[m]))
            if m in with_paper:
                cells.append("-" if r["baseline"] else _signed(r[f"delta_{m}_paper"], places[m]))
        body.append(cells)
    return header, body


def _shown(meta: Mapping[str, Any]) -> list[str]:
    """Metrics md/latex show as mean ± std (a training table shows fewer than it computes)."""
    return list(meta.get("columns", meta["metrics"]))


def _deltas(meta: Mapping[str, Any]) -> list[str]:
    """Metrics md/latex show a Δ column of (the pseudo-stage columns are no differences)."""
    return list(meta.get("delta_metrics", meta["metrics"]))


def _interval_notes(df: pd.DataFrame, meta: Mapping[str, Any]) -> list[str]:
    """What a Δ cell holds, what the mark means, and (when a cell has one pair) why it has no interval."""
    level, quantile = f"{stats.CONFIDENCE * 100:g} %", f"{(1 + stats.CONFIDENCE) / 2:g}"
    lines = [
        f"Δ: each row minus the baseline ({meta['baseline']}), paired by seed: mean [low, high] (n=pairs), "
        f"the {level} t interval of the mean over the n paired seeds (mean ± t({quantile}, n-1) s/sqrt(n))",
        f"a trailing {MARK} marks a Δ whose {level} interval excludes 0",
    ]
    deltas = [f"delta_{m}_n" for m in _deltas(meta) if f"delta_{m}_n" in df.columns]
    if deltas and (df.loc[~df["baseline"].astype(bool), deltas] == 1).any().any():
        lines.append(f"n=1, {NO_INTERVAL}: a Δ over one paired seed has no spread to estimate, so no interval is given")
    return lines


def _notes(df: pd.DataFrame, meta: Mapping[str, Any]) -> list[str]:
    lines = [
        meta["header_measured"],
        meta["header_paper"],
        f"sweep run {meta['run_name'] or meta['sweep_run_id']} (id {meta['sweep_run_id']}, experiment {meta['experiment']}); "
        "values: mean ± sample std over seeds",
        *_interval_notes(df, meta),
    ]
    if meta["trials_missing"]:
        shown = ", ".join(f"{label} seed {seed}" for label, seed in meta["missing"][:8])
        more = ", ..." if len(meta["missing"]) > 8 else ""
        lines.append(f"{meta['trials_missing']} of {meta['trials_total']} trials missing (no FINISHED run): {shown}{more}")
    return lines + list(meta.get("extra_notes", []))


def render_markdown(df: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """A paragraph saying what was measured, then a pipe table."""
    header, body = _display(df, meta, " ± ", "Δ")
    notes = _notes(df, meta)
    lines = ["  \n".join(f"**{n.split(':', 1)[0]}:**{n.split(':', 1)[1]}" if n.startswith(("measured:", "paper:", "columns:")) else n for n in notes), ""]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines.append("| " + " | ".join(map(esc, header)) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters, and write ± and Δ in math mode."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def render_latex(df: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """A ``tabular`` (no packages needed), preceded by the headers as LaTeX comments."""
    header, body = _display(df, meta, " ± ", "Δ")
    lines = [f"% {note.replace('±', '+/-').replace('Δ', 'Delta')}" for note in _notes(df, meta)]
    lines.append(r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}")
    lines.append(r"\hline")
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\hline")
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines.append(r"\hline")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def render_csv(df: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """Plain numbers (no ± strings); list-valued settings as JSON; the sweep's tags as columns."""
    out = df.copy()
    for key in meta["grid_keys"]:
        out[key] = [json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for v in out[key]]
    for column in ("spec", "paper_table", "stage", "source", "dataset", "split", "sweep_run_id"):
        out[column] = meta[column]
    out["n_seeds"] = meta["n_seeds"]
    if "pseudo_stage" in meta:  # a training table's pseudo_stage_* columns: which sweep they come from
        out[f"{train_sweep_columns.STAGE_PREFIX}sweep_run_id"] = meta["pseudo_stage"]["sweep_run_id"]
        out[f"{train_sweep_columns.STAGE_PREFIX}n_seeds"] = meta["pseudo_stage"]["n_seeds"]
    return out.to_csv(index=False, lineterminator="\n")


def render(df: pd.DataFrame, meta: Mapping[str, Any], fmt: str) -> str:
    """The table as ``md``, ``latex`` or ``csv`` text."""
    if fmt == "md":
        return render_markdown(df, meta)
    if fmt == "latex":
        return render_latex(df, meta)
    if fmt == "csv":
        return render_csv(df, meta)
    raise P2MInputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.tables",
        description="Render an ablation table from the latest sweep of a spec in MLflow, beside the paper's numbers.",
    )
    p.add_argument("--table", required=True, help="the spec name of a sweep in the store (tag p2m.spec), e.g. table7")
    cli.add_store_arguments(p)
    cli.add_output_arguments(p, FORMATS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cli.check_format(args.format, FORMATS)
        client, _ = runs.connect(args.tracking_uri)
        df, meta = build_table(client, args.table, args.experiment)
        text = render(df, meta, args.format)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cli.emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
