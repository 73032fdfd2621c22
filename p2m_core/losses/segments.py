"""Segment maps for the boundary and projector losses, from the pseudo labels' point-owner map.

The pseudo labels give, per pixel, the index of the point that owns it (-1: none). Things are one
segment per point (its optimal-transport mask); stuff is one segment per *class*: every stuff
point of a class is merged into the lowest-index stuff point of that class, which then names the
segment. The result uses point indices as segment ids, so ``segment_is_thing`` is indexed like the
points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError


def merge_stuff_segments(
    owner: Tensor, point_labels: Tensor, point_is_thing: Tensor, point_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Merge the stuff points of each class into one segment.

    Parameters
    ----------
    owner : Tensor [B, H, W] long
        Index of the owning point per pixel, -1 for none.
    point_labels : Tensor [B, M] long
        Class of each (padded) point.
    point_is_thing : Tensor [B, M] bool
    point_mask : Tensor [B, M] bool, optional
        Real (True) versus padded points; all real when omitted.

    Returns
    -------
    segments : Tensor [B, H, W] long
        ``owner`` with every stuff point replaced by the first stuff point of its class; -1 kept.
    segment_is_thing : Tensor [B, M] bool
        Whether segment id ``j`` (a point index) is a thing.
    """
    if point_labels.shape != point_is_thing.shape or point_labels.dim() != 2 or owner.dim() != 3:
        raise P2MInputError(
            f"merge_stuff_segments: owner [B, H, W], labels and is_thing [B, M] expected, got "
            f"{list(owner.shape)}, {list(point_labels.shape)}, {list(point_is_thing.shape)}"
        )
    real = torch.ones_like(point_is_thing) if point_mask is None else point_mask
    representative = stuff_representatives(point_labels, point_is_thing, real)
    segments = torch.where(owner >= 0, representative.gather(1, owner.clamp(min=0).flatten(1)).view_as(owner), owner)
    return segments, point_is_thing & real


def stuff_representatives(point_labels: Tensor, point_is_thing: Tensor, point_mask: Tensor) -> Tensor:
    """The merged segment id of every point, ``[B, M]`` long: the first stuff point of its class
    for a stuff point, the point itself otherwise (padded points included)."""
    stuff = point_mask & ~point_is_thing
    same = (point_labels[:, :, None] == point_labels[:, None, :]) & stuff[:, :, None] & stuff[:, None, :]  # [B, M, M]
    first = same.to(torch.uint8).argmax(dim=2)  # lowest stuff point of the same class (itself if none)
    index = torch.arange(point_labels.shape[1], device=point_labels.device).expand_as(first)
    return torch.where(stuff, first, index)
