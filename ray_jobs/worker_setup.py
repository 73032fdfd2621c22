"""What every Ray worker p2m starts does first: its log lines, its torch threads, and how long
its MLflow calls may block.

A Ray worker is a fresh process whose stderr is a log file, whose CPU share is whatever Ray
assigned it, and whose tracking server may be away; :func:`prepare_worker` is the one call that
makes a Tune trial and a Ray Train worker start alike.
"""

from __future__ import annotations

import logging
import os

from p2m_core.tracking.outage import bound_client_retries


def prepare_worker() -> None:
    """Logging (:func:`setup_worker_logging`), torch threads (:func:`limit_threads`) and MLflow's
    per-call retries (:func:`~p2m_core.tracking.outage.bound_client_retries`), before the first
    MLflow call or torch op of the worker."""
    setup_worker_logging()
    limit_threads()
    bound_client_retries()


def setup_worker_logging() -> None:
    """INFO lines of p2m's loggers on the worker's stderr: Ray's worker log files, the dashboard
    and, on an attached cluster, the job's log (an in-process sweep keeps its console to one
    line per trial, printed by the driver)."""
    for name in ("p2m_core", "ray_jobs"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def threads_for(cpus: float) -> int:
    """Torch intra-op threads for a worker holding ``cpus`` of Ray's CPUs: rounded, at least 1
    (0.99 of a CPU runs one thread, 2 run two)."""
    return max(1, round(cpus))


def limit_threads() -> None:
    """Torch intra-op threads = the CPUs Ray assigned this worker (:func:`threads_for`).
    Concurrent trials then never oversubscribe the cores (OpenMP threads waiting on each other
    made a step 50x slower), and a lone trial given the machine uses all of it."""
    # torch and Ray only here: the sweep driver imports this module and never needs either
    import torch

    cpus = 0.0
    try:
        import ray

        if ray.is_initialized():
            cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # outside a Ray worker: keep OMP_NUM_THREADS's rule
        cpus = 0.0
    if cpus <= 0:
        threads = os.environ.get("OMP_NUM_THREADS")
        cpus = float(threads) if threads and threads.isdigit() else 0.0
    if cpus > 0:
        torch.set_num_threads(threads_for(cpus))
