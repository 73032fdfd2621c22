"""Inputs of the pseudo-label stage: each image's ground truth, points and maps, in batches.

Per image (docs/METHOD.md, "The pseudo-label ablation stage"):

1. read the GT panoptic map and take the image's points: drawn with ``data.point_seed``
   (``ablation.points=sample``: exactly the points ``python -m p2m_core.data.points`` writes for
   that seed) or read from the split's point file (``ablation.points=file``);
2. build the maps at mask resolution ``ceil(H / s) x ceil(W / s)``, ``s = pseudo.mask_stride``
   (:mod:`p2m_core.ablation.sources`): GT ids downsampled by nearest neighbour at block centres,
   each point moved to ``(y // s, x // s)`` and, if that mask pixel is not on its own segment,
   to the nearest mask pixel that is (``moved`` counts them);
3. group images of equal mask size into batches of ``ablation.batch_size``; for the
   ``checkpoint`` source the network then predicts the batch's ``P^s`` and ``P^b_high``
   (:mod:`p2m_core.ablation.network`);
4. :func:`batch_inputs` turns a batch into the tensors of
   :func:`p2m_core.pseudo.generate_pseudo_labels`, making ``P^s`` cost-ready as the training
   loop does (:func:`p2m_core.pseudo.maps.semantic_cost_map`: classes without a point zeroed,
   points forced to their class on a square of side ``pseudo.point_dilation`` *input* pixels,
   i.e. the odd number nearest to ``point_dilation / s`` mask pixels), unless
   ``ablation.cost_ready`` is false.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2m_core.ablation.sources import (
    ImageMaps,
    build_image_maps,
    downsample_ids,
    mask_size,
    max_pool,
    needs_edges,
    stack_image_maps,
)
from p2m_core.config import Config
from p2m_core.data.panoptic_format import CocoPanoptic, PanopticRecord
from p2m_core.data.points import image_point_arrays, load_points, sample_image_entry
from p2m_core.data.splits import require_split
from p2m_core.engine.device import resolve_device
from p2m_core.errors import P2MInputError


@dataclass
class StageData:
    """The split the stage runs on and where its points come from.

    ``points_by_id`` holds the point file's entries by image id (``ablation.points=file``), or
    is ``None`` when points are drawn per image with ``point_seed``.
    """

    dataset: CocoPanoptic
    points_by_id: dict[Any, dict] | None
    points_source: str
    point_seed: int

    def __len__(self) -> int:
        return len(self.dataset)


def load_stage_data(cfg: Config) -> StageData:
    """Open ``cfg.ablation.split`` of ``cfg.data`` (failing clearly when files are missing)."""
    split = cfg.ablation.split
    from_file = cfg.ablation.points == "file"
    paths = require_split(cfg.data, split, need_points=from_file)
    image_dir = paths.images_dir if paths.images_dir is not None and paths.images_dir.is_dir() else None
    dataset = CocoPanoptic(paths.panoptic_json, image_dir=image_dir, png_dir=paths.panoptic_dir)
    if from_file:
        raw = load_points(paths.points)
        return StageData(dataset, {e["image_id"]: e for e in raw["images"]}, str(paths.points), int(raw["seed"]))
    seed = cfg.data.point_seed
    return StageData(dataset, None, f"sampled with data.point_seed={seed}", seed)


@dataclass
class PreparedImage:
    """Everything the stage needs of one image (resolutions in the module doc).

    gt_ids : [H, W] int64 GT segment ids; gt_segments : dicts for :class:`PQAccumulator`.
    points_yx : [m, 2] points in the image; mask_yx : [m, 2] at mask resolution.
    labels : [m] contiguous class; category_ids : [m]; is_thing : [m] bool.
    maps : the image's :class:`ImageMaps`; image : [H, W, 3] uint8 when kept (overlays).
    """

    index: int
    record: PanopticRecord
    gt_ids: np.ndarray
    gt_segments: list[dict]
    points_yx: np.ndarray
    mask_yx: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    is_thing: np.ndarray
    segment_ids: np.ndarray
    moved: int
    maps: ImageMaps
    image: np.ndarray | None = None

    @property
    def mask_shape(self) -> tuple[int, int]:
        return tuple(self.maps.semantic.shape[1:])  # type: ignore[return-value]


def _snap(mask_yx: np.ndarray, segment_ids: np.ndarray, mask_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Move points off their segment (at mask resolution) to its nearest mask pixel, if any."""
    from p2m_core.data.transforms import snap_points_to_segments

    if len(mask_yx) == 0:
        return mask_yx, 0
    snapped, _ = snap_points_to_segments(mask_yx, segment_ids, mask_ids)
    return snapped, int((snapped != mask_yx).any(axis=1).sum())


