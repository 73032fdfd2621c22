"""Random panoptic data, predictions made from it, and the panopticapi oracle, for the tests of
``p2m_core.evaluation`` (``test_evaluation.py``, ``test_panoptic_matching.py``).

The oracle is ``panopticapi.evaluation`` itself (the COCO panoptic API): ``assert_same_pq``
compares a PQ result with it to 1e-9. ``make_gt_image`` builds a random panoptic ground truth
(stuff bands, thing rectangles and ellipses, a crowd region, void pixels), ``predictions_for``
perturbs ground truths into predictions (the cases of ``PERTURBATIONS``), and ``write_dataset``
writes either as COCO panoptic JSON and PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from panopticapi import evaluation as panopticapi_eval

from p2m_core.data.panoptic_format import id2rgb
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
