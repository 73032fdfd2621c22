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
import sys
from collections.abc import Sequence

from p2m_core.config import add_config_arguments, load_config
from p2m_core.errors import P2MInputError
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.outage import bound_client_retries
from p2m_core.tracking.provenance import git_commit, source_tags
from p2m_core.tracking.training import damaged_checkpoints, end_training_run, open_training_run
from p2m_core.tracking.ui import experiment_url, ui_command
from ray_jobs import stop
from ray_jobs.stop import exit_process
from ray_jobs.cluster import check_fits, connect, shutdown
from ray_jobs.train_progress import MlflowProgress
from ray_jobs.training import plan_training, train_and_end, worker_resources


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
        store.check_reachable(plan.tracking_uri)
        experiment_id = store.ensure_experiment(plan.tracking_uri, plan.cfg.tracking.experiment)
        tags = {**source_tags("ray_jobs.train"), T.DATASET: f"{plan.cfg.data.dataset}:{plan.cfg.data.root}",
                T.GIT_COMMIT: git_commit(), T.SPLIT: "val"}
        run_id, state = open_training_run(plan.tracking_uri, experiment_id, plan.cfg, tags, plan.run_name)
        if state != "finished":
            stop.open_runs.add(plan.tracking_uri, run_id)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    seconds, attached = connect()
    say(f"Ray {'attached' if attached else 'started in-process'} in {seconds:.1f} s")
    try:
        resources = worker_resources(plan.cfg.train.workers, plan.use_gpu, args.cpus_per_worker)
        check_fits({k: v * plan.cfg.train.workers for k, v in resources.items()}, attached, f"config {args.config_path}")
        damaged_before = len(damaged_checkpoints(plan.tracking_uri, run_id))
        with MlflowProgress(plan.tracking_uri, run_id, plan.cfg.train, say, enabled=not args.quiet):
            metrics = train_and_end(plan, run_id, plan.cfg.train.workers, resources)
        for line in damaged_checkpoints(plan.tracking_uri, run_id)[damaged_before:]:  # the workers' warnings stay in Ray's logs
            print(f"warning: damaged checkpoint file {line}; resumed from the previous good checkpoint", file=sys.stderr)
    except P2MInputError as exc:
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
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM (ray job stop) ends the run KILLED; SIGINT too, except while Ray Train's fit runs,
    # which installs its own SIGINT handler (a graceful abort: the run then ends FAILED).
    stop.install(stop.open_runs, lambda line: print(f"[train] {line}", file=sys.stderr, flush=True))
    exit_process(main())
