"""One pseudo-stage trial of a sweep, recorded as an MLflow child run, with no Ray in it.

Ray Tune's trial (:func:`ray_jobs.trial.run_trial`) and the in-process executor
(:mod:`ray_jobs.local_sweep`) both call :func:`run_pseudo_trial`, so a trial claims, computes and
logs the same way whichever runs it; this module imports no Ray, so the in-process executor
never pays Ray's imports.

The trial creates its MLflow run first (RUNNING, with tags and params), claims its config hash
(:mod:`p2m_core.tracking.claims`: when another sweep computes the same trial, this one waits for
it and records that run instead), runs :func:`p2m_core.ablation.run_pseudo_stage` into a
temporary folder, logs the metrics and the folder's files, and ends the run FINISHED. If
anything raises, the run ends FAILED with the error, and the error is returned as the trial's
result under :data:`FAILED_KEY` rather than raised: code that failed would fail again, so only
a trial whose process was lost is run again (by Tune).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2m_core.ablation import run_pseudo_stage
from p2m_core.config import HASH_VERSION, Config
from p2m_core.tracking import tags as T
from p2m_core.tracking.claims import claim, claim_tags, heartbeat
from p2m_core.tracking.trial import TrialRun
from ray_jobs.plan import SweepPlan, sweep_tags
from ray_jobs.spec import Trial
from ray_jobs.stop import owner_id

log = logging.getLogger(__name__)

#: The result key of a trial whose own code failed: the error, reported instead of raised.
FAILED_KEY = "p2m_error"


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares: where to log and the trials themselves."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    trials: tuple[Trial, ...]
    launch_dir: str = ""  # the driver's working directory (relative output paths resolve against it)
    worker_resources: dict[str, float] | None = None  # train stage: Ray resources of each training worker


def sweep_context(plan: SweepPlan, executor: str, worker_resources: dict[str, float] | None = None) -> SweepContext:
    """The context of the plan's trials, as this driver (the tag ``p2m.owner``) hands it out to
    ``executor`` (:data:`ray_jobs.executors.EXECUTORS`)."""
    tags = {**sweep_tags(plan), T.SWEEP_HASH: plan.sweep_hash, T.OWNER: owner_id(), T.EXECUTOR: executor}
    return SweepContext(plan.tracking_uri, plan.experiment_id, plan.parent_run_id, tags, tuple(plan.trials),
                        launch_dir=os.getcwd(), worker_resources=worker_resources)  # fmt: skip


def trial_tags(context: SweepContext, trial: Trial, node: str) -> dict[str, str]:
    """The MLflow tags of a trial's run; ``node`` is the Ray node it runs on (``''`` outside Ray)."""
    return {
        **context.tags,
        T.CONFIG_HASH: trial.config_hash,
        T.HASH_VERSION: str(HASH_VERSION),
        T.SEED: str(trial.seed),
        T.SETTING: json.dumps(trial.setting),
        T.RAY_NODE: node,
    }


def earlier_attempt(context: SweepContext, trial: Trial) -> Callable[[Any], bool]:
    """Whether a run is an earlier attempt of ``trial`` by this sweep's driver: Ray Tune runs a
    trial again only once its process was lost, so such a run still RUNNING is dead."""
    owner, parent = context.tags[T.OWNER], context.parent_run_id
    return lambda run: (run.data.tags.get(T.OWNER) == owner and run.data.tags.get(T.PARENT_RUN_ID) == parent
                        and run.info.run_name == trial.run_name)  # fmt: skip


def failure_result(exc: BaseException, start: float) -> dict[str, Any]:
    """The result of a trial whose own code failed (module docstring)."""
    return {FAILED_KEY: f"{type(exc).__name__}: {exc}", "trial_seconds": time.perf_counter() - start}


def run_pseudo_trial(
    context: SweepContext, trial: Trial, node: str = "", stage: Callable[[Config, str], dict[str, Any]] = run_pseudo_stage
) -> dict[str, Any]:
    """Claim, compute and record one pseudo-stage trial; its result: ``PQ``, ``PQ_th``,
    ``trial_seconds`` and ``run_id`` (the run that holds the numbers: another sweep's when that
    one computed the trial), or :data:`FAILED_KEY` with the error.

    ``stage`` computes the stage into a folder (default: here, in this process; the local
    executor passes its child process's, :class:`ray_jobs.stage_process.StageProcess`)."""
    start = time.perf_counter()
    run = TrialRun(
        context.tracking_uri, context.experiment_id, context.parent_run_id, trial.run_name,
        {**trial_tags(context, trial, node), **claim_tags()}, trial.config,
    )
    try:
        with heartbeat(context.tracking_uri, run.run_id):
            outcome = claim(context.tracking_uri, context.experiment_id, run.run_id, trial.config_hash, context.tags[T.STAGE],
                            HASH_VERSION, run.outage, earlier_attempt(context, trial))
            if not outcome.mine:
                run.abandon(outcome.winner)
                log.info("trial %s (%s): computed by run %s; not computed here", trial.index, trial.run_name, outcome.winner)
                metrics = run.winner_metrics(outcome.winner)
                return {"PQ": metrics.get("PQ", float("nan")), "PQ_th": metrics.get("PQ_th", float("nan")),
                        "trial_seconds": time.perf_counter() - start, "run_id": outcome.winner}  # fmt: skip
            run.log_datasets(trial.config, [trial.config.ablation.split])
            with tempfile.TemporaryDirectory(prefix="p2m-trial-") as out:
                result = stage(trial.config, out)
                seconds = time.perf_counter() - start
                run.log_result(result, out, extra={"trial_seconds": seconds})
            run.finish()
    except BaseException as exc:
        run.fail(exc)
        log.error("trial %s (%s) failed: %s: %s", trial.index, trial.run_name, type(exc).__name__, exc)
        if not isinstance(exc, Exception):
            raise
        return failure_result(exc, start)
    metrics = result["metrics"]
    return {"PQ": metrics["PQ"], "PQ_th": metrics["PQ_th"], "trial_seconds": seconds, "run_id": run.run_id}
