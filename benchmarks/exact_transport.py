"""Benchmark of the exact transport: :func:`p2m_core.pseudo.exact.transport_exact` against
POT's network simplex (``ot.emd``) and SciPy's HiGHS LP (``scipy.optimize.linprog``), on the
same problems, side by side in one run.

Problems: the realistic scenes of ``benchmarks/pseudo_labels.py`` (warped Voronoi partitions,
oracle-like maps): geodesic costs from the thing points on the coarse graph (``graph_stride``
16, i.e. 1/4 of the mask resolution), upsampled bilinearly to the mask, over every pixel of
the mask; capacities by ``nearest_centroid`` (the paper's choice) or ``equal_division`` (far
from the minimum-cost regions: a harder problem). Each solver runs image by image (best of
``--repeats`` for the fast ones); all must reach the same total cost (relative 1e-9). Also
timed: ``transport_exact`` warm-started with ``ot.emd``'s optimal duals (what an entropic
solver's potentials approach).

    .venv/bin/python benchmarks/exact_transport.py [--batch 4] [--mask-size 128] [--things 15]
        [--k-scheme nearest_centroid|equal_division] [--repeats 3] [--no-linprog] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import ot
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from pseudo_labels import make_batch  # run as a script, benchmarks/ is on sys.path

from p2m_core.config import PseudoConfig  # noqa: E402
from p2m_core.pseudo.capacities import batch_equal_division, batch_nearest_centroid  # noqa: E402
from p2m_core.pseudo.exact import transport_exact  # noqa: E402
from p2m_core.pseudo.graph import coarse_edge_lengths, distance_maps  # noqa: E402


def problems(batch: int, size: int, things: int, scheme: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost [B, things, size*size] float32, k [B, things] long) for ``batch`` random scenes."""
    cfg = PseudoConfig(graph_stride=16, mask_stride=4, geodesic_backend="torch")
    maps, points = make_batch(batch, size, things, 0, seed)
    lengths = coarse_edge_lengths(maps, cfg)
    yx = torch.stack([p.yx for p in points])
    tmask = torch.ones(batch, things, dtype=torch.bool)

    def dist(sources: torch.Tensor) -> torch.Tensor:
        return distance_maps(lengths, sources, tmask, 4, (size, size), "torch")

    cost = dist(yx)
    if scheme == "equal_division":
        k = batch_equal_division(torch.full((batch,), size * size), tmask, torch.arange(things).expand(batch, things))
    else:
        k = batch_nearest_centroid(cost, yx, tmask, torch.ones(batch, size, size, dtype=torch.bool), dist)
    return cost.reshape(batch, things, -1), k


def emd(cost: np.ndarray, k: np.ndarray) -> tuple[float, np.ndarray]:
    """(total cost, duals u) by POT's network simplex in float64."""
    plan, log = ot.emd(k.astype(np.float64), np.ones(cost.shape[1]), cost, numItermax=10**8, log=True)
    return float(log["cost"]), log["u"]


def highs(cost: np.ndarray, k: np.ndarray) -> float:
    """Total cost of the transportation LP by HiGHS (variables x_ij, row sums k, column sums 1)."""
    m, n = cost.shape
    var = np.arange(m * n).reshape(m, n)
    rows = np.concatenate([np.repeat(np.arange(m), n), m + np.tile(np.arange(n), m)])
    cols = np.concatenate([var.ravel(), var.ravel()])
    A = coo_matrix((np.ones(2 * m * n), (rows, cols)), shape=(m + n, m * n)).tocsr()
    b = np.concatenate([k.astype(np.float64), np.ones(n)])
    res = linprog(cost.ravel(), A_eq=A, b_eq=b, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"linprog: {res.message}")
    return float(res.fun)


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(best wall time in seconds over ``repeats`` runs, last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images (solved one at a time)")
    parser.add_argument("--mask-size", type=int, default=128, help="mask side: n = side^2 pixels")
    parser.add_argument("--things", type=int, default=15, help="m, thing points per image")
    parser.add_argument("--k-scheme", choices=["nearest_centroid", "equal_division"], default="nearest_centroid")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the exact solver and ot.emd (best taken)")
    parser.add_argument("--no-linprog", action="store_true", help="skip HiGHS (slow on large images)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cost, k = problems(args.batch, args.mask_size, args.things, args.k_scheme, args.seed)
    B, m, n = cost.shape
    print(f"exact transport: {B} images, m = {m} points, n = {n} pixels, capacities {args.k_scheme}, "
          f"1 thread\n")  # fmt: skip
    header = "| image | transport_exact (ms) | exact, warm from optimal duals (ms) | ot.emd (ms) |"
    header += "" if args.no_linprog else " linprog highs (ms) |"
    print(header + " excess at argmin | rounds | tied pixels | costs agree |")
    print("|" + "---|" * (header.count("|") + 3))
    totals = np.zeros(4)
    ok = True
    for b in range(B):
        c, kb = cost[b : b + 1], k[b : b + 1]
        C, K = c[0].double().numpy(), kb[0].numpy()
        t_exact, (labels, log) = best_of(lambda: transport_exact(c, kb), args.repeats)
        t_emd, (emd_cost, u) = best_of(lambda: emd(C, K), args.repeats)
        t_warm, (warm_labels, _) = best_of(lambda: transport_exact(c, kb, potentials=torch.tensor(u[None])), args.repeats)
        costs = [float(log.cost[0]), emd_cost]
        t_lp = float("nan")
        if not args.no_linprog:
            t_lp, lp_cost = best_of(lambda: highs(C, K), 1)
            costs.append(lp_cost)
        agree = all(abs(x - costs[0]) <= 1e-9 * abs(costs[0]) for x in costs) and torch.equal(labels, warm_labels)
        ok &= agree
        excess = int(np.maximum(np.bincount(C.argmin(0), minlength=m) - K, 0).sum())
        row = f"| {b} | {1e3 * t_exact:.1f} | {1e3 * t_warm:.1f} | {1e3 * t_emd:.1f} |"
        row += "" if args.no_linprog else f" {1e3 * t_lp:.0f} |"
        print(row + f" {excess} | {int(log.augmentations[0])} | {int(log.tied_pixels[0])} | {'yes' if agree else 'NO'} |")
        totals += [t_exact, t_warm, t_emd, t_lp]
    row = f"| mean | {1e3 * totals[0] / B:.1f} | {1e3 * totals[1] / B:.1f} | {1e3 * totals[2] / B:.1f} |"
    print(row + ("" if args.no_linprog else f" {1e3 * totals[3] / B:.0f} |") + " | | | |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
