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
    device (all sources in one tensor [h, B, M, w], images with fewer than M sources padded).
    A *pass* visits the rows top to bottom (or bottom to top); row ``y`` first takes the best of
    its three neighbours in the previous row (the three incoming edges), then is closed under
    moves along the row by two exact min-plus prefix scans: with ``W[x]`` the sum of the
    rightward edge lengths left of ``x``,

    .. math:: d'[x] = W[x] + \min_{t \le x} \big(d[t] - W[t]\big)
              \quad(\texttt{torch.cummin}),

    and the mirror image for leftward moves. A pass therefore makes exact every distance whose
    shortest path is monotone in its direction. A *sweep* is a downward and an upward pass over
    the rows, then the same over the columns (as rows of the transposed image), each pass
    starting from the latest distances. After every upward pass the solver checks Bellman's
    optimality condition ``d[q] <= d[p] + l(p -> q)`` (relative tolerance ``1e-12``) on the
    only edges the pass can leave violated, those from the row above, with whole-tensor
    operations, and stops when it holds: the result is then Dijkstra's. A path that winds up
    and down is a chain of monotone pieces, at least one more made exact per sweep; realistic
    maps need 2-3 sweeps, mazes as many as their corridor has turns.
    Python loops: one step per row per pass, nothing per pixel or per source.

Every update is a ``min`` with the current value, so distances only decrease and each is the
length of some path. The torch backend works in float64, where the prefix scans' rounding (of
order ``1e-16`` of a row's total length) is far below the float32 resolution of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import NEIGHBOUR_OFFSETS, pair_slices

BACKENDS = ("scipy", "torch")

_RTOL = 1e-12  # relative tolerance of the torch backend's optimality check (float64)


