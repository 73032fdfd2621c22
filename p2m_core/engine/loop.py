"""The training loop around :func:`~p2m_core.engine.step.train_step`, resumable to the iteration.

:class:`OptimisationLoop` owns what a run needs between steps: the data order (a
``DistributedSampler``, so each of ``world_size`` workers sees its own shard; a single process is
``world_size = 1``), the optimiser, the learning-rate schedule (the paper's step decay: x0.1 at
the epochs of ``train.lr_steps``, applied per iteration), the iteration and epoch counters and
every random state. :meth:`OptimisationLoop.state_dict` holds all of it, so a run restored from it
continues exactly as if it had never stopped (tested): same batches, same augmentations, same
weights. A distributed wrapper (Ray Train) calls :meth:`OptimisationLoop.run` on every worker
and saves the state where it likes; this module needs no Ray.

With ``world_size > 1`` the step runs through ``DistributedDataParallel`` around a
:class:`~p2m_core.engine.step.NetworkWithCriterion` on the process group the caller initialised
(Ray Train does: gloo on CPU, nccl on GPU): gradients are averaged across workers, so every
worker keeps identical weights. Random states are per process: :meth:`OptimisationLoop.rng_state`
is saved by every worker, the rest of :meth:`OptimisationLoop.state_dict` by one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from p2m_core.config import Config
from p2m_core.data.dataset import PointPanopticDataset, collate_points
from p2m_core.engine.step import NetworkWithCriterion, StepResult, build_optimizer, network_of, train_step
from p2m_core.model.point2mask import Point2Mask

log = logging.getLogger(__name__)


class OptimisationLoop:
    """The optimisation of one worker: its data shard's order, the optimiser, the schedule, the
    counters and random states, and the loop of steps that advances them (module docstring).
    What a run does around the steps (evaluation, checkpoint files, final outputs) is
    :class:`~p2m_core.engine.run.WorkerRun`'s.

    Parameters
    ----------
    cfg : Config
        ``seed`` (initial weights, data order), ``train`` (global batch size, lr, schedule),
        ``pseudo``, ``loss``.
    model : Point2Mask
        On ``device`` (the bare network: the loop wraps it).
    dataset : PointPanopticDataset
        The training split.
    rank, world_size : int
        This worker and the number of workers.
    """

    def __init__(
        self, cfg: Config, model: Point2Mask, dataset: PointPanopticDataset, rank: int = 0, world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.dataset = dataset
        self.device = torch.device(device)
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)  # fmt: skip
        self.batch_size = worker_batch_size(cfg, world_size)
        self.loader = DataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                                 collate_fn=partial(collate_points, size_divisor=cfg.data.size_divisor))  # fmt: skip
        self.iters_per_epoch = len(self.loader)
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"train: {len(dataset)} images give no batch of train.batch_size={cfg.train.batch_size} "
                f"({self.batch_size} on each of {world_size} workers)"
            )
        self.module: torch.nn.Module = NetworkWithCriterion(model, cfg)
        if world_size > 1:
            if not torch.distributed.is_initialized():
                raise ValueError(f"OptimisationLoop: world_size={world_size} needs an initialised torch.distributed process group")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids, find_unused_parameters=True)
        self.optimizer = build_optimizer(model, cfg)
        milestones = [epoch * self.iters_per_epoch for epoch in cfg.train.lr_steps]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=0.1)
        self.iteration = 0
        self.last_image_ids: list[Any] = []  # of the latest step's batch: which shard this worker trains on
        torch.manual_seed(cfg.seed)

    @property
    def epoch(self) -> int:
        return self.iteration // self.iters_per_epoch

    @property
    def max_iters(self) -> int:
        """The run's length: ``train.iters``, else ``train.epochs`` epochs."""
        return self.cfg.train.iters or self.cfg.train.epochs * self.iters_per_epoch

    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches from the current iteration on, epoch after epoch (the sampler and the
        augmentations reseeded per epoch; a resumed epoch skips what it already trained on)."""
        while True:
            epoch, offset = divmod(self.iteration, self.iters_per_epoch)
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            for index, batch in enumerate(self.loader):
                if index >= offset:
                    yield batch_to_device(batch, self.device)

    def run(self, max_iters: int | None = None, on_step: Callable[[int, StepResult], None] | None = None) -> None:
        """Train until ``max_iters`` iterations in total (default :attr:`max_iters`);
        ``on_step(iteration, result)`` after each (the iteration just done, from 1): log,
        evaluate or save there."""
        max_iters = self.max_iters if max_iters is None else max_iters
        if self.iteration >= max_iters:
            return
        for batch in self.batches():
            if self.iteration >= max_iters:
                break
            result = train_step(self.module, batch, self.optimizer, self.cfg, self.iteration, keep_pseudo=True)
            self.last_image_ids = list(batch["image_ids"])
            self.scheduler.step()
            self.iteration += 1
            if on_step is not None:
                on_step(self.iteration, result)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimiser, schedule, iteration, and this
        process's random states (``rng``)."""
        return {
            "model": network_of(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "rng": self.rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (its ``rng`` too, when present)."""
        network_of(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        if state.get("rng") is not None:
            self.set_rng_state(state["rng"])
        log.info("resumed at iteration %d (epoch %d)", self.iteration, self.epoch)

    @staticmethod
    def rng_state() -> dict[str, Any]:
        """This process's torch, numpy and Python random states (CUDA's too, when present), as
        tensors and plain values, so a checkpoint holding them loads with ``weights_only=True``."""
        name, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def set_rng_state(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def worker_batch_size(cfg: Config, world_size: int) -> int:
    """Images per worker and step: ``train.batch_size`` is the global batch (the paper's 8 on VOC,
    16 on COCO, for which its learning rate is set), split evenly over the ``world_size``
    data-parallel workers, so adding workers never changes the optimisation."""
    if world_size < 1 or cfg.train.batch_size % world_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly over "
            f"{world_size} workers; choose a multiple of {world_size}"
        )
    return cfg.train.batch_size // world_size


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors (images, masks, per-image point tensors) on ``device``."""
    out = dict(batch)
    for key in ("images", "padding_mask"):
        out[key] = batch[key].to(device)
    for key in ("points_yx", "point_labels", "point_is_thing"):
        out[key] = [t.to(device) for t in batch[key]]
    return out
