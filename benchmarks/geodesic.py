"""Benchmark of the geodesic-distance backends: scipy Dijkstra vs the torch sweeps, side by side.

Every backend gets the same batch (B images, m sources each) of edge lengths built by
:func:`p2m_core.pseudo.edge_lengths.edge_lengths` from realistic smooth maps: a random
Voronoi partition into segments with random classes, one-hot semantics blurred with a Gaussian
and renormalised, the blurred segment boundaries as the high-level map and the boundaries plus
noise as the low-level map. Within one repeat the backends run one after the other (so they
share the machine's load); the table gives the median wall time of ``--repeats`` repeats after
a warm-up, the torch backend's sweeps (and how many distance maps each relaxed), and the
largest difference to scipy's distances (``inf`` if they disagree on reachability).

    .venv/bin/python benchmarks/geodesic.py [--sizes 32 64 128] [--batch 8] [--sources 15]
        [--threads N] [--device cpu|cuda] [--float32]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError
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


def _timed(fn: Callable[[], list[Tensor]], device: torch.device) -> tuple[float, list[Tensor]]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def _run_torch(lengths: Tensor, sources: list[Tensor], work_dtype: torch.dtype, log: dict) -> list[Tensor]:
    return geodesic_distances(lengths, sources, "torch", log=log, work_dtype=work_dtype)


def _run_scipy(lengths: Tensor, sources: list[Tensor]) -> list[Tensor]:
    return geodesic_distances(lengths, sources, "scipy")


def benchmark_size(args: argparse.Namespace, size: int, device: torch.device) -> dict:
    """Time every backend on one graph size; returns one table row's values."""
    sem, high, low = synthetic_maps(args.batch, size, args.classes, args.segments, args.seed)
    lengths = edge_lengths(sem, high, low).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    sources = [torch.randint(0, size, (args.sources, 2), generator=gen) for _ in range(args.batch)]
    runs: dict[str, Callable[[], list[Tensor]]] = {"scipy": functools.partial(_run_scipy, lengths, sources)}
    logs: dict[str, dict] = {}
    dtypes = [("torch64", torch.float64)] + ([("torch32", torch.float32)] if args.float32 else [])
    for name, dtype in dtypes:
        logs[name] = {}
        runs[name] = functools.partial(_run_torch, lengths, sources, dtype, logs[name])
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[Tensor]] = {}
    for repeat in range(args.repeats + 1):  # the first round is a warm-up
        for name, fn in runs.items():
            elapsed, outputs[name] = _timed(fn, device)
            if repeat:
                times[name].append(elapsed)
        print(f"size {size}: repeat {repeat}/{args.repeats} done", file=sys.stderr)
    ref = [o.cpu() for o in outputs["scipy"]]
    row = {
        "size": size,
        "scale": max(float(a[torch.isfinite(a)].max()) for a in ref),
        "scipy": statistics.median(times["scipy"]),
    }
    for name, _ in dtypes:
        row[name] = statistics.median(times[name])
        row[name + "_diff"] = max(_max_abs_diff(a.cpu(), b) for a, b in zip(outputs[name], ref))
        row[name + "_maps"] = logs[name]["maps_per_sweep"]
    return row


def print_table(args: argparse.Namespace, rows: list[dict], device: torch.device) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nGeodesic distances, B={args.batch} images x {args.sources} sources, device={device}, "
        f"torch threads={torch.get_num_threads()}, median of {args.repeats} "
        f"(wall time; load average at the end {load} on {os.cpu_count()} CPUs)\n"
    )
    head = "| graph | scipy Dijkstra (ms) | torch float64 (ms) | scipy / torch | torch ms / image "
    head += "| maps per sweep | max abs diff "
    line = "|---|---|---|---|---|---|---"
    if args.float32:
        head += "| torch float32 (ms) | scipy / torch32 | max abs diff (float32) "
        line += "|---|---|---"
    print(head + "| max distance |")
    print(line + "|---|")
    for r in rows:
        cells = [
            f"{r['size']}x{r['size']}",
            f"{r['scipy'] * 1e3:.1f}",
            f"{r['torch64'] * 1e3:.1f}",
            f"{r['scipy'] / r['torch64']:.2f}",
            f"{r['torch64'] * 1e3 / args.batch:.2f}",
            " ".join(map(str, r["torch64_maps"])),
            f"{r['torch64_diff']:.1e}",
        ]
        if args.float32:
            cells += [f"{r['torch32'] * 1e3:.1f}", f"{r['scipy'] / r['torch32']:.2f}", f"{r['torch32_diff']:.1e}"]
        print("| " + " | ".join(cells + [f"{r['scale']:.2f}"]) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="graph side lengths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sources", type=int, default=15, help="sources per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--segments", type=int, default=25, help="Voronoi segments per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--float32", action="store_true", help="also time the torch backend in float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1 or args.batch < 1 or args.sources < 1 or min(args.sizes) < 1:
            raise P2MInputError("benchmarks/geodesic.py: --repeats, --batch, --sources and --sizes must be >= 1")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        device = torch.device(args.device)
        rows = []
        for i, size in enumerate(args.sizes):
            start = time.perf_counter()
            rows.append(benchmark_size(args, size, device))
            print(f"size {size} done ({i + 1}/{len(args.sizes)}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
        print_table(args, rows, device)
    except P2MInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
