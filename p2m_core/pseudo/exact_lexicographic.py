"""The exact solver's tie rule: among all optimal assignments, the lexicographically smallest
label vector (step 4 of :mod:`~p2m_core.pseudo.exact`).

An unregularised transport problem often has many optimal assignments (equal costs are common on
a geodesic graph). Returning a canonical one makes the result depend only on the image's costs
and capacities: not on the batch, the padding, the warm start or the device.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def _closure(adjacent: np.ndarray) -> np.ndarray:
    """Reachability (reflexive, transitive) of a boolean adjacency matrix."""
    reach = adjacent | np.eye(len(adjacent), dtype=bool)
    while True:
        nxt = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
        if (nxt == reach).all():
            return reach
        reach = nxt


def _bfs_path(adjacent: np.ndarray, start: int, goal: int) -> list[int]:
    pred = {start: start}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        if u == goal:
            break
        for v in np.flatnonzero(adjacent[u]).tolist():
            if v not in pred:
                pred[v] = u
                queue.append(v)
    path = [goal]
    while path[-1] != start:
        path.append(pred[path[-1]])
    return path[::-1]


def lexicographic_ties(tight: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The lexicographically smallest assignment with the counts of ``label`` on the tight pairs.

    ``tight [m, F]`` bool: the optimal labels of the F pixels that have several (in pixel order),
    ``label [F]``: their labels in some optimal assignment (module docstring, step 4).
    """
    m, F = tight.shape
    label = label.copy()
    options = [np.flatnonzero(tight[:, p]).tolist() for p in range(F)]
    count = np.zeros((m, m), dtype=np.int64)  # count[u, v]: open pixels on u tight to v
    stacks: dict[tuple[int, int], list[int]] = {}
    for p in range(F - 1, -1, -1):  # so that pop() yields the lowest open pixel first
        u = int(label[p])
        for v in options[p]:
            if v != u:
                count[u, v] += 1
                stacks.setdefault((u, v), []).append(p)
    fixed = np.zeros(F, dtype=bool)
    reach = _closure(count > 0)

    def shift(p: int, u: int, v: int, sign: int) -> bool:
        """Add (sign=1) or remove (-1) pixel p's edges as a pixel on u; True if the edge set changed."""
        changed = False
        for t in options[p]:
            if t != u:
                before = count[u, t] > 0
                count[u, t] += sign
                changed |= before != (count[u, t] > 0)
                if sign > 0:
                    stacks.setdefault((u, t), []).append(p)
        return changed

    for p in range(F):
        a = int(label[p])
        better = next((l for l in options[p] if l < a and reach[l, a]), None)
        changed = False
        if better is not None:
            path = _bfs_path(count > 0, better, a)
            for u, v in zip(path, path[1:]):
                stack = stacks[(u, v)]
                while True:
                    q = stack.pop()
                    if not fixed[q] and label[q] == u and q != p:
                        break
                changed |= shift(q, u, v, -1)
                label[q] = v
                changed |= shift(q, v, u, 1)
            label[p] = better
        changed |= shift(p, a, a, -1)
        fixed[p] = True
        if changed:
            reach = _closure(count > 0)
    return label
