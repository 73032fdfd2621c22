"""The entropic transport solvers against independent oracles: POT's log-domain Sinkhorn and
exact EMD for the converged solver, a plain NumPy transcription of the reference's 80 iterations
for the fast reference solver, and torch's own arg-reductions for the tie rule (docs/METHOD.md)."""

from __future__ import annotations

import doctest

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2m_core.errors import P2MInputError
from p2m_core.pseudo import transport
from p2m_core.pseudo.newton import sinkhorn_converged
from p2m_core.pseudo.semidual import semidual_log_plan
from p2m_core.pseudo.ties import argmax_lowest, argmin_lowest
from p2m_core.pseudo.sinkhorn_reference import sinkhorn_reference
from p2m_core.pseudo.transport import disagreement, sinkhorn


def integer_supplies(rng: np.random.Generator, n_points: int, n_pixels: int) -> np.ndarray:
    """Random positive integer capacities summing to n_pixels."""
    cuts = np.sort(rng.choice(np.arange(1, n_pixels), size=n_points - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_pixels]]))


def reference_numpy(cost: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain float32 transcription of the reference Sinkhorn for one image: (log plan, u)."""
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
    return (-cost + u[:, None] + v[None, :]) / eps, u


def one(cost: np.ndarray, supply: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image as a batch of 1: (cost, supply, demand) tensors."""
    return (torch.tensor(cost[None], dtype=torch.float32), torch.tensor(supply[None], dtype=torch.float32),
            torch.ones(1, cost.shape[1]))


# ----------------------------------------------------------------------------- tie rule
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_arg_reductions_match_torch_with_ties(m: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (2, m, n), generator=g).float()  # many exact ties
    assert torch.equal(argmax_lowest(scores), scores.argmax(1))
    assert torch.equal(argmin_lowest(scores), scores.argmin(1))


# ----------------------------------------------------------------------------- converged mode
@pytest.mark.parametrize("seed", range(4))
def test_converged_plan_equals_pot_sinkhorn_log(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(2, 6)), int(rng.integers(20, 80))
    cost = rng.random((m, n)) * 5
    supply = integer_supplies(rng, m, n).astype(np.float64)
    demand = rng.integers(1, 3, n).astype(np.float64)  # non-unit demands too
    supply *= demand.sum() / supply.sum()
    eps = 0.05
    expected = ot.sinkhorn(supply, demand, cost, reg=eps * cost.max(), method="sinkhorn_log",
                           numItermax=100000, stopThr=1e-12)
    c, x, y = torch.tensor(cost[None]), torch.tensor(supply[None]), torch.tensor(demand[None])
    result = sinkhorn_converged(c, x, y, relative_epsilon=eps, tol=1e-7)
    assert bool(result.log.converged[0]) and float(result.log.rel_error[0]) <= 1e-7
    plan = semidual_log_plan(c, result, y).exp()[0].numpy()
    np.testing.assert_allclose(plan, expected, atol=1e-5 * demand.max())
    np.testing.assert_allclose(plan.sum(0), demand, rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_converged_assignment_equals_exact_emd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(3, 6)), int(rng.integers(20, 61))
    cost = rng.random((m, n))
    supply = integer_supplies(rng, m, n)
    emd_plan = ot.emd(supply.astype(np.float64), np.ones(n), cost)
    assert np.allclose(emd_plan.max(0), 1.0)  # integer supplies, unit demands: a 0/1 assignment
    result = sinkhorn_converged(*one(cost, supply), relative_epsilon=3e-4, tol=1e-3)
    assert bool(result.log.converged[0])
    np.testing.assert_array_equal(result.labels[0].numpy(), emd_plan.argmax(0))


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
    result = sinkhorn_converged(cost, supply, pixel_mask.float(), point_mask=point_mask, pixel_mask=pixel_mask)
    assert bool(result.log.converged.all())
    for b, (m, n) in enumerate(sizes):
        log_plan = semidual_log_plan(cost[b : b + 1], _pick(result, b), None, point_mask[b : b + 1], pixel_mask[b : b + 1])
        rows = log_plan.exp()[0, :m, :n].sum(1)
        assert float((rows - supply[b, :m]).abs().sum() / n) <= 1e-3 + 1e-5
        assert float(result.log.rel_error[b]) <= 1e-3
        assert bool((result.labels[b, n:] == -1).all()) and bool((result.labels[b, :n] < m).all())


def _pick(result: transport.TransportResult, b: int) -> transport.TransportResult:
    log = result.log
    return transport.TransportResult(
        result.labels[b : b + 1], result.potentials[b : b + 1], result.epsilon[b : b + 1],
        transport.SinkhornLog(log.iterations[b : b + 1], log.row_error[b : b + 1], log.col_error[b : b + 1],
                              log.rel_error[b : b + 1], log.converged[b : b + 1]),
    )


def test_converged_is_independent_of_batch_neighbours() -> None:
    rng = np.random.default_rng(2)
    cost = torch.tensor(rng.random((2, 4, 80)), dtype=torch.float32)
    supply = torch.tensor(np.stack([integer_supplies(rng, 4, 80) for _ in range(2)]), dtype=torch.float32)
    both = sinkhorn_converged(cost, supply, torch.ones(2, 80))
    alone = sinkhorn_converged(cost[:1], supply[:1], torch.ones(1, 80))
    assert int(both.log.iterations[0]) == int(alone.log.iterations[0])
    torch.testing.assert_close(both.potentials[0], alone.potentials[0])
    assert torch.equal(both.labels[0], alone.labels[0])


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3, 1e-4])
def test_converged_meets_tol_at_small_epsilon_on_a_pixel_grid(epsilon: float) -> None:
    """Geodesic-like costs on a grid with k far from the nearest-point counts: no cap reached."""
    H = W = 48
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    points = torch.tensor([[5, 5], [40, 10], [20, 44], [24, 24]])
    cost = ((yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2).float().sqrt()
    cost = cost.reshape(1, 4, H * W) * 0.37
    k = torch.tensor([[900.0, 500.0, 304.0, 600.0]])
    result = sinkhorn_converged(cost, k, torch.ones(1, H * W), relative_epsilon=epsilon, tol=1e-3, max_iters=500)
    assert bool(result.log.converged[0]) and int(result.log.iterations[0]) < 500
    counts = torch.bincount(result.labels[0], minlength=4).float()
    assert float((counts - k[0]).abs().sum() / (H * W)) <= 0.01


# ----------------------------------------------------------------------------- reference mode
@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("seed", range(3))
def test_reference_matches_numpy_transcription(scale: float, seed: int) -> None:
    rng = np.random.default_rng(3 + seed)
    m, n = 4, 90
    cost = (rng.random((m, n)) * scale).astype(np.float32)
    supply = integer_supplies(rng, m, n).astype(np.float32)
    log_plan, u = reference_numpy(cost, supply, np.ones(n, np.float32), 1e-3, 80)
    result = sinkhorn_reference(*one(cost, supply))
    assert int(result.log.iterations[0]) == 80
    np.testing.assert_array_equal(result.labels[0].numpy(), log_plan.argmax(0))
    np.testing.assert_allclose(result.potentials[0].numpy(), u, atol=1e-5)
    col_error = np.abs(np.exp(log_plan.astype(np.float64)).sum(0) - 1).max()
    assert float(result.log.col_error[0]) == pytest.approx(col_error, abs=2e-3)


@pytest.mark.parametrize("margin", [1e-6, None, float("inf")])
def test_reference_margin_changes_nothing_but_speed(margin: float | None) -> None:
    """A tiny margin fails verification and is retried; inf makes every pixel a boundary pixel."""
    rng = np.random.default_rng(7)
    m, n = 5, 400
    cost = (rng.random((m, n)) * 10).astype(np.float32)
    supply = integer_supplies(rng, m, n).astype(np.float32)
    log_plan, u = reference_numpy(cost, supply, np.ones(n, np.float32), 1e-3, 80)
    result = sinkhorn_reference(*one(cost, supply), margin=margin)
    np.testing.assert_array_equal(result.labels[0].numpy(), log_plan.argmax(0))
    np.testing.assert_allclose(result.potentials[0].numpy(), u, atol=1e-5)


def test_reference_starved_point_moves_as_in_the_log_domain() -> None:
    """A point that is nobody's cheapest (its row is far above another's) settles no pixel."""
    rng = np.random.default_rng(8)
    base = (rng.random((3, 120)) * 10).astype(np.float32)
    cost = np.concatenate([base, base[:1] + 0.05, base[1:2] + 2.0]).astype(np.float32)
    supply = integer_supplies(rng, 5, 120).astype(np.float32)
    log_plan, u = reference_numpy(cost, supply, np.ones(120, np.float32), 1e-3, 80)
    result = sinkhorn_reference(*one(cost, supply))
    np.testing.assert_array_equal(result.labels[0].numpy(), log_plan.argmax(0))
    np.testing.assert_allclose(result.potentials[0].numpy(), u, atol=1e-5)


def test_reference_points_that_tie_everywhere() -> None:
    """Two points on one graph node have equal costs everywhere: neither settles a pixel."""
    rng = np.random.default_rng(9)
    base = (rng.random((3, 150)) * 10).astype(np.float32)
    cost = np.concatenate([base, base[1:2]]).astype(np.float32)
    supply = integer_supplies(rng, 4, 150).astype(np.float32)
    log_plan, u = reference_numpy(cost, supply, np.ones(150, np.float32), 1e-3, 80)
    result = sinkhorn_reference(*one(cost, supply))
    np.testing.assert_array_equal(result.labels[0].numpy(), log_plan.argmax(0))
    np.testing.assert_allclose(result.potentials[0].numpy(), u, atol=1e-5)


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
    result = sinkhorn_reference(garbage, supply, torch.ones(B, N), point_mask=point_mask, pixel_mask=pixel_mask)
    for b, (m, n) in enumerate(sizes):
        single = sinkhorn_reference(cost[b : b + 1, :m, :n], supply[b : b + 1, :m], torch.ones(1, n))
        assert torch.equal(result.labels[b, :n], single.labels[0])
        assert bool((result.labels[b, n:] == -1).all())
        torch.testing.assert_close(result.potentials[b, :m], single.potentials[0])
        assert float(result.log.col_error[b]) == pytest.approx(float(single.log.col_error[0]), abs=1e-4)


# ----------------------------------------------------------------------------- both modes
@pytest.mark.parametrize("mode", ["reference", "converged"])
def test_fully_masked_images_produce_no_nan(mode: str) -> None:
    cost = torch.rand(2, 3, 10)
    point_mask = torch.tensor([[False] * 3, [True, True, False]])
    pixel_mask = torch.tensor([[True] * 10, [False] * 10])
    result = sinkhorn(cost, torch.ones(2, 3), torch.ones(2, 10), mode=mode, point_mask=point_mask, pixel_mask=pixel_mask)
    log = result.log
    assert not bool(torch.isnan(log.row_error).any() | torch.isnan(log.col_error).any() | torch.isnan(log.rel_error).any())
    assert bool((result.labels == -1).all())


@pytest.mark.parametrize("mode", ["reference", "converged"])
@pytest.mark.parametrize("shape", [(2, 0, 5), (2, 3, 0), (0, 3, 5)])
def test_empty_problems(mode: str, shape: tuple[int, int, int]) -> None:
    B, M, N = shape
    result = sinkhorn(torch.rand(shape), torch.ones(B, M), torch.ones(B, N), mode=mode)
    assert result.labels.shape == (B, N) and result.log.iterations.shape == (B,)
    assert result.potentials.shape == (B, M)


def test_unknown_mode_and_bad_shapes_are_input_errors() -> None:
    with pytest.raises(P2MInputError, match="sinkhorn_mode"):
        sinkhorn(torch.rand(1, 2, 3), torch.ones(1, 2), torch.ones(1, 3), mode="exact")
    with pytest.raises(P2MInputError, match=r"supply \(1, 3\)"):
        sinkhorn(torch.rand(1, 2, 3), torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(P2MInputError, match="epsilon_decay"):
        sinkhorn_converged(torch.rand(1, 2, 3), torch.ones(1, 2), torch.ones(1, 3), epsilon_decay=1.5)


def test_reference_does_not_converge_and_converged_meets_k() -> None:
    """64x64 grid, 3 points, costs 0-30: the reference stays at nearest-point, converged honours k."""
    H = W = 64
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    points = torch.tensor([[10, 10], [50, 20], [30, 55]])
    dist = ((yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2).float().sqrt()
    cost = (dist / dist.max() * 30).reshape(1, 3, H * W)
    nearest = cost.argmin(1)
    k = torch.tensor([[2400.0, 1000.0, 696.0]])
    assert float((k[0] - torch.bincount(nearest[0], minlength=3)).abs().min()) > 200
    demand = torch.ones(1, H * W)

    ref = sinkhorn(cost, k, demand, mode="reference", epsilon=1e-3, num_iters=80)
    assert float((ref.labels == nearest).float().mean()) >= 0.99
    assert float(ref.log.col_error[0]) > 0.5 and not bool(ref.log.converged[0])

    conv = sinkhorn(cost, k, demand, mode="converged", tol=1e-3)
    counts = torch.bincount(conv.labels[0], minlength=3).float()
    assert bool(conv.log.converged[0])
    assert float((counts - k[0]).abs().max()) <= 0.002 * H * W


def test_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(transport, extraglobs={"torch": torch}, verbose=False)[:2]
    assert tried >= 2 and failures == 0


def test_disagreement_counts_only_masked_pixels() -> None:
    a = torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]])
    b = torch.tensor([[0, 2, 2, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    assert disagreement(a, b, mask).tolist() == pytest.approx([1 / 3, 0.0])
