"""Panoptic quality of a dataset equals panopticapi's; accumulator, writer, mIoU and CLI behave.

The oracle is ``panopticapi.evaluation`` itself (the COCO panoptic API): every PQ result is
compared with it to 1e-9 on real COCO ground truth, on the synthetic dataset when its generator
is installed, and on random panoptic images (``tests/panoptic_data.py``: stuff bands, thing
rectangles and ellipses, a crowd region, void pixels, one JSON area that disagrees with the PNG).
Calls of panopticapi's ``pq_compute`` start a process pool, so each prediction case is one call
over several images. The matching of one image and the input errors are tested in
``test_panoptic_matching.py``.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from panopticapi import evaluation as panopticapi_eval

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
from tests.panoptic_data import (
    CATEGORIES,
    PERTURBATIONS,
    STUFF,
    THINGS,
    TOL,
    Image,
    assert_same_pq,
    make_gt_image,
    panopticapi_pq,
    pred_eroded,
    predictions_for,
    with_areas,
    write_dataset,
)


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
