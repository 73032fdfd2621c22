"""The minimum-cost rules that rank the pixels among the points, and what counts their result.

Three rules rank a pixel's candidate points, each breaking exact ties to the lowest index
(:mod:`~p2m_core.pseudo.ties`): the minimum cost (:func:`batch_argmin_labels`, the paper's MC
assignment and its capacities), the release's ``argmax_i (1 - d_ij) * L_ij`` with distances
divided by their maximum (:func:`batch_likelihood_labels`, :func:`normalise_costs`,
:func:`class_likelihood`), and the reference's PSPS decode (:func:`mc_labels`). Every rule can
first give each point its own pixel (:func:`force_own_pixels`). The capacities
(:mod:`~p2m_core.pseudo.capacities`) count these labels (:func:`count_labels`), and the pipeline
reports how far OT's labels are from them.

All functions work on [B, M, ...] tensors padded to the largest point count, with ``point_mask
[B, M]`` and ``pixel_mask [B, N]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.pseudo.ties import argmax_lowest, argmin_lowest


def batch_argmin_labels(
    cost: Tensor, point_mask: Tensor, pixel_mask: Tensor, own_pixels: Tensor | None = None
) -> Tensor:
    """Minimum-cost point per pixel, [B, M, N] -> [B, N] long (-1 outside ``pixel_mask``).

    ``own_pixels [B, M]`` long (flat pixel index of each point, -1 for none) forces a point's
    own pixel to that point; where several points share a pixel the lowest index wins. Padded
    points (``point_mask`` False) never win. Ties in cost go to the lowest index.
    """
    B, M, N = cost.shape
    if M == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=cost.device)
    masked = torch.where(point_mask[:, :, None], cost.float(), torch.inf)
    masked = torch.nan_to_num(masked, nan=torch.inf)
    labels = argmin_lowest(masked)
    labels = torch.where(pixel_mask & point_mask.any(1, keepdim=True), labels, -1)
    if own_pixels is not None:
        labels = force_own_pixels(labels, own_pixels, point_mask, pixel_mask)
    return labels


def force_own_pixels(labels: Tensor, own_pixels: Tensor, point_mask: Tensor, pixel_mask: Tensor) -> Tensor:
    """Give each point its own pixel, [B, N] -> [B, N]; shared pixels go to the lowest index.

    Only pixels inside ``pixel_mask`` are forced (a point whose pixel is not transported keeps
    nothing here). ``own_pixels [B, M]`` holds flat indices, -1 for none.
    """
    B, M = own_pixels.shape
    N = labels.shape[1]
    ok = point_mask & (own_pixels >= 0)
    idx = torch.where(ok, own_pixels, N)  # N: a dump slot past the end
    big = torch.full((B, N + 1), M, dtype=torch.long, device=labels.device)
    index = torch.arange(M, device=labels.device).expand(B, M)
    winner = big.scatter_reduce(1, idx, index, reduce="amin", include_self=True)[:, :N]
    return torch.where((winner < M) & pixel_mask, winner, labels)


def batch_likelihood_labels(
    dist: Tensor, likelihood: Tensor, point_mask: Tensor, pixel_mask: Tensor, own_pixels: Tensor | None = None
) -> Tensor:
    """The release's ranking: ``argmax_i (1 - dist_i) * likelihood_i`` per pixel, [B, M, N] -> [B, N].

    ``dist`` are distances already divided by a maximum (so ``1 - dist`` is a distance
    likelihood in [0, 1]) and ``likelihood`` the class likelihood of each point at each pixel.
    Pixels outside ``pixel_mask`` get -1; padded points never win; ties go to the lowest index
    (``torch.argmax``); ``own_pixels`` as in :func:`batch_argmin_labels`.
    """
    score = (1 - dist) * likelihood
    score = torch.where(point_mask[:, :, None] & pixel_mask[:, None, :], score, -torch.inf)
    B, M, N = score.shape
    if M == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=score.device)
    labels = torch.where(pixel_mask & point_mask.any(1, keepdim=True), argmax_lowest(score), -1)
    if own_pixels is not None:
        labels = force_own_pixels(labels, own_pixels, point_mask, pixel_mask)
    return labels


def normalise_costs(cost: Tensor, point_mask: Tensor) -> Tensor:
    """``cost / (max + 1e-5)`` with the maximum over each image's real points and every pixel,
    [B, M, ...] -> same shape, float32 (the release's normalisation; the 1e-5 keeps an all-zero
    map finite)."""
    B = cost.shape[0]
    real = point_mask.reshape(B, -1, *([1] * (cost.dim() - 2)))
    peak = torch.where(real, cost.float(), -torch.inf).flatten(1).amax(1) if cost[0].numel() else cost.new_zeros(B)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    return cost.float() / (peak + 1e-5).reshape(B, *([1] * (cost.dim() - 1)))


def count_labels(labels: Tensor, num_points: int) -> Tensor:
    """Pixels per point, [B, N] long (-1 ignored) -> [B, M] long."""
    B = labels.shape[0]
    counts = torch.zeros(B, num_points + 1, dtype=torch.long, device=labels.device)
    idx = torch.where(labels >= 0, labels, num_points)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    return counts[:, :num_points]


def mc_labels(
    cost: Tensor, sem: Tensor, t_labels: Tensor, tmask: Tensor, transported: Tensor, t_own: Tensor | None,
    decode: str,
) -> Tensor:
    """The MC labels: the supplier of each transported pixel by ``decode`` (``pseudo.mc_decode``),
    [B, T, N] -> [B, N] (-1 elsewhere).

    ``"argmin"``: the minimum cost. ``"psps"``: the reference's PSPS decode, ``argmax_i (1 -
    c_ij / max c) * P^s(class_i, j)`` with the maximum over the image's transported pixels and
    real suppliers. ``t_own`` forces each supplier's own pixel to it (:func:`force_own_pixels`).
    """
    if decode == "argmin":
        return batch_argmin_labels(cost, tmask, transported, t_own)
    # PSPS: distance likelihood (1 - c / max c) times the class likelihood P^s(class_i, j).
    B, T, N = cost.shape
    valid = tmask[:, :, None] & transported[:, None, :]
    cmax = torch.where(valid, cost, 0.0).flatten(1).amax(1) if T * N else cost.new_ones(B)
    cmax = torch.where(cmax > 0, cmax, 1.0)
    likelihood = sem.float().reshape(B, sem.shape[1], N).gather(1, t_labels[..., None].expand(B, T, N))
    return batch_likelihood_labels(cost / cmax[:, None, None], likelihood, tmask, transported, t_own)


def class_likelihood(sem: Tensor, t_labels: Tensor, stuff_classes: Tensor) -> Tensor:
    """The release's class likelihood of each thing point, ``[B, T, N]``:
    ``L_i = P^s(class_i) + S`` with ``S`` the sum of ``P^s`` over the image's stuff classes
    (those with a stuff point), added one channel at a time in channel order. Where a point's
    class is likely or the pixel looks like stuff the point may take it; the fixed order of the
    float32 sum makes the result reproducible."""
    B, C = sem.shape[:2]
    flat = sem.float().reshape(B, C, -1)
    stuff_sum = flat.new_zeros(B, flat.shape[2])
    for c in stuff_classes.any(0).nonzero().flatten().tolist():
        stuff_sum = stuff_sum + torch.where(stuff_classes[:, c, None], flat[:, c], 0.0)
    own_class = flat.gather(1, t_labels[..., None].expand(*t_labels.shape, flat.shape[2]))
    return own_class + stuff_sum[:, None]
