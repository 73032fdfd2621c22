"""Two sweeps of one spec, setting by setting: did a code or config change move the table?

    python -m analysis.compare --table table7                     # the latest two sweeps of table7
    python -m analysis.compare --table table7 --runs BEFORE AFTER  # sweep run ids
    python -m analysis.compare --table table7 --commits abc123 def456   # by the p2m.git_commit tag
        [--experiment NAME] [--tracking-uri URI] [--tolerance 0.0] [--format md|csv] [--fail-if-moved]

The question a researcher asks after changing the method ("did my refactor change table 7?").
Both sweeps' rows are matched by grid setting and their trials paired by seed, exactly as a
table pairs a row with its baseline: for each setting and metric, the mean of the per-seed
differences (after − before) with its 95 % t interval (:func:`analysis.stats.paired_interval`).

A metric of a setting **moved** when its difference is larger than ``--tolerance`` (default 0)
and the seeds do not explain it: with two or more pairs its interval excludes 0; with one pair
(no interval exists) any difference beyond the tolerance counts. **identical** means every
paired value is equal, the answer a pure refactor of a deterministic pipeline should give.
``--fail-if-moved`` exits 1 when any setting moved, so the check can gate a commit.

Two runs of the same sweep into one experiment are one sweep (finished trials are not computed
again), so the "after" sweep of an unchanged config must go to another experiment:
``python -m ray_jobs.sweep SPEC --experiment p2m-after`` (then compare across all experiments).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis import cli, runs, stats, tables
from p2m_core.errors import P2MInputError
from p2m_core.tracking import table_layout
from p2m_core.tracking import tags as T

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

FORMATS = ("md", "csv")


def select_sweeps(client: MlflowClient, spec: str, experiment: str | None = None, run_ids: Sequence[str] = (),
                  commits: Sequence[str] = ()) -> tuple[Run, Run]:
    """``(before, after)``: two sweep runs of ``spec``, by run id, by commit prefix, or the latest two."""
    if run_ids:
        found = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except Exception as exc:  # MLflow raises its own exception types for an unknown id
                raise P2MInputError(f"--runs: no run {run_id!r} in {client.tracking_uri} ({type(exc).__name__})") from None
            if run.data.tags.get(T.KIND) != T.KIND_SWEEP or run.data.tags.get(T.SPEC) != spec:
                raise P2MInputError(f"--runs: run {run_id} is not a sweep run of spec {spec!r} "
                                    f"(kind {run.data.tags.get(T.KIND)!r}, spec {run.data.tags.get(T.SPEC)!r})")
            found.append(run)
        return found[0], found[1]
    sweeps = runs.sweeps_of(client, spec, experiment)
    if commits:
        chosen = []
        for commit in commits:
            match = [s for s in sweeps if s.data.tags.get(T.GIT_COMMIT, "").startswith(commit)]
            if not match:
                known = ", ".join(dict.fromkeys(s.data.tags.get(T.GIT_COMMIT, "?")[:12] for s in sweeps)) or "none"
                raise P2MInputError(f"--commits: no sweep of spec {spec!r} at commit {commit!r} (commits with one: {known})")
            chosen.append(match[0])  # the newest sweep at that commit
        return chosen[0], chosen[1]
    if len(sweeps) < 2:
        raise P2MInputError(
            f"tracking store {client.tracking_uri}: {len(sweeps)} sweep run(s) of spec {spec!r}, two are needed; "
            "a second run of an unchanged sweep into the same experiment computes nothing new: run it with "
            "--experiment OTHER, or pass --runs / --commits"
        )
    return sweeps[1], sweeps[0]


def compare(client: MlflowClient, before: Run, after: Run, metrics: Sequence[str] | None = None,
            tolerance: float = 0.0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per grid setting of either sweep: per metric the paired difference (after −
    before) with its interval, and whether the setting is identical or moved (module doc)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise P2MInputError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    old, old_info = tables.reported_frame(client, before)
    new, new_info = tables.reported_frame(client, after)
    if metrics is None:
        metrics, _ = tables.table_metrics(new.attrs["trials"], new_info["stage"], {*new.columns, *old.columns})
    metrics = list(metrics)
    labels: dict[str, str] = {}
    for frame in (new, old):
        for key, trial in zip(frame["_setting"], frame.attrs["trials"]["trials"]):
            labels.setdefault(key, str(trial.get("label") or "") or tables.setting_label(trial["setting"]))
    order = list(dict.fromkeys([*new["_setting"], *old["_setting"]]))
    decimals = table_layout.decimals_of(new.attrs["trials"])
    records = []
    for key in order:
        mine, theirs = new[new["_setting"] == key], old[old["_setting"] == key]
        record: dict[str, Any] = {"setting": labels[key], "in_before": bool(len(theirs)), "in_after": bool(len(mine))}
        moved = False
        identical = bool(len(mine)) and bool(len(theirs))
        pairs = 0
        for m in metrics:
            a, b = tables.per_seed(mine, m), tables.per_seed(theirs, m)
            differences = [a[s] - b[s] for s in a if s in b]
            interval = stats.paired_interval(differences)
            p = f"delta_{m}_"
            columns = tables.delta_columns(m, differences)
            columns.pop(f"{p}paper")  # two measured sweeps: no paper difference
            record.update({f"before_{m}_mean": stats.mean_std_n(b.values())[0], f"after_{m}_mean": stats.mean_std_n(a.values())[0],
                           **columns})
            beyond = interval.n > 0 and abs(interval.mean) > tolerance
            metric_moved = beyond and (interval.significant if interval.n >= 2 else True)
            record[f"{p}moved"] = metric_moved
            moved |= metric_moved
            identical &= bool(differences) and all(d == 0 for d in differences)
            pairs = max(pairs, interval.n)
        record.update({"n": pairs, "identical": identical, "moved": moved})
        records.append(record)
    df = pd.DataFrame.from_records(records)

    def side(run: Run, info: dict[str, Any]) -> dict[str, Any]:
        return {"sweep_run_id": run.info.run_id, "run_name": info["run_name"], "git_commit": run.data.tags.get(T.GIT_COMMIT, "?"),
                "experiment": client.get_experiment(info["experiment_id"]).name, "start_time": run.info.start_time,
                "split": info["split"], "stage": info["stage"]}

    meta = {
        "spec": new_info["spec"], "metrics": metrics, "tolerance": tolerance,
        "decimals": {m: tables.decimals(m, decimals) for m in metrics},
        "before": side(before, old_info), "after": side(after, new_info),
        "moved": int(df["moved"].sum()) if len(df) else 0, "identical": int(df["identical"].sum()) if len(df) else 0,
        "settings": len(df),
    }
    return df, meta


def _notes(meta: dict[str, Any]) -> list[str]:
    level = f"{stats.CONFIDENCE * 100:g} %"
    lines = []
    for which in ("before", "after"):
        s = meta[which]
        lines.append(f"{which}: sweep {s['run_name'] or s['sweep_run_id']} (id {s['sweep_run_id']}, experiment "
                     f"{s['experiment']}, commit {s['git_commit'][:12]}, {s['stage']} stage on {s['split']})")
    lines += [
        f"Δ: after − before per setting, paired by seed: mean [low, high] (n=pairs), the {level} t interval; "
        f"{tables.MARK} where it excludes 0",
        f"moved: some metric differs by more than {meta['tolerance']:g} and its interval excludes 0 (one pair: any such "
        "difference); identical: every paired value equal",
        f"{meta['moved']} of {meta['settings']} settings moved, {meta['identical']} identical",
    ]
    return lines


def render_markdown(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    """Notes, then one row per setting: its Δ cells and its verdict."""
    metrics, places = meta["metrics"], meta["decimals"]
    header = ["setting", "n", *(f"Δ{m}" for m in metrics), "verdict"]
    lines = ["  \n".join(_notes(meta)), "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for _, r in df.iterrows():
        if not (r["in_before"] and r["in_after"]):
            verdict = "only after" if r["in_after"] else "only before"
        else:
            verdict = "identical" if r["identical"] else ("**moved**" if r["moved"] else "within noise")
        cells = [str(r["setting"]), str(int(r["n"])), *(tables.delta_cell(r, m, places[m]) for m in metrics), verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render(df: pd.DataFrame, meta: dict[str, Any], fmt: str) -> str:
    """The comparison as ``md`` or ``csv`` (plain numbers, the two sweeps' ids as columns)."""
    if fmt == "md":
        return render_markdown(df, meta)
    if fmt == "csv":
        out = df.copy()
        for which in ("before", "after"):
            out[f"{which}_sweep_run_id"] = meta[which]["sweep_run_id"]
            out[f"{which}_git_commit"] = meta[which]["git_commit"]
        return out.to_csv(index=False, lineterminator="\n")
    raise P2MInputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.compare",
                                description="Compare two sweeps of one spec, setting by setting, paired by seed.")
    p.add_argument("--table", required=True, help="the spec name of the sweeps (tag p2m.spec)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--runs", nargs=2, metavar=("BEFORE", "AFTER"), default=(), help="two sweep run ids")
    which.add_argument("--commits", nargs=2, metavar=("BEFORE", "AFTER"), default=(), help="two git commits (prefixes) of the p2m.git_commit tag")
    cli.add_store_arguments(p)
    p.add_argument("--metrics", default="", metavar="M,M", help="metrics to compare (default: the sweep's table columns)")
    p.add_argument("--tolerance", type=float, default=0.0, help="differences up to this size never count as moved (default 0)")
    cli.add_output_arguments(p, FORMATS)
    p.add_argument("--fail-if-moved", action="store_true", help="exit 1 when any setting moved")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cli.check_format(args.format, FORMATS)
        client, _ = runs.connect(args.tracking_uri)
        before, after = select_sweeps(client, args.table, args.experiment, args.runs, args.commits)
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] or None
        df, meta = compare(client, before, after, metrics, args.tolerance)
        text = render(df, meta, args.format)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cli.emit(text, args.out)
    print(f"{meta['moved']} of {meta['settings']} settings moved, {meta['identical']} identical", file=sys.stderr)
    return 1 if args.fail_if_moved and meta["moved"] else 0


if __name__ == "__main__":
    sys.exit(main())
