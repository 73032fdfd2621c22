"""Matching one image's segments (``p2m_core.evaluation.panoptic_matching``) as panopticapi does,
and the input errors ``pq_compute`` reports.

The matching's conventions are checked against panopticapi's own per-image function (no process
pool) on tiny chaotic images: GT ids missing from the JSON, JSON segments missing from the PNG,
several crowd segments of one class, wrong JSON areas, predictions on void; and with hundreds of
segments in one image (wider segment codes). Bad input is a ``P2MInputError`` naming the image
id, segment id and file: segments or categories the matching cannot resolve, a shape mismatch,
a missing prediction image, PNG or folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from panopticapi import evaluation as panopticapi_eval

from p2m_core.errors import P2MInputError
from p2m_core.evaluation import pq_compute
from tests.panoptic_data import (
    CATEGORIES,
    TOL,
    assert_same_pq,
    make_gt_image,
    predictions_for,
    write_dataset,
)


# ----------------------------------------------------------------------------- matching = panopticapi
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
