"""The ways ``python -m ray_jobs.sweep --executor`` runs a plan's trials, and which sweeps each
can run: checked by the driver before anything starts (no Ray, no torch imported here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2m_core.errors import P2MInputError

if TYPE_CHECKING:
    from ray_jobs.plan import SweepPlan

RAY = "ray"  # Ray Tune trials (ray_jobs.tuning): any sweep, on this machine or a cluster
LOCAL = "local"  # one trial after another in the command's process (ray_jobs.local_sweep): pseudo sweeps
EXECUTORS = (RAY, LOCAL)


def check_executor(plan: SweepPlan, executor: str) -> None:
    """Refuse a sweep the chosen executor cannot run."""
    if executor not in EXECUTORS:
        raise P2MInputError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == LOCAL and plan.spec.stage != "pseudo":
        raise P2MInputError(f"{plan.spec.where}: --executor local runs stage 'pseudo' sweeps only, and this one is stage "
                            f"{plan.spec.stage!r}; leave --executor out to run it on Ray")  # fmt: skip
