"""MLflow -> pandas: a sweep's trials joined with the runs that computed them (docs/TRACKING.md).

A sweep's rows are found by **config hash**, not by parent run: a trial that another sweep
already finished is not computed again, so its run may hang under that other sweep. The sweep
run's ``trials.json`` says which hashes belong to it, in grid order; the FINISHED trial runs of
the same experiment say what each hash measured. A hash with no FINISHED run stays in the frame
with ``missing=True``, so a table can say "n of m trials missing" instead of quietly averaging
fewer seeds.

MLflow is imported lazily so that input errors (unknown table, missing sqlite file) are reported
before its slow import.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from p2m_core.errors import P2MInputError
from p2m_core.tracking import tags as T
from p2m_core.tracking.uri import resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

TRIALS_FORMAT, TRIALS_ARTIFACT = T.TRIALS_FORMAT, T.TRIALS_ARTIFACT
PAGE_SIZE = 1000  # MLflow's largest page; runs are read page by page, never assumed to fit one


class NoSweepError(P2MInputError):
    """No sweep run of the asked spec: a plot skips it, a table cannot be made."""


def connect(tracking_uri: str = "") -> tuple[MlflowClient, str]:
    """A client of the store the sweeps wrote, and its URI.

    ``tracking_uri`` empty means the project's one rule (:func:`resolve_tracking_uri`). A sqlite
    file that does not exist is an error naming the path: MLflow would otherwise create an
    empty database there and every table would read "no sweep".
    """
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise P2MInputError(
            f"tracking store {uri}: sqlite file {db} does not exist (run a sweep first, or pass "
            "--tracking-uri / set MLFLOW_TRACKING_URI to the store the sweeps wrote)"
        )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def parse_param(value: Any) -> Any:
    """A param's value: JSON for non-strings, the raw string otherwise (TRACKING.md, Params)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value


def _quote(value: str, what: str) -> str:
    if "'" in value or "\\" in value:
        raise P2MInputError(f"{what} {value!r}: quotes and backslashes are not allowed")
    return f"'{value}'"


