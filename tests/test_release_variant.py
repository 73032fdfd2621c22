"""The release's pseudo-label variant: config fields, the preset, and label-for-label identity
with a plain transcription of the authors' release (tests/release_transcription.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from p2m_core.config import PseudoConfig, load_config
from p2m_core.errors import P2MInputError
from p2m_core.pseudo import PointSet, TaskMaps, generate_pseudo_labels
from tests.conftest import SHARED_SAMPLE
from tests.release_transcription import Point, release_pseudo_labels

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "experiments" / "presets" / "release.yaml"
RELEASE = {
    "k_ranking": "likelihood", "centroid_rule": "release", "warmup_assignment": "release", "map_resize": "bilinear",
    "pixel_roles": "argmax", "ot_pixels": "all", "force_own_pixels": False, "stuff_void_threshold": 0.5,
    "renormalise_embedding": False,
}  # fmt: skip


def release_cfg(**kw) -> PseudoConfig:
    return dataclasses.replace(load_config(PRESET).pseudo, **kw)


# --------------------------------------------------------------------------- random inputs
def dyadic_semantic(rng: np.random.Generator, c: int, h: int, w: int, present: np.ndarray) -> np.ndarray:
    """Class probabilities in multiples of 1/64 (every sum, resize by 1/2 weights and L1 sum is
    exact in float32, so no result hangs on the order of a float sum); absent classes zeroed as
    in the cost-ready P^s, which leaves some pixels all zero."""
    cuts = np.sort(rng.integers(0, 65, (c - 1, h, w)), axis=0)
    counts = np.diff(np.concatenate([np.zeros((1, h, w)), cuts, np.full((1, h, w), 64)]), axis=0)
    return (counts / 64 * present[:, None, None]).astype(np.float32)


def random_image(rng: np.random.Generator, m: int, c: int, h: int, w: int, n_thing_classes: int):
    """Maps and m points (thing classes first, as in COCO and VOC); points may share graph cells."""
    labels = rng.integers(0, c, m)
    present = np.isin(np.arange(c), labels)
    sem = dyadic_semantic(rng, c, h, w, present)
    boundary = (rng.integers(0, 65, (h, w)) / 64).astype(np.float32)
    pix = rng.choice(h * w, size=m, replace=False)
    points = [Point(int(p // w), int(p % w), int(lab), bool(lab < n_thing_classes)) for p, lab in zip(pix, labels)]
    return sem, boundary, points


def engine_inputs(images) -> tuple[TaskMaps, list[PointSet]]:
    sem = torch.from_numpy(np.stack([s for s, _, _ in images]))
    boundary = torch.from_numpy(np.stack([b for _, b, _ in images]))
    sets = [
        PointSet(
            torch.tensor([[p.y, p.x] for p in pts], dtype=torch.long).reshape(-1, 2),
            torch.tensor([p.label for p in pts], dtype=torch.long),
            torch.tensor([p.is_thing for p in pts], dtype=torch.bool),
        )
        for _, _, pts in images
    ]
    return TaskMaps(semantic=sem, boundary_high=boundary), sets


def assert_identical(out, images, cfg: PseudoConfig, warmup: bool) -> None:
    f = cfg.graph_stride // cfg.mask_stride
    for b, (sem, boundary, pts) in enumerate(images):
        ref = release_pseudo_labels(
            sem, boundary, pts, f, beta=cfg.beta, warmup=warmup, void_threshold=cfg.stuff_void_threshold,
            eps=cfg.sinkhorn_epsilon, iters=cfg.sinkhorn_iters,
        )
        got = out.image(b)
        np.testing.assert_array_equal(got.k.numpy(), ref.k, err_msg=f"image {b}: k")
        differ = int((got.panoptic.numpy() != ref.panoptic).sum())
        assert differ == 0, f"image {b}: {differ} of {ref.panoptic.size} pixels differ from the release"


SHAPES = [  # (mask_stride, graph_stride, H, W)
    (1, 16, 64, 80),  # the release's own setting: masks at the input resolution
    (4, 16, 48, 64),
    (8, 16, 40, 48),
]


@pytest.mark.parametrize("warmup", [False, True], ids=["ot", "warmup"])
@pytest.mark.parametrize("stride, graph, h, w", SHAPES, ids=[f"mask{s[0]}" for s in SHAPES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_equals_release_transcription_on_random_maps(seed, stride, graph, h, w, warmup):
    rng = np.random.default_rng(seed)
    images = [random_image(rng, m, 6, h, w, n_thing_classes=4) for m in (5, 2, 8)]
    # 1/8 instead of 0.1 keeps the boundary term exact too (see dyadic_semantic)
    cfg = release_cfg(mask_stride=stride, graph_stride=graph, beta=0.125)
    maps, points = engine_inputs(images)
    out = generate_pseudo_labels(maps, points, cfg, warmup=warmup)
    assert_identical(out, images, cfg, warmup)


def test_engine_equals_release_with_only_stuff_points_and_beta_01():
    rng = np.random.default_rng(7)
    images = [random_image(rng, m, 5, 32, 48, n_thing_classes=3) for m in (4, 6)]
    images.append((images[0][0], images[0][1], [p for p in images[0][2] if not p.is_thing] or images[0][2][:0]))
    cfg = release_cfg(mask_stride=2, graph_stride=8)
    maps, points = engine_inputs(images)
    assert_identical(generate_pseudo_labels(maps, points, cfg), images, cfg, warmup=False)


# --------------------------------------------------------------------------- real COCO
@pytest.fixture(scope="module")
def coco_inputs():
    """The shared real COCO sample as oracle maps at mask stride 4 (a failure, never a skip,
    when the data are missing: this test claims real data)."""
    if not (SHARED_SAMPLE / "panoptic.json").is_file():
        pytest.fail(f"shared COCO panoptic sample missing at {SHARED_SAMPLE}")
    from p2m_core.ablation.prepare import batch_inputs, load_stage_data, prepare_batches

    overrides = [
        f"data.root={SHARED_SAMPLE}", "data.dataset=coco_panoptic", "data.val.json=panoptic.json",
        "data.val.panoptic=panoptic", "data.val.images=images", "ablation.source=oracle", "ablation.overlays=0",
        "pseudo.mask_stride=4",
    ]  # fmt: skip
    cfg = load_config(PRESET, overrides)
    batches = [batch_inputs(batch, cfg) for batch in prepare_batches(load_stage_data(cfg), cfg)]
    assert sum(len(points) for _, points in batches) == 2
    return cfg.pseudo, batches


@pytest.mark.parametrize("warmup", [False, True], ids=["ot", "warmup"])
def test_engine_equals_release_transcription_on_real_coco(coco_inputs, warmup):
    cfg, batches = coco_inputs
    for maps, points in batches:
        out = generate_pseudo_labels(maps, points, cfg, warmup=warmup)
        images = [
            (
                maps.semantic[b].numpy(), maps.boundary_high[b].numpy(),
                [Point(int(y), int(x), int(c), bool(t)) for (y, x), c, t in zip(p.yx.tolist(), p.labels, p.is_thing)],
            )
            for b, p in enumerate(points)
        ]  # fmt: skip
        assert any(p.is_thing for _, _, pts in images for p in pts)
        assert_identical(out, images, cfg, warmup)


# --------------------------------------------------------------------------- config
def test_preset_loads_and_selects_every_release_setting():
    cfg = load_config(PRESET).pseudo
    for name, value in RELEASE.items():
        assert getattr(cfg, name) == value, name
    assert cfg.maps == ["semantic", "boundary_high"] and cfg.mask_stride == 1 and cfg.graph_stride == 16
    assert cfg.sinkhorn_mode == "reference" and cfg.sinkhorn_iters == 80 and cfg.k_scheme == "nearest_centroid"


def test_preset_layers_over_a_dataset_config(tmp_path):
    layered = tmp_path / "voc_release.yaml"
    layered.write_text(f"_base_: [{REPO / 'experiments' / 'voc.yaml'}, {PRESET}]\n")
    cfg = load_config(layered)
    assert cfg.name == "point2mask-voc" and cfg.pseudo.warmup_iters == 12000
    assert all(getattr(cfg.pseudo, name) == value for name, value in RELEASE.items())


def test_defaults_are_the_papers_reading():
    cfg = PseudoConfig()
    assert (cfg.k_ranking, cfg.centroid_rule, cfg.warmup_assignment, cfg.map_resize) == (
        "argmin", "paper", "mc", "area")
    assert (cfg.pixel_roles, cfg.ot_pixels, cfg.force_own_pixels, cfg.stuff_void_threshold) == (
        "evidence", "transported", True, 0.0)
    assert cfg.renormalise_embedding is True
    assert cfg.warmup_iters == 0


@pytest.mark.parametrize(
    "key, value",
    [
        ("k_ranking", "median"), ("centroid_rule", "mean"), ("warmup_assignment", "ot"), ("map_resize", "nearest"),
        ("pixel_roles", "any"), ("ot_pixels", "some"), ("force_own_pixels", "maybe"), ("stuff_void_threshold", 1.5),
        ("stuff_void_threshold", -0.1), ("warmup_iters", -1), ("renormalise_embedding", "maybe"),
    ],
)  # fmt: skip
def test_config_rejects_bad_values_naming_field_and_value(key, value):
    with pytest.raises(P2MInputError) as err:
        load_config(None, [f"pseudo.{key}={value}"])
    assert f"pseudo.{key}" in str(err.value) and str(value) in str(err.value)


@pytest.mark.parametrize(
    "key, value",
    [("k_ranking", "median"), ("centroid_rule", "mean"), ("warmup_assignment", "ot"), ("map_resize", "nearest"),
     ("pixel_roles", "any"), ("ot_pixels", "some"), ("force_own_pixels", "yes"), ("stuff_void_threshold", 2.0),
     ("renormalise_embedding", "no")],
)  # fmt: skip
def test_code_built_config_rejects_bad_values_naming_field_and_value(key, value):
    # the section checks itself when built, so a bad value never reaches the pipeline
    with pytest.raises(P2MInputError) as err:
        dataclasses.replace(PseudoConfig(graph_stride=4, mask_stride=4), **{key: value})
    assert f"pseudo.{key}" in str(err.value) and str(value) in str(err.value)


def test_mc_warmup_iters_is_gone():
    with pytest.raises(P2MInputError, match="unknown key 'pseudo.mc_warmup_iters'"):
        load_config(None, ["pseudo.mc_warmup_iters=5"])


# --------------------------------------------------------------------------- behaviour of single switches
def small_batch(seed: int = 3):
    rng = np.random.default_rng(seed)
    return [random_image(rng, m, 5, 32, 32, n_thing_classes=3) for m in (6, 4)]


def test_warmup_mc_is_the_mc_assignment():
    maps, points = engine_inputs(small_batch())
    cfg = PseudoConfig(graph_stride=8, mask_stride=2, maps=["semantic", "boundary_high"])
    warm = generate_pseudo_labels(maps, points, cfg, warmup=True)
    mc = generate_pseudo_labels(maps, points, dataclasses.replace(cfg, assignment="mc"))
    assert torch.equal(warm.panoptic, mc.panoptic) and torch.equal(warm.panoptic, warm.mc_panoptic)
    assert torch.isnan(warm.disagreement).all()


def test_warmup_release_uses_nearest_point_k_over_all_pixels():
    maps, points = engine_inputs(small_batch())
    cfg = PseudoConfig(graph_stride=8, mask_stride=2, maps=["semantic", "boundary_high"], warmup_assignment="release")
    warm = generate_pseudo_labels(maps, points, cfg, warmup=True)
    for b in range(len(points)):
        img = warm.image(b)
        assert int(img.k.sum()) == 32 * 32  # stuff pixels are consumers too
        assert int(img.counts.sum()) == int(img.transported.sum())  # but only thing pixels are labelled
    assert torch.equal(warm.panoptic, generate_pseudo_labels(maps, points, cfg, warmup=True).panoptic)


def test_stuff_void_threshold_voids_only_stuff():
    maps, points = engine_inputs(small_batch())
    cfg = PseudoConfig(graph_stride=8, mask_stride=2, maps=["semantic", "boundary_high"])
    plain = generate_pseudo_labels(maps, points, cfg)
    voided = generate_pseudo_labels(maps, points, dataclasses.replace(cfg, stuff_void_threshold=0.5))
    best = maps.semantic.max(1).values
    changed = plain.panoptic != voided.panoptic
    assert changed.any() and bool((voided.panoptic[changed] == -1).all())
    assert bool((best[changed] < 0.5).all()) and not bool(plain.transported[changed].any())


def test_own_pixels_are_not_forced_when_switched_off():
    sem = torch.zeros(1, 2, 8, 8)
    sem[0, 0] = 1.0  # every pixel is class 0 (stuff) ...
    points = [PointSet(torch.tensor([[2, 2], [5, 5]]), torch.tensor([0, 1]), torch.tensor([False, True]))]
    cfg = PseudoConfig(graph_stride=2, mask_stride=1, maps=["semantic"])
    forced = generate_pseudo_labels(TaskMaps(sem), points, cfg)
    free = generate_pseudo_labels(TaskMaps(sem), points, dataclasses.replace(cfg, force_own_pixels=False))
    assert forced.panoptic[0, 5, 5] == 1  # ... yet the thing point keeps its pixel
    assert free.panoptic[0, 5, 5] == 0 and not bool(free.transported.any())


def test_bilinear_graph_needs_one_cell():
    maps, points = engine_inputs([random_image(np.random.default_rng(0), 2, 3, 6, 20, 2)])
    with pytest.raises(P2MInputError, match="map_resize='bilinear'"):
        generate_pseudo_labels(maps, points, PseudoConfig(graph_stride=8, mask_stride=1, map_resize="bilinear",
                                                         maps=["semantic", "boundary_high"]))
