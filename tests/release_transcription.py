"""A straight, slow transcription of the authors' release's pseudo-label step, for the tests.

It follows the release's own order of operations, one image at a time, with plain loops, an
explicit pixel graph and :func:`scipy.sparse.csgraph.dijkstra`, :func:`scipy.ndimage.center_of_mass`
and an 80-iteration Sinkhorn loop. It shares no code with ``p2m_core.pseudo``: the tests compare
the engine's release settings against it, label for label.

Where the release calls a torch function whose float32 rounding matters (the bilinear resizes,
``logsumexp`` in its Sinkhorn), this transcription calls the same torch function, as the release
does. Where the release's order of a float32 sum is set by a library (the L1 sum over classes,
the class-likelihood ``einsum``), it adds one channel at a time in channel order, which is the
order the engine documents.

Inputs are those of the engine at mask resolution (``f = graph_stride / mask_stride`` plays the
release's 16): ``semantic [C, H, W]`` (cost-ready P^s), ``boundary [H, W]`` (the high-level
boundary probability) and the points. Every thing point is its own instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

# the release's neighbour order: the 3x3 window in raster order, centre left out
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass
class Point:
    y: int
    x: int
    label: int
    is_thing: bool


@dataclass
class ReleaseResult:
    panoptic: np.ndarray  # [H, W] int64: index of the owning point, -1 void
    k: np.ndarray  # [n_things] int64: the supplies given to the Sinkhorn


def bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(..., mode='bilinear', align_corners=False)`` of ``[n, h, w]``, as the release."""
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None], size=size,
                        mode="bilinear", align_corners=False)
    return out[0].numpy()


def edge_lengths(sem: np.ndarray, boundary: np.ndarray | None, beta: float) -> np.ndarray:
    """``[h, w, 8]`` float32: L1 over classes (one channel at a time) + beta * max boundary.
    Edges leaving the image are never used (left at 0)."""
    C, h, w = sem.shape
    out = np.zeros((h, w, 8), np.float32)
    for k, (dy, dx) in enumerate(OFFSETS):
        src = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
        dst = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
        total = np.zeros(sem[0][src].shape, np.float32)
        for c in range(C):
            total = total + np.abs(sem[c][src] - sem[c][dst])
        if boundary is not None:
            total = total + np.float32(beta) * np.maximum(boundary[src], boundary[dst])
        out[src + (k,)] = total
    return out


def geodesic(lengths: np.ndarray, sources: list[tuple[int, int]]) -> np.ndarray:
    """Dijkstra from each source node on the directed 8-connected graph, ``[n, h, w]`` float32."""
    h, w, _ = lengths.shape
    rows, cols, data = [], [], []
    for y in range(h):
        for x in range(w):
            for k, (dy, dx) in enumerate(OFFSETS):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w:
                    rows.append(y * w + x)
                    cols.append(yy * w + xx)
                    data.append(float(lengths[y, x, k]))
    graph = csr_matrix((data, (rows, cols)), shape=(h * w, h * w))
    assert graph.nnz == len(data), "zero-length edges must stay edges"
    if not sources:
        return np.zeros((0, h, w), np.float32)
    dist = dijkstra(graph, directed=True, indices=[y * w + x for y, x in sources])
    return np.asarray(dist).reshape(len(sources), h, w).astype(np.float32)


def sinkhorn(mu: np.ndarray, nu: np.ndarray, cost: np.ndarray, eps: float = 1e-3, iters: int = 80) -> np.ndarray:
    """The release's Sinkhorn (duals at 1, v before u, fixed iterations); returns ``exp(M)``."""
    mu_t, nu_t, c = torch.from_numpy(mu.astype(np.float32)), torch.from_numpy(nu.astype(np.float32)), torch.from_numpy(cost)
    u, v = torch.ones_like(mu_t), torch.ones_like(nu_t)

    def log_m() -> torch.Tensor:
        return (-c + u[:, None] + v[None, :]) / eps

    for _ in range(iters):
        v = eps * (torch.log(nu_t + 1e-8) - torch.logsumexp(log_m().T, dim=-1)) + v
        u = eps * (torch.log(mu_t + 1e-8) - torch.logsumexp(log_m(), dim=-1)) + u
    return torch.exp(log_m()).numpy()


