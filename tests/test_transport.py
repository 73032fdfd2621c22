"""Sinkhorn solvers against independent oracles: POT's exact EMD, a NumPy transcription of the
reference solver, and its non-convergence case (docs/METHOD.md)."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.transport import (
    decode_plan,
    disagreement,
    sinkhorn,
    sinkhorn_converged,
    sinkhorn_reference,
)


def integer_supplies(rng: np.random.Generator, n_points: int, n_pixels: int) -> np.ndarray:
    """Random positive integer capacities summing to n_pixels."""
    cuts = np.sort(rng.choice(np.arange(1, n_pixels), size=n_points - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_pixels]]))


def reference_numpy(cost: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """Direct float32 NumPy transcription of the reference Sinkhorn (docs/METHOD.md) (one image)."""
    cost, x, y = cost.astype(np.float32), x.astype(np.float32), y.astype(np.float32)
    eps = np.float32(eps)

    def lse(a: np.ndarray, axis: int) -> np.ndarray:
        m = a.max(axis=axis, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)

    u = np.ones(cost.shape[0], np.float32)
    v = np.ones(cost.shape[1], np.float32)
    for _ in range(iters):
        m = (-cost + u[:, None] + v[None, :]) / eps
        v = eps * (np.log(y + np.float32(1e-8)) - lse(m, 0)) + v
        m = (-cost + u[:, None] + v[None, :]) / eps
        u = eps * (np.log(x + np.float32(1e-8)) - lse(m, 1)) + u
    return (-cost + u[:, None] + v[None, :]) / eps


# ----------------------------------------------------------------------------- converged mode
@pytest.mark.parametrize("seed", range(8))
def test_converged_assignment_equals_exact_emd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(3, 6)), int(rng.integers(20, 61))
    cost = rng.random((m, n))
    supply = integer_supplies(rng, m, n)
    emd_plan = ot.emd(supply.astype(np.float64), np.ones(n), cost)
    expected = emd_plan.argmax(0)
    # integer supplies, unit demands: the EMD optimum is a 0/1 assignment
    assert np.allclose(emd_plan.max(0), 1.0)

    log_plan, log = sinkhorn_converged(
        torch.tensor(cost[None], dtype=torch.float32),
        torch.tensor(supply[None], dtype=torch.float32),
        torch.ones(1, n),
        epsilon=3e-4,
        tol=1e-3,
        max_iters=5000,
    )
    assert bool(log.converged[0])
    np.testing.assert_array_equal(decode_plan(log_plan)[0].numpy(), expected)


def test_converged_marginals_within_tol_with_padding() -> None:
    rng = np.random.default_rng(1)
    sizes = [(4, 300), (2, 120), (6, 257)]
    B, M, N = len(sizes), 6, 300
    cost = torch.tensor(rng.random((B, M, N)) * 7, dtype=torch.float32)
    supply = torch.zeros(B, M)
    point_mask = torch.zeros(B, M, dtype=torch.bool)
    pixel_mask = torch.zeros(B, N, dtype=torch.bool)
    for b, (m, n) in enumerate(sizes):
        supply[b, :m] = torch.tensor(integer_supplies(rng, m, n), dtype=torch.float32)
        point_mask[b, :m] = True
        pixel_mask[b, :n] = True
    tol = 1e-3
    log_plan, log = sinkhorn(
        cost, supply, pixel_mask.float(), mode="converged", tol=tol,
        point_mask=point_mask, pixel_mask=pixel_mask,
    )
    plan = torch.exp(log_plan).double()
    assert bool(log.converged.all())
    for b, (m, n) in enumerate(sizes):
        assert float(plan[b, m:].sum()) == 0.0 and float(plan[b, :, n:].sum()) == 0.0
        rows = plan[b, :m, :n].sum(1)
        cols = plan[b, :m, :n].sum(0)
        assert float((rows - supply[b, :m].double()).abs().sum()) <= tol * n * 1.01
        assert float((cols - 1).abs().sum()) <= tol * n * 1.01
        assert float((rows - supply[b, :m].double()).abs().max()) == pytest.approx(float(log.row_error[b]), abs=1e-3)


def test_converged_is_independent_of_batch_neighbours() -> None:
    rng = np.random.default_rng(2)
    cost = torch.tensor(rng.random((2, 4, 80)), dtype=torch.float32)
    supply = torch.tensor(np.stack([integer_supplies(rng, 4, 80) for _ in range(2)]), dtype=torch.float32)
    both, log = sinkhorn_converged(cost, supply, torch.ones(2, 80))
    alone, log0 = sinkhorn_converged(cost[:1], supply[:1], torch.ones(1, 80))
    assert int(log.iterations[0]) == int(log0.iterations[0])
    torch.testing.assert_close(both[0], alone[0])


# ----------------------------------------------------------------------------- reference mode
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_reference_matches_numpy_transcription(scale: float) -> None:
    rng = np.random.default_rng(3)
    m, n = 4, 90
    cost = (rng.random((m, n)) * scale).astype(np.float32)
    supply = integer_supplies(rng, m, n).astype(np.float32)
    expected = reference_numpy(cost, supply, np.ones(n, np.float32), 1e-3, 80)
    log_plan, log = sinkhorn_reference(torch.tensor(cost[None]), torch.tensor(supply[None]), torch.ones(1, n))
    assert int(log.iterations[0]) == 80
    got = log_plan[0].numpy()
    # log-plan entries are O(scale / eps); float32 reduction order differs between the two
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=0.5)
    np.testing.assert_allclose(np.exp(got), np.exp(expected), atol=2e-3)
    np.testing.assert_array_equal(got.argmax(0), expected.argmax(0))


def test_reference_batched_with_padding_equals_unbatched() -> None:
    rng = np.random.default_rng(4)
    sizes = [(3, 50), (5, 70), (1, 20)]
    B, M, N = 3, 5, 70
    cost = torch.tensor(rng.random((B, M, N)) * 10, dtype=torch.float32)
    garbage = cost.clone()
    supply = torch.zeros(B, M)
    point_mask = torch.zeros(B, M, dtype=torch.bool)
    pixel_mask = torch.zeros(B, N, dtype=torch.bool)
    for b, (m, n) in enumerate(sizes):
        supply[b, :m] = torch.tensor(integer_supplies(rng, m, n) if m > 1 else [n], dtype=torch.float32)
        point_mask[b, :m] = True
        pixel_mask[b, :n] = True
        garbage[b, m:] = -1e6  # padded entries would dominate if they leaked
        garbage[b, :, n:] = -1e6
    log_plan, log = sinkhorn_reference(garbage, supply, torch.ones(B, N), point_mask=point_mask, pixel_mask=pixel_mask)
    labels = decode_plan(log_plan, point_mask, pixel_mask)
    assert not bool(torch.isnan(log_plan).any())
    for b, (m, n) in enumerate(sizes):
        single, single_log = sinkhorn_reference(cost[b : b + 1, :m, :n], supply[b : b + 1, :m], torch.ones(1, n))
        torch.testing.assert_close(log_plan[b, :m, :n], single[0], rtol=1e-5, atol=0.05)
        assert torch.equal(labels[b, :n], single[0].argmax(0))
        assert bool((labels[b, n:] == -1).all())
        assert bool(torch.isneginf(log_plan[b, m:]).all()) and bool(torch.isneginf(log_plan[b, :, n:]).all())
        assert float(log.col_error[b]) == pytest.approx(float(single_log.col_error[0]), abs=1e-3)


def test_fully_masked_images_produce_no_nan() -> None:
    cost = torch.rand(2, 3, 10)
    point_mask = torch.tensor([[False] * 3, [True, True, False]])
    pixel_mask = torch.tensor([[True] * 10, [False] * 10])
    for mode in ("reference", "converged"):
        log_plan, log = sinkhorn(cost, torch.ones(2, 3), torch.ones(2, 10), mode=mode,
                                 point_mask=point_mask, pixel_mask=pixel_mask)
        assert not bool(torch.isnan(log_plan).any())
        assert bool(torch.isneginf(log_plan).all())
        assert not bool(torch.isnan(log.row_error).any() | torch.isnan(log.col_error).any())
        assert bool((decode_plan(log_plan, point_mask, pixel_mask) == -1).all())


@pytest.mark.parametrize("shape", [(2, 0, 5), (2, 3, 0), (0, 3, 5)])
def test_empty_problems(shape: tuple[int, int, int]) -> None:
    B, M, N = shape
    for mode in ("reference", "converged"):
        log_plan, log = sinkhorn(torch.rand(shape), torch.ones(B, M), torch.ones(B, N), mode=mode)
        assert log_plan.shape == shape and log.iterations.shape == (B,)
        assert decode_plan(log_plan).shape == (B, N)


def test_unknown_mode_is_an_input_error() -> None:
    with pytest.raises(P2MInputError, match="sinkhorn_mode"):
        sinkhorn(torch.rand(1, 2, 3), torch.ones(1, 2), torch.ones(1, 3), mode="exact")


# ----------------------------------------------------------------------------- the non-convergence case
def test_reference_does_not_converge_and_converged_meets_k() -> None:
    """64x64 grid, 3 points, costs 0-30: the reference stays at nearest-point, converged honours k."""
    H = W = 64
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    points = torch.tensor([[10, 10], [50, 20], [30, 55]])
    dist = ((yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2).float().sqrt()
    cost = (dist / dist.max() * 30).reshape(1, 3, H * W)
    nearest = cost.argmin(1)
    nearest_counts = torch.bincount(nearest[0], minlength=3)
    k = torch.tensor([[2400.0, 1000.0, 696.0]])
    assert float((k[0] - nearest_counts).abs().min()) > 200  # k is far from the nearest-point counts
    demand = torch.ones(1, H * W)

    ref_plan, ref_log = sinkhorn(cost, k, demand, mode="reference", epsilon=1e-3, num_iters=80)
    assert float((decode_plan(ref_plan) == nearest).float().mean()) >= 0.99
    assert float(ref_log.col_error[0]) > 0.5
    assert not bool(ref_log.converged[0])

    conv_plan, conv_log = sinkhorn(cost, k, demand, mode="converged", tol=1e-3)
    counts = torch.bincount(decode_plan(conv_plan)[0], minlength=3).float()
    assert bool(conv_log.converged[0])
    assert float((counts - k[0]).abs().max()) <= 0.002 * H * W


# ----------------------------------------------------------------------------- decode / disagreement
def test_decode_plan_masks_and_ties() -> None:
    log_plan = torch.tensor([[[0.0, -1.0, 5.0, 0.0], [1.0, -1.0, 9.0, -2.0], [2.0, 3.0, 9.0, 7.0]]])
    point_mask = torch.tensor([[True, True, False]])
    pixel_mask = torch.tensor([[True, True, True, False]])
    # point 2 is padding (never wins); column 1 ties -> lowest index; pixel 3 is padding -> -1
    assert decode_plan(log_plan, point_mask, pixel_mask).tolist() == [[1, 0, 1, -1]]


def test_disagreement_counts_only_masked_pixels() -> None:
    a = torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]])
    b = torch.tensor([[0, 2, 2, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    assert disagreement(a, b, mask).tolist() == pytest.approx([1 / 3, 0.0])
