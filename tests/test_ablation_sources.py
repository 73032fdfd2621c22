"""Map sources of the pseudo-label stage: oracle maps, corruption, resolutions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from p2m_core.ablation.sources import (
    build_image_maps,
    corrupt_maps,
    downsample_ids,
    instance_boundaries,
)
from p2m_core.evaluation import upsample_nearest
from p2m_core.config import AblationConfig, CorruptionConfig, load_config
from p2m_core.errors import P2MInputError


def _random_ids(rng: np.random.Generator, h: int = 23, w: int = 31) -> np.ndarray:
    ids = rng.integers(1, 4, size=(h, w))
    return ndimage.median_filter(ids, size=5)  # blobs, not noise


def source(kind: str, **kw) -> AblationConfig:
    return AblationConfig(source=kind, **kw)


# --------------------------------------------------------------------------- oracle maps
def test_instance_boundaries_match_an_independent_filter():
    ids = _random_ids(np.random.default_rng(0))
    # a pixel is on a boundary iff its 3x3 neighbourhood (border replicated) is not constant
    expected = ndimage.maximum_filter(ids, 3, mode="nearest") != ndimage.minimum_filter(ids, 3, mode="nearest")
    np.testing.assert_array_equal(instance_boundaries(ids).astype(bool), expected)


def test_oracle_maps_are_one_hot_with_gt_boundaries():
    ids = np.ones((12, 16), dtype=np.int64)
    ids[:, 8:] = 3  # segments 1 and 3 touch along column 7/8
    ids[8:, 2:6] = 2
    ids[0:3, 0:4] = 0  # void
    classes = {1: 2, 2: 0, 3: 2}  # two segments of the same class
    maps = build_image_maps(source("oracle", oracle_boundary_low="gt"), ids, classes, 4)
    assert maps.semantic.shape == (4,) + ids.shape
    np.testing.assert_array_equal(maps.semantic.sum(0), (ids != 0).astype(np.float32))
    np.testing.assert_array_equal(maps.semantic.argmax(0)[ids == 2], 0)
    np.testing.assert_array_equal(maps.semantic[2][ids == 3], 1.0)
    # instance boundaries separate segments 1 and 3 although they share class 2
    np.testing.assert_array_equal(maps.boundary_high[3:8, 7:9], 1.0)  # both sides of the contact
    assert maps.boundary_high[4:7, 12:].max() == 0.0  # inside segment 3
    np.testing.assert_array_equal(maps.boundary_low, maps.boundary_high)
    uniform = build_image_maps(source("oracle", void_semantic="uniform"), ids, classes, 4)
    np.testing.assert_allclose(uniform.semantic[:, ids == 0], 0.25)


def test_image_source_uses_edges_and_no_gt_boundary():
    ids = _random_ids(np.random.default_rng(2))
    edges = np.random.default_rng(3).random(ids.shape).astype(np.float32)
    maps = build_image_maps(source("image"), ids, {1: 0, 2: 1, 3: 2}, 3, edges=edges)
    assert maps.boundary_high is None
    np.testing.assert_array_equal(maps.boundary_low, edges)
    with pytest.raises(P2MInputError, match="edge map"):
        build_image_maps(source("image"), ids, {1: 0, 2: 1, 3: 2}, 3)


def test_corruption_is_deterministic_per_seed_and_image():
    ids = _random_ids(np.random.default_rng(4))
    clean = build_image_maps(source("oracle"), ids, {1: 0, 2: 1, 3: 2}, 3)
    cfg = CorruptionConfig(semantic_blur_sigma=1.5, semantic_noise_std=0.2, boundary_drop=0.5, boundary_blur_sigma=0.0)
    a, b = corrupt_maps(clean, cfg, image_id=7), corrupt_maps(clean, cfg, image_id=7)
    for name in ("semantic", "boundary_high", "boundary_low"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other_seed = corrupt_maps(clean, CorruptionConfig(**{**cfg.__dict__, "seed": 1}), image_id=7)
    other_image = corrupt_maps(clean, cfg, image_id=8)
    assert not np.array_equal(a.semantic, other_seed.semantic)
    assert not np.array_equal(a.boundary_high, other_image.boundary_high)
    # still probabilities; about half of the boundary pixels dropped
    np.testing.assert_allclose(a.semantic.sum(0), 1.0, atol=1e-5)
    assert (a.semantic >= 0).all()
    on = clean.boundary_high > 0
    assert 0.3 < (a.boundary_high[on] == 0).mean() < 0.7
    assert (a.boundary_high[~on] == 0).all()  # no blur: nothing appears off the boundary


def test_zero_corruption_is_the_oracle_and_full_drop_removes_boundaries():
    ids = _random_ids(np.random.default_rng(5))
    clean = build_image_maps(source("oracle"), ids, {1: 0, 2: 1, 3: 2}, 3)
    none = CorruptionConfig(semantic_blur_sigma=0, semantic_noise_std=0, boundary_drop=0, boundary_blur_sigma=0)
    same = corrupt_maps(clean, none, image_id=1)
    np.testing.assert_array_equal(same.semantic, clean.semantic)
    np.testing.assert_array_equal(same.boundary_high, clean.boundary_high)
    gone = corrupt_maps(clean, CorruptionConfig(boundary_drop=1.0), image_id=1)
    assert not gone.boundary_high.any() and not gone.boundary_low.any()
    with pytest.raises(P2MInputError, match="boundary_drop"):
        load_config(None, ["ablation.corruption.boundary_drop=1.5"])


def test_downsample_then_upsample_keeps_every_block_centre():
    ids = _random_ids(np.random.default_rng(6), 37, 22)
    for stride in (1, 2, 4, 5):
        small = downsample_ids(ids, stride)
        assert small.shape == (-(-37 // stride), -(-22 // stride))
        back = upsample_nearest(small, stride, 37, 22)
        ys = np.minimum(np.arange(small.shape[0]) * stride + stride // 2, 36)
        xs = np.minimum(np.arange(small.shape[1]) * stride + stride // 2, 21)
        np.testing.assert_array_equal(back[np.ix_(ys, xs)], ids[np.ix_(ys, xs)])


def test_checkpoint_source_needs_its_file_and_leaves_the_network_maps_pending(tmp_path):
    with pytest.raises(P2MInputError, match=r"ablation.checkpoint.*not found: .*m\.pt"):
        build_image_maps(source("checkpoint", checkpoint=str(tmp_path / "m.pt")), np.ones((4, 4), int), {1: 0}, 1)
    (tmp_path / "m.pt").write_bytes(b"")  # existence is all the config-level check reads
    edges = np.full((4, 4), 0.5, dtype=np.float32)
    maps = build_image_maps(source("checkpoint", checkpoint=str(tmp_path / "m.pt")), np.ones((4, 4), int), {1: 0}, 1, edges=edges)
    assert maps.semantic.shape == (0, 4, 4) and maps.boundary_high is None
    np.testing.assert_array_equal(maps.boundary_low, edges)


def test_oracle_boundary_low_options():
    ids = _random_ids(np.random.default_rng(8))
    edges = np.full(ids.shape, 0.5, np.float32)
    none = build_image_maps(source("oracle", oracle_boundary_low="none"), ids, {1: 0, 2: 1, 3: 2}, 3)
    assert none.boundary_low is None and none.boundary_high is not None
    from_edges = build_image_maps(source("oracle", oracle_boundary_low="edges"), ids, {1: 0, 2: 1, 3: 2}, 3, edges=edges)
    np.testing.assert_array_equal(from_edges.boundary_low, edges)
