"""Benchmark of the tree filter of the tree energy loss: the cost of a tree's depth.

The filter (:func:`p2m_core.losses.tree_energy.tree_filter`) processes one tree level per step,
so its time follows the depth of the spanning tree, not only the pixel count. Three trees per
size: the MST of a random image, the MST of a flat image (all edge weights tie) and a serpentine
path through the grid (the deepest spanning tree a grid has: depth ``n / 2`` after centring).
The table gives the median wall time of ``--repeats`` runs after a warm-up: the MST (scipy,
random and flat only), the filter's forward, and forward plus backward into the probabilities.

    .venv/bin/python benchmarks/tree_filter.py [--sizes 64 128] [--batch 2] [--classes 21]
        [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from p2m_core.losses.tree_energy import GridTree, grid_mst, tree_filter


def snake_tree(h: int, w: int) -> sp.coo_matrix:
    """A Hamiltonian path through the ``h x w`` grid, row by row, alternating direction."""
    order = np.arange(h * w).reshape(h, w)
    order[1::2] = order[1::2, ::-1]
    path = order.ravel()
    return sp.coo_matrix((np.ones(h * w - 1), (path[:-1], path[1:])), shape=(h * w, h * w))


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, classes {args.classes}")
    print("| size | tree | depth | MST ms | filter fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        probs = torch.softmax(torch.randn(args.batch, args.classes, size, size, device=device), dim=1).requires_grad_(True)
        images = {
            "random": torch.randn(args.batch, 3, size, size, device=device),
            "flat": torch.zeros(args.batch, 3, size, size, device=device),
            "snake": torch.zeros(args.batch, 3, size, size, device=device),
        }
        for name, image in images.items():
            if name == "snake":
                tree = GridTree.from_trees([snake_tree(size, size)] * args.batch, size, size, device)
                mst = "-"
            else:
                tree = grid_mst(image)
                mst = f"{1e3 * median_time(lambda image=image: grid_mst(image), args.repeats, device):.1f}"
            forward = median_time(lambda: tree_filter(probs, image, tree), args.repeats, device)

            def both() -> None:
                tree_filter(probs, image, tree).sum().backward()

            total = median_time(both, args.repeats, device)
            print(f"| {size}x{size} | {name} | {tree.depth} | {mst} | {1e3 * forward:.1f} | {1e3 * total:.1f} |")


if __name__ == "__main__":
    main()
