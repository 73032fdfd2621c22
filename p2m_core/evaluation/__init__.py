"""Evaluation: panoptic quality (PQ/SQ/RQ, equal to panopticapi), prediction writing, mIoU.

- :func:`pq_compute` / :class:`PQAccumulator`: COCO panoptic quality from files or arrays
  (:mod:`~p2m_core.evaluation.panoptic_matching`: the matching of one image).
- :class:`PanopticPredictionWriter`: predictions in the COCO panoptic format (PNG + JSON).
- :class:`SemanticIoU`, :func:`panoptic_to_semantic`: semantic mIoU from a confusion matrix.
- :class:`PanopticScores`, :func:`owner_prediction`: the one evaluator (reset / process /
  evaluate / merge) of a network's predictions and of pseudo masks.

Command line: ``python -m p2m_core.evaluation --gt-json J --pred-json P [--out metrics.json]``.
"""

from p2m_core.evaluation.panoptic_quality import (
    PQAccumulator,
    format_pq_table,
    pq_compute,
    read_panoptic_png,
)
from p2m_core.evaluation.panoptic_scores import PanopticScores, owner_prediction
from p2m_core.evaluation.semantic import SemanticIoU, panoptic_to_semantic
from p2m_core.evaluation.writer import (
    PanopticPredictionWriter,
    segment_stats,
    segments_from_labels,
    segments_from_semantic_instance,
    upsample_nearest,
)

__all__ = [
    "PQAccumulator",
    "PanopticPredictionWriter",
    "PanopticScores",
    "SemanticIoU",
    "format_pq_table",
    "owner_prediction",
    "panoptic_to_semantic",
    "pq_compute",
    "read_panoptic_png",
    "segment_stats",
    "segments_from_labels",
    "segments_from_semantic_instance",
    "upsample_nearest",
]
