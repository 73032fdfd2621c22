"""Pseudo masks from points by optimal transport: the whole pipeline, batched (paper Sec. 3).

:func:`generate_pseudo_labels` turns task-oriented maps (:class:`~p2m_core.pseudo.maps.TaskMaps`)
and point labels (:class:`~p2m_core.pseudo.maps.PointSet`) into one panoptic pseudo label per
image, following the paper (docs/METHOD.md, "Geodesic costs" to "Optimal transport"):

1. **Pixel roles** (at mask resolution ``H x W``). Each pixel takes the class ``argmax_c P^s``
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
3. **Costs.** The graph is built at ``1/f`` of the mask resolution, ``f = graph_stride //
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
5. **Assignment.** ``ot``: :func:`~p2m_core.pseudo.transport.sinkhorn` in ``cfg.sinkhorn_mode``
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
a coarse node) go to the lowest supplier index, so only then does a result depend on the order
in which the points are listed.

Batching: all images go through each step together, with points padded to the largest count;
the only Python loops are over images for bookkeeping (point sets in, geodesic sources out).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.config import (
    ASSIGNMENTS,
    CENTROID_RULES,
    K_RANKINGS,
    K_SCHEMES,
    MAP_NAMES,
    MAP_RESIZES,
    MC_DECODES,
    OT_PIXELS,
    PIXEL_ROLES,
    WARMUP_ASSIGNMENTS,
)
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.capacities import (
    batch_argmin_labels,
    batch_equal_division,
    batch_likelihood_labels,
    batch_mask_centroids,
    batch_nearest_centroid,
    batch_release_centroids,
    count_labels,
    force_own_pixels,
    normalise_costs,
)
from p2m_core.pseudo.edge_lengths import edge_lengths
from p2m_core.pseudo.geodesic import geodesic_distances
from p2m_core.pseudo.maps import PointSet, TaskMaps, check_points, pad_points
from p2m_core.pseudo.semidual import argmax_lowest
from p2m_core.pseudo.transport import SinkhornLog, disagreement, exact, sinkhorn

BOUNDARY_MAPS = tuple(m for m in MAP_NAMES if m != "semantic")


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


class _Timer:
    """Stage timings. On CUDA it synchronises at each stage only when asked (``profile``):
    a sync per stage would stall the training step, so by default CUDA timings are host times."""

    def __init__(self, device: torch.device, synchronize: bool = False) -> None:
        self.cuda = device.type == "cuda" and synchronize
        self.times: dict[str, float] = {}
        self._t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.times[name] = self.times.get(name, 0.0) + now - self._t
        self._t = now


def graph_factor(cfg: Any) -> int:
    """``f = graph_stride // mask_stride``: the graph is 1/f of the mask resolution."""
    g, s = int(cfg.graph_stride), int(cfg.mask_stride)
    if g < 1 or s < 1 or g % s:
        raise P2MInputError(
            f"pseudo.graph_stride={g} must be a positive multiple of pseudo.mask_stride={s} "
            "(the graph is built at mask resolution / (graph_stride / mask_stride))"
        )
    return g // s


