"""Semantic-map losses: presence focal loss, partial cross-entropy with its point rasteriser, and
the LAB affinity loss with its colour conversion.

Lab oracles: OpenCV's float ``COLOR_RGB2Lab`` interpolates a lookup table (its error against the
formulae is up to about 0.5, mean about 0.08), so it is checked at 0.6 max / 0.12 mean; the CIE
formulae with OpenCV's constants, written here in float64 NumPy, at 1e-3 in L, a and b (float32
rounding only); the exact CIE constants (216/24389, 24389/27, the unrounded matrix) at 5e-3.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.losses.lab_affinity import kernel_offsets, lab_affinity_loss, rgb_to_lab
from p2m_core.losses.partial_ce import IGNORE_INDEX, partial_cross_entropy, rasterise_points
from p2m_core.losses.presence import presence_loss, presence_targets, sigmoid_focal_loss

# ---------------------------------------------------------------- focal / presence


def test_focal_loss_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    expected = [
        -0.25 * (1 - p[0]) ** 2 * math.log(p[0]),
        -0.75 * p[1] ** 2 * math.log(1 - p[1]),
        -0.25 * (1 - p[2]) ** 2 * math.log(p[2]),
    ]
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="none"), torch.stack(expected))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), torch.stack(expected).mean())
    assert sigmoid_focal_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_presence_loss_prefers_the_right_classes():
    targets = presence_targets([torch.tensor([0, 2, 2]), torch.tensor([], dtype=torch.long)], 3)
    assert targets.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    right = torch.tensor([[5.0, -5.0, 5.0], [-5.0, -5.0, -5.0]])
    assert 0 <= presence_loss(right, targets) < presence_loss(-right, targets)
    assert presence_loss(right, targets, weight=4.0) == pytest.approx(2 * presence_loss(right, targets).item())
    with pytest.raises(P2MInputError):
        presence_targets([torch.tensor([3])], 3)


def test_presence_loss_divides_the_focal_sum_by_the_present_pairs():
    """Release: ``avg_factor`` = the number of present (image, class) pairs, not ``B x C``."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    targets = presence_targets([torch.tensor([0, 2]), torch.tensor([4]), torch.tensor([], dtype=torch.long)], 5)
    elementwise = sigmoid_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(presence_loss(logits, targets), 2.0 * elementwise.sum() / 3)
    torch.testing.assert_close(presence_loss(logits, targets, weight=1.0, num=6.0), elementwise.sum() / 6)
    # no point at all: the sum itself (the divisor is at least 1)
    torch.testing.assert_close(presence_loss(logits, torch.zeros(3, 5)), 2.0 * sigmoid_focal_loss(logits, torch.zeros(3, 5), reduction="sum"))


class FakeGroup:
    """``torch.distributed`` as one of two workers whose partner holds ``other`` of a count."""

    def __init__(self, other: float) -> None:
        self.other = other

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def all_reduce(self, value: torch.Tensor) -> None:
        value += self.other


def test_presence_count_is_shared_by_the_workers(monkeypatch):
    """Each worker divides by the workers' mean count (``p2m_core.losses.normalise``), so the
    averaged gradient is the whole batch's: here 2 present pairs locally, 6 on the partner."""
    from p2m_core.losses import normalise

    logits = torch.randn(2, 4)
    targets = presence_targets([torch.tensor([1]), torch.tensor([3])], 4)
    monkeypatch.setattr(normalise, "dist", FakeGroup(other=6.0))
    torch.testing.assert_close(presence_loss(logits, targets), 2.0 * sigmoid_focal_loss(logits, targets, reduction="sum") / 4)


# ---------------------------------------------------------------- partial CE


