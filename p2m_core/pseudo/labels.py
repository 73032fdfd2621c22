"""Pseudo masks from points by optimal transport: the whole pipeline, batched (paper Sec. 3).

:func:`generate_pseudo_labels` turns task-oriented maps (:class:`~p2m_core.pseudo.maps.TaskMaps`)
and point labels (:class:`~p2m_core.pseudo.maps.PointSet`) into one panoptic pseudo label per
image, following the paper (docs/METHOD.md, "Geodesic costs" to "Optimal transport"). This
module runs the steps in order; each step's rules live in the module named with it:

1. **Pixel roles** (:mod:`~p2m_core.pseudo.roles`, at mask resolution ``H x W``). Each pixel takes the class ``argmax_c P^s``
   over the classes that have a point in its image (the reference zeroes the other classes of
   ``P^s``; a pixel where every such class has probability 0, e.g. a void pixel of an oracle
   map, is left unassigned). A class is *thing* or *stuff* after its points' ``is_thing``; a
   class with points of both kinds is an input error. Stuff-class pixels are not transported:
   they form one segment per stuff class, owned by that class's stuff point that comes first in
   raster order (smallest ``y * W + x``; ties by index). Thing-class pixels are *transported*
   among all the thing points; with no thing point there is no thing class, hence nothing to
   transport.
2. **Own pixels.** Every point keeps its own pixel. Where points share a pixel, a thing point
   beats a stuff point and then the lowest index wins. A thing point's pixel is transported even
   if its argmax class is stuff; a stuff point's pixel never is.
3. **Costs** (:mod:`~p2m_core.pseudo.graph`). The graph is built at ``1/f`` of the mask resolution, ``f = graph_stride //
   mask_stride`` (reference: 16 / 4 = 4; f = 1 keeps the mask resolution): the maps listed in
   ``cfg.maps`` (``semantic`` is required; a listed boundary map that ``TaskMaps`` lacks is an
   error, a provided one that is not listed is ignored), every ``TaskMaps.extra`` map (weight
   ``cfg.extra_weight``) and ``TaskMaps.embedding`` when given are area-averaged over ``f x f``
   blocks (partial blocks at the border average their in-image pixels), the embedding is
   re-normalised to unit length per node (``cfg.renormalise_embedding``), the edge lengths of
   Eq. 2-3 are computed there (:func:`~p2m_core.pseudo.edge_lengths.edge_lengths`; the embedding
   adds the release's pairwise projector term ``cfg.extra_weight * max(0, 1 - <e_p, e_q>)`` to
   each edge), and the geodesic distances from the coarse node of every thing point
   (``(y // f, x // f)``) are upsampled bilinearly (``align_corners=False``, scale factor f,
   cropped to H x W) to ``C [B, M_things, H*W]``.
   Stuff points are never sources: their segments come from the semantic map alone.
4. **Capacities** k by ``cfg.k_scheme`` (:mod:`~p2m_core.pseudo.capacities`), summing to the
   number of transported pixels; ``nearest_centroid`` recomputes costs from the centroids the
   same way as step 3.
5. **Assignment** (:mod:`~p2m_core.pseudo.assignment`, :mod:`~p2m_core.pseudo.min_cost`).
   ``ot``: :func:`~p2m_core.pseudo.transport.sinkhorn` in ``cfg.sinkhorn_mode``
   with supplies k and one unit of demand per transported pixel (only the transported pixels
   enter the plan: the reference gives stuff pixels demand 0 instead, whose mass ``1e-8`` is
   below float32 resolution of the row sums), decoded by argmax. ``mc``:
   ``argmin_i c_ij`` (``mc_decode="argmin"``) or the reference's PSPS decode ``argmax_i (1 -
   c_ij / max c) * P^s(class_i, j)`` (``"psps"``, max over the image's transported pixels and
   thing points). The MC labels are always computed, so an ``ot`` run reports the share of
   transported pixels where OT and MC disagree.

The release's variant (docs/METHOD.md, "The release's pseudo-label variant") changes single
steps, each by its own field: ``pixel_roles``, ``stuff_void_threshold`` and ``force_own_pixels``
(steps 1-2), ``map_resize`` and ``renormalise_embedding`` (step 3), ``k_ranking`` and
``centroid_rule`` (step 4), ``ot_pixels`` and ``warmup_assignment`` (step 5, the latter when
called with ``warmup=True``).

Ties: exactly equal costs (a flat region of ``P^s`` has zero-length edges; two points can share
a coarse node) go to the lowest supplier index (:mod:`~p2m_core.pseudo.ties`), so only then does
a result depend on the order in which the points are listed.

Batching: all images go through each step together, with points padded to the largest count;
the only Python loops are over images for bookkeeping (point sets in, geodesic sources out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from p2m_core.config import PseudoConfig
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.assignment import transport_labels
from p2m_core.pseudo.capacities import capacities_by_scheme
from p2m_core.pseudo.graph import coarse_edge_lengths, distance_maps, graph_factor
from p2m_core.pseudo.maps import PointSet, TaskMaps, check_points, pad_points
from p2m_core.pseudo.min_cost import batch_argmin_labels, count_labels, force_own_pixels, mc_labels
from p2m_core.pseudo.roles import pixel_roles
from p2m_core.pseudo.stage_timer import StageTimer
from p2m_core.pseudo.transport import disagreement


@dataclass
class ImagePseudoLabels:
    """One image's slice of :class:`PseudoLabels` (padding removed)."""

    panoptic: Tensor  # [H, W] long: owning point index, -1 unassigned
    masks: Tensor  # [m, H, W] bool
    thing_index: Tensor  # [m_things] long: index of each supplier in the image's PointSet
    k: Tensor  # [m_things] long
    counts: Tensor  # [m_things] long
    transported: Tensor  # [H, W] bool


