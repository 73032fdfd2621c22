"""generate_pseudo_labels: properties (hypothesis), edge cases, and independent oracles."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2m_core.config import PseudoConfig
from p2m_core.errors import P2MInputError
from p2m_core.pseudo import (
    PointSet,
    TaskMaps,
    generate_pseudo_labels,
    semantic_cost_map,
)
from p2m_core.pseudo.edge_lengths import NEIGHBOUR_OFFSETS, edge_lengths
from p2m_core.pseudo.geodesic import geodesic_distances
from p2m_core.pseudo.graph import coarse_edge_lengths


def random_maps(rng: np.random.Generator, b: int, c: int, h: int, w: int) -> TaskMaps:
    """Continuous random maps (no exact ties between geodesic costs)."""
    logits = torch.tensor(rng.normal(size=(b, c, h, w)) * 2, dtype=torch.float32)
    return TaskMaps(
        semantic=torch.softmax(logits, 1),
        boundary_high=torch.tensor(rng.random((b, h, w)), dtype=torch.float32),
        boundary_low=torch.tensor(rng.random((b, h, w)), dtype=torch.float32),
    )


def random_points(rng: np.random.Generator, m: int, c: int, h: int, w: int, f: int = 1) -> PointSet:
    """m points on distinct nodes of the 1/f graph, classes random, thing/stuff decided per class."""
    hc, wc = -(-h // f), -(-w // f)
    nodes = rng.choice(hc * wc, size=m, replace=False)
    ys = np.minimum((nodes // wc) * f + rng.integers(0, f, m), h - 1)
    xs = np.minimum((nodes % wc) * f + rng.integers(0, f, m), w - 1)
    labels = rng.integers(0, c, m)
    thing_class = rng.random(c) < 0.6
    return PointSet(
        torch.tensor(np.stack([ys, xs], 1), dtype=torch.long),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(thing_class[labels]),
    )


def cfg_for(**kw) -> PseudoConfig:
    base = {"graph_stride": 4, "mask_stride": 4, "centroid_iters": 1}
    base.update(kw)
    return PseudoConfig(**base)


def check_invariants(out, maps: TaskMaps, points: list[PointSet]) -> None:
    """Partition of the transported pixels, k sums, own pixels, stuff from the semantic argmax."""
    for b, p in enumerate(points):
        img = out.image(b)
        m = len(p)
        thing = p.is_thing.numpy()
        masks = img.masks.numpy()
        pan = img.panoptic.numpy()
        transported = img.transported.numpy()
        assert masks.shape[0] == m
        assert (masks.sum(0) <= 1).all()  # masks never overlap
        thing_cover = masks[thing].sum(0) if thing.any() else np.zeros_like(transported, dtype=int)
        np.testing.assert_array_equal(thing_cover, transported.astype(int))  # partition of thing pixels
        assert int(img.k.sum()) == int(transported.sum())
        assert int(img.counts.sum()) == int(transported.sum())
        assert img.thing_index.tolist() == np.nonzero(thing)[0].tolist()
        for i, (y, x) in enumerate(p.yx.tolist()):
            assert pan[y, x] == i  # own pixel kept (points are on distinct pixels here)
        # stuff: a non-transported pixel with a stuff-class argmax (over labelled classes) is
        # owned by a stuff point of that class
        classes = sorted(set(p.labels.tolist()))
        sem = maps.semantic[b].numpy()
        arg = np.array(classes)[sem[classes].argmax(0)]
        labels = p.labels.numpy()
        owner_class = np.where(pan >= 0, labels[np.maximum(pan, 0)], -1)
        stuff_px = ~transported & (pan >= 0)
        stuff_px[tuple(p.yx.numpy().T)] = False  # a stuff point's own pixel is forced to it
        np.testing.assert_array_equal(owner_class[stuff_px], arg[stuff_px])
        assert not thing[pan[stuff_px]].any()


# ----------------------------------------------------------------------------- properties
# Derandomised: the same 30 examples every run. Near-tie problems (two points within float
# rounding of each other on a pixel) can break exact permutation invariance, which a random
# draw finds about once in a few hundred examples; P2M_HYPOTHESIS_EXAMPLES=1000 looks for them.
@settings(max_examples=int(os.environ.get("P2M_HYPOTHESIS_EXAMPLES", 30)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(4, 13),
    w=st.integers(4, 13),
    c=st.integers(2, 4),
    m=st.integers(1, 6),
    f=st.sampled_from([1, 2, 4]),
    k_scheme=st.sampled_from(["equal_division", "nearest_point", "nearest_centroid"]),
    mode=st.sampled_from(["reference", "converged"]),
    assignment=st.sampled_from(["ot", "ot_exact", "mc"]),
)
def test_properties(seed, h, w, c, m, f, k_scheme, mode, assignment) -> None:
    rng = np.random.default_rng(seed)
    m = min(m, (-(-h // f)) * (-(-w // f)))
    maps = random_maps(rng, 1, c, h, w)
    points = [random_points(rng, m, c, h, w, f)]
    cfg = cfg_for(graph_stride=4 * f, k_scheme=k_scheme, sinkhorn_mode=mode, assignment=assignment)
    out = generate_pseudo_labels(maps, points, cfg)
    check_invariants(out, maps, points)

    # permuting the points permutes the result, nothing else
    perm = torch.tensor(rng.permutation(m))
    p = points[0]
    shuffled = [PointSet(p.yx[perm], p.labels[perm], p.is_thing[perm])]
    out2 = generate_pseudo_labels(maps, shuffled, cfg)
    back = torch.where(out2.panoptic[0] >= 0, perm[out2.panoptic[0].clamp_min(0)], -1)
    if mode == "converged" and assignment == "ot":
        # A degenerate OT (two pixels with equal cost differences between two points, within
        # eps) splits their mass; the argmax of a split pixel then rests on float rounding,
        # which depends on the order of the sum over points, and so does the iteration where
        # the tolerance is met. Only such pixels may differ: a vertex of the transport polytope
        # splits at most m - 1 pixels (seed 2781, 13x9, m=5, equal division: 4 of 55 differed).
        differ = int((back != out.panoptic[0]).sum())
        assert differ <= max(2, m - 1, 0.05 * int(out.transported.sum()))
    elif assignment == "ot_exact":
        # Several optimal assignments exist when cost differences tie; the solver's tie rule
        # (the lexicographically smallest label vector) then depends on the point order, so
        # only the capacities met are invariant: each point's pixel count follows its point.
        # Forcing each point's own pixel after the transport then moves at most one pixel per
        # point, from whichever supplier the tie rule gave it (seed 0, 5x5, m=4: counts 4/8 vs 5/7).
        c1 = dict(zip(out.thing_index[0].tolist(), out.counts[0].tolist()))
        c2 = {int(perm[i]): c for i, c in zip(out2.thing_index[0].tolist(), out2.counts[0].tolist())}
        assert c1.keys() == c2.keys() and sum(abs(c1[i] - c2[i]) for i in c1) <= 2 * m
    else:
        assert torch.equal(back, out.panoptic[0])
    k1 = dict(zip(out.thing_index[0].tolist(), out.k[0].tolist()))
    k2 = {int(perm[i]): k for i, k in zip(out2.thing_index[0].tolist(), out2.k[0].tolist())}
    assert k1 == k2


def test_batch_equals_single_images() -> None:
    rng = np.random.default_rng(5)
    maps = random_maps(rng, 3, 3, 16, 20)
    points = [random_points(rng, m, 3, 16, 20, 4) for m in (5, 2, 4)]
    for mode in ("reference", "converged"):
        cfg = cfg_for(graph_stride=16, sinkhorn_mode=mode)
        out = generate_pseudo_labels(maps, points, cfg)
        check_invariants(out, maps, points)
        for b in range(3):
            single = generate_pseudo_labels(
                TaskMaps(maps.semantic[b : b + 1], maps.boundary_high[b : b + 1], maps.boundary_low[b : b + 1]),
                [points[b]], cfg,
            )
            assert torch.equal(single.panoptic[0], out.panoptic[b])
            assert torch.equal(single.image(0).k, out.image(b).k)
            assert int(single.iterations[0]) == int(out.iterations[b])


# ----------------------------------------------------------------------------- oracles
def geodesic_oracle(maps: TaskMaps, yx: torch.Tensor) -> torch.Tensor:
    """Costs at f = 1 from the scipy Dijkstra backend: [m, H*W]."""
    lengths = edge_lengths(maps.semantic, maps.boundary_high, maps.boundary_low)
    return geodesic_distances(lengths, [yx], backend="scipy")[0].reshape(len(yx), -1)


@pytest.mark.parametrize("decode", ["argmin", "psps"])
def test_mc_equals_minimum_cost_oracle(decode: str) -> None:
    rng = np.random.default_rng(7)
    h, w, c = 14, 15, 3
    maps = random_maps(rng, 1, c, h, w)
    points = PointSet(torch.tensor([[1, 1], [12, 3], [6, 13], [7, 7]]), torch.tensor([0, 0, 1, 2]),
                      torch.tensor([True, True, True, False]))
    out = generate_pseudo_labels(maps, [points], cfg_for(assignment="mc", mc_decode=decode))
    cost = geodesic_oracle(maps, points.yx[:3])
    if decode == "argmin":
        pick = cost.argmin(0)
    else:
        likelihood = maps.semantic[0].reshape(c, -1)[points.labels[:3]]
        pick = ((1 - cost / cost[:, out.transported[0].flatten()].max()) * likelihood).argmax(0)
    pick = pick.reshape(h, w).clone()
    for i, (y, x) in enumerate(points.yx[:3].tolist()):
        pick[y, x] = i
    tr = out.transported[0]
    assert bool(tr.any())
    assert torch.equal(out.panoptic[0][tr], pick[tr])
    assert torch.equal(out.mc_panoptic[0], out.panoptic[0])


def test_converged_ot_honours_k_in_the_pipeline() -> None:
    rng = np.random.default_rng(8)
    h, w = 24, 24
    maps = random_maps(rng, 1, 2, h, w)
    points = PointSet(torch.tensor([[2, 2], [20, 4], [12, 20], [5, 15]]), torch.tensor([0, 0, 0, 0]),
                      torch.ones(4, dtype=torch.bool))
    ref = generate_pseudo_labels(maps, [points], cfg_for(k_scheme="equal_division"))
    conv = generate_pseudo_labels(maps, [points], cfg_for(k_scheme="equal_division", sinkhorn_mode="converged"))
    assert int(ref.transported.sum()) == h * w  # one class only: everything is transported
    assert bool(conv.converged[0])
    assert int((conv.counts - conv.k).abs().max()) <= 3
    # the fixed 80-iteration reference stays near minimum cost instead
    assert float(ref.disagreement[0]) < float(conv.disagreement[0])
    assert int((ref.counts - ref.k).abs().max()) > 3


@pytest.mark.parametrize("k_scheme", ["equal_division", "nearest_centroid"])
def test_exact_ot_gives_every_point_exactly_k(k_scheme: str) -> None:
    rng = np.random.default_rng(9)
    maps = random_maps(rng, 2, 3, 20, 24)
    points = [random_points(rng, m, 3, 20, 24, 4) for m in (5, 3)]
    cfg = cfg_for(k_scheme=k_scheme, assignment="ot_exact", force_own_pixels=False)
    out = generate_pseudo_labels(maps, points, cfg)
    assert torch.equal(out.counts, out.k)
    assert bool(out.converged.all()) and float(out.rel_error.max()) == 0.0
    # the converged entropic solver at small eps approaches it
    conv = generate_pseudo_labels(maps, points, dataclasses.replace(cfg, assignment="ot", sinkhorn_mode="converged",
                                                                    sinkhorn_epsilon=1e-4))  # fmt: skip
    same = float((conv.panoptic == out.panoptic).float().mean())
    assert same >= 0.97


# ----------------------------------------------------------------------------- edge cases
def test_one_point_takes_all_thing_pixels() -> None:
    maps = random_maps(np.random.default_rng(0), 1, 2, 9, 11)
    out = generate_pseudo_labels(maps, [PointSet(torch.tensor([[4, 5]]), torch.tensor([1]), torch.tensor([True]))],
                                 cfg_for())
    assert bool((out.panoptic[0] == 0).all())  # absent class 0 is ignored: every pixel is class 1
    assert out.k.tolist() == [[99]] and out.counts.tolist() == [[99]]


def test_no_thing_points() -> None:
    rng = np.random.default_rng(1)
    maps = random_maps(rng, 1, 3, 10, 10)
    points = PointSet(torch.tensor([[0, 0], [9, 9]]), torch.tensor([0, 2]), torch.tensor([False, False]))
    for mode in ("reference", "converged"):
        out = generate_pseudo_labels(maps, [points], cfg_for(sinkhorn_mode=mode))
        check_invariants(out, maps, [points])
        assert out.k.shape == (1, 0) and not bool(out.transported.any())
        assert bool((out.panoptic >= 0).all())
        assert not bool(torch.isnan(out.disagreement).any())


def test_two_points_on_the_same_pixel() -> None:
    maps = random_maps(np.random.default_rng(2), 1, 2, 8, 8)
    points = PointSet(torch.tensor([[3, 3], [3, 3], [6, 1]]), torch.tensor([0, 0, 1]),
                      torch.tensor([True, True, True]))
    out = generate_pseudo_labels(maps, [points], cfg_for())
    img = out.image(0)
    assert int(img.panoptic[3, 3]) == 0  # the lower index keeps the shared pixel
    assert int(img.k.sum()) == 64 and int(img.counts.sum()) == 64
    assert bool((img.masks.sum(0) == 1).all())


def test_thing_point_beats_stuff_point_on_a_shared_pixel() -> None:
    maps = random_maps(np.random.default_rng(3), 1, 2, 8, 8)
    points = PointSet(torch.tensor([[2, 2], [2, 2]]), torch.tensor([1, 0]), torch.tensor([False, True]))
    out = generate_pseudo_labels(maps, [points], cfg_for())
    assert int(out.panoptic[0, 2, 2]) == 1
    assert bool(out.transported[0, 2, 2])


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_points_on_the_border_and_uneven_coarse_grid(backend: str) -> None:
    rng = np.random.default_rng(4)
    h, w = 13, 10  # not multiples of f = 4
    maps = random_maps(rng, 1, 3, h, w)
    points = PointSet(torch.tensor([[0, 0], [12, 9], [12, 0], [0, 9]]), torch.tensor([0, 1, 0, 2]),
                      torch.tensor([True, True, True, False]))
    out = generate_pseudo_labels(maps, [points], cfg_for(graph_stride=16, geodesic_backend=backend))
    check_invariants(out, maps, [points])


def test_more_points_than_graph_nodes() -> None:
    rng = np.random.default_rng(6)
    maps = random_maps(rng, 1, 2, 12, 12)
    points = PointSet(torch.tensor([[1, 1], [5, 9], [10, 2], [11, 11], [6, 6]]), torch.tensor([0, 0, 0, 0, 1]),
                      torch.tensor([True, True, True, True, False]))
    for scheme in ("equal_division", "nearest_point", "nearest_centroid"):
        out = generate_pseudo_labels(maps, [points], cfg_for(graph_stride=64, k_scheme=scheme))  # 1x1 graph
        check_invariants(out, maps, [points])


def test_void_pixels_are_unassigned() -> None:
    sem = torch.zeros(1, 2, 6, 6)
    sem[0, 0, :, :3] = 1.0  # right half: no class evidence (a void pixel of an oracle map)
    points = PointSet(torch.tensor([[1, 1], [4, 1]]), torch.tensor([0, 0]), torch.tensor([True, True]))
    out = generate_pseudo_labels(TaskMaps(sem), [points], cfg_for(maps=["semantic"]))
    assert bool((out.panoptic[0, :, 3:] == -1).all()) and bool((out.panoptic[0, :, :3] >= 0).all())
    assert int(out.k.sum()) == 18


# ----------------------------------------------------------------------------- input errors
def test_input_errors_name_the_problem() -> None:
    maps = random_maps(np.random.default_rng(0), 1, 2, 8, 8)
    pts = [PointSet(torch.tensor([[1, 1]]), torch.tensor([0]), torch.tensor([True]))]
    with pytest.raises(P2MInputError, match="boundary_low"):
        generate_pseudo_labels(dataclasses.replace(maps, boundary_low=None), pts, cfg_for())
    with pytest.raises(P2MInputError, match="graph_stride"):
        generate_pseudo_labels(maps, pts, cfg_for(graph_stride=6))
    with pytest.raises(P2MInputError, match="outside"):
        generate_pseudo_labels(maps, [PointSet(torch.tensor([[8, 1]]), torch.tensor([0]), torch.tensor([True]))],
                               cfg_for())
    mixed = PointSet(torch.tensor([[1, 1], [5, 5]]), torch.tensor([0, 0]), torch.tensor([True, False]))
    with pytest.raises(P2MInputError, match="both thing and stuff"):
        generate_pseudo_labels(maps, [mixed], cfg_for())
    nan_map = dataclasses.replace(maps, boundary_high=maps.boundary_high.clone().fill_(float("nan")))
    with pytest.raises(P2MInputError, match="boundary_high contains NaN"):
        generate_pseudo_labels(nan_map, pts, cfg_for())
    # a map that is provided but not listed is simply not used
    out = generate_pseudo_labels(maps, pts, cfg_for(maps=["semantic"]))
    assert out.panoptic.shape == (1, 8, 8)


def test_value_checks_can_be_skipped_but_shape_checks_cannot() -> None:
    """The training step skips the value checks (each one waits for the device)."""
    maps = random_maps(np.random.default_rng(0), 1, 2, 8, 8)
    pts = [PointSet(torch.tensor([[1, 1]]), torch.tensor([0]), torch.tensor([True]))]
    inf_map = dataclasses.replace(maps, boundary_high=maps.boundary_high.clone().fill_(float("inf")))
    with pytest.raises(P2MInputError, match="boundary_high contains NaN or infinite"):
        generate_pseudo_labels(inf_map, pts, cfg_for())
    out = generate_pseudo_labels(inf_map, pts, cfg_for(), check_values=False)
    assert out.panoptic.shape == (1, 8, 8)
    checked = generate_pseudo_labels(maps, pts, cfg_for(), check_values=False)
    assert torch.equal(checked.panoptic, generate_pseudo_labels(maps, pts, cfg_for()).panoptic)
    with pytest.raises(P2MInputError, match="boundary_high: expected shape"):
        generate_pseudo_labels(dataclasses.replace(maps, boundary_high=maps.boundary_high[:, :4]), pts, cfg_for(),
                               check_values=False)


# ----------------------------------------------------------------------------- embedding
def unit_embedding(rng: np.random.Generator, b: int, d: int, h: int, w: int) -> torch.Tensor:
    e = torch.tensor(rng.normal(size=(b, d, h, w)), dtype=torch.float32)
    return torch.nn.functional.normalize(e, dim=1)


def two_touching_instances(edge: int) -> tuple[TaskMaps, list[PointSet], torch.Tensor]:
    """An 8 x 24 image of one thing class whose P^s drifts slowly along x (every step costs
    0.02), two points of that class at x = 3 and x = 20, and an embedding that flips from one
    unit vector to its opposite at column ``edge`` (the border between the two instances)."""
    h, w = 8, 24
    a = (0.9 - 0.01 * torch.arange(w, dtype=torch.float32)).expand(h, w)
    sem = torch.stack([a, 1 - a])[None]  # class 0 everywhere (a >= 0.67)
    emb = torch.full((1, 2, h, w), 2**-0.5)
    emb[..., edge:] *= -1
    points = [PointSet(torch.tensor([[4, 3], [4, 20]]), torch.tensor([0, 0]), torch.tensor([True, True]))]
    return TaskMaps(sem), points, emb


@pytest.mark.parametrize("f", [1, 4])
@pytest.mark.parametrize("assignment", ["mc", "ot"])
@pytest.mark.parametrize("resize", ["area", "bilinear"])
def test_embedding_moves_the_boundary_between_touching_instances_to_its_edge(f, assignment, resize) -> None:
    edge = 16
    maps, points, emb = two_touching_instances(edge)
    cfg = cfg_for(graph_stride=4 * f, maps=["semantic"], assignment=assignment, map_resize=resize)
    widths = []
    for embedding in (None, emb):
        pan = generate_pseudo_labels(dataclasses.replace(maps, embedding=embedding), points, cfg).panoptic[0]
        first = (pan == 0).sum(1)  # per row: point 0 owns a prefix of the row, point 1 the rest
        assert torch.equal(pan, torch.where(torch.arange(24) < first[:, None], 0, 1))
        widths.append(first)
    # without the embedding the costs grow equally on both sides: the border is midway (11.5)
    assert bool((widths[0] == 12).all())
    # with it, crossing column 16 costs 2 * 0.1: the border moves there (exactly at f = 1; the
    # bilinear upsampling of the distances blurs it by a pixel at f = 4)
    assert bool((widths[1] == edge).all()) if f == 1 else bool(((widths[1] >= edge - 1) & (widths[1] <= edge)).all())


@pytest.mark.parametrize("resize", ["area", "bilinear"])
def test_embedding_is_renormalised_on_the_graph(resize) -> None:
    """Mask columns 2-5 mix two orthogonal vectors pixel by pixel (a checkerboard), so their
    2 x 2 blocks average to (u + v) / 2, of length 1/sqrt(2). Re-normalised, the two mixed nodes
    are equal (their edge costs 0) and each is at 45 degrees to its pure neighbour; left as
    they are (the release), every edge around them costs w (1 - 1/2)."""
    h, w, weight = 4, 8, 0.4
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    emb = torch.empty(1, 2, h, w)
    for y in range(h):
        for x in range(w):
            emb[0, :, y, x] = u if x < 2 or (2 <= x < 6 and (x + y) % 2 == 0) else v
    maps = TaskMaps(torch.ones(1, 1, h, w), embedding=emb)
    right = NEIGHBOUR_OFFSETS.index((0, 1))
    for renormalise, mixed_to_pure, mixed_to_mixed in (
        (True, weight * (1 - 2**-0.5), 0.0), (False, weight * 0.5, weight * 0.5),
    ):
        cfg = cfg_for(graph_stride=8, maps=["semantic"], map_resize=resize, extra_weight=weight,
                      renormalise_embedding=renormalise)
        lengths = coarse_edge_lengths(maps, cfg)[0, right, :, :3]  # graph 2 x 4: node columns 0-1-2-3
        want = torch.tensor([mixed_to_pure, mixed_to_mixed, mixed_to_pure]).expand(2, 3)
        torch.testing.assert_close(lengths, want, rtol=0, atol=1e-6)


def test_batch_with_embedding_equals_single_images() -> None:
    rng = np.random.default_rng(11)
    maps = dataclasses.replace(random_maps(rng, 3, 3, 16, 20), embedding=unit_embedding(rng, 3, 5, 16, 20))
    points = [random_points(rng, m, 3, 16, 20, 4) for m in (5, 2, 4)]  # padded to 5 in the batch
    cfg = cfg_for(graph_stride=8, extra_weight=1.0)
    out = generate_pseudo_labels(maps, points, cfg)
    check_invariants(out, maps, points)
    plain = generate_pseudo_labels(dataclasses.replace(maps, embedding=None), points, cfg)
    assert not torch.equal(out.panoptic, plain.panoptic)  # the embedding is used
    for b in range(3):
        one = TaskMaps(maps.semantic[b : b + 1], maps.boundary_high[b : b + 1], maps.boundary_low[b : b + 1],
                       embedding=maps.embedding[b : b + 1])
        single = generate_pseudo_labels(one, [points[b]], cfg)
        assert torch.equal(single.panoptic[0], out.panoptic[b])
        assert torch.equal(single.image(0).k, out.image(b).k)


def test_embedding_input_errors_name_the_field() -> None:
    rng = np.random.default_rng(0)
    maps = random_maps(rng, 2, 2, 8, 8)
    pts = [PointSet(torch.tensor([[1, 1]]), torch.tensor([0]), torch.tensor([True]))] * 2
    good = unit_embedding(rng, 2, 3, 8, 8)
    for bad in (good[:1], good[..., :4], good[:, 0], good.double().long(), good.permute(0, 2, 3, 1)):
        for check_values in (True, False):
            with pytest.raises(P2MInputError, match=r"TaskMaps\.embedding must be a float \[B, D, H, W\]"):
                generate_pseudo_labels(dataclasses.replace(maps, embedding=bad), pts, cfg_for(),
                                       check_values=check_values)
    nan = good.clone()
    nan[1, 2, 3, 4] = float("nan")
    with pytest.raises(P2MInputError, match="TaskMaps.embedding contains NaN or infinite"):
        generate_pseudo_labels(dataclasses.replace(maps, embedding=nan), pts, cfg_for())
    # the training step skips value checks: the NaN is then only met by the geodesic solver's
    # own check on the edge lengths
    with pytest.raises(P2MInputError, match="geodesic_distances: lengths contain NaN"):
        generate_pseudo_labels(dataclasses.replace(maps, embedding=nan), pts, cfg_for(), check_values=False)
    with pytest.raises(P2MInputError, match="pseudo.renormalise_embedding"):
        generate_pseudo_labels(maps, pts, cfg_for(renormalise_embedding="yes"))
    # float64 embeddings are accepted (used in float32, like the other maps)
    out64 = generate_pseudo_labels(dataclasses.replace(maps, embedding=good.double()), pts, cfg_for())
    assert torch.equal(out64.panoptic, generate_pseudo_labels(dataclasses.replace(maps, embedding=good), pts,
                                                              cfg_for()).panoptic)


# ----------------------------------------------------------------------------- semantic_cost_map
def test_semantic_cost_map_matches_loop_oracle() -> None:
    rng = np.random.default_rng(9)
    logits = torch.tensor(rng.normal(size=(2, 4, 12, 10)), dtype=torch.float32)
    points = [
        PointSet(torch.tensor([[0, 0], [6, 5]]), torch.tensor([2, 0]), torch.tensor([True, False])),
        PointSet(torch.tensor([[11, 9]]), torch.tensor([3]), torch.tensor([True])),
    ]
    got = semantic_cost_map(logits, points, dilation=5).numpy()
    probs = torch.softmax(logits, 1).numpy()
    for b, p in enumerate(points):
        expected = np.zeros_like(probs[b])
        for cls in set(p.labels.tolist()):
            expected[cls] = probs[b, cls]
        for (y, x), cls in zip(p.yx.tolist(), p.labels.tolist()):
            expected[cls, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 1.0
        np.testing.assert_allclose(got[b], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(P2MInputError, match="odd"):
        semantic_cost_map(logits, points, dilation=4)


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(10)
    maps = random_maps(rng, 2, 3, 32, 32)
    points = [random_points(rng, 6, 3, 32, 32, 4), random_points(rng, 3, 3, 32, 32, 4)]
    cfg = cfg_for(graph_stride=16, sinkhorn_mode="converged")
    cpu = generate_pseudo_labels(maps, points, cfg)
    gpu_maps = TaskMaps(maps.semantic.cuda(), maps.boundary_high.cuda(), maps.boundary_low.cuda())
    gpu = generate_pseudo_labels(gpu_maps, [p.to("cuda") for p in points], cfg)
    assert float((gpu.panoptic.cpu() == cpu.panoptic).float().mean()) >= 0.99
