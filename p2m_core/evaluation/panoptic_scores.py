"""One evaluator for every panoptic output the platform scores: a network's predictions and
pseudo masks alike.

detectron2's protocol, mergeable across workers: :meth:`PanopticScores.reset`,
:meth:`PanopticScores.process` per image, :meth:`PanopticScores.evaluate` at the end, and
:meth:`PanopticScores.merge` to add another's images (a worker's shard, a second pass). It holds a
:class:`~p2m_core.evaluation.PQAccumulator` (PQ, SQ, RQ for all, things and stuff, equal to
panopticapi) and a :class:`~p2m_core.evaluation.SemanticIoU` (mIoU and pixel accuracy over the
dataset's classes, void ignored), and reports both in percent, the paper's unit.

Pseudo masks arrive as a map of point indices on the mask grid (``-1``: no owner);
:func:`owner_prediction` turns one into what :meth:`PanopticScores.process` scores: the map taken
to the ground truth's size (nearest neighbour, :func:`~p2m_core.evaluation.upsample_nearest`, then
:func:`~p2m_core.data.transforms.resize_nearest` when the image was resized before the network
saw it), one segment per owning point (a stuff point owns its class's segment) and the point's
class per pixel. The pseudo-label stage and the network evaluator both go through it, so a pseudo
mask is scored the same way wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2m_core.data.transforms import resize_nearest
from p2m_core.evaluation.panoptic_quality import PQAccumulator
from p2m_core.evaluation.semantic import SemanticIoU, panoptic_to_semantic
from p2m_core.evaluation.writer import segments_from_labels, upsample_nearest

GROUPS = (("", "All"), ("_th", "Things"), ("_st", "Stuff"))


class PanopticScores:
    """PQ/SQ/RQ (all, things, stuff), mIoU and pixel accuracy of panoptic outputs (module doc).

    Parameters
    ----------
    categories : the dataset's categories (``{category_id: Category}`` of
        :class:`~p2m_core.data.panoptic_format.CocoPanoptic`, or what ``PQAccumulator`` takes).
    contiguous : ``{category_id: class index}`` (:meth:`CocoPanoptic.contiguous_ids`), the class
        axis of the semantic scores.
    """

    def __init__(self, categories: Any, contiguous: Mapping[Any, int]) -> None:
        self.categories = categories
        self.contiguous = dict(contiguous)
        self.pq = PQAccumulator(categories)
        self.semantic = SemanticIoU(len(self.contiguous), ignore_index=-1)

    def reset(self) -> None:
        self.pq.reset()
        self.semantic.reset()

    def process(
        self, image_id: Any, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]], pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]], pred_semantic: np.ndarray | None = None,
    ) -> None:
        """Score one image: ground truth ``gt_ids`` [H, W] (0 void) with its segments (``id``,
        ``category_id``, ``iscrowd``), the prediction ``pred_ids`` [H, W] with its segments (``id``,
        ``category_id``), and the predicted class per pixel ``pred_semantic`` [H, W] (class index,
        -1 none) when there is one."""
        gt_segments = [{k: s[k] for k in ("id", "category_id", "iscrowd")} for s in gt_segments]
        self.pq.process(gt_ids, gt_segments, pred_ids, pred_segments, image_id=image_id)
        if pred_semantic is not None:
            gt_semantic = panoptic_to_semantic(gt_ids, gt_segments, self.contiguous, ignore_index=-1)
            self.semantic.process(gt_semantic, pred_semantic)

    def merge(self, other: PanopticScores) -> PanopticScores:
        """Add ``other``'s images (another worker's, say) to these; returns self."""
        self.pq.merge(other.pq)
        self.semantic.merge(other.semantic)
        return self

    def evaluate(self) -> dict[str, float]:
        """``PQ``, ``SQ``, ``RQ`` (``_th``, ``_st``), ``mIoU``, ``pixel_acc``, in percent; a group
        with no segment scores 0 (panopticapi would divide by zero)."""
        pq, semantic = self.pq.evaluate(), self.semantic.evaluate()
        out = {f"{key.upper()}{suffix}": 100.0 * float(pq[group][key]) for suffix, group in GROUPS for key in ("pq", "sq", "rq")}
        out["mIoU"] = 100.0 * float(semantic["mIoU"])
        out["pixel_acc"] = 100.0 * float(semantic["pixel_acc"])
        return {k: (v if np.isfinite(v) else 0.0) for k, v in out.items()}


def owner_prediction(
    owner: np.ndarray, stride: int, size: tuple[int, int], point_categories: Sequence[Any],
    point_classes: np.ndarray, scored_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, np.ndarray]:
    """A pseudo panoptic map as a prediction (module doc).

    Parameters
    ----------
    owner : [h, w] point index per mask pixel (-1: none), on the grid of ``stride``.
    size : (H, W) the image as the network saw it; ``scored_size``: the ground truth's size when
        it differs (the image was resized first).
    point_categories : each point's category id; ``point_classes`` [m] each point's class index.

    Returns
    -------
    ``(pred_ids, pred_segments, pred_semantic, full_owner)``: panoptic ids and segments, the class
    index per pixel (-1 none), and the owner map at the scored size (for overlays).
    """
    full = upsample_nearest(owner, stride, *size)
    if scored_size is not None and tuple(scored_size) != tuple(size):
        full = resize_nearest(full, *scored_size)
    pred_ids, pred_segments = segments_from_labels(full, list(point_categories), void_label=-1)
    point_classes = np.asarray(point_classes)
    pred_semantic = np.where(full >= 0, point_classes[np.maximum(full, 0)] if len(point_classes) else -1, -1)
    return pred_ids, pred_segments, pred_semantic, full