@dataclass
class PseudoLabels:
    """Pseudo labels and diagnostics of a batch of B images (points padded to M, suppliers to T).

    panoptic : Tensor [B, H, W] long
        Index of the point (in the image's :class:`PointSet`) that owns each pixel; -1 where no
        point does (no labelled class has any probability there).
    masks : Tensor [B, M, H, W] bool
        ``masks[b, i] = panoptic[b] == i``; all False for padded points.
    point_mask : Tensor [B, M] bool
        Real (True) versus padded points.
    thing_index : Tensor [B, T] long
        The suppliers: index of each thing point in its PointSet, in order; -1 for padding.
    k : Tensor [B, T] long
        Supplier capacities, summing per image to the number of transported pixels. For
        ``assignment="mc"`` no capacities are used and ``k`` holds the MC pixel counts.
    counts : Tensor [B, T] long
        Transported pixels each supplier got in ``panoptic`` (compare with ``k``).
    transported : Tensor [B, H, W] bool
        The pixels that went through the assignment (thing-class pixels and thing points' own
        pixels, less stuff points' own pixels).
    mc_panoptic : Tensor [B, H, W] long
        ``panoptic`` with the transported pixels assigned by the MC rule instead.
    iterations, row_error, col_error, rel_error, converged : Tensor [B]
        :class:`~p2m_core.pseudo.transport.SinkhornLog` of the OT solve (0 / NaN / False when
        ``assignment="mc"``).
    disagreement : Tensor [B] float
        Share of transported pixels whose OT label differs from the MC label (NaN for ``mc``).
    timings : dict[str, float]
        Wall-clock seconds per stage (per-stage GPU times on CUDA only with ``profile=True``).
    """

    panoptic: Tensor
    masks: Tensor
    point_mask: Tensor
    thing_index: Tensor
    k: Tensor
    counts: Tensor
    transported: Tensor
    mc_panoptic: Tensor
    iterations: Tensor
    row_error: Tensor
    col_error: Tensor
    rel_error: Tensor
    converged: Tensor
    disagreement: Tensor
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.panoptic.shape[0])

    def image(self, b: int) -> ImagePseudoLabels:
        """Image ``b`` with the padding of points and suppliers removed."""
        m = int(self.point_mask[b].sum())
        t = int((self.thing_index[b] >= 0).sum())
        return ImagePseudoLabels(
            panoptic=self.panoptic[b],
            masks=self.masks[b, :m],
            thing_index=self.thing_index[b, :t],
            k=self.k[b, :t],
            counts=self.counts[b, :t],
            transported=self.transported[b],
        )