def search_all_runs(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str, order_by: Sequence[str] | None = None) -> list[Run]:
    """Every run matching ``filter_string``, following page tokens (a store may hold thousands)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string=filter_string, max_results=PAGE_SIZE,
            order_by=list(order_by) if order_by else None, page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiments(client: MlflowClient, experiment: str | None, uri: str) -> list[tuple[str, str]]:
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage != "active":
            raise P2MInputError(f"tracking store {uri}: no experiment named {experiment!r}")
        return [(found.experiment_id, found.name)]
    result: list[tuple[str, str]] = []
    token = None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        result.extend((e.experiment_id, e.name) for e in page)
        token = page.token
        if not token:
            return result


def latest_sweeps(client: MlflowClient, tags: Mapping[str, str], experiment: str | None = None, one: bool = False) -> dict[str, Run]:
    """The latest sweep run (by start time) of each spec among the sweep runs with ``tags``.

    ``one`` stops at the newest match (its spec then is the only key). Latest, because
    re-running a spec with another grid, seeds or ``--set`` makes a new sweep run; the newest is
    the one the user just launched.
    """
    experiments = _experiments(client, experiment, client.tracking_uri)
    if not experiments:
        return {}
    where = " and ".join(f"tags.`{k}` = {_quote(v, k)}" for k, v in {T.KIND: T.KIND_SWEEP, **tags}.items())
    order = ["attributes.start_time DESC"]
    ids = [eid for eid, _ in experiments]
    found = client.search_runs(ids, filter_string=where, max_results=1, order_by=order) if one else search_all_runs(client, ids, where, order)
    latest: dict[str, Run] = {}
    for run in found:
        latest.setdefault(run.data.tags.get(T.SPEC, ""), run)
    return latest


def sweeps_of(client: MlflowClient, spec: str, experiment: str | None = None) -> list[Run]:
    """Every sweep run of spec ``spec``, newest first (by start time), in ``experiment`` or in all."""
    experiments = _experiments(client, experiment, client.tracking_uri)
    if not experiments:
        return []
    where = f"tags.`{T.KIND}` = '{T.KIND_SWEEP}' and tags.`{T.SPEC}` = {_quote(spec, 'spec')}"
    return search_all_runs(client, [eid for eid, _ in experiments], where, ["attributes.start_time DESC"])


def find_sweep(client: MlflowClient, table: str, experiment: str | None = None) -> Run:
    """The latest sweep run (by start time) of spec ``table``, in ``experiment`` or in all experiments."""
    found = latest_sweeps(client, {T.SPEC: table}, experiment, one=True)
    if found:
        return next(iter(found.values()))
    experiments = _experiments(client, experiment, client.tracking_uri)
    names = ", ".join(repr(name) for _, name in experiments) or "none"
    known = ", ".join(sorted(latest_sweeps(client, {}, experiment))) or "none"
    raise NoSweepError(
        f"tracking store {client.tracking_uri}: no sweep run of spec {table!r} (tag p2m.spec) in experiments {names}; "
        f"sweeps in the store: {known}"
    )


def load_sweep_trials(client: MlflowClient, sweep_run: Run) -> dict[str, Any]:
    """The sweep's ``trials.json``: its trials (config hash, setting, seed, label) in grid order."""
    run_id = sweep_run.info.run_id
    with tempfile.TemporaryDirectory(prefix="p2m-trials-") as tmp:
        try:
            local = client.download_artifacts(run_id, TRIALS_ARTIFACT, tmp)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise P2MInputError(f"sweep run {run_id}: artifact {TRIALS_ARTIFACT} cannot be read ({exc})") from exc
        try:
            data = json.loads(Path(local).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise P2MInputError(f"sweep run {run_id}: {TRIALS_ARTIFACT} is not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or data.get("format") != TRIALS_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise P2MInputError(f"sweep run {run_id}: {TRIALS_ARTIFACT} format {got!r}, expected {TRIALS_FORMAT!r}")
    trials = data.get("trials")
    if not isinstance(trials, list):
        raise P2MInputError(f"sweep run {run_id}: {TRIALS_ARTIFACT} field 'trials' is not a list")
    for i, trial in enumerate(trials):
        if not isinstance(trial, dict) or not isinstance(trial.get("config_hash"), str) or not isinstance(trial.get("setting"), dict):
            raise P2MInputError(f"sweep run {run_id}: {TRIALS_ARTIFACT} trials[{i}] needs a config_hash string and a setting object")
    return data


def finished_trial_runs(client: MlflowClient, experiment_ids: Iterable[str]) -> dict[str, Run]:
    """The FINISHED trial run of each config hash; when several finished, the latest started wins.

    FAILED and KILLED runs are left out: they measured nothing a table may show.
    """
    filter_string = f"tags.`{T.KIND}` = '{T.KIND_TRIAL}' and attributes.status = 'FINISHED'"
    by_hash: dict[str, Run] = {}
    for run in search_all_runs(client, list(experiment_ids), filter_string):
        key = run.data.tags.get(T.CONFIG_HASH)
        if not key:
            continue
        best = by_hash.get(key)
        if best is None or (run.info.start_time or 0) > (best.info.start_time or 0):
            by_hash[key] = run
    return by_hash


def trial_frame(client: MlflowClient, sweep_run: Run, param_keys: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial of ``trials.json``, in grid order, with what its FINISHED run measured.

    Columns: ``label``, ``seed``, one per grid key (the setting's value, as in trials.json),
    ``config_hash``, ``run_id``, ``parent_run_id``, ``start_time``, ``missing`` (no FINISHED
    run), then every metric of the runs. ``param_keys`` adds those params (parsed from JSON)
    where the setting does not give them: a sweep may fix a key for some trials only (e.g. a
    converged Sinkhorn has one iteration cap).
    """
    data = load_sweep_trials(client, sweep_run)
    runs = finished_trial_runs(client, [sweep_run.info.experiment_id])
    grid_keys = list(data.get("grid_keys") or [])
    for trial in data["trials"]:
        grid_keys.extend(k for k in trial["setting"] if k not in grid_keys)
    records: list[dict[str, Any]] = []
    metric_names: list[str] = []
    for trial in data["trials"]:
        run = runs.get(trial["config_hash"])
        record: dict[str, Any] = {
            "label": trial.get("label", ""),
            "seed": trial.get("seed"),
            **{k: trial["setting"].get(k) for k in grid_keys},
            "config_hash": trial["config_hash"],
            "run_id": run.info.run_id if run else None,
            "parent_run_id": run.data.tags.get(T.PARENT_RUN_ID) if run else None,
            "start_time": run.info.start_time if run else None,
            "missing": run is None,
        }
        for key in param_keys:
            if record.get(key) is None:
                record[key] = parse_param(run.data.params.get(key)) if run else None
        if run is not None:
            for name, value in run.data.metrics.items():
                if name not in metric_names:
                    metric_names.append(name)
                record[name] = float(value)
        records.append(record)
    columns = ["label", "seed", *grid_keys, *[k for k in param_keys if k not in grid_keys],
               "config_hash", "run_id", "parent_run_id", "start_time", "missing", *metric_names]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for name in metric_names:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    frame.attrs["grid_keys"] = grid_keys
    frame.attrs["metrics"] = metric_names
    frame.attrs["trials"] = data
    return frame


def sweep_info(sweep_run: Run) -> dict[str, Any]:
    """The sweep run's tags a table header needs (spec, paper table, stage, dataset, split, source)."""
    tags = sweep_run.data.tags
    return {
        "sweep_run_id": sweep_run.info.run_id,
        "experiment_id": sweep_run.info.experiment_id,
        "spec": tags.get(T.SPEC, ""),
        "paper_table": tags.get(T.PAPER_TABLE, ""),
        "stage": tags.get(T.STAGE, "pseudo"),
        "dataset": tags.get(T.DATASET, "?"),
        "split": tags.get(T.SPLIT, "?"),
        "source": tags.get(T.SOURCE, "?"),
        "sweep_hash": tags.get(T.SWEEP_HASH, ""),
        "run_name": tags.get(T.RUN_NAME, ""),
    }


def metric_histories(client: MlflowClient, frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Every logged step of ``keys`` of the finished trials of ``frame`` (:func:`trial_frame`).

    One row per (trial, key, step): ``label``, ``seed``, ``run_id``, ``key``, ``step``,
    ``value``, in grid order and by step. A step logged twice keeps its latest value (by
    timestamp), as MLflow's own "latest" does. A training trial's metrics are logged per
    iteration (docs/TRACKING.md), so ``step`` is the iteration.
    """
    records: list[dict[str, Any]] = []
    for _, trial in frame[~frame["missing"]].iterrows():
        for key in keys:
            by_step: dict[int, tuple[int, float]] = {}
            for m in client.get_metric_history(trial["run_id"], key):
                if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                    by_step[m.step] = (m.timestamp, float(m.value))
            records.extend({"label": trial["label"], "seed": trial["seed"], "run_id": trial["run_id"], "key": key,
                            "step": step, "value": value} for step, (_, value) in sorted(by_step.items()))
    return pd.DataFrame.from_records(records, columns=["label", "seed", "run_id", "key", "step", "value"])
