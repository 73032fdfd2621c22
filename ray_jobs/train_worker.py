"""What every Ray Train worker of a training run executes: :func:`worker_main`.

Ray Train starts the workers, initialises the torch process group (gloo on CPU, nccl on GPU)
and calls :func:`worker_main` on each with the same dict (:func:`worker_config`). The
worker builds its :class:`~p2m_core.engine.run.WorkerRun` (its shard of the train split), resumes
from ``ray.train.get_checkpoint()`` when Ray restarted the group after a failure (or the launcher
was run again; a damaged checkpoint is passed over for the previous good one,
:func:`agreed_checkpoint`), and trains. At each checkpoint iteration rank 0 evaluates (when due) and logs to
MLflow, every worker writes its part of the state into one folder, and all report it together
(``ray.train.report`` is a barrier). Rank 0 records which Ray node each worker of the group
runs on (tag ``p2m.worker_nodes``, rewritten by each restarted group). After the last
iteration rank 0 scores the held-out split (``train.test_split``, once: metrics
``<split>/PQ`` ...), writes the model file and its predictions on the val images and logs them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from p2m_core.config import Config, from_dict, to_dict
from p2m_core.engine.checkpoint_check import Choice, DamagedCheckpointError, choose_checkpoint
from p2m_core.engine.run import MODEL_FILE, RunHooks, WorkerRun
from p2m_core.engine.step_metrics import StepRecord, read_step_metrics, step_record
from p2m_core.tracking.training import TrainingLog
from ray_jobs.cluster import node_id
from ray_jobs.worker_setup import prepare_worker

log = logging.getLogger(__name__)


def worker_config(cfg: Config, tracking_uri: str, run_id: str, output_dir: str | Path, checkpoints: str) -> dict[str, Any]:
    """The plain dict every worker receives: the resolved config, the MLflow run, the folder
    for the final model and predictions, and where Ray keeps the run's checkpoints."""
    return {
        "config": to_dict(cfg), "tracking_uri": tracking_uri, "run_id": run_id, "output_dir": str(output_dir),
        "checkpoints": checkpoints,
    }  # fmt: skip


