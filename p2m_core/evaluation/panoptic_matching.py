"""Matching one image's predicted segments to its ground-truth segments, as the COCO panoptic
API does: per category the IoU sum of the matched pairs and the TP, FP and FN counts that
:mod:`p2m_core.evaluation.panoptic_quality` turns into PQ, SQ and RQ.

We reproduce ``panopticapi.evaluation.pq_compute``'s matching to floating-point summation order,
including its conventions:

* a pair (g, p) can match only when g is not crowd, both have the same ``category_id`` and
  ``IoU > 0.5``, where ``IoU = |g & p| / (area_g + area_p - |g & p| - |void & p|)``: the
  ground-truth area ``area_g`` is the ``area`` field of the GT JSON (not recounted from the
  PNG), the predicted area is counted from the prediction PNG, and prediction pixels on GT void
  (id 0) are left out of the union;
* an unmatched prediction is not a false positive when more than half of its pixels lie on GT
  void plus the crowd region of its own category (the last crowd segment of that category in
  ``segments_info`` order, as panopticapi keeps one per category);
* GT segments listed in the JSON but absent from the PNG are false negatives; GT PNG ids not
  listed in the JSON are ignored.

Bad input raises :class:`~p2m_core.errors.P2MInputError` naming the image id, segment id and
file (panopticapi raises ``KeyError`` or ``Exception``), and a GT segment without ``area`` gets
its pixel count (panopticapi raises ``KeyError``).

How it is fast: per image the segment ids of each PNG are mapped to contiguous codes with a
reused lookup table over all 256^3 ids (no sort), the (GT x prediction) intersection matrix is
one 2-D histogram of the two code maps (``cv2.calcHist``, or one ``np.bincount`` over
``gt_code * (P + 2) + pred_code``), and matching, FN and FP are array operations on that small
matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2m_core.errors import P2MInputError

VOID = 0
ID_LIMIT = 256**3  # ids representable in an RGB panoptic PNG


# --------------------------------------------------------------------------- id -> index
def _lookup_table(scratch: threading.local, dtype: type) -> np.ndarray:
    """A reusable id -> code table over all 256^3 PNG ids, all zero between uses.

    One table per thread and code dtype (uint8: 16 MiB, uint16: 32 MiB, allocated lazily and
    zero-filled by the OS on first touch). Filling and clearing touch only the listed ids, so
    one table serves every image, and a gather ``table[ids]`` maps a whole image in one pass
    instead of a sort.
    """
    name = f"table_{np.dtype(dtype).name}"
    table = getattr(scratch, name, None)
    if table is None:
        table = np.zeros(ID_LIMIT, dtype=dtype)
        setattr(scratch, name, table)
    return table


def _as_keys(ids: Sequence[Any], where: str) -> np.ndarray:
    bad = [i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)]
    if bad:
        raise P2MInputError(f"{where}: segment ids must be integers, got {bad[0]!r}")
    try:
        return np.array([int(i) for i in ids], dtype=np.int64)
    except OverflowError:
        raise P2MInputError(f"{where}: segment ids must fit in 64 bits") from None


def _encode(ids: np.ndarray, keys: np.ndarray, scratch: threading.local) -> np.ndarray:
    """Map HxW ids to codes: 0 = unlisted id != 0, 1..K = ``keys`` order, K + 1 = unlisted 0.

    ``keys`` are the listed segment ids (int64 [K], unique). If id 0 is itself listed it takes
    its listed code. Returns an HxW code map: uint8 when K + 2 <= 256 (the common case, which
    :func:`_pair_counts` histograms fastest), else uint16, else (beyond 65534 segments, or ids
    outside [0, 256^3) as arrays may hold) intp through a sort.
    """
    k = len(keys)
    void_code = k + 1
    in_range = (keys >= 0) & (keys < ID_LIMIT)
    small = ids.size == 0 or ((ids.dtype.kind == "u" or ids.min() >= 0) and ids.max() < ID_LIMIT)
    if small and k + 2 <= 2**16:
        dtype = np.uint8 if k + 2 <= 2**8 else np.uint16
        table = _lookup_table(scratch, dtype)
        listed = keys[in_range]
        table[VOID] = void_code
        table[listed] = np.arange(1, k + 1, dtype=dtype)[in_range]
        try:
            return table.take(ids if ids.dtype == np.uint32 else ids.astype(np.intp), mode="clip")
        finally:
            table[listed] = 0
            table[VOID] = 0
    # General path (ids beyond 256^3 or very many segments): sort-based.
    present, inverse = np.unique(ids, return_inverse=True)
    position = {int(key): code for code, key in enumerate(keys.tolist(), start=1)}
    codes = np.array(
        [position.get(int(v), void_code if v == VOID else 0) for v in present], dtype=np.intp
    )
    return codes[inverse.reshape(ids.shape)]


def _pair_counts(gt_code: np.ndarray, pred_code: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Joint histogram ``counts[i, j] = #{pixels with gt code i and prediction code j}``, int64 [rows, cols].

    uint8 codes go through OpenCV's 2-D histogram (GIL released, exact while the pixel count
    fits float32's 2^24 integers); otherwise one ``np.bincount`` over ``i * cols + j``.
    """
    if gt_code.dtype == pred_code.dtype == np.uint8 and 0 < gt_code.size < 2**24:
        import cv2

        hist = cv2.calcHist([gt_code, pred_code], [0, 1], None, [rows, cols], [0, rows, 0, cols])
        return hist.astype(np.int64)
    flat = gt_code.astype(np.intp).ravel()
    flat *= cols
    flat += pred_code.ravel()
    return np.bincount(flat, minlength=rows * cols).reshape(rows, cols)


