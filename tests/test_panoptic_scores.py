"""The one evaluator of panoptic outputs (``p2m_core.evaluation.panoptic_scores``): mergeable across
workers, and the same numbers for a pseudo mask whichever caller scores it."""

from __future__ import annotations

import numpy as np
import pytest

from p2m_core.data.transforms import resize_nearest
from p2m_core.evaluation import PQAccumulator, upsample_nearest
from p2m_core.evaluation.panoptic_scores import PanopticScores, owner_prediction

CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 7, "isthing": 0}]
CONTIGUOUS = {1: 0, 2: 1, 7: 2}


def image(rng: np.random.Generator, size: int = 24):
    """A ground truth of a stuff background and two things, and a pseudo owner map on a stride-2 grid."""
    gt = np.full((size, size), 30, np.int64)
    gt[2:10, 3:12] = 11
    gt[12:20, 8:22] = 12
    segments = [{"id": 30, "category_id": 7, "iscrowd": 0}, {"id": 11, "category_id": 1, "iscrowd": 0},
                {"id": 12, "category_id": 2, "iscrowd": 0}]
    owner = np.full((size // 2, size // 2), 0, np.int64)  # point 0: the stuff point
    owner[1:5, 1 + rng.integers(0, 2):6] = 1
    owner[6:10, 4:11 - rng.integers(0, 3)] = 2
    owner[0, 0] = -1
    return gt, segments, owner, [7, 1, 2], np.array([2, 0, 1])


def test_merged_halves_score_what_one_pass_scores():
    rng = np.random.default_rng(0)
    images = [image(rng) for _ in range(6)]
    whole, first, second = (PanopticScores(CATEGORIES, CONTIGUOUS) for _ in range(3))
    for i, (gt, segments, owner, categories, classes) in enumerate(images):
        pred_ids, pred_segments, pred_semantic, _ = owner_prediction(owner, 2, gt.shape, categories, classes)
        for scores in (whole, first if i < 3 else second):
            scores.process(i, gt, segments, pred_ids, pred_segments, pred_semantic)
    merged = first.merge(second).evaluate()
    assert merged == pytest.approx(whole.evaluate())
    assert 0 < merged["PQ"] < 100 and 0 < merged["mIoU"] < 100
    whole.reset()
    assert whole.evaluate()["PQ"] == 0.0


def test_owner_prediction_upsamples_then_maps_back_to_the_scored_size():
    rng = np.random.default_rng(1)
    gt, segments, owner, categories, classes = image(rng)
    # the network saw the image at 12 x 12 (masks at stride 2 -> a 6 x 6 owner map), scored at 24 x 24
    small = owner[::2, ::2]
    pred_ids, pred_segments, pred_semantic, full = owner_prediction(small, 2, (12, 12), categories, classes, (24, 24))
    expected = resize_nearest(upsample_nearest(small, 2, 12, 12), 24, 24)
    assert full.shape == (24, 24) and np.array_equal(full, expected)
    assert np.array_equal(pred_semantic, np.where(expected >= 0, classes[np.maximum(expected, 0)], -1))
    # the PQ part is PQAccumulator's on those segments
    reference = PQAccumulator(CATEGORIES)
    reference.process(gt, segments, pred_ids, pred_segments, image_id=0)
    scores = PanopticScores(CATEGORIES, CONTIGUOUS)
    scores.process(0, gt, segments, pred_ids, pred_segments, pred_semantic)
    assert scores.evaluate()["PQ"] == pytest.approx(100 * reference.evaluate()["All"]["pq"])
