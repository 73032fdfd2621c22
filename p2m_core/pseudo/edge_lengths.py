r"""Edge lengths of the 8-connected pixel graph (Point2Mask, paper Eq. 2-3).

The pseudo-label costs are shortest-path lengths on a directed graph whose nodes are the
pixels of the task-oriented maps and whose edges join each pixel to its 8 neighbours. An edge
is long where the maps say "object border": where the class probabilities change, and where a
boundary map is high. The length of the edge from pixel ``p`` to its neighbour ``q`` is

.. math::

    \ell(p \to q) = \lVert P^s(p) - P^s(q) \rVert_1
        + \beta \, \big( \max(P^b_{high}(p), P^b_{high}(q)) + P^b_{low}(q) \big)
        + \lambda \sum_e \max(E(p), E(q))
        + \lambda \max\big(0, 1 - \langle e(p), e(q) \rangle\big)

(Eq. 2: ``d^s`` is the L1 distance of the class-probability vectors; Eq. 3: ``d^b`` is the
larger boundary value of the two ends.) Following the reference code, the low-level term is the
value at the *destination* pixel, which makes the graph directed; the other terms are symmetric.
The last two terms, both weighted by ``lambda = extra_weight`` (reference: 0.1), are not in the
paper: ``E`` are optional per-pixel extra edge maps, and ``e`` is an optional embedding (the
reference's "manifold projector", L2-normalised per pixel), whose term is *pairwise*: 0 where
the two embeddings are equal (the clip at 0 only catches rounding, or vectors longer than 1),
``lambda`` for orthogonal ones and ``2 lambda`` for opposite ones. There is no constant step
length and no ``sqrt(2)`` for diagonals: two pixels inside one flat region are at distance 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError

NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
)
"""The 8 neighbour offsets ``(dy, dx)``; channel ``k`` of an edge-length tensor holds the edge
towards ``(y + dy_k, x + dx_k)``. The order is fixed and point-symmetric:
``NEIGHBOUR_OFFSETS[7 - k] == -NEIGHBOUR_OFFSETS[k]``, so ``7 - k`` is the reverse edge."""


def opposite(k: int) -> int:
    """Index of the reverse direction of neighbour ``k`` (``-offset``)."""
    return len(NEIGHBOUR_OFFSETS) - 1 - k


def pair_slices(dy: int, dx: int, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices selecting every pixel ``p`` whose neighbour ``q = p + (dy, dx)`` is inside an
    ``h x w`` image, and the matching slices of ``q``: ``map[..., *p_sl]`` and ``map[..., *q_sl]``
    are aligned views of the two ends of all in-image edges with that offset."""
    p_sl = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    q_sl = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    return p_sl, q_sl


def _check_map(name: str, value: Tensor, shape: tuple[int, int, int]) -> None:
    if tuple(value.shape) != shape:
        raise P2MInputError(f"edge_lengths: {name} must have shape [B, h, w] = {list(shape)}, got {list(value.shape)}")