# --------------------------------------------------------------------------- per image
@dataclass
class ImageStats:
    """Per-category sums of one image: category ids [C] and iou/tp/fp/fn [C]."""

    categories: list[Any]
    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def _segment_table(segments: Any, where: str) -> dict[Any, dict]:
    """``{id: segment}`` with panopticapi's rule for repeated ids (first position, last value)."""
    if not isinstance(segments, (list, tuple)):
        raise P2MInputError(f"{where}: segments_info must be a list, got {type(segments).__name__}")
    table: dict[Any, dict] = {}
    for index, seg in enumerate(segments):
        if not isinstance(seg, Mapping) or "id" not in seg or "category_id" not in seg:
            raise P2MInputError(f"{where}: segments_info[{index}] needs fields 'id' and 'category_id'")
        table[seg["id"]] = seg
    return table


def _as_id_array(ids: Any, where: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise P2MInputError(f"{where}: expected an HxW integer id map, got {ids.dtype} array of shape {ids.shape}")
    return ids


def image_pq_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Mapping[Any, Any],
    *,
    image_id: Any = None,
    gt_source: str = "ground truth",
    pred_source: str = "prediction",
    scratch: threading.local | None = None,
) -> ImageStats:
    """Matching of one image: per-category IoU sum, TP, FP, FN (see the module docstring).

    Parameters
    ----------
    gt_ids, pred_ids : [H, W] integer segment ids (0 = void).
    gt_segments : dicts with ``id``, ``category_id``, ``iscrowd`` and optionally ``area``
        (used in the IoU union as panopticapi does; counted from ``gt_ids`` when absent).
    pred_segments : dicts with ``id`` and ``category_id``; areas are counted from ``pred_ids``.
    categories : the known category ids (membership is checked for predictions).
    gt_source, pred_source : names (files) quoted in error messages.
    """
    where = f"image id {image_id!r}"
    gt_ids = _as_id_array(gt_ids, f"{where}, {gt_source}")
    pred_ids = _as_id_array(pred_ids, f"{where}, {pred_source}")
    if gt_ids.shape != pred_ids.shape:
        raise P2MInputError(
            f"{where}: prediction {pred_source} has shape {pred_ids.shape} but ground truth "
            f"{gt_source} has shape {gt_ids.shape}"
        )
    gt_table = _segment_table(gt_segments, f"{where}, {gt_source}")
    pred_table = _segment_table(pred_segments, f"{where}, {pred_source}")
    for sid, seg in pred_table.items():
        if seg["category_id"] not in categories:
            raise P2MInputError(
                f"{where}: segment id {sid} in {pred_source} has unknown category_id "
                f"{seg['category_id']!r} (not in the ground-truth categories)"
            )
    gt_keys = _as_keys(list(gt_table), f"{where}, {gt_source}")
    pred_keys = _as_keys(list(pred_table), f"{where}, {pred_source}")
    g, p = len(gt_keys), len(pred_keys)
    scratch = scratch if scratch is not None else threading.local()

    # Intersection counts of every (GT code, prediction code) pair in one histogram.
    gt_code = _encode(gt_ids, gt_keys, scratch)
    pred_code = _encode(pred_ids, pred_keys, scratch)
    counts = _pair_counts(gt_code, pred_code, g + 2, p + 2)

    if counts[:, 0].any():
        unlisted = np.unique(pred_ids[pred_code == 0]).tolist()
        raise P2MInputError(
            f"{where}: segment id(s) {unlisted[:10]} are in the prediction PNG {pred_source} "
            f"but not in its segments_info"
        )
    pred_area = counts[:, 1 : p + 1].sum(axis=0)
    if p and (pred_area == 0).any():
        missing = pred_keys[pred_area == 0].tolist()
        raise P2MInputError(
            f"{where}: segment id(s) {missing[:10]} are in the segments_info of {pred_source} "
            f"but not in its PNG"
        )
    inter = counts[1 : g + 1, 1 : p + 1]
    zero_listed = np.flatnonzero(gt_keys == VOID)
    void_row = 1 + int(zero_listed[0]) if zero_listed.size else g + 1
    void_inter = counts[void_row, 1 : p + 1]

    # Categories coded 0..C-1 for this image (GT categories may be outside `categories`).
    cat_code: dict[Any, int] = {}
    gt_segs = list(gt_table.values())
    pred_segs = list(pred_table.values())
    gt_cat = np.array([cat_code.setdefault(s["category_id"], len(cat_code)) for s in gt_segs], dtype=np.intp)
    pred_cat = np.array([cat_code.setdefault(s["category_id"], len(cat_code)) for s in pred_segs], dtype=np.intp)
    n_cat = len(cat_code)
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segs], dtype=bool)
    if all("area" in s for s in gt_segs):
        gt_area = np.array([s["area"] for s in gt_segs], dtype=np.float64)
    else:
        counted = counts[1 : g + 1].sum(axis=1)
        gt_area = np.array(
            [s["area"] if "area" in s else counted[i] for i, s in enumerate(gt_segs)], dtype=np.float64
        )

    # TP: same category, GT not crowd, IoU > 0.5 (union without the prediction's void part).
    candidate = (inter > 0) & (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        union = pred_area[None, :] + gt_area[:, None] - inter - void_inter[None, :]
        iou = inter / union
    tp_mask = candidate & (iou > 0.5)
    tp_rows, tp_cols = np.nonzero(tp_mask)
    iou_sum = np.bincount(gt_cat[tp_rows], weights=iou[tp_rows, tp_cols], minlength=n_cat)
    tp = np.bincount(gt_cat[tp_rows], minlength=n_cat)
    gt_matched = tp_mask.any(axis=1)
    pred_matched = tp_mask.any(axis=0)

    # FN: unmatched, non-crowd GT segments.
    fn = np.bincount(gt_cat[~gt_matched & ~gt_crowd], minlength=n_cat)

    # FP: unmatched predictions unless > 1/2 of their pixels are GT void + same-class crowd.
    crowd_row = np.full(n_cat, -1, dtype=np.intp)
    for row in np.flatnonzero(gt_crowd):  # later crowd segments of a category win
        crowd_row[gt_cat[row]] = row
    rows = crowd_row[pred_cat]
    crowd_inter = np.zeros(p, dtype=np.int64)
    has_crowd = rows >= 0
    if has_crowd.any():
        crowd_inter[has_crowd] = inter[rows[has_crowd], np.flatnonzero(has_crowd)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ignored = (void_inter + crowd_inter) / pred_area > 0.5
    fp = np.bincount(pred_cat[~pred_matched & ~ignored], minlength=n_cat)
    return ImageStats(list(cat_code), iou_sum, tp, fp, fn)
