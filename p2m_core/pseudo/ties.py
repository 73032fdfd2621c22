"""The tie rule of every decode in the pipeline: exact ties go to the lowest index.

Equal costs are common, not rare: a flat region of ``P^s`` has zero-length edges, and two points
can share a coarse node. Breaking every such tie the same way (the lowest supplier index, or the
lowest class index) makes a result depend on the order of the points only where costs are
exactly equal. The solvers (:mod:`~p2m_core.pseudo.sinkhorn_reference`,
:mod:`~p2m_core.pseudo.newton`), the minimum-cost decode (:mod:`~p2m_core.pseudo.min_cost`) and
the pixel roles (:mod:`~p2m_core.pseudo.roles`) all decode through these two functions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def argmax_lowest(scores: Tensor) -> Tensor:
    """``argmax`` over dim 1 of ``[B, M, N]``, exact ties to the lowest index -> ``[B, N]`` long.

    Same result as ``torch.argmax(scores, 1)`` (which documents the first maximal index) but
    ~40x faster on CPUs for a small middle dimension, where torch's strided arg-reduction is
    slow. All -inf columns give 0; callers mask them.
    """
    return _first_index_of(scores, scores.amax(1, keepdim=True) if scores.shape[1] else None)


def argmin_lowest(scores: Tensor) -> Tensor:
    """``argmin`` over dim 1, exact ties to the lowest index (see :func:`argmax_lowest`)."""
    return _first_index_of(scores, scores.amin(1, keepdim=True) if scores.shape[1] else None)


def _first_index_of(scores: Tensor, best: Tensor | None) -> Tensor:
    """Lowest index i with ``scores[:, i] == best`` over dim 1 (0 where there is none)."""
    B, M, N = scores.shape
    if best is None:
        return torch.zeros(B, N, dtype=torch.long, device=scores.device)
    rank = torch.arange(M, 0, -1, dtype=torch.int32, device=scores.device)[None, :, None]  # M..1
    hit = torch.where(scores == best, rank, 0).amax(1)
    return (M - hit).long().clamp_(0, M - 1)
