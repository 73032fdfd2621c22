"""Panoptic-branch losses and the Hungarian matcher.

Oracles: GIoU of hand-computed boxes; the matcher against a brute force over every injective
assignment (Q <= 6 queries, G <= 4 ground truths), compared by total cost (ties may pick other
pairs); dice and L1 from their formulae on tiny cases.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from p2m_core.losses.matcher import hungarian_match, matching_cost
from p2m_core.losses.panoptic import box_cxcywh_to_xyxy, box_l1_loss, box_xyxy_to_cxcywh, dice_loss
from p2m_core.losses.panoptic import generalized_box_iou, giou_loss, masks_to_boxes, set_losses


def test_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    # overlap 1, union 7, hull 9: 1/7 - 2/9; identical: 1; disjoint: union 5, hull 8: -3/8
    expected = torch.tensor([[1 / 7 - 2 / 9, 1.0, -3 / 8]])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    pred = box_xyxy_to_cxcywh(a.expand(3, 4))
    target = box_xyxy_to_cxcywh(b)
    assert giou_loss(pred, target).item() == pytest.approx((3 - expected.sum().item()) / 3, rel=1e-6)
    assert giou_loss(pred[:0], target[:0]).item() == 0.0


def test_box_conversions_round_trip_and_l1():
    boxes = torch.rand(5, 4)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    pred, target = torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.4, 0.5, 0.2, 0.4]])
    assert box_l1_loss(pred, target).item() == pytest.approx(0.3)
    assert box_l1_loss(pred, target, num=3).item() == pytest.approx(0.1)


def test_masks_to_boxes_pixel_edges_and_empty():
    masks = torch.zeros(3, 4, 8, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True  # x 2..5, y 1..2 -> xyxy (2, 1, 6, 3) / (8, 4)
    masks[1] = True
    boxes = masks_to_boxes(masks)
    torch.testing.assert_close(boxes[0], torch.tensor([4 / 8, 2 / 4, 4 / 8, 2 / 4]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.equal(boxes[2], torch.zeros(4))
    assert masks_to_boxes(torch.zeros(0, 4, 4)).shape == (0, 4)


def test_dice_hand_case_and_ordering():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    pred = torch.tensor([[1.0, 0.5, 0.0, 0.5]])
    expected = 1 - 2 * 1.5 / (1.5 + 2 + 2e-3)
    assert dice_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(target, target) < dice_loss(pred, target) < dice_loss(1 - target, target)
    assert dice_loss(torch.zeros(2, 5), torch.zeros(2, 5)).item() == pytest.approx(1.0)  # empty masks: 1 each, finite
    assert dice_loss(torch.zeros(0, 5), torch.zeros(0, 5)).item() == 0.0


def brute_force_cost(cost: torch.Tensor) -> float:
    Q, G = cost.shape
    return min(sum(cost[q, g].item() for g, q in enumerate(perm)) for perm in itertools.permutations(range(Q), G))


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_matches_brute_force(seed: int):
    g = torch.Generator().manual_seed(seed)
    Q = int(torch.randint(1, 7, (1,), generator=g))
    G = int(torch.randint(0, min(Q, 4) + 1, (1,), generator=g))
    C = 5
    logits = 3 * torch.randn(Q, C, generator=g)
    boxes = torch.cat([torch.rand(Q, 2, generator=g), 0.05 + 0.5 * torch.rand(Q, 2, generator=g)], dim=1)
    gt_labels = torch.randint(0, C, (G,), generator=g)
    gt_boxes = torch.cat([torch.rand(G, 2, generator=g), 0.05 + 0.5 * torch.rand(G, 2, generator=g)], dim=1)
    q, t = hungarian_match(logits, boxes, gt_labels, gt_boxes)
    assert q.numel() == t.numel() == G
    assert len(set(q.tolist())) == G and sorted(t.tolist()) == list(range(G))
    cost = matching_cost(logits, boxes, gt_labels, gt_boxes)
    assert cost[q, t].sum().item() == pytest.approx(brute_force_cost(cost), abs=1e-5)


def test_matching_cost_terms_by_hand():
    logits = torch.tensor([[0.0, 10.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    cost = matching_cost(logits, boxes, torch.tensor([0]), boxes.clone())
    p = 0.5
    focal = 0.25 * (1 - p) ** 2 * -torch.log(torch.tensor(p)) - 0.75 * p**2 * -torch.log(torch.tensor(1 - p))
    assert cost.item() == pytest.approx(2 * focal.item() + 0 - 2 * 1.0, rel=1e-5)


def test_set_losses_perfect_prediction_is_lower():
    gt_labels = torch.tensor([1, 0])
    gt_boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    logits = torch.full((4, 3), -8.0)
    logits[2, 1] = logits[0, 0] = 8.0
    boxes = torch.rand(4, 4) * 0.5 + 0.1
    boxes[2], boxes[0] = gt_boxes[0], gt_boxes[1]
    q, t = hungarian_match(logits, boxes, gt_labels, gt_boxes)
    assert q.tolist() == [0, 2] and t.tolist() == [1, 0]
    good = set_losses(logits, boxes, gt_labels, gt_boxes, q, t)
    bad = set_losses(-logits, boxes.flip(0), gt_labels, gt_boxes, q, t)
    for name in ("cls", "l1", "giou"):
        assert 0 <= good[name] < bad[name]
    assert good["l1"].item() == pytest.approx(0.0, abs=1e-6) and good["giou"].item() == pytest.approx(0.0, abs=1e-6)
    none = set_losses(logits, boxes, gt_labels[:0], gt_boxes[:0], q[:0], t[:0])
    assert all(torch.isfinite(v) for v in none.values())
