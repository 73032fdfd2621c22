r"""Long-range RGB affinity: the tree energy loss (paper Sec. 3.4, ``L_RGB``, weight alpha2 = 3).

After Liang et al., "Tree Energy Loss: Towards Sparsely Annotated Semantic Segmentation" (CVPR
2022), as the Point2Mask release applies it to the semantic map at stride 8.

**Tree.** The nodes are the ``n = h w`` pixels of the image ``I`` (as the network sees it,
mean/std normalised) resized to the map's resolution; the edges join 4-connected neighbours with
weight ``w_e = sum_k (I_k(p) - I_k(q))^2``. :func:`grid_mst` takes a minimum spanning tree with
``scipy.sparse.csgraph.minimum_spanning_tree`` on the weights ``w_e + 1`` (the release's op also
adds 1): scipy drops explicit zero entries, so flat colour regions would otherwise leave the
graph disconnected, and adding the same constant to every edge does not change which trees are
minimal (all spanning trees have ``n - 1`` edges; only ties may resolve differently). The tree is
rooted at a centre (a middle node of a longest path), which halves its depth.

**Filter.** With ``s_e = exp(-w_e / sigma)`` (sigma = 0.02) and ``S_ij`` the product of ``s_e``
along the tree path from ``i`` to ``j`` (``S_ii = 1``),

.. math::

    AS_i = \frac{\sum_j S_{ij}\, p_j}{\sum_j S_{ij}} ,

for every class channel of the probabilities ``p``. ``U(x)_i = sum_j S_ij x_j`` takes two passes
over the tree (:func:`tree_aggregate`), so the filter is linear in ``n``:

.. math::

    up_i = x_i + \sum_{c \in children(i)} s_c\, up_c  \quad\text{(leaves to root)},

    down_{root} = up_{root}, \qquad down_c = (1 - s_c^2)\, up_c + s_c\, down_{parent(c)}
    \quad\text{(root to leaves)},

and ``U(x) = down`` (``s_c`` is the weight of the edge from ``c`` to its parent). Nodes are
processed level by level in breadth-first order, vectorised over the batch and the channels, so
the cost is one small batch of tensor operations per tree level: the depth of the tree (after
centring, half the tree's diameter) sets the number of kernel launches.

**Gradients.** ``S`` is symmetric, so ``dL/dx = U(g)`` for the incoming gradient ``g``. For the edge
``e`` from ``c`` to its parent ``r`` (``T_c`` the subtree of ``c``), every ``S_ij`` with ``i`` in
``T_c`` and ``j`` outside factors as ``S_ic s_e S_rj``, which gives, without dividing by ``s_e``,

.. math::

    \frac{\partial L}{\partial s_e} = \sum_k up^g_{ck}\,(down^x_{rk} - s_e\, up^x_{ck})
        + up^x_{ck}\,(down^g_{rk} - s_e\, up^g_{ck}) ,

one more pair of passes (on ``g``). ``s`` comes from the image by ordinary torch operations, so
an image that requires grad gets its gradient too; the tree itself is a discrete choice.

**Loss.**

.. math::

    L_{RGB} = \frac{1}{N_u} \sum_{b, i, c} \lvert p_{b,c,i} - AS_{b,c,i} \rvert ,

summed over all pixels and classes; ``N_u`` is the number of unlabelled pixels of the batch, the
pixels outside the partial cross-entropy's labels, shared by the data-parallel workers
(:func:`p2m_core.losses.normalise.batch_count`). As in the release, the sum and the count run over
the whole padded canvas: the criterion counts padding pixels as unlabelled. Gradients flow into
both ``p`` and ``AS`` (nothing is detached). ``N_u = 0`` leaves the sum undivided.

**Which image.** The edge weights are squared differences of the image *as the network sees it*,
``(rgb - mean) / std`` with ImageNet's statistics and padding 0 (the release's input), not of
RGB in [0, 1]: sigma = 0.02 is calibrated to that scale. A colour step of ``d`` in every channel
of [0, 1] RGB gives ``s = exp(-sum_k (d / std_k)^2 / sigma)``, about ``exp(-20 * 3 d^2 / sigma)``;
on [0, 1] RGB the same step would be ~20 times weaker, and the filter would smooth across
edges the release cuts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count

SIGMA = 0.02
"""Scale of the filter's edge strength ``exp(-w_e / sigma)`` (release)."""

MST_OFFSET = 1.0
"""Constant added to every edge weight before scipy's MST (see module doc)."""


