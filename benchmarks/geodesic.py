"""Benchmark of the geodesic-distance backends: scipy Dijkstra vs the torch raster sweeps.

Both backends get the same batch (B images, m sources each) of edge lengths built by
:func:`p2m_core.pseudo.edge_lengths.edge_lengths` from realistic smooth maps: a random
Voronoi partition into segments with random classes, one-hot semantics blurred with a Gaussian
and renormalised, the blurred segment boundaries as the high-level map and the boundaries plus
noise as the low-level map. The results are checked for equality and the timings (median of
``--repeats`` runs, after one warm-up) printed as a Markdown table.

    .venv/bin/python benchmarks/geodesic.py [--sizes 32 128] [--batch 8] [--sources 15]
        [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from p2m_core.pseudo.edge_lengths import edge_lengths
from p2m_core.pseudo.geodesic import geodesic_distances


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, C, h, w] with replicate padding."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = torch.nn.functional.pad(y, (radius, radius, 0, 0), mode="replicate")
    y = torch.nn.functional.conv2d(y, kernel.view(1, 1, 1, -1))
    y = torch.nn.functional.pad(y, (0, 0, radius, radius), mode="replicate")
    y = torch.nn.functional.conv2d(y, kernel.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def synthetic_maps(batch: int, size: int, classes: int, segments: int, seed: int) -> tuple[Tensor, ...]:
    """Smooth task maps for ``batch`` images of ``size x size``: (semantic, high, low)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pix = torch.stack([yy, xx], -1).reshape(-1, 1, 2).float()
    sems, highs, lows = [], [], []
    for _ in range(batch):
        centres = torch.rand(segments, 2, generator=gen) * size
        seg = ((pix - centres[None]) ** 2).sum(-1).argmin(-1).reshape(size, size)
        cls = torch.randint(0, classes, (segments,), generator=gen)[seg]
        onehot = torch.nn.functional.one_hot(cls, classes).permute(2, 0, 1).float()
        sem = _gaussian_blur(onehot[None], sigma=max(1.0, size / 64))[0]
        sem = (sem + 0.02 * torch.rand(sem.shape, generator=gen)).clamp_min(0)
        sems.append(sem / sem.sum(0, keepdim=True))
        edge = torch.zeros(size, size)
        edge[:-1] += (seg[:-1] != seg[1:]).float()
        edge[:, :-1] += (seg[:, :-1] != seg[:, 1:]).float()
        edge = edge.clamp(max=1)
        highs.append(_gaussian_blur(edge[None, None], 1.0)[0, 0].clamp(0, 1))
        lows.append((0.7 * edge + 0.3 * torch.rand(size, size, generator=gen)).clamp(0, 1))
    return torch.stack(sems), torch.stack(highs), torch.stack(lows)


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    """Largest difference over the finite entries; inf if the two disagree on reachability."""
    if not torch.equal(torch.isinf(a), torch.isinf(b)):
        return float("inf")
    finite = torch.isfinite(a)
    return float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="graph side lengths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sources", type=int, default=15, help="sources per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--segments", type=int, default=25, help="Voronoi segments per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        print(f"size {size}x{size}: building maps", file=sys.stderr)
        sem, high, low = synthetic_maps(args.batch, size, args.classes, args.segments, args.seed)
        lengths = edge_lengths(sem, high, low).to(args.device)
        gen = torch.Generator().manual_seed(args.seed + 1)
        sources = [torch.randint(0, size, (args.sources, 2), generator=gen) for _ in range(args.batch)]
        t_scipy, ref = _time(lambda: geodesic_distances(lengths, sources, "scipy"), args.repeats)
        print(f"size {size}: scipy {t_scipy * 1e3:.1f} ms", file=sys.stderr)
        log: dict = {}

        def run() -> list[Tensor]:
            out = geodesic_distances(lengths, sources, "torch", log=log)
            if lengths.is_cuda:
                torch.cuda.synchronize()
            return out

        t_torch, out = _time(run, args.repeats)
        diff = max(_max_abs_diff(a.cpu(), b.cpu()) for a, b in zip(ref, out))
        scale = max(float(a[torch.isfinite(a)].max()) for a in ref)
        print(f"size {size}: torch {t_torch * 1e3:.1f} ms, {log['sweeps']} sweeps", file=sys.stderr)
        rows.append((size, t_scipy, t_torch, f"{log['sweeps']} / {log['passes']}", diff, scale))

    print(f"\nGeodesic distances, B={args.batch} images x {args.sources} sources, "
          f"torch threads={args.threads}, device={args.device}, median of {args.repeats}\n")
    print("| graph | scipy Dijkstra (ms) | torch sweeps (ms) | sweeps / passes | torch / scipy | max abs diff | max distance |")
    print("|---|---|---|---|---|---|---|")
    for size, t_scipy, t_torch, sweeps, diff, scale in rows:
        print(f"| {size}x{size} | {t_scipy * 1e3:.1f} | {t_torch * 1e3:.1f} | {sweeps} | "
              f"{t_torch / t_scipy:.2f} | {diff:.1e} | {scale:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
