r"""Contrastive loss of the manifold projector (the pairwise embedding term of the edge lengths).

The projector maps each pixel to an embedding ``e`` [D], L2-normalised. Prototypes are masked
means of the embeddings over the pseudo masks of the image (things: one per optimal-transport
mask; stuff: one per class, :func:`p2m_core.losses.segments.merge_stuff_segments`), L2-normalised
again. Each point's embedding is classified among all prototypes of its image:

.. math::

    L_{proj} = \frac{1}{|P|} \sum_{p \in P}
        -\log \frac{\exp(\langle e_p, \mu_{s(p)} \rangle / \tau)}{\sum_k \exp(\langle e_p, \mu_k \rangle / \tau)} ,
    \qquad \tau = 0.07 ,

``s(p)`` the segment of point ``p``; the mean runs over the points of the batch whose segment has
pixels. Gradients reach both the point embeddings and the prototypes (nothing is detached).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count

TEMPERATURE = 0.07


def segment_prototypes(embeddings: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised masked means of one image's embeddings per segment.

    Parameters
    ----------
    embeddings : Tensor [D, H, W]
    segments : Tensor [H, W] long
        Segment id per pixel, -1 void (ignored).

    Returns
    -------
    ids : Tensor [S] long
        The segment ids present, ascending.
    prototypes : Tensor [S, D]
        Unit-norm mean embedding of each.
    """
    D = embeddings.shape[0]
    flat = embeddings.reshape(D, -1).T
    seg = segments.reshape(-1)
    keep = seg >= 0
    ids, slot = torch.unique(seg[keep], return_inverse=True)
    sums = flat.new_zeros(ids.numel(), D).index_add_(0, slot, flat[keep])
    return ids, F.normalize(sums, dim=1)


def projector_contrastive_loss(
    embeddings: Tensor,
    segments: Tensor,
    points_yx: Sequence[Tensor],
    point_segments: Sequence[Tensor],
    temperature: float = TEMPERATURE,
) -> Tensor:
    """``L_proj`` (module doc).

    Parameters
    ----------
    embeddings : Tensor [B, D, H, W]
        Projector output (normalised here along D; normalising twice changes nothing).
    segments : Tensor [B, H, W] long
        Pseudo segment per pixel at the embeddings' resolution, -1 void.
    points_yx : sequence of B Tensors [m_b, 2] long
        Point positions ``(y, x)`` at the embeddings' resolution.
    point_segments : sequence of B Tensors [m_b] long
        The segment id of each point (its own mask; -1 or an absent id: the point is skipped).

    Returns
    -------
    Scalar tensor; 0 (connected to ``embeddings``) when no point counts.
    """
    if embeddings.dim() != 4 or segments.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise P2MInputError(
            f"projector_contrastive_loss: embeddings [B, D, H, W] and segments [B, H, W] expected, got "
            f"{list(embeddings.shape)} and {list(segments.shape)}"
        )
    if not len(points_yx) == len(point_segments) == embeddings.shape[0]:
        raise P2MInputError("projector_contrastive_loss: one point set and one segment set per image expected")
    unit = F.normalize(embeddings, dim=1)
    total, count = unit.sum() * 0.0, 0
    for b, (yx, own) in enumerate(zip(points_yx, point_segments, strict=True)):
        ids, prototypes = segment_prototypes(unit[b], segments[b])
        if ids.numel() == 0 or own.numel() == 0:
            continue
        match = own.to(ids.device)[:, None] == ids[None, :]  # [m, S]
        counted = match.any(dim=1)
        if not bool(counted.any()):
            continue
        yx = yx.to(ids.device).long()[counted]
        queries = unit[b][:, yx[:, 0], yx[:, 1]].T  # [m', D]
        logits = queries @ prototypes.T / temperature
        total = total + F.cross_entropy(logits, match[counted].to(torch.uint8).argmax(dim=1), reduction="sum")
        count += int(counted.sum())
    return total / batch_count(count, unit.device).to(total.dtype)
