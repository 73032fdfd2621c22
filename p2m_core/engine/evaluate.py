"""Evaluation of a network during or after training: its panoptic predictions and its pseudo masks.

Streaming, in detectron2's evaluator style (:meth:`NetworkEvaluator.process` per batch,
:meth:`NetworkEvaluator.metrics` at the end), on batches that carry ground truth
(``with_gt`` datasets; :func:`~p2m_core.data.dataset.collate_points`):

- **panoptic**: :meth:`~p2m_core.model.point2mask.Point2Mask.predict` against the ground truth
  (PQ, SQ, RQ for all, things and stuff, with the official definitions of
  :class:`~p2m_core.evaluation.PQAccumulator`); **mIoU** of the semantic head's argmax;
- **pseudo masks** (``pseudo_PQ``, ``pseudo_PQ_th``, ``pseudo_PQ_st``): the pseudo labels the
  network's own maps give with the batch's points, upsampled to the image, against the same
  ground truth: how good the training targets are.

Everything is scored at each image's original size, as the COCO panoptic API scores a
submission: the network sees the image at the test scale (``data.test_short_side``), and its
panoptic output, its semantic map and the pseudo masks are mapped back by pixel-centre nearest
neighbour (:func:`~p2m_core.data.transforms.resize_nearest`, the rule that maps ground truth
into a resized image). Where the test scale is the image's own size nothing is resized.

Metrics are in percent, like the pseudo-label stage's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from p2m_core.config import Config
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.transforms import resize_nearest
from p2m_core.evaluation import PQAccumulator, SemanticIoU, panoptic_to_semantic, segments_from_labels, upsample_nearest
from p2m_core.model.point2mask import Point2Mask
from p2m_core.model.task_maps import batch_pseudo_labels


class NetworkEvaluator:
    """PQ of predictions and of pseudo masks, and mIoU, over a dataset's batches (module doc)."""

    def __init__(self, dataset: CocoPanoptic, cfg: Config) -> None:
        self.cfg = cfg
        self.contiguous = dataset.contiguous_ids()
        self.category_of = {index: cid for cid, index in self.contiguous.items()}
        self.pq = PQAccumulator(dataset.categories)
        self.pseudo_pq = PQAccumulator(dataset.categories)
        self.miou = SemanticIoU(len(self.contiguous), ignore_index=-1)

    @torch.no_grad()
    def process(self, model: Point2Mask, batch: dict[str, Any]) -> None:
        """Score one batch (it must carry ground truth: ``orig_segment_ids``, ``orig_segments``)."""
        if "orig_segment_ids" not in batch:
            raise ValueError("NetworkEvaluator: the batch has no ground truth (build the dataset with with_gt=True)")
        model.eval()
        out = model(batch["images"], batch["padding_mask"])
        results = model.paint_predictions(out, tuple(batch["images"].shape[-2:]), batch["image_sizes"])
        pseudo = batch_pseudo_labels(out, batch, self.cfg.pseudo)[1].panoptic
        stride = self.cfg.pseudo.mask_stride
        for b, (result, (h, w)) in enumerate(zip(results, batch["image_sizes"])):
            gt_ids = batch["orig_segment_ids"][b].cpu().numpy()
            gt_segments = [{k: s[k] for k in ("id", "category_id", "iscrowd")} for s in batch["orig_segments"][b]]
            height, width = gt_ids.shape
            image_id = batch["image_ids"][b]
            pred_segments = [{"id": s["id"], "category_id": self.category_of[s["label"]]} for s in result["segments"]]
            panoptic = resize_nearest(result["panoptic"].cpu().numpy(), height, width)
            self.pq.process(gt_ids, gt_segments, panoptic, pred_segments, image_id=image_id)
            gt_sem = panoptic_to_semantic(gt_ids, gt_segments, self.contiguous, ignore_index=-1)
            self.miou.process(gt_sem, resize_nearest(result["semantic"].cpu().numpy(), height, width))
            owner = resize_nearest(upsample_nearest(pseudo[b].cpu().numpy(), stride, h, w), height, width)
            categories = [self.category_of[int(c)] for c in batch["point_labels"][b].tolist()]
            pseudo_ids, pseudo_segments = segments_from_labels(owner, categories, void_label=-1)
            self.pseudo_pq.process(gt_ids, gt_segments, pseudo_ids, pseudo_segments, image_id=image_id)

    def metrics(self) -> dict[str, float]:
        """``PQ``, ``SQ``, ``RQ`` (``_th``, ``_st``), ``mIoU``, ``pseudo_PQ`` (``_th``, ``_st``), in percent."""
        out: dict[str, float] = {}
        pq, pseudo = self.pq.evaluate(), self.pseudo_pq.evaluate()
        for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for key in ("pq", "sq", "rq"):
                out[f"{key.upper()}{suffix}"] = 100.0 * float(pq[group][key])
            out[f"pseudo_PQ{suffix}"] = 100.0 * float(pseudo[group]["pq"])
        out["mIoU"] = 100.0 * float(self.miou.evaluate()["mIoU"])
        return {k: (v if np.isfinite(v) else 0.0) for k, v in out.items()}
