"""One worker's training run, built from a :class:`~p2m_core.config.Config`: what a Ray Train
worker executes, and what a single process can execute without Ray.

:class:`WorkerRun` builds the train split (sharded by rank), the network (the same initial
weights on every worker: seeded by the config's ``seed`` before it is built), the
:class:`~p2m_core.engine.loop.OptimisationLoop`, and on rank 0 the val split. It answers the
schedule (:meth:`WorkerRun.due`: evaluate every ``train.eval_every`` iterations and at the end,
checkpoint at each evaluation or every ``train.checkpoint_every``) and runs it
(:meth:`WorkerRun.train`, calling a caller's :class:`RunHooks` at each point: the Ray Train
worker and the learning-curve benchmark run this one loop), evaluates
(:meth:`WorkerRun.evaluate`: PQ/SQ/RQ of the panoptic output for all, things and stuff, mIoU of
``P^s``, and the pseudo masks' PQ, on the first ``train.eval_images`` val images, or on the whole
held-out ``train.test_split`` once at the end), draws
pseudo-mask overlays, and writes the final model file and its predictions on the val images.

Resume state lives in two files per checkpoint folder: :data:`STATE_FILE` (weights, optimiser,
schedule, iteration; written by rank 0) and one :data:`RNG_FILE` per rank (each worker's own
random states). Both are plain tensors and values, read with ``weights_only=True``. Each rank
also writes :data:`DATA_FILE`, the image ids it trained on at each iteration since the previous
checkpoint: a record of the sharding, for audits and tests.
Each rank's part ends with a manifest of its files (sizes, SHA-256), so that a damaged checkpoint
is found before it is loaded (:mod:`p2m_core.engine.checkpoint_check`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from p2m_core.config import Config
from p2m_core.data.dataset import PointPanopticDataset, collate_points
from p2m_core.engine.checkpoint import save_checkpoint
from p2m_core.engine.checkpoint_check import write_manifest
from p2m_core.engine.device import resolve_device
from p2m_core.engine.evaluate import NetworkEvaluator
from p2m_core.engine.loop import OptimisationLoop, batch_to_device
from p2m_core.engine.predictions import predict_images
from p2m_core.engine.step import StepResult
from p2m_core.io import atomic_open, atomic_write_json
from p2m_core.model.point2mask import ClassInfo, build_model
from p2m_core.model.task_maps import batch_pseudo_labels

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RNG_FILE = "rng-rank{rank}.pt"
DATA_FILE = "data-rank{rank}.json"  # image ids of each iteration since the previous checkpoint
MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Due:
    """What to do after an iteration."""

    evaluate: bool
    checkpoint: bool


class RunHooks:
    """What a caller does at the points of a run's schedule (:meth:`WorkerRun.train`): the Ray
    Train worker logs to MLflow and reports checkpoints to Ray, the learning-curve benchmark prints
    rows. Every method is a no-op here; override what you need. Raise from any of them to stop."""

    def step(self, iteration: int, result: StepResult) -> None:
        """After every iteration (from 1), on every worker."""

    def wants_evaluation(self, iteration: int) -> bool:
        """Whether a due evaluation runs (rank 0 only): e.g. not when the store already has it."""
        return True

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        """Rank 0, after an evaluation on the run's evaluation split."""

    def checkpoint(self, iteration: int, metrics: dict[str, float]) -> None:
        """Every worker, at a checkpoint iteration; ``metrics``: the evaluation of this
        iteration on rank 0 ({} elsewhere, or when none ran)."""


