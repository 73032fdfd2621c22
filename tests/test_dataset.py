"""Point-safe transforms, PointPanopticDataset and collate_points.

Synthetic samples are built here with numpy (random rectangles on a stuff background, plus
one-pixel lines that resizing can thin out or erase); the real COCO sample checks the same
invariants on real masks.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from p2m_core.config import load_config
from p2m_core.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PointPanopticDataset,
    collate_points,
)
from p2m_core.data.panoptic_format import CocoPanoptic, id2rgb
from p2m_core.data.points import sample_points
from p2m_core.data.transforms import Compose, RandomCrop, RandomFlip, ResizeShortestEdge
from p2m_core.errors import P2MInputError


# --------------------------------------------------------------------------- synthetic data
def random_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W] segment ids: a background (id 1), rectangles, and 1-pixel lines, maybe some void."""
    gt = np.ones((height, width), dtype=np.int64)
    next_id = 2
    for _ in range(int(rng.integers(1, 6))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        y1, x1 = int(rng.integers(y0 + 1, height + 1)), int(rng.integers(x0 + 1, width + 1))
        gt[y0:y1, x0:x1] = next_id
        next_id += 1
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.5:
            gt[int(rng.integers(0, height)), :] = next_id
        else:
            gt[:, int(rng.integers(0, width))] = next_id
        next_id += 1
    if rng.random() < 0.3:
        gt[int(rng.integers(0, height)), : width // 2] = 0  # void
    return gt


def sample_from_layout(rng: np.random.Generator, gt: np.ndarray) -> dict:
    """A transform sample with one uniformly drawn point per segment of ``gt``."""
    ids = [int(i) for i in np.unique(gt) if i != 0]
    points, labels, things = [], [], []
    for sid in ids:
        ys, xs = np.nonzero(gt == sid)
        k = int(rng.integers(0, len(ys)))
        points.append((ys[k], xs[k]))
        labels.append(sid % 3)
        things.append(sid != 1)
    colours = rng.integers(0, 256, size=(int(gt.max()) + 1, 3))
    return {
        "image": colours[gt].astype(np.uint8),
        "segment_ids": gt,
        "points_yx": np.array(points, dtype=np.int64).reshape(-1, 2),
        "point_labels": np.array(labels, dtype=np.int64),
        "point_is_thing": np.array(things, dtype=bool),
        "point_segment_ids": np.array(ids, dtype=np.int64),
    }


def assert_points_on_own_segments(sample: dict) -> None:
    gt = np.asarray(sample["segment_ids"])
    yx = np.asarray(sample["points_yx"])
    m = len(yx)
    assert all(len(np.asarray(sample[k])) == m for k in ("point_labels", "point_is_thing", "point_segment_ids"))
    assert np.asarray(sample["image"]).shape[:2] == gt.shape
    if m:
        assert (yx >= 0).all() and (yx[:, 0] < gt.shape[0]).all() and (yx[:, 1] < gt.shape[1]).all()
        assert (gt[yx[:, 0], yx[:, 1]] == np.asarray(sample["point_segment_ids"])).all()


def write_panoptic(root: Path, split: str, layouts: list[np.ndarray], seed: int = 0) -> CocoPanoptic:
    """A COCO-panoptic dataset in COCO's layout under ``root``: 2 thing classes + 1 stuff."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": 7, "name": "sky", "isthing": 0},
        {"id": 3, "name": "cat", "isthing": 1},
        {"id": 5, "name": "dog", "isthing": 1},
    ]
    images, annotations = [], []
    for index, gt in enumerate(layouts):
        name = f"{index:04d}"
        colours = rng.integers(0, 256, size=(int(gt.max()) + 1, 3)).astype(np.uint8)
        Image.fromarray(colours[gt]).save(root / "images" / split / f"{name}.png")
        Image.fromarray(id2rgb(gt)).save(root / f"panoptic_{split}" / f"{name}.png")
        segments = [
            {"id": int(s), "category_id": 7 if s == 1 else (3 if s % 2 else 5), "iscrowd": 0}
            for s in np.unique(gt)
            if s != 0
        ]
        images.append({"id": index + 100, "file_name": f"{name}.png", "height": gt.shape[0], "width": gt.shape[1]})
        annotations.append({"image_id": index + 100, "file_name": f"{name}.png", "segments_info": segments})
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / f"panoptic_{split}.json").write_text(json.dumps(doc))
    return CocoPanoptic(root / f"panoptic_{split}.json", image_dir=root / "images" / split)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> CocoPanoptic:
    rng = np.random.default_rng(3)
    sizes = [(40, 56), (48, 48), (33, 70), (64, 40), (50, 50), (45, 60)]
    root = tmp_path_factory.mktemp("synthetic")
    return write_panoptic(root, "train", [random_layout(rng, h, w) for h, w in sizes])


@pytest.fixture(scope="module")
def coco(coco_sample: Path) -> CocoPanoptic:
    return CocoPanoptic(
        coco_sample / "panoptic.json", image_dir=coco_sample / "images", png_dir=coco_sample / "panoptic"
    )


def train_chain(crop: int = 48) -> Compose:
    return Compose([ResizeShortestEdge(40, 72), RandomFlip(0.5), RandomCrop(crop, crop)])


# --------------------------------------------------------------------------- transforms
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(6, 60),
    width=st.integers(6, 60),
    min_size=st.integers(3, 50),
    extra=st.integers(0, 40),
    crop=st.tuples(st.integers(2, 64), st.integers(2, 64)),
    flip=st.sampled_from([0.0, 0.5, 1.0]),
    order=st.permutations([0, 1, 2]),
)
def test_points_stay_on_their_segment_under_any_chain(seed, height, width, min_size, extra, crop, flip, order):
    rng = np.random.default_rng(seed)
    sample = sample_from_layout(rng, random_layout(rng, height, width))
    steps = [ResizeShortestEdge(min_size, min_size + extra), RandomFlip(flip), RandomCrop(*crop)]
    out = Compose([steps[i] for i in order] + [ResizeShortestEdge(min_size, min_size + extra)])(sample, rng)
    assert_points_on_own_segments(out)
    assert_points_on_own_segments(sample)  # the input sample is left untouched


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(2, 80))
def test_resize_drops_a_point_only_when_its_segment_vanished(seed, size):
    rng = np.random.default_rng(seed)
    sample = sample_from_layout(rng, random_layout(rng, int(rng.integers(8, 64)), int(rng.integers(8, 64))))
    out = ResizeShortestEdge(size, size)(sample, rng)
    surviving = set(np.unique(out["segment_ids"]).tolist())
    expected_kept = [s for s in sample["point_segment_ids"].tolist() if s in surviving]
    assert out["point_segment_ids"].tolist() == expected_kept
    height, width = out["image"].shape[:2]
    assert min(height, width) == size or max(height, width) == ResizeShortestEdge(size, size).max_long_side


def test_resize_output_size_and_long_side_cap():
    rng = np.random.default_rng(0)
    gt = np.ones((50, 200), dtype=np.int64)
    sample = sample_from_layout(rng, gt)
    out = ResizeShortestEdge(100, 100, max_long_side=300)(sample, rng)
    assert out["image"].shape == (75, 300, 3)  # 2x would make the long side 400 > 300
    # default cap: ceil(30 * 1333 / 800) = 50, so the 1:4 image is limited by its long side
    assert ResizeShortestEdge(20, 30)(sample, rng)["image"].shape == (12, 50, 3)
    square = sample_from_layout(rng, np.ones((64, 64), dtype=np.int64))
    sizes = {ResizeShortestEdge(20, 30)(square, np.random.default_rng(s))["image"].shape[0] for s in range(40)}
    assert sizes <= set(range(20, 31)) and len(sizes) > 3


def test_resize_snaps_a_point_whose_pixel_was_resampled_away():
    gt = np.ones((40, 40), dtype=np.int64)
    gt[10, 4] = 2  # a lone pixel on an even column: nearest-neighbour 2x downsampling keeps odd ones
    gt[20:31, 9] = 2  # the rest of segment 2, a vertical line on an odd column
    gt[30, 30] = 3  # a lone pixel on an even column: vanishes
    sample = {
        "image": np.zeros((40, 40, 3), np.uint8),
        "segment_ids": gt,
        "points_yx": np.array([[10, 4], [30, 30], [0, 0]]),
        "point_labels": np.array([0, 1, 2]),
        "point_is_thing": np.array([True, True, False]),
        "point_segment_ids": np.array([2, 3, 1]),
    }
    out = ResizeShortestEdge(20, 20)(sample, np.random.default_rng(0))
    # (10, 4) maps to (5, 2), which samples source (11, 5): background. The nearest pixel of
    # segment 2 after resizing is the top of the line, source rows 21..29 -> rows 10..14, column 4.
    assert out["point_segment_ids"].tolist() == [2, 1]
    assert out["points_yx"].tolist() == [[10, 4], [0, 0]]
    assert out["point_labels"].tolist() == [0, 2]


def test_flip_mirrors_points_and_pixels_exactly():
    rng = np.random.default_rng(1)
    gt = np.arange(1, 13 * 17 + 1, dtype=np.int64).reshape(13, 17)  # every pixel its own segment
    sample = sample_from_layout(rng, gt)
    out = RandomFlip(1.0)(sample, rng)
    assert np.array_equal(out["image"], sample["image"][:, ::-1])
    assert np.array_equal(out["points_yx"][:, 0], sample["points_yx"][:, 0])
    assert np.array_equal(out["points_yx"][:, 1], 16 - sample["points_yx"][:, 1])
    assert_points_on_own_segments(out)
    same = RandomFlip(0.0)(sample, rng)
    assert np.array_equal(same["points_yx"], sample["points_yx"])
    flips = [RandomFlip(0.5)(sample, np.random.default_rng(s))["points_yx"][0, 1] for s in range(60)]
    assert 10 < sum(f != sample["points_yx"][0, 1] for f in flips) < 50


@pytest.mark.parametrize("seed", range(8))
def test_crop_drops_points_outside_the_window_and_never_moves_them(seed):
    rng = np.random.default_rng(seed)
    height, width = 30, 41
    gt = np.arange(1, height * width + 1, dtype=np.int64).reshape(height, width)  # id = pixel index + 1
    sample = sample_from_layout(rng, gt)
    out = RandomCrop(12, 20)(sample, rng)
    assert out["image"].shape == (12, 20, 3)
    top, left = divmod(int(out["segment_ids"][0, 0]) - 1, width)  # the window's position
    yx = sample["points_yx"]
    inside = (yx[:, 0] >= top) & (yx[:, 0] < top + 12) & (yx[:, 1] >= left) & (yx[:, 1] < left + 20)
    assert 0 < inside.sum() < len(yx)
    assert np.array_equal(out["point_segment_ids"], sample["point_segment_ids"][inside])
    assert np.array_equal(out["points_yx"], yx[inside] - [top, left])
    assert np.array_equal(out["image"], sample["image"][top : top + 12, left : left + 20])


def test_crop_larger_than_image_keeps_everything():
    rng = np.random.default_rng(0)
    sample = sample_from_layout(rng, random_layout(rng, 10, 12))
    out = RandomCrop(64, 64)(sample, rng)
    assert out["image"].shape == (10, 12, 3)
    assert np.array_equal(out["points_yx"], sample["points_yx"])


# --------------------------------------------------------------------------- dataset
def test_dataset_on_real_coco_sample(coco):
    points = sample_points(coco, seed=0)
    ds = PointPanopticDataset(coco, points, train_chain(crop=160), seed=0, with_gt=True)
    contiguous = coco.contiguous_ids()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            image, gt = item["image"], item["segment_ids"]
            assert image.dtype == torch.float32 and image.shape[0] == 3 and image.shape[1:] == gt.shape
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert max(gt.shape) <= 160 and item["orig_size"] == (coco[index].height, coco[index].width)
            assert item["image_id"] == coco[index].image_id
            yx, sids = item["points_yx"], item["point_segment_ids"]
            assert yx.dtype == torch.int64 and item["point_labels"].dtype == torch.int64
            assert item["point_is_thing"].dtype == torch.bool and len(yx) > 0
            assert torch.equal(gt[yx[:, 0], yx[:, 1]], sids)
            segments = {s.id: s for s in coco[index].segments}
            for sid, label, thing in zip(sids.tolist(), item["point_labels"].tolist(), item["point_is_thing"].tolist()):
                cid = segments[sid].category_id
                assert label == contiguous[cid] and thing == coco.categories[cid].isthing
            present = set(torch.unique(gt).tolist()) - {0}
            assert {s["id"] for s in item["segments"]} == present
            for s in item["segments"]:
                assert s["area"] == int((gt == s["id"]).sum()) and s["label"] == contiguous[s["category_id"]]


def test_without_transforms_points_are_the_file_points(coco):
    points = sample_points(coco, seed=4)
    ds = PointPanopticDataset(coco, points)
    for index, entry in enumerate(points["images"]):
        item = ds[index]
        assert "segment_ids" not in item and "segments" not in item
        assert item["points_yx"].tolist() == [[p["y"], p["x"]] for p in entry["points"]]
        assert item["point_segment_ids"].tolist() == [p["segment_id"] for p in entry["points"]]
        assert item["image"].shape[1:] == (entry["height"], entry["width"])


def test_normalize_uses_imagenet_statistics(coco):
    points = sample_points(coco, seed=0)
    plain = PointPanopticDataset(coco, points)[0]["image"]
    normed = PointPanopticDataset(coco, points, normalize=True)[0]["image"]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(normed * std + mean, plain, atol=1e-6)


def test_items_depend_only_on_seed_epoch_and_index(synthetic):
    points = sample_points(synthetic, seed=0)
    ds = PointPanopticDataset(synthetic, points, train_chain(crop=32), seed=11, with_gt=True)
    first = [ds[i] for i in range(len(ds))]
    backwards = [ds[i] for i in reversed(range(len(ds)))][::-1]
    fresh = PointPanopticDataset(synthetic, points, train_chain(crop=32), seed=11, with_gt=True)
    for a, b, c in zip(first, backwards, [fresh[i] for i in range(len(fresh))]):
        for key in ("image", "points_yx", "segment_ids"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    ds.set_epoch(1)
    changed = sum(not torch.equal(first[i]["segment_ids"], ds[i]["segment_ids"]) for i in range(len(ds)))
    assert changed >= len(ds) - 1
    ds.set_epoch(0)
    assert torch.equal(ds[2]["image"], first[2]["image"])
    other_seed = PointPanopticDataset(synthetic, points, train_chain(crop=32), seed=12, with_gt=True)
    assert sum(not torch.equal(first[i]["segment_ids"], other_seed[i]["segment_ids"]) for i in range(len(ds))) >= 4


def test_dataloader_batches_do_not_depend_on_num_workers(synthetic):
    points = sample_points(synthetic, seed=0)
    ds = PointPanopticDataset(synthetic, points, train_chain(crop=40), seed=5, with_gt=True)
    collate = functools.partial(collate_points, size_divisor=16)
    batches = {}
    for workers in (0, 2):
        ds.set_epoch(3)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 2
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["segment_ids"], b["segment_ids"])
        assert a["image_ids"] == b["image_ids"] and a["image_sizes"] == b["image_sizes"]
        assert all(torch.equal(x, y) for x, y in zip(a["points_yx"], b["points_yx"]))


def test_collate_pads_to_the_divisor_and_keeps_point_lists(synthetic):
    points = sample_points(synthetic, seed=0)
    ds = PointPanopticDataset(synthetic, points, seed=0, with_gt=True)
    items = [ds[i] for i in (0, 2, 3)]  # 40x56, 33x70, 64x40
    batch = collate_points(items, size_divisor=32)
    assert batch["images"].shape == (3, 3, 64, 96)
    assert batch["segment_ids"].shape == (3, 64, 96)
    assert batch["image_sizes"] == [(40, 56), (33, 70), (64, 40)]
    for i, (item, (h, w)) in enumerate(zip(items, batch["image_sizes"])):
        assert torch.equal(batch["images"][i, :, :h, :w], item["image"])
        assert batch["images"][i, :, h:].abs().sum() == 0 and batch["images"][i, :, :, w:].abs().sum() == 0
        assert not batch["padding_mask"][i, :h, :w].any()
        assert int(batch["padding_mask"][i].sum()) == 64 * 96 - h * w
        assert torch.equal(batch["segment_ids"][i, :h, :w], item["segment_ids"])
        assert int((batch["segment_ids"][i] != 0).sum()) == int((item["segment_ids"] != 0).sum())
        for key in ("points_yx", "point_labels", "point_is_thing", "point_segment_ids"):
            assert torch.equal(batch[key][i], item[key])
        assert batch["segments"][i] == item["segments"]
    assert collate_points(items[:1], size_divisor=1)["images"].shape == (1, 3, 40, 56)


def test_decoded_samples_are_kept_read_only_and_items_are_copies(synthetic):
    points = sample_points(synthetic, seed=0)
    ds = PointPanopticDataset(synthetic, points, seed=0, with_gt=True)
    first = ds[0]
    assert len(ds._samples) == 1 and not ds._samples[0][0].flags.writeable
    first["segment_ids"].fill_(-1)
    first["image"].fill_(-1)
    again = ds[0]
    assert int(again["segment_ids"].min()) >= 0 and float(again["image"].min()) >= 0
    assert torch.equal(again["segment_ids"], torch.from_numpy(synthetic.load_segment_ids(synthetic[0])))


def test_edge_maps_are_those_of_the_transformed_image_and_cached(synthetic):
    from p2m_core.model.task_maps import low_level_edges

    points = sample_points(synthetic, seed=0)
    ds = PointPanopticDataset(synthetic, points, train_chain(crop=40), seed=5, edges=True)
    plain = PointPanopticDataset(synthetic, points, train_chain(crop=40), seed=5)
    items = [ds[i] for i in range(4)]
    batch = collate_points(items, size_divisor=16)
    assert "edges" not in plain[0] and "edges" not in collate_points([plain[0]])
    # what the training step computed from the batch before the dataset did it
    expected = low_level_edges({k: v for k, v in batch.items() if k != "edges"})
    assert batch["edges"].shape == batch["padding_mask"].shape and torch.equal(batch["edges"], expected)
    assert ds.edges.misses == 4 and ds.edges.hits == 0
    again = ds[1]
    assert ds.edges.hits == 1 and torch.equal(again["edges"], items[1]["edges"])
    again["edges"].fill_(7.0)  # items get copies: the cache is not modified through them
    assert torch.equal(ds[1]["edges"], items[1]["edges"])
    ds.edges.max_bytes = 0  # keeps only the latest map
    ds.set_epoch(1)  # other crops: other images
    ds[0]
    assert ds.edges.misses == 5 and len(ds.edges._maps) == 1


def test_from_config_samples_points_on_the_fly_and_applies_the_crop(synthetic, tmp_path):
    root = synthetic.json_path.parent
    cfg = load_config(
        None,
        # a partial --set of data.train resets its other fields, so all four are given
        [
            f"data.root={root}",
            "data.train={json: panoptic_train.json, images: images/train, panoptic: panoptic_train, points: ''}",
            "data.train_short_side=[36, 48]",
            "data.crop_size=[24, 30]",
        ],
    )
    ds = PointPanopticDataset.from_config(cfg, "train")
    assert len(ds) == len(synthetic) and not ds.with_gt
    assert ds.edges is not None and ds.edges.model_path == ""  # pseudo.maps lists boundary_low
    no_low = load_config(None, [f"data.root={root}", "data.train.points=", "pseudo.maps=[semantic, boundary_high]"])
    assert PointPanopticDataset.from_config(no_low, "train").edges is None
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape[1] <= 24 and item["image"].shape[2] <= 30
    with_gt = PointPanopticDataset.from_config(cfg, "train", with_gt=True)
    for i in range(len(with_gt)):
        item = with_gt[i]
        yx = item["points_yx"]
        assert torch.equal(item["segment_ids"][yx[:, 0], yx[:, 1]], item["point_segment_ids"])
    with pytest.raises(P2MInputError, match="points_train.json"):
        PointPanopticDataset.from_config(load_config(None, [f"data.root={root}"]), "train")
    with pytest.raises(P2MInputError, match="split"):
        PointPanopticDataset.from_config(cfg, "holdout")


def test_points_that_do_not_match_the_dataset_are_errors(synthetic):
    points = sample_points(synthetic, seed=0)
    missing = dict(points, images=points["images"][1:])
    with pytest.raises(P2MInputError, match="no points for image id 100"):
        PointPanopticDataset(synthetic, missing)
    moved = json.loads(json.dumps(points))
    entry = moved["images"][0]
    first = entry["points"][0]
    ids = synthetic.load_segment_ids(synthetic[0])
    ys, xs = np.nonzero(ids != first["segment_id"])
    first["y"], first["x"] = int(ys[0]), int(xs[0])
    with pytest.raises(P2MInputError, match=f"not on its segment {first['segment_id']}"):
        PointPanopticDataset(synthetic, moved)[0]
    wrong_class = json.loads(json.dumps(points))
    wrong_class["images"][0]["points"][0]["category_id"] = 999
    with pytest.raises(P2MInputError, match="category_id 999"):
        PointPanopticDataset(synthetic, wrong_class)
