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
    regions (Table 6); ``iters = 0`` is ``nearest_point`` here, while the config asks for
    ``pseudo.centroid_iters >= 1`` (``k_scheme: nearest_point`` says that setting by name).

Zero capacities. Two points can share a region (same pixel, or the same node of a coarse graph),
and then a minimum-cost count gives one of them nothing. Every point keeps its own pixel in the
final masks, so the region counts here take the same rule: when ``own_pixels`` is given, each
point's own pixel is counted for that point before the argmin regions are counted. Then k_i >= 1
for every point whose pixel is transported and not shared with a lower-index point.

The regions are ranked by the rules of :mod:`~p2m_core.pseudo.min_cost`. Batched forms
(``batch_*``) work on [B, M, ...] padded tensors with ``point_mask [B, M]``;
:func:`capacities_by_scheme` picks among them as the ``pseudo`` config asks, for
:func:`p2m_core.pseudo.labels.generate_pseudo_labels`. The single-image functions wrap the
batched ones with B = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from p2m_core.config import PseudoConfig
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.graph import distance_maps
from p2m_core.pseudo.min_cost import (
    batch_argmin_labels,
    batch_likelihood_labels,
    class_likelihood,
    count_labels,
    normalise_costs,
)


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


# ----------------------------------------------------------------------------- the pipeline's choice
def capacities_by_scheme(
    cfg: PseudoConfig, cost: Tensor, lengths: Tensor | None, sem: Tensor, t_yx: Tensor, t_labels: Tensor,
    tmask: Tensor, transported: Tensor, stuff_classes: Tensor, forced_own: Tensor | None, f: int,
    size: tuple[int, int],
) -> Tensor:
    """The pipeline's capacities (step 4 of :mod:`~p2m_core.pseudo.labels`): k [B, T] long by
    ``cfg.k_scheme``, summing per image to ``transported.sum()`` (``[B, N]`` bool).

    The pixels are ranked among the points by ``cfg.k_ranking``: minimum cost, or the release's
    ``(1 - d / max d) * L`` (:func:`class_likelihood`, distances normalised over the image). For
    ``nearest_centroid``, ``cfg.centroid_rule`` picks the new sources and, for ``release``, the
    distances from them are normalised at graph resolution, before the upsampling.
    """
    B, T, N = cost.shape
    H, W = size
    if cfg.k_scheme == "equal_division":
        # remainder to the suppliers first in raster order: independent of the point order
        key = (t_yx[..., 0] * W + t_yx[..., 1]) * max(T, 1) + torch.arange(T, device=cost.device)
        return batch_equal_division(transported.sum(1), tmask, key)
    if cfg.k_ranking == "likelihood":
        likelihood = class_likelihood(sem, t_labels, stuff_classes)

        def rank(dist: Tensor) -> Tensor:
            return batch_likelihood_labels(dist, likelihood, tmask, transported, forced_own)

        first = normalise_costs(cost, tmask)
    else:
        def rank(dist: Tensor) -> Tensor:
            return batch_argmin_labels(dist, tmask, transported, forced_own)

        first = cost
    if cfg.k_scheme == "nearest_point" or T == 0:
        return count_labels(rank(first), T)
    release = cfg.centroid_rule == "release"

    def from_centroids(centroids: Tensor) -> Tensor:
        dist = distance_maps(
            lengths, centroids, tmask, f, size, cfg.geodesic_backend, resize=cfg.map_resize, normalise=release
        )
        return normalise_costs(dist, tmask) if cfg.k_ranking == "likelihood" and not release else dist

    def centroids_of(labels: Tensor, points_yx: Tensor, point_mask: Tensor) -> Tensor:
        if release:
            return batch_release_centroids(labels, points_yx, point_mask, f)
        return batch_mask_centroids(labels, points_yx, point_mask)

    return batch_nearest_centroid(
        first.reshape(B, T, H, W), t_yx, tmask, transported.reshape(B, H, W), from_centroids,
        iters=cfg.centroid_iters, label_fn=rank, centroid_fn=centroids_of,
    )