class WorkerHooks(RunHooks):
    """A Ray Train worker's side of the schedule: rank 0 logs every step and each evaluation to
    MLflow (exactly once, :class:`~p2m_core.tracking.training.TrainingLog`) with a progress line
    every ``train.log_every`` steps; every worker writes its part of each checkpoint and reports it
    to Ray (a barrier: all workers call it equally often).

    The steps' losses stay on the device until they are logged: rank 0 reads them back once per
    ``train.log_every`` steps, and before an evaluation or a checkpoint, for all the steps since
    the last read (:mod:`p2m_core.engine.step_metrics`), and queues each step with its own time."""

    def __init__(self, run: Any, tracking: Any, cfg: Config) -> None:
        self.run, self.tracking, self.cfg = run, tracking, cfg
        self.started = time.perf_counter()
        self.unread: list[tuple[int, int, StepRecord]] = []  # (iteration, time in ms, record) not yet logged
        self.window: list[dict[str, float]] = []  # metrics of the steps since the last progress line
        self.reported: dict[str, float] = {}  # what the last checkpoint reported (the run's result)

    def step(self, iteration: int, result: Any) -> None:
        if self.tracking is None:
            return
        self.unread.append((iteration, int(time.time() * 1000), step_record(result)))
        if iteration % self.cfg.train.log_every == 0 or iteration == self.run.max_iters:
            self.log_steps()
            window, seconds = self.window, sum(m["step_seconds"] for m in self.window)
            log.info("iteration %d/%d: loss %.3f, %.2f s/step, pseudo labels %.0f%% of it", iteration, self.run.max_iters,
                     sum(m["loss/total"] for m in window) / len(window), seconds / len(window),
                     100 * sum(m["pseudo_seconds"] for m in window) / max(seconds, 1e-9))  # fmt: skip
            self.window = []

    def log_steps(self) -> None:
        """Read the unlogged steps back from the device (one transfer) and queue them in MLflow."""
        metrics = read_step_metrics([record for _, _, record in self.unread])
        for (iteration, at, _), values in zip(self.unread, metrics):
            self.tracking.step(iteration, values, at)
        self.window.extend(metrics)
        self.unread = []

    def wants_evaluation(self, iteration: int) -> bool:
        return self.tracking is not None and iteration > self.tracking.evals_done

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        self.log_steps()
        extra = {"iteration": iteration, "train_seconds": time.perf_counter() - self.started}
        self.tracking.evaluation(iteration, {**metrics, **extra}, self.run.overlays(self.cfg.train.overlays))
        log.info("iteration %d: PQ %.1f (things %.1f, stuff %.1f), mIoU %.1f, pseudo PQ %.1f", iteration,
                 metrics["PQ"], metrics["PQ_th"], metrics["PQ_st"], metrics["mIoU"], metrics["pseudo_PQ"])  # fmt: skip

    def checkpoint(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.tracking is not None:
            # waits out an outage (up to tracking.outage_limit_s): a checkpoint must not be kept
            # whose steps are not in the store, or a resume from it would never log them
            self.log_steps()
            self.tracking.flush()
        self.store(iteration, metrics)
        self.reported = {"iteration": iteration, **metrics}

    def store(self, iteration: int, metrics: dict[str, float]) -> None:
        """Write this worker's part of the checkpoint to a temporary folder and hand it to Ray
        Train, which copies it to the run's storage; every worker reports it
        (``ray.train.report`` is a barrier)."""
        with tempfile.TemporaryDirectory(prefix="p2m-ckpt-") as folder:
            self.run.save_state(folder)
            ray.train.report({"iteration": iteration, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def agreed_checkpoint(handed: Path, checkpoints: str, rank: int, world_size: int) -> Choice:
    """The checkpoint folder every worker resumes from: rank 0 checks ``handed`` (Ray's latest)
    and, when it is damaged, the earlier ones
    (:func:`~p2m_core.engine.checkpoint_check.choose_checkpoint`), warns naming each damaged
    file, and sends its choice to the others, so that they cannot diverge (a worker reading a
    file differently on a flaky mount). When there is no good one every worker raises its
    error. ``handed`` in the choice stands for each worker's own copy of Ray's checkpoint (a
    download of its own with a URI storage path)."""
    decision: tuple[str, list[Any], str] = ("", [], "")
    if rank == 0:
        try:
            chosen = choose_checkpoint(handed, checkpoints)
            decision = ("" if chosen.folder == handed else str(chosen.folder), chosen.damaged, "")
        except DamagedCheckpointError as exc:
            decision = ("", [], str(exc))
    if world_size > 1:
        box: list[Any] = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    folder, damaged, error = decision
    if error:
        raise DamagedCheckpointError(error)
    choice = Choice(Path(folder) if folder else handed, damaged)
    if rank == 0:
        for damage in damaged:
            log.warning("damaged checkpoint file %s; resuming from %s instead", damage, choice.folder)
    return choice


def worker_nodes(world_size: int) -> list[str]:
    """The Ray node id of every worker of the group, by rank: a collective, so every worker
    calls it (rank 0 records them, :meth:`~p2m_core.tracking.training.TrainingLog.worker_nodes`)."""
    node = node_id()
    if world_size == 1:
        return [node]
    nodes: list[Any] = [None] * world_size
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def _device() -> Any:
    return ray.train.torch.get_device()


def worker_main(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function (module docstring)."""
    prepare_worker()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    cfg = from_dict(config["config"], {}, Config)
    run = WorkerRun(cfg, rank, world_size, _device())
    checkpoint = ray.train.get_checkpoint()
    choice = None
    if checkpoint is not None:
        with checkpoint.as_directory() as handed:
            choice = agreed_checkpoint(Path(handed), config["checkpoints"], rank, world_size)
            run.load_state(choice.folder)
    nodes = worker_nodes(world_size)
    log.info("rank %d/%d (pid %d, Ray node %s): %d train images, iteration %d of %d on %s, %d torch threads", rank,
             world_size, os.getpid(), nodes[rank] or "-", len(run.train_set), run.iteration, run.max_iters, run.device,
             torch.get_num_threads())  # fmt: skip
    tracking = None
    if rank == 0:
        tracking = TrainingLog(config["tracking_uri"], config["run_id"], cfg.train.log_every, cfg.tracking.outage_limit_s)
        tracking.worker_nodes(nodes)
    if tracking is not None and choice is not None:
        tracking.resumed_at(run.iteration, choice.folder.name, [str(damage) for damage in choice.damaged])
    run.train(WorkerHooks(run, tracking, cfg))
    if tracking is not None:
        finish_run(run, tracking, config)


def finish_run(run: WorkerRun, tracking: TrainingLog, config: dict[str, Any]) -> None:
    """Rank 0 after the last iteration: the held-out split scored (once, however often the run
    was resumed), the model file and its val predictions written and logged, and where the
    model and the checkpoints are."""
    cfg = run.cfg
    tracking.flush()
    split = cfg.train.test_split
    if split and not tracking.held_out_done(split, run.iteration):
        held_out = run.evaluate(split)
        tracking.held_out(run.iteration, split, held_out)
        log.info("%s split: PQ %.1f (things %.1f, stuff %.1f), mIoU %.1f", split, held_out["PQ"], held_out["PQ_th"],
                 held_out["PQ_st"], held_out["mIoU"])  # fmt: skip
    out = Path(config["output_dir"])
    model_file = run.save_model(out / MODEL_FILE)
    predictions = run.write_predictions(model_file, out / "predictions")
    tracking.artifacts(str(predictions["predictions"].parent), "predictions")
    tracking.checkpoint_location({
        "model": str(model_file.resolve()),
        "ray": config["checkpoints"],
        "iteration": str(run.iteration),
    })  # fmt: skip
    log.info("finished at iteration %d; model %s", run.iteration, model_file)
