"""A one-worker training run of a sweep, trained inside its Tune trial's own process.

Why: Ray Train starts a controller and a worker group for every run, 8.5 s on 2 cores before the
first step (docs/BENCHMARKS.md), and each group is a fresh process that imports torch again.
A run with one worker needs no process group, so a training sweep trains it in the trial's
actor, which Tune reuses from trial to trial (``reuse_actors``): the same
:class:`~p2m_core.engine.run.WorkerRun`, hooks, MLflow log and final outputs as a Ray Train
worker (:mod:`ray_jobs.train_worker`), so the numbers are the same; only the checkpoints are
kept here instead of by Ray Train.

Checkpoints go where Ray Train would put them (``<train.storage_path>/<run>/checkpoint_<date
and time>``), each folder written under a staging name and renamed when complete, the newest
:data:`~ray_jobs.training.CHECKPOINTS_KEPT` kept, each with its manifests
(:mod:`p2m_core.engine.checkpoint_check`). A failed trial (an error, or its process or node
lost) resumes from the newest good checkpoint, like a Ray Train group: after an error in this
process up to ``train.max_failures`` times, and after the process was lost (its node died) when
Tune runs the trial again; so does the same sweep run again.

Runs with several workers, and storage paths that are URIs (``s3://``, which only Ray Train
writes to), go through Ray Train (:func:`~ray_jobs.training.trains_in_trial`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from p2m_core.config import Config
from p2m_core.engine.checkpoint_check import FOLDER_GLOB, choose_checkpoint
from p2m_core.engine.run import WorkerRun
from p2m_core.tracking.training import TrainingLog
from ray_jobs.cluster import node_id
from ray_jobs.train_worker import WorkerHooks, finish_run, worker_config
from ray_jobs.training import CHECKPOINTS_KEPT, TrainPlan
from ray_jobs.worker_setup import prepare_worker

log = logging.getLogger(__name__)

#: A checkpoint folder's name, as Ray Train names them: the names sort by age.
FOLDER_NAME = "checkpoint_%Y-%m-%d_%H-%M-%S.%f"
#: The prefix of a folder being written; never read as a checkpoint (it does not match FOLDER_GLOB).
STAGING_PREFIX = ".staging-"


def store_checkpoint(write: Callable[[Path], None], checkpoints: Path, kept: int = CHECKPOINTS_KEPT) -> Path:
    """A new checkpoint folder in ``checkpoints``, complete or not at all: ``write`` fills it under
    a staging name (in place: no second copy of the state), then it is renamed; all but the
    newest ``kept`` are deleted."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    name = datetime.now().strftime(FOLDER_NAME)
    staging = checkpoints / f"{STAGING_PREFIX}{name}"
    staging.mkdir()
    write(staging)
    target = checkpoints / name
    os.replace(staging, target)
    for old in sorted(checkpoints.glob(FOLDER_GLOB))[:-kept]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def newest_checkpoint(checkpoints: Path) -> Path | None:
    folders = sorted(checkpoints.glob(FOLDER_GLOB)) if checkpoints.is_dir() else []
    return folders[-1] if folders else None


class TrialHooks(WorkerHooks):
    """A Ray Train worker's hooks, except that each checkpoint is stored by :func:`store_checkpoint`."""

    def __init__(self, run: WorkerRun, tracking: TrainingLog, cfg: Config, checkpoints: Path) -> None:
        super().__init__(run, tracking, cfg)
        self.checkpoints = checkpoints

    def store(self, iteration: int, metrics: dict[str, float]) -> None:
        store_checkpoint(self.run.save_state, self.checkpoints)


def train_in_trial(plan: TrainPlan, run_id: str) -> dict[str, float]:
    """Train ``plan`` to its last iteration in this process, resuming from its newest good
    checkpoint, and again from the newest one after an error, up to ``train.max_failures``
    times (as Ray Train restarts a failed worker group); returns what the last checkpoint
    reported (the final evaluation), as :func:`~ray_jobs.training.fit`'s result does."""
    prepare_worker()
    retries = plan.cfg.train.max_failures
    for attempt in range(retries):
        try:
            return _train_once(plan, run_id)
        except Exception as exc:
            log.warning("training failed (%s: %s); starting again from the last checkpoint (%d of train.max_failures = %d)",
                        type(exc).__name__, exc, attempt + 1, retries)  # fmt: skip
    return _train_once(plan, run_id)  # the last attempt: its error is the trial's


def _train_once(plan: TrainPlan, run_id: str) -> dict[str, float]:
    cfg = plan.cfg
    run = WorkerRun(cfg, 0, 1, "cuda" if plan.use_gpu else "cpu")
    checkpoints = Path(plan.checkpoints)
    latest = newest_checkpoint(checkpoints)
    choice = None
    if latest is not None:
        choice = choose_checkpoint(latest, checkpoints)
        for damage in choice.damaged:
            log.warning("damaged checkpoint file %s; resuming from %s instead", damage, choice.folder)
        run.load_state(choice.folder)
    log.info("trained in this trial (pid %d): %d train images, iteration %d of %d on %s", os.getpid(),
             len(run.train_set), run.iteration, run.max_iters, run.device)  # fmt: skip
    tracking = TrainingLog(plan.tracking_uri, run_id, cfg.train.log_every, cfg.tracking.outage_limit_s)
    tracking.worker_nodes([node_id()])  # this process is the run's one worker
    if choice is not None:
        tracking.resumed_at(run.iteration, choice.folder.name, [str(damage) for damage in choice.damaged])
    hooks = TrialHooks(run, tracking, cfg, checkpoints)
    run.train(hooks)
    finish_run(run, tracking, worker_config(cfg, plan.tracking_uri, run_id, plan.output_dir, plan.checkpoints))
    return hooks.reported
