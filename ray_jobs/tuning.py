"""A sweep plan's missing trials on Ray Tune: one Tune trial per trial, with the resources its
spec asks for, one console line as each ends, and the counts the sweep run is closed with.

Imported once Ray is up (:mod:`ray_jobs.sweep` plans, opens MLflow and skips finished sweeps
without Ray Tune's second of imports).
"""

from __future__ import annotations

import logging
import sys
import time

import ray
from ray import tune

from p2m_core.errors import P2MInputError
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from ray_jobs.cluster import check_fits
from ray_jobs.executors import RAY
from ray_jobs.plan import SweepPlan
from ray_jobs.pseudo_trial import sweep_context
from ray_jobs.train_progress import SweepProgress
from ray_jobs.training import trains_in_trial
from ray_jobs.trial import run_train_trial, run_trial
from ray_jobs.tune_progress import TrialProgress


#: Times Ray Tune runs a pseudo trial again after its process was lost: its node died (or Ray's
#: memory monitor killed it). A training trial's lost process is run again up to
#: ``train.max_failures`` times, as Ray Train restarts a lost worker. A trial whose own code
#: failed is not run again: it reports its error instead of raising it
#: (:func:`ray_jobs.trial.report_failure`), and re-running the sweep retries it. A trial that
#: is run again does not compute twice: a pseudo trial claims its config hash again (the lost
#: attempt's claim expires with its heartbeat), a training trial resumes from its checkpoint.
LOST_TRIAL_RETRIES = 3
#: CPUs a training trial holds while its TorchTrainer's workers train (Ray refuses 0).
TRAIN_TRIAL_CPU = 0.01


def training_worker_resources(per_worker: dict[str, float], workers: int) -> dict[str, float]:
    """Each training worker's Ray resources: the spec's per-worker share less the worker's part
    of the trial's own :data:`TRAIN_TRIAL_CPU`, so that a trial holds exactly what the spec
    says (``resources.cpu`` x workers) and ``N`` such trials fit on ``N`` x that many CPUs: with
    ``cpu: 1`` two single-worker trials train side by side on 2 cores (at 1 + 0.01 each, one did)."""
    cpu = per_worker.get("CPU", 1.0)
    if cpu <= TRAIN_TRIAL_CPU:
        raise P2MInputError(f"resources.cpu {cpu} leaves nothing for a training worker; give each worker more than {TRAIN_TRIAL_CPU}")
    return {**per_worker, "CPU": cpu - TRAIN_TRIAL_CPU / workers}


def run_plan(plan: SweepPlan, max_concurrent: int | None, storage_path: str | None, attached: bool, quiet: bool) -> tuple[int, int, list[str]]:
    """Hand the plan's missing trials to Ray Tune; returns ``(finished, failed, error lines)``."""
    todo = plan.todo
    training = plan.spec.stage == "train"
    resources = plan.spec.resources.as_ray()
    workers = max(t.config.train.workers for t in todo) if training else 1
    need = {k: v * workers for k, v in resources.items()}
    check_fits(need, attached, plan.spec.where)
    context = sweep_context(plan, RAY, training_worker_resources(resources, workers) if training else None)
    store.set_tags(plan.tracking_uri, plan.parent_run_id, {T.EXECUTOR: RAY})
    progress = TrialProgress(plan.spec.name, plan.trials, len(todo), quiet)
    retries = LOST_TRIAL_RETRIES
    if training:
        # A one-worker run trains in its trial (ray_jobs.train_in_trial), which then holds the
        # spec's resources, and Tune restarts it after its process was lost as Ray Train would.
        # Otherwise the trial only launches and waits for its TorchTrainer, whose workers hold
        # them; a trial holding a whole CPU too would deadlock a 2-CPU machine.
        in_trial = {t.index for t in todo if trains_in_trial(t.config)}
        retries = max(t.config.train.max_failures for t in todo)

        def trial_resources(config: dict) -> tune.PlacementGroupFactory:
            return tune.PlacementGroupFactory([resources if int(config["trial"]) in in_trial else {"CPU": TRAIN_TRIAL_CPU}])

        trainable = tune.with_resources(tune.with_parameters(run_train_trial, context=context), trial_resources)
        if max_concurrent is None:
            total = ray.cluster_resources()
            max_concurrent = max(1, int(min(total.get(k, 0.0) / v for k, v in need.items() if v > 0)))
    else:
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    run_config = tune.RunConfig(
        name=f"{plan.spec.name}-{plan.sweep_hash[:8]}-{int(time.time())}",
        storage_path=storage_path,
        verbose=0,
        callbacks=[progress],
        failure_config=tune.FailureConfig(max_failures=retries, fail_fast=False),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.index for t in todo])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent),
        run_config=run_config,
    )
    # With Tune's file loggers off (MLflow is the record) its result grid warns that it found no
    # result files; the grid is not used.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if training:
        iters = max(t.config.train.iters for t in todo)
        with SweepProgress(plan.tracking_uri, plan.experiment_id, plan.parent_run_id, iters,
                           lambda line: print(f"[{plan.spec.name}] {line}", file=sys.stderr, flush=True), enabled=not quiet):  # fmt: skip
            tuner.fit()
    else:
        tuner.fit()
    return progress.finished, progress.failed, progress.errors
