"""Exact geodesic distances (``p2m_core.pseudo.geodesic``) against a plain oracle.

The scipy backend is checked against a textbook heapq Dijkstra (``tests/geodesic_oracles.py``),
the torch backend against the scipy backend (which scales to larger maps), on random maps with
zero-length and missing edges and on spiral mazes that need many sweeps. The edge lengths are
tested in ``test_edge_lengths.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import edge_lengths
from p2m_core.pseudo.geodesic import geodesic_distances
from tests.geodesic_oracles import INF, OFFSETS, heap_dijkstra


def random_lengths(gen, b, h, w, zero_prob=0.3, missing_prob=0.0):
    """Random non-negative lengths [B, 8, h, w]: some exactly 0, some +inf (missing edges),
    and +inf towards neighbours outside the image."""
    lengths = torch.rand(b, 8, h, w, generator=gen, dtype=torch.float64) * 3
    lengths[torch.rand(b, 8, h, w, generator=gen, dtype=torch.float64) < zero_prob] = 0.0
    lengths[torch.rand(b, 8, h, w, generator=gen, dtype=torch.float64) < missing_prob] = INF
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for k, (dy, dx) in enumerate(OFFSETS):
        outside = (ys + dy < 0) | (ys + dy >= h) | (xs + dx < 0) | (xs + dx >= w)
        lengths[:, k][:, outside] = INF
    return lengths.float()


def random_sources(gen, b, h, w, m):
    return [
        torch.stack([torch.randint(0, h, (m,), generator=gen), torch.randint(0, w, (m,), generator=gen)], 1)
        for _ in range(b)
    ]


def spiral_corridor(h, w):
    """Boolean [h, w]: a one-pixel corridor spiralling inwards from (0, 0), clockwise, with
    one-pixel walls between its rings. Reaching the centre means turning right, down, left and
    up again and again: every ring needs another downward and upward raster pass."""
    corridor = torch.zeros(h, w, dtype=torch.bool)
    corridor[0, 0] = True
    y, x, d, failed = 0, 0, 0, 0
    directions = [(0, 1), (1, 0), (0, -1), (-1, 0)]

    def inside(yy, xx):
        return 0 <= yy < h and 0 <= xx < w

    while failed < 2:
        dy, dx = directions[d]
        ny, nx = y + dy, x + dx
        free = inside(ny, nx) and not corridor[ny, nx]
        ahead_free = not inside(ny + dy, nx + dx) or not corridor[ny + dy, nx + dx]
        if free and ahead_free:
            y, x, failed = ny, nx, 0
            corridor[y, x] = True
        else:
            d, failed = (d + 1) % 4, failed + 1
    return corridor


def maze_lengths(corridor, step=1.0, wall=1000.0):
    """Lengths [1, 8, h, w]: entering a corridor pixel costs ``step``, a wall pixel ``wall``."""
    h, w = corridor.shape
    cost = torch.where(corridor, torch.tensor(step), torch.tensor(wall))
    lengths = torch.full((1, 8, h, w), INF)
    for k, (dy, dx) in enumerate(OFFSETS):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    lengths[0, k, y, x] = cost[y + dy, x + dx]
    return lengths


def assert_same(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert torch.equal(torch.isinf(a), torch.isinf(e))
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- scipy backend


@pytest.mark.parametrize("seed", range(4))
def test_scipy_backend_equals_heap_dijkstra(seed):
    gen = torch.Generator().manual_seed(seed)
    b, h, w = 2, 5 + seed, 7
    lengths = random_lengths(gen, b, h, w, zero_prob=0.4, missing_prob=0.15)
    sources = random_sources(gen, b, h, w, 3)
    got = geodesic_distances(lengths, sources, "scipy")
    for i in range(b):
        want = np.stack([heap_dijkstra(lengths[i].double().numpy(), tuple(s.tolist())) for s in sources[i]])
        assert_same([got[i]], [torch.from_numpy(want).float()])


def test_scipy_backend_keeps_zero_length_edges():
    # a chain of zero-length edges: scipy must not drop explicit zeros as "no edge"
    lengths = torch.zeros(1, 8, 1, 4)
    lengths[:, [0, 1, 2, 5, 6, 7]] = INF  # no vertical neighbours in a 1-row image
    lengths[0, OFFSETS.index((0, -1)), 0, 0] = INF
    lengths[0, OFFSETS.index((0, 1)), 0, 3] = INF
    got = geodesic_distances(lengths, [torch.tensor([[0, 0]])], "scipy")[0]
    assert torch.equal(got, torch.zeros(1, 1, 4))


# ----------------------------------------------------------------------------- torch backend


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    m=st.integers(0, 5),
    zero_prob=st.sampled_from([0.0, 0.3, 0.9]),
    missing_prob=st.sampled_from([0.0, 0.1, 0.5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_torch_backend_equals_scipy_on_random_maps(h, w, m, zero_prob, missing_prob, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, 2, h, w, zero_prob, missing_prob)
    sources = random_sources(gen, 2, h, w, m)
    assert_same(geodesic_distances(lengths, sources, "torch"), geodesic_distances(lengths, sources, "scipy"))


@settings(max_examples=15, deadline=None)
@given(h=st.integers(3, 20), w=st.integers(3, 20), seed=st.integers(0, 2**31 - 1))
def test_torch_backend_equals_scipy_on_mazes(h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = maze_lengths(spiral_corridor(h, w)) * (1 + torch.rand(1, 8, h, w, generator=gen))
    sources = random_sources(gen, 1, h, w, 3)
    sources[0][0] = torch.tensor([0, 0])
    assert_same(geodesic_distances(lengths, sources, "torch"), geodesic_distances(lengths, sources, "scipy"))


def test_maze_corridor_is_followed_to_its_end():
    # free corridor, walls cost 1000 to enter: from the spiral's entrance every corridor pixel
    # is at distance 0 however often the corridor turns, every wall pixel at 1000 or more.
    corridor = spiral_corridor(17, 19)
    log = {}
    dist = geodesic_distances(maze_lengths(corridor, step=0.0), [torch.tensor([[0, 0]])], "torch", log=log)[0][0]
    assert corridor.sum() > 100
    assert torch.all(dist[corridor] == 0)
    assert torch.all(dist[~corridor] >= 1000)
    assert log["converged"] and log["sweeps"] >= 3  # the spiral needs repeated sweeps


def corridor_turns(corridor):
    """Number of turns along a one-pixel corridor walked from (0, 0)."""
    h, w = corridor.shape
    y, x, heading, seen, turns = 0, 0, None, {(0, 0)}, 0
    while True:
        steps = [
            (dy, dx)
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= y + dy < h and 0 <= x + dx < w and corridor[y + dy, x + dx] and (y + dy, x + dx) not in seen
        ]
        if not steps:
            return turns
        turns += heading is not None and steps[0] != heading
        heading = steps[0]
        y, x = y + heading[0], x + heading[1]
        seen.add((y, x))


def test_spiral_maze_is_solved_and_reports_its_rounds():
    # Each sweep runs a pass in each of the four directions, so it makes at least one more
    # straight piece of the corridor exact: a corridor with t turns needs at most t + 2
    # sweeps (the +1 for the check that comes after the second sweep at the earliest), and
    # a longer spiral needs more than a short one.
    gen = torch.Generator().manual_seed(11)
    rounds = []
    for h, w in ((9, 9), (23, 21)):
        corridor = spiral_corridor(h, w)
        lengths = maze_lengths(corridor) * (1 + torch.rand(1, 8, h, w, generator=gen))
        sources = [torch.tensor([[0, 0], [h // 2, w // 2], [h - 1, 0]])]
        log = {}
        got = geodesic_distances(lengths, sources, "torch", log=log)
        assert_same(got, geodesic_distances(lengths, sources, "scipy"))
        assert log["converged"] and log["passes"] == 4 * log["sweeps"]
        assert 3 <= log["sweeps"] <= corridor_turns(corridor) + 2
        rounds.append(log["sweeps"])
    assert rounds[1] > rounds[0]


def test_only_maps_that_fail_the_optimality_check_are_swept_again():
    # image 0: a maze, its one map needs many sweeps; image 1: all edges of length 0, its
    # three maps are exact after the first sweep and pass the first check (after sweep 2)
    h = w = 15
    lengths = torch.cat([maze_lengths(spiral_corridor(h, w)), torch.zeros(1, 8, h, w)])
    lengths[1][torch.isinf(lengths[0])] = INF  # no edges out of the image
    sources = [torch.tensor([[0, 0]]), torch.tensor([[0, 0], [7, 3], [14, 14]])]
    log = {}
    got = geodesic_distances(lengths, sources, "torch", log=log)
    assert_same(got, geodesic_distances(lengths, sources, "scipy"))
    assert torch.equal(got[1], torch.zeros(3, h, w))
    counts = log["maps_per_sweep"]
    assert counts[0] == 4 and counts[-1] == 1 and len(counts) > 3
    assert counts == sorted(counts, reverse=True)  # a map that passed the check stays final


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    zero_prob=st.sampled_from([0.0, 0.3]),
    missing_prob=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_float32_work_dtype_is_within_float32_rounding_of_scipy(h, w, zero_prob, missing_prob, seed):
    # in float32 every path sum is rounded in float32: a few ulps (relative 1e-7 each) apart
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, 2, h, w, zero_prob, missing_prob)
    sources = random_sources(gen, 2, h, w, 3)
    got = geodesic_distances(lengths, sources, "torch", work_dtype=torch.float32)
    want = geodesic_distances(lengths, sources, "scipy")
    for a, e in zip(got, want):
        assert torch.equal(torch.isinf(a), torch.isinf(e))
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_unknown_work_dtype_is_rejected():
    lengths = random_lengths(torch.Generator().manual_seed(9), 1, 3, 3)
    with pytest.raises(P2MInputError, match="work_dtype"):
        geodesic_distances(lengths, [torch.tensor([[0, 0]])], "torch", work_dtype=torch.float16)


def test_max_sweeps_cap_raises_on_a_maze():
    lengths = maze_lengths(spiral_corridor(15, 15))
    with pytest.raises(RuntimeError, match="max_sweeps=1"):
        geodesic_distances(lengths, [torch.tensor([[0, 0]])], "torch", max_sweeps=1)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_one_way_wall_makes_the_far_side_unreachable(backend):
    # all edges from column 2 into column 3 are missing, the reverse edges exist: the graph is
    # directed, so the right side is unreachable from the left but not the other way round
    h, w = 6, 7
    lengths = random_lengths(torch.Generator().manual_seed(8), 1, h, w, zero_prob=0.2)
    for dy in (-1, 0, 1):
        lengths[0, OFFSETS.index((dy, 1)), :, 2] = INF
    got = geodesic_distances(lengths, [torch.tensor([[2, 0], [3, 6]])], backend)[0]
    assert torch.isinf(got[0, :, 3:]).all() and torch.isfinite(got[0, :, :3]).all()
    assert torch.isfinite(got[1]).all()
    for j, src in enumerate([(2, 0), (3, 6)]):
        want = heap_dijkstra(lengths[0].double().numpy(), src)
        assert_same([got[j]], [torch.from_numpy(want).float()])


@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (9, 1), (6, 6), (5, 8)])
def test_border_corner_and_degenerate_shapes(backend, h, w):
    gen = torch.Generator().manual_seed(h * 100 + w)
    lengths = random_lengths(gen, 1, h, w, zero_prob=0.2)
    corners = torch.tensor([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [h // 2, 0], [0, w // 2]])
    got = geodesic_distances(lengths, [corners], backend)[0]
    assert got.shape == (len(corners), h, w)
    for j, (y, x) in enumerate(corners.tolist()):
        want = heap_dijkstra(lengths[0].double().numpy(), (y, x))
        torch.testing.assert_close(got[j], torch.from_numpy(want).float(), rtol=1e-6, atol=1e-6)
        assert got[j, y, x] == 0


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_duplicate_sources_and_more_sources_than_pixels(backend):
    gen = torch.Generator().manual_seed(3)
    lengths = random_lengths(gen, 1, 2, 3)
    sources = torch.tensor([[1, 2], [0, 0], [1, 2], [0, 1], [1, 0], [0, 0], [1, 1], [0, 2], [1, 2]])
    got = geodesic_distances(lengths, [sources], backend)[0]
    assert got.shape == (9, 2, 3)
    torch.testing.assert_close(got[0], got[2])
    torch.testing.assert_close(got[0], got[8])
    for j, (y, x) in enumerate(sources.tolist()):
        want = heap_dijkstra(lengths[0].double().numpy(), (y, x))
        torch.testing.assert_close(got[j], torch.from_numpy(want).float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_batched_result_equals_per_image_results(backend):
    gen = torch.Generator().manual_seed(4)
    lengths = random_lengths(gen, 3, 7, 6)
    sources = [random_sources(gen, 1, 7, 6, m)[0] for m in (4, 1, 6)]
    batched = geodesic_distances(lengths, sources, backend)
    for i in range(3):
        alone = geodesic_distances(lengths[i : i + 1], [sources[i]], backend)[0]
        torch.testing.assert_close(batched[i], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_empty_source_list_gives_an_empty_tensor(backend):
    lengths = random_lengths(torch.Generator().manual_seed(5), 2, 4, 5)
    out = geodesic_distances(lengths, [torch.zeros(0, 2, dtype=torch.long), torch.tensor([[1, 1]])], backend)
    assert out[0].shape == (0, 4, 5) and out[1].shape == (1, 4, 5)
    out = geodesic_distances(lengths, [torch.zeros(0, 2, dtype=torch.long)] * 2, backend)
    assert [o.shape for o in out] == [(0, 4, 5), (0, 4, 5)]


def test_end_to_end_on_edge_lengths_of_two_regions():
    # two flat regions of different classes: 0 inside the source's region, 2 (the L1 jump of
    # a one-hot change) plus the low-level edge inside the other one
    sem = torch.zeros(1, 2, 4, 6)
    sem[0, 0, :, :3] = 1
    sem[0, 1, :, 3:] = 1
    low = torch.zeros(1, 4, 6)
    low[0, :, 3] = 1.0
    lengths = edge_lengths(sem, boundary_low=low, beta=0.1)
    for backend in ("torch", "scipy"):
        dist = geodesic_distances(lengths, [torch.tensor([[2, 0]])], backend)[0][0]
        expected = torch.zeros(4, 6)
        expected[:, 3:] = 2.1
        torch.testing.assert_close(dist, expected)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_invalid_input_is_rejected_with_a_clear_message(backend):
    lengths = random_lengths(torch.Generator().manual_seed(6), 2, 4, 5)
    ok = torch.tensor([[0, 0]])
    with pytest.raises(P2MInputError, match=r"image 1, source 1 at \(y=4, x=0\)"):
        geodesic_distances(lengths, [ok, torch.tensor([[0, 0], [4, 0]])], backend)
    with pytest.raises(P2MInputError, match=r"image 0, source 0 at \(y=0, x=-1\)"):
        geodesic_distances(lengths, [torch.tensor([[0, -1]]), ok], backend)
    with pytest.raises(P2MInputError, match="2 images"):
        geodesic_distances(lengths, [ok], backend)
    bad = lengths.clone()
    bad[0, 4, 0, 0] = -1.0
    with pytest.raises(P2MInputError, match="non-negative"):
        geodesic_distances(bad, [ok, ok], backend)
    bad[0, 4, 0, 0] = float("nan")
    with pytest.raises(P2MInputError, match="NaN"):
        geodesic_distances(bad, [ok, ok], backend)
    with pytest.raises(P2MInputError, match="shape"):
        geodesic_distances(lengths[:, :4], [ok, ok], backend)


def test_unknown_backend_is_rejected():
    lengths = random_lengths(torch.Generator().manual_seed(7), 1, 2, 2)
    with pytest.raises(P2MInputError, match="backend"):
        geodesic_distances(lengths, [torch.tensor([[0, 0]])], "networkx")


def test_scipy_batches_small_graphs_in_one_call_with_the_same_distances() -> None:
    from p2m_core.pseudo import geodesic
    from p2m_core.pseudo.edge_lengths import edge_lengths

    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        B, h, w = 3, 5 + trial % 7, 4 + trial % 5
        sem = torch.rand(B, 3, h, w, generator=gen)
        lengths = edge_lengths((sem > 0.5).float() if trial % 2 else sem)
        lengths[torch.rand(lengths.shape, generator=gen) < 0.1] = float("inf")
        sources = [torch.stack([torch.randint(0, h, (m,), generator=gen), torch.randint(0, w, (m,), generator=gen)], 1)
                   for m in (0, 3, 5)]  # fmt: skip
        flat = geodesic._check_sources(sources, B, h, w, lengths.device)
        batched = geodesic._dijkstra_batch(lengths, flat)
        for b, f in enumerate(flat):
            assert torch.equal(batched[b], geodesic._dijkstra_image(lengths[b], f))
        out = geodesic.geodesic_distances(lengths, sources, backend="scipy")
        assert all(torch.equal(o, d.to(o.dtype)) for o, d in zip(out, batched))
