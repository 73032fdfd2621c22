"""Supplier capacities k: how many pixels each thing point may take (paper Sec. 3.3.3, Table 5).

Every scheme returns integer ``k`` (long) that sums exactly to the number of transported pixels
``N``, so the transport problem is balanced (``sum_i x_i = sum_j y_j`` with ``y_j = 1``):

``equal_division``
    The paper's baseline: every thing point gets ``N / M`` (the reference code lacks it). The
    remainder ``N mod M`` goes one pixel each to the first points of ``order`` (by default the
    point index; the pipeline passes the raster order of the points so k does not depend on the
    order in which the points are listed).
``nearest_point``
    ``k_i = #{j : argmin_l c_lj = i}``: the size of each point's minimum-cost region.
``nearest_centroid`` (the paper's choice)
    Minimum-cost regions as above; each region's centroid replaces its point (the point is kept
    when the rounded centroid falls outside the region, as in the reference, or the region is
    empty); costs are recomputed from the centroids by ``distance_fn`` and ``k_i`` counts the
    pixels whose minimum-cost centroid is i. ``iters`` repeats the re-centring from the refined
    regions (Table 6); ``iters = 0`` is ``nearest_point``.

Zero capacities. Two points can share a region (same pixel, or the same node of a coarse graph),
and then a minimum-cost count gives one of them nothing. Every point keeps its own pixel in the
final masks, so the region counts here take the same rule: when ``own_pixels`` is given, each
point's own pixel is counted for that point before the argmin regions are counted. Then k_i >= 1
for every point whose pixel is transported and not shared with a lower-index point.

Batched forms (``batch_*``) work on [B, M, ...] padded tensors with ``point_mask [B, M]`` and are
what :func:`p2m_core.pseudo.labels.generate_pseudo_labels` uses; the single-image functions of the
module contract wrap them with B = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.semidual import argmax_lowest, argmin_lowest



# ----------------------------------------------------------------------------- equal division
def equal_division(num_pixels: int, num_points: int, order: Tensor | None = None) -> Tensor:
    """``k_i = floor(N / M) + [rank_i < N mod M]``: equal shares summing exactly to N.

    Parameters
    ----------
    num_pixels : int
        ``N``, the number of transported pixels.
    num_points : int
        ``M``, the number of thing points (suppliers).
    order : Tensor [M] long, optional
        A permutation of ``range(M)``: the remainder goes to ``order[0], order[1], ...``.
        Default: point index order.

    Returns
    -------
    Tensor [M] long, summing to N, any two entries differing by at most 1.
    """
    N, M = int(num_pixels), int(num_points)
    if N < 0 or M < 0:
        raise P2MInputError(f"equal_division: negative num_pixels={N} or num_points={M}")
    if M == 0 and N:
        raise P2MInputError(f"equal_division: {N} pixels to share among 0 points")
    device = order.device if order is not None else None
    ranks = torch.arange(M, device=device)
    if order is not None:
        ranks = torch.empty_like(ranks).scatter_(0, order.long(), torch.arange(M, device=device))
    pm = torch.ones(1, M, dtype=torch.bool, device=device)
    return batch_equal_division(torch.tensor([N], device=device), pm, ranks[None])[0]


def batch_equal_division(num_pixels: Tensor, point_mask: Tensor, order_key: Tensor) -> Tensor:
    """:func:`equal_division` for a batch: ``num_pixels [B]``, ``point_mask [B, M]``,
    ``order_key [B, M]`` -> k ``[B, M]`` long (0 on padded points).

    The remainder goes to the real points with the smallest ``order_key`` (ties: lowest index).
    """
    B, M = point_mask.shape
    n_points = point_mask.sum(1)
    N = num_pixels.long().to(point_mask.device)
    base = torch.where(n_points > 0, N // n_points.clamp_min(1), 0)
    rem = torch.where(n_points > 0, N - base * n_points, 0)
    key = torch.where(point_mask, order_key.long(), torch.iinfo(torch.long).max)
    order = torch.sort(key, dim=1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(M, device=order.device).expand(B, M))
    k = base[:, None] + (ranks < rem[:, None]).long()
    return torch.where(point_mask, k, 0)


# ----------------------------------------------------------------------------- nearest point
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


def nearest_point(cost: Tensor, pixel_mask: Tensor, own_pixels: Tensor | None = None) -> Tensor:
    """``k_i = #{j in pixel_mask : argmin_l C_lj = i}`` for one image.

    Parameters
    ----------
    cost : Tensor [M, N] (or [M, h, w])
        Cost of each point to each pixel.
    pixel_mask : Tensor [N] (or [h, w]) bool
        The transported pixels.
    own_pixels : Tensor [M] long, optional
        Flat pixel index of each point: its own pixel counts for it (module docstring).

    Returns
    -------
    Tensor [M] long summing to ``pixel_mask.sum()`` (when M > 0).
    """
    M = cost.shape[0]
    cost = cost.reshape(1, M, -1)
    pm = torch.ones(1, M, dtype=torch.bool, device=cost.device)
    own = None if own_pixels is None else own_pixels.reshape(1, M)
    labels = batch_argmin_labels(cost, pm, pixel_mask.reshape(1, -1).bool(), own)
    return count_labels(labels, M)[0]


# ----------------------------------------------------------------------------- centroids
def batch_mask_centroids(labels: Tensor, points_yx: Tensor, point_mask: Tensor) -> Tensor:
    """Rounded centroid of each point's region, falling back to the point, batched.

    ``labels [B, h, w]`` long (point index, -1 for none), ``points_yx [B, M, 2]`` long,
    ``point_mask [B, M]`` -> ``[B, M, 2]`` long. The centroid ``round(mean of the region's
    (y, x))`` replaces the point unless the region is empty or the centroid pixel is not in the
    region (a C-shaped or split region): then the point itself is kept (reference behaviour).
    """
    B, h, w = labels.shape
    M = points_yx.shape[1]
    dev = labels.device
    flat = labels.reshape(B, -1)
    count, sum_y, sum_x = _region_sums(flat, M, h, w)
    safe = count.clamp_min(1)
    # round half up, deterministic (torch.round is half-to-even)
    cy = torch.floor(sum_y / safe + 0.5).long().clamp(0, h - 1)
    cx = torch.floor(sum_x / safe + 0.5).long().clamp(0, w - 1)
    inside = flat.gather(1, cy * w + cx) == torch.arange(M, device=dev)
    use = (count > 0) & inside & point_mask
    centroids = torch.stack([cy, cx], dim=-1)
    return torch.where(use[..., None], centroids, points_yx.long())


def batch_release_centroids(labels: Tensor, points_yx: Tensor, point_mask: Tensor, factor: int) -> Tensor:
    """The release's centroid rule, batched: ``labels [B, h, w]`` -> sources ``[B, M, 2]`` long.

    Each region's centre of mass is truncated to integers (not rounded), and it replaces the
    point only when the region contains both that pixel and the top-left corner of the point's
    ``factor x factor`` graph cell (``(y // factor) * factor``, same for x); otherwise, or for an
    empty region, the point is kept. The corner test is the release's, which checks the point's
    cell at graph resolution rather than the point's own pixel.
    """
    B, h, w = labels.shape
    M = points_yx.shape[1]
    dev = labels.device
    flat = labels.reshape(B, -1)
    count, sum_y, sum_x = _region_sums(flat, M, h, w)
    cy = torch.floor(sum_y / count.clamp_min(1)).long().clamp(0, h - 1)
    cx = torch.floor(sum_x / count.clamp_min(1)).long().clamp(0, w - 1)
    corner = (points_yx.long() // factor) * factor
    own = torch.arange(M, device=dev)
    at_centre = flat.gather(1, cy * w + cx) == own
    at_corner = flat.gather(1, corner[..., 0].clamp(0, h - 1) * w + corner[..., 1].clamp(0, w - 1)) == own
    use = (count > 0) & at_centre & at_corner & point_mask
    return torch.where(use[..., None], torch.stack([cy, cx], dim=-1), points_yx.long())


def _region_sums(flat: Tensor, M: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel count and sums of y and x of each region of ``flat [B, h*w]`` (float64, exact)."""
    B = flat.shape[0]
    dev = flat.device
    idx = torch.where(flat >= 0, flat, M)
    ys = torch.arange(h, device=dev, dtype=torch.float64).repeat_interleave(w).expand(B, -1)
    xs = torch.arange(w, device=dev, dtype=torch.float64).repeat(h).expand(B, -1)
    zeros = torch.zeros(B, M + 1, dtype=torch.float64, device=dev)
    count = zeros.scatter_add(1, idx, torch.ones_like(ys))[:, :M]
    return count, zeros.scatter_add(1, idx, ys)[:, :M], zeros.scatter_add(1, idx, xs)[:, :M]


def mask_centroids(labels: Tensor, points_yx: Tensor) -> Tensor:
    """Centroid of each point's region in ``labels [h, w]`` (long, -1 none), [M, 2] -> [M, 2].

    Falls back to the point when the region is empty or its rounded centroid lies outside it
    (:func:`batch_mask_centroids`).
    """
    M = points_yx.shape[0]
    pm = torch.ones(1, M, dtype=torch.bool, device=labels.device)
    return batch_mask_centroids(labels[None], points_yx.reshape(1, M, 2), pm)[0]


def batch_nearest_centroid(
    cost: Tensor,
    points_yx: Tensor,
    point_mask: Tensor,
    pixel_mask: Tensor,
    distance_fn: Callable[[Tensor], Tensor],
    iters: int = 1,
    own_pixels: Tensor | None = None,
    label_fn: Callable[[Tensor], Tensor] | None = None,
    centroid_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Centroid capacities for a batch: ``cost [B, M, h, w]`` -> k ``[B, M]`` long.

    ``distance_fn(centroids [B, M, 2] long) -> [B, M, h, w]`` gives the costs from the
    centroids (the pipeline: geodesic distances on the coarse graph, upsampled). ``pixel_mask
    [B, h, w]`` are the transported pixels, ``own_pixels [B, M]`` as in :func:`nearest_point`.
    See the module docstring for the scheme. Two steps can be swapped for the release's:
    ``label_fn(dist [B, M, h*w]) -> labels [B, h*w]`` ranks the pixels (default: minimum cost
    within ``pixel_mask``, own pixels forced) and ``centroid_fn(labels [B, h, w], points_yx,
    point_mask) -> [B, M, 2]`` picks the new sources (default :func:`batch_mask_centroids`).
    """
    if iters < 0:
        raise P2MInputError(f"pseudo.centroid_iters must be >= 0, got {iters}")
    B, M, h, w = cost.shape
    pix = pixel_mask.reshape(B, -1).bool()
    if label_fn is None:
        def label_fn(dist: Tensor) -> Tensor:
            return batch_argmin_labels(dist, point_mask, pix, own_pixels)
    centroid_fn = centroid_fn or batch_mask_centroids
    labels = label_fn(cost.reshape(B, M, -1))
    for _ in range(iters):
        centroids = centroid_fn(labels.reshape(B, h, w), points_yx, point_mask)
        labels = label_fn(distance_fn(centroids).reshape(B, M, -1))
    return count_labels(labels, M)


def nearest_centroid(
    cost: Tensor,
    points_yx: Tensor,
    pixel_mask: Tensor,
    distance_fn: Callable[[Tensor], Tensor],
    iters: int = 1,
    own_pixels: Tensor | None = None,
) -> Tensor:
    """The paper's capacities for one image (module docstring), [M, h, w] -> k [M] long.

    Parameters
    ----------
    cost : Tensor [M, h, w]
        Costs from the points.
    points_yx : Tensor [M, 2] long
        The points, (y, x) at the resolution of ``cost``.
    pixel_mask : Tensor [h, w] bool
        The transported pixels; k sums to their number.
    distance_fn : callable, ``sources [M, 2] long -> Tensor [M, h, w]``
        Costs from arbitrary source pixels (same metric as ``cost``).
    iters : int
        Re-centring passes (paper Table 6; 1 in the main experiments).
    own_pixels : Tensor [M] long, optional
        Flat index of each point's own pixel, counted for it.
    """
    M = cost.shape[0]
    pm = torch.ones(1, M, dtype=torch.bool, device=cost.device)
    own = None if own_pixels is None else own_pixels.reshape(1, M)
    k = batch_nearest_centroid(
        cost[None], points_yx.reshape(1, M, 2), pm, pixel_mask[None],
        lambda c: distance_fn(c[0])[None], iters=iters, own_pixels=own,
    )
    return k[0]
