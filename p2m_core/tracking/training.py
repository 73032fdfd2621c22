"""A training run in MLflow: opened by the launching process, written by rank 0, resumable.

Two sides, so that no worker ever creates a run (workers starting at once would race on a fresh
sqlite store, and a restarted worker group would open a second run):

- the launcher (``ray_jobs.train`` or a sweep's trial) calls :func:`open_training_run`. It
  finds the run of this config hash that did not finish (same name, same parent), sets it
  RUNNING again and returns it, so a run resumed from its checkpoint continues the *same*
  MLflow run; otherwise it creates one with params = the flat resolved config, the tags and the
  resolved config as ``config.yaml``. :func:`end_training_run` ends it FINISHED or FAILED.
- rank 0 of the workers writes through a :class:`TrainingLog`: per-step metrics in batches of
  ``train.log_every``, per-evaluation metrics and overlays, and the final artifacts.

**Every step exactly once.** A worker killed after logging step 40 and restored from the
checkpoint of step 30 recomputes steps 31-40 (the resume is exact, so with the same values).
:class:`TrainingLog` reads, when it opens, the last step already in the store for the step
metrics (:data:`STEP_KEY`) and for the evaluation metrics (:data:`EVAL_KEY`) and drops anything
at or before it. Metrics are buffered and flushed before every checkpoint, so nothing that a
resume does not recompute can be lost.

**A tracking server that goes away** (:mod:`p2m_core.tracking.outage`): a step's flush that
fails keeps its metrics queued and training goes on; the queue is tried again with backoff, and
before each retry the store is asked what it already has, so a batch that reached the server
before the connection broke is not logged twice. At most :data:`MAX_QUEUED_STEPS` steps are
queued; then, and at each checkpoint and evaluation, training waits for the server. After
``tracking.outage_limit_s`` without it the worker fails with
:class:`~p2m_core.tracking.outage.TrackingOutageError`, before Ray is told of the checkpoint
whose metrics are not stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataclasses import dataclass

from p2m_core.config import HASH_VERSION, Config, TrackingConfig, dump_yaml, resolve
from p2m_core.tracking import tags as T
from p2m_core.tracking.datasets import log_dataset_inputs
from p2m_core.tracking.outage import Outage
from p2m_core.tracking.store import client, log_files, search_all
from p2m_core.tracking.trial import config_params

log = logging.getLogger(__name__)

#: The metric whose last step says how far the per-step metrics of a run got.
STEP_KEY = "loss/total"
#: The metric whose last step says how far the evaluations got.
EVAL_KEY = "PQ"
CONFIG_ARTIFACT = "config.yaml"
CHECKPOINT_ARTIFACT = "checkpoint.txt"
#: The longest tag value p2m writes (MLflow refuses longer ones).
MAX_TAG_CHARS = 5000
#: Steps queued while the server is unreachable before training waits for it instead of going
#: on: the bound on the queue's memory (~20 metrics of ~100 bytes a step: a few MB). Waiting,
#: not dropping, because every step must reach the store once.
MAX_QUEUED_STEPS = 2000
#: MLflow takes at most this many metrics per ``log_batch``.
BATCH_METRICS = 1000


def open_training_run(
    uri: str, experiment_id: str, cfg: Config, tags: Mapping[str, str], run_name: str, parent_run_id: str = "",
) -> tuple[str, str]:
    """The MLflow run that ``cfg``'s training writes to: ``(run_id, state)``.

    ``state`` is ``"new"``, ``"resumed"`` (an unfinished run of the same config hash, run name
    and parent, set RUNNING again) or ``"finished"`` (such a run already FINISHED; the caller
    decides whether to skip). ``tags`` are written on a new run, with the kind, the stage, the
    config hash and its version added here.
    """
    mlflow_client = client(uri)
    config_hash = resolve(cfg, "train").hash
    query = (
        f"tags.`{T.CONFIG_HASH}` = '{config_hash}' and tags.`{T.STAGE}` = 'train' "
        f"and tags.`{T.HASH_VERSION}` = '{HASH_VERSION}' and tags.`{T.RUN_NAME}` = '{run_name}'"
    )
    candidates = [
        run for run in search_all(mlflow_client, experiment_id, query)
        if run.data.tags.get(T.PARENT_RUN_ID, "") == parent_run_id
    ]  # fmt: skip
    finished = [run for run in candidates if run.info.status == "FINISHED"]
    if finished:
        return finished[0].info.run_id, "finished"
    if candidates:
        run_id = max(candidates, key=lambda run: run.info.start_time).info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        mlflow_client.set_tag(run_id, T.RESUMED, str(int(mlflow_client.get_run(run_id).data.tags.get(T.RESUMED, "0")) + 1))
        return run_id, "resumed"
    run_tags = {
        **tags, T.KIND: tags.get(T.KIND, T.KIND_TRAIN), T.STAGE: "train", T.CONFIG_HASH: config_hash,
        T.HASH_VERSION: str(HASH_VERSION),
    }  # fmt: skip
    if parent_run_id:
        run_tags[T.PARENT_RUN_ID] = parent_run_id
    run_id = mlflow_client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in config_params(cfg).items()])
    log_dataset_inputs(mlflow_client, run_id, cfg, training_splits(cfg))
    log_files(uri, run_id, {CONFIG_ARTIFACT: dump_yaml(cfg)})
    return run_id, "new"


def training_splits(cfg: Config) -> tuple[str, ...]:
    """The splits a training run reads: it trains on ``train``, evaluates ``val`` as it goes
    and, when ``train.test_split`` is set, that split once at the end."""
    return tuple(split for split in ("train", "val", cfg.train.test_split) if split)


def end_training_run(uri: str, run_id: str, error: BaseException | str | None = None) -> None:
    """FINISHED, or FAILED with the error as a tag (never raises: the store may be what failed)."""
    mlflow_client = client(uri)
    try:
        if error is not None:
            message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            mlflow_client.set_tag(run_id, T.ERROR, message[:MAX_TAG_CHARS])
        mlflow_client.set_terminated(run_id, status="FAILED" if error is not None else "FINISHED")
    except Exception:
        log.exception("could not end MLflow run %s", run_id)


def damaged_checkpoints(uri: str, run_id: str) -> list[str]:
    """The damaged checkpoint files the run's workers passed over when they resumed (oldest
    first; :meth:`TrainingLog.resumed_at`)."""
    return [line for line in client(uri).get_run(run_id).data.tags.get(T.DAMAGED_CHECKPOINT, "").splitlines() if line]


def last_logged_step(uri: str, run_id: str, key: str) -> int:
    """The largest step of metric ``key`` in the run (-1 when it has none)."""
    history = client(uri).get_metric_history(run_id, key)
    return max((metric.step for metric in history), default=-1)


@dataclass
class _Entry:
    """One step's (or evaluation's) metrics, sent whole in one batch; ``marker`` goes last, so
    the store having it at ``step`` means it has all of them."""

    marker: str
    step: int
    metrics: list[Any]


class TrainingLog:
    """Rank 0's writer into an open training run (module docstring: exactly once, outages)."""

    def __init__(self, uri: str, run_id: str, flush_every: int = 10,
                 outage_limit_s: float = TrackingConfig.outage_limit_s) -> None:  # fmt: skip
        self.uri = uri
        self.run_id = run_id
        self.client = client(uri)
        self.flush_every = max(1, int(flush_every))
        self.outage = Outage(uri, outage_limit_s)
        self.steps_done = self.outage.call(lambda: last_logged_step(uri, run_id, STEP_KEY))
        self.evals_done = self.outage.call(lambda: last_logged_step(uri, run_id, EVAL_KEY))
        self._pending: list[_Entry] = []
        self._pending_steps = 0  # steps queued since the last flush
        self._unsure = False  # a failed send may have reached the store: ask it before sending again
        if self.steps_done >= 0:
            log.info("MLflow run %s already has steps up to %d; those are not logged again", run_id, self.steps_done)

    def step(self, iteration: int, metrics: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        """Queue one step's metrics (dropped when the run already has this step). ``timestamp_ms``:
        when the step ran (ms since the epoch; default now), for a caller that reads its steps'
        values back in windows and queues them after the fact."""
        if iteration <= self.steps_done:
            return
        self._queue(iteration, metrics, STEP_KEY, timestamp_ms)
        self.steps_done = iteration
        self._pending_steps += 1
        if self._pending_steps >= self.flush_every:
            self.flush(wait=self.queued_steps() >= MAX_QUEUED_STEPS)

    def evaluation(self, iteration: int, metrics: Mapping[str, float], overlays: Mapping[str, Any] | None = None) -> bool:
        """Log one evaluation (metrics at step ``iteration``, overlays as PNG artifacts under
        ``overlays/iter_<iteration>/``); returns False when the run already has it."""
        if iteration <= self.evals_done:
            return False
        if overlays:
            from p2m_core.io import png_bytes

            files = {f"{name}.png": png_bytes(image) for name, image in overlays.items()}
            self.outage.call(lambda: log_files(self.uri, self.run_id, files, f"overlays/iter_{iteration:06d}"))
        self._queue(iteration, metrics, EVAL_KEY)
        self.flush()
        self.evals_done = iteration
        return True

    def held_out_done(self, split: str, iteration: int) -> bool:
        """Whether the run already has the held-out split's metrics of ``iteration`` (the
        launcher was run again after the end): then they are neither computed nor logged again."""
        return self.outage.call(lambda: last_logged_step(self.uri, self.run_id, f"{split}/{EVAL_KEY}")) >= iteration

    def held_out(self, iteration: int, split: str, metrics: Mapping[str, float]) -> None:
        """Log the held-out split's metrics as ``<split>/<metric>`` at step ``iteration``
        (``<split>/PQ`` marks them done)."""
        self._queue(iteration, {f"{split}/{key}": value for key, value in metrics.items()}, f"{split}/{EVAL_KEY}")
        self.flush()

    def _queue(self, iteration: int, metrics: Mapping[str, float], marker: str, timestamp_ms: int | None = None) -> None:
        """Queue ``metrics`` at step ``iteration`` as one entry, ``marker`` last (it must be one of them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        ordered = [key for key in metrics if key != marker] + [marker]
        self._pending.append(_Entry(marker, iteration, [Metric(key, float(metrics[key]), now, iteration) for key in ordered]))

    def queued_steps(self) -> int:
        """Steps queued and not yet stored."""
        return sum(1 for entry in self._pending if entry.marker == STEP_KEY)

    def _describe_queue(self) -> str:
        return f"{self.queued_steps()} steps" if self._pending else ""

    def flush(self, wait: bool = True) -> None:
        """Send the queued metrics. ``wait``: while the server is unreachable, retry until it
        answers or ``tracking.outage_limit_s`` has passed (then
        :class:`~p2m_core.tracking.outage.TrackingOutageError`); else keep them queued for the
        next flush (which raises that error too once the limit has passed)."""
        self._pending_steps = 0
        if not self._pending:
            return
        if wait:
            self.outage.call(self._send, self._describe_queue)
            return
        if not self.outage.due():
            self.outage.check_limit()
            return
        before = self._describe_queue()
        try:
            self._send()
        except Exception as exc:
            self.outage.failed(exc, before)
            return
        self.outage.recovered(before)

    def _send(self) -> None:
        """Send the queue in batches of whole entries; after a failed send, first drop the
        entries the store already has (their marker is there at their step)."""
        if self._unsure:
            stored = {marker: last_logged_step(self.uri, self.run_id, marker) for marker in {e.marker for e in self._pending}}
            kept = [entry for entry in self._pending if entry.step > stored[entry.marker]]
            if len(kept) < len(self._pending):
                log.info("the store already had %d of the queued entries (sent before the connection broke); "
                         "not logging them again", len(self._pending) - len(kept))  # fmt: skip
            self._pending = kept
            self._unsure = False
        while self._pending:
            count = size = 0
            for entry in self._pending:
                if count and size + len(entry.metrics) > BATCH_METRICS:
                    break
                count, size = count + 1, size + len(entry.metrics)
            try:
                self.client.log_batch(self.run_id, metrics=[m for entry in self._pending[:count] for m in entry.metrics])
            except Exception:
                self._unsure = True
                raise
            del self._pending[:count]

    def resumed_at(self, iteration: int, folder: str = "", damaged: Sequence[str] = ()) -> None:
        """Record that the worker group restarted from the checkpoint of ``iteration``: the
        tag ``p2m.resumed_at`` lists every such iteration, in order; ``p2m.resumed_from`` names
        the last ``folder``, and ``p2m.damaged_checkpoint`` gains a line per ``damaged`` file
        passed over to get there, so the store, not only a worker's log, keeps the fact."""
        self.outage.call(lambda: self._resumed_at(iteration, folder, damaged))

    def _resumed_at(self, iteration: int, folder: str, damaged: Sequence[str]) -> None:
        tags = self.client.get_run(self.run_id).data.tags
        previous = tags.get(T.RESUMED_AT, "")
        self.client.set_tag(self.run_id, T.RESUMED_AT, f"{previous},{iteration}" if previous else str(iteration))
        if folder:
            self.client.set_tag(self.run_id, T.RESUMED_FROM, folder)
        if damaged:
            lines = [line for line in tags.get(T.DAMAGED_CHECKPOINT, "").splitlines() if line] + list(damaged)
            self.client.set_tag(self.run_id, T.DAMAGED_CHECKPOINT, "\n".join(lines)[-MAX_TAG_CHARS:])

    def worker_nodes(self, nodes: Sequence[str]) -> None:
        """Record the Ray node of each worker of the group now training, by rank (tag
        ``p2m.worker_nodes``; a group restarted after a lost node rewrites it)."""
        self.outage.call(lambda: self.client.set_tag(self.run_id, T.WORKER_NODES, ",".join(nodes)))

    def artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Log a folder's files (the same names again on a retry: nothing doubles)."""
        self.outage.call(lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path))

    def checkpoint_location(self, lines: Mapping[str, str]) -> None:
        """Where the run's checkpoints are: a text artifact and one tag per entry."""
        text = "".join(f"{key}: {value}\n" for key, value in lines.items())

        def write() -> None:
            for key, value in lines.items():
                self.client.set_tag(self.run_id, f"{T.CHECKPOINT_PREFIX}{key}", value)
            log_files(self.uri, self.run_id, {CHECKPOINT_ARTIFACT: text})

        self.outage.call(write)
