r"""Exact unregularised transport of pixels to points: the eps -> 0 limit of the entropic OT.

The problem, per image: m suppliers (thing points) with integer capacities ``k_i >= 0`` and n
consumers (pixels) with demand 1 each, ``sum_i k_i = n``; find labels ``label_j`` in ``0..m-1``

.. math::

    \min_{\text{label}} \sum_j C_{\text{label}_j, j}
    \quad \text{s.t.} \quad \#\{j : \text{label}_j = i\} = k_i \ \text{for every } i.

This is the transportation LP with supplies k and unit demands; its constraint matrix is
totally unimodular, so an integral optimum exists and is an optimum of the LP.

Duality. The dual has one free variable per *supplier*, ``f_i`` (cost units), once the pixel
duals are eliminated (``g_j = min_i (C_ij - f_i)``): maximise
``sum_i k_i f_i + sum_j min_i (C_ij - f_i)``. An assignment is optimal if and only if, for some
f, every pixel sits on a minimiser of ``C_ij - f_i`` (complementary slackness) and the counts
equal k. The solver keeps that dual feasibility at every step and only ever fixes the counts.

Algorithm (:func:`transport_exact`), per image, on the CPU with NumPy:

1. **Exact integers.** The costs are put on a grid of a power of two, ``Q = C / 2^e`` rounded
   to int64, with e chosen so that ``|Q| < 2^b``, ``b = 60 - 2 ceil(log2(m + 2))`` (48 bits at
   m = 50). A float32 cost has a 24-bit mantissa, so the grid is *lossless* whenever the
   smallest non-zero cost of the image is at least ``2^(24 - b)`` times the largest (e.g. costs
   in [1e-6, 1e3] at m = 50); otherwise the smallest costs are rounded by at most
   ``max |C| 2^-b``. From there every sum, comparison and tie is exact: no tolerance anywhere.
2. **Warm start** ``f``: the given ``potentials`` (rounded to the grid), else 0; then a few
   rounds of exact coordinate ascent on the dual (Gauss-Southwell: the supplier whose count is
   furthest from k moves its ``f_i`` to the midpoint of the interval that gives it exactly
   ``k_i`` pixels against the others, found by one ``np.partition``). Each round moves
   hundreds of pixels at once; it stops when the excess no longer falls quickly.
3. **Successive shortest paths on the supplier graph.** Pixels sit on ``argmin_i (Q_ij - f_i)``.
   Moving pixel j from i to l has reduced cost ``(Q_lj - f_l) - (Q_ij - f_i) >= 0``; the edge
   ``i -> l`` of the m-node graph weighs the least of these over the pixels on i. A Dijkstra
   from all over-full suppliers stops at the nearest under-full one (distance D); then
   ``f += min(dist, D)`` keeps every reduced cost non-negative and makes the path tight, and
   as many pixels as the path allows (all tight pixels of each edge, up to the excess and the
   deficit: exact ties move in bulk) move one edge each. The edge weights are computed only
   over an *active set* of pixels whose gap to their second-best supplier is small; the
   others cannot move while the spread of the potential changes stays below their smallest
   gap, which is checked before every update (the set is widened when it would not hold).
4. **Tie rule (canonical optimum).** Complementary slackness with the final f describes *all*
   optimal assignments: exactly those with the right counts that put every pixel on one of its
   tight suppliers ``T_j = argmin_i (Q_ij - f_i)`` (for any optimal f). Among them the solver
   returns the **lexicographically smallest label vector**, over the real pixels in index
   order: pixel by pixel, the smallest tight label for which a completion exists, decided by
   reachability in the graph of "a not-yet-fixed pixel on u is tight to v" and realised by
   moving one pixel along each edge of the path. Only pixels with two or more tight labels
   take part (:mod:`~p2m_core.pseudo.exact_lexicographic`). The result depends only on the
   image's real costs and capacities (not on the batch, the padding, the warm start or the
   device).
5. **Certificate.** Before returning, counts ``== k`` and ``Q[label_j, j] - f_label_j ==
   min_i (Q_ij - f_i)`` for every pixel are checked exactly (a failure is a bug and raises).

Complexity per image: O(m n) memory (int64); O(m n) per coordinate-ascent round and per
active-set refresh; O(m |A| + m^2) per shortest-path round, |A| the active pixels (a few
thousand on 16k-pixel images). The number of rounds grows with the pixels that the warm start
leaves on the wrong side (none with optimal potentials). The tie phase is O(m) per pixel with
several optimal labels plus O(m^2) per move.

Padding: ``point_mask [B, M]``, ``pixel_mask [B, N]``; padded suppliers never win and padded
pixels get -1. Inputs may be on any device; the work is done on the CPU and the labels are
returned on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.exact_lexicographic import lexicographic_ties

_INF = np.int64(1) << np.int64(61)  # "no edge"; sums of two stay below 2^63


@dataclass
class ExactLog:
    """Per-image diagnostics of :func:`transport_exact` (all tensors have shape [B] unless said).

    ``cost`` (float64): ``sum_j C[label_j, j]`` over the real pixels, from the given costs;
    ``coordinate_steps`` (long): dual coordinate-ascent rounds of the warm start;
    ``augmentations`` (long): shortest-path rounds (each moves one or more pixels);
    ``tied_pixels`` (long): real pixels with two or more optimal labels (the tie rule decided
    them); ``potentials`` (float64, [B, M]): final duals f in cost units (0 on padded points),
    optimal for the costs on the solver's grid; ``grid`` (float64): that grid's step ``2^e``.
    """

    cost: Tensor
    coordinate_steps: Tensor
    augmentations: Tensor
    tied_pixels: Tensor
    potentials: Tensor
    grid: Tensor


# ----------------------------------------------------------------------------- input checks
def _check_inputs(
    cost: Tensor, supply: Tensor, point_mask: Tensor | None, pixel_mask: Tensor | None, potentials: Tensor | None
) -> tuple[Tensor, Tensor]:
    if cost.dim() != 3:
        raise P2MInputError(f"transport_exact: cost must be [B, M, N], got shape {tuple(cost.shape)}")
    B, M, N = cost.shape
    if tuple(supply.shape) != (B, M):
        raise P2MInputError(f"transport_exact: supply {tuple(supply.shape)} does not match cost {tuple(cost.shape)} (expected [B, M])")
    if point_mask is None:
        point_mask = torch.ones(B, M, dtype=torch.bool)
    if pixel_mask is None:
        pixel_mask = torch.ones(B, N, dtype=torch.bool)
    if tuple(point_mask.shape) != (B, M) or tuple(pixel_mask.shape) != (B, N):
        raise P2MInputError(
            f"transport_exact: point_mask {tuple(point_mask.shape)} / pixel_mask {tuple(pixel_mask.shape)} "
            f"do not match cost {tuple(cost.shape)} (expected [B, M] and [B, N])"
        )
    if potentials is not None and tuple(potentials.shape) != (B, M):
        raise P2MInputError(f"transport_exact: potentials {tuple(potentials.shape)} do not match cost {tuple(cost.shape)} (expected [B, M])")
    return point_mask.detach().cpu().bool(), pixel_mask.detach().cpu().bool()


def _image_supply(supply: np.ndarray, b: int, n: int) -> np.ndarray:
    """The real suppliers' capacities of image b as int64, checked (non-negative integers, sum n)."""
    if not np.all(np.isfinite(supply)):
        raise P2MInputError(f"transport_exact: image {b}: supply has non-finite values {supply[~np.isfinite(supply)].tolist()[:5]}")
    if np.any(supply < 0):
        raise P2MInputError(f"transport_exact: image {b}: negative supply {supply[supply < 0].tolist()[:5]}")
    k = np.rint(supply)
    if np.any(k != supply):
        raise P2MInputError(f"transport_exact: image {b}: supplies must be integers, got {supply[k != supply].tolist()[:5]}")
    k = k.astype(np.int64)
    if int(k.sum()) != n:
        raise P2MInputError(f"transport_exact: image {b}: supplies sum to {int(k.sum())} but the image has {n} real pixels")
    return k


