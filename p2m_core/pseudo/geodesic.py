r"""Exact multi-source geodesic distances on the 8-connected pixel graph (paper Sec. 3.3.2).

Point2Mask's transport cost ``c_ij`` is the shortest-path length from labelled point ``i`` to
pixel ``j`` on the directed graph of :func:`p2m_core.pseudo.edge_lengths.edge_lengths`:

.. math::

    c_{ij} = \min_{\text{paths } i = v_0 \to v_1 \to \dots \to v_n = j}
             \sum_{t=1}^{n} \ell(v_{t-1} \to v_t), \qquad c_{ii} = 0,

one distance map per source (not a minimum over the sources). Two backends, equal up to float
rounding:

``"scipy"``
    :func:`scipy.sparse.csgraph.dijkstra` on a CSR matrix of the graph, all sources of an image
    in one call. It runs on the CPU; it is the oracle for the fast backend.
``"torch"``
    A batched label-correcting solver for every source of every image at once, on the input's
    device, with whole-tensor operations (Python loops only over rows and sweeps, never over
    pixels, sources or images). Distances start at 0 on the source and ``+inf`` elsewhere; the
    only update is the edge relaxation ``d[q] <- min(d[q], d[p] + l(p -> q))``, so every value
    is always the length of some path and never increases.

    A *downward pass* visits the rows top to bottom; row ``y`` takes the best of its three
    in-edges from row ``y - 1`` (final for this pass), then of its in-edges from its left and
    right neighbours. One pass makes exact every distance whose shortest path stays in the
    90-degree cone below its source (each step one row down: diagonal edges are as long as
    straight ones here, so straight-ish paths are of this kind), with single sideways steps
    too. A *sweep* is four passes: down and up, then right and left. Each pair runs as the
    downward pass of two *frames* stacked in one tensor and relaxed in lockstep, the image and
    its rows reversed (then the transpose and its rows reversed): ten tensor operations per
    row for both frames and all sources and images; the pair is then merged with ``min``.

    From the second sweep on, every map is checked against Bellman's optimality condition
    ``d[q] <= (d[p] + l(p -> q)) (1 + rtol)`` on all 8 directions, with whole-tensor
    operations; the maps that pass are final, only the others are swept again. The check is
    what makes the result exact: every value being a path length, the condition on every edge
    gives, by induction along a shortest path, ``dist <= d <= dist (1 + rtol)^(edges)``;
    ``rtol`` (``1e-12`` in float64, ``1e-6`` in float32) only absorbs rounding differences
    between frames. Each sweep extends along every shortest path the prefix of exact distances
    by at least one edge, so ``h * w + 1`` sweeps always suffice; realistic maps need 2-3
    (a path that leaves the cones around its source needs more), a spiral maze one per two
    turns of its corridor.

    The solver works in float64 by default (``work_dtype``): path sums round at ``1e-16``,
    so the float32 result equals scipy's (float64 Dijkstra, then cast) except for rounding
    ties. In float32 it is faster, and its distances differ from Dijkstra's by a few float32
    ulps (each path sum is rounded in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor

from p2m_core.config import GEODESIC_BACKENDS as BACKENDS
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import NEIGHBOUR_OFFSETS, pair_slices


def geodesic_distances(
    lengths: Tensor,
    sources: Sequence[Tensor],
    backend: str = "torch",
    *,
    max_sweeps: int | None = None,
    log: dict[str, Any] | None = None,
    work_dtype: torch.dtype = torch.float64,
) -> list[Tensor]:
    """Shortest-path lengths from every source pixel to every pixel, per image.

    Solves, for each image ``b`` and each of its sources ``s = (y, x)``, the single-source
    shortest-path problem on the directed 8-connected graph whose edge ``p -> p + offset_k`` has
    length ``lengths[b, k, p]`` (module docstring).

    Parameters
    ----------
    lengths : Tensor [B, 8, h, w]
        Non-negative edge lengths in :data:`NEIGHBOUR_OFFSETS` order, ``+inf`` for missing edges
        (as returned by :func:`~p2m_core.pseudo.edge_lengths.edge_lengths`). Zero-length edges
        are edges (not "no edge").
    sources : sequence of B Tensors [m_i, 2] (integer, ``(y, x)``)
        Source pixels of each image; duplicates are allowed (each gets its own row).
    backend : {"torch", "scipy"}
        ``"torch"``: batched raster sweeps on ``lengths.device``; ``"scipy"``: Dijkstra on the
        CPU, one call per image.
    max_sweeps : int, optional
        Torch backend: cap on the number of sweeps. Default ``h * w + 1``, which is provably
        enough; a ``RuntimeError`` is raised when the cap is hit before convergence.
    log : dict, optional
        Filled with diagnostics: ``backend``; for torch also ``sweeps`` (sweeps run, i.e.
        rounds of the four directional passes), ``passes`` (``4 * sweeps``),
        ``maps_per_sweep`` (how many distance maps each sweep relaxed: all at first, then
        only those that failed the optimality check) and ``converged``.
    work_dtype : torch.float64 or torch.float32
        Torch backend: precision of the computation. float64 (default) is exact to the
        float32 output; float32 is faster, with differences of a few float32 ulps.

    Returns
    -------
    list of B Tensors [m_i, h, w]
        ``out[b][j, y, x]`` = distance from ``sources[b][j]`` to ``(y, x)``; ``+inf`` where
        unreachable; 0 at the source's own pixel. dtype of ``lengths``, on its device.

    Notes
    -----
    The torch backend holds four copies of all distance maps (its frames) on the image padded
    by one pixel, plus a transient one: about ``40 * B * max_i(m_i) * (h + 2) * (w + 2)``
    bytes in float64, 81 MB for 8 images x 15 sources at 128 x 128 (half in float32).

    Examples
    --------
    >>> from p2m_core.pseudo.edge_lengths import edge_lengths
    >>> sem = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # 1 x 3 image, 2 classes
    >>> geodesic_distances(edge_lengths(sem), [torch.tensor([[0, 0]])])[0].tolist()
    [[[0.0, 0.0, 2.0]]]
    """
    if backend not in BACKENDS:
        raise P2MInputError(f"geodesic_distances: backend must be one of {BACKENDS}, got {backend!r}")
    if work_dtype not in _RTOL:
        raise P2MInputError(f"geodesic_distances: work_dtype must be torch.float64 or torch.float32, got {work_dtype}")
    _check_lengths(lengths)
    b, _, h, w = lengths.shape
    flat = _check_sources(sources, b, h, w, lengths.device)
    if log is not None:
        log["backend"] = backend
    if backend == "scipy":
        if b > 1 and sum(len(f) for f in flat) * b * h * w <= _BATCH_ENTRIES:
            return [d.to(lengths.dtype) for d in _dijkstra_batch(lengths, flat)]
        return [_dijkstra_image(lengths[i], f).to(lengths.dtype) for i, f in enumerate(flat)]
    return _sweep_solver(lengths, flat, max_sweeps, log, work_dtype)


# ----------------------------------------------------------------------------- validation


def _check_lengths(lengths: Tensor) -> None:
    if lengths.dim() != 4 or lengths.shape[1] != len(NEIGHBOUR_OFFSETS):
        raise P2MInputError(f"geodesic_distances: lengths must have shape [B, 8, h, w], got {list(lengths.shape)}")
    if not lengths.is_floating_point():
        raise P2MInputError(f"geodesic_distances: lengths must be floating point, got {lengths.dtype}")
    if lengths.numel() == 0:
        return
    if torch.isnan(lengths).any():
        raise P2MInputError("geodesic_distances: lengths contain NaN")
    low = lengths.min()
    if low < 0:
        raise P2MInputError(f"geodesic_distances: lengths must be non-negative (shortest paths), min is {low.item()}")


def _check_sources(sources: Sequence[Tensor], b: int, h: int, w: int, device: torch.device) -> list[Tensor]:
    """Validate the sources and return them as flat pixel indices ``y * w + x`` (long, [m_i])."""
    if len(sources) != b:
        raise P2MInputError(f"geodesic_distances: got {len(sources)} source tensors for a batch of {b} images")
    flat = []
    for i, src in enumerate(sources):
        src = torch.as_tensor(src)
        if src.numel() == 0:
            flat.append(torch.zeros(0, dtype=torch.long, device=device))
            continue
        if src.dim() != 2 or src.shape[1] != 2:
            raise P2MInputError(f"geodesic_distances: sources[{i}] must have shape [m, 2] (y, x), got {list(src.shape)}")
        if src.is_floating_point() or src.is_complex() or src.dtype == torch.bool:
            raise P2MInputError(f"geodesic_distances: sources[{i}] must be integer (y, x), got {src.dtype}")
        src = src.long()
        bad = (src[:, 0] < 0) | (src[:, 0] >= h) | (src[:, 1] < 0) | (src[:, 1] >= w)
        if bad.any():
            j = int(bad.nonzero()[0, 0])
            y, x = src[j].tolist()
            raise P2MInputError(
                f"geodesic_distances: image {i}, source {j} at (y={y}, x={x}) is outside the {h}x{w} graph"
            )
        flat.append((src[:, 0] * w + src[:, 1]).to(device))
    return flat


# ----------------------------------------------------------------------------- scipy backend


#: Largest sources x nodes of one batched Dijkstra call (its dense output, float64): small graphs
#: (the tiny network's 16 x 16) are solved in one call for the whole batch, large ones per image.
_BATCH_ENTRIES = 1 << 21


def _dijkstra_batch(lengths: Tensor, flat_sources: list[Tensor]) -> list[Tensor]:
    """:func:`_dijkstra_image` for every image in one call: the images are the disjoint
    components of one graph (node ``b * h * w + y * w + x``), so each distance is the same
    shortest-path sum and other images' nodes are unreachable (never visited). Saves the
    per-call overhead of scipy (graph construction and the call itself) on small graphs."""
    B, _, h, w = lengths.shape
    n = h * w
    lengths_np = lengths.detach().to("cpu", torch.float64).numpy()
    node = np.arange(B * n, dtype=np.int64).reshape(B, h, w)
    rows, cols, data = [], [], []
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        p_sl, q_sl = pair_slices(dy, dx, h, w)
        vals = lengths_np[:, k][(slice(None), *p_sl)].ravel()
        keep = np.isfinite(vals)
        rows.append(node[(slice(None), *p_sl)].ravel()[keep])
        cols.append(node[(slice(None), *q_sl)].ravel()[keep])
        data.append(vals[keep])
    graph = csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(B * n, B * n))
    uniques, inverses = [], []
    for b, f in enumerate(flat_sources):
        unique, inverse = np.unique(f.cpu().numpy(), return_inverse=True)
        uniques.append(unique + b * n)
        inverses.append(inverse.reshape(-1))
    dist = np.asarray(dijkstra(graph, directed=True, indices=np.concatenate(uniques)))
    out, start = [], 0
    for b, (unique, inverse) in enumerate(zip(uniques, inverses)):
        block = dist[start : start + len(unique), b * n : (b + 1) * n].reshape(len(unique), h, w)[inverse]
        out.append(torch.from_numpy(np.ascontiguousarray(block)).to(lengths.device))
        start += len(unique)
    return out


def _csr_graph(lengths: Tensor) -> csr_matrix:
    """CSR adjacency matrix (nodes ``y * w + x``) of one image's graph, ``lengths`` [8, h, w].

    Zero-length edges are stored as explicit zeros, which ``scipy.sparse.csgraph`` treats as
    edges of length 0 (only *absent* entries mean "no edge"; checked empirically with scipy 1.17
    and by the tests). Nothing here calls ``eliminate_zeros``, and every (p, q) pair occurs once,
    so no duplicate summing happens. ``+inf`` lengths are left out.
    """
    _, h, w = lengths.shape
    lengths_np = lengths.detach().to("cpu", torch.float64).numpy()
    node = np.arange(h * w, dtype=np.int64).reshape(h, w)
    rows, cols, data = [], [], []
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        p_sl, q_sl = pair_slices(dy, dx, h, w)
        vals = lengths_np[k][p_sl].ravel()
        keep = np.isfinite(vals)
        rows.append(node[p_sl].ravel()[keep])
        cols.append(node[q_sl].ravel()[keep])
        data.append(vals[keep])
    return csr_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w)
    )


def _dijkstra_image(lengths: Tensor, flat_sources: Tensor) -> Tensor:
    """Distances [m, h, w] (float64, on ``lengths.device``) from one image's sources."""
    _, h, w = lengths.shape
    m = flat_sources.numel()
    if m == 0:
        return torch.zeros(0, h, w, dtype=torch.float64, device=lengths.device)
    unique, inverse = np.unique(flat_sources.cpu().numpy(), return_inverse=True)
    dist = dijkstra(_csr_graph(lengths), directed=True, indices=unique)
    dist = np.asarray(dist).reshape(len(unique), h, w)[inverse]
    return torch.from_numpy(dist).to(lengths.device)