def test_rasterise_squares_stride_and_first_point_wins():
    # canvas 16 x 16, stride 4 -> 4 x 4 map sampling input pixels 0, 4, 8, 12.
    points = [torch.tensor([[5, 5], [9, 9]])]
    labels = [torch.tensor([2, 7])]
    out = rasterise_points(points, labels, (16, 16), (4, 4), size=9)
    # point 0 covers input 1..9 -> samples 4, 8; point 1 covers 5..13 -> samples 8, 12.
    expected = torch.full((4, 4), IGNORE_INDEX)
    expected[1:3, 1:3] = 2
    expected[3, 2:4] = 7
    expected[2:4, 3] = 7
    assert torch.equal(out[0], expected)  # (2, 2) is covered by both: the first point wins
    # swapping the order lets the other point win the overlap
    swapped = rasterise_points([points[0].flip(0)], [labels[0].flip(0)], (16, 16), (4, 4), size=9)
    assert swapped[0, 2, 2] == 7 and swapped[0, 1, 1] == 2


def test_rasterise_size_one_matches_a_full_resolution_painting():
    g = torch.Generator().manual_seed(0)
    yx = torch.randint(0, 20, (6, 2), generator=g)
    labels = torch.arange(6)
    out = rasterise_points([yx], [labels], (20, 20), (20, 20), size=3)
    canvas = torch.full((20, 20), IGNORE_INDEX)
    for (y, x), c in reversed(list(zip(yx.tolist(), labels.tolist(), strict=True))):  # first wins
        canvas[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = c
    assert torch.equal(out[0], canvas)
    empty = rasterise_points([torch.zeros(0, 2, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)], (8, 8), (2, 2))
    assert (empty == IGNORE_INDEX).all()


def test_partial_ce_hand_case_and_ignored_pixels_get_no_gradient():
    logits = torch.zeros(1, 2, 1, 3, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 0, 0] = 1.0
    labels = torch.tensor([[[0, IGNORE_INDEX, 1]]])
    loss = partial_cross_entropy(logits, labels)
    expected = 0.5 * (math.log(1 + math.exp(-1)) + math.log(2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, 0, 1].abs().sum() == 0
    assert logits.grad[0, :, 0, 0].abs().sum() > 0


def test_partial_ce_empty_labels_is_zero_and_perfect_is_lower():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    none = partial_cross_entropy(logits, torch.full((2, 4, 4), IGNORE_INDEX))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(logits.grad).all()
    labels = torch.randint(0, 3, (2, 4, 4))
    perfect = 10.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert partial_cross_entropy(perfect, labels) < partial_cross_entropy(-perfect, labels)


# ---------------------------------------------------------------- Lab


OPENCV_CONSTANTS = dict(
    m=[[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    white=[0.950456, 1.0, 1.088754],
    eps=0.008856,
    kappa=903.3,
)
CIE_CONSTANTS = dict(
    m=[[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    white=[0.95047, 1.0, 1.08883],
    eps=216 / 24389,
    kappa=24389 / 27,
)


def cie_lab(rgb: np.ndarray, m: list, white: list, eps: float, kappa: float) -> np.ndarray:
    """CIE Lab (sRGB, D65), float64, element by element; ``rgb`` [..., 3] in [0, 1]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array(m).T / np.array(white)
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lightness = np.where(xyz[..., 1] > eps, 116 * f[..., 1] - 16, kappa * xyz[..., 1])
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def random_colours() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.random((40, 50, 3))
    image[0, :8] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.002, 0.004, 0.001], [0.04, 0.05, 0.03], [0.5, 0.5, 0.5]]
    return image


def test_lab_matches_opencv_and_the_cie_formulae():
    image = random_colours().astype(np.float32)
    mine = rgb_to_lab(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    opencv = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
    diff = np.abs(mine - opencv)
    assert diff.max() < 0.6 and diff.mean() < 0.12
    np.testing.assert_allclose(mine, cie_lab(image.astype(np.float64), **OPENCV_CONSTANTS), atol=1e-3, rtol=0)
    np.testing.assert_allclose(mine, cie_lab(image.astype(np.float64), **CIE_CONSTANTS), atol=5e-3, rtol=0)


def test_lab_accepts_8_bit_range_and_batches():
    image = (random_colours() * 255).astype(np.uint8)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    mine = rgb_to_lab(batch, max_value=255.0)
    assert mine.shape == (2, 3, 40, 50) and mine.dtype == torch.float32
    np.testing.assert_allclose(mine[1].permute(1, 2, 0).numpy(), cie_lab(image / 255.0, **OPENCV_CONSTANTS), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- LAB affinity


def test_kernel_offsets_are_half_of_the_dilated_taps():
    assert kernel_offsets(3, 2) == [(0, 2), (2, -2), (2, 0), (2, 2)]
    assert len(kernel_offsets(5, 2)) == 12


def one_hot_probs(labels: torch.Tensor, classes: int, sharp: float = 0.98) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    return onehot * sharp + (1 - onehot) * (1 - sharp) / (classes - 1)


def test_affinity_hand_case_uniform_image():
    # uniform colour: every in-map pair counts; uniform probabilities: a(p, q) = 1 / C everywhere.
    probs = torch.full((1, 4, 6, 7), 0.25)
    loss = lab_affinity_loss(probs, torch.full((1, 3, 6, 7), 0.4))
    assert loss.item() == pytest.approx((0.35 + 0.65) * math.log(4), rel=1e-5)


def test_affinity_prefers_labels_that_follow_colour():
    image = torch.zeros(1, 3, 12, 12)
    image[:, 0, :, 6:] = 1.0  # red right half
    left_right = (torch.arange(12) >= 6).long().expand(1, 12, 12)
    top_bottom = (torch.arange(12)[:, None] >= 6).long().expand(1, 12, 12)
    good = lab_affinity_loss(one_hot_probs(left_right, 2), image)
    bad = lab_affinity_loss(one_hot_probs(top_bottom, 2), image)
    assert 0 <= good < bad
    # across the colour edge nothing counts: the two halves never pull on each other
    sim_across = math.exp(-0.5 * float(rgb_to_lab(torch.tensor([[[1.0]], [[0.0]], [[0.0]]]))[:, 0, 0].norm()))
    assert sim_across < 0.3


def test_affinity_padding_and_empty_give_zero_and_a_gradient_path():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), dim=1).requires_grad_(True)
    image = torch.rand(2, 3, 20, 20)
    loss = lab_affinity_loss(probs, image, valid=torch.zeros(2, 5, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(probs.grad).all() and probs.grad.abs().sum() == 0
    # a padded column: the loss equals that of the cropped maps
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    valid[:, :, 4] = False
    small = torch.nn.functional.interpolate(image, size=(5, 5), mode="bilinear", align_corners=False)
    cropped = lab_affinity_loss(probs[..., :4], small[..., :4])
    torch.testing.assert_close(lab_affinity_loss(probs, image, valid=valid), cropped)
    # a single-pixel map has no pair
    assert lab_affinity_loss(probs[..., :1, :1], image[..., :1, :1]).item() == 0.0


def test_rasterise_lowest_class_wins_with_class_order():
    """The release's rule for overlapping squares: an argmax over per-class masks, so the lowest
    class index wins whatever the points' order."""
    points = [torch.tensor([[5, 5], [9, 9]])]
    labels = [torch.tensor([7, 2])]
    first = rasterise_points(points, labels, (16, 16), (4, 4), size=9)
    lowest = rasterise_points(points, labels, (16, 16), (4, 4), size=9, order="class")
    assert first[0, 2, 2] == 7 and lowest[0, 2, 2] == 2  # input pixel (8, 8) lies in both squares
    assert torch.equal(first != IGNORE_INDEX, lowest != IGNORE_INDEX)
    assert lowest[0, 1, 1] == 7 and lowest[0, 3, 3] == 2
    with pytest.raises(P2MInputError):
        rasterise_points(points, labels, (16, 16), (4, 4), order="label")  # type: ignore[arg-type]
