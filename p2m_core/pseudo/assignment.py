"""Step 5 of :mod:`~p2m_core.pseudo.labels` for the OT assignments: which pixels enter the
transport problem and which solver solves it, as ``pseudo.assignment``, ``pseudo.sinkhorn_*``
and ``pseudo.ot_pixels`` ask.

The paper's plan holds only the transported pixels (stuff pixels never enter it); the release's
holds every pixel, the stuff pixels with demand 0. Gathering the transported pixels first makes
the solver work on their count instead of the whole image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.config import PseudoConfig
from p2m_core.pseudo.transport import SinkhornLog, exact, sinkhorn


def transport_labels(
    cfg: PseudoConfig, cost: Tensor, k: Tensor, demand: Tensor, tmask: Tensor, transported: Tensor, all_pixels: bool
) -> tuple[Tensor, SinkhornLog]:
    """Transport with supplies k and the pixels of ``demand`` as consumers, as ``[B, N]`` labels
    (-1 outside ``transported``) and the solver's :class:`SinkhornLog`.

    ``assignment="ot_exact"`` solves the unregularised problem (every point gets exactly k_i
    pixels); ``"ot"`` the entropic one in ``cfg.sinkhorn_mode``. With ``ot_pixels="transported"``
    (and not ``all_pixels``) only the pixels of ``demand`` enter the problem. Otherwise, as in
    the release, every pixel is a consumer with demand ``demand`` (1 or 0; Sinkhorn gives a
    zero-demand pixel a mass of 1e-8, as the reference does).
    """
    B, T, N = cost.shape
    unregularised = cfg.assignment == "ot_exact" and not all_pixels
    if all_pixels or cfg.ot_pixels == "all":
        cols = torch.arange(N, device=cost.device).expand(B, N)
        col_mask = torch.ones(B, N, dtype=torch.bool, device=cost.device)
        sub_cost, weights = cost, demand.float()
    else:
        cols, col_mask = _transported_columns(demand)
        sub_cost, weights = cost.gather(2, cols[:, None, :].expand(B, T, cols.shape[1])), col_mask.float()
    if unregularised:
        result = exact(sub_cost, k, tmask, col_mask & (weights > 0))
    else:
        result = sinkhorn(
            sub_cost, k.float(), weights, mode=cfg.sinkhorn_mode, epsilon=cfg.sinkhorn_epsilon,
            num_iters=cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol, max_iters=cfg.sinkhorn_max_iters,
            point_mask=tmask, pixel_mask=col_mask,
        )
    assigned = torch.full((B, N + 1), -1, dtype=torch.long, device=cost.device)
    assigned = assigned.scatter(1, torch.where(col_mask, cols, N), result.labels)[:, :N]
    return torch.where(transported, assigned, -1), result.log


def _transported_columns(transported: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices of each image's transported pixels, first, padded to the largest count.

    ``transported [B, N]`` -> ``(cols [B, n_max] long, mask [B, n_max] bool)``. Sinkhorn then
    works on ``n_max`` columns instead of N (stuff pixels never enter the plan).
    """
    B = transported.shape[0]
    n_max = int(transported.sum(1).max()) if B else 0
    order = torch.sort((~transported).to(torch.uint8), dim=1, stable=True).indices[:, :n_max]
    mask = torch.arange(n_max, device=transported.device)[None] < transported.sum(1, keepdim=True)
    return order, mask
