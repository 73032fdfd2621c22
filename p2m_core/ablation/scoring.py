"""Scoring pseudo masks against the ground truth, and the stage's result record.

A pseudo panoptic map (point index per mask pixel, -1 none) becomes segments (point i's pixels
-> one segment with the point's category; a stuff point owns its class's stuff segment), is
upsampled to the GT resolution by nearest neighbour (pixel (y, x) <- mask pixel (y // s, x // s))
and scored with :class:`~p2m_core.evaluation.panoptic_scores.PanopticScores` (PQ, SQ, RQ for all,
things, stuff, equal to panopticapi; mIoU over classes, void ignored), the evaluator the network
evaluator uses for its pseudo masks too. :class:`StageScorer` also keeps the solver diagnostics
of every image.

Metric units (docs/TRACKING.md): PQ/SQ/RQ, mIoU and pixel accuracy in percent, as the paper
reports them; ``disagreement_pct`` and ``k_violation_pct`` in percent of transported pixels;
marginal errors in pixels (the units of the marginals).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from p2m_core.ablation.prepare import PreparedImage
from p2m_core.evaluation import PanopticScores, owner_prediction
from p2m_core.evaluation.overlay import point_owner_map

def _nanmean(values: Iterable[float]) -> float | None:
    arr = np.array(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


class StageScorer:
    """Accumulates PQ, mIoU and per-image diagnostics over the images of one run: a
    :class:`~p2m_core.evaluation.PanopticScores` (the evaluator protocol the network evaluator
    shares) for the pseudo masks, plus the solver diagnostics of every image."""

    def __init__(self, dataset: Any, mask_stride: int) -> None:
        self.contiguous = dataset.contiguous_ids()
        self.mask_stride = int(mask_stride)
        self.scores = PanopticScores(dataset.categories, self.contiguous)
        self.per_image: list[dict] = []

    def process(self, labels: Any, batch: list[PreparedImage]) -> list[np.ndarray]:
        """Score one batch of :class:`~p2m_core.pseudo.labels.PseudoLabels`; returns each
        image's GT-resolution label map (point index, -1 none) for overlays."""
        panoptic = labels.panoptic.cpu().numpy()
        full_labels = []
        for b, item in enumerate(batch):
            pred_ids, pred_segments, pred_semantic, full = owner_prediction(
                panoptic[b], self.mask_stride, item.gt_ids.shape, item.category_ids.tolist(), item.labels)
            self.scores.process(item.record.image_id, item.gt_ids, item.gt_segments, pred_ids, pred_segments, pred_semantic)
            self.per_image.append(image_diagnostics(labels, b, item))
            full_labels.append(full)
        return full_labels

    def metrics(self) -> dict[str, float]:
        """PQ/SQ/RQ (all, things, stuff), mIoU and pixel accuracy, in percent."""
        return self.scores.evaluate()

    def diagnostics(self) -> dict[str, Any]:
        """Solver diagnostics over the images of OT runs (``None`` where they do not apply)."""
        ot = [d for d in self.per_image if d["is_ot"]]
        return {
            "disagreement_pct": _nanmean(100.0 * d["disagreement"] for d in ot),
            "k_violation_pct": _nanmean(100.0 * d["k_violation"] for d in ot),
            "row_error": _nanmean(d["row_error"] for d in ot),
            "col_error": _nanmean(d["col_error"] for d in ot),
            "max_col_error": max((d["col_error"] for d in ot if math.isfinite(d["col_error"])), default=None),
            "rel_error": _nanmean(d["rel_error"] for d in ot),
            "sinkhorn_iterations": _nanmean(d["iterations"] for d in ot),
            "converged_fraction": (sum(d["converged"] for d in ot) / len(ot)) if ot else None,
        }

    def counts(self) -> dict[str, int]:
        return {
            "images": len(self.per_image),
            "points": sum(d["points"] for d in self.per_image),
            "thing_points": sum(d["thing_points"] for d in self.per_image),
            "points_moved": sum(d["moved"] for d in self.per_image),
            "transported_pixels": sum(d["transported"] for d in self.per_image),
        }

    def pq_details(self) -> dict[str, Any]:
        pq = self.scores.pq.evaluate()
        return {"All": pq["All"], "Things": pq["Things"], "Stuff": pq["Stuff"], "per_class": pq["per_class"]}

    def per_class_iou(self) -> dict[int, float]:
        iou = self.scores.semantic.evaluate()["per_class_iou"]
        return {cid: iou[i] for cid, i in self.contiguous.items()}


def image_diagnostics(labels: Any, b: int, item: PreparedImage) -> dict:
    """One image's counts and solver diagnostics (NaN-valued OT fields for an MC run)."""
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


def gt_point_labels(item: PreparedImage) -> np.ndarray:
    """GT map coloured by point index (for overlays): segment of point i -> i, else -1."""
    return point_owner_map(item.gt_ids, item.segment_ids)
