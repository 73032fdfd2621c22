"""The tracking store as a sweep driver sees it: reachability, the experiment, what is done.

The driver calls these before Ray starts (docs/TRACKING.md, "Resume"): check that the store
answers, create the experiment once (trials never do, or they race on a fresh sqlite file),
open or reuse the sweep's run, mark its orphaned children KILLED and list the config hashes
that already have a FINISHED trial run. MLflow, not Ray Tune's own state, is the record of what
is done, because it survives a killed driver and is shared by every machine of a cluster.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2m_core.errors import P2MInputError
from p2m_core.tracking import tags as T
from p2m_core.tracking.schema_cache import seed_new_store
from p2m_core.tracking.uri import default_artifact_root, is_server, sqlite_path

log = logging.getLogger(__name__)

#: Seconds to wait for an ``http(s)://`` server's ``/health`` before giving up.
HEALTH_TIMEOUT_S = 5.0


def quiet_mlflow_logs() -> None:
    """MLflow's sqlite migrations log a dozen INFO lines per new store; keep the console readable."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


@functools.lru_cache(maxsize=8)
def client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``, one per store and process.

    No global MLflow state (several stores may be used at once), but cached: opening a sqlite
    store checks its schema, which costs ~0.3 s, and a Ray worker reused for the next trial
    would pay it again on every trial. A sqlite store that does not exist yet starts as a copy
    of MLflow's cached empty schema (:mod:`~p2m_core.tracking.schema_cache`).
    """
    from mlflow.tracking import MlflowClient

    quiet_mlflow_logs()
    seed_new_store(uri)
    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail with the URI in the message when the store cannot be used; create a sqlite file's folder.

    A server must answer ``GET /health``; a sqlite store must be in a writable folder.
    """
    if is_server(uri):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S)
        except requests.RequestException as exc:
            raise P2MInputError(
                f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}); start it "
                "(`mlflow server --host 127.0.0.1 --port 5000 ...`) or set tracking.tracking_uri / MLFLOW_TRACKING_URI"
            ) from None
        if response.status_code != 200:
            raise P2MInputError(f"MLflow tracking server {uri} answered /health with HTTP {response.status_code}")
        return
    path = sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise P2MInputError(f"MLflow store {uri}: cannot create folder {path.parent}: {exc}") from None


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created with an explicit artifact folder if absent.

    The experiment carries the tag :data:`~p2m_core.tracking.tags.EXPERIMENT_KIND` =
    ``custom_model_development``, which the MLflow UI reads as "model training" (not GenAI):
    set at creation, and added to an experiment we reuse that lacks it (one made before, or by
    hand)."""
    mlflow_client = client(uri)
    kind = {T.EXPERIMENT_KIND: T.EXPERIMENT_KIND_MODEL_DEVELOPMENT}
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        location = default_artifact_root(uri, name)
        try:
            return mlflow_client.create_experiment(name, artifact_location=location, tags=kind)
        except Exception:  # another driver created it first
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise P2MInputError(
            f"MLflow experiment {name!r} in {uri} is deleted; restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or choose another mlflow_experiment"
        )
    if T.EXPERIMENT_KIND not in experiment.tags:
        mlflow_client.set_experiment_tag(experiment.experiment_id, T.EXPERIMENT_KIND, T.EXPERIMENT_KIND_MODEL_DEVELOPMENT)
    return experiment.experiment_id


def search_all(mlflow_client: Any, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of the experiment matching ``filter_string`` (follows MLflow's paging)."""
    token = None
    while True:
        page = mlflow_client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def finished_hashes(uri: str, experiment_id: str, stage: str, hash_version: int) -> dict[str, str]:
    """``{config hash: run id}`` of the FINISHED trial runs of ``stage`` under ``hash_version``."""
    query = (
        f"tags.`{T.KIND}` = '{T.KIND_TRIAL}' and tags.`{T.STAGE}` = '{stage}' "
        f"and tags.`{T.HASH_VERSION}` = '{hash_version}' and attributes.status = 'FINISHED'"
    )
    done: dict[str, str] = {}
    for run in search_all(client(uri), experiment_id, query):
        done.setdefault(run.data.tags.get(T.CONFIG_HASH, ""), run.info.run_id)
    done.pop("", None)
    return done


def open_sweep_run(uri: str, experiment_id: str, sweep_hash: str, tags: Mapping[str, str], run_name: str) -> tuple[str, bool]:
    """The sweep's run: reused (set RUNNING again) when this sweep ran before, else created.

    Returns ``(run_id, reused)``.
    """
    mlflow_client = client(uri)
    query = f"tags.`{T.KIND}` = '{T.KIND_SWEEP}' and tags.`{T.SWEEP_HASH}` = '{sweep_hash}'"
    previous = next(search_all(mlflow_client, experiment_id, query), None)
    if previous is not None:
        mlflow_client.update_run(previous.info.run_id, status="RUNNING")
        return previous.info.run_id, True
    run = mlflow_client.create_run(experiment_id, tags={**tags, T.KIND: T.KIND_SWEEP, T.SWEEP_HASH: sweep_hash}, run_name=run_name)
    return run.info.run_id, False


def describe_run(uri: str, run_id: str, text: str) -> None:
    """Set the run's description (Markdown; the tag ``mlflow.note.content`` that the UI shows on
    the run's page and edits as its "Description")."""
    client(uri).set_tag(run_id, T.NOTE, text)


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags of a run in one request (all or none of them are written)."""
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def kill_runs(uri: str, run_ids: list[str], reason: str) -> None:
    """End these runs KILLED with ``reason`` as :data:`~p2m_core.tracking.tags.END_REASON`."""
    mlflow_client = client(uri)
    for run_id in run_ids:
        mlflow_client.set_tag(run_id, T.END_REASON, reason)
        mlflow_client.set_terminated(run_id, status="KILLED")


def running_children(uri: str, experiment_id: str, parent_run_id: str, owner: str) -> list[str]:
    """The RUNNING child runs of ``parent_run_id`` that ``owner`` (tag ``p2m.owner``) opened."""
    query = (f"tags.`{T.PARENT_RUN_ID}` = '{parent_run_id}' and tags.`{T.OWNER}` = '{owner}' "
             "and attributes.status = 'RUNNING'")  # fmt: skip
    return [run.info.run_id for run in search_all(client(uri), experiment_id, query)]


def log_files(uri: str, run_id: str, files: Mapping[str, str | bytes], artifact_path: str | None = None) -> None:
    """Log in-memory files (name -> text or bytes) as artifacts of ``run_id``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="p2m-artifacts-") as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        client(uri).log_artifacts(run_id, tmp, artifact_path)


def close_sweep_run(uri: str, run_id: str, counts: Mapping[str, int], failed: bool) -> None:
    """Record the driver's counts on the sweep run and end it (FAILED when a trial failed)."""
    import time

    from mlflow.entities import Metric

    mlflow_client = client(uri)
    now = int(time.time() * 1000)
    step = len(mlflow_client.get_metric_history(run_id, "trials_total"))
    metrics = [Metric(key, float(value), now, step) for key, value in counts.items()]
    mlflow_client.log_batch(run_id, metrics=metrics)
    mlflow_client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
