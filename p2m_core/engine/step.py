"""One training step in one process: data -> network -> pseudo labels -> losses -> AdamW step.

:func:`train_step` is what every worker of a distributed run executes per iteration; it needs no
Ray. The pseudo labels are made from the network's own maps, without gradient, by
:func:`~p2m_core.pseudo.labels.generate_pseudo_labels` (the warm-up assignment for the first
``pseudo.warmup_iters`` iterations), with its value checks off (each would wait for the device).
The step reports every named loss term (left on the device: :class:`StepResult`), the learning
rate and the share of the step's wall time spent making pseudo labels (the paper reports about
25 %; docs/BENCHMARKS.md has ours).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from p2m_core.config import Config
from p2m_core.model.criterion import point2mask_losses
from p2m_core.model.point2mask import NetworkOutput, Point2Mask
from p2m_core.model.task_maps import batch_pseudo_labels
from p2m_core.pseudo.labels import PseudoLabels
from p2m_core.pseudo.maps import TaskMaps


@dataclass
class StepResult:
    """What one step measured: the loss terms and their sum as detached 0-d tensors on the step's
    device, the learning rate, timings (seconds) and the pseudo labels it trained on (for
    overlays and diagnostics).

    The losses stay on the device because reading a value back makes the host wait for the
    device: once per step on GPU if every step did it. Whoever logs them reads a window of steps
    back at once (:mod:`p2m_core.engine.step_metrics`). So on GPU ``step_seconds`` ends when the
    step's backward pass and optimiser update are queued, not done: that work finishes while the
    next step runs up to its first wait for the device (the Hungarian matching's, for one), and is
    counted there; over a logged window the seconds add up to about the same."""

    losses: dict[str, Tensor]
    total: Tensor
    lr: float
    step_seconds: float
    pseudo_seconds: float
    pseudo: PseudoLabels | None = field(default=None, repr=False)

    @property
    def pseudo_share(self) -> float:
        """Share of the step's wall time spent making pseudo labels."""
        return self.pseudo_seconds / self.step_seconds if self.step_seconds > 0 else 0.0


def build_optimizer(model: Point2Mask, cfg: Config) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (``train.lr``, ``train.weight_decay``), in three groups:
    the backbone at ``lr * train.lr_backbone_mult``, the deformable sampling offsets and reference
    points at ``lr * train.lr_offsets_mult`` (the release's 0.1 for both), the rest at ``lr``."""
    groups: dict[str, list[torch.nn.Parameter]] = {"backbone": [], "offsets": [], "rest": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            groups["backbone"].append(param)
        elif "sampling_offsets" in name or name.startswith("panoptic.location.reference."):
            groups["offsets"].append(param)
        else:
            groups["rest"].append(param)
    lr = cfg.train.lr
    factor = {"backbone": cfg.train.lr_backbone_mult, "offsets": cfg.train.lr_offsets_mult, "rest": 1.0}
    params = [{"params": p, "lr": lr * factor[g], "name": g} for g, p in groups.items() if p]
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay)


@dataclass
class TrainingOutputs:
    """What one training forward pass produces: the network's outputs, the pseudo-label
    pipeline's inputs (:class:`~p2m_core.pseudo.maps.TaskMaps` on the mask grid) and the pseudo
    labels it made from them (no gradient), and the named, weighted loss terms."""

    network: NetworkOutput
    maps: TaskMaps
    pseudo: PseudoLabels
    losses: dict[str, Tensor]
    pseudo_seconds: float


def training_outputs(model: Point2Mask, batch: dict[str, Any], cfg: Config, iteration: int) -> TrainingOutputs:
    """Forward, pseudo labels and loss terms of one batch, without the optimisation step:
    ``iteration`` (from 0) selects the warm-up assignment and drives the release's loss ramp."""
    out = model(batch["images"], batch["padding_mask"])
    pseudo_start = time.perf_counter()
    # The maps are cast to float32 and the solvers run outside autocast (AMP): their log-sum-exps
    # and Newton systems need the precision.
    with torch.autocast(batch["images"].device.type, enabled=False):
        maps, pseudo, points = batch_pseudo_labels(out, batch, cfg.pseudo, warmup=iteration < cfg.pseudo.warmup_iters)
    pseudo_seconds = time.perf_counter() - pseudo_start
    losses = point2mask_losses(model, out, batch, pseudo, points, cfg, iteration)
    return TrainingOutputs(out, maps, pseudo, losses, pseudo_seconds)


class NetworkWithCriterion(torch.nn.Module):
    """The network and its criterion as one module: ``forward(batch, iteration)`` gives the
    named loss terms, the pseudo labels (no gradient) and the seconds spent making them.

    Data-parallel training wraps this, not the bare network, in ``DistributedDataParallel``:
    the criterion runs the thing decoder on the matched queries after the network's forward,
    and DDP only tracks parameter use inside the forward it wraps. With the whole step inside,
    and the loss terms as the only outputs that carry gradient, ``find_unused_parameters``
    sees every use, including a batch without things, where the thing branch gets no gradient.
    """

    def __init__(self, network: Point2Mask, cfg: Config) -> None:
        super().__init__()
        self.network = network
        self.cfg = cfg

    def forward(self, batch: dict[str, Any], iteration: int) -> tuple[dict[str, Tensor], PseudoLabels, float]:
        outputs = training_outputs(self.network, batch, self.cfg, iteration)
        return outputs.losses, outputs.pseudo, outputs.pseudo_seconds


def network_of(model: torch.nn.Module) -> Point2Mask:
    """The :class:`Point2Mask` inside a DDP wrapper and/or a :class:`NetworkWithCriterion`."""
    model = getattr(model, "module", model)
    return model.network if isinstance(model, NetworkWithCriterion) else model


def autocast(cfg: Config, device: torch.device) -> Any:
    """bfloat16 autocast on CUDA when ``train.amp`` is on (no loss scaling needed, unlike
    float16); a no-op context elsewhere: CPU autocast is slower than float32 for this network."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(cfg.train.amp) and device.type == "cuda")


def train_step(
    model: Point2Mask | torch.nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer, cfg: Config,
    iteration: int, keep_pseudo: bool = False,
) -> StepResult:
    """One optimisation step on ``batch`` (module docstring); ``iteration`` counts from 0.

    ``model`` is the network, a :class:`NetworkWithCriterion` around it (whose config the forward
    uses), or a DDP wrapper of one."""
    start = time.perf_counter()
    module = NetworkWithCriterion(model, cfg) if isinstance(model, Point2Mask) else model
    module.train()
    with autocast(cfg, batch["images"].device):
        losses, pseudo, pseudo_seconds = module(batch, iteration)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return StepResult(
        losses={k: v.detach() for k, v in losses.items()},
        total=total.detach(),
        lr=float(max(group["lr"] for group in optimizer.param_groups)),
        step_seconds=time.perf_counter() - start,
        pseudo_seconds=pseudo_seconds,
        pseudo=pseudo if keep_pseudo else None,
    )

