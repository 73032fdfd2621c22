"""The pseudo-label ablation stage: score pseudo masks against the ground truth, no training.

Point2Mask's pseudo labels depend on the task-oriented maps, the capacities k and the
assignment (paper Tables 3, 5, 6, 7). Here the maps come from the ground truth
(:mod:`p2m_core.pseudo.oracle`: ``oracle``, ``oracle_corrupt``, ``image``), so every setting of
the ``pseudo`` config section can be compared in minutes on maps of known quality::

    python -m p2m_core.pseudo.evaluate --data-root data/synthetic --split val \\
        --source oracle_corrupt --out runs/ablation [--config experiments/X.yaml] \\
        [--set pseudo.k_scheme=nearest_point] [--set ablation.semantic_blur_sigma=2] \\
        [--max-images N] [--overlays N] [--batch-size B] [--device cpu|cuda|auto] [--threads N]
        [--sweep]

What one run does, per image:

1. read the GT panoptic map and the image's points (the point file ``points_<split>.json``;
   sampled with ``data.point_seed`` when there is none);
2. build the maps at mask resolution ``ceil(H / s) x ceil(W / s)``, ``s = pseudo.mask_stride``
   (the resolution the reference predicts masks at): GT ids downsampled by nearest neighbour at
   block centres, each point moved to ``(y // s, x // s)`` and, if that mask pixel is not on its
   own segment, to the nearest mask pixel that is (``points_moved`` counts them);
3. make the semantic map cost-ready as the training loop does
   (:func:`p2m_core.pseudo.maps.semantic_cost_map`: classes without a point zeroed, points
   forced to their class on a square of side ``pseudo.point_dilation`` *input* pixels, i.e. the
   odd number nearest to ``point_dilation / s`` mask pixels; void pixels of the oracle keep
   no class evidence); ``--set source.cost_ready=false`` skips this;
4. run :func:`p2m_core.pseudo.generate_pseudo_labels` on batches of equal-sized images;
5. turn the pseudo panoptic map into segments (pixels of point i -> segment ``i + 1`` with the
   point's category; a stuff point owns its class's stuff segment), upsample it to the GT
   resolution by nearest neighbour (pixel (y, x) <- mask pixel (y // s, x // s)) and score it with
   :class:`~p2m_core.evaluation.PQAccumulator` (PQ, SQ, RQ for all, things, stuff, exactly as
   panopticapi) and :class:`~p2m_core.evaluation.SemanticIoU` (mIoU over classes, void ignored).

``OUT/metrics.json`` (written atomically) holds the metrics as fractions (not percent), the
solver diagnostics averaged over images (OT-vs-MC disagreement, marginal errors, k violation,
iterations, seconds per image), the resolved ``pseudo`` section, the map-source settings, and
the config hash of :func:`p2m_core.config.resolve` plus a ``run_hash`` that also covers the
source settings. ``OUT/overlays/`` holds PNGs ``[image + points | pseudo masks | GT]`` of the
first ``--overlays`` images. ``--sweep`` runs :data:`SWEEP_SETTINGS` on the same maps, writes
each run under ``OUT/<setting>/`` and prints a Markdown table (:func:`markdown_table`).

Config keys: ``pseudo.*``, ``data.*`` (every section of :class:`p2m_core.config.Config`) plus
two sections of this stage, ``source.*`` (:class:`~p2m_core.pseudo.oracle.SourceConfig`) and
``ablation.*`` (:class:`~p2m_core.pseudo.oracle.CorruptionConfig`), accepted in the YAML file and
in ``--set``; unknown keys are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.config import (
    Config,
    PseudoConfig,
    apply_overrides,
    from_dict,
    load_raw,
    parse_override,
    resolve,
)
from p2m_core.data.panoptic_format import CocoPanoptic, PanopticRecord
from p2m_core.errors import P2MInputError
from p2m_core.progress import Progress
from p2m_core.io import PathLike, atomic_write_json, atomic_write_png, atomic_write_text
from p2m_core.pseudo.oracle import (
    CorruptionConfig,
    ImageMaps,
    MapSource,
    SourceConfig,
    build_image_maps,
    downsample_ids,
    mask_size,
    max_pool,
    parse_source,
    require_available,
    stack_image_maps,
    upsample_nearest,
)

METRICS_FORMAT = "p2m-pseudo-metrics/1"
STAGE_SECTIONS = ("ablation", "source")

#: The settings of ``--sweep`` / ``make demo``: (name, ``--set`` overrides on top of the run's).
SWEEP_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mc", ("pseudo.assignment=mc",)),
    *(
        (f"ot_{mode}_{scheme}", ("pseudo.assignment=ot", f"pseudo.sinkhorn_mode={mode}", f"pseudo.k_scheme={scheme}"))
        for mode in ("reference", "converged")
        for scheme in ("nearest_centroid", "nearest_point", "equal_division")
    ),
)

TABLE_COLUMNS = (
    ("PQ", "PQ", 100.0, "{:.1f}"),
    ("PQ_th", "PQ_th", 100.0, "{:.1f}"),
    ("PQ_st", "PQ_st", 100.0, "{:.1f}"),
    ("mIoU", "mIoU", 100.0, "{:.1f}"),
    ("OT-vs-MC disagreement %", "ot_mc_disagreement", 100.0, "{:.2f}"),
    ("col marginal error", "col_error", 1.0, "{:.3f}"),
    ("k violation %", "k_violation", 100.0, "{:.2f}"),
    ("s/image", "seconds_per_image", 1.0, "{:.3f}"),
)


# --------------------------------------------------------------------------- configuration
@dataclass
class StageConfig:
    """The sections of this stage that :class:`p2m_core.config.Config` does not have."""

    ablation: CorruptionConfig = field(default_factory=CorruptionConfig)
    source: SourceConfig = field(default_factory=SourceConfig)


def _is_stage_key(text: str) -> bool:
    keys, _ = parse_override(text)
    return keys[0] in STAGE_SECTIONS


def load_stage_config(path: PathLike | None, overrides: Sequence[str] = ()) -> tuple[Config, StageConfig]:
    """Load ``--config`` and ``--set`` into the platform config and this stage's sections.

    ``ablation`` and ``source`` (in the YAML or as ``--set ablation.x=...``) build a
    :class:`StageConfig`; everything else goes through :mod:`p2m_core.config` exactly as
    :func:`p2m_core.config.load_config` does, so an unknown key of either part is a
    :class:`P2MInputError` naming the key, its source and the accepted keys.
    """
    sources: dict[str, str] = {}
    raw = load_raw(path, sources) if path is not None else {}
    stage_raw = {key: raw.pop(key) for key in STAGE_SECTIONS if key in raw}
    stage_over = [o for o in overrides if _is_stage_key(o)]
    core_over = [o for o in overrides if not _is_stage_key(o)]
    cfg = from_dict(apply_overrides(raw, core_over, sources), sources)
    stage = from_dict(apply_overrides(stage_raw, stage_over, sources), sources, cls=StageConfig)
    stage.ablation.validate()
    return cfg, stage


def run_hash(config_hash: str, source: MapSource, stage: StageConfig) -> str:
    """16 hex digits over the config hash, the map source and the stage settings that apply."""
    payload = {"config": config_hash, "source": str(source), "source_cfg": dataclasses.asdict(stage.source)}
    if source.kind == "oracle_corrupt":
        payload["ablation"] = dataclasses.asdict(stage.ablation)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataPaths:
    """Files of one split; ``points`` may not exist (then points are sampled)."""

    panoptic_json: Path
    panoptic_dir: Path
    images_dir: Path | None
    points: Path | None


def split_paths(
    cfg: Config,
    data_root: PathLike | None,
    split: str,
    panoptic_json: PathLike | None = None,
    panoptic_dir: PathLike | None = None,
    images_dir: PathLike | None = None,
    points: PathLike | None = None,
) -> DataPaths:
    """Paths of ``split`` under ``data_root`` (default ``data.root``), explicit paths winning.

    ``train``/``val`` use ``data.<split>`` of the config; any other split name uses COCO's
    convention ``panoptic_<split>.json``, ``panoptic_<split>/``, ``images/<split>/``,
    ``points_<split>.json``. Explicit paths are used as given (not joined to the root).
    """
    root = Path(data_root if data_root is not None else cfg.data.root)
    if split in ("train", "val"):
        sc = getattr(cfg.data, split)
        names = (sc.json, sc.panoptic, sc.images, sc.points)
    else:
        names = (f"panoptic_{split}.json", f"panoptic_{split}", f"images/{split}", f"points_{split}.json")
    json_path = Path(panoptic_json) if panoptic_json else root / names[0]
    png_dir = Path(panoptic_dir) if panoptic_dir else (root / names[1] if names[1] else json_path.with_suffix(""))
    img_dir = Path(images_dir) if images_dir else (root / names[2] if names[2] else None)
    pts = Path(points) if points else (root / names[3] if names[3] else None)
    return DataPaths(json_path, png_dir, img_dir, pts)


def load_split(paths: DataPaths, point_seed: int, explicit_points: bool = False) -> tuple[CocoPanoptic, dict, str]:
    """The dataset, its point labels and where they came from (the file, or ``sampled``).

    A missing point file is sampled with ``point_seed`` (one uniform point per segment, as
    :mod:`p2m_core.data.points` does), unless it was named explicitly: then it is an error.
    """
    from p2m_core.data.points import load_points, sample_points

    image_dir = paths.images_dir if paths.images_dir is not None and paths.images_dir.is_dir() else None
    dataset = CocoPanoptic(paths.panoptic_json, image_dir=image_dir, png_dir=paths.panoptic_dir)
    if paths.points is not None and (paths.points.is_file() or explicit_points):
        return dataset, load_points(paths.points), str(paths.points)
    return dataset, sample_points(dataset, point_seed), f"sampled (seed {point_seed})"


# --------------------------------------------------------------------------- one image
@dataclass
class PreparedImage:
    """Everything the stage needs of one image (see the module doc for the resolutions).

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


