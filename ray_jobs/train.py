"""Train Point2Mask on Ray Train, logged to MLflow; resumes where it stopped.

    python -m ray_jobs.train CONFIG [--set KEY=VALUE ...] [--num-workers N] [--gpu]
                             [--cpus-per-worker C] [--quiet]

The launcher, before any worker exists: builds the config (``--set`` overrides; relative paths
made absolute, since Ray workers run in their own directories), checks the data (both splits
present and non-empty, categories agreeing with ``data.num_classes`` and with each other), checks
that the tracking store answers, and opens the MLflow run. Then a ``TorchTrainer`` runs
:func:`ray_jobs.train_worker.worker_main` on ``--num-workers`` workers (default
``train.workers``): DDP over gloo on CPU, nccl with ``--gpu``; Ray restarts a failed worker group
up to ``train.max_failures`` times from its last checkpoint.

**Resume.** Ray keeps the checkpoints under ``train.storage_path`` (default
``<tracking.output_dir>/ray``; an ``s3://`` or other pyarrow URI on a multi-node cluster), in a
folder named after the run name and the config hash. Running the same command again after a
crash, a kill or Ctrl-C continues from the last checkpoint in the same MLflow run; a run that
already FINISHED is not trained again. A damaged latest checkpoint (a truncated, missing or
changed file) is passed over for the previous good one, with a warning naming the file
(:mod:`p2m_core.engine.checkpoint_check`). The model file and the val predictions go to
``<tracking.output_dir>/<run folder>/``.

Ray: in-process by default; an existing cluster when ``RAY_ADDRESS`` is set (``ray job
submit`` sets it). Exit status: 0 finished (or already finished), 1 the run failed, 2 bad input
(nothing started).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2m_core.config import Config, add_config_arguments, load_config, resolve
from p2m_core.errors import P2MInputError

log = logging.getLogger(__name__)

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


def _is_uri(path: str) -> bool:
    return "://" in path


def plan_training(
    cfg: Config, use_gpu: bool = False, launch_dir: str | Path | None = None, run_name: str = "", tracking_uri: str = "",
) -> TrainPlan:
    """Check ``cfg`` for training and decide its names and folders (no MLflow, no Ray).

    ``tracking_uri``: the store already chosen by a sweep's driver; empty, the launch rule."""
    from p2m_core.engine.data_check import check_training_data
    from ray_jobs.plan import job_tracking_uri, refuse_job_temporary
    from ray_jobs.spec import absolute_paths

    launch = Path(launch_dir if launch_dir is not None else os.getcwd()).resolve()
    cfg = absolute_paths(cfg, launch)
    if cfg.train.device == "cuda" and not use_gpu:
        use_gpu = True
    if use_gpu and cfg.train.device == "cpu":
        raise P2MInputError("train.device is 'cpu' but --gpu was given; drop one of them")
    check_training_data(cfg)
    output_root = Path(cfg.tracking.output_dir)
    output_root = output_root if output_root.is_absolute() else launch / output_root
    refuse_job_temporary(output_root, f"tracking.output_dir {output_root}")
    storage = cfg.train.storage_path or str(output_root / "ray")
    if not _is_uri(storage):
        storage = str((launch / storage).resolve())
        refuse_job_temporary(Path(storage), f"train.storage_path {storage}")
    config_hash = resolve(cfg, "train").hash
    run_name = run_name or cfg.tracking.run_name or f"train-{cfg.name}"
    ray_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run_name}-{config_hash[:12]}")
    uri = tracking_uri or job_tracking_uri(cfg.tracking.tracking_uri)
    return TrainPlan(cfg, uri, run_name, ray_name, storage, output_root / ray_name, use_gpu)


