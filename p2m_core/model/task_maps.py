"""From the network's outputs to the pseudo-label pipeline's inputs, at the mask resolution.

Pseudo masks are made on the grid ``ceil(H / s) x ceil(W / s)`` of the padded input, ``s =
pseudo.mask_stride`` (paper reading: 4; release: 1). The network predicts at stride 8, so:

- ``P^s``: the last semantic layer's logits, resized bilinearly to the mask grid and made
  cost-ready (:func:`~p2m_core.pseudo.maps.semantic_cost_map`: classes without a point zeroed,
  each point's class forced on a ``pseudo.point_dilation`` square, given in input pixels);
- ``P^b_high``: the sigmoid of the boundary logits resized to the mask grid;
- ``P^b_low``: the image's low-level edges when the batch carries them (``[B, H, W]`` at the
  input resolution), max-pooled to the mask grid;
- the manifold projector's embedding, when the network has one, resized bilinearly (it enters
  the edge lengths as the pairwise term ``pseudo.extra_weight * max(0, 1 - <e_p, e_q>)``);
- points: ``(y // s, x // s)``.

Everything here is computed without gradient: pseudo labels are targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.config import PseudoConfig
from p2m_core.data.edges import classical_edges
from p2m_core.model.point2mask import NetworkOutput
from p2m_core.pseudo.labels import PseudoLabels, generate_pseudo_labels
from p2m_core.pseudo.maps import PointSet, TaskMaps, dilation_at_mask, semantic_cost_map


def mask_grid(image_shape: Sequence[int], stride: int) -> tuple[int, int]:
    """``(ceil(H / s), ceil(W / s))`` of a padded input ``[..., H, W]``."""
    H, W = image_shape[-2:]
    return -(-H // stride), -(-W // stride)


def points_at_mask(
    points_yx: Sequence[Tensor], labels: Sequence[Tensor], is_thing: Sequence[Tensor], stride: int,
    grid: tuple[int, int],
) -> list[PointSet]:
    """Point sets on the mask grid: ``(y // s, x // s)`` (clamped to the grid)."""
    h, w = grid
    out = []
    for yx, lab, thing in zip(points_yx, labels, is_thing):
        yx = yx.long() // stride
        yx = torch.stack([yx[:, 0].clamp(0, h - 1), yx[:, 1].clamp(0, w - 1)], 1) if len(yx) else yx.reshape(0, 2)
        out.append(PointSet(yx, lab.long(), thing.bool()))
    return out


def low_level_edges(batch: dict[str, Any]) -> Tensor:
    """``P^b_low`` of a batch at the input resolution, ``[B, H, W]`` in [0, 1]; padding stays 0:
    the batch's ``edges`` when its dataset computed them (``data.edge_model``'s detector, cached
    per image: :class:`~p2m_core.data.dataset.EdgeCache`), else the classical edge map of each
    image, computed here (docs/METHOD.md, "Task-oriented maps")."""
    images = batch["images"]
    if "edges" in batch:
        return batch["edges"].to(images.device)
    out = torch.zeros(images.shape[0], *images.shape[-2:])
    for b, (h, w) in enumerate(batch["image_sizes"]):
        rgb = (images[b, :, :h, :w].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        out[b, :h, :w] = torch.from_numpy(classical_edges(rgb))
    return out.to(images.device)


@torch.no_grad()
def network_maps(out: NetworkOutput, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor | None]:
    """The network's own maps on the mask grid, before any use of the points: the last
    semantic layer's logits ``[B, C, h, w]``, ``P^b_high [B, h, w]`` (bilinear resize, then
    sigmoid) and the projector's embedding ``[B, D, h, w]`` (bilinear; None without a projector).
    Shared by training and by the pseudo stage's ``checkpoint`` source, so a frozen network gives
    the stage exactly the maps it would give its own training step."""
    def resize(x: Tensor) -> Tensor:  # detached: at mask stride 8 the maps are the outputs themselves
        x = x.detach()
        return x if tuple(x.shape[-2:]) == grid else F.interpolate(x, size=grid, mode="bilinear", align_corners=False)

    embedding = None if out.embedding is None else resize(out.embedding.float())
    return resize(out.semantic.logits[-1].float()), resize(out.boundary.float()).sigmoid()[:, 0], embedding


@torch.no_grad()
def task_maps(
    out: NetworkOutput, points: list[PointSet], grid: tuple[int, int], cfg: PseudoConfig,
    boundary_low: Tensor | None = None,
) -> TaskMaps:
    """The :class:`TaskMaps` of a batch on the mask grid (module docstring)."""
    logits, boundary_high, embedding = network_maps(out, grid)
    semantic = semantic_cost_map(logits, points, dilation=dilation_at_mask(cfg.point_dilation, cfg.mask_stride))
    high = boundary_high if "boundary_high" in cfg.maps else None
    low = None
    if boundary_low is not None and "boundary_low" in cfg.maps:
        low = F.max_pool2d(boundary_low[:, None].float(), cfg.mask_stride, cfg.mask_stride, ceil_mode=True)[:, 0]
        low = low[:, : grid[0], : grid[1]]
    return TaskMaps(semantic, high, low, embedding=embedding)


def batch_pseudo_labels(
    out: NetworkOutput, batch: dict[str, Any], cfg: PseudoConfig, warmup: bool = False
) -> tuple[TaskMaps, PseudoLabels, list[PointSet]]:
    """The pseudo labels of a collated batch from the network's outputs: its points on the mask
    grid, its low-level edges (when ``cfg.maps`` lists them), the :class:`TaskMaps`, and
    :func:`~p2m_core.pseudo.labels.generate_pseudo_labels` with the value checks off (each would
    wait for the device). Shared by the training step and the evaluator."""
    images = batch["images"]
    grid = mask_grid(images.shape, cfg.mask_stride)
    points = points_at_mask(batch["points_yx"], batch["point_labels"], batch["point_is_thing"], cfg.mask_stride, grid)
    points = [p.to(images.device) for p in points]
    low = low_level_edges(batch) if "boundary_low" in cfg.maps else None
    maps = task_maps(out, points, grid, cfg, boundary_low=low)
    return maps, generate_pseudo_labels(maps, points, cfg, warmup=warmup, check_values=False), points
