"""Semantic segmentation mIoU from a confusion matrix, and panoptic -> semantic maps.

With ``C[i, j]`` the number of pixels of ground-truth class i predicted as class j::

    IoU_c     = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c])
    mIoU      = mean of IoU_c over the classes present in the ground truth or the prediction
    pixel_acc = sum_c C[c, c] / sum_{i, j} C[i, j]

A class that appears in neither the ground truth nor the prediction has an undefined IoU
(0 / 0): it is reported as NaN in ``per_class_iou`` and left out of the mean, so a small
evaluation set is not penalised for classes it does not contain. Ground-truth pixels equal to
``ignore_index`` are skipped. Predicted values outside ``[0, num_classes)`` (a "no class"
prediction) are kept as an extra column: they are false negatives of the ground-truth class
and false positives of no class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2m_core.errors import P2MInputError

__all__ = ["SemanticIoU", "panoptic_to_semantic"]


class SemanticIoU:
    """Streaming mIoU: ``reset() / process(gt, pred) / evaluate()``, plus ``merge``.

    Parameters
    ----------
    num_classes : C, the number of contiguous class indices ``0..C-1``.
    ignore_index : ground-truth value to skip (e.g. void).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise P2MInputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Zero the confusion matrix ``[C, C + 1]`` (the last column: no-class predictions)."""
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def process(self, gt_labels: np.ndarray, pred_labels: np.ndarray) -> None:
        """Add one image: ``gt_labels`` and ``pred_labels`` are equal-shaped integer class maps."""
        gt = np.asarray(gt_labels)
        pred = np.asarray(pred_labels)
        if gt.shape != pred.shape:
            raise P2MInputError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
        if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
            raise P2MInputError(f"label maps must be integer arrays, got {gt.dtype} and {pred.dtype}")
        c = self.num_classes
        keep = gt != self.ignore_index
        gt = gt[keep].astype(np.int64)
        pred = pred[keep].astype(np.int64)
        bad = (gt < 0) | (gt >= c)
        if bad.any():
            raise P2MInputError(
                f"ground-truth label {int(gt[bad][0])} is outside [0, {c}) and is not ignore_index {self.ignore_index}"
            )
        pred = np.where((pred < 0) | (pred >= c), c, pred)
        self.confusion += np.bincount(gt * (c + 1) + pred, minlength=c * (c + 1)).reshape(c, c + 1)

    def merge(self, other: SemanticIoU) -> SemanticIoU:
        """Add another accumulator's confusion matrix (same ``num_classes``); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.confusion += other.confusion
        return self

    def evaluate(self) -> dict[str, Any]:
        """``{'mIoU': float, 'per_class_iou': [C] floats (NaN if absent), 'pixel_acc': float}``.

        ``mIoU`` is NaN when no class occurs at all; ``pixel_acc`` is NaN with no pixel.
        """
        c = self.num_classes
        tp = np.diag(self.confusion[:, :c]).astype(np.float64)
        gt_count = self.confusion.sum(axis=1)
        pred_count = self.confusion[:, :c].sum(axis=0)
        union = gt_count + pred_count - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        present = union > 0
        total = self.confusion.sum()
        return {
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "per_class_iou": [float(v) for v in iou],
            "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        }


def panoptic_to_semantic(
    ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    category_to_index: Mapping[Any, int],
    ignore_index: int = 255,
) -> np.ndarray:
    """Class-index map of a panoptic id map: each segment's pixels get its category's index.

    Parameters
    ----------
    ids : [H, W] integer segment ids (0 = void).
    segments : ``[{'id', 'category_id'}]`` (crowd segments keep their category).
    category_to_index : ``category_id -> class index`` (e.g. ``CocoPanoptic.contiguous_ids()``).

    Returns
    -------
    [H, W] int64 class indices; void and unlisted ids become ``ignore_index``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise P2MInputError(f"expected an HxW integer id map, got {ids.dtype} of shape {ids.shape}")
    present, inverse = np.unique(ids, return_inverse=True)
    by_id = {}
    for seg in segments:
        if seg["category_id"] not in category_to_index:
            raise P2MInputError(f"segment {seg['id']}: category_id {seg['category_id']!r} has no class index")
        by_id[int(seg["id"])] = category_to_index[seg["category_id"]]
    lookup = np.array([by_id.get(int(v), ignore_index) for v in present.tolist()], dtype=np.int64)
    return lookup[inverse.reshape(ids.shape)]