# ----------------------------------------------------------------------------- torch backend
#
# Layout. Distances live on the image padded by a one-pixel +inf border (H = h + 2, W = w + 2),
# rows first: the state is [H, M, B, W] (row, source, image, column). A *frame* is the image
# seen so that one of the four directional passes runs down its rows: the image itself
# (downward pass), its rows reversed (upward), its transpose (rightward) and the transpose with
# rows reversed (leftward). A frame and its row-reversed twin are stacked in one buffer
# [n, 2, M, B, w'] so that one downward pass relaxes both in lockstep: row y of both frames and
# of every source and image is one tensor [2, M, B * w'], and the edge lengths [n, 2, 1, B * w']
# broadcast over the sources. The border keeps neighbours from leaking between images along the
# flattened rows: every edge into or out of it is +inf.

_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}  # optimality check, relative tolerance
_PASS_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1))  # in-edges of a downward pass
_CHUNK = 1 << 16  # elements per piece of a transposing copy (cache-sized)


def _padded_out_lengths(lengths: Tensor) -> Tensor:
    """Out-edge lengths [B, 8, H, W] on the padded image: ``out[b, k, y, x]`` is the edge from
    padded pixel (y, x) towards offset k; +inf for every edge that touches the border (the
    input's values for edges leaving the image are ignored)."""
    b, _, h, w = lengths.shape
    out = lengths.new_full((b, len(NEIGHBOUR_OFFSETS), h + 2, w + 2), float("inf"))
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        (py, px), _ = pair_slices(dy, dx, h, w)
        out[:, k, py.start + 1 : py.stop + 1, px.start + 1 : px.stop + 1] = lengths[:, k, py, px]
    return out