def _check_cfg(cfg: Any) -> None:
    for name, value, allowed in (
        ("k_scheme", cfg.k_scheme, K_SCHEMES),
        ("assignment", cfg.assignment, ASSIGNMENTS),
        ("mc_decode", cfg.mc_decode, MC_DECODES),
        ("k_ranking", cfg.k_ranking, K_RANKINGS),
        ("centroid_rule", cfg.centroid_rule, CENTROID_RULES),
        ("warmup_assignment", cfg.warmup_assignment, WARMUP_ASSIGNMENTS),
        ("map_resize", cfg.map_resize, MAP_RESIZES),
        ("pixel_roles", cfg.pixel_roles, PIXEL_ROLES),
        ("ot_pixels", cfg.ot_pixels, OT_PIXELS),
    ):
        if value not in allowed:
            raise P2MInputError(f"pseudo.{name}: unknown value {value!r}, expected one of {allowed}")
    for name in ("force_own_pixels", "renormalise_embedding"):
        if not isinstance(getattr(cfg, name), bool):
            raise P2MInputError(f"pseudo.{name}: expected true or false, got {getattr(cfg, name)!r}")
    if not 0.0 <= cfg.stuff_void_threshold <= 1.0:
        raise P2MInputError(f"pseudo.stuff_void_threshold={cfg.stuff_void_threshold!r}: expected a number in [0, 1]")
    unknown = [m for m in cfg.maps if m not in ("semantic", *BOUNDARY_MAPS)]
    if unknown or "semantic" not in cfg.maps:
        raise P2MInputError(
            f"pseudo.maps={list(cfg.maps)}: must contain 'semantic' and only 'semantic', "
            f"'boundary_high', 'boundary_low'"
        )


def _selected_maps(
    maps: TaskMaps, cfg: Any, check_values: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None, list[Tensor], Tensor | None]:
    """The float32 maps that enter the edge lengths, validated: (semantic, high, low, extra,
    embedding).

    Shapes are always checked; values (no NaN or inf) only with ``check_values``, because that
    check waits for the device once per map."""
    sem = maps.semantic
    if sem.dim() != 4 or not sem.is_floating_point():
        raise P2MInputError(f"TaskMaps.semantic must be a float [B, C, H, W] tensor, got {sem.dtype} {tuple(sem.shape)}")
    B, _, H, W = sem.shape
    chosen: dict[str, Tensor | None] = {}
    for name in BOUNDARY_MAPS:
        value = getattr(maps, name)
        if name in cfg.maps and value is None:
            raise P2MInputError(f"pseudo.maps lists {name!r} but TaskMaps.{name} is None")
        if name in cfg.maps:
            if tuple(value.shape) != (B, H, W):
                raise P2MInputError(f"TaskMaps.{name}: expected shape {[B, H, W]}, got {list(value.shape)}")
            chosen[name] = value.float().to(sem.device)
        else:
            chosen[name] = None
    extra = []
    for i, e in enumerate(maps.extra):
        if tuple(e.shape) != (B, H, W):
            raise P2MInputError(f"TaskMaps.extra[{i}]: expected shape {[B, H, W]}, got {list(e.shape)}")
        extra.append(e.float().to(sem.device))
    emb = maps.embedding
    if emb is not None:
        if emb.dim() != 4 or emb.shape[0] != B or tuple(emb.shape[2:]) != (H, W) or not emb.is_floating_point():
            raise P2MInputError(
                f"TaskMaps.embedding must be a float [B, D, H, W] tensor with B, H, W = {B}, {H}, {W} "
                f"(the semantic map's), got {emb.dtype} {list(emb.shape)}"
            )
        emb = emb.float().to(sem.device)
    named = [("semantic", sem.float())] + [(n, v) for n, v in chosen.items() if v is not None]
    named += [(f"extra[{i}]", e) for i, e in enumerate(extra)]
    named += [("embedding", emb)] if emb is not None else []
    for name, value in named if check_values else []:
        if not bool(torch.isfinite(value).all()):
            raise P2MInputError(f"TaskMaps.{name} contains NaN or infinite values")
    return sem.float(), chosen["boundary_high"], chosen["boundary_low"], extra, emb


