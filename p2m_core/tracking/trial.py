"""One trial's MLflow run: params = the flat resolved config, metrics, tags, artifacts.

Used inside Ray workers, so it holds no global MLflow state (no ``mlflow.start_run``): each
:class:`TrialRun` talks to its store through its own client, and a worker that Ray Tune reuses
for the next trial starts clean. What is written is specified in docs/TRACKING.md.

A trial is short, so while its tracking server is unreachable each of its MLflow calls simply
waits and retries, up to ``tracking.outage_limit_s`` (:class:`~p2m_core.tracking.outage.Outage`);
a trial failed by a longer outage is run again by running the sweep again.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2m_core.config import Config, resolve
from p2m_core.tracking import tags as T
from p2m_core.tracking.datasets import log_dataset_inputs
from p2m_core.tracking.outage import Outage
from p2m_core.tracking.store import client

log = logging.getLogger(__name__)

#: Counts and timings of a stage result that become metrics, besides ``metrics``/``diagnostics``.
_COUNT_METRICS = ("images", "points", "points_moved", "transported_pixels")


def param_value(value: Any) -> str:
    """Strings as they are, everything else as JSON (so ``json.loads`` gives the value back)."""
    return value if isinstance(value, str) else json.dumps(value)


def config_params(cfg: Config) -> dict[str, str]:
    """The MLflow params of a trial: every dotted key of the resolved config."""
    return {key: param_value(value) for key, value in resolve(cfg).flat.items()}


def stage_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics logged for a pseudo-stage result; values that do not apply (None) are left out."""
    values: dict[str, Any] = dict(result.get("metrics", {}))
    values.update(result.get("diagnostics", {}))
    timings = result.get("timings", {})
    values["seconds_per_image"] = timings.get("seconds_per_image")
    values["wall_seconds"] = timings.get("wall_seconds")
    for stage, seconds in timings.get("stage_seconds_per_image", {}).items():
        values[f"time_{stage}_s"] = seconds
    counts = result.get("counts", {})
    for key in _COUNT_METRICS:
        values[key] = counts.get(key)
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TrialRun:
    """A child run of a sweep, created RUNNING with its tags and params.

    End it with :meth:`finish` (after :meth:`log_result`) or :meth:`fail`.
    """

    def __init__(
        self, uri: str, experiment_id: str, parent_run_id: str, run_name: str, tags: Mapping[str, str], cfg: Config
    ) -> None:
        from mlflow.entities import Param

        self.uri = uri
        self.client = client(uri)
        self.outage = Outage(uri, cfg.tracking.outage_limit_s)
        run_tags = {**tags, T.KIND: T.KIND_TRIAL, T.PARENT_RUN_ID: parent_run_id}
        self.run_id = self.outage.call(lambda: self._create(experiment_id, run_tags, run_name))
        params = [Param(k, v) for k, v in config_params(cfg).items()]
        self.outage.call(lambda: self.client.log_batch(self.run_id, params=params))  # same values again: no error

    def _create(self, experiment_id: str, run_tags: Mapping[str, str], run_name: str) -> str:
        """A new RUNNING run; on a retry during an outage, the one the failed request may have
        created (same parent, same name, RUNNING: the driver marked any older one KILLED before
        scheduling this trial), so that the trial has one run."""
        if self.outage.down:
            query = (f"tags.`{T.PARENT_RUN_ID}` = '{run_tags[T.PARENT_RUN_ID]}' and tags.`{T.RUN_NAME}` = '{run_name}' "
                     "and attributes.status = 'RUNNING'")  # fmt: skip
            found = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
            if found:
                return found[0].info.run_id
        return self.client.create_run(experiment_id, tags=dict(run_tags), run_name=run_name).info.run_id

    def log_datasets(self, cfg: Config, splits: Sequence[str]) -> None:
        """The dataset splits the trial reads, as the run's dataset inputs (name, digest, split)."""
        self.outage.call(lambda: log_dataset_inputs(self.client, self.run_id, cfg, splits))

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, 0) for k, v in metrics.items()]
        self.outage.call(lambda: self.client.log_batch(self.run_id, metrics=batch))  # an exact repeat is one row in a SQL store

    def log_result(self, result: Mapping[str, Any], out_dir: str | Path, extra: Mapping[str, float] | None = None) -> None:
        """Metrics of a stage result, and every file the stage wrote under ``out_dir``."""
        self.log_metrics({**stage_metrics(result), **(extra or {})})
        self.outage.call(lambda: self.client.log_artifacts(self.run_id, str(out_dir)))

    def finish(self) -> None:
        self.outage.call(lambda: self.client.set_terminated(self.run_id, status="FINISHED"))

    def abandon(self, winner: str) -> None:
        from mlflow.entities import RunTag

        """Give the config hash up to ``winner`` (the run that computed it): KILLED, tagged
        ``p2m.claimed_by``, and deleted, so each hash keeps one run (docs/TRACKING.md, "Claims")."""
        tags = [RunTag(T.CLAIMED_BY, winner), RunTag(T.END_REASON, f"claimed by {winner}")]
        self.outage.call(lambda: self.client.log_batch(self.run_id, tags=tags))
        self.outage.call(lambda: self.client.set_terminated(self.run_id, status="KILLED"))
        self.outage.call(self._delete)

    def _delete(self) -> None:
        """Delete the run; a retry after the request got through finds it deleted already."""
        if self.client.get_run(self.run_id).info.lifecycle_stage != "deleted":
            self.client.delete_run(self.run_id)

    def winner_metrics(self, winner: str) -> dict[str, float]:
        """The metrics of the run that computed this trial's config hash."""
        return dict(self.outage.call(lambda: self.client.get_run(winner)).data.metrics)

    def fail(self, exc: BaseException) -> None:
        """FAILED, with the error as a tag and the traceback as ``error.txt``; never raises."""
        try:
            message = f"{type(exc).__name__}: {exc}"
            self.client.set_tag(self.run_id, T.ERROR, message[:5000])
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.client.log_text(self.run_id, text, "error.txt")
        except Exception:  # the store itself may be what failed
            log.exception("could not record the failure of run %s", self.run_id)
        finally:
            try:
                self.client.set_terminated(self.run_id, status="FAILED")
            except Exception:
                log.exception("could not mark run %s FAILED", self.run_id)