def worker_resources(num_workers: int, use_gpu: bool, cpus_per_worker: float | None) -> dict[str, float]:
    """Each worker's Ray resources: ``cpus_per_worker``, or the cluster's CPUs shared evenly
    (at most 1 per worker on an attached cluster, where other jobs run too)."""
    import ray

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
    """:func:`fit`, then end the MLflow run FINISHED, or FAILED (and re-raise) when fitting
    failed. Returns the final evaluation's metrics."""
    from p2m_core.tracking.training import end_training_run
    from ray_jobs.stop import open_runs

    try:
        result = fit(plan, run_id, num_workers, resources, callbacks)
    except BaseException as exc:
        open_runs.discard(run_id)  # ended here: a stop signal from now on must not overwrite it
        end_training_run(plan.tracking_uri, run_id, exc)
        raise
    open_runs.discard(run_id)
    end_training_run(plan.tracking_uri, run_id)
    return dict(result.metrics or {})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.train", description="Train Point2Mask on Ray Train, logged to MLflow.")
    parser.add_argument("config_path", metavar="CONFIG", help="experiment YAML, e.g. experiments/train_tiny.yaml")
    add_config_arguments(parser)
    parser.add_argument("--num-workers", type=int, default=None, metavar="N", help="data-parallel workers (default: train.workers)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, DDP over nccl")
    parser.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                        help="Ray CPUs per worker (default: the local CPUs shared evenly; 1 on an attached cluster)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from p2m_core.tracking.outage import bound_client_retries

    bound_client_retries()  # a launcher ending a run after an outage reports it in seconds, not minutes
    args = build_parser().parse_args(argv)
    if args.config is not None:
        print("error: give the config as the positional CONFIG, not --config", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[train] {line}", file=sys.stderr, flush=True)

    try:
        overrides = list(args.overrides)
        if args.num_workers is not None:  # checked with the config, so a batch that does not split is refused
            overrides.append(f"train.workers={args.num_workers}")
        cfg = load_config(args.config_path, overrides)
        if args.cpus_per_worker is not None and not args.cpus_per_worker > 0:
            raise P2MInputError(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
        plan = plan_training(cfg, use_gpu=args.gpu)
        from p2m_core.tracking import store
        from p2m_core.tracking import tags as T
        from p2m_core.tracking.provenance import git_commit, source_tags

        from p2m_core.tracking.training import open_training_run

        store.check_reachable(plan.tracking_uri)
        experiment_id = store.ensure_experiment(plan.tracking_uri, plan.cfg.tracking.experiment)
        tags = {**source_tags("ray_jobs.train"), T.DATASET: f"{plan.cfg.data.dataset}:{plan.cfg.data.root}",
                T.GIT_COMMIT: git_commit(), T.SPLIT: "val"}
        run_id, state = open_training_run(plan.tracking_uri, experiment_id, plan.cfg, tags, plan.run_name)
        if state != "finished":
            from ray_jobs.stop import open_runs

            open_runs.add(plan.tracking_uri, run_id)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from p2m_core.tracking.ui import experiment_url, ui_command

    def say_ui() -> None:
        command = ui_command(plan.tracking_uri)
        say(f"MLflow UI: {experiment_url(plan.tracking_uri, experiment_id)}" + (f" (serve it with: {command})" if command else ""))

    if state == "finished":
        say(f"MLflow run {run_id} of this config (hash {plan.config_hash}) already finished; nothing to train")
        say_ui()
        return 0
    say(f"{plan.cfg.name}: {plan.cfg.train.workers} worker(s), config hash {plan.config_hash}; "
        f"{'continuing' if state == 'resumed' else 'started'} MLflow run {run_id} in {plan.tracking_uri}")  # fmt: skip
    say(f"checkpoints in {plan.checkpoints}")
    from ray_jobs.cluster import check_fits, connect, shutdown

    seconds, attached = connect()
    say(f"Ray {'attached' if attached else 'started in-process'} in {seconds:.1f} s")
    try:
        resources = worker_resources(plan.cfg.train.workers, plan.use_gpu, args.cpus_per_worker)
        check_fits({k: v * plan.cfg.train.workers for k, v in resources.items()}, attached, f"config {args.config_path}")
        from ray_jobs.train_progress import MlflowProgress

        from p2m_core.tracking.training import damaged_checkpoints

        damaged_before = len(damaged_checkpoints(plan.tracking_uri, run_id))
        with MlflowProgress(plan.tracking_uri, run_id, plan.cfg.train, say, enabled=not args.quiet):
            metrics = train_and_end(plan, run_id, plan.cfg.train.workers, resources)
        for line in damaged_checkpoints(plan.tracking_uri, run_id)[damaged_before:]:  # the workers' warnings stay in Ray's logs
            print(f"warning: damaged checkpoint file {line}; resumed from the previous good checkpoint", file=sys.stderr)
    except P2MInputError as exc:
        from p2m_core.tracking.training import end_training_run

        end_training_run(plan.tracking_uri, run_id, exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Ray's TrainingFailedError and friends: the run is marked FAILED
        print(f"error: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("re-run the same command to continue from the last checkpoint", file=sys.stderr)
        return 1
    finally:
        if not attached:
            shutdown()
    summary = ", ".join(f"{k} {metrics[k]:.1f}" for k in ("PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ") if k in metrics)
    say(f"finished MLflow run {run_id}" + (f": {summary}" if summary else "") + f"; model and predictions in {plan.output_dir}")
    say_ui()
    return 0


if __name__ == "__main__":
    from ray_jobs import stop
    from ray_jobs.cluster import exit_process

    logging.basicConfig(level=logging.WARNING)
    # SIGTERM (ray job stop) ends the run KILLED; SIGINT too, except while Ray Train's fit runs,
    # which installs its own SIGINT handler (a graceful abort: the run then ends FAILED).
    stop.install(stop.open_runs, lambda line: print(f"[train] {line}", file=sys.stderr, flush=True))
    exit_process(main())