# ----------------------------------------------------------------------------- exact integers
def _grid(cost: np.ndarray, m: int) -> tuple[np.ndarray, float]:
    """(Q int64, step): ``Q = rint(cost / step)``, step a power of two with ``|Q| < 2^b`` (module docstring)."""
    bits = 60 - 2 * math.ceil(math.log2(m + 2))
    amax = float(np.abs(cost).max()) if cost.size else 0.0
    if amax == 0.0:
        return np.zeros(cost.shape, dtype=np.int64), 1.0
    step = math.ldexp(1.0, math.frexp(amax)[1] - bits)
    return np.rint(cost / step).astype(np.int64), step


def _top2(V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column: (best value, its row, second value, its row); ties go to the lower row.

    Row loops of element-wise operations: much faster than ``argmin`` / ``argpartition`` along
    the short axis 0.
    """
    m, n = V.shape
    best = V.min(0)
    arg = np.full(n, m, dtype=np.int64)
    for i in range(m - 1, -1, -1):
        arg[V[i] == best] = i
    second = np.full(n, _INF, dtype=np.int64)
    arg2 = np.zeros(n, dtype=np.int64)
    for i in range(m - 1, -1, -1):
        row = np.where(arg == i, _INF, V[i])
        take = row <= second
        second = np.where(take, row, second)
        arg2[take] = i
    return best, arg, second, arg2


# ----------------------------------------------------------------------------- 2. warm start
def _coordinate_ascent(Q: np.ndarray, k: np.ndarray, f: np.ndarray, max_steps: int) -> tuple[np.ndarray, int]:
    """Gauss-Southwell exact coordinate ascent on the dual (module docstring, step 2): (f, steps)."""
    m, n = Q.shape
    V = Q - f[:, None]
    best, arg, second, arg2 = _top2(V)
    history: list[int] = []
    steps = 0
    for steps in range(max_steps + 1):
        count = np.bincount(arg, minlength=m)
        excess = int(np.maximum(count - k, 0).sum())
        history.append(excess)
        # stop when done or when the last m rounds removed less than a fifth of the excess
        if excess == 0 or steps == max_steps or (len(history) > m and 5 * (history[-m - 1] - excess) < history[-m - 1]):
            break
        i = int(np.argmax(np.abs(count - k)))
        other = np.where(arg == i, second, best)
        t = Q[i] - other  # pixel j prefers i strictly iff f_i > t_j
        ki = int(k[i])
        if ki == 0:
            new = int(t.min())
        elif ki == n:
            new = int(t.max()) + 1
        else:
            part = np.partition(t, (ki - 1, ki))
            lo, hi = int(part[ki - 1]), int(part[ki])
            new = lo + max(1, (hi - lo + 1) // 2) if hi > lo else hi
        delta = new - int(f[i])
        if delta == 0:
            break
        f[i] = new
        V[i] -= delta
        row = V[i]
        if delta > 0:  # row i got cheaper: it can only climb
            mine = arg == i
            top = ~mine & (row < best)
            sec = ~mine & ~top & ((row < second) | (arg2 == i))
            second = np.where(top, best, np.where(sec, row, second))
            arg2 = np.where(top, arg, np.where(sec, i, arg2))
            best = np.where(mine | top, row, best)
            arg = np.where(top, i, arg)
        else:  # row i got dearer: redo the columns where it was first or second
            hit = np.flatnonzero((arg == i) | (arg2 == i))
            if len(hit):
                b2, a2, s2, c2 = _top2(V[:, hit])
                best[hit], arg[hit], second[hit], arg2[hit] = b2, a2, s2, c2
    return f, steps


# ----------------------------------------------------------------------------- 3. shortest paths
def _dijkstra(W: np.ndarray, excess: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Distances from all over-full suppliers, stopped at the nearest under-full one: (dist, pred, target).

    Ties between nodes go to the lower index.
    """
    m = W.shape[0]
    dist = np.where(excess > 0, 0, _INF).astype(np.int64)
    pred = np.full(m, -1, dtype=np.int64)
    done = np.zeros(m, dtype=bool)
    while True:
        u = int(np.argmin(np.where(done, _INF, dist)))
        if done[u] or dist[u] >= _INF:
            raise RuntimeError("transport_exact: no path from an over-full to an under-full supplier")
        if excess[u] < 0:
            return dist, pred, u
        done[u] = True
        cand = dist[u] + W[u]
        better = (cand < dist) & ~done
        dist[better] = cand[better]
        pred[better] = u


class _Active:
    """The active pixels of the shortest-path phase, their edge weights and the bound that keeps
    the other pixels optimal.

    ``P[u, v]`` = min over the active pixels j on u of ``Q_vj - Q_uj`` (the potential-free part
    of the edge weight; ``_INF`` if u holds none). ``bound``: the smallest gap, at ``f_ref``,
    between an inactive pixel's own and its second-best reduced cost.
    """

    def __init__(self, Q: np.ndarray, f: np.ndarray, label: np.ndarray, size: int, min_gap: int) -> None:
        m, n = Q.shape
        V = Q - f[:, None]
        cols = np.arange(n)
        own = V[label, cols]
        V[label, cols] = _INF
        gap = V.min(0) - own if m > 1 else np.full(n, _INF)
        if size >= n:
            self.index = cols
            self.bound = _INF
        else:
            threshold = max(int(np.partition(gap, size)[size]), min_gap)
            self.index = np.flatnonzero(gap < threshold)
            rest = gap[gap >= threshold]
            self.bound = int(rest.min()) if len(rest) else _INF
        self.size = max(size, len(self.index))
        self.Q = Q[:, self.index]
        self.label = label[self.index]
        self.f_ref = f.copy()
        self.P = np.full((m, m), _INF, dtype=np.int64)
        for u in range(m):
            self.update(u)

    def members(self, u: int) -> np.ndarray:
        return np.flatnonzero(self.label == u)

    def update(self, u: int) -> None:
        j = self.members(u)
        if len(j):
            self.P[u] = (self.Q[:, j] - self.Q[u, j]).min(1)
            self.P[u, u] = _INF
        else:
            self.P[u] = _INF

    def weights(self, f: np.ndarray) -> np.ndarray:
        return np.where(self.P >= _INF, _INF, self.P + f[:, None] - f[None, :])


_ACTIVE_MIN, _ACTIVE_FACTOR = 1024, 4  # first active set: this many pixels, or this times the excess


def _shortest_paths(Q: np.ndarray, k: np.ndarray, f: np.ndarray, label: np.ndarray) -> int:
    """Successive shortest paths (module docstring, step 3); updates f and label in place, returns rounds."""
    m, n = Q.shape
    excess = np.bincount(label, minlength=m) - k
    if not (excess > 0).any():
        return 0
    rounds = 0
    active = _Active(Q, f, label, min(n, max(_ACTIVE_MIN, _ACTIVE_FACTOR * int(excess[excess > 0].sum()))), 0)
    while (excess > 0).any():
        A = active
        dist, pred, target = _dijkstra(A.weights(f), excess)
        phi = np.minimum(dist, dist[target])
        if A.bound < _INF:
            moved = f + phi - A.f_ref
            if int(moved.max() - moved.min()) > A.bound:  # an inactive pixel could become mis-assigned
                label[A.index] = A.label
                active = _Active(Q, f, label, min(n, 2 * A.size), 2 * int(phi.max() - phi.min()))
                continue
        path = [target]
        while pred[path[-1]] >= 0:
            path.append(int(pred[path[-1]]))
        path.reverse()
        edges = list(zip(path, path[1:]))
        amount = int(min(excess[path[0]], -excess[path[-1]]))
        chosen = []
        for u, v in edges:
            j = A.members(u)
            tight = j[A.Q[v, j] - A.Q[u, j] == A.P[u, v]]
            chosen.append(tight)
            amount = min(amount, len(tight))
        for (u, v), tight in zip(edges, chosen):
            A.label[tight[:amount]] = v
        for u in path:
            A.update(u)
        excess[path[0]] -= amount
        excess[path[-1]] += amount
        f += phi
        rounds += 1
    label[active.index] = active.label
    return rounds


# ----------------------------------------------------------------------------- one image
_COARSE_STRIDE = 4
_COARSE_MIN = 4096


def _scaled_supply(k: np.ndarray, n: int) -> np.ndarray:
    """k scaled to sum to n: floors, then the largest remainders (ties: lower index) get one more."""
    exact = k * n / max(int(k.sum()), 1)
    base = np.floor(exact).astype(np.int64)
    extra = n - int(base.sum())
    base[np.argsort(-(exact - base), kind="stable")[:extra]] += 1
    return base


def _excess(label: np.ndarray, k: np.ndarray) -> int:
    return int(np.maximum(np.bincount(label, minlength=len(k)) - k, 0).sum())


def _optimal(Q: np.ndarray, k: np.ndarray, f: np.ndarray, warm: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """An optimal assignment and optimal duals (steps 2-3): (label, f, coordinate steps, rounds).

    Without warm potentials, a large image first solves the problem on every
    ``_COARSE_STRIDE``-th pixel (capacities scaled) recursively and starts from its duals.
    """
    m, n = Q.shape
    steps = rounds = 0
    if not warm and n >= _COARSE_MIN and m > 1 and _excess(_top2(Q - f[:, None])[1], k) * 10 > n:
        sub = Q[:, ::_COARSE_STRIDE]
        _, f, steps, rounds = _optimal(sub, _scaled_supply(k, sub.shape[1]), f, False)
    f, more = _coordinate_ascent(Q, k, f, max_steps=8 * m)
    label = _top2(Q - f[:, None])[1]
    return label, f, steps + more, rounds + _shortest_paths(Q, k, f, label)


def _solve_image(C: np.ndarray, k: np.ndarray, start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float, int, int, int]:
    """(labels [n], potentials [m] in cost units, grid step, coordinate steps, rounds, tied pixels)."""
    m, n = C.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(m), 1.0, 0, 0, 0
    Q, step = _grid(C, m)
    if start is None:
        f = np.zeros(m, dtype=np.int64)
    else:
        f = np.rint(np.clip(start / step, -(2.0**61), 2.0**61)).astype(np.int64)
        f -= f.max() if m else 0  # only differences matter; keep the values small
        f = np.maximum(f, -(np.int64(1) << np.int64(58)))
    label, f, steps, rounds = _optimal(Q, k, f, start is not None)
    V = Q - f[:, None]
    tight = V == V.min(0)
    cols = np.arange(n)
    if not (tight[label, cols].all() and (np.bincount(label, minlength=m) == k).all()):
        raise RuntimeError("transport_exact: internal error, the assignment is not optimal")
    several = np.flatnonzero(tight.sum(0) >= 2)
    if len(several):
        label[several] = lexicographic_ties(tight[:, several], label[several])
    if not (np.bincount(label, minlength=m) == k).all() or not tight[label, cols].all():
        raise RuntimeError("transport_exact: internal error in the tie rule")
    return label, f.astype(np.float64) * step, step, steps, rounds, len(several)


# ----------------------------------------------------------------------------- public API
def transport_exact(
    cost: Tensor,
    supply: Tensor,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
    potentials: Tensor | None = None,
) -> tuple[Tensor, ExactLog]:
    """Minimum-cost assignment of pixels to points with exact capacities, batched with padding.

    Solves, per image, ``min sum_j C[label_j, j]`` subject to ``#{j : label_j = i} = k_i``
    exactly (module docstring), with ties between optimal assignments broken to the
    lexicographically smallest label vector over the real pixels in index order.

    Parameters
    ----------
    cost : Tensor [B, M, N]
        Costs (float32 or float64; finite on real entries).
    supply : Tensor [B, M]
        Capacities k, integer-valued (long or float), ``>= 0``, summing per image to the number
        of real pixels. Values on padded points are ignored.
    point_mask, pixel_mask : Tensor [B, M] / [B, N] bool, optional
        Real (True) versus padded entries; padded points never win, padded pixels get -1.
    potentials : Tensor [B, M], optional
        Warm-start duals f (cost units) with ``argmin_i (C_ij - f_i)`` near the optimum (e.g.
        from an entropic solver). They change the speed, never the result.

    Returns
    -------
    labels : Tensor [B, N] long
        Supplier index of every pixel (index into M), -1 on padded pixels.
    log : ExactLog

    Example
    -------
    >>> cost = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]])
    >>> labels, log = transport_exact(cost, torch.tensor([[2, 1]]))
    >>> labels.tolist(), float(log.cost[0])
    ([[0, 0, 1]], 1.0)
    """
    point_mask, pixel_mask = _check_inputs(cost, supply, point_mask, pixel_mask, potentials)
    B, M, N = cost.shape
    device = cost.device
    costs = cost.detach().cpu()
    supplies = supply.detach().cpu().double().numpy()
    starts = None if potentials is None else potentials.detach().cpu().double().numpy()
    labels = torch.full((B, N), -1, dtype=torch.long)
    total = torch.zeros(B, dtype=torch.float64)
    duals = torch.zeros(B, M, dtype=torch.float64)
    grid = torch.ones(B, dtype=torch.float64)
    steps = torch.zeros(B, dtype=torch.long)
    rounds = torch.zeros(B, dtype=torch.long)
    tied = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        points = np.flatnonzero(point_mask[b].numpy())
        pixels = np.flatnonzero(pixel_mask[b].numpy())
        k = _image_supply(supplies[b, points], b, len(pixels))
        C = costs[b].numpy()[np.ix_(points, pixels)].astype(np.float64)
        if not np.all(np.isfinite(C)):
            i, j = np.argwhere(~np.isfinite(C))[0]
            raise P2MInputError(
                f"transport_exact: image {b}: non-finite cost {C[i, j]} at point {points[i]}, pixel {pixels[j]}"
            )
        start = None
        if starts is not None:
            start = starts[b, points]
            if not np.all(np.isfinite(start)):
                raise P2MInputError(f"transport_exact: image {b}: non-finite potentials {start.tolist()}")
        label, f, step, steps[b], rounds[b], tied[b] = _solve_image(C, k, start)
        if len(pixels):
            labels[b, pixels] = torch.from_numpy(points[label])
            total[b] = float(C[label, np.arange(len(pixels))].sum())
        duals[b, points] = torch.from_numpy(f)
        grid[b] = step
    return labels.to(device), ExactLog(total, steps, rounds, tied, duals, grid)
