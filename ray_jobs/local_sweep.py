"""A pseudo sweep's missing trials run one after another from the command's own process, without
Ray (``python -m ray_jobs.sweep ... --executor local``): recorded by the command, computed in one
child process that imports torch while the command opens the MLflow store
(:mod:`ray_jobs.stage_process`).

Why: a sweep of short trials on one machine pays for Ray more than for its trials. On 2 cores a
12-trial sweep of 16-image trials computes for ~8 s and spends ~8 s more starting the
in-process cluster (``ray.init``), Tune and its actors (new processes that import torch and
MLflow again); docs/BENCHMARKS.md measures it. Here each trial is the same
:func:`~ray_jobs.pseudo_trial.run_pseudo_trial` a Tune trial runs (claim, MLflow child run,
result files), so the store, the tables and resuming are the same; torch uses every core of the
machine for one trial at a time, as a plain loop would.

What it gives up: trials never run on other machines or in parallel, and a spec's ``resources``
are not used. A trial whose child process dies fails (the next trial gets a new child); the
command's own end ends every trial it runs (running the command again computes what is
missing, as after any stopped sweep). Training sweeps go
through Ray (:mod:`ray_jobs.tuning`).
"""

from __future__ import annotations

import threading

from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.outage import bound_client_retries
from ray_jobs import stop
from ray_jobs.executors import LOCAL, check_executor
from ray_jobs.plan import SweepPlan
from ray_jobs.pseudo_trial import run_pseudo_trial, sweep_context
from ray_jobs.stage_process import StageProcess
from ray_jobs.trial_lines import TrialLines


def run_plan_locally(plan: SweepPlan, quiet: bool, stages: StageProcess) -> tuple[int, int, list[str]]:
    """Run the plan's missing trials one after another, recorded from this process and computed
    in ``stages`` (started early by the command: :mod:`ray_jobs.stage_process`); ``(finished,
    failed, error lines)``."""
    check_executor(plan, LOCAL)
    bound_client_retries()
    context = sweep_context(plan, LOCAL)
    store.set_tags(plan.tracking_uri, plan.parent_run_id, {T.EXECUTOR: LOCAL})
    lines = TrialLines(plan.spec.name, len(plan.todo), quiet)
    raised: list[BaseException] = []

    def trials() -> None:
        try:
            for trial in plan.todo:
                if stop.stopping.is_set():
                    return
                lines.ended(trial.run_name, run_pseudo_trial(context, trial, stage=stages.run))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            raised.append(exc)

    # The trials talk to the store from a thread, so that the main thread, which runs the stop
    # handler (ray_jobs/stop.py), never holds the store's lock: a handler that ran while the main
    # thread was inside a sqlite write would wait for that write forever, and the sweep would end
    # with its runs RUNNING.
    worker = threading.Thread(target=trials, name="p2m-local-trials", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if raised:
        raise raised[0]
    return lines.finished, lines.failed, lines.errors
