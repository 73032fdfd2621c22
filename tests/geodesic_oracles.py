"""Oracles for the edge lengths (paper Eq. 2-3) and the geodesic distances, written here from the
definitions: a loop over pixels for the edge lengths, and a textbook heapq Dijkstra for the
shortest paths. ``OFFSETS`` is the contract's channel order, spelled out independently of
``p2m_core.pseudo.edge_lengths``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

# The contract's channel order, spelled out independently of the module.
OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
INF = float("inf")


def loop_edge_lengths(sem, high, low, extra, beta, extra_weight, embedding=None):
    """Eq. 2-3 one edge at a time: L1 semantic difference + beta (max high + low at q), plus
    extra_weight (max of each extra map, and max(0, 1 - dot) of the embedding vectors)."""
    b, c, h, w = sem.shape
    out = np.full((b, 8, h, w), INF)
    for i in range(b):
        for k, (dy, dx) in enumerate(OFFSETS):
            for y in range(h):
                for x in range(w):
                    qy, qx = y + dy, x + dx
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue
                    v = sum(abs(float(sem[i, ch, y, x]) - float(sem[i, ch, qy, qx])) for ch in range(c))
                    if high is not None:
                        v += beta * max(float(high[i, y, x]), float(high[i, qy, qx]))
                    if low is not None:
                        v += beta * float(low[i, qy, qx])
                    for e in extra:
                        v += extra_weight * max(float(e[i, y, x]), float(e[i, qy, qx]))
                    if embedding is not None:
                        dot = sum(
                            float(embedding[i, d, y, x]) * float(embedding[i, d, qy, qx])
                            for d in range(embedding.shape[1])
                        )
                        v += extra_weight * max(0.0, 1.0 - dot)
                    out[i, k, y, x] = v
    return torch.from_numpy(out)


def heap_dijkstra(lengths, source):
    """Single-source shortest paths on one image's graph, lengths [8, h, w] (numpy)."""
    _, h, w = lengths.shape
    dist = np.full((h, w), INF)
    dist[source] = 0.0
    heap = [(0.0, source[0], source[1])]
    while heap:
        d, y, x = heapq.heappop(heap)
        if d > dist[y, x]:
            continue
        for k, (dy, dx) in enumerate(OFFSETS):
            qy, qx = y + dy, x + dx
            if 0 <= qy < h and 0 <= qx < w and math.isfinite(lengths[k, y, x]):
                nd = d + lengths[k, y, x]
                if nd < dist[qy, qx]:
                    dist[qy, qx] = nd
                    heapq.heappush(heap, (nd, qy, qx))
    return dist
