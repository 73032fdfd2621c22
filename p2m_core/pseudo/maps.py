"""Inputs of pseudo-label generation: task-oriented maps, point sets, and the cost-ready P^s.

:class:`TaskMaps` carries the maps of paper Sec. 3.3.1 for a batch of B images, all at the
*mask* resolution ``H x W`` (the resolution of the pseudo masks and of the points);
:class:`PointSet` carries one image's points. :func:`semantic_cost_map` turns raw semantic
logits into the reference's cost-ready ``P^s`` so that the training loop and the ablation stage
build costs from the same map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError


@dataclass
class TaskMaps:
    """Task-oriented maps of a batch, at mask resolution ``H x W``.

    semantic : Tensor [B, C, H, W]
        ``P^s``, per-class probabilities (cost-ready: see :func:`semantic_cost_map`).
    boundary_high : Tensor [B, H, W] or None
        ``P^b_high`` in [0, 1], the predicted instance boundary.
    boundary_low : Tensor [B, H, W] or None
        ``P^b_low`` in [0, 1], the low-level edge map of the image.
    extra : list of Tensor [B, H, W]
        Optional further per-pixel edge maps, each adding ``pseudo.extra_weight * max(E(p), E(q))``
        to the edge length.
    embedding : Tensor [B, D, H, W] or None
        The network's projector output (the reference's "manifold projector"), unit-norm per
        pixel over D. When given it is used: each graph edge gets the pairwise term
        ``pseudo.extra_weight * max(0, 1 - <e(p), e(q)>)``, computed on the graph after the
        embedding is resized there like the other maps (and re-normalised, see
        ``pseudo.renormalise_embedding``).
    """

    semantic: Tensor
    boundary_high: Tensor | None = None
    boundary_low: Tensor | None = None
    extra: list[Tensor] = field(default_factory=list)
    embedding: Tensor | None = None


@dataclass
class PointSet:
    """The labelled points of one image.

    yx : Tensor [m, 2] long
        (y, x) at the mask resolution of the :class:`TaskMaps` they go with.
    labels : Tensor [m] long
        Class index into the C channels of ``TaskMaps.semantic``.
    is_thing : Tensor [m] bool
        True for a thing (instance) point, False for a stuff point.
    """

    yx: Tensor
    labels: Tensor
    is_thing: Tensor

    def __len__(self) -> int:
        return int(self.yx.shape[0])

    def to(self, device: torch.device | str) -> PointSet:
        return PointSet(self.yx.to(device), self.labels.to(device), self.is_thing.to(device))


def check_points(
    points: list[PointSet], batch: int, num_classes: int, height: int, width: int, check_values: bool = True
) -> None:
    """Raise :class:`P2MInputError` naming the image and field when a point set is malformed.

    ``check_values=False`` checks shapes only (a value check waits for the device)."""
    if len(points) != batch:
        raise P2MInputError(f"points: got {len(points)} point sets for a batch of {batch} images")
    for b, p in enumerate(points):
        m = p.yx.shape[0] if p.yx.dim() == 2 else -1
        if p.yx.dim() != 2 or p.yx.shape[1] != 2:
            raise P2MInputError(f"points[{b}].yx: expected shape [m, 2], got {tuple(p.yx.shape)}")
        if tuple(p.labels.shape) != (m,) or tuple(p.is_thing.shape) != (m,):
            raise P2MInputError(
                f"points[{b}]: labels {tuple(p.labels.shape)} / is_thing {tuple(p.is_thing.shape)} "
                f"do not match yx {tuple(p.yx.shape)} (expected [{m}])"
            )
        if m == 0 or not check_values:
            continue
        y, x = p.yx[:, 0], p.yx[:, 1]
        if bool(((y < 0) | (y >= height) | (x < 0) | (x >= width)).any()):
            bad = p.yx[(y < 0) | (y >= height) | (x < 0) | (x >= width)][0].tolist()
            raise P2MInputError(f"points[{b}].yx: point {bad} outside the {height}x{width} mask grid")
        if bool(((p.labels < 0) | (p.labels >= num_classes)).any()):
            bad = p.labels[(p.labels < 0) | (p.labels >= num_classes)][0].item()
            raise P2MInputError(f"points[{b}].labels: class {bad} outside [0, {num_classes})")


def pad_points(points: list[PointSet], device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack point sets padded to the largest m: ``(yx [B, M, 2], labels [B, M], is_thing [B, M],
    mask [B, M])``; padded entries are (0, 0), class 0, stuff, mask False."""
    B = len(points)
    M = max((len(p) for p in points), default=0)
    yx = torch.zeros(B, M, 2, dtype=torch.long, device=device)
    labels = torch.zeros(B, M, dtype=torch.long, device=device)
    is_thing = torch.zeros(B, M, dtype=torch.bool, device=device)
    mask = torch.zeros(B, M, dtype=torch.bool, device=device)
    for b, p in enumerate(points):
        m = len(p)
        yx[b, :m] = p.yx.to(device=device, dtype=torch.long)
        labels[b, :m] = p.labels.to(device=device, dtype=torch.long)
        is_thing[b, :m] = p.is_thing.to(device=device, dtype=torch.bool)
        mask[b, :m] = True
    return yx, labels, is_thing, mask


