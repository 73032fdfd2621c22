"""Losses fed by the pseudo labels: the boundary loss (Eq. 6-7), the projector's contrastive
loss, and the segment map both read (stuff merged per class).

The boundary oracle is a plain loop over all ordered 8-neighbour pairs of a small map that sorts
each pair by the rules written out here, independently of the vectorised code.
"""

from __future__ import annotations

import math

import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.losses.boundary import boundary_loss
from p2m_core.losses.projector import projector_contrastive_loss, segment_prototypes
from p2m_core.losses.segments import merge_stuff_segments

# ---------------------------------------------------------------- segments


def test_merge_stuff_segments_per_class():
    owner = torch.tensor([[[0, 1, 2, 3, -1]]])
    labels = torch.tensor([[5, 7, 7, 5]])
    is_thing = torch.tensor([[True, False, False, True]])
    segments, seg_thing = merge_stuff_segments(owner, labels, is_thing)
    assert segments.tolist() == [[[0, 1, 1, 3, -1]]]
    assert seg_thing.tolist() == [[True, False, False, True]]
    # stuff 0 and 3 share class 5, but 3 is padding: nothing merges
    padded = merge_stuff_segments(owner, labels, ~is_thing, point_mask=torch.tensor([[True, True, True, False]]))
    assert padded[0].tolist() == [[[0, 1, 2, 3, -1]]]
    assert padded[1].tolist() == [[False, True, True, False]]


# ---------------------------------------------------------------- boundary

OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def loop_boundary(boundary: torch.Tensor, segments: torch.Tensor, is_thing: torch.Tensor) -> float:
    losses = []
    for b in range(boundary.shape[0]):
        H, W = boundary.shape[1:]
        groups: dict[str, list[float]] = {"thing": [], "stuff": [], "neg": []}
        for y in range(H):
            for x in range(W):
                for dy, dx in OFFSETS:
                    v, u = y + dy, x + dx
                    if not (0 <= v < H and 0 <= u < W):
                        continue
                    sp, sq = int(segments[b, y, x]), int(segments[b, v, u])
                    tp = sp >= 0 and bool(is_thing[b, sp])
                    tq = sq >= 0 and bool(is_thing[b, sq])
                    affinity = 1 - max(float(boundary[b, y, x]), float(boundary[b, v, u]))
                    if sp >= 0 and sp == sq:
                        groups["thing" if tp else "stuff"].append(-math.log(affinity + 1e-5))
                    elif sp != sq and ((sp >= 0 and sq >= 0) or tp != tq):
                        groups["neg"].append(-math.log(1 + 1e-5 - affinity))

        def mean(v: list[float]) -> float:
            return sum(v) / len(v) if v else 0.0

        losses.append((0.5 * mean(groups["thing"]) + 0.5 * mean(groups["stuff"]) + mean(groups["neg"])) / 2)
    return sum(losses) / len(losses)


def test_boundary_matches_a_pair_loop():
    g = torch.Generator().manual_seed(0)
    boundary = torch.rand(2, 6, 7, generator=g, dtype=torch.float64)
    segments = torch.randint(-1, 4, (2, 6, 7), generator=g)
    segments[1, :3] = 2
    is_thing = torch.tensor([[True, False, True, False], [False, True, False, True]])
    mine = boundary_loss(boundary, segments, is_thing)
    assert mine.item() == pytest.approx(loop_boundary(boundary, segments, is_thing), rel=1e-10)


def test_boundary_hand_case_two_things():
    # two thing segments side by side: a boundary on their border beats one inside a segment
    segments = torch.tensor([[[0, 0, 0, 1, 1, 1]] * 3])
    is_thing = torch.tensor([[True, True]])
    on_border = torch.tensor([[[0.0, 0.0, 0.5, 0.5, 0.0, 0.0]] * 3])
    inside = torch.tensor([[[0.5, 0.0, 0.0, 0.0, 0.0, 0.5]] * 3])
    assert 0 <= boundary_loss(on_border, segments, is_thing) < boundary_loss(inside, segments, is_thing)
    flat = torch.full_like(on_border, 0.5)
    # flat 0.5: every pull and push term is -log(0.5 + 1e-5); no stuff pairs -> pos = 1/2 mean_thing
    v = -math.log(0.5 + 1e-5)
    assert boundary_loss(flat, segments, is_thing).item() == pytest.approx((0.5 * v + v) / 2, rel=1e-6)


def test_boundary_void_rules_and_padding():
    # thing next to void: a negative pair; stuff next to void: no pair; void-void: no pair
    is_thing = torch.tensor([[True, False]])
    b = torch.full((1, 1, 2), 0.3)
    v_pos, v_neg = -math.log(0.7 + 1e-5), -math.log(0.3 + 1e-5)
    assert boundary_loss(b, torch.tensor([[[0, -1]]]), is_thing).item() == pytest.approx(v_neg / 2, rel=1e-6)
    assert boundary_loss(b, torch.tensor([[[1, -1]]]), is_thing).item() == 0.0
    assert boundary_loss(b, torch.tensor([[[-1, -1]]]), is_thing).item() == 0.0
    assert boundary_loss(b, torch.tensor([[[1, 1]]]), is_thing).item() == pytest.approx(0.5 * v_pos / 2, rel=1e-6)
    # padding removes the pairs that touch it; an all-padding image gives 0 and a finite gradient
    probs = torch.rand(1, 3, 3, requires_grad=True)
    segments = torch.tensor([[[0, 0, -1], [0, 1, -1], [1, 1, -1]]])
    valid = segments >= 0
    loss = boundary_loss(probs, segments, is_thing, valid=valid)
    crop = boundary_loss(probs[:, :, :2], segments[:, :, :2], is_thing)
    torch.testing.assert_close(loss, crop)
    zero = boundary_loss(probs, segments, is_thing, valid=torch.zeros_like(valid))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(probs.grad).all()


