"""Supplier capacities k against direct NumPy counts (paper Sec. 3.3.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.capacities import (
    equal_division,
    mask_centroids,
    nearest_centroid,
    nearest_point,
)


@pytest.mark.parametrize("n,m", [(10, 3), (9, 3), (0, 4), (2, 5), (16384, 15), (7, 1)])
def test_equal_division_sums_and_is_balanced(n: int, m: int) -> None:
    k = equal_division(n, m)
    assert k.dtype == torch.long and k.shape == (m,)
    assert int(k.sum()) == n
    assert int(k.max() - k.min()) <= 1
    assert bool((k >= n // m).all())


def test_equal_division_remainder_follows_order() -> None:
    k = equal_division(11, 4, order=torch.tensor([3, 1, 0, 2]))
    assert k.tolist() == [3, 3, 2, 3]  # remainder 3 to points 3, 1, 0
    with pytest.raises(P2MInputError):
        equal_division(5, 0)


def test_nearest_point_equals_direct_argmin_count() -> None:
    rng = np.random.default_rng(0)
    cost = rng.random((5, 200)).astype(np.float32)
    mask = rng.random(200) < 0.6
    expected = np.bincount(cost[:, mask].argmin(0), minlength=5)
    k = nearest_point(torch.tensor(cost), torch.tensor(mask))
    assert k.tolist() == expected.tolist()
    assert int(k.sum()) == int(mask.sum())


def test_nearest_point_own_pixels_prevent_zero_capacity() -> None:
    cost = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])  # two points on one pixel...
    mask = torch.ones(4, dtype=torch.bool)
    assert nearest_point(cost, mask).tolist() == [4, 0]  # ...the tie goes to the first
    cost2 = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 3.0]])  # point 1 sits on pixel 3
    assert nearest_point(cost2, mask, own_pixels=torch.tensor([0, 3])).tolist() == [3, 1]


def c_shape(h: int = 9, w: int = 9) -> np.ndarray:
    """A C-shaped region: its centroid lies in the hole."""
    mask = np.zeros((h, w), bool)
    mask[1:8, 1:3] = True  # left bar
    mask[1:3, 1:8] = True  # top bar
    mask[6:8, 1:8] = True  # bottom bar
    return mask


def test_mask_centroids_fall_back_when_outside_or_empty() -> None:
    labels = np.full((9, 12), -1, np.int64)
    labels[:, :9][c_shape()] = 0  # C shape: centroid in the hole
    labels[3:6, 9:12] = 1  # a 3x3 square: centroid at its centre (4, 10)
    points = torch.tensor([[1, 1], [3, 9], [8, 11]])  # point 2 has an empty region
    ys, xs = np.nonzero(labels == 0)
    centroid_c = (int(np.floor(ys.mean() + 0.5)), int(np.floor(xs.mean() + 0.5)))
    assert labels[centroid_c] != 0  # the C's centroid is indeed outside it
    got = mask_centroids(torch.tensor(labels), points)
    assert got.tolist() == [[1, 1], [4, 10], [8, 11]]


def euclidean_fn(h: int, w: int):
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")

    def distance(sources: np.ndarray) -> np.ndarray:
        return np.sqrt((yy[None] - sources[:, 0, None, None]) ** 2 + (xx[None] - sources[:, 1, None, None]) ** 2)

    return distance


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_nearest_centroid_matches_numpy_oracle(iters: int) -> None:
    rng = np.random.default_rng(iters)
    h, w, m = 20, 24, 4
    dist = euclidean_fn(h, w)
    points = np.stack([rng.integers(0, h, m), rng.integers(0, w, m)], 1)
    mask = np.ones((h, w), bool)
    mask[:, :5] = False  # pixels not transported
    # oracle: argmin regions, centroids (point when outside / empty), re-assign, count
    labels = np.where(mask, dist(points).argmin(0), -1)
    for _ in range(iters):
        sources = points.copy()
        for i in range(m):
            ys, xs = np.nonzero(labels == i)
            if len(ys):
                c = (int(np.floor(ys.mean() + 0.5)), int(np.floor(xs.mean() + 0.5)))
                if labels[c] == i:
                    sources[i] = c
        labels = np.where(mask, dist(sources).argmin(0), -1)
    expected = np.bincount(labels[labels >= 0], minlength=m)

    k = nearest_centroid(
        torch.tensor(dist(points), dtype=torch.float32), torch.tensor(points), torch.tensor(mask),
        lambda s: torch.tensor(dist(s.numpy()), dtype=torch.float32), iters=iters,
    )
    assert k.tolist() == expected.tolist()
    assert int(k.sum()) == int(mask.sum())


def test_nearest_centroid_recentres_a_point_at_the_edge_of_its_region() -> None:
    # 1 x 20 strip, points at x = 0 and x = 19 with a cost that favours point 0 up to x = 14.
    # Costs from the centroids (x = 7 and x = 17) split the strip at their midpoint 12.
    xs = np.arange(20, dtype=np.float32)
    cost = np.stack([xs * 0.5, (19 - xs) * 1.5])[:, None, :]  # [2, 1, 20]

    def distance(sources: torch.Tensor) -> torch.Tensor:
        return torch.tensor(np.abs(xs[None] - sources[:, 1, None].numpy()), dtype=torch.float32)[:, None, :]

    k = nearest_centroid(torch.tensor(cost), torch.tensor([[0, 0], [0, 19]]), torch.ones(1, 20, dtype=torch.bool),
                         distance, iters=1)
    # initial regions: 0.5 x < 1.5 (19 - x) -> x <= 14: [0..14], [15..19]; centroids 7, 17;
    # |x - 7| < |x - 17| for x < 12, tie at 12 -> point 0: k = [13, 7]
    assert k.tolist() == [13, 7]