def _point_entry(data: StageData, record: PanopticRecord, gt_ids: np.ndarray) -> dict:
    if data.points_by_id is None:
        return sample_image_entry(data.dataset, record, gt_ids, data.point_seed)
    entry = data.points_by_id.get(record.image_id)
    if entry is None:
        raise P2MInputError(f"{data.points_source}: no points for image id {record.image_id!r} ({record.png_path.name})")
    return entry


def prepare_image(
    data: StageData, index: int, cfg: Config, edge_detector: Any = None, keep_image: bool = False
) -> PreparedImage:
    """Load one image's GT and points and build its maps at mask resolution (module doc)."""
    dataset = data.dataset
    record = dataset.records[index]
    gt_ids = dataset.load_segment_ids(record)
    height, width = gt_ids.shape
    contiguous = dataset.contiguous_ids()
    arrays = image_point_arrays(
        _point_entry(data, record, gt_ids), record, dataset.categories, contiguous, data.points_source
    )
    points_yx = arrays["points_yx"]
    segment_ids = arrays["point_segment_ids"]
    by_segment = {s.id: s.category_id for s in record.segments}
    category_ids = np.array([by_segment[s] for s in segment_ids.tolist()], dtype=np.int64)

    stride = cfg.pseudo.mask_stride
    mask_ids = downsample_ids(gt_ids, stride)
    h, w = mask_size(height, width, stride)
    mask_yx = np.stack([np.minimum(points_yx[:, 0] // stride, h - 1), np.minimum(points_yx[:, 1] // stride, w - 1)], 1)
    mask_yx, moved = _snap(mask_yx.reshape(-1, 2), segment_ids, mask_ids)

    with_edges = needs_edges(cfg.ablation)
    image = None
    if with_edges or keep_image:
        if with_edges or record.image_path.is_file():
            image = dataset.load_image(record)
        else:  # overlays without the RGB images: draw on grey
            image = np.full((height, width, 3), 128, dtype=np.uint8)
        if image.shape[:2] != (height, width):
            raise P2MInputError(f"image {record.image_path} is {image.shape[:2]} but its panoptic PNG is {(height, width)}")
    edges = max_pool(edge_detector(image), stride) if with_edges else None
    class_of_segment = {s.id: contiguous[s.category_id] for s in record.segments}
    maps = build_image_maps(cfg.ablation, mask_ids, class_of_segment, len(contiguous), edges=edges, image_id=record.image_id)
    gt_segments = []
    for s in record.segments:
        seg = {"id": s.id, "category_id": s.category_id, "iscrowd": int(s.iscrowd)}
        if s.area is not None:
            seg["area"] = s.area
        gt_segments.append(seg)
    return PreparedImage(
        index, record, gt_ids, gt_segments, points_yx, mask_yx.astype(np.int64), arrays["point_labels"],
        category_ids, arrays["point_is_thing"], segment_ids, moved, maps, image if keep_image else None,
    )


def image_count(data: StageData, cfg: Config) -> int:
    """Images the stage scores: the whole split, or its first ``ablation.max_images``."""
    limit = cfg.ablation.max_images
    return len(data) if limit == 0 else min(len(data), limit)


def prepare_batches(
    data: StageData, cfg: Config, fill: Callable[[list[PreparedImage]], None] | None = None
) -> Iterator[list[PreparedImage]]:
    """Prepared images grouped into batches of equal mask size (streaming, dataset order).

    Images of one size are buffered until ``ablation.batch_size`` of them are ready; leftovers
    are flushed at the end in order of first appearance. The first ``ablation.overlays`` images
    keep their RGB array. The edge detector (``data.edge_model``: Structured Edges when set, a
    configured but missing file is an error) is built once, and only if the source needs it.

    ``fill`` completes each batch's maps before it is yielded; the ``checkpoint`` source needs
    it (its network, :class:`~p2m_core.ablation.network.CheckpointMaps`), and keeps every
    image's RGB array until then.
    """
    from p2m_core.data.edges import EdgeDetector

    network = cfg.ablation.source == "checkpoint"
    if network and fill is None:
        raise ValueError("ablation.source 'checkpoint': prepare_batches needs the network that fills the maps")
    detector = EdgeDetector.from_model_path(cfg.data.edge_model or None) if needs_edges(cfg.ablation) else None
    batch_size = cfg.ablation.batch_size

    def ready(bucket: list[PreparedImage]) -> list[PreparedImage]:
        if fill is not None:
            fill(bucket)
            for item in bucket:
                if item.index >= cfg.ablation.overlays:
                    item.image = None
        return bucket

    buffers: dict[tuple[int, int], list[PreparedImage]] = {}
    for index in range(image_count(data, cfg)):
        item = prepare_image(data, index, cfg, detector, keep_image=network or index < cfg.ablation.overlays)
        bucket = buffers.setdefault(item.mask_shape, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield ready(buffers.pop(item.mask_shape))
    for bucket in buffers.values():
        if bucket:
            yield ready(bucket)


def batch_inputs(batch: Sequence[PreparedImage], cfg: Config, device: Any = "cpu"):
    """``(TaskMaps, [PointSet])`` of a batch on ``device``, semantic made cost-ready (module doc).

    Only the maps listed in ``pseudo.maps`` are passed on (:func:`check_maps_available` has made
    sure the source provides them).
    """
    import torch

    from p2m_core.pseudo.maps import PointSet, TaskMaps, dilation_at_mask, semantic_cost_map

    stacked = stack_image_maps([item.maps for item in batch])
    if stacked["semantic"].shape[1] == 0:
        raise ValueError("batch_inputs: the batch's P^s was never predicted (checkpoint maps not filled)")
    semantic = torch.from_numpy(stacked["semantic"]).to(device)
    point_sets = [
        PointSet(
            torch.from_numpy(item.mask_yx).to(device),
            torch.from_numpy(item.labels).to(device),
            torch.from_numpy(item.is_thing).to(device),
        )
        for item in batch
    ]
    if cfg.ablation.cost_ready:
        # Logits whose softmax is P^s, with an extra "no evidence" channel that takes the mass of
        # all-zero (void) pixels; it has no point, so semantic_cost_map zeroes it, and dropping
        # it leaves those pixels at zero except where a point square covers them.
        mass = semantic.sum(1, keepdim=True)
        logits = torch.log(torch.cat([semantic, (mass <= 0).float()], 1).clamp_min(1e-30))
        dilation = dilation_at_mask(cfg.pseudo.point_dilation, cfg.pseudo.mask_stride)
        semantic = semantic_cost_map(logits, point_sets, dilation=dilation)[:, :-1].contiguous()

    def boundary(name: str):
        value = stacked[name]
        return None if value is None or name not in cfg.pseudo.maps else torch.from_numpy(value).to(device)

    embedding = None if stacked["embedding"] is None else torch.from_numpy(stacked["embedding"]).to(device)
    return TaskMaps(semantic, boundary("boundary_high"), boundary("boundary_low"), embedding=embedding), point_sets


def provided_maps(cfg: Config) -> tuple[str, ...]:
    """The maps ``ablation.source`` provides (``image`` has no ``boundary_high``; the oracle
    sources have ``boundary_low`` unless ``oracle_boundary_low`` is ``none``)."""
    source = cfg.ablation.source
    if source == "image":
        return ("semantic", "boundary_low")
    if source == "checkpoint":
        return ("semantic", "boundary_low", "boundary_high")
    low = () if cfg.ablation.oracle_boundary_low == "none" else ("boundary_low",)
    return ("semantic", "boundary_high", *low)


def check_maps_available(cfg: Config, where: str = "config") -> None:
    """Refuse a ``pseudo.maps`` that the source cannot provide, instead of silently running
    (and hashing) a different setting than the one asked for."""
    missing = [m for m in cfg.pseudo.maps if m not in provided_maps(cfg)]
    if missing:
        raise P2MInputError(
            f"{where}: key 'pseudo.maps' is {list(cfg.pseudo.maps)!r} but ablation.source "
            f"{cfg.ablation.source!r} (oracle_boundary_low={cfg.ablation.oracle_boundary_low!r}) provides no "
            f"{', '.join(missing)}; drop it from pseudo.maps or choose another source"
        )


__all__ = [
    "PreparedImage",
    "StageData",
    "batch_inputs",
    "check_maps_available",
    "image_count",
    "load_stage_data",
    "prepare_batches",
    "prepare_image",
    "provided_maps",
    "resolve_device",
]
