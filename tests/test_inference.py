"""Panoptic inference: scores, top-k over (query, class) pairs, and the painting rules."""

from __future__ import annotations

import math

import pytest
import torch

from p2m_core.config import InferenceConfig
from p2m_core.model.inference import candidates, paint

SETTINGS = InferenceConfig()


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int, value: float = 0.9) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = value
    return m


def test_scores_are_class_times_mask_score_squared_and_topk_spans_classes() -> None:
    masks = torch.stack([box(4, 4, 0, 2, 0, 2, 0.8), box(4, 4, 2, 4, 2, 4, 0.6)])
    logits = torch.tensor([[logit(0.9), logit(0.7)], [logit(0.2), logit(0.1)]])
    cands = candidates(logits, masks, [3, 5], torch.zeros(0), torch.zeros(0, 4, 4), [],
                       InferenceConfig(top_k=3))  # fmt: skip
    assert [(c.label, round(c.score, 6)) for c in cands] == [
        (3, round(0.9 * 0.8**2, 6)), (5, round(0.7 * 0.8**2, 6)), (3, round(0.2 * 0.6**2, 6)),
    ]  # query 0 appears with both labels


def test_painting_rules() -> None:
    h = w = 10
    thing_masks = torch.stack([
        box(h, w, 0, 5, 0, 5),        # A: 25 px, paints first
        box(h, w, 3, 8, 0, 5),        # B: overlaps A on 10 of 25 px (0.4): kept, paints 15 px
        box(h, w, 0, 5, 2, 7),        # C: overlaps A on 15 of 25 (0.6 > 0.4): skipped
        box(h, w, 8, 10, 8, 10, 0.3),  # D: mask below 0.5: empty, skipped
    ])
    thing_logits = torch.tensor([[logit(0.99)], [logit(0.98)], [logit(0.97)], [logit(0.96)]])
    stuff_masks = torch.stack([box(h, w, 0, 10, 0, 10, 0.95), box(h, w, 9, 10, 0, 10, 0.95)])
    stuff_logits = torch.tensor([logit(0.5), logit(0.2)])  # second: 0.2 * 0.95^2 < 0.25
    cands = candidates(thing_logits, thing_masks, [1], stuff_logits, stuff_masks, [7, 8], SETTINGS)
    canvas, segments = paint(cands, (h, w), SETTINGS)
    labels = [(s["label"], s["isthing"], s["area"]) for s in segments]
    # the stuff candidate overlaps the things on 40 of 100 px (0.4 > 0.2): skipped
    assert labels == [(1, True, 25), (1, True, 15)]
    assert int((canvas == 0).sum()) == 100 - 40
    assert segments[0]["score"] == pytest.approx(0.99 * 0.9**2)


def test_stuff_paints_what_is_left_when_overlap_is_small() -> None:
    h = w = 10
    thing_masks = box(h, w, 0, 2, 0, 5)[None]  # 10 px
    stuff_masks = box(h, w, 0, 10, 0, 10, 0.95)[None]
    cands = candidates(torch.tensor([[logit(0.99)]]), thing_masks, [0], torch.tensor([logit(0.8)]), stuff_masks, [4],
                       SETTINGS)  # fmt: skip
    canvas, segments = paint(cands, (h, w), SETTINGS)
    assert [(s["label"], s["area"]) for s in segments] == [(0, 10), (4, 90)]
    assert int((canvas == 0).sum()) == 0