def present_classes(labels: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """``[B, C]`` bool: the classes that have at least one point (padded points ignored)."""
    B = labels.shape[0]
    present = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, torch.where(mask, labels, num_classes), True)
    return present[:, :num_classes]


def dilation_at_mask(point_dilation: int, mask_stride: int) -> int:
    """The odd side (mask pixels) nearest to ``point_dilation / mask_stride``: the squares
    forced around the points are set in input pixels (reference: 17) and drawn on the mask grid."""
    side = point_dilation / mask_stride
    return max(1, int(2 * math.floor((side - 1) / 2 + 0.5) + 1))


def semantic_cost_map(logits: Tensor, points: list[PointSet], dilation: int = 17) -> Tensor:
    """The reference's cost-ready semantic map, ``[B, C, H, W]`` logits -> ``[B, C, H, W]``.

    .. math::

        P^s = \\max\\big(\\mathrm{softmax}_c(\\text{logits}) \\cdot \\mathbb{1}[c \\in
        \\text{classes of the image's points}],\\; \\text{onehot}_d\\big)

    Classes without a point in the image are zeroed (the image-level labels are known from the
    points), and each point's class is forced to 1 on a ``dilation x dilation`` square centred
    on the point (clipped at the border; docs/METHOD.md, "Task-oriented maps"; reference: 17). Both make the geodesic
    costs trust the labels: no path is cheap through a class the image does not contain, and
    the neighbourhood of a point is certain of its class.

    Parameters
    ----------
    logits : Tensor [B, C, H, W]
        Raw semantic logits at the mask resolution of the points.
    points : list of B PointSet
    dilation : int
        Odd side of the forced square; 1 forces the point's pixel only.
    """
    if logits.dim() != 4:
        raise P2MInputError(f"semantic_cost_map: logits must be [B, C, H, W], got {tuple(logits.shape)}")
    if dilation < 1 or dilation % 2 == 0:
        raise P2MInputError(f"pseudo.point_dilation must be a positive odd integer, got {dilation}")
    B, C, H, W = logits.shape
    check_points(points, B, C, H, W)
    yx, labels, _, mask = pad_points(points, logits.device)
    present = present_classes(labels, mask, C)
    probs = torch.softmax(logits.float(), dim=1) * present[:, :, None, None]
    if yx.shape[1]:
        return torch.maximum(probs, point_squares(yx, labels, mask, C, (H, W), dilation).to(probs.dtype))
    return probs


def point_squares(yx: Tensor, labels: Tensor, mask: Tensor, num_classes: int, size: tuple[int, int], dilation: int) -> Tensor:
    """``[B, C, H, W]`` float 0/1: 1 on the ``dilation x dilation`` square (clipped at the border)
    around every real point, in its class's channel. Each square is the outer product of a row
    band and a column band, and the channels sum them by a ``[C, M] x [M, H*W]`` product: what a
    ``dilation``-wide max pool of the point impulses gives, without its ``dilation^2`` work per
    pixel (the max pool took ~17 ms of the tiny network's step at 9x9 on 128x128 masks)."""
    B, M = labels.shape
    H, W = size
    r = dilation // 2
    rows = ((torch.arange(H, device=yx.device) - yx[..., :1]).abs() <= r) & mask[..., None]  # [B, M, H]
    cols = (torch.arange(W, device=yx.device) - yx[..., 1:]).abs() <= r  # [B, M, W]
    squares = (rows[..., None] & cols[..., None, :]).reshape(B, M, H * W).float()
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).float().transpose(1, 2)  # [B, C, M]
    return (torch.bmm(onehot, squares) > 0).reshape(B, num_classes, H, W).float()