def _frame_edges(out: Tensor, transpose: bool) -> Tensor:
    """In-edge lengths [5, n, 2, 1, B, w'] of a frame (the padded image, or its transpose) and
    of its row-reversed twin, rows first. Channel j at frame pixel t is the length of the edge
    into t from ``t + _PASS_OFFSETS[j]`` (frame coordinates), +inf where that pixel is
    outside."""
    index = {off: k for k, off in enumerate(NEIGHBOUR_OFFSETS)}
    frame_out = (out.transpose(-1, -2) if transpose else out).permute(1, 2, 0, 3)  # [8, n, B, w]
    _, n, b, w = frame_out.shape
    into = out.new_full((len(NEIGHBOUR_OFFSETS), n, b, w), float("inf"))
    for j, (a, c) in enumerate(NEIGHBOUR_OFFSETS):
        # the edge into t leaves s = t + (a, c) with frame offset (-a, -c): image offset
        # (-c, -a) in the transposed frame
        k = index[(-c, -a) if transpose else (-a, -c)]
        (ty, tx), (sy, sx) = pair_slices(a, c, n, w)
        into[j, ty, :, tx] = frame_out[k, sy, :, sx]
    edges = out.new_empty((len(_PASS_OFFSETS), n, 2, 1, b, w))
    edges[:, :, 0, 0] = into[[index[off] for off in _PASS_OFFSETS]]
    # the twin's row r is the frame's row n - 1 - r, its offset (a, c) the frame's (-a, c)
    edges[:, :, 1, 0] = into[[index[(-a, c)] for a, c in _PASS_OFFSETS]].flip(1)
    return edges