def first_argmax(values: np.ndarray) -> np.ndarray:
    """Argmax over axis 0, lowest index on ties (as ``torch.argmax``)."""
    return np.argmax(values, axis=0)


def release_pseudo_labels(
    semantic: np.ndarray,
    boundary: np.ndarray | None,
    points: list[Point],
    f: int,
    *,
    beta: float = 0.1,
    warmup: bool = False,
    void_threshold: float = 0.5,
    eps: float = 1e-3,
    iters: int = 80,
) -> ReleaseResult:
    """The release's pseudo label of one image (module docstring)."""
    sem = semantic.astype(np.float32)
    C, H, W = sem.shape
    h, w = H // f, W // f
    things = [i for i, p in enumerate(points) if p.is_thing]
    stuff_classes = sorted({p.label for p in points if not p.is_thing})
    n = len(things)

    # semantic argmax over all classes; stuff-argmax pixels never go to a thing
    sem_class = first_argmax(sem)
    sem_prob = sem.max(axis=0)
    stuff_px = np.isin(sem_class, stuff_classes)

    panoptic = np.full((H, W), -1, np.int64)
    for c in stuff_classes:  # one segment per stuff class, owned by its first point in raster order
        owner = min((p.y * W + p.x, i) for i, p in enumerate(points) if not p.is_thing and p.label == c)[1]
        panoptic[(sem_class == c) & (sem_prob >= void_threshold)] = owner
    if n == 0:
        return ReleaseResult(panoptic, np.zeros(0, np.int64))

    # graph at 1/f: maps resized bilinearly, distances from the points' nodes resized back
    lengths = edge_lengths(bilinear(sem, (h, w)), None if boundary is None else bilinear(boundary[None], (h, w))[0], beta)
    nodes = [(min(points[i].y // f, h - 1), min(points[i].x // f, w - 1)) for i in things]
    raw = bilinear(geodesic(lengths, nodes), (H, W))  # [n, H, W]

    if warmup:
        nearest = np.argmin(raw, axis=0)
        k = np.array([(nearest == j).sum() for j in range(n)], np.int64)
        plan = sinkhorn(k, np.ones(H * W), raw.reshape(n, -1), eps, iters)
    else:
        # class likelihood: the point's class plus every stuff class of the image
        stuff_sum = np.zeros((H, W), np.float32)
        for c in stuff_classes:
            stuff_sum = stuff_sum + sem[c]
        likeli_cls = np.stack([sem[points[i].label] + stuff_sum for i in things])
        scale = np.float32(raw.max()) + np.float32(1e-5)
        initial = first_argmax((1 - raw / scale) * likeli_cls)
        initial[stuff_px] = n

        centres = []
        for j, i in enumerate(things):
            region = initial == j
            node = nodes[j]
            if region.any():
                cy, cx = ndimage.center_of_mass(region)
                cy, cx = int(cy), int(cx)
                corner_y, corner_x = (points[i].y // f) * f, (points[i].x // f) * f
                if region[cy, cx] and region[corner_y, corner_x]:
                    node = (min(cy // f, h - 1), min(cx // f, w - 1))
            centres.append(node)
        from_centres = geodesic(lengths, centres)
        from_centres = from_centres / (np.float32(from_centres.max()) + np.float32(1e-5))
        from_centres = bilinear(from_centres, (H, W))
        refined = first_argmax((1 - from_centres) * likeli_cls)
        refined[stuff_px] = n
        k = np.array([(refined == j).sum() for j in range(n)], np.int64)
        plan = sinkhorn(k, (~stuff_px).reshape(-1).astype(np.float32), raw.reshape(n, -1), eps, iters)

    owner = first_argmax(plan).reshape(H, W)
    for y in range(H):
        for x in range(W):
            if not stuff_px[y, x]:
                panoptic[y, x] = things[owner[y, x]]
    return ReleaseResult(panoptic, k)