def generate_pseudo_labels(
    maps: TaskMaps, points: list[PointSet], cfg: PseudoConfig, *, warmup: bool = False, profile: bool = False,
    check_values: bool = True,
) -> PseudoLabels:
    """Pseudo panoptic labels for a batch of images from their maps and points (module docstring).

    Parameters
    ----------
    maps : TaskMaps
        ``semantic [B, C, H, W]`` (cost-ready P^s, see
        :func:`~p2m_core.pseudo.maps.semantic_cost_map`), optional boundaries and extra maps
        ``[B, H, W]`` and an optional embedding ``[B, D, H, W]`` (the projector's unit vectors),
        all at the mask resolution H x W. An embedding that is given is used: every graph edge
        gets ``cfg.extra_weight * max(0, 1 - <e_p, e_q>)`` (the release's term, weight 0.1), on
        the embedding resized to the graph by ``cfg.map_resize`` and, with
        ``cfg.renormalise_embedding``, re-normalised there.
    points : list of B PointSet
        Points at mask resolution.
    cfg : PseudoConfig
        The ``pseudo`` config section: maps, beta, extra_weight, graph_stride, mask_stride,
        k_scheme, centroid_iters, assignment, mc_decode, sinkhorn_*, geodesic_backend and the
        release switches (k_ranking, centroid_rule, warmup_assignment, map_resize,
        renormalise_embedding, pixel_roles, ot_pixels, force_own_pixels, stuff_void_threshold).
    warmup : bool
        Use the warm-up assignment (``cfg.warmup_assignment``) instead of ``cfg.assignment``:
        the training loop passes True for its first ``cfg.warmup_iters`` iterations.
    profile : bool
        On CUDA, synchronise after each stage so that ``timings`` are per-stage GPU times
        (off by default: it would stall the training step).
    check_values : bool
        Check the values of the inputs (finite maps, points inside the grid, no class with both
        thing and stuff points), each check a wait for the device. Shapes are always checked.
        The training step passes False: its inputs come from the network and the data loader,
        which were checked once.

    Returns
    -------
    PseudoLabels
    """
    f = graph_factor(cfg)
    sem = maps.semantic
    if sem.dim() != 4:
        raise P2MInputError(f"TaskMaps.semantic must be [B, C, H, W], got {tuple(sem.shape)}")
    B, C, H, W = sem.shape
    N = H * W
    dev = sem.device
    timer = StageTimer(dev, synchronize=profile)
    check_points(points, B, C, H, W, check_values=check_values)
    yx, labels, is_thing, pmask = pad_points(points, dev)
    M = yx.shape[1]
    is_thing = is_thing & pmask
    own = yx[..., 0] * W + yx[..., 1]  # [B, M] flat pixel of each point

    # -- 1-2. pixel roles and own pixels
    roles = pixel_roles(sem, labels, is_thing, pmask, own, cfg, check_values)
    transported = roles.transported

    # suppliers: the thing points, in order, padded to T
    n_things = is_thing.sum(1)
    T = int(n_things.max()) if B else 0
    order = torch.sort((~is_thing).long(), dim=1, stable=True).indices[:, :T]
    tmask = torch.arange(T, device=dev)[None] < n_things[:, None]
    thing_index = torch.where(tmask, order, -1)
    t_yx = yx.gather(1, order[..., None].expand(B, T, 2))
    t_own = torch.where(tmask, own.gather(1, order), -1)
    forced_own = t_own if cfg.force_own_pixels else None  # own pixels the assignments keep
    t_labels = labels.gather(1, order) if T else labels[:, :0]
    timer.lap("roles")

    # -- 3. costs
    lengths = None
    if T:
        lengths = coarse_edge_lengths(maps, cfg, check_values)
        timer.lap("edge_lengths")
        cost = distance_maps(
            lengths, t_yx, tmask, f, (H, W), cfg.geodesic_backend, resize=cfg.map_resize
        ).reshape(B, T, N)
        timer.lap("geodesic")
    else:
        cost = sem.new_zeros(B, 0, N, dtype=torch.float32)

    # -- 5a. MC labels (always)
    mc = mc_labels(cost, sem, t_labels, tmask, transported, forced_own, cfg.mc_decode)

    nan = torch.full((B,), math.nan, device=dev)
    mode = cfg.warmup_assignment if warmup and cfg.assignment != "mc" else cfg.assignment
    if mode == "mc":
        assigned = mc
        k = count_labels(mc, T)
        diag = (torch.zeros(B, dtype=torch.long, device=dev), nan, nan, nan, torch.zeros(B, dtype=torch.bool, device=dev))
        share = nan
        timer.lap("assignment")
    else:
        if mode == "release":
            # the release's warm-up: nearest-point k over every pixel, all pixels consumers
            everywhere = torch.ones(B, N, dtype=torch.bool, device=dev)
            k = count_labels(batch_argmin_labels(cost, tmask, everywhere, forced_own), T)
            demand = everywhere
        else:
            # -- 4. capacities
            k = capacities_by_scheme(
                cfg, cost, lengths, sem, t_yx, t_labels, tmask, transported, roles.stuff_classes, forced_own, f, (H, W)
            )
            demand = transported
        timer.lap("capacities")
        # -- 5b. OT
        assigned, slog = transport_labels(cfg, cost, k, demand, tmask, transported, all_pixels=mode == "release")
        if forced_own is not None:
            assigned = force_own_pixels(assigned, forced_own, tmask, transported)
        diag = (slog.iterations, slog.row_error, slog.col_error, slog.rel_error, slog.converged)
        share = disagreement(assigned, mc, transported)
        timer.lap("transport")

    # -- compose: stuff segments, transported pixels, own pixels
    base = torch.where(roles.stuff, roles.stuff_label, -1)
    base = torch.where(roles.forced_stuff, roles.forced, base)

    def compose(supplier: Tensor) -> Tensor:
        owner = thing_index.gather(1, supplier.clamp_min(0)) if T else supplier
        return torch.where(transported & (supplier >= 0), owner, base).reshape(B, H, W)

    panoptic = compose(assigned)
    mc_panoptic = compose(mc)
    masks = panoptic[:, None] == torch.arange(M, device=dev)[None, :, None, None]
    masks = masks & pmask[:, :, None, None]
    counts = count_labels(assigned, T)
    timer.lap("compose")
    timer.times["total"] = sum(timer.times.values())
    return PseudoLabels(
        panoptic=panoptic, masks=masks, point_mask=pmask, thing_index=thing_index, k=k, counts=counts,
        transported=transported.reshape(B, H, W), mc_panoptic=mc_panoptic,
        iterations=diag[0], row_error=diag[1], col_error=diag[2], rel_error=diag[3], converged=diag[4],
        disagreement=share, timings=timer.times,
    )


