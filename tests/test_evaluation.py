"""Panoptic quality equals panopticapi's; writer, mIoU and CLI behave.

The oracle is ``panopticapi.evaluation`` itself (the COCO panoptic API): every PQ result is
compared with it to 1e-9 on real COCO ground truth, on the synthetic dataset when its generator
is installed, and on random panoptic images built here (stuff bands, thing rectangles and
ellipses, a crowd region, void pixels, one JSON area that disagrees with the PNG). Calls of
panopticapi's ``pq_compute`` start a process pool, so each prediction case is one call over
several images; the fuzz test uses its single-process function directly.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from panopticapi import evaluation as panopticapi_eval

from p2m_core.data.panoptic_format import id2rgb
from p2m_core.errors import P2MInputError
from p2m_core.evaluation import (
    PanopticPredictionWriter,
    PQAccumulator,
    SemanticIoU,
    panoptic_to_semantic,
    pq_compute,
    read_panoptic_png,
    segments_from_labels,
    segments_from_semantic_instance,
)
from p2m_core.evaluation.__main__ import main as cli_main
from p2m_core.io import atomic_write_json, atomic_write_png

TOL = 1e-9
THINGS = [1, 2, 3, 4]  # 4 never occurs: its per_class entry must be zeros
STUFF = [10, 11, 12]
CATEGORIES = [{"id": c, "name": f"thing{c}", "isthing": 1} for c in THINGS] + [
    {"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF
]

Image = tuple[Any, str, np.ndarray, list[dict]]  # (image_id, file_name, ids HxW, segments)


# ----------------------------------------------------------------------------- comparison
def assert_same_pq(ours: dict, theirs: dict, groups=("All", "Things", "Stuff")) -> None:
    for group in groups:
        assert ours[group]["n"] == theirs[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - theirs[group][key]) <= TOL, (group, key, ours[group], theirs[group])
    assert list(ours["per_class"]) == list(theirs["per_class"])
    for cid, row in theirs["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][key] - row[key]) <= TOL, (cid, key)


def panopticapi_pq(gt_json: Path, pred_json: Path, gt_folder=None, pred_folder=None) -> dict:
    return panopticapi_eval.pq_compute(
        str(gt_json), str(pred_json),
        None if gt_folder is None else str(gt_folder), None if pred_folder is None else str(pred_folder),
    )


# ----------------------------------------------------------------------------- data
def random_ids(rng: np.random.Generator, n: int) -> list[int]:
    return [int(v) for v in rng.choice(np.arange(1, 256**3), size=n, replace=False)]


def with_areas(ids: np.ndarray, segments: list[dict]) -> list[dict]:
    """Keep the segments present in ``ids``, with their pixel area (COCO's JSON field)."""
    present, counts = np.unique(ids, return_counts=True)
    area = dict(zip(present.tolist(), counts.tolist()))
    return [dict(s, area=area[s["id"]]) for s in segments if s["id"] in area]


def make_gt_image(rng: np.random.Generator, h: int = 60, w: int = 80) -> tuple[np.ndarray, list[dict]]:
    """Stuff bands, 3-5 things (two of one class side by side), a crowd region and void."""
    labels = np.zeros((h, w), np.int64)
    cats: list[int] = []
    crowd: list[int] = []
    cut = int(rng.integers(h // 4, 3 * h // 4))
    for k, stuff in enumerate(rng.choice(STUFF, size=2, replace=False)):
        rows = slice(0, cut) if k == 0 else slice(cut, h)
        labels[rows] = len(cats) + 1
        cats.append(int(stuff))
        crowd.append(0)
    yy, xx = np.mgrid[0:h, 0:w]
    pair_class = int(rng.choice(THINGS[:3]))
    y0, x0 = int(rng.integers(5, h - 25)), int(rng.integers(5, w - 40))
    for dx in (0, 16):  # two touching instances of one class
        labels[y0 : y0 + 18, x0 + dx : x0 + dx + 16] = len(cats) + 1
        cats.append(pair_class)
        crowd.append(0)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
        ry, rx = rng.uniform(4, 12), rng.uniform(4, 14)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = len(cats) + 1
        cats.append(int(rng.choice(THINGS[:3])))
        crowd.append(0)
    cy, cx = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 12))
    labels[cy : cy + 10, cx : cx + 12] = len(cats) + 1  # crowd region
    cats.append(int(rng.choice(THINGS[:3])))
    crowd.append(1)
    labels[rng.random((h, w)) < 0.03] = 0  # void specks
    vy, vx = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
    labels[vy : vy + 6, vx : vx + 6] = 0  # a void block
    seg_ids = random_ids(rng, len(cats))
    lut = np.array([0] + seg_ids, np.int64)
    ids = lut[labels]
    segments = [{"id": s, "category_id": c, "iscrowd": k} for s, c, k in zip(seg_ids, cats, crowd)]
    return ids, with_areas(ids, segments)


def write_dataset(json_path: Path, images: list[Image], categories=CATEGORIES) -> Path:
    """COCO panoptic JSON + PNG folder (JSON path without ``.json``), GT or prediction."""
    folder = json_path.with_suffix("")
    annotations = []
    for image_id, name, ids, segments in images:
        atomic_write_png(folder / name, id2rgb(ids))
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
    h, w = images[0][2].shape if images else (0, 0)
    atomic_write_json(
        json_path,
        {
            "images": [{"id": i, "file_name": n.replace(".png", ".jpg"), "height": h, "width": w} for i, n, _, _ in images],
            "annotations": annotations,
            "categories": categories,
        },
    )
    return json_path


# ----------------------------------------------------------------------------- perturbations
def relabel_ids(rng, ids, segments):
    """Same partition, fresh random ids (PQ must not depend on id values)."""
    new = random_ids(rng, len(segments))
    lut = {s["id"]: n for s, n in zip(segments, new)}
    out = np.zeros_like(ids)
    for s in segments:
        out[ids == s["id"]] = lut[s["id"]]
    return out, [{"id": lut[s["id"]], "category_id": s["category_id"]} for s in segments]


def pred_perfect(rng, ids, segments):
    return relabel_ids(rng, ids, segments)  # the crowd region is predicted too: must be ignored


def pred_eroded(rng, ids, segments):
    out = np.zeros_like(ids)
    kernel = np.ones((5, 5), np.uint8)
    for s in segments:
        mask = cv2.erode((ids == s["id"]).astype(np.uint8), kernel, iterations=int(rng.integers(1, 3)))
        out[mask > 0] = s["id"]
    return out, [s for s in segments if (out == s["id"]).any()]


def pred_merged(rng, ids, segments):
    """Merge two non-crowd segments of one class into one."""
    out = ids.copy()
    by_class: dict[int, list[dict]] = {}
    for s in segments:
        if not s.get("iscrowd"):
            by_class.setdefault(s["category_id"], []).append(s)
    pair = next(v for v in by_class.values() if len(v) >= 2)
    out[out == pair[1]["id"]] = pair[0]["id"]
    return out, [s for s in segments if s["id"] != pair[1]["id"]]


def pred_split(rng, ids, segments):
    """Split every segment at its median column (the right part gets a new id)."""
    out = ids.copy()
    kept = list(segments)
    fresh = iter(random_ids(rng, 4 * len(segments) + 4))
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        right = xs > np.median(xs)
        if right.any() and not right.all():
            new = next(fresh)
            while new in {t["id"] for t in kept}:
                new = next(fresh)
            out[ys[right], xs[right]] = new
            kept.append({"id": new, "category_id": s["category_id"]})
    return out, kept


def pred_recategorised(rng, ids, segments):
    cats = [c["id"] for c in CATEGORIES]
    return ids.copy(), [
        dict(s, category_id=int(rng.choice(cats))) if rng.random() < 0.5 else s for s in segments
    ]


def pred_shifted(rng, ids, segments):
    return np.roll(ids, (int(rng.integers(2, 6)), -int(rng.integers(2, 9))), axis=(0, 1)), segments


def pred_noise(rng, ids, segments):
    """4x4 blocks set to random segment ids or void, and a new segment over the void block."""
    out = ids.copy()
    h, w = ids.shape
    choices = np.array([0] + [s["id"] for s in segments])
    for by in range(0, h, 4):
        for bx in range(0, w, 4):
            if rng.random() < 0.35:
                out[by : by + 4, bx : bx + 4] = rng.choice(choices)
    return out, [s for s in segments if (out == s["id"]).any()]


def pred_void_and_crowd(rng, ids, segments):
    """Perfect, plus a new stuff segment on GT void and a thing grown over the crowd region."""
    out = ids.copy()
    new = next(i for i in random_ids(rng, len(segments) + 1) if i not in {s["id"] for s in segments})
    out[ids == 0] = new
    kept = list(segments) + [{"id": new, "category_id": STUFF[0]}]
    crowd = next(s for s in segments if s.get("iscrowd"))
    ys, xs = np.nonzero(ids == crowd["id"])
    out[max(ys.min() - 2, 0) : ys.max() + 1, xs.min() : xs.max() + 1] = crowd["id"]
    return out, [s for s in kept if (out == s["id"]).any()]


def pred_empty(rng, ids, segments):
    return np.zeros_like(ids), []


PERTURBATIONS = {
    "perfect": pred_perfect,
    "eroded": pred_eroded,
    "merged": pred_merged,
    "split": pred_split,
    "recategorised": pred_recategorised,
    "shifted": pred_shifted,
    "noise": pred_noise,
    "void_and_crowd": pred_void_and_crowd,
    "empty": pred_empty,
}


def predictions_for(images: list[Image], case: str, seed: int) -> list[Image]:
    rng = np.random.default_rng(seed)
    out = []
    for image_id, name, ids, segments in images:
        pred_ids, pred_segments = PERTURBATIONS[case](rng, ids, segments)
        out.append((image_id, name, pred_ids, [{"id": s["id"], "category_id": s["category_id"]} for s in pred_segments]))
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def random_gt(tmp_path_factory) -> tuple[Path, list[Image]]:
    """Five random GT images; image 0 has a JSON area 9 pixels above its PNG count."""
    rng = np.random.default_rng(1234)
    images = []
    for index in range(5):
        ids, segments = make_gt_image(rng)
        images.append((100 + index, f"img_{index}.png", ids, segments))
    images[0][3][2]["area"] += 9
    root = tmp_path_factory.mktemp("random_gt")
    return write_dataset(root / "panoptic_val.json", images), images


def load_images(json_path: Path, folder: Path) -> list[Image]:
    data = json.loads(json_path.read_text())
    return [
        (a["image_id"], a["file_name"], read_panoptic_png(folder / a["file_name"]).astype(np.int64), a["segments_info"])
        for a in data["annotations"]
    ]


# ----------------------------------------------------------------------------- PQ = panopticapi
@pytest.mark.parametrize("case", list(PERTURBATIONS))
def test_pq_equals_panopticapi_on_random_panoptic_data(random_gt, tmp_path, case):
    gt_json, images = random_gt
    pred_json = write_dataset(tmp_path / "pred.json", predictions_for(images, case, seed=7))
    ours = pq_compute(gt_json, pred_json)
    assert_same_pq(ours, panopticapi_pq(gt_json, pred_json))
    if case == "perfect":
        # The 9-pixel JSON area error is the only imperfection, and it must show.
        assert 0.9 < ours["All"]["sq"] < 1.0 and ours["All"]["rq"] == 1.0
        assert ours["per_class"][4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


@pytest.mark.parametrize("case", ["perfect", "eroded", "merged", "split", "shifted", "noise", "void_and_crowd", "empty"])
def test_pq_equals_panopticapi_on_coco_sample(coco_sample, tmp_path, case):
    gt_json = coco_sample / "panoptic.json"
    images = load_images(gt_json, coco_sample / "panoptic")
    pred_json = write_dataset(tmp_path / "pred.json", predictions_for(images, case, seed=3))
    ours = pq_compute(gt_json, pred_json, gt_folder=coco_sample / "panoptic")
    assert_same_pq(ours, panopticapi_pq(gt_json, pred_json, gt_folder=coco_sample / "panoptic"))
    if case == "perfect":
        assert ours["All"]["pq"] == pytest.approx(1.0) and ours["All"]["n"] > 0


@pytest.mark.skipif(importlib.util.find_spec("p2m_core.data.synthetic") is None, reason="synthetic generator not installed")
@pytest.mark.parametrize("case", ["perfect", "eroded", "noise"])
def test_pq_equals_panopticapi_on_synthetic_dataset(tmp_path_factory, tmp_path, case):
    from p2m_core.data.synthetic import generate_synthetic

    root = tmp_path_factory.getbasetemp() / "synthetic_eval"
    if not (root / "panoptic_val.json").is_file():
        generate_synthetic(root, num_train=0, num_val=4, size=64, seed=5, progress=False)
    gt_json = root / "panoptic_val.json"
    images = load_images(gt_json, root / "panoptic_val")
    # The generator has no crowd segments; the void_and_crowd case needs one, so it is not run here.
    pred_json = write_dataset(tmp_path / "pred.json", predictions_for(images, case, seed=11),
                              categories=json.loads(gt_json.read_text())["categories"])
    assert_same_pq(pq_compute(gt_json, pred_json), panopticapi_pq(gt_json, pred_json))


def test_pq_fuzz_against_panopticapi_single_core(tmp_path):
    """Tiny chaotic images: unlisted GT ids, listed-but-absent GT ids, several crowd segments of
    one class, wrong JSON areas, predictions on void. Compared with panopticapi's own per-image
    function (no process pool), over 40 seeds."""
    categories = {c["id"]: c for c in CATEGORIES}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        h, w = 12, 16
        gt_labels = np.kron(rng.integers(0, 7, size=(3, 4)), np.ones((4, 4), np.int64))
        gt_labels[rng.random((h, w)) < 0.1] = int(rng.integers(0, 7))
        gt_segments = []
        for label in range(1, 8):  # label 7 is listed but never drawn
            if label == 6:
                continue  # label 6 is drawn but not listed: ignored by the evaluation
            cat = int(rng.choice([1, 2, 10, 11]))
            area = int((gt_labels == label).sum()) + int(rng.integers(-2, 3)) * int(rng.random() < 0.3)
            gt_segments.append({"id": label, "category_id": cat, "iscrowd": int(rng.random() < 0.3), "area": area})
        pred_labels = gt_labels.copy()
        pred_labels[rng.random((h, w)) < 0.25] = 0
        pred_labels = np.where(rng.random((h, w)) < 0.15, rng.integers(0, 9, size=(h, w)), pred_labels)
        present = set(np.unique(pred_labels).tolist()) - {0}
        pred_segments = [{"id": int(l), "category_id": int(rng.choice([1, 2, 10, 11]))} for l in sorted(present)]
        gt_json = write_dataset(tmp_path / f"gt{seed}.json", [(1, "a.png", gt_labels, gt_segments)])
        pred_json = write_dataset(tmp_path / f"pred{seed}.json", [(1, "a.png", pred_labels, pred_segments)])
        ours = pq_compute(gt_json, pred_json, num_threads=1)

        gt_ann = json.loads(gt_json.read_text())["annotations"][0]
        pred_ann = json.loads(pred_json.read_text())["annotations"][0]
        stat = panopticapi_eval.pq_compute_single_core(
            0, [(gt_ann, pred_ann)], str(gt_json.with_suffix("")), str(pred_json.with_suffix("")), categories
        )
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            try:
                theirs, per_class = stat.pq_average(categories, isthing=isthing)
            except ZeroDivisionError:
                assert ours[name] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
                continue
            assert_same_pq({name: ours[name], "per_class": {}}, {name: theirs, "per_class": {}}, groups=(name,))
            for cid, row in per_class.items():
                assert ours["per_class"][cid] == pytest.approx(row, abs=TOL), (seed, cid)


def test_pq_with_hundreds_of_segments_equals_panopticapi(tmp_path):
    """More than 254 segments per image: wider segment codes than the common case."""
    rng = np.random.default_rng(8)
    gt_labels = np.kron(np.arange(1, 19 * 19 + 1).reshape(19, 19), np.ones((3, 4), np.int64))
    gt_segments = [{"id": l, "category_id": int(rng.choice([1, 2, 10])), "iscrowd": 0,
                    "area": 12} for l in range(1, 19 * 19 + 1)]
    pred_labels = np.where(rng.random(gt_labels.shape) < 0.3, 0, np.roll(gt_labels, 1, axis=1))
    pred_segments = [{"id": int(l), "category_id": int(rng.choice([1, 2, 10]))} for l in np.unique(pred_labels) if l]
    gt_json = write_dataset(tmp_path / "gt.json", [(1, "a.png", gt_labels, gt_segments)])
    pred_json = write_dataset(tmp_path / "pred.json", [(1, "a.png", pred_labels, pred_segments)])
    categories = {c["id"]: c for c in CATEGORIES}
    stat = panopticapi_eval.pq_compute_single_core(
        0, [(json.loads(gt_json.read_text())["annotations"][0], json.loads(pred_json.read_text())["annotations"][0])],
        str(tmp_path / "gt"), str(tmp_path / "pred"), categories,
    )
    theirs, per_class = stat.pq_average(categories, isthing=None)
    ours = pq_compute(gt_json, pred_json)
    assert_same_pq({"All": ours["All"], "per_class": ours["per_class"]}, {"All": theirs, "per_class": per_class}, groups=("All",))
    assert ours["All"]["n"] == 3


def test_empty_group_returns_zeros_where_panopticapi_divides_by_zero(tmp_path):
    rng = np.random.default_rng(3)
    images = []
    for index in range(2):
        ids, segments = make_gt_image(rng)
        stuff_ids = [s["id"] for s in segments if s["category_id"] in STUFF]
        ids[np.isin(ids, stuff_ids)] = 0
        images.append((index, f"{index}.png", ids, [s for s in segments if s["id"] not in stuff_ids]))
    gt_json = write_dataset(tmp_path / "gt.json", images)
    pred_json = write_dataset(tmp_path / "pred.json", predictions_for(images, "eroded", seed=1))
    with pytest.raises(ZeroDivisionError):
        panopticapi_pq(gt_json, pred_json)
    ours = pq_compute(gt_json, pred_json)
    assert ours["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    categories = {c["id"]: c for c in CATEGORIES}
    pairs = [(g, p) for g, p in zip(json.loads(gt_json.read_text())["annotations"], json.loads(pred_json.read_text())["annotations"])]
    stat = panopticapi_eval.pq_compute_single_core(0, pairs, str(tmp_path / "gt"), str(tmp_path / "pred"), categories)
    for name, isthing in (("All", None), ("Things", True)):
        theirs, per_class = stat.pq_average(categories, isthing=isthing)
        assert_same_pq({name: ours[name], "per_class": {}}, {name: theirs, "per_class": {}}, groups=(name,))
        for cid, row in per_class.items():
            assert ours["per_class"][cid] == pytest.approx(row, abs=TOL), cid
    assert ours["All"]["n"] == ours["Things"]["n"] > 0


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def small_pair(tmp_path):
    rng = np.random.default_rng(5)
    images = [(7, "x.png", *make_gt_image(rng)), (8, "y.png", *make_gt_image(rng))]
    gt_json = write_dataset(tmp_path / "gt.json", images)
    preds = predictions_for(images, "perfect", seed=2)
    return tmp_path, gt_json, preds


def test_png_segment_missing_from_json_is_an_input_error(small_pair):
    tmp, gt_json, preds = small_pair
    image_id, name, ids, segments = preds[1]
    dropped = segments[0]["id"]
    pred_json = write_dataset(tmp / "pred.json", [preds[0], (image_id, name, ids, segments[1:])])
    with pytest.raises(P2MInputError, match=rf"image id 8.*{dropped}.*pred/y\.png.*not in its segments_info"):
        pq_compute(gt_json, pred_json)


def test_json_segment_missing_from_png_is_an_input_error(small_pair):
    tmp, gt_json, preds = small_pair
    image_id, name, ids, segments = preds[0]
    ghost = {"id": 1 + max(s["id"] for s in segments), "category_id": 1}
    pred_json = write_dataset(tmp / "pred.json", [(image_id, name, ids, segments + [ghost]), preds[1]])
    with pytest.raises(P2MInputError, match=rf"image id 7.*{ghost['id']}.*segments_info of .*pred/x\.png.*not in its PNG"):
        pq_compute(gt_json, pred_json)


def test_unknown_category_is_an_input_error(small_pair):
    tmp, gt_json, preds = small_pair
    image_id, name, ids, segments = preds[0]
    bad = [dict(segments[0], category_id=999)] + segments[1:]
    pred_json = write_dataset(tmp / "pred.json", [(image_id, name, ids, bad), preds[1]])
    with pytest.raises(P2MInputError, match=rf"image id 7.*segment id {segments[0]['id']}.*x\.png.*unknown category_id 999"):
        pq_compute(gt_json, pred_json)


def test_missing_prediction_image_or_png_is_an_input_error(small_pair):
    tmp, gt_json, preds = small_pair
    pred_json = write_dataset(tmp / "pred.json", preds[:1])
    with pytest.raises(P2MInputError, match=r"pred\.json: no prediction for image id 8"):
        pq_compute(gt_json, pred_json)
    pred_json = write_dataset(tmp / "pred.json", preds)
    (tmp / "pred" / "x.png").unlink()
    with pytest.raises(P2MInputError, match=r"panoptic PNG not found: .*pred/x\.png"):
        pq_compute(gt_json, pred_json)


def test_missing_folder_and_shape_mismatch_are_input_errors(small_pair):
    tmp, gt_json, preds = small_pair
    pred_json = write_dataset(tmp / "pred.json", preds)
    with pytest.raises(P2MInputError, match="prediction PNG folder not found"):
        pq_compute(gt_json, pred_json, pred_folder=tmp / "nowhere")
    image_id, name, ids, segments = preds[0]
    cropped = write_dataset(tmp / "crop.json", [(image_id, name, ids[:-1], segments), preds[1]])
    with pytest.raises(P2MInputError, match=r"image id 7.*shape"):
        pq_compute(gt_json, cropped)


# ----------------------------------------------------------------------------- accumulator
def test_accumulator_equals_pq_compute_and_merge_of_halves_equals_whole(random_gt, tmp_path):
    gt_json, images = random_gt
    preds = predictions_for(images, "noise", seed=9)
    expected = pq_compute(gt_json, write_dataset(tmp_path / "pred.json", preds))

    whole = PQAccumulator(CATEGORIES)
    first, second = PQAccumulator(CATEGORIES), PQAccumulator(CATEGORIES)
    for index, ((image_id, _, gt_ids, gt_segments), (_, _, pred_ids, pred_segments)) in enumerate(zip(images, preds)):
        whole.process(gt_ids, gt_segments, pred_ids, pred_segments, image_id=image_id)
        half = first if index < 2 else second
        half.process(gt_ids.astype(np.int32), gt_segments, pred_ids, pred_segments, image_id=image_id)
    assert_same_pq(whole.evaluate(), expected)
    merged = pickle.loads(pickle.dumps(first)).merge(second)  # as from a Ray worker
    assert merged.num_images == len(images)
    assert_same_pq(merged.evaluate(), expected)

    whole.reset()
    assert whole.evaluate()["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    with pytest.raises(ValueError, match="different categories"):
        first.merge(PQAccumulator(CATEGORIES[:2]))


def test_accumulator_counts_missing_gt_areas_and_handles_large_ids(random_gt):
    _, images = random_gt
    image_id, _, gt_ids, gt_segments = images[1]  # image 1 has exact JSON areas
    pred_ids, pred_segments = pred_eroded(np.random.default_rng(0), gt_ids, gt_segments)
    with_area, without_area, big_ids = (PQAccumulator(CATEGORIES) for _ in range(3))
    with_area.process(gt_ids, gt_segments, pred_ids, pred_segments)
    without_area.process(gt_ids, [{k: v for k, v in s.items() if k != "area"} for s in gt_segments], pred_ids, pred_segments)
    shift = 2**40  # beyond what a PNG can hold: the sort-based path
    big_ids.process(
        np.where(gt_ids > 0, gt_ids + shift, 0), [dict(s, id=s["id"] + shift) for s in gt_segments],
        np.where(pred_ids > 0, pred_ids + shift, 0), [dict(s, id=s["id"] + shift) for s in pred_segments],
    )
    assert_same_pq(without_area.evaluate(), with_area.evaluate())
    assert_same_pq(big_ids.evaluate(), with_area.evaluate())
    assert with_area.evaluate()["All"]["n"] > 0


# ----------------------------------------------------------------------------- writer
def test_writer_round_trip_gives_pq_one_with_panopticapi(random_gt, tmp_path):
    gt_json, images = random_gt
    exact = [(i, n, ids, with_areas(ids, segs)) for i, n, ids, segs in images]  # undo the area error
    gt_json = write_dataset(tmp_path / "gt.json", exact)
    out_json = tmp_path / "out" / "pred.json"
    with PanopticPredictionWriter(out_json, tmp_path / "out" / "pred", CATEGORIES) as writer:
        for image_id, name, ids, segments in exact:
            things_and_stuff = [s for s in segments if not s["iscrowd"]]
            kept = np.where(np.isin(ids, [s["id"] for s in things_and_stuff]), ids, 0)
            annotation = writer.add(image_id, name, kept, [{"id": s["id"], "category_id": s["category_id"]} for s in things_and_stuff])
            for info in annotation["segments_info"]:
                ys, xs = np.nonzero(kept == info["id"])
                assert info["area"] == len(ys) and info["iscrowd"] == 0
                assert info["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert sorted(p.name for p in (tmp_path / "out" / "pred").iterdir()) == sorted(n for _, n, _, _ in exact)
    written = json.loads(out_json.read_text())
    assert written["categories"] == CATEGORIES and len(written["annotations"]) == len(exact)
    theirs = panopticapi_pq(gt_json, out_json)
    assert theirs["All"]["pq"] == pytest.approx(1.0, abs=TOL)
    assert_same_pq(pq_compute(gt_json, out_json), theirs)


def test_writer_rejects_bad_input_and_writes_no_json_after_an_error(tmp_path):
    ids = np.zeros((4, 5), np.int64)
    ids[1:3, 1:4] = 9
    out_json = tmp_path / "pred.json"
    with pytest.raises(P2MInputError, match="ids \\[9\\] are in the map"):
        with PanopticPredictionWriter(out_json, tmp_path / "pred", CATEGORIES) as writer:
            writer.add(1, "a.png", ids, [])
    assert not out_json.exists()
    writer = PanopticPredictionWriter(out_json, tmp_path / "pred", CATEGORIES)
    with pytest.raises(P2MInputError, match="unknown category_id 999"):
        writer.add(1, "a.png", ids, [{"id": 9, "category_id": 999}])
    with pytest.warns(UserWarning, match="segment 5 has no pixel"):
        annotation = writer.add(1, "a.png", ids, [{"id": 9, "category_id": 1}, {"id": 5, "category_id": 10}])
    assert [s["id"] for s in annotation["segments_info"]] == [9]
    with pytest.raises(P2MInputError, match="already added"):
        writer.add(1, "b.png", ids, [{"id": 9, "category_id": 1}])
    writer.close()
    assert np.array_equal(read_panoptic_png(tmp_path / "pred" / "a.png"), ids)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_segments_from_semantic_instance_and_labels_rebuild_the_partition():
    semantic = np.array([[10, 10, 1, 1], [10, 255, 1, 2], [11, 11, 2, 2]])
    instance = np.array([[5, 6, 1, 1], [0, 0, 2, 0], [0, 0, 3, 3]])
    ids, segments = segments_from_semantic_instance(semantic, instance, thing_ids=THINGS)
    # stuff 10 ignores instances; thing 1 has instances 1 and 2; thing 2 instance 0 is void.
    cats = {s["id"]: s["category_id"] for s in segments}
    assert sorted(cats.values()) == [1, 1, 2, 10, 11]
    assert ids[1, 1] == 0 and ids[1, 3] == 0
    assert len({ids[0, 0], ids[0, 1], ids[1, 0]}) == 1 and cats[ids[0, 0]] == 10
    assert ids[0, 2] == ids[0, 3] != ids[1, 2] and cats[ids[1, 2]] == 1
    assert ids[2, 2] == ids[2, 3] and cats[ids[2, 2]] == 2

    labels = np.array([[3, 3, -1], [7, 7, 3]])
    ids, segments = segments_from_labels(labels, {3: 10, 7: 2})
    assert ids.tolist() == [[1, 1, 0], [2, 2, 1]]
    assert segments == [{"id": 1, "category_id": 10}, {"id": 2, "category_id": 2}]
    with pytest.raises(P2MInputError, match="label 7"):
        segments_from_labels(labels, {3: 10})


# ----------------------------------------------------------------------------- semantic
def test_semantic_iou_matches_per_class_loops():
    rng = np.random.default_rng(0)
    num_classes = 5  # class 4 never occurs
    meter = SemanticIoU(num_classes, ignore_index=255)
    gts, preds = [], []
    for _ in range(3):
        gt = rng.integers(0, 4, size=(6, 7))
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 4, size=gt.shape))
        pred[0, 0] = 255  # a "no class" prediction
        pred[gt == 255] = 3  # predictions on ignored pixels do not count
        meter.process(gt, pred)
        gts.append(gt)
        preds.append(pred)
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    valid = gt != 255
    expected = []
    for c in range(num_classes):
        tp = fp = fn = 0
        for g, p in zip(gt[valid].tolist(), pred[valid].tolist()):
            tp += g == c and p == c
            fp += g != c and p == c
            fn += g == c and p != c
        expected.append(tp / (tp + fp + fn) if tp + fp + fn else None)
    result = meter.evaluate()
    for c in range(num_classes):
        if expected[c] is None:
            assert np.isnan(result["per_class_iou"][c])
        else:
            assert result["per_class_iou"][c] == pytest.approx(expected[c], abs=1e-12)
    present = [e for e in expected if e is not None]
    assert result["mIoU"] == pytest.approx(sum(present) / len(present), abs=1e-12)
    assert result["pixel_acc"] == pytest.approx(float((gt[valid] == pred[valid]).mean()), abs=1e-12)

    first, rest = SemanticIoU(num_classes), SemanticIoU(num_classes)
    first.process(gts[0], preds[0])
    for g, p in zip(gts[1:], preds[1:]):
        rest.process(g, p)
    assert np.array_equal(first.merge(rest).confusion, meter.confusion)
    with pytest.raises(P2MInputError, match="outside"):
        meter.process(np.array([[7]]), np.array([[0]]))


def test_panoptic_to_semantic_maps_segments_and_void():
    ids = np.array([[0, 5, 5], [9, 9, 77]])
    segments = [{"id": 5, "category_id": 10}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    semantic = panoptic_to_semantic(ids, segments, {1: 0, 10: 3}, ignore_index=255)
    assert semantic.tolist() == [[255, 3, 3], [0, 0, 255]]
    with pytest.raises(P2MInputError, match="category_id 10"):
        panoptic_to_semantic(ids, segments, {1: 0})


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_metrics_and_reports_errors(random_gt, tmp_path, capsys):
    gt_json, images = random_gt
    pred_json = write_dataset(tmp_path / "pred.json", predictions_for(images, "shifted", seed=4))
    out = tmp_path / "metrics.json"
    assert cli_main(["--gt-json", str(gt_json), "--pred-json", str(pred_json), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    expected = pq_compute(gt_json, pred_json)
    assert f"{100 * expected['All']['pq']:5.1f}" in printed and "Things" in printed
    written = json.loads(out.read_text())
    assert written["All"] == pytest.approx(expected["All"])
    assert written["per_class"] == {str(k): pytest.approx(v) for k, v in expected["per_class"].items()}
    assert cli_main(["--gt-json", str(gt_json), "--pred-json", str(tmp_path / "none.json")]) == 2
    assert "error: prediction panoptic JSON not found" in capsys.readouterr().err
