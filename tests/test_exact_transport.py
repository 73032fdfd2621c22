"""Exact transport (p2m_core.pseudo.exact) against independent oracles: POT's network simplex
(``ot.emd``), SciPy's Hungarian method on suppliers expanded into k_i copies, a brute-force
enumeration for the tie rule, and hypothesis properties."""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from p2m_core.errors import P2MInputError
from p2m_core.pseudo import ExactLog, transport_exact


def random_supply(rng: np.random.Generator, m: int, n: int, zeros: bool = True) -> np.ndarray:
    """Random non-negative integer capacities summing to n (some zero when ``zeros``)."""
    if zeros:
        cuts = np.sort(rng.integers(0, n + 1, m - 1))
    else:
        cuts = np.sort(rng.choice(np.arange(1, n), size=m - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def random_problem(rng: np.random.Generator, kind: str, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cost [m, n] float32-exact float64, supply [m]) of one of several kinds, ties included."""
    if kind == "float":
        cost = rng.random((m, n))
    elif kind == "integer":  # many exact ties
        cost = rng.integers(0, 4, (m, n)).astype(np.float64)
    elif kind == "duplicate":  # two identical suppliers
        cost = rng.random((m, n))
        cost[-1] = cost[0]
    else:  # "grid": distances from points on a grid, equal columns and rows in flat parts
        side = int(np.ceil(np.sqrt(n)))
        yx = np.stack(np.divmod(np.arange(n), side), 1)
        pts = rng.integers(0, side, (m, 2))
        cost = np.floor(np.abs(yx[None] - pts[:, None]).sum(-1) / 2.0)
    cost = cost.astype(np.float32).astype(np.float64)
    return cost, random_supply(rng, m, n)


def solve(cost: np.ndarray, supply: np.ndarray, **kw: object) -> tuple[np.ndarray, ExactLog]:
    labels, log = transport_exact(torch.tensor(cost[None], dtype=torch.float32), torch.tensor(supply[None]), **kw)
    return labels[0].numpy(), log


def total(cost: np.ndarray, labels: np.ndarray) -> float:
    return float(cost[labels, np.arange(cost.shape[1])].sum())


def brute_force(cost: np.ndarray, supply: np.ndarray) -> np.ndarray:
    """The lexicographically smallest minimum-cost assignment, by enumeration (tiny problems)."""
    m, n = cost.shape
    best, best_cost = None, np.inf
    for labels in itertools.product(range(m), repeat=n):  # lexicographic order
        labels = np.array(labels)
        if (np.bincount(labels, minlength=m) == supply).all():
            c = total(cost, labels)
            if c < best_cost - 1e-9:
                best, best_cost = labels, c
    assert best is not None
    return best


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("kind", ["float", "integer", "duplicate", "grid"])
def test_total_cost_equals_network_simplex(kind: str) -> None:
    rng = np.random.default_rng(["float", "integer", "duplicate", "grid"].index(kind))
    for _ in range(12):
        m, n = int(rng.integers(2, 9)), int(rng.integers(10, 200))
        cost, supply = random_problem(rng, kind, m, n)
        labels, log = solve(cost, supply)
        assert (np.bincount(labels, minlength=m) == supply).all()
        expected = ot.emd2(supply.astype(np.float64), np.ones(n), cost)
        assert total(cost, labels) == pytest.approx(expected, rel=1e-12, abs=1e-9)
        assert float(log.cost[0]) == pytest.approx(expected, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_total_cost_equals_hungarian_on_expanded_suppliers(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    m, n = int(rng.integers(1, 5)), int(rng.integers(1, 13))
    cost, supply = random_problem(rng, ["float", "integer"][seed % 2], max(m, 1), n)
    rows = np.repeat(np.arange(len(supply)), supply)  # supplier i appears k_i times
    r, c = linear_sum_assignment(cost[rows])
    labels, _ = solve(cost, supply)
    assert total(cost, labels) == pytest.approx(cost[rows][r, c].sum(), abs=1e-9)


def test_potentials_are_optimal_duals() -> None:
    """Dual objective sum_i k_i f_i + sum_j min_i (C_ij - f_i) equals the primal cost."""
    rng = np.random.default_rng(7)
    cost, supply = random_problem(rng, "float", 6, 300)
    labels, log = solve(cost, supply)
    f = log.potentials[0].numpy()
    dual = float(supply @ f + (cost - f[:, None]).min(0).sum())
    assert dual == pytest.approx(total(cost, labels), rel=1e-9)


@pytest.mark.parametrize("scheme", ["equal", "skewed"])
def test_larger_geodesic_like_problem(scheme: str) -> None:
    """n = 4096 (the coarse-to-fine start and the active set both run), against ot.emd."""
    rng = np.random.default_rng(11)
    m, side = 8, 64
    yx = np.stack(np.divmod(np.arange(side * side), side), 1).astype(np.float64)
    pts = rng.random((m, 2)) * side
    cost = np.sqrt(((yx[None] - pts[:, None]) ** 2).sum(-1)) * (1 + 0.3 * rng.random((1, side * side)))
    cost = cost.astype(np.float32).astype(np.float64)
    n = side * side
    supply = np.full(m, n // m) if scheme == "equal" else random_supply(rng, m, n, zeros=False)
    labels, log = solve(cost, supply)
    assert (np.bincount(labels, minlength=m) == supply).all()
    assert total(cost, labels) == pytest.approx(ot.emd2(supply.astype(np.float64), np.ones(n), cost), rel=1e-12)
    # warm start from POT's optimal duals: same labels, not only the same cost
    _, emd_log = ot.emd(supply.astype(np.float64), np.ones(n), cost, log=True)
    warm, _ = solve(cost, supply, potentials=torch.tensor(emd_log["u"][None]))
    assert (warm == labels).all()


def test_small_active_set_is_widened(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny first active set (and no coordinate ascent) the potential bound must trigger
    widening; same optimum."""
    import p2m_core.pseudo.exact as exact

    widened = []
    original = exact._Active.__init__

    def spy(self, Q, f, label, size, min_gap):  # noqa: ANN001
        original(self, Q, f, label, size, min_gap)
        widened.append(size)

    monkeypatch.setattr(exact, "_ACTIVE_MIN", 4)
    monkeypatch.setattr(exact, "_ACTIVE_FACTOR", 1)
    monkeypatch.setattr(exact._Active, "__init__", spy)
    monkeypatch.setattr(exact, "_coordinate_ascent", lambda Q, k, f, max_steps: (f, 0))  # all work to the paths
    rng = np.random.default_rng(3)
    n = 2000
    cost, supply = random_problem(rng, "float", 5, n)
    _, emd_log = ot.emd(supply.astype(np.float64), np.ones(n), cost, log=True)
    start = emd_log["u"] + 0.1 * rng.standard_normal(5)  # near-optimal: few pixels to move
    labels, _ = solve(cost, supply, potentials=torch.tensor(start[None]))
    assert len(widened) > 1 and widened[0] < n
    assert total(cost, labels) == pytest.approx(ot.emd2(supply.astype(np.float64), np.ones(n), cost), rel=1e-12)


# ----------------------------------------------------------------------------- tie rule
@pytest.mark.parametrize("seed", range(10))
def test_tie_rule_is_lexicographically_smallest_optimum(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    m, n = int(rng.integers(2, 4)), int(rng.integers(3, 8))
    cost, supply = random_problem(rng, ["integer", "duplicate", "grid"][seed % 3], m, n)
    if seed % 3 == 1:
        cost = np.round(cost * 3)  # duplicated rows with integer values: ties everywhere
    labels, _ = solve(cost, supply)
    assert labels.tolist() == brute_force(cost, supply).tolist()


def test_constructed_ties() -> None:
    # all costs equal: every assignment is optimal; the smallest labels go first
    labels, log = solve(np.zeros((3, 6)), np.array([2, 1, 3]))
    assert labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert int(log.tied_pixels[0]) == 6
    # suppliers 0 and 2 identical, supplier 1 far away: 0 takes the first of their pixels
    cost = np.array([[0.0, 1, 0, 1, 5], [9, 9, 9, 9, 0], [0, 1, 0, 1, 5]])
    labels, _ = solve(cost, np.array([2, 1, 2]))
    assert labels.tolist() == [0, 0, 2, 2, 1]


# ----------------------------------------------------------------------------- properties
problems = st.tuples(st.integers(1, 5), st.integers(1, 24), st.integers(0, 2**32 - 1), st.booleans())


@settings(max_examples=25, deadline=None)
@given(problems)
def test_counts_and_no_improving_swap(problem: tuple[int, int, int, bool]) -> None:
    m, n, seed, ties = problem
    rng = np.random.default_rng(seed)
    cost, supply = random_problem(rng, "integer" if ties else "float", m, n)
    labels, _ = solve(cost, supply)
    assert (np.bincount(labels, minlength=m) == supply).all()
    base = total(cost, labels)
    for _ in range(20):  # swapping two pixels' labels keeps the counts and never helps
        a, b = rng.integers(0, n, 2)
        swapped = labels.copy()
        swapped[[a, b]] = labels[[b, a]]
        assert total(cost, swapped) >= base - 1e-9


@settings(max_examples=20, deadline=None)
@given(problems)
def test_pixel_permutation_permutes_labels(problem: tuple[int, int, int, bool]) -> None:
    m, n, seed, _ = problem
    rng = np.random.default_rng(seed)
    cost, supply = random_problem(rng, "float", m, n)  # continuous costs: a unique optimum
    perm = rng.permutation(n)
    labels, log = solve(cost, supply)
    permuted, _ = solve(cost[:, perm], supply)
    if int(log.tied_pixels[0]) == 0:
        assert permuted.tolist() == labels[perm].tolist()


# ----------------------------------------------------------------------------- batching
def test_padded_batch_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    shapes = [(3, 40), (5, 25), (1, 10), (4, 0), (2, 33)]
    M, N = 6, 45
    cost = torch.full((len(shapes), M, N), 1e6)  # padded entries: a large cost that must not matter
    supply = torch.zeros(len(shapes), M, dtype=torch.long)
    pmask = torch.zeros(len(shapes), M, dtype=torch.bool)
    xmask = torch.zeros(len(shapes), N, dtype=torch.bool)
    singles = []
    for b, (m, n) in enumerate(shapes):
        c, k = random_problem(rng, ["float", "integer", "duplicate", "float", "integer"][b], m, n) if n else (np.zeros((m, 0)), np.zeros(m, np.int64))
        rows = np.sort(rng.choice(M, m, replace=False))  # real points scattered among padded ones
        cols = np.sort(rng.choice(N, n, replace=False))
        cost[b][np.ix_(rows, cols)] = torch.tensor(c, dtype=torch.float32)
        supply[b, rows] = torch.tensor(k)
        pmask[b, rows] = True
        xmask[b, cols] = True
        single, _ = solve(c, k)
        expected = torch.full((N,), -1, dtype=torch.long)
        expected[cols] = torch.tensor(rows[single] if n else [], dtype=torch.long)
        singles.append(expected)
    supply[~pmask] = 7  # ignored on padded points
    labels, log = transport_exact(cost, supply, point_mask=pmask, pixel_mask=xmask)
    assert torch.equal(labels, torch.stack(singles))
    assert log.cost.shape == (len(shapes),) and log.potentials.shape == (len(shapes), M)


def test_float_supply_and_empty_inputs() -> None:
    labels, _ = transport_exact(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[1.0, 1.0]]))
    assert labels.tolist() == [[0, 1]]
    labels, log = transport_exact(torch.zeros(2, 0, 0), torch.zeros(2, 0))
    assert labels.shape == (2, 0) and log.cost.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 3), torch.ones(2, 3)), "cost must be \\[B, M, N\\]"),
        ((torch.zeros(1, 2, 3), torch.ones(1, 3)), "supply \\(1, 3\\) does not match"),
        ((torch.zeros(1, 2, 3), torch.tensor([[4, -1]])), "image 0: negative supply \\[-1"),
        ((torch.zeros(1, 2, 3), torch.tensor([[1.5, 1.5]])), "image 0: supplies must be integers, got \\[1.5"),
        ((torch.zeros(2, 2, 3), torch.tensor([[1, 2], [2, 2]])), "image 1: supplies sum to 4 but the image has 3 real pixels"),
        ((torch.tensor([[[0.0, float("nan")], [0.0, 0.0]]]), torch.tensor([[1, 1]])), "image 0: non-finite cost nan at point 0, pixel 1"),
    ],
)
def test_errors_name_the_problem(args: tuple, message: str) -> None:
    with pytest.raises(P2MInputError, match=message):
        transport_exact(*args)


def test_mask_and_potential_errors() -> None:
    cost, supply = torch.zeros(1, 2, 3), torch.tensor([[1, 2]])
    with pytest.raises(P2MInputError, match="point_mask \\(1, 3\\)"):
        transport_exact(cost, supply, point_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(P2MInputError, match="potentials \\(2,\\) do not match"):
        transport_exact(cost, supply, potentials=torch.zeros(2))
    with pytest.raises(P2MInputError, match="image 0: non-finite potentials"):
        transport_exact(cost, supply, potentials=torch.tensor([[0.0, float("inf")]]))
    # a non-finite cost on a padded pixel is fine; on a real one it is not
    cost = torch.tensor([[[0.0, 1.0, float("inf")], [1.0, 0.0, float("inf")]]])
    labels, _ = transport_exact(cost, torch.tensor([[1, 1]]), pixel_mask=torch.tensor([[True, True, False]]))
    assert labels.tolist() == [[0, 1, -1]]