def _transpose_into(dst: Tensor, src: Tensor, reduce: bool) -> None:
    """``dst`` [W, M, B, H] = the images of ``src`` [H, M, B, W] transposed (or, ``reduce``,
    the minimum of both). A transposing copy reads memory far apart; done a few sources at a
    time, what it reads stays in cache."""
    step = max(1, _CHUNK // max(1, src[:, 0].numel()))
    for j in range(0, src.shape[1], step):
        d, t = dst[:, j : j + step], src[:, j : j + step].permute(3, 1, 2, 0)
        torch.minimum(d, t, out=d) if reduce else d.copy_(t)


def _downward_pass(x: Tensor, edges: Tensor) -> None:
    """Relax the rows of ``x`` [n, S, M, B, w] top to bottom, in place: row ``y`` takes the
    best of its three in-edges from row ``y - 1`` (already final for this pass), then of its
    in-edges from its left and right neighbours, the left one first: ten tensor operations per
    row. ``edges`` [5, n, S, 1, B, w]: in-edge lengths (:func:`_frame_edges`). The first and
    last rows are the +inf border and are skipped.

    A row [S, M, B * w] is shifted by one pixel along its flattened last axis; that pairs the
    border pixels of neighbouring images, and every edge touching the border is +inf.
    """
    n, s, m, b, w = x.shape
    rows = x.view(n, s, m, b * w)
    up_left, up, up_right, left, right = edges.view(len(_PASS_OFFSETS), n, s, 1, b * w)
    # every view the loop needs, made up front (unbind: one call per tensor, not per row);
    # "tail" drops a row's first pixel, "head" its last: pixel x of tail is pixel x + 1
    row, tail, head = rows.unbind(0), rows[..., 1:].unbind(0), rows[..., :-1].unbind(0)
    from_up, from_up_left, from_up_right = up.unbind(0), up_left[..., 1:].unbind(0), up_right[..., :-1].unbind(0)
    from_left, from_right = left[..., 1:].unbind(0), right[..., :-1].unbind(0)
    for y in range(1, n - 1):
        torch.minimum(row[y], row[y - 1] + from_up[y], out=row[y])
        torch.minimum(tail[y], head[y - 1] + from_up_left[y], out=tail[y])
        torch.minimum(head[y], tail[y - 1] + from_up_right[y], out=head[y])
        torch.minimum(tail[y], head[y] + from_left[y], out=tail[y])
        torch.minimum(head[y], tail[y] + from_right[y], out=head[y])


class _Sweeper:
    """The edge lengths of a batch of images laid out for the sweeps: ``rows`` and ``cols``
    [5, n, 2, 1, B, w'] (:func:`_frame_edges` of the image and of its transpose) and
    ``out_edges`` [8, H, 1, B, W] (padded out-edge lengths, rows first, for the optimality
    check)."""

    def __init__(self, lengths: Tensor) -> None:
        out = _padded_out_lengths(lengths)
        self.rows, self.cols = _frame_edges(out, False), _frame_edges(out, True)
        self.out_edges = out.permute(1, 2, 0, 3).unsqueeze(2).contiguous()

    def select(self, images: Tensor) -> _Sweeper:
        """The same for a subset [B'] of the images."""
        sub = object.__new__(_Sweeper)
        sub.rows, sub.cols = self.rows.index_select(4, images), self.cols.index_select(4, images)
        sub.out_edges = self.out_edges.index_select(3, images)
        return sub

    @staticmethod
    def new_state(dist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Working memory for the distances ``dist`` [H, M, B, W]: the state (a copy of
        ``dist``), and the buffers of the rows frames [H, 2, M, B, W] (whose first frame *is*
        the state) and of the columns frames [W, 2, M, B, H]."""
        hh, m, b, ww = dist.shape
        rows, cols = dist.new_empty((hh, 2, m, b, ww)), dist.new_empty((ww, 2, m, b, hh))
        state = rows[:, 0]
        state.copy_(dist)
        return state, rows, cols

    def sweep(self, state: Tensor, rows: Tensor, cols: Tensor) -> None:
        """One sweep, in place: the downward and upward passes (in lockstep, both from the same
        distances), then the rightward and leftward passes (from the result)."""
        rev_rows = torch.arange(rows.shape[0] - 1, -1, -1, device=rows.device)
        rows[:, 1].index_copy_(0, rev_rows, state)
        _downward_pass(rows, self.rows)
        torch.minimum(state, rows[:, 1].index_select(0, rev_rows), out=state)

        rev_cols = torch.arange(cols.shape[0] - 1, -1, -1, device=cols.device)
        _transpose_into(cols[:, 0], state, reduce=False)
        cols[:, 1].index_copy_(0, rev_cols, cols[:, 0])
        _downward_pass(cols, self.cols)
        torch.minimum(cols[:, 0], cols[:, 1].index_select(0, rev_cols), out=cols[:, 0])
        _transpose_into(state, cols[:, 0], reduce=True)

    def violations(self, state: Tensor, rtol: float, rows: Tensor, cols: Tensor) -> Tensor:
        """Maps [B', M] (bool) whose distances ``state`` [H, M, B', W] break Bellman's
        optimality condition on some edge, ``d[q] > (d[p] + l(p -> q)) (1 + rtol)``: every
        pixel's best in-edge candidate over the 8 directions, then one comparison, all with
        whole-tensor operations. Flat shifts of a row [M, B' * W] by ``dx`` pair the border
        pixels of neighbouring images, whose edges are +inf. Work space: the spent frames of
        the buffers ``rows`` and ``cols`` (:meth:`new_state`)."""
        hh, m, b, ww = state.shape
        d = state.view(hh, m, b * ww)
        out_edges = self.out_edges.view(len(NEIGHBOUR_OFFSETS), hh, 1, b * ww)
        best = rows[:, 1].view(d.shape).fill_(float("inf"))
        spare = cols.view(-1)[: d.numel()].view(d.shape)
        for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
            (sy, sx), (ty, tx) = pair_slices(dy, dx, hh, b * ww)
            into = best[ty, :, tx]
            cand = spare[: into.shape[0], :, : into.shape[2]]
            torch.add(d[sy, :, sx], out_edges[k, sy, :, sx], out=cand)
            torch.minimum(into, cand, out=into)
        bad = torch.gt(d, best.mul_(1.0 + rtol)).view(hh, m, b, ww)
        return bad.any(3).any(0).t()


def _active_index(active: Tensor) -> tuple[Tensor, Tensor]:
    """Images [B'] with an active map and, per image, the indices [B', M'] of its active maps
    (M' = most active maps of one image; shorter lists are padded by repeating their first
    map, which is harmless: the copies get identical results)."""
    images = active.any(1).nonzero().squeeze(1)
    act = active[images]
    count = act.sum(1)
    order = torch.sort((~act).to(torch.uint8), dim=1, stable=True).indices  # active ones first
    width = int(count.max())
    slots = torch.arange(width, device=active.device)
    maps = torch.where(slots < count[:, None], order[:, :width], order[:, :1])
    return images, maps


def _sweep_solver(
    lengths: Tensor,
    flat: list[Tensor],
    max_sweeps: int | None,
    log: dict[str, Any] | None,
    work_dtype: torch.dtype,
) -> list[Tensor]:
    b, _, h, w = lengths.shape
    device = lengths.device
    uniques = [torch.unique(f, return_inverse=True) for f in flat]
    m = max((u.numel() for u, _ in uniques), default=0)
    if m == 0:
        if log is not None:
            log.update(sweeps=0, passes=0, converged=True, maps_per_sweep=[])
        return [torch.zeros(0, h, w, dtype=lengths.dtype, device=device) for _ in flat]

    rtol = _RTOL[work_dtype]
    sweeper = _Sweeper(lengths.to(work_dtype))
    # dist[y, j, i, x]: distance from the j-th distinct source of image i to padded pixel
    # (y, x); 0 on the source, +inf elsewhere. Images with fewer than m sources are padded
    # with maps that stay +inf (and are never active).
    start = torch.full((h + 2, m, b, w + 2), float("inf"), dtype=work_dtype, device=device)
    dist, rows, cols = sweeper.new_state(start)
    active = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, (u, _) in enumerate(uniques):
        dist[u // w + 1, torch.arange(u.numel(), device=device), i, u % w + 1] = 0.0
        active[i, : u.numel()] = True

    cap = h * w + 1 if max_sweeps is None else max_sweeps
    sweeps, maps_per_sweep, converged = 0, [], False
    while sweeps < cap:
        sweeps += 1
        maps_per_sweep.append(int(active.sum()))
        images, maps = _active_index(active)
        if images.numel() == b and maps.shape[1] == m:  # (nearly) all maps: in place
            sweeper.sweep(dist, rows, cols)
            # On real maps nearly every map needs a second sweep (benchmarks/geodesic.py),
            # so a check after the first one would only cost time (unless it is the last).
            if sweeps == 1 and cap > 1:
                continue
            active = sweeper.violations(dist, rtol, rows, cols)
        else:  # only the maps that are not optimal yet
            sub = sweeper.select(images)
            sub_dist, sub_rows, sub_cols = sub.new_state(dist[:, maps.t(), images])
            sub.sweep(sub_dist, sub_rows, sub_cols)
            dist[:, maps.t(), images] = sub_dist
            active = torch.zeros_like(active)
            active[images[:, None], maps] = sub.violations(sub_dist, rtol, sub_rows, sub_cols)
        if not active.any():
            converged = True
            break
    if log is not None:
        log.update(sweeps=sweeps, passes=4 * sweeps, converged=converged, maps_per_sweep=maps_per_sweep)
    if not converged:
        raise RuntimeError(f"geodesic_distances: torch backend did not converge within max_sweeps={cap} sweeps")
    out = dist[1:-1, :, :, 1:-1].permute(2, 1, 0, 3)  # [B, M, h, w]
    return [out[i, inverse].to(lengths.dtype) for i, (_, inverse) in enumerate(uniques)]
