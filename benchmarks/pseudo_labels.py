"""Benchmark of pseudo-label generation: our batched pipeline vs a reference-equivalent one.

The setting of the issue (paper Sec. 4.2; docs/METHOD.md): a batch of 8 images, input 512x512,
masks at 128x128 (``mask_stride=4``), graph at 1/16 of the input (``graph_stride=16``, 32x32
nodes), 20 points per image (15 things, 5 stuff), all three maps, ``nearest_centroid`` capacities,
OT with the reference's Sinkhorn (``reference`` mode, 80 iterations, eps 1e-3).

Maps: "oracle-like" maps of a random scene per image. The scene is a warped Voronoi partition of
the 128x128 mask grid into 20 regions: 15 thing instances (classes drawn with repetition from 10
thing classes, so same-class instances touch) and 5 stuff regions (5 distinct stuff classes), one
uniform random point per region. ``P^s`` is the one-hot class map degraded as the ablation
stage's ``oracle_corrupt`` source does (blur sigma 1.5, noise 0.1, renormalised), ``P^b_high``
the instance boundaries with 30 % dropped and blurred, ``P^b_low`` the boundaries plus blurred
texture noise.

Pipelines, timed side by side in one run (best of ``--repeats``, the pipelines taking turns so
that load from other processes affects them alike):

- **ours**: :func:`p2m_core.pseudo.generate_pseudo_labels` on the whole batch (torch geodesic
  backend: batched raster sweeps for all sources of all images; batched Sinkhorn);
- **reference-equivalent**: what the reference code does, image by image: one
  ``scipy.sparse.csgraph.dijkstra`` call per source (the reference's C++ Dijkstra runs one
  source at a time), the same bilinear upsampling, the same capacities
  (:func:`p2m_core.pseudo.capacities.nearest_centroid` with the same per-source Dijkstra as
  its distance function), the reference's Sinkhorn transcribed plainly in torch for one image
  over its transported pixels only, argmax decoding, own pixels and stuff segments as in
  docs/METHOD.md.

The pseudo masks of both must agree on >= 99.9 % of the pixels. Also reported: ours with the
``converged`` Sinkhorn, ours with the graph at 1/4 of the input (``graph_stride=4``: the graph at
mask resolution) and, when CUDA is available, our per-image time on the GPU (synchronised).

    .venv/bin/python benchmarks/pseudo_labels.py [--repeats 3] [--threads N] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch import Tensor

from p2m_core.ablation.sources import (
    corrupt_boundary,
    corrupt_semantic,
    instance_boundaries,
)
from p2m_core.config import PseudoConfig
from p2m_core.pseudo.capacities import nearest_centroid
from p2m_core.pseudo.edge_lengths import NEIGHBOUR_OFFSETS
from p2m_core.pseudo.labels import (
    coarse_edge_lengths,
    generate_pseudo_labels,
    graph_factor,
)
from p2m_core.pseudo.maps import PointSet, TaskMaps

THING_CLASSES = 10
STUFF_CLASSES = 5


# ----------------------------------------------------------------------------- inputs
def random_scene(rng: np.random.Generator, size: int, things: int, stuff: int) -> tuple[np.ndarray, np.ndarray]:
    """A warped Voronoi partition of ``size x size`` into ``things + stuff`` regions.

    Returns (region id map [size, size] int64, class of each region [things + stuff]); regions
    ``< things`` are thing instances, the rest stuff regions with distinct classes.
    """
    n = things + stuff
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    warp_y = gaussian_filter(rng.standard_normal((size, size)), size / 8) * size * 2.0
    warp_x = gaussian_filter(rng.standard_normal((size, size)), size / 8) * size * 2.0
    centres = rng.random((n, 2)) * size
    dist = (yy[None] + warp_y - centres[:, :1, None]) ** 2 + (xx[None] + warp_x - centres[:, 1:, None]) ** 2
    regions = dist.argmin(0)
    # a region can vanish under the warp: give it the pixel nearest its centre
    for r in range(n):
        if not (regions == r).any():
            cy, cx = np.clip(centres[r].astype(int), 0, size - 1)
            regions[cy, cx] = r
    classes = np.concatenate([rng.integers(0, THING_CLASSES, things), THING_CLASSES + rng.permutation(STUFF_CLASSES)[:stuff]])
    return regions.astype(np.int64), classes.astype(np.int64)


def make_batch(batch: int, size: int, things: int, stuff: int, seed: int) -> tuple[TaskMaps, list[PointSet]]:
    """Maps [B, C, size, size] and points (module docstring) for ``batch`` random scenes."""
    rng = np.random.default_rng(seed)
    num_classes = THING_CLASSES + STUFF_CLASSES
    sems, highs, lows, points = [], [], [], []
    for _ in range(batch):
        regions, classes = random_scene(rng, size, things, stuff)
        onehot = np.eye(num_classes, dtype=np.float32)[classes[regions]].transpose(2, 0, 1)
        sems.append(corrupt_semantic(onehot, 1.5, 0.1, rng))
        boundary = instance_boundaries(regions)
        highs.append(corrupt_boundary(boundary, 0.3, 1.0, rng))
        texture = gaussian_filter(rng.random((size, size)), 1.0).astype(np.float32)
        lows.append(np.clip(0.7 * gaussian_filter(boundary, 0.7) + 0.6 * (texture - texture.mean()), 0, 1).astype(np.float32))
        yx = []
        for r in range(things + stuff):
            ys, xs = np.nonzero(regions == r)
            j = rng.integers(len(ys))
            yx.append((ys[j], xs[j]))
        points.append(
            PointSet(
                torch.tensor(yx, dtype=torch.long),
                torch.from_numpy(classes),
                torch.arange(things + stuff) < things,
            )
        )
    maps = TaskMaps(torch.from_numpy(np.stack(sems)), torch.from_numpy(np.stack(highs)), torch.from_numpy(np.stack(lows)))
    return maps, points


# ----------------------------------------------------------------------------- reference-equivalent
def csr_graph(lengths: np.ndarray) -> csr_matrix:
    """The directed 8-connected graph of one image, ``lengths`` [8, h, w] -> CSR [hw, hw].

    Explicit zero-length edges stay stored (scipy's csgraph treats stored zeros as edges).
    """
    _, h, w = lengths.shape
    node = np.arange(h * w).reshape(h, w)
    rows, cols, data = [], [], []
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        ys, xs = np.mgrid[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        rows.append(node[ys, xs].ravel())
        cols.append(node[ys + dy, xs + dx].ravel())
        data.append(lengths[k, ys, xs].ravel())
    return csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w))


def per_source_costs(graph: csr_matrix, coarse: tuple[int, int], f: int, size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """``sources [T, 2]`` (mask resolution) -> costs [T, H, W]: one Dijkstra call per source on
    the coarse graph (node ``(y // f, x // f)``), then bilinear upsampling by f, cropped."""
    h, w = coarse
    H, W = size

    def costs(sources: Tensor) -> Tensor:
        maps = []
        for y, x in sources.tolist():
            node = min(y // f, h - 1) * w + min(x // f, w - 1)
            maps.append(torch.from_numpy(dijkstra(graph, directed=True, indices=node).reshape(h, w)).float())
        dist = torch.stack(maps) if maps else torch.zeros(0, h, w)
        if f > 1:
            dist = F.interpolate(dist[None], scale_factor=f, mode="bilinear", align_corners=False)[0, :, :H, :W]
        return dist

    return costs


def reference_sinkhorn(cost: Tensor, supply: Tensor, epsilon: float, iters: int) -> Tensor:
    """The reference's Sinkhorn for one image, transcribed plainly (docs/METHOD.md): cost [T, n]
    over the transported pixels, supply k [T], demand 1 per pixel -> log plan [T, n]."""
    log_x = torch.log(supply.float() + 1e-8)
    log_y = torch.log(torch.ones(cost.shape[1]) + 1e-8)
    u = torch.ones(cost.shape[0])
    v = torch.ones(cost.shape[1])
    for _ in range(iters):
        m = (-cost + u[:, None] + v[None, :]) / epsilon
        v = epsilon * (log_y - torch.logsumexp(m, dim=0)) + v
        m = (-cost + u[:, None] + v[None, :]) / epsilon
        u = epsilon * (log_x - torch.logsumexp(m, dim=1)) + u
    return (-cost + u[:, None] + v[None, :]) / epsilon


def reference_image(
    sem: Tensor, high: Tensor, low: Tensor, points: PointSet, cfg: PseudoConfig, timings: dict[str, float] | None = None
) -> Tensor:
    """Pseudo panoptic map [H, W] (owning point index, -1 none) of one image, the slow way.

    ``timings`` (optional) accumulates seconds spent in Dijkstra (costs and capacities) and in
    the Sinkhorn iterations.
    """
    timings = {} if timings is None else timings
    C, H, W = sem.shape
    f = graph_factor(cfg)
    yx, labels, is_thing = points.yx.tolist(), points.labels.tolist(), points.is_thing.tolist()
    m = len(yx)
    own = [y * W + x for y, x in yx]
    # 1. roles: argmax over the classes that have a point; thing / stuff after the points
    thing_cls = {c for c, t in zip(labels, is_thing) if t}
    stuff_cls = {c for c, t in zip(labels, is_thing) if not t}
    present = torch.zeros(C, dtype=torch.bool)
    present[sorted(thing_cls | stuff_cls)] = True
    best, cls = torch.where(present[:, None, None], sem, -math.inf).max(0)
    cls, evidence = cls.reshape(-1), best.reshape(-1) > 0
    is_thing_class = torch.tensor([c in thing_cls for c in range(C)])
    is_stuff_class = torch.tensor([c in stuff_cls for c in range(C)])
    px_thing, px_stuff = is_thing_class[cls] & evidence, is_stuff_class[cls] & evidence
    stuff_owner = torch.full((C,), -1, dtype=torch.long)
    for i in sorted((i for i in range(m) if not is_thing[i]), key=lambda i: (own[i], i), reverse=True):
        stuff_owner[labels[i]] = i  # the first stuff point of its class in raster order wins
    forced: dict[int, int] = {}
    for i in sorted(range(m), key=lambda i: (not is_thing[i], i), reverse=True):
        forced[own[i]] = i  # thing before stuff, then the lowest index
    forced_thing = torch.zeros(H * W, dtype=torch.bool)
    forced_stuff = torch.zeros(H * W, dtype=torch.bool)
    for pixel, i in forced.items():
        (forced_thing if is_thing[i] else forced_stuff)[pixel] = True
    transported = (px_thing & ~forced_stuff) | forced_thing
    things = [i for i in range(m) if is_thing[i]]
    t_yx = torch.tensor([yx[i] for i in things], dtype=torch.long).reshape(-1, 2)
    t_own = torch.tensor([own[i] for i in things], dtype=torch.long)

    # 2. costs by per-source Dijkstra on the coarse graph
    lengths = coarse_edge_lengths(TaskMaps(sem[None], high[None], low[None]), cfg)[0]
    graph = csr_graph(lengths.double().numpy())
    costs = per_source_costs(graph, tuple(lengths.shape[-2:]), f, (H, W))
    start = time.perf_counter()
    cost = costs(t_yx)
    # 3. capacities
    k = nearest_centroid(cost, t_yx, transported.reshape(H, W), costs, iters=cfg.centroid_iters, own_pixels=t_own)
    timings["dijkstra_and_capacities"] = timings.get("dijkstra_and_capacities", 0.0) + time.perf_counter() - start
    # 4. the reference's Sinkhorn over the transported pixels, argmax decoding, own pixels
    cols = transported.nonzero()[:, 0]
    start = time.perf_counter()
    log_plan = reference_sinkhorn(cost.reshape(len(things), -1)[:, cols], k, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters)
    timings["sinkhorn"] = timings.get("sinkhorn", 0.0) + time.perf_counter() - start
    supplier = log_plan.argmax(0)
    for t in reversed(range(len(things))):  # the lowest supplier index wins a shared pixel
        hit = (cols == t_own[t]).nonzero()
        if len(hit):
            supplier[hit[0, 0]] = t
    # 5. compose: stuff segments, then transported pixels, then own pixels of stuff points
    panoptic = torch.where(px_stuff, stuff_owner[cls], -1)
    for pixel, i in forced.items():
        if not is_thing[i]:
            panoptic[pixel] = i
    panoptic[cols] = torch.tensor(things, dtype=torch.long)[supplier]
    return panoptic.reshape(H, W)


def reference_pipeline(
    maps: TaskMaps, points: list[PointSet], cfg: PseudoConfig, timings: dict[str, float] | None = None
) -> Tensor:
    """:func:`reference_image` for every image of the batch, one after the other: [B, H, W]."""
    return torch.stack(
        [
            reference_image(maps.semantic[b], maps.boundary_high[b], maps.boundary_low[b], points[b], cfg, timings)
            for b in range(len(points))
        ]
    )


# ----------------------------------------------------------------------------- timing
def best_of(fn: Callable[[], object], repeats: int, cuda: bool = False, warmup: bool = True) -> tuple[float, object]:
    """(best wall time in seconds over ``repeats`` runs, after one warm-up run, last result)."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best-of-``repeats`` wall times of several functions, run in turns (after one warm-up
    round), so that load from other processes hits every pipeline alike."""
    results = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mask-size", type=int, default=128, help="mask side (input = 4x)")
    parser.add_argument("--things", type=int, default=15)
    parser.add_argument("--stuff", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--converged-repeats", type=int, default=1, help="runs of the (slow) converged mode, no warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PseudoConfig(graph_stride=16, mask_stride=4, k_scheme="nearest_centroid", assignment="ot",
                       sinkhorn_mode="reference", sinkhorn_iters=80, geodesic_backend="torch")  # fmt: skip
    maps, points = make_batch(args.batch, args.mask_size, args.things, args.stuff, args.seed)
    B = args.batch
    print(f"pseudo labels: batch {B}, input {4 * args.mask_size}^2, masks {args.mask_size}^2, "
          f"{args.things}+{args.stuff} points, torch threads {torch.get_num_threads()}\n")  # fmt: skip

    ref_timings: dict[str, float] = {}
    fine_cfg = dataclasses.replace(cfg, graph_stride=4)
    scipy_cfg = dataclasses.replace(cfg, geodesic_backend="scipy")
    times, results = interleaved_best(
        {
            "ref": lambda: reference_pipeline(maps, points, cfg, ref_timings),
            "ours": lambda: generate_pseudo_labels(maps, points, cfg),
            "scipy": lambda: generate_pseudo_labels(maps, points, scipy_cfg),
            "fine": lambda: generate_pseudo_labels(maps, points, fine_cfg),
        },
        args.repeats,
    )
    t_ref, t_ours, t_scipy, t_fine = times["ref"], times["ours"], times["scipy"], times["fine"]
    ref, ours = results["ref"], results["ours"]
    runs = args.repeats + 1  # the warm-up run accumulates too
    equal = float((ours.panoptic == ref).float().mean())
    stages = {k: v for k, v in ours.timings.items() if k != "total"}
    converged_cfg = dataclasses.replace(cfg, sinkhorn_mode="converged")
    t_conv, conv = best_of(lambda: generate_pseudo_labels(maps, points, converged_cfg), args.converged_repeats, warmup=False)

    rows = [
        ("reference-equivalent (per-image, per-source scipy Dijkstra, per-image Sinkhorn)", t_ref),
        ("ours, batched (torch geodesic, reference Sinkhorn)", t_ours),
        ("ours, batched, scipy geodesic backend", t_scipy),
        (f"ours, converged Sinkhorn (mean {float(conv.iterations.float().mean()):.0f} iterations)", t_conv),
        ("ours, graph at 1/4 of the input (graph_stride=4, 128x128 nodes)", t_fine),
    ]
    if torch.cuda.is_available():
        dev_maps = TaskMaps(maps.semantic.cuda(), maps.boundary_high.cuda(), maps.boundary_low.cuda())
        dev_points = [p.to("cuda") for p in points]
        t_gpu, _ = best_of(lambda: generate_pseudo_labels(dev_maps, dev_points, cfg), args.repeats, cuda=True)
        t_gpu_conv, _ = best_of(lambda: generate_pseudo_labels(dev_maps, dev_points, converged_cfg), args.repeats, cuda=True)
        rows += [(f"ours on {torch.cuda.get_device_name()} (reference Sinkhorn)", t_gpu),
                 (f"ours on {torch.cuda.get_device_name()} (converged Sinkhorn)", t_gpu_conv)]  # fmt: skip
    print("| pipeline | batch time (s) | per image (ms) | speed-up vs reference-equivalent |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {1000 * seconds / B:.1f} | {t_ref / seconds:.2f}x |")
    print(f"\npseudo masks equal to the reference-equivalent on {100 * equal:.3f} % of pixels (goal >= 99.9 %)")
    print("our stage times (s, last run of the reference setting): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    print("reference-equivalent stage times (s, mean per run): " + ", ".join(f"{k} {v / runs:.3f}" for k, v in ref_timings.items()))
    print(f"OT-vs-MC disagreement (reference mode): {100 * float(ours.disagreement.mean()):.2f} % of transported pixels; "
          f"converged mode: {100 * float(conv.disagreement.mean()):.2f} %")  # fmt: skip
    return 0 if equal >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
