"""The pseudo-label stage: one setting over one split -> metrics, diagnostics and overlays.

Point2Mask's pseudo labels depend on the task-oriented maps, the capacities k and the assignment
(paper Tables 3, 5, 6, 7). :func:`run_pseudo_stage` takes maps of known quality built from the
ground truth, or the maps of a frozen trained network (``ablation.source``), generates pseudo
labels with exactly the ``pseudo`` section of the config, and scores them against the ground
truth (docs/METHOD.md, "The pseudo-label ablation stage"). Everything it reads comes from one :class:`~p2m_core.config.Config`, and the
hash it records is :func:`~p2m_core.config.stage_hash` of that same config, so what is recorded
is what ran.

It does no argument parsing and runs no sweep: the command line and Ray Tune (``ray_jobs/``)
build the configs and call it once per setting.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from p2m_core.ablation.prepare import (
    batch_inputs,
    check_maps_available,
    image_count,
    load_stage_data,
    prepare_batches,
    resolve_device,
)
from p2m_core.ablation.scoring import StageScorer, gt_point_labels
from p2m_core.ablation.sources import require_available
from p2m_core.config import HASH_VERSION, Config, save_config, stage_hash
from p2m_core.io import PathLike, atomic_write_json, atomic_write_png, json_safe
from p2m_core.progress import Progress

METRICS_FORMAT = "p2m-pseudo-metrics/2"
STAGE = "pseudo"

log = logging.getLogger(__name__)


def check_pseudo_config(cfg: Config, where: str = "config") -> None:
    """The checks that need no data: the source exists, it provides the maps asked for.

    A sweep runs them on every trial's config before Ray starts."""
    require_available(cfg.ablation)
    check_maps_available(cfg, where)


def run_pseudo_stage(cfg: Config, out_dir: PathLike | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Generate pseudo labels for ``cfg.ablation.split`` from the source's maps and score them.

    Parameters
    ----------
    cfg : the whole config; the stage reads ``data`` (split files, ``point_seed``,
        ``edge_model``), ``pseudo`` (the algorithm) and ``ablation`` (map source, corruption,
        points, execution settings). Paths are used as given: make them absolute before
        handing the config to a Ray worker.
    out_dir : if given, receives ``metrics.json`` (the returned dict), ``config.yaml`` (the
        resolved config) and ``overlays/<image>.png`` for the first ``ablation.overlays`` images,
        each written atomically.
    progress : print ``done/total, s/image, ETA`` lines on stderr (command line); without it
        the stage logs one line at the end through :mod:`logging` (Ray workers).

    Returns
    -------
    The result record (format ``p2m-pseudo-metrics/2``): ``metrics`` (percent), ``diagnostics``,
    ``timings``, ``counts``, ``pq`` details, ``per_class_iou``, ``config_hash``, ``checkpoint``
    (file, content hash and network time per image of the ``checkpoint`` source, else ``None``),
    ... with NaN written as ``None``.
    """
    import torch

    from p2m_core.evaluation.overlay import overlay_panel
    from p2m_core.pseudo.labels import generate_pseudo_labels

    wall = time.perf_counter()
    check_pseudo_config(cfg)
    device = resolve_device(cfg.ablation.device)
    data = load_stage_data(cfg)
    network = None
    if cfg.ablation.source == "checkpoint":  # before any image: a mismatched checkpoint is refused here
        from p2m_core.ablation.network import CheckpointMaps

        network = CheckpointMaps.open(cfg, data.dataset, device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        save_config(cfg, out / "config.yaml")
    total = image_count(data, cfg)
    scorer = StageScorer(data.dataset, cfg.pseudo.mask_stride)
    stage_seconds: dict[str, float] = {}
    solve_seconds = 0.0
    bar = Progress(f"pseudo labels ({cfg.ablation.source})", total, progress)
    done = 0
    with torch.inference_mode():
        for batch in prepare_batches(data, cfg, fill=network):
            task_maps, point_sets = batch_inputs(batch, cfg, device)
            start = time.perf_counter()
            labels = generate_pseudo_labels(task_maps, point_sets, cfg.pseudo)
            solve_seconds += time.perf_counter() - start
            for name, seconds in labels.timings.items():
                stage_seconds[name] = stage_seconds.get(name, 0.0) + seconds
            full_labels = scorer.process(labels, batch)
            for item, full in zip(batch, full_labels):
                if out is not None and item.image is not None:
                    panel = overlay_panel(
                        item.image, full, item.points_yx, item.is_thing, gt_point_labels(item),
                        scale=max(1, 256 // max(item.gt_ids.shape)),
                    )
                    atomic_write_png(out / "overlays" / f"{Path(item.record.png_path).stem}.png", panel)
            done += len(batch)
            bar.update(done)
    n = max(done, 1)
    result = json_safe(
        {
            "format": METRICS_FORMAT,
            "stage": STAGE,
            "config_hash": stage_hash(cfg, STAGE),
            "hash_version": HASH_VERSION,
            "source": cfg.ablation.source,
            "dataset": {
                "kind": cfg.data.dataset,
                "root": str(cfg.data.root),
                "split": cfg.ablation.split,
                "panoptic_json": str(data.dataset.json_path),
                "points": data.points_source,
            },
            "checkpoint": None if network is None else network.record(),
            "metrics": scorer.metrics(),
            "diagnostics": scorer.diagnostics(),
            "timings": {
                "seconds_per_image": solve_seconds / n,
                "stage_seconds_per_image": {k: v / n for k, v in stage_seconds.items()},
                "wall_seconds": time.perf_counter() - wall,
                "device": device,
            },
            "counts": scorer.counts(),
            "pq": scorer.pq_details(),
            "per_class_iou": scorer.per_class_iou(),
            "resolution": {
                "mask_stride": cfg.pseudo.mask_stride,
                "graph_stride": cfg.pseudo.graph_stride,
                "scored_at": "ground-truth resolution (pseudo masks upsampled by nearest neighbour)",
            },
            "metric_units": "PQ/SQ/RQ, mIoU, pixel_acc, *_pct in percent; marginal errors in pixels",
        }
    )
    if out is not None:
        atomic_write_json(out / "metrics.json", result, indent=2)
    m = result["metrics"]
    log.info(
        "pseudo stage %s: %d images, PQ %.2f (th %.2f, st %.2f), %.3f s/image",
        result["config_hash"], done, m["PQ"] or 0.0, m["PQ_th"] or 0.0, m["PQ_st"] or 0.0, result["timings"]["seconds_per_image"],
    )
    return result
