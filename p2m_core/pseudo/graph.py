"""The graph the geodesic costs are computed on, and its two resolutions.

The maps and the points live at the mask resolution ``H x W``; the graph is ``1/f`` of it, ``f =
graph_stride // mask_stride`` (reference: 16 / 4 = 4, as the reference builds its graph at 1/16
of the image and predicts masks at 1/4). This module holds both directions of that change of
resolution (``pseudo.map_resize``: block means or the release's
bilinear resize, :func:`to_graph`; bilinear upsampling, :func:`to_mask`), the edge lengths of
Eq. 2-3 on the graph from the maps ``pseudo.maps`` selects (:func:`coarse_edge_lengths`), and
the geodesic distances from sources given at mask resolution, back at mask resolution
(:func:`distance_maps`): steps 3 and 4 of :mod:`~p2m_core.pseudo.labels`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.config import MAP_NAMES, PseudoConfig
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import edge_lengths
from p2m_core.pseudo.geodesic import geodesic_distances
from p2m_core.pseudo.maps import TaskMaps
from p2m_core.pseudo.min_cost import normalise_costs

BOUNDARY_MAPS = tuple(m for m in MAP_NAMES if m != "semantic")


def graph_factor(cfg: PseudoConfig) -> int:
    """``f = graph_stride // mask_stride``: the graph is 1/f of the mask resolution (the config
    makes sure graph_stride is a multiple of mask_stride)."""
    return cfg.graph_stride // cfg.mask_stride


def _selected_maps(
    maps: TaskMaps, cfg: PseudoConfig, check_values: bool = True
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


def coarse_edge_lengths(maps: TaskMaps, cfg: PseudoConfig, check_values: bool = True) -> Tensor:
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