def _points_of(entry: dict, record: PanopticRecord, dataset: CocoPanoptic, source: str) -> list[dict]:
    where = f"{source}: image {record.image_id!r}"
    if entry["file_name"] != record.png_path.name:
        raise P2MInputError(f"{where}: file_name {entry['file_name']!r} does not match the panoptic PNG {record.png_path.name!r}")
    segments = {s.id: s for s in record.segments}
    for i, point in enumerate(entry["points"]):
        seg = segments.get(int(point["segment_id"]))
        if seg is None:
            raise P2MInputError(f"{where}: points[{i}] names segment {point['segment_id']}, which is not in segments_info")
        if seg.category_id != int(point["category_id"]):
            raise P2MInputError(f"{where}: points[{i}] has category_id {point['category_id']} but segment {seg.id} has {seg.category_id}")
    return entry["points"]


def _snap(mask_yx: np.ndarray, segment_ids: np.ndarray, mask_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Move points off their segment (at mask resolution) to its nearest mask pixel, if any."""
    from p2m_core.data.transforms import snap_points_to_segments

    if len(mask_yx) == 0:
        return mask_yx, 0
    snapped, _ = snap_points_to_segments(mask_yx, segment_ids, mask_ids)
    moved = int((snapped != mask_yx).any(axis=1).sum())
    return snapped, moved


def prepare_image(
    dataset: CocoPanoptic,
    index: int,
    entry: dict,
    points_source: str,
    source: MapSource,
    stage: StageConfig,
    mask_stride: int,
    edge_model: str = "",
    keep_image: bool = False,
) -> PreparedImage:
    """Load one image's GT and points and build its maps at mask resolution."""
    from p2m_core.data.edges import low_level_edges

    record = dataset.records[index]
    gt_ids = dataset.load_segment_ids(record)
    height, width = gt_ids.shape
    contiguous = dataset.contiguous_ids()
    points = _points_of(entry, record, dataset, points_source)
    points_yx = np.array([[p["y"], p["x"]] for p in points], dtype=np.int64).reshape(-1, 2)
    category_ids = np.array([p["category_id"] for p in points], dtype=np.int64)
    segment_ids = np.array([p["segment_id"] for p in points], dtype=np.int64)
    labels = np.array([contiguous[c] for c in category_ids.tolist()], dtype=np.int64)
    is_thing = np.array([dataset.categories[c].isthing for c in category_ids.tolist()], dtype=bool)

    mask_ids = downsample_ids(gt_ids, mask_stride)
    h, w = mask_size(height, width, mask_stride)
    mask_yx = np.stack([np.minimum(points_yx[:, 0] // mask_stride, h - 1), np.minimum(points_yx[:, 1] // mask_stride, w - 1)], 1)
    mask_yx, moved = _snap(mask_yx.reshape(-1, 2), segment_ids, mask_ids)

    needs_edges = source.kind == "image" or stage.source.oracle_boundary_low == "edges"
    image = None
    if needs_edges or keep_image:
        if needs_edges or record.image_path.is_file():
            image = dataset.load_image(record)
        else:  # overlays without the RGB images: draw on grey
            image = np.full((height, width, 3), 128, dtype=np.uint8)
        if image.shape[:2] != (height, width):
            raise P2MInputError(f"image {record.image_path} is {image.shape[:2]} but its panoptic PNG is {(height, width)}")
    edges = max_pool(low_level_edges(image, edge_model or None), mask_stride) if needs_edges else None
    class_of_segment = {s.id: contiguous[s.category_id] for s in record.segments}
    maps = build_image_maps(
        source, mask_ids, class_of_segment, len(contiguous), edges=edges, source_cfg=stage.source,
        corruption=stage.ablation, image_id=record.image_id,
    )
    gt_segments = []
    for s in record.segments:
        seg = {"id": s.id, "category_id": s.category_id, "iscrowd": int(s.iscrowd)}
        if s.area is not None:
            seg["area"] = s.area
        gt_segments.append(seg)
    return PreparedImage(
        index, record, gt_ids, gt_segments, points_yx, mask_yx.astype(np.int64), labels, category_ids, is_thing,
        segment_ids, moved, maps, image if keep_image else None,
    )


def prepare_batches(
    dataset: CocoPanoptic,
    points: dict,
    source: MapSource,
    stage: StageConfig,
    mask_stride: int,
    *,
    points_source: str = "points",
    edge_model: str = "",
    batch_size: int = 8,
    max_images: int | None = None,
    keep_images: int = 0,
) -> Iterator[list[PreparedImage]]:
    """Prepared images grouped into batches of equal mask size (streaming, dataset order).

    Images of one size are buffered until ``batch_size`` of them are ready; leftovers are
    flushed at the end in order of first appearance. The first ``keep_images`` images keep
    their RGB array (for overlays).
    """
    require_available(source)
    if batch_size < 1:
        raise P2MInputError(f"--batch-size must be >= 1, got {batch_size}")
    by_id = {entry["image_id"]: entry for entry in points["images"]}
    count = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    buffers: dict[tuple[int, int], list[PreparedImage]] = {}
    for index in range(count):
        record = dataset.records[index]
        entry = by_id.get(record.image_id)
        if entry is None:
            raise P2MInputError(f"{points_source}: no points for image id {record.image_id!r} ({record.png_path.name})")
        item = prepare_image(
            dataset, index, entry, points_source, source, stage, mask_stride, edge_model, keep_image=index < keep_images
        )
        bucket = buffers.setdefault(item.mask_shape, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield buffers.pop(item.mask_shape)
    for bucket in buffers.values():
        if bucket:
            yield bucket


# --------------------------------------------------------------------------- batches -> labels
def _dilation_at_mask(point_dilation: int, mask_stride: int) -> int:
    """The odd side (mask pixels) nearest to ``point_dilation / mask_stride`` (input pixels)."""
    side = point_dilation / mask_stride
    odd = 2 * math.floor((side - 1) / 2 + 0.5) + 1
    return max(1, int(odd))


def batch_inputs(batch: Sequence[PreparedImage], pseudo_cfg: PseudoConfig, stage: StageConfig, device: Any = "cpu"):
    """``(TaskMaps, [PointSet])`` of a batch, on ``device``, semantic made cost-ready (module doc)."""
    import torch

    from p2m_core.pseudo.maps import PointSet, TaskMaps, semantic_cost_map

    stacked = stack_image_maps([item.maps for item in batch])
    semantic = torch.from_numpy(stacked["semantic"]).to(device)
    point_sets = [
        PointSet(
            torch.from_numpy(item.mask_yx).to(device),
            torch.from_numpy(item.labels).to(device),
            torch.from_numpy(item.is_thing).to(device),
        )
        for item in batch
    ]
    if stage.source.cost_ready:
        # Logits whose softmax is P^s, with an extra "no evidence" channel that takes the mass of
        # all-zero (void) pixels; it has no point, so semantic_cost_map zeroes it, and dropping
        # it leaves those pixels at zero except where a point square covers them.
        mass = semantic.sum(1, keepdim=True)
        logits = torch.log(torch.cat([semantic, (mass <= 0).float()], 1).clamp_min(1e-30))
        dilation = _dilation_at_mask(pseudo_cfg.point_dilation, pseudo_cfg.mask_stride)
        semantic = semantic_cost_map(logits, point_sets, dilation=dilation)[:, :-1].contiguous()

    def boundary(name: str):
        value = stacked[name]
        return None if value is None else torch.from_numpy(value).to(device)

    return TaskMaps(semantic, boundary("boundary_high"), boundary("boundary_low")), point_sets


def available_maps(pseudo_cfg: PseudoConfig, batch: Sequence[PreparedImage]) -> list[str]:
    """``pseudo.maps`` less the boundary maps this source does not provide (e.g. ``image``
    has no ``boundary_high``): the stage ablates what the source has, and says so in the JSON."""
    stacked_has = {
        "boundary_high": all(item.maps.boundary_high is not None for item in batch),
        "boundary_low": all(item.maps.boundary_low is not None for item in batch),
    }
    return [m for m in pseudo_cfg.maps if m == "semantic" or stacked_has.get(m, False)]


# --------------------------------------------------------------------------- scoring
def pseudo_segments(mask_labels: np.ndarray, item: PreparedImage, mask_stride: int) -> tuple[np.ndarray, list[dict]]:
    """Pseudo panoptic map (point index, -1 none) at mask resolution -> GT-resolution ids and
    segments: point i's pixels form segment ``i + 1`` with the point's category (0 = void)."""
    height, width = item.gt_ids.shape
    full = upsample_nearest(mask_labels, mask_stride, height, width)
    pred_ids = (full + 1).astype(np.int64)
    present = np.unique(full)
    segments = [{"id": int(i) + 1, "category_id": int(item.category_ids[i])} for i in present.tolist() if i >= 0]
    return pred_ids, segments


def _nanmean(values: Iterable[float]) -> float | None:
    arr = np.array([v for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, keys -> str: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _gt_point_labels(item: PreparedImage) -> np.ndarray:
    """GT map coloured by point index (for overlays): segment of point i -> i, else -1."""
    lookup = {int(s): i for i, s in enumerate(item.segment_ids.tolist())}
    present, inverse = np.unique(item.gt_ids, return_inverse=True)
    table = np.array([lookup.get(int(v), -1) for v in present.tolist()], dtype=np.int64)
    return table[inverse.reshape(item.gt_ids.shape)]


def evaluate_pseudo_labels(
    dataset: CocoPanoptic,
    points: dict,
    pseudo_cfg: PseudoConfig,
    source: str | MapSource,
    *,
    stage: StageConfig | None = None,
    config: Config | None = None,
    batches: Iterable[Sequence[PreparedImage]] | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    overlays: int = 0,
    out_dir: PathLike | None = None,
    device: Any = "cpu",
    edge_model: str = "",
    points_source: str = "points",
    progress: bool = False,
) -> dict:
    """Generate pseudo labels for ``dataset`` from GT-derived maps and score them.

    Parameters
    ----------
    dataset, points : the split and its point labels (``p2m-points/1`` dict).
    pseudo_cfg : the ``pseudo`` section used for :func:`generate_pseudo_labels`.
    source : ``oracle`` | ``oracle_corrupt`` | ``image`` | ``checkpoint:PATH`` (not yet).
    stage : ``source.*`` and ``ablation.*`` settings (defaults when ``None``).
    config : the full config, hashed into the result; default ``Config(pseudo=pseudo_cfg)``.
    batches : already prepared batches (:func:`prepare_batches`) to reuse across settings; they
        must have been built with ``pseudo_cfg.mask_stride`` and ``source``.
    overlays : number of leading images drawn to ``out_dir/overlays`` (needs ``out_dir``).
    out_dir : if given, ``metrics.json`` (and overlays) are written there.
    device : torch device of the maps and the solver.

    Returns
    -------
    The metrics dict written to ``metrics.json`` (module doc; keys ``metrics``, ``diagnostics``,
    ``counts``, ``pq``, ``pseudo``, ``config_hash``, ...).
    """
    from p2m_core.evaluation import PQAccumulator, SemanticIoU, panoptic_to_semantic
    from p2m_core.pseudo.labels import generate_pseudo_labels
    from p2m_core.pseudo.overlay import overlay_panel

    source = parse_source(source) if isinstance(source, str) else source
    require_available(source)
    stage = stage or StageConfig()
    config = config or Config(pseudo=pseudo_cfg)
    stride = int(pseudo_cfg.mask_stride)
    if stride < 1:
        raise P2MInputError(f"pseudo.mask_stride must be >= 1, got {stride}")
    if overlays and out_dir is None:
        raise P2MInputError("overlays need an output folder")
    if batches is None:
        batches = prepare_batches(
            dataset, points, source, stage, stride, points_source=points_source, edge_model=edge_model,
            batch_size=batch_size, max_images=max_images, keep_images=overlays,
        )
    total = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    contiguous = dataset.contiguous_ids()
    pq = PQAccumulator(dataset.categories)
    miou = SemanticIoU(len(contiguous), ignore_index=-1)
    per_image: list[dict] = []
    stage_seconds: dict[str, float] = {}
    solve_seconds = 0.0
    maps_used: list[str] | None = None
    bar = Progress(f"pseudo labels ({source})", total, progress)
    wall = time.perf_counter()
    done = 0
    for batch in batches:
        used = available_maps(pseudo_cfg, batch)
        if maps_used is None:
            maps_used = used
            if used != list(pseudo_cfg.maps):
                warnings.warn(
                    f"map source {source} has no {sorted(set(pseudo_cfg.maps) - set(used))}: "
                    f"pseudo labels use maps {used} (recorded as 'maps_used')",
                    stacklevel=2,
                )
        run_cfg = dataclasses.replace(pseudo_cfg, maps=used)
        task_maps, point_sets = batch_inputs(batch, run_cfg, stage, device)
        start = time.perf_counter()
        labels = generate_pseudo_labels(task_maps, point_sets, run_cfg)
        solve_seconds += time.perf_counter() - start
        for name, seconds in labels.timings.items():
            stage_seconds[name] = stage_seconds.get(name, 0.0) + seconds
        panoptic = labels.panoptic.cpu().numpy()
        for b, item in enumerate(batch):
            pred_ids, pred_segments = pseudo_segments(panoptic[b], item, stride)
            pq.process(item.gt_ids, item.gt_segments, pred_ids, pred_segments, image_id=item.record.image_id)
            gt_sem = panoptic_to_semantic(item.gt_ids, item.gt_segments, contiguous, ignore_index=-1)
            pred_sem = np.where(pred_ids > 0, item.labels[np.maximum(pred_ids - 1, 0)] if len(item.labels) else -1, -1)
            miou.process(gt_sem, pred_sem)
            per_image.append(_image_diagnostics(labels, b, item))
            if out_dir is not None and item.index < overlays and item.image is not None:
                panel = overlay_panel(
                    item.image, pred_ids - 1, item.points_yx, item.is_thing, _gt_point_labels(item),
                    scale=max(1, 256 // max(item.gt_ids.shape)),
                )
                atomic_write_png(Path(out_dir) / "overlays" / f"{Path(item.record.png_path).stem}.png", panel)
            done += 1
        bar.update(done)
    wall = time.perf_counter() - wall

    result = _assemble(
        pq.evaluate(), miou.evaluate(), per_image, source, stage, config, pseudo_cfg, maps_used,
        solve_seconds, stage_seconds, wall, dataset,
    )
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", result, indent=2)
    return result


def _image_diagnostics(labels: Any, b: int, item: PreparedImage) -> dict:
    transported = int(labels.transported[b].sum())
    k = labels.k[b].cpu().numpy()
    counts = labels.counts[b].cpu().numpy()
    is_ot = not math.isnan(float(labels.disagreement[b]))
    return {
        "points": len(item.labels),
        "thing_points": int(item.is_thing.sum()),
        "moved": item.moved,
        "transported": transported,
        "disagreement": float(labels.disagreement[b]),
        "row_error": float(labels.row_error[b]),
        "col_error": float(labels.col_error[b]),
        "rel_error": float(labels.rel_error[b]),
        "iterations": int(labels.iterations[b]),
        "converged": bool(labels.converged[b]),
        # share of transported pixels that would have to change owner for the masks to match k
        "k_violation": float(np.abs(counts - k).sum() / 2 / transported) if is_ot and transported else float("nan"),
        "is_ot": is_ot,
    }


def _assemble(
    pq: dict, sem: dict, per_image: list[dict], source: MapSource, stage: StageConfig, config: Config,
    pseudo_cfg: PseudoConfig, maps_used: list[str] | None, solve_seconds: float, stage_seconds: dict,
    wall: float, dataset: CocoPanoptic,
) -> dict:
    n = len(per_image)
    metrics = {}
    for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for key in ("pq", "sq", "rq"):
            metrics[f"{key.upper()}{suffix}"] = pq[group][key]
    metrics["mIoU"] = sem["mIoU"]
    metrics["pixel_acc"] = sem["pixel_acc"]
    ot_images = [d for d in per_image if d["is_ot"]]
    diagnostics = {
        "ot_mc_disagreement": _nanmean(d["disagreement"] for d in ot_images),
        "row_error": _nanmean(d["row_error"] for d in ot_images),
        "col_error": _nanmean(d["col_error"] for d in ot_images),
        "rel_error": _nanmean(d["rel_error"] for d in ot_images),
        "max_col_error": max((d["col_error"] for d in ot_images if math.isfinite(d["col_error"])), default=None),
        "k_violation": _nanmean(d["k_violation"] for d in ot_images),
        "iterations": _nanmean(d["iterations"] for d in ot_images),
        "converged_fraction": (sum(d["converged"] for d in ot_images) / len(ot_images)) if ot_images else None,
        "seconds_per_image": solve_seconds / n if n else None,
        "stage_seconds_per_image": {k: v / n for k, v in stage_seconds.items()} if n else {},
        "wall_seconds": wall,
    }
    resolved = resolve(config)
    run_pseudo = dataclasses.asdict(pseudo_cfg)
    return _clean(
        {
            "format": METRICS_FORMAT,
            "source": str(source),
            "metrics": metrics,
            "diagnostics": diagnostics,
            "counts": {
                "images": n,
                "points": sum(d["points"] for d in per_image),
                "thing_points": sum(d["thing_points"] for d in per_image),
                "points_moved": sum(d["moved"] for d in per_image),
                "transported_pixels": sum(d["transported"] for d in per_image),
            },
            "pq": {"All": pq["All"], "Things": pq["Things"], "Stuff": pq["Stuff"], "per_class": pq["per_class"]},
            "per_class_iou": {
                cid: sem["per_class_iou"][i] for cid, i in dataset.contiguous_ids().items()
            },
            "pseudo": run_pseudo,
            "maps_used": maps_used if maps_used is not None else list(pseudo_cfg.maps),
            "source_config": dataclasses.asdict(stage.source),
            "ablation": dataclasses.asdict(stage.ablation) if source.kind == "oracle_corrupt" else None,
            "resolution": {
                "mask_stride": pseudo_cfg.mask_stride,
                "graph_stride": pseudo_cfg.graph_stride,
                "scored_at": "ground-truth resolution (pseudo masks upsampled by nearest neighbour)",
            },
            "config_hash": resolved.hash,
            "run_hash": run_hash(resolved.hash, source, stage),
            "metric_units": "fractions in [0, 1] (PQ 0.5 = 50 %)",
        }
    )


# --------------------------------------------------------------------------- tables and sweeps
def markdown_table(results: Mapping[str, Mapping[str, Any]] | Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A Markdown table, one row per named metrics dict (as :func:`evaluate_pseudo_labels` returns).

    Columns: PQ, PQ_th, PQ_st, mIoU (percent), OT-vs-MC disagreement (percent of transported
    pixels), column marginal error (max over pixels, mean over images), k violation (percent of
    transported pixels), seconds per image of :func:`generate_pseudo_labels`. ``-`` where a
    value does not apply (e.g. disagreement of an ``mc`` run).
    """
    rows = list(results.items()) if isinstance(results, Mapping) else list(results)
    header = "| setting | " + " | ".join(title for title, *_ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for name, result in rows:
        cells = []
        for _, key, scale, fmt in TABLE_COLUMNS:
            value = result.get("metrics", {}).get(key, result.get("diagnostics", {}).get(key))
            cells.append("-" if value is None else fmt.format(value * scale))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(
    dataset: CocoPanoptic,
    points: dict,
    config_path: PathLike | None,
    overrides: Sequence[str],
    source: str | MapSource,
    out_dir: PathLike,
    *,
    settings: Sequence[tuple[str, Sequence[str]]] = SWEEP_SETTINGS,
    batch_size: int = 8,
    max_images: int | None = None,
    overlays: int = 0,
    device: Any = "cpu",
    points_source: str = "points",
    progress: bool = False,
) -> dict[str, dict]:
    """Run every setting on the same maps; ``out_dir/<name>/metrics.json`` each, and
    ``out_dir/summary.md`` + ``out_dir/summary.json`` with the table. Returns name -> metrics.

    The maps are built once (they depend on the source, ``source.*``, ``ablation.*`` and
    ``pseudo.mask_stride``, which no setting may change) and reused by every setting.
    """
    source = parse_source(source) if isinstance(source, str) else source
    require_available(source)
    base_cfg, stage = load_stage_config(config_path, overrides)
    cfgs = {name: load_stage_config(config_path, [*overrides, *extra])[0] for name, extra in settings}
    for name, cfg in cfgs.items():
        if cfg.pseudo.mask_stride != base_cfg.pseudo.mask_stride:
            raise P2MInputError(f"sweep setting {name!r} changes pseudo.mask_stride; the maps are shared")
    batches = list(
        prepare_batches(
            dataset, points, source, stage, base_cfg.pseudo.mask_stride, points_source=points_source,
            edge_model=base_cfg.data.edge_model, batch_size=batch_size, max_images=max_images, keep_images=overlays,
        )
    )
    results: dict[str, dict] = {}
    out_dir = Path(out_dir)
    for name, cfg in cfgs.items():
        start = time.perf_counter()
        results[name] = evaluate_pseudo_labels(
            dataset, points, cfg.pseudo, source, stage=stage, config=cfg, batches=batches,
            max_images=max_images, overlays=overlays, out_dir=out_dir / name, device=device,
        )
        if progress:
            m = results[name]["metrics"]
            print(f"sweep {name}: PQ {100 * m['PQ']:.1f} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    table = markdown_table(results)
    atomic_write_json(out_dir / "summary.json", results, indent=2)
    atomic_write_text(out_dir / "summary.md", table + "\n")
    return results


# --------------------------------------------------------------------------- command line
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise P2MInputError("--device cuda: CUDA is not available")
    return name


def build_parser() -> argparse.ArgumentParser:
    from p2m_core.config import add_config_arguments

    p = argparse.ArgumentParser(
        prog="python -m p2m_core.pseudo.evaluate",
        description="Score pseudo labels made from ground-truth maps (the ablation stage, no training).",
    )
    p.add_argument("--data-root", default=None, help="dataset root (default: data.root of the config)")
    p.add_argument("--split", default="val", help="split name (default %(default)s)")
    p.add_argument("--panoptic-json", default=None, help="panoptic JSON (default <root>/panoptic_<split>.json)")
    p.add_argument("--panoptic-dir", default=None, help="panoptic PNG folder (default <root>/panoptic_<split>)")
    p.add_argument("--images-dir", default=None, help="RGB image folder (default <root>/images/<split>)")
    p.add_argument("--points", default=None, help="point-label JSON (default <root>/points_<split>.json; sampled if absent)")
    p.add_argument("--source", required=True, help="oracle | oracle_corrupt | image | checkpoint:PATH")
    p.add_argument("--out", required=True, help="output folder (metrics.json, overlays/)")
    add_config_arguments(p)
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--overlays", type=int, default=4, help="PNG overlays of the first N images (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate_pseudo_labels call")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="torch device (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--sweep", action="store_true", help="run mc vs ot (both Sinkhorn modes) x the three k schemes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        source = parse_source(args.source)
        require_available(source)
        cfg, stage = load_stage_config(args.config, args.overrides)
        paths = split_paths(cfg, args.data_root, args.split, args.panoptic_json, args.panoptic_dir, args.images_dir, args.points)
        dataset, points, points_source = load_split(paths, cfg.data.point_seed, explicit_points=args.points is not None)
        device = _device(args.device)
        if args.threads is not None:
            if args.threads < 1:
                raise P2MInputError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        out = Path(args.out)
        if args.sweep:
            results = run_sweep(
                dataset, points, args.config, args.overrides, source, out, batch_size=args.batch_size,
                max_images=args.max_images, overlays=args.overlays, device=device, points_source=points_source,
                progress=not args.quiet,
            )
            print(markdown_table(results))
            print(f"\nmetrics: {out}/<setting>/metrics.json; overlays: {out}/<setting>/overlays/", file=sys.stderr)
            return 0
        result = evaluate_pseudo_labels(
            dataset, points, cfg.pseudo, source, stage=stage, config=cfg, batch_size=args.batch_size,
            max_images=args.max_images, overlays=args.overlays, out_dir=out, device=device,
            edge_model=cfg.data.edge_model, points_source=points_source, progress=not args.quiet,
        )
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table([(f"{source} / {cfg.pseudo.assignment}", result)]))
    print(f"\nwrote {out / 'metrics.json'}" + (f" and overlays in {out / 'overlays'}" if args.overlays else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