def test_boundary_rejects_unknown_segment_ids():
    with pytest.raises(P2MInputError):
        boundary_loss(torch.rand(1, 2, 2), torch.full((1, 2, 2), 3), torch.tensor([[True, False]]))


# ---------------------------------------------------------------- projector


def test_prototypes_are_normalised_masked_means():
    emb = torch.zeros(2, 1, 3)
    emb[0, 0] = torch.tensor([1.0, 1.0, 0.0])
    emb[1, 0] = torch.tensor([0.0, 1.0, 1.0])
    ids, protos = segment_prototypes(emb, torch.tensor([[4, 4, -1]]))
    assert ids.tolist() == [4]
    torch.testing.assert_close(protos, torch.tensor([[2.0, 1.0]]) / math.sqrt(5))  # mean (1, 0.5)


def test_projector_hand_case():
    # two segments with orthogonal unit embeddings; each point on its own segment
    emb = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    emb[0, 0, 0, :2] = 1.0
    emb[0, 1, 0, 2:] = 1.0
    segments = torch.tensor([[[0, 0, 1, 1]]])
    points = [torch.tensor([[0, 0], [0, 3]])]
    loss = projector_contrastive_loss(emb, segments, points, [torch.tensor([0, 1])])
    expected = math.log(1 + math.exp(-1 / 0.07))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    wrong = projector_contrastive_loss(emb, segments, points, [torch.tensor([1, 0])])
    assert loss < wrong


def test_projector_skips_points_without_a_segment_and_empty_is_zero():
    emb = torch.randn(2, 8, 5, 5, requires_grad=True)
    segments = torch.randint(0, 3, (2, 5, 5))
    segments[1] = -1
    points = [torch.tensor([[1, 1], [2, 2]]), torch.tensor([[0, 0]])]
    base = projector_contrastive_loss(emb, segments, points[:1] + [points[1][:0]], [torch.tensor([0, 1]), torch.tensor([], dtype=torch.long)])
    with_skipped = projector_contrastive_loss(emb, segments, points, [torch.tensor([0, 1]), torch.tensor([0])])
    torch.testing.assert_close(base, with_skipped)
    assert base.item() >= 0
    empty = projector_contrastive_loss(emb, torch.full((2, 5, 5), -1), points, [torch.tensor([0, 1]), torch.tensor([0])])
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(emb.grad).all()


def test_prototypes_can_be_plain_means():
    emb = torch.zeros(2, 1, 3)
    emb[0, 0] = torch.tensor([1.0, 1.0, 0.0])
    emb[1, 0] = torch.tensor([0.0, 1.0, 1.0])
    ids, protos = segment_prototypes(emb, torch.tensor([[4, 4, -1]]), normalise=False)
    assert ids.tolist() == [4]
    torch.testing.assert_close(protos, torch.tensor([[1.0, 0.5]]))


def test_projector_zero_prototypes_plain_means_and_per_image_mean():
    """Release (``loss_metric``): prototypes are plain masked means (not re-normalised), every
    thing point and stuff class has one (the zero vector when its mask is empty, logit 0), and the
    loss is the mean over each image's points, then over the images."""
    tau = 0.07
    emb = torch.zeros(2, 2, 1, 4, dtype=torch.float64)
    emb[:, 0, 0, :2] = 1.0  # pixels 0, 1: e = (1, 0); pixels 2, 3: e = (0, 1)
    emb[:, 1, 0, 2:] = 1.0
    segments = torch.tensor([[[0, 0, 1, 1]], [[0, 1, 1, 1]]])
    points = [torch.tensor([[0, 0]]), torch.tensor([[0, 0], [0, 3], [0, 2]])]
    own = [torch.tensor([0]), torch.tensor([0, 1, 5])]  # segment 5 owns no pixel
    loss = projector_contrastive_loss(emb, segments, points, own, num_prototypes=[4, 3])
    # image 0: prototypes (1, 0), (0, 1) and two zeros; its point sits on (1, 0)
    image0 = math.log(math.exp(1 / tau) + 1 + 2) - 1 / tau
    # image 1: segment 1 is the mean of (1, 0), (0, 1), (0, 1) = (1/3, 2/3), not unit; one zero
    mu1 = (1 / 3, 2 / 3)
    denominator = [math.exp(1 / tau) + math.exp(mu1[0] / tau) + 1,  # point on (1, 0)
                   math.exp(0) + math.exp(mu1[1] / tau) + 1,  # point on (0, 1), twice
                   ]  # fmt: skip
    image1 = ((math.log(denominator[0]) - 1 / tau) + (math.log(denominator[1]) - mu1[1] / tau)
              + math.log(denominator[1]))  # fmt: skip
    assert loss.item() == pytest.approx((image0 + image1 / 3) / 2, rel=1e-9)
    # a single prototype in an image: nothing to contrast, the image contributes 0 (and counts)
    flat = torch.zeros(1, 4, dtype=torch.long)[None]
    assert projector_contrastive_loss(emb[:1], flat, points[:1], own[:1], num_prototypes=[1]).item() == 0.0
    halved = projector_contrastive_loss(emb, torch.cat([flat, segments[1:]]), points, own, num_prototypes=[1, 3])
    assert halved.item() == pytest.approx(image1 / 3 / 2, rel=1e-9)
    with pytest.raises(P2MInputError):  # fewer prototypes than segments present
        projector_contrastive_loss(emb[:1], segments[:1], points[:1], own[:1], num_prototypes=[1])
