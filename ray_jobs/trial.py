"""The Ray Tune trials of a sweep: run one setting, record it as an MLflow child run.

:func:`run_trial` is the pseudo stage's trial; :func:`run_train_trial` the training stage's,
which trains a one-worker run in place (:mod:`ray_jobs.train_in_trial`) and launches its own
``TorchTrainer`` for any other (how Ray Train V2 sweeps training: Tune cannot wrap a trainer
directly).

Runs in a Ray worker. The sweep driver hands every trial the same :class:`SweepContext` (through
``tune.with_parameters``, so it travels once through the object store) and the index of the
trial to run in Tune's config. The trial creates its MLflow run first (RUNNING, with tags and
params), runs :func:`p2m_core.ablation.run_pseudo_stage` into a temporary folder, logs the
metrics and the folder's files, and ends the run FINISHED; if anything raises, the run ends
FAILED with the error, which the trial reports to Tune as its result (:func:`report_failure`)
so the driver counts it. Only a trial whose process was lost (its node died) ends in a Tune
error, and Tune runs it again (:data:`ray_jobs.tuning.LOST_TRIAL_RETRIES`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ray import tune

from p2m_core.ablation import run_pseudo_stage
from p2m_core.config import HASH_VERSION
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.claims import claim, claim_tags, heartbeat
from p2m_core.tracking.training import open_training_run
from p2m_core.tracking.trial import TrialRun
from ray_jobs.cluster import node_id
from ray_jobs.spec import Trial
from ray_jobs.training import end_after, plan_training, train_and_end, trains_in_trial
from ray_jobs.tune_progress import FAILED_KEY
from ray_jobs.worker_setup import prepare_worker, setup_worker_logging

log = logging.getLogger(__name__)


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


def trial_tags(context: SweepContext, trial: Trial) -> dict[str, str]:
    return {
        **context.tags,
        T.CONFIG_HASH: trial.config_hash,
        T.HASH_VERSION: str(HASH_VERSION),
        T.SEED: str(trial.seed),
        T.SETTING: json.dumps(trial.setting),
        T.RAY_NODE: node_id(),
    }


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable: ``config['trial']`` is the index into ``context.trials``.

    Before computing, the trial claims its config hash (:mod:`p2m_core.tracking.claims`): when
    another sweep computes the same trial, this one waits for it and reports its run instead."""
    prepare_worker()
    trial = context.trials[int(config["trial"])]
    start = time.perf_counter()
    run = TrialRun(
        context.tracking_uri, context.experiment_id, context.parent_run_id, trial.run_name,
        {**trial_tags(context, trial), **claim_tags()}, trial.config,
    )
    try:
        with heartbeat(context.tracking_uri, run.run_id):
            outcome = claim(context.tracking_uri, context.experiment_id, run.run_id, trial.config_hash, context.tags[T.STAGE],
                           HASH_VERSION, run.outage)
            if not outcome.mine:
                run.abandon(outcome.winner)
                log.info("trial %s (%s): computed by run %s; not computed here", trial.index, trial.run_name, outcome.winner)
                metrics = run.winner_metrics(outcome.winner)
                tune.report({"PQ": metrics.get("PQ", float("nan")), "PQ_th": metrics.get("PQ_th", float("nan")),
                             "trial_seconds": time.perf_counter() - start, "run_id": outcome.winner})  # fmt: skip
                return
            run.log_datasets(trial.config, [trial.config.ablation.split])
            with tempfile.TemporaryDirectory(prefix="p2m-trial-") as out:
                result = run_pseudo_stage(trial.config, out)
                seconds = time.perf_counter() - start
                run.log_result(result, out, extra={"trial_seconds": seconds})
            run.finish()
    except BaseException as exc:
        run.fail(exc)
        log.error("trial %s (%s) failed: %s: %s", trial.index, trial.run_name, type(exc).__name__, exc)
        if not isinstance(exc, Exception):
            raise
        report_failure(exc, start)
        return
    metrics = result["metrics"]
    tune.report({"PQ": metrics["PQ"], "PQ_th": metrics["PQ_th"], "trial_seconds": seconds, "run_id": run.run_id})


