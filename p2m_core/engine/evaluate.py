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

import torch

from p2m_core.config import Config
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.transforms import resize_nearest
from p2m_core.evaluation import PanopticScores, owner_prediction
from p2m_core.model.point2mask import Point2Mask
from p2m_core.model.task_maps import batch_pseudo_labels


class NetworkEvaluator:
    """PQ of predictions and of pseudo masks, and mIoU, over a dataset's batches (module doc):
    two :class:`~p2m_core.evaluation.PanopticScores`, with their protocol (``reset``,
    ``process``, ``evaluate``/``metrics``, ``merge``)."""

    def __init__(self, dataset: CocoPanoptic, cfg: Config) -> None:
        self.cfg = cfg
        self.contiguous = dataset.contiguous_ids()
        self.category_of = {index: cid for cid, index in self.contiguous.items()}
        self.network = PanopticScores(dataset.categories, self.contiguous)
        self.pseudo = PanopticScores(dataset.categories, self.contiguous)

    def reset(self) -> None:
        self.network.reset()
        self.pseudo.reset()

    def merge(self, other: NetworkEvaluator) -> NetworkEvaluator:
        """Add another evaluator's images (another worker's shard); returns self."""
        self.network.merge(other.network)
        self.pseudo.merge(other.pseudo)
        return self

    @torch.no_grad()
    def process(self, model: Point2Mask, batch: dict[str, Any]) -> None:
        """Score one batch (it must carry ground truth: ``orig_segment_ids``, ``orig_segments``)."""
        if "orig_segment_ids" not in batch:
            raise ValueError("NetworkEvaluator: the batch has no ground truth (build the dataset with with_gt=True)")
        model.eval()
        out = model(batch["images"], batch["padding_mask"])
        results = model.paint_predictions(out, tuple(batch["images"].shape[-2:]), batch["image_sizes"])
        pseudo = batch_pseudo_labels(out, batch, self.cfg.pseudo)[1].panoptic.cpu().numpy()
        for b, (result, size) in enumerate(zip(results, batch["image_sizes"])):
            gt_ids = batch["orig_segment_ids"][b].cpu().numpy()
            gt_segments, image_id = batch["orig_segments"][b], batch["image_ids"][b]
            scored = gt_ids.shape
            pred_segments = [{"id": s["id"], "category_id": self.category_of[s["label"]]} for s in result["segments"]]
            self.network.process(image_id, gt_ids, gt_segments, resize_nearest(result["panoptic"].cpu().numpy(), *scored),
                                 pred_segments, resize_nearest(result["semantic"].cpu().numpy(), *scored))  # fmt: skip
            classes = batch["point_labels"][b].cpu().numpy()
            pred_ids, owner_segments, pred_semantic, _ = owner_prediction(
                pseudo[b], self.cfg.pseudo.mask_stride, size, [self.category_of[int(c)] for c in classes], classes, scored)
            self.pseudo.process(image_id, gt_ids, gt_segments, pred_ids, owner_segments, pred_semantic)

    def metrics(self) -> dict[str, float]:
        """``PQ``, ``SQ``, ``RQ`` (``_th``, ``_st``), ``mIoU`` (of ``P^s``), ``pseudo_PQ``
        (``_th``, ``_st``), in percent."""
        network, pseudo = self.network.evaluate(), self.pseudo.evaluate()
        out = {k: v for k, v in network.items() if k != "pixel_acc"}
        out.update({f"pseudo_PQ{suffix}": pseudo[f"PQ{suffix}"] for suffix in ("", "_th", "_st")})
        return out

    evaluate = metrics
