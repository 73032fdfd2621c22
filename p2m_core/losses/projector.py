r"""Contrastive loss of the manifold projector (the pairwise embedding term of the edge lengths).

The projector maps each pixel to an embedding ``e`` [D], L2-normalised. The prototypes of an image
are, as in the release, one per thing point (its optimal-transport mask) and one per stuff class
of the dataset (:func:`p2m_core.losses.segments.merge_stuff_segments`): the masked mean of the
embeddings over the pseudo mask, *not* re-normalised (a mask whose embeddings disagree gives a
shorter prototype, hence a softer logit), and the zero vector when the mask is empty (an absent
stuff class, a point whose mask owns no pixel of the grid). Each point's embedding is classified
among all prototypes ``mu_1 .. mu_{n_b}`` of its image:

.. math::

    \ell_p = -\log \frac{\exp(\langle e_p, \mu_{s(p)} \rangle / \tau)}{\sum_{k=1}^{n_b} \exp(\langle e_p, \mu_k \rangle / \tau)} ,
    \qquad \tau = 0.07 ,

``s(p)`` the segment of point ``p`` (every zero prototype adds ``exp(0) = 1`` to the denominator).
A point counts when its image has more than one prototype; the loss is the mean over the counted
points of each image, then the mean over the ``B`` images of the batch (release), an image
without counted points contributing 0:

.. math::

    L_{proj} = \frac{1}{B} \sum_b \frac{1}{\max(1, |P_b|)} \sum_{p \in P_b} \ell_p .

``B`` is shared by the data-parallel workers (:func:`p2m_core.losses.normalise.batch_count`).
Gradients reach both the point embeddings and the prototypes (nothing is detached). Deliberate
difference: the masks are the pseudo segments sampled at the embedding grid's cell centres (hard),
where the release resizes its input-resolution masks bilinearly (soft weights along mask edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count

TEMPERATURE = 0.07


def segment_prototypes(embeddings: Tensor, segments: Tensor, normalise: bool = True) -> tuple[Tensor, Tensor]:
    """Masked means of one image's embeddings per segment.

    Parameters
    ----------
    embeddings : Tensor [D, H, W]
    segments : Tensor [H, W] long
        Segment id per pixel, -1 void (ignored).
    normalise : bool
        Scale each mean to unit length (the loss itself uses the plain means, as the release).

    Returns
    -------
    ids : Tensor [S] long
        The segment ids present, ascending.
    prototypes : Tensor [S, D]
        Mean embedding of each (unit norm with ``normalise``).
    """
    D = embeddings.shape[0]
    flat = embeddings.reshape(D, -1).T
    seg = segments.reshape(-1)
    keep = seg >= 0
    ids, slot, counts = torch.unique(seg[keep], return_inverse=True, return_counts=True)
    sums = flat.new_zeros(ids.numel(), D).index_add_(0, slot, flat[keep])
    if normalise:
        return ids, F.normalize(sums, dim=1)
    return ids, sums / counts[:, None].to(sums.dtype)


def projector_contrastive_loss(
    embeddings: Tensor,
    segments: Tensor,
    points_yx: Sequence[Tensor],
    point_segments: Sequence[Tensor],
    temperature: float = TEMPERATURE,
    num_prototypes: Sequence[int] | None = None,
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
        The segment id of each point (its own mask; -1: the point is skipped).
    num_prototypes : sequence of B int, optional
        ``n_b``, the prototypes of each image (release: its thing points plus the dataset's stuff
        classes); those beyond the segments present in ``segments[b]`` are zero vectors, and a
        point whose segment is absent has a zero prototype. Without it, ``n_b`` is the number of
        segments present and points whose segment is absent are skipped.

    Returns
    -------
    Scalar tensor; 0 (connected to ``embeddings``) when no point counts.
    """
    if embeddings.dim() != 4 or segments.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise P2MInputError(
            f"projector_contrastive_loss: embeddings [B, D, H, W] and segments [B, H, W] expected, got "
            f"{list(embeddings.shape)} and {list(segments.shape)}"
        )
    B = embeddings.shape[0]
    if not len(points_yx) == len(point_segments) == B or (num_prototypes is not None and len(num_prototypes) != B):
        raise P2MInputError("projector_contrastive_loss: one point set, segment set (and prototype count) per image expected")
    unit = F.normalize(embeddings, dim=1)
    total = unit.sum() * 0.0
    for b, (yx, own) in enumerate(zip(points_yx, point_segments, strict=True)):
        ids, prototypes = segment_prototypes(unit[b], segments[b], normalise=False)
        own = own.to(ids.device).long()
        match = own[:, None] == ids[None, :]  # [m, S]
        if num_prototypes is None:
            n, counted = ids.numel(), match.any(dim=1)
        else:
            n, counted = int(num_prototypes[b]), own >= 0
        zeros = n - ids.numel()
        if zeros < 0:
            raise P2MInputError(f"projector_contrastive_loss: image {b} has {ids.numel()} segments but {n} prototypes")
        if n <= 1 or not bool(counted.any()):
            continue
        match = match[counted]
        if zeros == 0 and not bool(match.any(dim=1).all()):
            raise P2MInputError(f"projector_contrastive_loss: image {b}: a point's segment is absent and no prototype is zero")
        yx = yx.to(ids.device).long()[counted]
        queries = unit[b][:, yx[:, 0], yx[:, 1]].T  # [m', D]
        logits = queries @ prototypes.T / temperature  # [m', S]
        positive = (logits * match).sum(dim=1)  # 0 where the point's prototype is a zero vector
        if zeros:
            logits = torch.cat([logits, logits.new_full((logits.shape[0], 1), math.log(zeros))], dim=1)
        total = total + (torch.logsumexp(logits, dim=1) - positive).mean()
    return total / batch_count(B, unit.device).to(total.dtype)
