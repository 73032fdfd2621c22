"""Tree energy loss: the linear-time tree filter against a brute-force O(n^2) path-product filter.

The oracle builds S_ij by walking the explicit tree path between every pair of pixels (depth-first
search over the same tree, in Python) and multiplying exp(-w_e / sigma) along it; values and
autograd gradients (into the probabilities and into the image) must match the two-pass filter
and its hand-written backward. The MST is checked against a Kruskal written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.losses.tree_energy import GridTree, grid_mst, tree_aggregate, tree_energy_loss, tree_filter


def tree_edges(tree: GridTree) -> list[tuple[int, int]]:
    child, parent = tree.edges()
    return list(zip(child.tolist(), parent.tolist(), strict=True))


def brute_force_filter(x: torch.Tensor, image: torch.Tensor, tree: GridTree, sigma: float) -> torch.Tensor:
    """AS = S x / S 1 with S_ij the product of exp(-w_e / sigma) over the explicit tree path."""
    B, C, h, w = x.shape
    n = h * w
    feats = image.permute(0, 2, 3, 1).reshape(B * n, -1)
    neighbours: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in range(B * n)}
    for c, p in tree_edges(tree):
        weight = ((feats[c] - feats[p]) ** 2).sum()
        neighbours[c].append((p, weight))
        neighbours[p].append((c, weight))
    out = []
    for b in range(B):
        rows = []
        for i in range(b * n, (b + 1) * n):
            path_sum: dict[int, torch.Tensor] = {i: torch.zeros((), dtype=x.dtype)}
            stack = [i]
            while stack:
                u = stack.pop()
                for v, weight in neighbours[u]:
                    if v not in path_sum:
                        path_sum[v] = path_sum[u] + weight
                        stack.append(v)
            assert len(path_sum) == n  # the tree spans the image
            rows.append(torch.stack([torch.exp(-path_sum[j] / sigma) for j in range(b * n, (b + 1) * n)]))
        S = torch.stack(rows)
        xb = x[b].reshape(C, n).T
        out.append(((S @ xb) / S.sum(dim=1, keepdim=True)).T.reshape(C, h, w))
    return torch.stack(out)


def colours(B: int, h: int, w: int, flat: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = 0.15 * torch.rand(B, 3, h, w, generator=g, dtype=torch.float64)
    if flat:  # flat regions: zero-weight edges, which scipy's MST would drop
        image[:, :, :3, :4] = 0.3
        image[-1] = 0.5
    return image


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_filter_values_and_gradients_match_brute_force(flat: bool, sigma: float):
    B, C, h, w = 2, 3, 5, 6
    image = colours(B, h, w, flat, seed=1).requires_grad_(True)
    x = torch.rand(B, C, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    tree = grid_mst(image)
    fast = tree_filter(x, image, tree, sigma)
    slow = brute_force_filter(x, image, tree, sigma)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    g = torch.randn(fast.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fast_grads = torch.autograd.grad((fast * g).sum(), [x, image])
    slow_grads = torch.autograd.grad((slow * g).sum(), [x, image])
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert slow_grads[1].abs().max() > 1e-3  # the image gradient is really exercised


def test_float32_filter_matches_brute_force():
    image = colours(1, 5, 6, True, seed=4).float()
    x = torch.rand(1, 4, 5, 6)
    tree = grid_mst(image)
    torch.testing.assert_close(tree_filter(x, image, tree), brute_force_filter(x, image, tree, 0.02), rtol=1e-5, atol=1e-6)


def test_deep_tree_matches_brute_force_and_gradcheck():
    """A serpentine path (the deepest spanning tree of a grid) given through GridTree.from_trees."""
    import scipy.sparse as sp

    h, w = 4, 5
    order = np.arange(h * w).reshape(h, w)
    order[1::2] = order[1::2, ::-1]
    path = order.ravel()
    snake = sp.coo_matrix((np.ones(h * w - 1), (path[:-1], path[1:])), shape=(h * w, h * w))
    tree = GridTree.from_trees([snake], h, w)
    assert tree.depth == (h * w) // 2
    image = colours(1, h, w, False, seed=5).requires_grad_(True)
    x = torch.rand(1, 2, h, w, dtype=torch.float64).requires_grad_(True)
    torch.testing.assert_close(tree_filter(x, image, tree, 0.05), brute_force_filter(x, image, tree, 0.05))
    assert torch.autograd.gradcheck(lambda x, im: tree_filter(x, im, tree, 0.05), (x, image))


def test_aggregate_gradcheck_with_zero_and_unit_strengths():
    image = colours(2, 4, 4, True, seed=6)
    tree = grid_mst(image)
    n = 2 * 16
    s = torch.rand(n, dtype=torch.float64)
    s[::5] = 0.0  # an edge that cuts the tree
    s[1::7] = 1.0  # an edge inside a flat region
    x = torch.randn(n, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(tree_aggregate, (x.requires_grad_(True), s.requires_grad_(True), tree))


def kruskal_weight(image: np.ndarray) -> float:
    """Total weight of a minimum spanning tree of the 4-connected grid, by Kruskal."""
    _, h, w = image.shape
    edges = []
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < h and x + dx < w:
                    d = ((image[:, y, x] - image[:, y + dy, x + dx]) ** 2).sum()
                    edges.append((d, y * w + x, (y + dy) * w + x + dx))
    root = list(range(h * w))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    total = 0.0
    for d, a, b in sorted(edges):
        ra, rb = find(a), find(b)
        if ra != rb:
            root[ra] = rb
            total += d
    return total


@pytest.mark.parametrize("flat", [False, True])
def test_mst_spans_the_grid_and_is_minimal(flat: bool):
    image = colours(2, 6, 7, flat, seed=7)
    image[1] = 0.0  # every edge weighs zero
    tree = grid_mst(image)
    edges = tree_edges(tree)
    assert len(edges) == 2 * (6 * 7 - 1)
    feats = image.permute(0, 2, 3, 1).reshape(-1, 3)
    for b in range(2):
        mine = [(c, p) for c, p in edges if c // 42 == b]
        assert all(p // 42 == b for _, p in mine)
        for c, p in mine:  # grid neighbours only
            dy, dx = abs(c % 42 // 7 - p % 42 // 7), abs(c % 7 - p % 7)
            assert dy + dx == 1
        weight = sum(float(((feats[c] - feats[p]) ** 2).sum()) for c, p in mine)
        assert weight == pytest.approx(kruskal_weight(image[b].numpy()), abs=1e-12)
    # every node reaches its root within `depth` steps
    parent = tree.parent
    node = torch.arange(parent.numel())
    for _ in range(tree.depth):
        node = parent[node]
    assert torch.equal(parent[node], node)


def test_loss_is_zero_for_constant_probabilities_and_positive_otherwise():
    image = torch.randn(2, 3, 8, 9)
    unlabelled = torch.ones(2, 8, 9, dtype=torch.bool)
    constant = torch.tensor([0.2, 0.5, 0.3])[None, :, None, None].expand(2, 3, 8, 9).clone().requires_grad_(True)
    loss = tree_energy_loss(constant, image, unlabelled)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    varying = torch.softmax(torch.randn(2, 3, 8, 9), dim=1).requires_grad_(True)
    loss = tree_energy_loss(varying, 0.01 * image, unlabelled)
    assert loss.item() > 0
    loss.backward()
    assert varying.grad is not None and varying.grad.abs().sum() > 0


def test_loss_divides_by_the_unlabelled_pixels_and_resizes_the_image():
    probs = torch.softmax(torch.randn(1, 4, 6, 6), dim=1)
    image = torch.rand(1, 3, 24, 24)
    all_unlabelled = torch.ones(1, 6, 6, dtype=torch.bool)
    half = all_unlabelled.clone()
    half[:, :3] = False
    full = tree_energy_loss(probs, image, all_unlabelled)
    assert tree_energy_loss(probs, image, half).item() == pytest.approx(2 * full.item(), rel=1e-5)
    # no unlabelled pixel: the plain sum, finite
    none = tree_energy_loss(probs, image, torch.zeros(1, 6, 6, dtype=torch.bool))
    assert torch.isfinite(none) and none.item() == pytest.approx(36 * full.item(), rel=1e-5)
    small = torch.nn.functional.interpolate(image, size=(6, 6), mode="bilinear", align_corners=False)
    expected = (probs - tree_filter(probs, small)).abs().sum() / 36
    torch.testing.assert_close(full, expected)


def test_filter_rejects_mismatched_tree():
    tree = grid_mst(torch.rand(1, 3, 4, 4))
    with pytest.raises(P2MInputError):
        tree_filter(torch.rand(1, 2, 4, 5), torch.rand(1, 3, 4, 5), tree)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 1)])
def test_degenerate_grids_give_finite_losses(size: tuple[int, int]):
    probs = torch.softmax(torch.randn(2, 3, *size), dim=1).requires_grad_(True)
    loss = tree_energy_loss(probs, torch.rand(2, 3, *size), torch.ones(2, *size, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()
    assert grid_mst(torch.rand(1, 3, *size)).depth == (max(size) - 1 + 1) // 2
