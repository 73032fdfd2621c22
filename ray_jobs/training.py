"""A training run on Ray Train, from a checked config to its ended MLflow run.

:func:`plan_training` decides everything a run needs before Ray or MLflow is touched (the config
with absolute paths, its data checked, names and folders), so that bad input fails first;
:func:`fit` hands the plan to a ``TorchTrainer`` (DDP over gloo on CPU, nccl on GPUs, failed
worker groups restarted from their last checkpoint up to ``train.max_failures`` times) and
:func:`train_and_end` closes the MLflow run however fitting ended. The command line
(:mod:`ray_jobs.train`) and the training sweep's trials (:mod:`ray_jobs.trial`) both launch
runs through here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2m_core.config import Config, resolve
from p2m_core.engine.data_check import check_training_data
from p2m_core.errors import P2MInputError
from p2m_core.tracking.training import end_training_run
from ray_jobs.job_paths import absolute_paths, checkpoint_storage, is_uri, job_tracking_uri, output_root
from ray_jobs.stop import open_runs

#: Checkpoints Ray keeps per run (the newest; resume needs one, a spare covers a bad write).
CHECKPOINTS_KEPT = 2


@dataclass(frozen=True)
class TrainPlan:
    """A training run ready to launch: its config and where everything goes."""

    cfg: Config
    tracking_uri: str
    run_name: str
    ray_name: str
    storage_path: str
    output_dir: Path
    use_gpu: bool

    @property
    def config_hash(self) -> str:
        return resolve(self.cfg, "train").hash

    @property
    def checkpoints(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.ray_name}"


def plan_training(
    cfg: Config, use_gpu: bool = False, launch_dir: str | Path | None = None, run_name: str = "", tracking_uri: str = "",
) -> TrainPlan:
    """Check ``cfg`` for training and decide its names and folders (no MLflow, no Ray).

    ``tracking_uri``: the store already chosen by a sweep's driver; empty, the launch rule."""
    launch = Path(launch_dir if launch_dir is not None else os.getcwd()).resolve()
    cfg = absolute_paths(cfg, launch)
    if cfg.train.device == "cuda" and not use_gpu:
        use_gpu = True
    if use_gpu and cfg.train.device == "cpu":
        raise P2MInputError("train.device is 'cpu' but --gpu was given; drop one of them")
    check_training_data(cfg)
    outputs = output_root(cfg, launch)
    storage = checkpoint_storage(cfg, launch)
    config_hash = resolve(cfg, "train").hash
    run_name = run_name or cfg.tracking.run_name or f"train-{cfg.name}"
    ray_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run_name}-{config_hash[:12]}")
    uri = tracking_uri or job_tracking_uri(cfg.tracking.tracking_uri)
    return TrainPlan(cfg, uri, run_name, ray_name, storage, outputs / ray_name, use_gpu)


def trains_in_trial(cfg: Config) -> bool:
    """Whether a sweep trains this run in its trial (:mod:`ray_jobs.train_in_trial`): one worker,
    and checkpoints on a folder."""
    return cfg.train.workers == 1 and not is_uri(cfg.train.storage_path)


def worker_resources(num_workers: int, use_gpu: bool, cpus_per_worker: float | None) -> dict[str, float]:
    """Each worker's Ray resources: ``cpus_per_worker``, or the cluster's CPUs shared evenly
    (at most 1 per worker on an attached cluster, where other jobs run too)."""
    import ray  # Ray only once a run starts: bad input and finished runs answer without it

    if cpus_per_worker is None:
        share = ray.cluster_resources().get("CPU", 1.0) / num_workers
        if os.environ.get("RAY_ADDRESS"):
            share = min(1.0, share)
        cpus_per_worker = max(0.01, share)
    resources = {"CPU": float(cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = 1.0
    return resources


def placement_strategy(use_gpu: bool) -> str:
    """How Ray places a run's workers: on GPUs all on one node (``STRICT_PACK``), else ``PACK``.

    Why: with ``PACK`` the cluster's autoscaler sees each worker's GPU as a separate demand and
    covers four of them with four 1-GPU machines (it prefers the node type it fills best), so
    DDP's gradients would cross the network; one bundle asks for one machine with all the GPUs,
    which is how the paper's runs were laid out (docs/SCALING.md, "Which node a config needs").
    """
    return "STRICT_PACK" if use_gpu else "PACK"


def fit(
    plan: TrainPlan, run_id: str, num_workers: int, resources: dict[str, float],
    callbacks: Sequence[Any] = (),
) -> Any:
    """Run the worker group to the end (retrying failed groups from their checkpoint)."""
    # Ray Train and torch (3 s of imports) only when a run starts; train_worker imports torch too
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_jobs.train_worker import worker_config, worker_main

    trainer = TorchTrainer(
        worker_main,
        train_loop_config=worker_config(plan.cfg, plan.tracking_uri, run_id, plan.output_dir, plan.checkpoints),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=plan.use_gpu, resources_per_worker=resources,
            placement_strategy=placement_strategy(plan.use_gpu),
        ),
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        run_config=RunConfig(
            name=plan.ray_name,
            storage_path=plan.storage_path,
            failure_config=FailureConfig(max_failures=plan.cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=list(callbacks),
        ),
    )
    return trainer.fit()


def train_and_end(
    plan: TrainPlan, run_id: str, num_workers: int, resources: dict[str, float], callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """:func:`fit`, then the MLflow run ended (:func:`end_after`). Returns the final evaluation's metrics."""
    return end_after(plan, run_id, lambda: dict(fit(plan, run_id, num_workers, resources, callbacks).metrics or {}))


def end_after(plan: TrainPlan, run_id: str, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``train()``, then end the MLflow run FINISHED, or FAILED (and re-raise) when it raised."""
    try:
        metrics = train()
    except BaseException as exc:
        open_runs.discard(run_id)  # ended here: a stop signal from now on must not overwrite it
        end_training_run(plan.tracking_uri, run_id, exc)
        raise
    open_runs.discard(run_id)
    end_training_run(plan.tracking_uri, run_id)
    return metrics