@dataclass(frozen=True)
class GridTree:
    """Spanning trees of a batch of ``h x w`` pixel grids, rooted and ordered by level.

    Node ``b * h * w + y * w + x`` is pixel ``(y, x)`` of image ``b``.

    parent : Tensor [B * h * w] long
        Parent of each node; a root is its own parent.
    order : Tensor [B * h * w - B] long
        The non-root nodes sorted by depth (breadth-first levels; all images together).
    level_starts : tuple of int
        ``order[level_starts[d - 1]:level_starts[d]]`` are the nodes at depth ``d`` (d >= 1);
        ``len(level_starts) - 1`` is the depth of the deepest tree.
    """

    parent: Tensor
    order: Tensor
    level_starts: tuple[int, ...]
    batch: int
    height: int
    width: int

    @property
    def depth(self) -> int:
        return len(self.level_starts) - 1

    def levels(self) -> list[tuple[Tensor, Tensor]]:
        """Per depth 1, 2, ...: (nodes, their parents), global node indices (views, no copy)."""
        parents = self.parent[self.order]
        starts = self.level_starts
        return [(self.order[a:b], parents[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]

    def edges(self) -> tuple[Tensor, Tensor]:
        """All tree edges as (child, parent), global node indices."""
        return self.order, self.parent[self.order]

    @classmethod
    def from_trees(cls, trees: list[sp.spmatrix], height: int, width: int, device: torch.device | str = "cpu") -> GridTree:
        """Root each spanning tree (scipy sparse, ``n x n``, any edge orientation, ``n = height
        width``) at a centre and order the nodes by level; image ``b`` is ``trees[b]``."""
        n = height * width
        parents, depths = [], []
        for b, tree in enumerate(trees):
            if tree.shape != (n, n) or tree.nnz != n - 1:
                raise P2MInputError(
                    f"GridTree: image {b}: expected a spanning tree of {n} nodes ({n - 1} edges), got shape {tree.shape} with {tree.nnz} edges"
                )
            parent, depth = _root_tree(sp.csr_matrix(tree))
            if depth is None:
                raise P2MInputError(f"GridTree: image {b}: the {n - 1} edges do not connect the {n} nodes")
            parents.append(parent + b * n)
            depths.append(depth)
        B = len(trees)
        parent = np.concatenate(parents)
        depth = np.concatenate(depths)
        order = np.argsort(depth, kind="stable")[B:]  # the B roots (depth 0) come first
        starts = tuple(int(v) for v in np.cumsum(np.bincount(depth, minlength=1)) - B)
        return cls(
            parent=torch.from_numpy(parent).to(device),
            order=torch.from_numpy(order).to(device),
            level_starts=starts,
            batch=B,
            height=height,
            width=width,
        )


def grid_edge_weights(image: Tensor) -> tuple[Tensor, Tensor]:
    """Squared colour differences ``sum_k (dI_k)^2`` of the 4-connected grid: horizontal edges
    [B, h, w - 1] (pixel ``(y, x)`` to ``(y, x + 1)``) and vertical edges [B, h - 1, w]."""
    horizontal = ((image[..., :, 1:] - image[..., :, :-1]) ** 2).sum(dim=1)
    vertical = ((image[..., 1:, :] - image[..., :-1, :]) ** 2).sum(dim=1)
    return horizontal, vertical


def _root_tree(tree: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray | None]:
    """Parent and depth of each node of a spanning tree rooted at a centre (depth None when
    the graph is not connected)."""
    first = shortest_path(tree, directed=False, unweighted=True, indices=0)
    if not np.isfinite(first).all():
        return np.zeros(0, dtype=np.int64), None
    far = int(np.argmax(first))
    dist, pred = shortest_path(tree, directed=False, unweighted=True, indices=far, return_predecessors=True)
    node = int(np.argmax(dist))  # the other end of a longest path
    half = int(dist[node]) // 2
    while dist[node] > half:  # walk back towards `far` to the middle of the path
        node = int(pred[node])
    depth, parent = shortest_path(tree, directed=False, unweighted=True, indices=node, return_predecessors=True)
    parent[node] = node
    return parent.astype(np.int64), depth.astype(np.int64)


def grid_mst(image: Tensor) -> GridTree:
    """Minimum spanning trees of the 4-connected grids of a batch of images (module doc).

    Parameters
    ----------
    image : Tensor [B, K, h, w]
        Per-pixel features (the normalised RGB image at the map's resolution). Moved to the CPU
        for scipy (one host transfer); the returned index tensors live on ``image.device``.
    """
    if image.dim() != 4:
        raise P2MInputError(f"grid_mst: image must be [B, K, h, w], got {list(image.shape)}")
    B, _, h, w = image.shape
    n = h * w
    horizontal, vertical = (t.detach().double().cpu().numpy() for t in grid_edge_weights(image))
    ids = np.arange(n).reshape(h, w)
    rows = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    cols = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    trees = []
    for b in range(B):
        weights = np.concatenate([horizontal[b].ravel(), vertical[b].ravel()]) + MST_OFFSET
        trees.append(minimum_spanning_tree(sp.coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()))
    return GridTree.from_trees(trees, h, w, image.device)


def _passes(x: Tensor, s: Tensor, levels: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The two passes of the module doc on node-major ``x`` [M, C]: returns (up, down)."""
    up = x.clone()
    for nodes, parents in reversed(levels):
        up.index_add_(0, parents, s[nodes, None] * up.index_select(0, nodes))
    down = (1 - s * s)[:, None] * up
    for nodes, parents in levels:
        down.index_add_(0, nodes, s[nodes, None] * down.index_select(0, parents))
    return up, down


class _TreeAggregate(torch.autograd.Function):
    """``U(x) = S x`` on the tree, with the symmetric backward of the module doc."""

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, tree: GridTree) -> Tensor:  # type: ignore[override]
        # Roots have no edge: their s only scales down[root] = (1 - s^2) up, so it must be 0.
        roots = tree.parent == torch.arange(tree.parent.numel(), device=s.device)
        s = s.masked_fill(roots, 0.0)
        levels = tree.levels()
        up, down = _passes(x, s, levels)
        ctx.save_for_backward(up, down, s)
        ctx.tree = tree
        ctx.levels = levels
        return down

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        up_x, down_x, s = ctx.saved_tensors
        up_g, down_g = _passes(grad.contiguous(), s, ctx.levels)
        grad_s = None
        if ctx.needs_input_grad[1]:
            child, parent = ctx.tree.edges()
            s_c = s[child, None]
            ux, ug = up_x[child], up_g[child]
            per_edge = (ug * (down_x[parent] - s_c * ux) + ux * (down_g[parent] - s_c * ug)).sum(dim=1)
            grad_s = torch.zeros_like(s).index_put_((child,), per_edge)
        return (down_g if ctx.needs_input_grad[0] else None), grad_s, None


def tree_aggregate(x: Tensor, strength: Tensor, tree: GridTree) -> Tensor:
    """``U(x)_i = sum_j S_ij x_j`` (module doc) in linear time.

    Parameters
    ----------
    x : Tensor [B * h * w, C]
        Node-major values (node index as in :class:`GridTree`).
    strength : Tensor [B * h * w]
        ``s`` of the edge from each node to its parent, in [0, 1] (ignored at the roots).
    """
    return _TreeAggregate.apply(x, strength, tree)


def tree_filter(x: Tensor, image: Tensor, tree: GridTree | None = None, sigma: float = SIGMA) -> Tensor:
    """The normalised tree filter ``AS = U(x) / U(1)`` (module doc).

    Parameters
    ----------
    x : Tensor [B, C, h, w]
        Values to filter (class probabilities).
    image : Tensor [B, K, h, w]
        Features defining the edge weights ``w_e`` (same resolution as ``x``).
    tree : GridTree, optional
        A tree of ``image`` from :func:`grid_mst`; built here when omitted.
    sigma : float
        ``s_e = exp(-w_e / sigma)``.

    Returns
    -------
    Tensor [B, C, h, w]
    """
    if x.dim() != 4 or image.dim() != 4 or x.shape[0] != image.shape[0] or x.shape[2:] != image.shape[2:]:
        raise P2MInputError(f"tree_filter: x [B, C, h, w] and image [B, K, h, w] must agree, got {list(x.shape)} and {list(image.shape)}")
    B, C, h, w = x.shape
    if tree is None:
        tree = grid_mst(image)
    if (tree.batch, tree.height, tree.width) != (B, h, w):
        raise P2MInputError(f"tree_filter: tree of {(tree.batch, tree.height, tree.width)} for maps of {(B, h, w)}")
    feats = image.to(x.dtype).permute(0, 2, 3, 1).reshape(B * h * w, -1)
    weight = ((feats - feats[tree.parent]) ** 2).sum(dim=1)
    strength = torch.exp(-weight / sigma)
    nodes = x.permute(0, 2, 3, 1).reshape(B * h * w, C)
    ones = torch.ones_like(nodes[:, :1])
    aggregated = tree_aggregate(torch.cat([nodes, ones], dim=1), strength, tree)
    filtered = aggregated[:, :C] / aggregated[:, C:]
    return filtered.reshape(B, h, w, C).permute(0, 3, 1, 2)


def tree_energy_loss(probs: Tensor, image: Tensor, unlabelled: Tensor, sigma: float = SIGMA) -> Tensor:
    """``L_RGB`` (module doc).

    Parameters
    ----------
    probs : Tensor [B, C, h, w]
        Class probabilities (softmax of the semantic logits).
    image : Tensor [B, K, H, W]
        The mean/std-normalised image, padding 0 (module doc, "Which image"); resized bilinearly
        (``align_corners=False``) to ``h x w``.
    unlabelled : Tensor [B, h, w] bool
        Pixels outside the partial cross-entropy's labels (padding included, as the release);
        their count over the batch divides the sum.

    Returns
    -------
    Scalar tensor.
    """
    if probs.dim() != 4 or unlabelled.shape != probs.shape[:1] + probs.shape[2:]:
        raise P2MInputError(
            f"tree_energy_loss: probs must be [B, C, h, w] and unlabelled [B, h, w], got {list(probs.shape)} and {list(unlabelled.shape)}"
        )
    with torch.no_grad():
        small = image.to(probs.dtype)
        if small.shape[-2:] != probs.shape[-2:]:
            small = F.interpolate(small, size=probs.shape[-2:], mode="bilinear", align_corners=False)
    filtered = tree_filter(probs, small, grid_mst(small), sigma)
    count = batch_count(unlabelled.sum()).to(probs.dtype)
    return (probs - filtered).abs().sum() / count
