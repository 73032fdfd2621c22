"""Edge lengths (paper Eq. 2-3, ``p2m_core.pseudo.edge_lengths``) against a loop over pixels.

The oracle (``tests/geodesic_oracles.py``) computes each edge from the definition: the L1
semantic difference, beta times the high- and low-level boundary terms (the low one directed),
the extra maps and the clipped embedding term. The geodesic distances over these lengths are
tested in ``test_geodesic.py``.
"""

from __future__ import annotations

import pytest
import torch

from p2m_core.errors import P2MInputError
from p2m_core.pseudo.edge_lengths import NEIGHBOUR_OFFSETS, edge_lengths
from tests.geodesic_oracles import OFFSETS, loop_edge_lengths


# ----------------------------------------------------------------------------- edge lengths


def test_offsets_follow_the_contract():
    assert list(NEIGHBOUR_OFFSETS) == OFFSETS


def test_edge_lengths_match_the_definition_edge_by_edge():
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 3, 4, 4, 5
    sem = torch.rand(b, c, h, w, generator=gen).softmax(1)
    sem[0, 1] = 0  # classes absent from an image (zeroed, as in the reference's P^s)
    sem[1, [0, 3]] = 0
    sem[2] = 0  # no class evidence at all
    high, low = torch.rand(b, h, w, generator=gen), torch.rand(b, h, w, generator=gen)
    extra = [torch.rand(b, h, w, generator=gen) for _ in range(2)]
    got = edge_lengths(sem, high, low, extra, beta=0.3, extra_weight=0.7)
    assert got.shape == (b, 8, h, w) and got.dtype == sem.dtype
    want = loop_edge_lengths(sem, high, low, extra, 0.3, 0.7).float()
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_high,use_low", [(False, False), (True, False), (False, True)])
def test_edge_lengths_with_maps_left_out(use_high, use_low):
    gen = torch.Generator().manual_seed(1)
    sem = torch.rand(1, 2, 3, 3, generator=gen)
    high = torch.rand(1, 3, 3, generator=gen) if use_high else None
    low = torch.rand(1, 3, 3, generator=gen) if use_low else None
    got = edge_lengths(sem, high, low)
    torch.testing.assert_close(got, loop_edge_lengths(sem, high, low, [], 0.1, 0.1).float())


def test_edge_lengths_low_term_is_directed_and_the_rest_symmetric():
    # one pixel of low-level edge at (0, 1): only edges *into* it pay beta * 1
    sem = torch.zeros(1, 1, 1, 2)
    low = torch.tensor([[[0.0, 1.0]]])
    got = edge_lengths(sem, boundary_low=low, beta=0.5)
    right, left = OFFSETS.index((0, 1)), OFFSETS.index((0, -1))
    assert got[0, right, 0, 0] == 0.5 and got[0, left, 0, 1] == 0.0


def test_edge_lengths_with_an_embedding_match_the_definition_edge_by_edge():
    gen = torch.Generator().manual_seed(2)
    b, c, d, h, w = 2, 3, 4, 4, 5
    sem = torch.rand(b, c, h, w, generator=gen).softmax(1)
    high, low = torch.rand(b, h, w, generator=gen), torch.rand(b, h, w, generator=gen)
    extra = [torch.rand(b, h, w, generator=gen)]
    # unit vectors, some scaled past 1 so that the clip at 0 acts on aligned neighbours
    emb = torch.nn.functional.normalize(torch.randn(b, d, h, w, generator=gen), dim=1)
    emb[:, :, :2] = emb[:, :, :1, :1] * 1.3  # rows 0-1: equal vectors of length 1.3, 1 - 1.69 < 0
    got = edge_lengths(sem, high, low, extra, beta=0.3, extra_weight=0.7, embedding=emb)
    want = loop_edge_lengths(sem, high, low, extra, 0.3, 0.7, embedding=emb).float()
    without = edge_lengths(sem, high, low, extra, beta=0.3, extra_weight=0.7)
    right = OFFSETS.index((0, 1))
    assert torch.equal(got[:, right, :2, :-1], without[:, right, :2, :-1])  # clipped, not shortened
    assert bool((got[:, right, 2:, :-1] > without[:, right, 2:, :-1]).all())
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_embedding_term_is_symmetric_and_leaves_the_directed_low_term_alone():
    gen = torch.Generator().manual_seed(3)
    sem = torch.rand(1, 2, 4, 4, generator=gen)
    low = torch.rand(1, 4, 4, generator=gen)
    emb = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4, generator=gen), dim=1)
    plain = edge_lengths(sem, boundary_low=low, extra_weight=0.5)
    term = edge_lengths(sem, boundary_low=low, extra_weight=0.5, embedding=emb) - plain
    for k, (dy, dx) in enumerate(OFFSETS):
        back = OFFSETS.index((-dy, -dx))
        for y in range(4):
            for x in range(4):
                if 0 <= y + dy < 4 and 0 <= x + dx < 4:
                    # p -> q and q -> p pay the same embedding term
                    assert abs(float(term[0, k, y, x]) - float(term[0, back, y + dy, x + dx])) < 1e-6
                    want = 0.5 * max(0.0, 1.0 - float((emb[0, :, y, x] * emb[0, :, y + dy, x + dx]).sum()))
                    assert abs(float(term[0, k, y, x]) - want) < 1e-6


def test_embedding_term_values_identical_opposite_orthogonal_and_clipped():
    sem = torch.zeros(1, 1, 1, 2)
    right = OFFSETS.index((0, 1))

    def term(e_p, e_q, weight=0.25):
        emb = torch.tensor([e_p, e_q], dtype=torch.float32).T[None, :, None, :]  # [1, D, 1, 2]
        return float(edge_lengths(sem, extra_weight=weight, embedding=emb)[0, right, 0, 0])

    assert term([0.6, 0.8], [0.6, 0.8]) == 0.0  # identical unit vectors
    assert term([1.0, 0.0], [0.0, 1.0]) == 0.25  # orthogonal: w
    assert term([0.6, 0.8], [-0.6, -0.8]) == pytest.approx(0.5)  # opposite: 2 w
    assert term([2.0, 0.0], [2.0, 0.0]) == 0.0  # aligned, dot 4 > 1: clipped at 0, not -0.75
    assert term([1.0, 0.0], [0.0, 1.0], weight=0.0) == 0.0


def test_edge_lengths_rejects_mismatched_maps():
    sem = torch.rand(2, 3, 4, 5)
    with pytest.raises(P2MInputError, match="boundary_high"):
        edge_lengths(sem, boundary_high=torch.rand(2, 4, 4))
    with pytest.raises(P2MInputError, match=r"extra\[0\]"):
        edge_lengths(sem, extra=[torch.rand(1, 4, 5)])
    with pytest.raises(P2MInputError, match="semantic"):
        edge_lengths(torch.rand(3, 4, 5))
    for bad in (torch.rand(2, 8, 4, 4), torch.rand(1, 8, 4, 5), torch.rand(2, 4, 5), torch.ones(2, 8, 4, 5).long()):
        with pytest.raises(P2MInputError, match="embedding"):
            edge_lengths(sem, embedding=bad)