def graph_size(size: tuple[int, int], f: int, resize: str) -> tuple[int, int]:
    """Graph size for a mask of ``size``: ``ceil(H/f) x ceil(W/f)`` for ``area`` (partial blocks
    at the border are nodes too), ``floor(H/f) x floor(W/f)`` for ``bilinear`` (the release's
    ``H // 16``)."""
    H, W = size
    if resize == "area":
        return -(-H // f), -(-W // f)
    if H < f or W < f:
        raise P2MInputError(
            f"pseudo.map_resize='bilinear': a {H}x{W} mask is smaller than one graph cell "
            f"(graph_stride / mask_stride = {f})"
        )
    return H // f, W // f


def to_graph(x: Tensor, f: int, resize: str) -> Tensor:
    """Maps ``[B, C, H, W]`` at mask resolution -> the graph resolution (:func:`graph_size`):
    the mean over ``f x f`` blocks (``area``) or a bilinear resize, ``align_corners=False``,
    no antialiasing (``bilinear``: the release samples the two middle pixels of each block)."""
    if f == 1:
        return x
    if resize == "area":
        return F.avg_pool2d(x, f, f, ceil_mode=True)
    return F.interpolate(x, size=graph_size(tuple(x.shape[-2:]), f, resize), mode="bilinear", align_corners=False)


def to_mask(x: Tensor, f: int, size: tuple[int, int], resize: str) -> Tensor:
    """Graph maps ``[B, T, h, w]`` -> mask resolution ``size``, bilinear with
    ``align_corners=False``: by the scale factor f and cropped (``area``, node i at the centre
    of its block), or straight to ``size`` (``bilinear``, the release's resize)."""
    if f == 1:
        return x
    if resize == "area":
        return F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def coarse_edge_lengths(maps: TaskMaps, cfg: Any, check_values: bool = True) -> Tensor:
    """Edge lengths of the graph at ``1/f`` of the mask resolution (size: :func:`graph_size`).

    Every map goes to the graph by :func:`to_graph`. So does ``TaskMaps.embedding``, which is
    then re-normalised to unit length per node (``cfg.renormalise_embedding``): a block mean or a
    bilinear blend of unit vectors is shorter than 1 wherever they disagree, which would lower
    ``<e_p, e_q>`` and so lengthen the edges around every mixed node, not only across a border.
    """
    f = graph_factor(cfg)
    sem, high, low, extra, emb = _selected_maps(maps, cfg, check_values)

    def down(m: Tensor | None) -> Tensor | None:
        return None if m is None else to_graph(m[:, None], f, cfg.map_resize)[:, 0]

    if emb is not None:
        emb = to_graph(emb, f, cfg.map_resize)
        if cfg.renormalise_embedding:
            emb = F.normalize(emb, p=2.0, dim=1)
    return edge_lengths(
        to_graph(sem, f, cfg.map_resize), down(high), down(low), [down(e) for e in extra],
        beta=cfg.beta, extra_weight=cfg.extra_weight, embedding=emb,
    )


def distance_maps(
    lengths: Tensor, sources_yx: Tensor, source_mask: Tensor, f: int, size: tuple[int, int], backend: str,
    resize: str = "area", normalise: bool = False,
) -> Tensor:
    """Geodesic costs at mask resolution from sources given at mask resolution.

    ``lengths [B, 8, h, w]`` (coarse graph), ``sources_yx [B, T, 2]`` long, ``source_mask [B, T]``
    (real sources form a prefix of each row) -> ``[B, T, H, W]`` float32 (0 on padded rows).
    Each source maps to its coarse node ``(y // f, x // f)`` (clamped to the graph); the coarse
    distance maps go to ``size`` by :func:`to_mask`. ``normalise`` divides them by their maximum
    (+1e-5) over the image's sources at graph resolution, before the upsampling, as the release
    does for the distances from its centroids.
    """
    B, T = source_mask.shape
    h, w = lengths.shape[-2:]
    coarse = torch.stack([(sources_yx[..., 0] // f).clamp(0, h - 1), (sources_yx[..., 1] // f).clamp(0, w - 1)], -1)
    n = source_mask.sum(1).tolist()
    dist = geodesic_distances(lengths, [coarse[b, : n[b]] for b in range(B)], backend=backend)
    out = lengths.new_zeros(B, T, h, w, dtype=torch.float32)
    for b in range(B):
        out[b, : n[b]] = dist[b].float()
    if normalise:
        out = normalise_costs(out, source_mask)
    return to_mask(out, f, size, resize)


def generate_pseudo_labels(
    maps: TaskMaps, points: list[PointSet], cfg: Any, *, warmup: bool = False, profile: bool = False,
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
    _check_cfg(cfg)
    f = graph_factor(cfg)
    sem = maps.semantic
    if sem.dim() != 4:
        raise P2MInputError(f"TaskMaps.semantic must be [B, C, H, W], got {tuple(sem.shape)}")
    B, C, H, W = sem.shape
    N = H * W
    dev = sem.device
    timer = _Timer(dev, synchronize=profile)
    check_points(points, B, C, H, W, check_values=check_values)
    yx, labels, is_thing, pmask = pad_points(points, dev)
    M = yx.shape[1]
    is_thing = is_thing & pmask
    own = yx[..., 0] * W + yx[..., 1]  # [B, M] flat pixel of each point

    # -- 1-2. pixel roles and own pixels
    roles = _pixel_roles(sem, labels, is_thing, pmask, own, cfg, check_values)
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
    mc = _mc_labels(cost, sem, t_labels, tmask, transported, forced_own, cfg.mc_decode)

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
            k = _capacities(cfg, cost, lengths, sem, t_yx, t_labels, tmask, roles, forced_own, f, (H, W))
            demand = transported
        timer.lap("capacities")
        # -- 5b. OT
        assigned, slog = _transport(cfg, cost, k, demand, tmask, transported, all_pixels=mode == "release")
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


@dataclass
class _Roles:
    """What each pixel is, [B, N] each: ``transported`` (goes to the thing points), ``stuff``
    (labelled with ``stuff_label``, the owning stuff point), ``forced`` / ``forced_stuff`` (own
    pixels kept by a point, stuff points among them; all -1 / False when own pixels are not
    forced)."""

    transported: Tensor
    stuff: Tensor
    stuff_label: Tensor
    forced: Tensor
    forced_stuff: Tensor
    stuff_classes: Tensor  # [B, C] bool: classes with a stuff point


def _pixel_roles(
    sem: Tensor, labels: Tensor, is_thing: Tensor, pmask: Tensor, own: Tensor, cfg: Any, check_values: bool = True
) -> _Roles:
    """Steps 1-2 of the module docstring: each pixel's class, its role, and the own pixels.

    ``pixel_roles="evidence"``: the argmax over the classes with a point, nothing where they all
    have probability 0. ``"argmax"`` (release): the plain argmax over all C channels (lowest
    index on ties, so an all-zero pixel takes class 0); every pixel whose class has no stuff
    point is transported. Stuff pixels are void where their ``max P^s`` is below
    ``cfg.stuff_void_threshold``; they are never transported either way.
    """
    B, C, H, W = sem.shape
    N = H * W
    M = labels.shape[1]
    dev = sem.device
    index_m = torch.arange(M, device=dev).expand(B, M)
    thing_cls = _class_flags(labels, is_thing, C)
    stuff_cls = _class_flags(labels, pmask & ~is_thing, C)
    if check_values and bool((thing_cls & stuff_cls).any()):
        b, c = (thing_cls & stuff_cls).nonzero()[0].tolist()
        raise P2MInputError(f"points[{b}]: class {c} has both thing and stuff points")
    if not C:
        best, cls = sem.new_full((B, N), -math.inf), sem.new_zeros((B, N), dtype=torch.long)
    elif cfg.pixel_roles == "argmax":
        flat = sem.float().reshape(B, C, N)
        cls = argmax_lowest(flat)
        best = flat.gather(1, cls[:, None])[:, 0]
    else:
        present = thing_cls | stuff_cls
        scores = torch.where(present[:, :, None], sem.float().reshape(B, C, N), -math.inf)
        cls = argmax_lowest(scores)
        best = scores.gather(1, cls[:, None])[:, 0]
    stuff_role = stuff_cls.gather(1, cls) & (best > 0 if cfg.pixel_roles == "evidence" else True)
    if cfg.pixel_roles == "argmax":
        px_thing = ~stuff_role
    else:
        px_thing = thing_cls.gather(1, cls) & (best > 0)
    big = M * (N + 1)
    stuff_key = torch.where(pmask & ~is_thing, own * M + index_m, big)
    stuff_owner = torch.full((B, C + 1), big, dtype=torch.long, device=dev)
    stuff_owner = stuff_owner.scatter_reduce(1, torch.where(pmask & ~is_thing, labels, C), stuff_key, "amin")[:, :C]
    stuff_owner = torch.where(stuff_owner < big, stuff_owner % max(M, 1), -1)

    # own pixels: thing before stuff, then lowest index
    prio = torch.where(is_thing, index_m, index_m + M)
    winner = torch.full((B, N + 1), 2 * M, dtype=torch.long, device=dev)
    winner = winner.scatter_reduce(1, torch.where(pmask, own, N), torch.where(pmask, prio, 2 * M), "amin")[:, :N]
    if not cfg.force_own_pixels:
        winner = torch.full_like(winner, 2 * M)
    forced = torch.where(winner < 2 * M, winner % max(M, 1), -1)
    forced_thing = (forced >= 0) & (winner < M)
    forced_stuff = (forced >= 0) & (winner >= M)
    return _Roles(
        transported=(px_thing & ~forced_stuff) | forced_thing,
        stuff=stuff_role & (best >= cfg.stuff_void_threshold),
        stuff_label=stuff_owner.gather(1, cls) if C else cls,
        forced=forced,
        forced_stuff=forced_stuff,
        stuff_classes=stuff_cls,
    )


def _transport(
    cfg: Any, cost: Tensor, k: Tensor, demand: Tensor, tmask: Tensor, transported: Tensor, all_pixels: bool
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


def _class_flags(labels: Tensor, which: Tensor, num_classes: int) -> Tensor:
    """[B, C] bool: classes with at least one point where ``which`` [B, M] holds."""
    B = labels.shape[0]
    flags = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=labels.device)
    return flags.scatter(1, torch.where(which, labels, num_classes), True)[:, :num_classes]


def _mc_labels(
    cost: Tensor, sem: Tensor, t_labels: Tensor, tmask: Tensor, transported: Tensor, t_own: Tensor | None,
    decode: str,
) -> Tensor:
    """Minimum-cost supplier per transported pixel, [B, T, N] -> [B, N] (-1 elsewhere)."""
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


def _capacities(
    cfg: Any, cost: Tensor, lengths: Tensor | None, sem: Tensor, t_yx: Tensor, t_labels: Tensor, tmask: Tensor,
    roles: _Roles, forced_own: Tensor | None, f: int, size: tuple[int, int],
) -> Tensor:
    """k [B, T] long by ``cfg.k_scheme``, summing per image to ``roles.transported.sum()``.

    The pixels are ranked among the points by ``cfg.k_ranking``: minimum cost, or the release's
    ``(1 - d / max d) * L`` (:func:`class_likelihood`, distances normalised over the image). For
    ``nearest_centroid``, ``cfg.centroid_rule`` picks the new sources and, for ``release``, the
    distances from them are normalised at graph resolution, before the upsampling.
    """
    B, T, N = cost.shape
    H, W = size
    transported = roles.transported
    if cfg.k_scheme == "equal_division":
        # remainder to the suppliers first in raster order: independent of the point order
        key = (t_yx[..., 0] * W + t_yx[..., 1]) * max(T, 1) + torch.arange(T, device=cost.device)
        return batch_equal_division(transported.sum(1), tmask, key)
    if cfg.k_ranking == "likelihood":
        likelihood = class_likelihood(sem, t_labels, roles.stuff_classes)

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