def report_failure(exc: BaseException, start: float) -> None:
    """End a trial whose own code failed by reporting the error to Tune as its result
    (:data:`~ray_jobs.tune_progress.FAILED_KEY`), not by raising it. Tune runs a trial again
    when it raised (``FailureConfig``, :data:`ray_jobs.tuning.LOST_TRIAL_RETRIES`), which is
    meant for a trial whose process was lost with its node: code that failed would fail again
    (a training run has had its ``train.max_failures`` restarts already), and its run is FAILED
    with the error (running the sweep again retries it)."""
    tune.report({FAILED_KEY: f"{type(exc).__name__}: {exc}", "trial_seconds": time.perf_counter() - start})


def run_train_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable of a ``stage: train`` sweep: train one setting, in this process or
    on Ray Train (module docstring).

    The trial's MLflow run is keyed by the trial's config hash and run name under the sweep's
    run, and its Ray Train run by the same name and hash in ``train.storage_path``: a trial
    re-run after its driver was killed finds both, continues the same MLflow run (marked KILLED
    by the new driver, RUNNING again here) from the last checkpoint, and logs no step twice; so
    does a trial that Tune runs again because its process was lost with its node.
    """
    setup_worker_logging()
    trial = context.trials[int(config["trial"])]
    start = time.perf_counter()
    try:
        run_id, metrics = _train_trial(trial, context)
    except Exception as exc:  # the run, when one was opened, is FAILED with the error (end_after)
        log.error("trial %s (%s) failed: %s: %s", trial.index, trial.run_name, type(exc).__name__, exc)
        report_failure(exc, start)
        return
    seconds = time.perf_counter() - start
    tune.report({"PQ": metrics.get("PQ", float("nan")), "PQ_th": metrics.get("PQ_th", float("nan")),
                 "trial_seconds": seconds, "run_id": run_id})  # fmt: skip


def _train_trial(trial: Trial, context: SweepContext) -> tuple[str, dict[str, Any]]:
    """Open (or find) the trial's training run and train it; ``(run id, final metrics)``."""
    resources = dict(context.worker_resources or {"CPU": 1.0})
    # the driver's store, whatever this node's environment says
    plan = plan_training(trial.config, use_gpu=resources.get("GPU", 0) > 0, launch_dir=context.launch_dir or None,
                         run_name=trial.run_name, tracking_uri=context.tracking_uri)  # fmt: skip
    tags = {**trial_tags(context, trial), T.KIND: T.KIND_TRIAL}
    run_id, state = open_training_run(context.tracking_uri, context.experiment_id, plan.cfg, tags, trial.run_name,
                                      context.parent_run_id)  # fmt: skip
    if state == "finished":
        metrics: dict[str, Any] = {}
    else:
        # a resumed run is this driver's now: its stop signal ends it, its heartbeat keeps it alive
        owned = {T.OWNER: tags.get(T.OWNER, ""), T.HEARTBEAT: f"{time.time():.1f}", T.RAY_NODE: tags[T.RAY_NODE]}
        store.set_tags(context.tracking_uri, run_id, owned)
        log.info("trial %s: %s MLflow run %s, checkpoints in %s", trial.run_name, state, run_id, plan.checkpoints)
        with heartbeat(context.tracking_uri, run_id):
            if trains_in_trial(plan.cfg):
                # torch only in the trial's process, never in the sweep driver that imports this module
                from ray_jobs.train_in_trial import train_in_trial

                metrics = end_after(plan, run_id, lambda: train_in_trial(plan, run_id))
            else:
                metrics = train_and_end(plan, run_id, plan.cfg.train.workers, resources)
    return run_id, metrics
