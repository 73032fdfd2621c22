"""A pseudo sweep's missing trials run one after another in the command's own process, without
Ray (``python -m ray_jobs.sweep ... --executor local``).

Why: a sweep of short trials on one machine pays for Ray more than for its trials. On 2 cores a
12-trial sweep of 16-image trials computes for ~8 s and spends ~8 s more starting the
in-process cluster (``ray.init``), Tune and its actors (new processes that import torch and
MLflow again); docs/BENCHMARKS.md measures it. Here each trial is the same
:func:`~ray_jobs.pseudo_trial.run_pseudo_trial` a Tune trial runs (claim, MLflow child run,
result files), so the store, the tables and resuming are the same; torch uses every core of the
machine for one trial at a time, as a plain loop would.

What it gives up: trials never run on other machines or in parallel processes, a spec's
``resources`` are not used, and a trial whose process dies takes the command with it (running
the command again computes what is missing, as after any stopped sweep). Training sweeps go
through Ray (:mod:`ray_jobs.tuning`).
"""

from __future__ import annotations

from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.outage import bound_client_retries
from ray_jobs.executors import LOCAL, check_executor
from ray_jobs.plan import SweepPlan
from ray_jobs.pseudo_trial import run_pseudo_trial, sweep_context
from ray_jobs.trial_lines import TrialLines


def run_plan_locally(plan: SweepPlan, quiet: bool) -> tuple[int, int, list[str]]:
    """Run the plan's missing trials in this process, in order; ``(finished, failed, error lines)``."""
    check_executor(plan, LOCAL)
    bound_client_retries()
    context = sweep_context(plan, LOCAL)
    store.set_tags(plan.tracking_uri, plan.parent_run_id, {T.EXECUTOR: LOCAL})
    lines = TrialLines(plan.spec.name, len(plan.todo), quiet)
    for trial in plan.todo:
        lines.ended(trial.run_name, run_pseudo_trial(context, trial))
    return lines.finished, lines.failed, lines.errors
