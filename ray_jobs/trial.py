"""The Ray Tune trials of a sweep: run one setting, record it as an MLflow child run.

:func:`run_trial` is the pseudo stage's trial (:func:`ray_jobs.pseudo_trial.run_pseudo_trial` in
a prepared Ray worker); :func:`run_train_trial` the training stage's, which trains a one-worker
run in place (:mod:`ray_jobs.train_in_trial`) and launches its own ``TorchTrainer`` for any
other (how Ray Train V2 sweeps training: Tune cannot wrap a trainer directly).

Runs in a Ray worker. The sweep driver hands every trial the same
:class:`~ray_jobs.pseudo_trial.SweepContext` (through ``tune.with_parameters``, so it travels
once through the object store) and the index of the trial to run in Tune's config. A trial
whose own code failed reports its error to Tune as its result
(:data:`~ray_jobs.pseudo_trial.FAILED_KEY`) so the driver counts it; only a trial whose process
was lost (its node died) ends in a Tune error, and Tune runs it again
(:data:`ray_jobs.tuning.LOST_TRIAL_RETRIES`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.claims import heartbeat
from p2m_core.tracking.training import open_training_run
from ray_jobs.cluster import node_id
from ray_jobs.pseudo_trial import SweepContext, failure_result, run_pseudo_trial, trial_tags
from ray_jobs.spec import Trial
from ray_jobs.training import end_after, plan_training, train_and_end, trains_in_trial
from ray_jobs.worker_setup import prepare_worker, setup_worker_logging

log = logging.getLogger(__name__)


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable: ``config['trial']`` is the index into ``context.trials``."""
    prepare_worker()
    tune.report(run_pseudo_trial(context, context.trials[int(config["trial"])], node_id()))


def report_failure(exc: BaseException, start: float) -> None:
    """End a trial whose own code failed by reporting the error to Tune as its result, not by
    raising it. Tune runs a trial again when it raised (``FailureConfig``,
    :data:`ray_jobs.tuning.LOST_TRIAL_RETRIES`), which is meant for a trial whose process was
    lost with its node: code that failed would fail again (a training run has had its
    ``train.max_failures`` restarts already), and its run is FAILED with the error (running the
    sweep again retries it)."""
    tune.report(failure_result(exc, start))


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
    tags = {**trial_tags(context, trial, node_id()), T.KIND: T.KIND_TRIAL}
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
