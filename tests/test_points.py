"""Point labels: one uniform point per non-crowd segment, deterministic, safe file format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import p2m_core.io
from p2m_core.data.panoptic_format import CocoPanoptic, Segment, id2rgb
from p2m_core.data.points import (
    POINTS_FORMAT,
    image_rng,
    load_points,
    sample_points,
    sample_points_for_image,
    write_points,
)
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from p2m_core.io import atomic_write_json, atomic_write_png

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 10, "name": "grass", "isthing": 0},
]


def write_dataset(root: Path, images: list[tuple[object, np.ndarray, list[dict]]]) -> Path:
    """A hand-made COCO panoptic dataset: (image_id, id map, segments_info) per image."""
    json_images, annotations = [], []
    for image_id, ids, segments in images:
        name = f"img_{image_id}.png"
        atomic_write_png(root / "panoptic" / name, id2rgb(ids))
        json_images.append({"id": image_id, "file_name": name, "height": ids.shape[0], "width": ids.shape[1]})
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
    path = root / "panoptic.json"
    atomic_write_json(path, {"images": json_images, "annotations": annotations, "categories": CATEGORIES})
    return path


def open_dataset(json_path: Path) -> CocoPanoptic:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader's own warning about empty images
        return CocoPanoptic(json_path, png_dir=json_path.parent / "panoptic")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> CocoPanoptic:
    paths = generate_synthetic(tmp_path_factory.mktemp("syn"), 6, 0, 64, 0, progress=False)
    return CocoPanoptic(paths["train_json"], png_dir=paths["train_panoptic"])


@pytest.fixture()
def crowd_dataset(tmp_path) -> Path:
    ids = np.full((12, 16), 30, np.int64)  # grass everywhere ...
    ids[2:6, 2:7] = 11  # ... a person,
    ids[6:10, 9:15] = 12  # a car,
    ids[0:3, 10:16] = 40  # and a crowd of people.
    segments = [
        {"id": 30, "category_id": 10, "iscrowd": 0},
        {"id": 11, "category_id": 1, "iscrowd": 0},
        {"id": 12, "category_id": 2, "iscrowd": 0},
        {"id": 40, "category_id": 1, "iscrowd": 1},
    ]
    return write_dataset(tmp_path, [(5, ids, segments)])


def check_points_against_dataset(points: dict, ds: CocoPanoptic) -> int:
    """Every point inside its segment, one per non-crowd segment; returns the point count."""
    assert points["format"] == POINTS_FORMAT
    assert [image["image_id"] for image in points["images"]] == [r.image_id for r in ds.records]
    count = 0
    for image, record in zip(points["images"], ds.records):
        ids = ds.load_segment_ids(record)
        assert (image["height"], image["width"]) == ids.shape
        assert image["file_name"] == record.png_path.name
        by_id = {s.id: s for s in record.segments}
        got = [p["segment_id"] for p in image["points"]]
        assert sorted(got) == sorted(s.id for s in record.segments if not s.iscrowd)
        for p in image["points"]:
            assert ids[p["y"], p["x"]] == p["segment_id"]
            assert p["category_id"] == by_id[p["segment_id"]].category_id
            assert p["isthing"] == ds.categories[p["category_id"]].isthing
        count += len(got)
    return count


def test_points_lie_in_their_segments_on_synthetic_data(synthetic):
    points = sample_points(synthetic, seed=0)
    assert check_points_against_dataset(points, synthetic) == sum(len(r.segments) for r in synthetic.records)


def test_points_lie_in_their_segments_on_real_coco(coco_sample):
    ds = CocoPanoptic(coco_sample / "panoptic.json", image_dir=coco_sample / "images", png_dir=coco_sample / "panoptic")
    crowd = sum(s.iscrowd for r in ds.records for s in r.segments)
    assert crowd > 0  # the sample has crowd segments, so skipping them is exercised here too
    for seed in (0, 1):
        points = sample_points(ds, seed=seed)
        total = check_points_against_dataset(points, ds)
        assert total == sum(len(r.segments) for r in ds.records) - crowd


def test_crowd_segments_get_no_point(crowd_dataset):
    ds = open_dataset(crowd_dataset)
    points = sample_points(ds, seed=3)
    (image,) = points["images"]
    assert sorted(p["segment_id"] for p in image["points"]) == [11, 12, 30]
    assert {p["segment_id"]: p["isthing"] for p in image["points"]} == {11: True, 12: True, 30: False}
    check_points_against_dataset(points, ds)


def test_same_seed_same_points_other_seed_other_points(synthetic):
    a, b = sample_points(synthetic, seed=4), sample_points(synthetic, seed=4)
    assert a == b
    c = sample_points(synthetic, seed=5)
    assert c["images"] != a["images"]
    assert c["seed"] == 5 and a["seed"] == 4


def test_points_of_an_image_do_not_depend_on_the_other_images(synthetic, tmp_path):
    raw = json.loads(synthetic.json_path.read_text())
    raw["annotations"] = raw["annotations"][::-1][:3]  # other order, fewer images
    subset_json = tmp_path / "subset.json"
    subset_json.write_text(json.dumps(raw))
    subset = CocoPanoptic(subset_json, png_dir=synthetic.png_dir)
    full = {image["image_id"]: image for image in sample_points(synthetic, seed=9)["images"]}
    part = sample_points(subset, seed=9)["images"]
    assert len(part) == 3
    for image in part:
        assert image == full[image["image_id"]]


def test_image_rng_is_stable_across_processes():
    code = "from p2m_core.data.points import image_rng; print(image_rng(3, 'abc').integers(0, 2**31, 4).tolist())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1
    assert runs.pop().strip() == str(image_rng(3, "abc").integers(0, 2**31, 4).tolist())
    assert image_rng(3, 7).integers(0, 2**31) != image_rng(3, 8).integers(0, 2**31)


def test_sampling_is_uniform_over_each_segment():
    # Two regions of an 8x8 image: an irregular 13-pixel blob and the rest (51 pixels).
    ids = np.full((8, 8), 2, np.int64)
    blob = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 2), (3, 2), (3, 3), (4, 3), (5, 3), (5, 4), (7, 7), (6, 7)]
    for y, x in blob:
        ids[y, x] = 1
    segments = [Segment(1, 1, False), Segment(2, 10, False)]
    draws = 2600
    hits = {1: np.zeros(64, int), 2: np.zeros(64, int)}
    for seed in range(draws):
        for p in sample_points_for_image(ids, segments, image_rng(seed, "two-regions")):
            hits[p["segment_id"]][p["y"] * 8 + p["x"]] += 1
    for sid in (1, 2):
        inside = ids.ravel() == sid
        assert hits[sid][~inside].sum() == 0
        observed = hits[sid][inside]
        assert observed.sum() == draws
        # Under uniform sampling the counts are multinomial with equal cells.
        assert stats.chisquare(observed).pvalue > 1e-3, observed


def test_points_without_categories_omit_isthing_and_keep_segment_order():
    ids = np.array([[1, 1, 2], [3, 3, 2]])
    segments = [Segment(3, 10, False), Segment(1, 1, False), Segment(2, 2, True)]
    points = sample_points_for_image(ids, segments, np.random.default_rng(0))
    assert [p["segment_id"] for p in points] == [3, 1]
    assert all("isthing" not in p for p in points)


def test_listed_segment_missing_from_the_map_is_an_error():
    ids = np.array([[1, 1], [1, 1]])
    with pytest.raises(P2MInputError, match=r"\[7\]"):
        sample_points_for_image(ids, [Segment(1, 1, False), Segment(7, 1, False)], np.random.default_rng(0))


def test_segment_listed_in_json_but_absent_from_png_fails_naming_the_png(tmp_path):
    ids = np.full((4, 4), 30, np.int64)
    json_path = write_dataset(
        tmp_path, [(1, ids, [{"id": 30, "category_id": 10, "iscrowd": 0}, {"id": 31, "category_id": 1, "iscrowd": 0}])]
    )
    with pytest.raises(P2MInputError, match="img_1.png"):
        sample_points(open_dataset(json_path), seed=0)


def test_image_without_segments_warns_and_has_no_points(tmp_path):
    full = np.full((6, 6), 30, np.int64)
    json_path = write_dataset(
        tmp_path,
        [(1, full, [{"id": 30, "category_id": 10, "iscrowd": 0}]), ("empty-one", np.zeros((6, 6), np.int64), [])],
    )
    ds = open_dataset(json_path)
    with pytest.warns(UserWarning, match="empty-one"):
        points = sample_points(ds, seed=0)
    assert points["images"][1]["points"] == [] and len(points["images"][0]["points"]) == 1
    write_points(points, tmp_path / "points.json")
    assert load_points(tmp_path / "points.json") == points


def test_write_then_load_round_trips(synthetic, tmp_path):
    points = sample_points(synthetic, seed=1)
    path = write_points(points, tmp_path / "sub" / "points.json")
    assert load_points(path) == points


def _valid_points() -> dict:
    return {
        "format": POINTS_FORMAT,
        "seed": 0,
        "panoptic_json": "x.json",
        "images": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "height": 4,
                "width": 5,
                "points": [{"segment_id": 3, "category_id": 1, "isthing": True, "y": 3, "x": 4}],
            }
        ],
    }


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(format="p2m-points/0"), "format"),
        (lambda d: d.pop("images"), "images"),
        (lambda d: d["images"][0].pop("points"), "points"),
        (lambda d: d["images"][0].update(height=0), "height"),
        (lambda d: d["images"][0]["points"][0].update(y=4), "'y'"),
        (lambda d: d["images"][0]["points"][0].update(x=-1), "'x'"),
        (lambda d: d["images"][0]["points"][0].update(isthing=1), "isthing"),
        (lambda d: d["images"][0]["points"][0].pop("segment_id"), "segment_id"),
        (lambda d: d["images"][0]["points"].append(dict(d["images"][0]["points"][0])), "segment_id"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image_id"),
    ],
)
def test_load_points_rejects_malformed_files_naming_file_and_field(tmp_path, mutate, field):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_valid_points()))
    assert load_points(good) == _valid_points()
    bad_points = _valid_points()
    mutate(bad_points)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_points))
    with pytest.raises(P2MInputError) as info:
        load_points(bad)
    assert str(bad) in str(info.value) and field in str(info.value)


def test_load_points_rejects_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"format": ')
    with pytest.raises(P2MInputError, match="broken.json"):
        load_points(bad)
    with pytest.raises(P2MInputError, match="not found"):
        load_points(tmp_path / "absent.json")


def test_write_points_refuses_an_invalid_structure(tmp_path):
    points = _valid_points()
    points["images"][0]["points"][0]["y"] = 99
    with pytest.raises(P2MInputError, match="'y'"):
        write_points(points, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


def _fail_encoding(monkeypatch):
    real = json.JSONEncoder.iterencode

    def iterencode(self, o, _one_shot=False):
        for i, chunk in enumerate(real(self, o, _one_shot=False)):
            if i == 20:
                raise KeyboardInterrupt("interrupted while encoding")
            yield chunk

    monkeypatch.setattr(json.JSONEncoder, "iterencode", iterencode)


def _fail_after_writing(monkeypatch):
    def fsync(fd):
        raise KeyboardInterrupt("interrupted after the bytes were written")

    monkeypatch.setattr(p2m_core.io.os, "fsync", fsync)


@pytest.mark.parametrize("interrupt", [_fail_encoding, _fail_after_writing])
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(synthetic, tmp_path, monkeypatch, interrupt):
    path = tmp_path / "points.json"
    old = sample_points(synthetic, seed=0)
    write_points(old, path)
    before = path.read_bytes()
    interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_points(sample_points(synthetic, seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["points.json"]
    assert load_points(path) == old


def test_cli_end_to_end(synthetic, tmp_path):
    out = tmp_path / "points.json"
    cmd = [
        sys.executable, "-m", "p2m_core.data.points",
        "--panoptic-json", str(synthetic.json_path), "--panoptic-dir", str(synthetic.png_dir),
        "--out", str(out), "--seed", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6/6" in result.stderr
    points = load_points(out)
    assert points == sample_points(synthetic, seed=2)


def test_cli_reports_bad_input_with_exit_2(tmp_path):
    cmd = [
        sys.executable, "-m", "p2m_core.data.points",
        "--panoptic-json", str(tmp_path / "missing.json"), "--panoptic-dir", str(tmp_path), "--out", str(tmp_path / "p.json"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "missing.json" in result.stderr
    assert not (tmp_path / "p.json").exists()
