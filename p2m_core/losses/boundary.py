r"""High-level boundary loss (paper Eq. 6-7, with the release's pair rules).

At input resolution every pixel ``p`` is paired with its 8 neighbours ``q``; the predicted
boundary probabilities ``b`` give the affinity

.. math::

    A_{pq} = 1 - \max(b_p, b_q) .

Pairs are sorted by the pseudo panoptic map (segment per pixel, -1 void; stuff segments are one
per class, :func:`p2m_core.losses.segments.merge_stuff_segments`):

* positive thing pair: same segment, a thing;
* positive stuff pair: same segment, a stuff class;
* negative pair: different thing membership (one pixel in a thing segment, the other not: a stuff
  *or void* pixel), or two different segments, both known.

Two void pixels, and a stuff pixel next to a void one, give no pair. Per image,

.. math::

    L_{pos} = \tfrac12\,\mathrm{mean}_{thing}\big(-\log(A + 10^{-5})\big)
            + \tfrac12\,\mathrm{mean}_{stuff}\big(-\log(A + 10^{-5})\big), \qquad
    L_{neg} = \mathrm{mean}\big(-\log(1 + 10^{-5} - A)\big),

    L_{bou} = (L_{pos} + L_{neg}) / 2 ,

and the batch loss is the mean over images. A mean over an empty set of pairs is 0 (its half
weight is not moved to the other term). Each unordered pair is counted once (the terms are
symmetric, so the means equal those over both orders).
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import pair_slices

HALF_NEIGHBOURS: tuple[tuple[int, int], ...] = ((0, 1), (1, -1), (1, 0), (1, 1))
"""One offset of each opposite pair of the 8-neighbourhood."""


def boundary_loss(
    boundary: Tensor, segments: Tensor, segment_is_thing: Tensor, valid: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """``L_bou`` (module doc), mean over the batch.

    Parameters
    ----------
    boundary : Tensor [B, H, W]
        Boundary probabilities in [0, 1] (after the sigmoid).
    segments : Tensor [B, H, W] long
        Segment id per pixel, -1 void.
    segment_is_thing : Tensor [B, S] bool
        ``segment_is_thing[b, j]``: segment ``j`` of image ``b`` is a thing (``S`` > every id).
    valid : Tensor [B, H, W] bool, optional
        Pixels inside the image; pairs touching padding are dropped.
    """
    if boundary.dim() != 3 or segments.shape != boundary.shape or segment_is_thing.dim() != 2:
        raise P2MInputError(
            f"boundary_loss: boundary and segments [B, H, W], segment_is_thing [B, S] expected, got "
            f"{list(boundary.shape)}, {list(segments.shape)}, {list(segment_is_thing.shape)}"
        )
    B, H, W = boundary.shape
    if segments.numel() and int(segments.max()) >= segment_is_thing.shape[1]:
        raise P2MInputError(f"boundary_loss: segment id {int(segments.max())} but segment_is_thing has {segment_is_thing.shape[1]}")
    known = segments >= 0
    thing = known & segment_is_thing.gather(1, segments.clamp(min=0).flatten(1)).view_as(segments)
    inside = torch.ones_like(known) if valid is None else valid
    zero = boundary.new_zeros(B)
    sums = {"thing": zero, "stuff": zero, "neg": zero}
    counts = dict(sums)
    for dy, dx in HALF_NEIGHBOURS:
        (py, px), (qy, qx) = pair_slices(dy, dx, H, W)
        seg_p, seg_q = segments[:, py, px], segments[:, qy, qx]
        thing_p, thing_q = thing[:, py, px], thing[:, qy, qx]
        both = inside[:, py, px] & inside[:, qy, qx]
        same = both & known[:, py, px] & (seg_p == seg_q)
        kinds = {
            "thing": same & thing_p,
            "stuff": same & ~thing_p,
            "neg": both & (seg_p != seg_q) & ((known[:, py, px] & known[:, qy, qx]) | (thing_p != thing_q)),
        }
        top = torch.maximum(boundary[:, py, px], boundary[:, qy, qx])  # = 1 - A
        pull = -torch.log(1 - top + eps)
        push = -torch.log(top + eps)
        for name, chosen in kinds.items():
            values = push if name == "neg" else pull
            sums[name] = sums[name] + (values * chosen).sum(dim=(1, 2))
            counts[name] = counts[name] + chosen.sum(dim=(1, 2))
    mean = {name: sums[name] / counts[name].clamp(min=1) for name in sums}
    per_image = (0.5 * mean["thing"] + 0.5 * mean["stuff"] + mean["neg"]) / 2
    return per_image.mean() if B else boundary.sum() * 0.0