def edge_lengths(
    semantic: Tensor,
    boundary_high: Tensor | None = None,
    boundary_low: Tensor | None = None,
    extra: Sequence[Tensor] = (),
    beta: float = 0.1,
    extra_weight: float = 0.1,
    embedding: Tensor | None = None,
) -> Tensor:
    """Directed edge lengths of the 8-connected pixel graph (paper Eq. 2-3, see module doc).

    Parameters
    ----------
    semantic : Tensor [B, C, h, w]
        Class probabilities ``P^s`` (any non-negative values work; the L1 difference is taken).
    boundary_high : Tensor [B, h, w], optional
        High-level boundary ``P^b_high`` in [0, 1]; the edge takes ``max`` of its two ends.
    boundary_low : Tensor [B, h, w], optional
        Low-level edge map ``P^b_low`` in [0, 1]; the edge takes the destination's value.
    extra : sequence of Tensor [B, h, w]
        Extra edge maps, each contributing ``extra_weight * max(E(p), E(q))``.
    beta : float
        Weight of the boundary terms (paper: 0.1).
    extra_weight : float
        Weight of the extra maps and of the embedding term (reference: 0.1).
    embedding : Tensor [B, D, h, w], optional
        Per-pixel embedding ``e`` (unit vectors over D: the reference's projector output at the
        graph resolution); the edge gets ``extra_weight * max(0, 1 - <e(p), e(q)>)``. Used as
        given: normalising it is the caller's choice.

    Returns
    -------
    Tensor [B, 8, h, w]
        ``out[b, k, y, x]`` = length of the edge from ``(y, x)`` to
        ``(y + dy_k, x + dx_k)`` (:data:`NEIGHBOUR_OFFSETS`), ``+inf`` where that neighbour
        lies outside the image. Same dtype and device as ``semantic``.

    Examples
    --------
    >>> sem = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # B=1, C=2, h=1, w=2
    >>> edge_lengths(sem)[0, :, 0, 0].tolist()  # only the edge to the right exists
    [inf, inf, inf, inf, 2.0, inf, inf, inf]
    """
    if semantic.dim() != 4:
        raise P2MInputError(f"edge_lengths: semantic must have shape [B, C, h, w], got {list(semantic.shape)}")
    if not semantic.is_floating_point():
        raise P2MInputError(f"edge_lengths: semantic must be a floating-point tensor, got {semantic.dtype}")
    b, _, h, w = semantic.shape
    shape3 = (b, h, w)
    if boundary_high is not None:
        _check_map("boundary_high", boundary_high, shape3)
    if boundary_low is not None:
        _check_map("boundary_low", boundary_low, shape3)
    for i, e in enumerate(extra):
        _check_map(f"extra[{i}]", e, shape3)
    if embedding is not None and (
        embedding.dim() != 4 or embedding.shape[0] != b or embedding.shape[2:] != (h, w)
        or not embedding.is_floating_point()
    ):
        raise P2MInputError(
            f"edge_lengths: embedding must be a float tensor [B, D, h, w] = [{b}, D, {h}, {w}], "
            f"got {embedding.dtype} {list(embedding.shape)}"
        )

    out = torch.full((b, len(NEIGHBOUR_OFFSETS), h, w), float("inf"), dtype=semantic.dtype, device=semantic.device)
    if b == 0:
        return out
    # Classes that are zero over a whole image add |0 - 0| = 0 to every edge: skipping them is
    # exact and, for the reference's P^s (absent classes zeroed), cuts the work from C classes
    # (133 on COCO) to the few present in each image.
    present = [semantic[i, semantic[i].ne(0).flatten(1).any(1)] for i in range(b)]
    # The symmetric part is computed once per undirected edge (the 4 offsets k >= 4) and
    # written to both directions k and 7 - k; the low-level term is added per direction.
    for k in range(4, 8):
        dy, dx = NEIGHBOUR_OFFSETS[k]
        p_sl, q_sl = pair_slices(dy, dx, h, w)
        sym = torch.stack([(s[:, p_sl[0], p_sl[1]] - s[:, q_sl[0], q_sl[1]]).abs().sum(dim=0) for s in present])
        if boundary_high is not None:
            sym = sym + beta * torch.maximum(boundary_high[:, p_sl[0], p_sl[1]], boundary_high[:, q_sl[0], q_sl[1]])
        for e in extra:
            sym = sym + extra_weight * torch.maximum(e[:, p_sl[0], p_sl[1]], e[:, q_sl[0], q_sl[1]])
        if embedding is not None:
            dot = (embedding[:, :, p_sl[0], p_sl[1]] * embedding[:, :, q_sl[0], q_sl[1]]).sum(dim=1)
            sym = sym + extra_weight * (1 - dot).clamp_min(0)
        forward, backward = sym, sym
        if boundary_low is not None:
            forward = sym + beta * boundary_low[:, q_sl[0], q_sl[1]]  # p -> q ends at q
            backward = sym + beta * boundary_low[:, p_sl[0], p_sl[1]]  # q -> p ends at p
        out[:, k, p_sl[0], p_sl[1]] = forward
        out[:, opposite(k), q_sl[0], q_sl[1]] = backward
    return out