def geodesic_distances(
    lengths: Tensor,
    sources: Sequence[Tensor],
    backend: str = "torch",
    *,
    max_sweeps: int | None = None,
    log: dict[str, Any] | None = None,
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
        Filled with diagnostics: ``backend``; for torch also ``sweeps`` (sweeps started),
        ``passes`` (row and column passes run; the optimality check passed after the last one)
        and ``converged``.

    Returns
    -------
    list of B Tensors [m_i, h, w]
        ``out[b][j, y, x]`` = distance from ``sources[b][j]`` to ``(y, x)``; ``+inf`` where
        unreachable; 0 at the source's own pixel. dtype of ``lengths``, on its device.

    Notes
    -----
    The torch backend holds two float64 copies of all distance maps (rows and columns frames):
    about ``16 * B * max_i(m_i) * h * w`` bytes, 31 MB for 8 images x 15 sources at 128 x 128.

    Examples
    --------
    >>> from p2m_core.pseudo.edge_lengths import edge_lengths
    >>> sem = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # 1 x 3 image, 2 classes
    >>> geodesic_distances(edge_lengths(sem), [torch.tensor([[0, 0]])])[0].tolist()
    [[[0.0, 0.0, 2.0]]]
    """
    if backend not in BACKENDS:
        raise P2MInputError(f"geodesic_distances: backend must be one of {BACKENDS}, got {backend!r}")
    _check_lengths(lengths)
    b, _, h, w = lengths.shape
    flat = _check_sources(sources, b, h, w, lengths.device)
    if log is not None:
        log["backend"] = backend
    if backend == "scipy":
        return [_dijkstra_image(lengths[i], f).to(lengths.dtype) for i, f in enumerate(flat)]
    return _sweep_solver(lengths, flat, max_sweeps, log)


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


def _big_length(lengths: Tensor) -> float | None:
    """Finite stand-in for ``+inf`` edges inside the image, or None when there are none.

    The prefix scans need finite row sums. Any simple path is at most the sum ``T`` of all
    finite lengths long, so an edge of length ``big = 2 T + 1`` is never on a shortest path
    that has an alternative, and distances ``>= 0.75 big`` (> T, even after rounding) are
    exactly the unreachable pixels.
    """
    _, _, h, w = lengths.shape
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        p_sl, _ = pair_slices(dy, dx, h, w)
        if not torch.isfinite(lengths[:, k, p_sl[0], p_sl[1]]).all():
            finite = lengths[torch.isfinite(lengths)]
            return 2.0 * float(finite.double().sum()) + 1.0
    return None


def _frame_lengths(lengths: Tensor, transposed: bool) -> Tensor:
    """Edge lengths [B, 8, h', w'] of the graph in a frame whose rows are the image's rows
    (``transposed=False``) or its columns (``True``, offsets ``(dy, dx) -> (dx, dy)``)."""
    if not transposed:
        return lengths
    index = {off: k for k, off in enumerate(NEIGHBOUR_OFFSETS)}
    order = [index[(dx, dy)] for dy, dx in NEIGHBOUR_OFFSETS]
    return lengths.transpose(-1, -2)[:, order]


class _Frame:
    """Row-by-row relaxation of all distance maps in one frame: the image with its rows as rows
    (``transposed=False``) or its columns as rows (``True``), so that column passes are row
    passes of the transposed frame. Layout, rows first so that each row is one contiguous block:

      ``buf`` [h', B, M, w' + 2]: the distances, +inf in the two pad columns;
      ``above[j]``, ``below[j]`` [h', B, 1, w']: length of the edge into (y, x) from
        (y - 1, x - 1 + j), resp. (y + 1, x - 1 + j), j = 0, 1, 2; +inf where that is outside;
      ``right_prefix`` [h', B, 1, w']: ``W[x]`` = sum of the rightward edge lengths left of x;
      ``left_prefix`` [h', B, 1, w']: the same for the row read right to left (leftward edges),
        indexed in flipped order.
    """

    def __init__(self, lengths: Tensor, transposed: bool, m: int, big: float | None) -> None:
        rows_first = _frame_lengths(lengths, transposed).permute(2, 0, 1, 3)  # [h', B, 8, w']
        h, b, _, w = rows_first.shape
        k = {off: i for i, off in enumerate(NEIGHBOUR_OFFSETS)}
        inf = float("inf")
        padded = torch.nn.functional.pad(rows_first, (1, 1), value=inf)  # column x at x + 1
        self.above, self.below = [], []
        for j, dx_src in enumerate((-1, 0, 1)):
            cols = slice(1 + dx_src, 1 + dx_src + w)
            above = torch.full((h, b, w), inf, dtype=torch.float64, device=lengths.device)
            below = above.clone()
            above[1:] = padded[:-1, :, k[(1, -dx_src)], cols]  # edges are stored at their source
            below[:-1] = padded[1:, :, k[(-1, -dx_src)], cols]
            self.above.append(above.unsqueeze(2))
            self.below.append(below.unsqueeze(2))
        right = rows_first[:, :, k[(0, 1)], :-1]  # x -> x + 1, for x < w' - 1
        left = rows_first[:, :, k[(0, -1)], 1:].flip(-1)  # x + 1 -> x, read right to left
        if big is not None:
            right = torch.nan_to_num(right, posinf=big)
            left = torch.nan_to_num(left, posinf=big)
        zero = torch.zeros(h, b, 1, dtype=torch.float64, device=lengths.device)
        self.right_prefix = torch.cat([zero, right.cumsum(-1)], dim=-1).unsqueeze(2)
        self.left_prefix = torch.cat([zero, left.cumsum(-1)], dim=-1).unsqueeze(2)
        self.buf = torch.full((h, b, m, w + 2), inf, dtype=torch.float64, device=lengths.device)

    @property
    def distances(self) -> Tensor:
        """View [h', B, M, w'] of the distances (without the pad columns)."""
        return self.buf[..., 1:-1]

    def sweep(self, downwards: bool) -> None:
        """One pass: relax every row from the row before it (top to bottom, or bottom to top),
        then close it under moves along the row."""
        h = self.buf.shape[0]
        rows = range(h) if downwards else range(h - 1, -1, -1)
        incoming = self.above if downwards else self.below
        step = -1 if downwards else 1
        for y in rows:
            cur = self.buf[y, ..., 1:-1]
            if 0 <= y + step < h:
                prev = self.buf[y + step]
                cand = prev[..., :-2] + incoming[0][y]
                torch.minimum(cand, prev[..., 1:-1] + incoming[1][y], out=cand)
                torch.minimum(cand, prev[..., 2:] + incoming[2][y], out=cand)
                torch.minimum(cand, cur, out=cand)
            else:
                cand = cur
            cur.copy_(_row_scans(cand, self.right_prefix[y], self.left_prefix[y]))

    def optimal_after_upward_pass(self, rtol: float) -> bool:
        """Bellman's optimality condition ``d[q] <= d[p] + l(p -> q)`` on every edge, given that
        the last pass went upwards.

        An upward pass leaves every row closed under the edges from the row below it and
        along the row (the row below was final when it was relaxed, and the row itself is not
        touched again). Only the edges from the row above can be violated, because that row was
        lowered afterwards: those 3 directions are checked here, for all rows at once. When they
        hold, ``d`` (every value being the length of some path) is the shortest-path distance.
        ``rtol`` (relative) absorbs float rounding.
        """
        if self.buf.shape[0] < 2:
            return True
        prev = self.buf[:-1]
        target = self.buf[1:, ..., 1:-1] * (1.0 - rtol)
        for j in range(3):
            if torch.lt(prev[..., j : j + target.shape[-1]] + self.above[j][1:], target).any():
                return False
        return True


def _row_scans(row: Tensor, right_prefix: Tensor, left_prefix: Tensor) -> Tensor:
    """Close rows [..., w] under moves along the row: two exact min-plus prefix scans.

    ``d'[x] = min(W[x] + min_{t<=x}(d[t] - W[t]), V[x] + min_{t>=x}(d[t] - V[t]))`` where
    ``W`` / ``V`` sum the rightward / leftward edge lengths from the left / right end (``V`` is
    stored for the flipped row). Both scans start from the same ``d`` since a shortest path
    along a row never turns back (lengths are non-negative). The final ``min`` with ``d``
    keeps ``d' <= d`` exactly (``(d - W) + W`` may round up by an ulp).
    """
    to_right = torch.cummin(row - right_prefix, dim=-1).values.add_(right_prefix)
    flipped = row.flip(-1).sub_(left_prefix)
    to_left = torch.cummin(flipped, dim=-1).values.add_(left_prefix).flip(-1)
    torch.minimum(to_right, to_left, out=to_right)
    return torch.minimum(to_right, row, out=to_right)


def _sweep_solver(
    lengths: Tensor, flat: list[Tensor], max_sweeps: int | None, log: dict[str, Any] | None
) -> list[Tensor]:
    b, _, h, w = lengths.shape
    device = lengths.device
    uniques = [torch.unique(f, return_inverse=True) for f in flat]
    m = max((u.numel() for u, _ in uniques), default=0)
    if m == 0:
        if log is not None:
            log.update(sweeps=0, passes=0, converged=True)
        return [torch.zeros(0, h, w, dtype=lengths.dtype, device=device) for _ in flat]

    big = _big_length(lengths)
    lengths64 = lengths.double()
    rows, cols = _Frame(lengths64, False, m, big), _Frame(lengths64, True, m, big)
    # rows.distances[y, b, j, x]: distance from the j-th distinct source of image b; it starts
    # at 0 on the source, +inf elsewhere. Images with fewer than m sources are padded with
    # sources-less maps that stay +inf.
    for i, (u, _) in enumerate(uniques):
        rows.distances[u // w, i, torch.arange(u.numel(), device=device), u % w] = 0.0
    # One sweep: rows down and up, then columns down and up (Gauss-Seidel: each pass starts
    # from the latest distances); optimality is checked after each upward pass. The cap is
    # provably enough: every sweep extends the exactly known part of each shortest path by at
    # least one edge.
    cap = h * w + 1 if max_sweeps is None else max_sweeps
    sweeps, passes, converged = 0, 0, False
    result = rows
    while sweeps < cap and not converged:
        sweeps += 1
        for frame, other in ((rows, cols), (cols, rows)):
            if frame is cols or sweeps > 1:
                frame.distances.copy_(other.distances.permute(3, 1, 2, 0))  # swap rows/columns
            frame.sweep(downwards=True)
            frame.sweep(downwards=False)
            passes += 2
            if frame.optimal_after_upward_pass(_RTOL):
                converged, result = True, frame
                break
    # rows frame [h, B, M, w], columns frame [w, B, M, h] -> [B, M, h, w]
    d = rows.distances.permute(1, 2, 0, 3) if result is rows else cols.distances.permute(1, 2, 3, 0)
    if log is not None:
        log.update(sweeps=sweeps, passes=passes, converged=converged)
    if not converged:
        raise RuntimeError(f"geodesic_distances: torch backend did not converge within max_sweeps={cap} sweeps")
    if big is not None:  # distances through a stand-in edge are >= big: unreachable
        d = d.masked_fill(d >= 0.75 * big, float("inf"))
    return [d[i, inverse].to(lengths.dtype) for i, (_, inverse) in enumerate(uniques)]