class WorkerRun:
    """One worker's share of a training run: its data, network and
    :class:`~p2m_core.engine.loop.OptimisationLoop`, the schedule around the steps, evaluation,
    resume files and final outputs (module docstring)."""

    def __init__(self, cfg: Config, rank: int = 0, world_size: int = 1, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device if device is not None else resolve_device(cfg.train.device, "train.device"))
        self.train_set = PointPanopticDataset.from_config(cfg, "train")
        self.classes = ClassInfo.from_dataset(self.train_set.panoptic)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, self.classes).to(self.device)
        self.loop = OptimisationLoop(cfg, self.model, self.train_set, rank, world_size, self.device)
        # rank 0 scores; its val split is opened now, so a broken one fails before training
        self._scored: dict[str, PointPanopticDataset] = {}
        if rank == 0:
            self.scored_set("val")
        self._seen: list[tuple[int, list[Any]]] = []

    def record_step(self, iteration: int) -> None:
        """Remember which images this worker trained on at ``iteration`` (:data:`DATA_FILE`)."""
        self._seen.append((iteration, list(self.loop.last_image_ids)))

    @property
    def iteration(self) -> int:
        return self.loop.iteration

    @property
    def max_iters(self) -> int:
        return self.loop.max_iters

    def due(self, iteration: int) -> Due:
        """Evaluate every ``train.eval_every`` iterations and at the last; checkpoint at each
        evaluation, and every ``train.checkpoint_every`` iterations when that is set."""
        train = self.cfg.train
        last = iteration >= self.max_iters
        evaluate = last or (train.eval_every > 0 and iteration % train.eval_every == 0)
        checkpoint = evaluate or (train.checkpoint_every > 0 and iteration % train.checkpoint_every == 0)
        return Due(evaluate, checkpoint)

    def train(self, hooks: RunHooks | None = None, eval_split: str = "val") -> None:
        """Train to :attr:`max_iters` on the schedule of :meth:`due`, calling ``hooks`` at each
        point: the one loop every caller runs (module docstring)."""
        hooks = hooks if hooks is not None else RunHooks()

        def on_step(iteration: int, result: StepResult) -> None:
            self.record_step(iteration)
            hooks.step(iteration, result)
            due = self.due(iteration)
            metrics: dict[str, float] = {}
            if due.evaluate and self.rank == 0 and hooks.wants_evaluation(iteration):
                metrics = self.evaluate(eval_split)
                hooks.evaluation(iteration, metrics)
            if due.checkpoint:
                hooks.checkpoint(iteration, metrics)

        self.loop.run(on_step=on_step)

    # ------------------------------------------------------------------ evaluation (rank 0)
    def scored_set(self, split: str) -> PointPanopticDataset:
        """The dataset of a scored split (val, ``train.test_split``), with ground truth; built on
        first use, on rank 0 only."""
        assert self.rank == 0, "evaluation runs on rank 0"
        if split not in self._scored:
            self._scored[split] = PointPanopticDataset.from_config(self.cfg, split, with_gt=True)
        return self._scored[split]

    def _batches(self, split: str = "val", limit: int = 0) -> Any:
        dataset = self.scored_set(split)
        count = len(dataset) if limit <= 0 else min(limit, len(dataset))
        loader = DataLoader(Subset(dataset, range(count)), batch_size=self.loop.batch_size,
                            collate_fn=partial(collate_points, size_divisor=self.cfg.data.size_divisor))  # fmt: skip
        for batch in loader:
            yield batch_to_device(batch, self.device)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics in percent (:meth:`NetworkEvaluator.metrics`) on ``split``: the first
        ``train.eval_images`` images of val (all when 0), every image of any other split (the
        held-out split is scored once, whole)."""
        dataset = self.scored_set(split)
        evaluator = NetworkEvaluator(dataset.panoptic, self.cfg)
        for batch in self._batches(split, self.cfg.train.eval_images if split == "val" else 0):
            evaluator.process(self.model, batch)
        self.model.train()
        return evaluator.metrics()

    @torch.no_grad()
    def overlays(self, count: int) -> dict[str, np.ndarray]:
        """``{name: [H, W', 3] uint8}``: image, the network's pseudo masks and the ground truth,
        with the points, for the first ``count`` val images."""
        from p2m_core.evaluation import upsample_nearest
        from p2m_core.evaluation.overlay import overlay_panel, point_owner_map

        panels: dict[str, np.ndarray] = {}
        if count <= 0:
            return panels
        stride = self.cfg.pseudo.mask_stride
        self.model.eval()
        for batch in self._batches("val", count):
            out = self.model(batch["images"], batch["padding_mask"])
            pseudo = batch_pseudo_labels(out, batch, self.cfg.pseudo)[1].panoptic
            for b, (h, w) in enumerate(batch["image_sizes"]):
                owner = upsample_nearest(pseudo[b].cpu().numpy(), stride, h, w)
                points = batch["points_yx"][b].cpu().numpy()
                gt_owner = point_owner_map(batch["segment_ids"][b, :h, :w].cpu().numpy(), batch["point_segment_ids"][b].cpu().numpy())
                image = _display_image(batch["images"][b, :, :h, :w], self.scored_set("val").normalize)
                scale = max(1, 256 // max(h, w))
                panel = overlay_panel(image, owner, points, batch["point_is_thing"][b].cpu().numpy(), gt_owner, scale=scale)
                panels[f"{batch['image_ids'][b]}"] = panel
        self.model.train()
        return panels

    # ------------------------------------------------------------------ resume state
    def save_state(self, folder: str | Path) -> None:
        """This worker's part of a checkpoint: :data:`STATE_FILE` on rank 0, its RNG and data
        files on all, and last its manifest (:mod:`p2m_core.engine.checkpoint_check`), which
        marks the part complete."""
        folder = Path(folder)
        names = [RNG_FILE.format(rank=self.rank), DATA_FILE.format(rank=self.rank)]
        if self.rank == 0:
            state = self.loop.state_dict()
            state.pop("rng")
            with atomic_open(folder / STATE_FILE) as handle:
                torch.save(state, handle)
            names.append(STATE_FILE)
        with atomic_open(folder / names[0]) as handle:
            torch.save(self.loop.rng_state(), handle)
        atomic_write_json(folder / names[1], {"rank": self.rank, "iterations": self._seen})
        write_manifest(folder, names, self.rank, self.world_size)
        self._seen = []

    def load_state(self, folder: str | Path) -> None:
        """Resume from a checkpoint folder written by :meth:`save_state` (of the same run).

        A worker whose rank has no RNG file (the run had fewer workers) reseeds from
        ``seed`` and its rank: the weights and the data order still resume exactly."""
        folder = Path(folder)
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.loop.load_state_dict(state)
        rng_path = folder / RNG_FILE.format(rank=self.rank)
        if rng_path.is_file():
            self.loop.set_rng_state(torch.load(rng_path, weights_only=True))
        else:
            log.warning("checkpoint %s has no random state for rank %d; reseeding", folder, self.rank)
            torch.manual_seed(self.cfg.seed + 1000 * (self.rank + 1) + self.iteration)

    # ------------------------------------------------------------------ final outputs (rank 0)
    def save_model(self, path: str | Path) -> Path:
        """The trained network as a ``p2m-checkpoint/1`` file (what ``python -m p2m_core.predict`` and the
        pseudo stage's ``checkpoint`` source read)."""
        categories = list(self.train_set.panoptic.categories.values())
        return save_checkpoint(path, self.model, self.cfg, self.classes, categories,
                               extra={"iteration": self.iteration})  # fmt: skip

    def write_predictions(self, model_file: str | Path, out: str | Path) -> dict[str, Any]:
        """Panoptic predictions of the saved model on the val images (``predictions.json``,
        ``panoptic/`` PNGs, ``overlays/``), through the same code as ``python -m p2m_core.predict``."""
        paths = [record.image_path for record in self.scored_set("val").panoptic.records]
        limit = self.cfg.train.eval_images
        paths = paths[:limit] if limit > 0 else paths
        return predict_images(model_file, paths, out, device=str(self.device), batch_size=self.loop.batch_size,
                              progress=False)  # fmt: skip


def _display_image(image: torch.Tensor, normalized: bool) -> np.ndarray:
    """An input ``[3, h, w]`` (in [0, 1], or ImageNet-normalised) back to uint8 RGB for drawing."""
    if normalized:
        from p2m_core.data.dataset import IMAGENET_MEAN, IMAGENET_STD

        image = image * torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
        image = image + torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
