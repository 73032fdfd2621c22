"""Panoptic quality (PQ, SQ, RQ) exactly as the COCO panoptic API computes it, vectorised.

For one category c, with TP the matched (ground truth, prediction) pairs, FP the unmatched
predictions and FN the unmatched ground-truth segments, over the whole dataset [1]::

    SQ_c = sum_{(g, p) in TP} IoU(g, p) / |TP|                  (0 when |TP| = 0)
    RQ_c = |TP| / (|TP| + |FP| / 2 + |FN| / 2)
    PQ_c = SQ_c * RQ_c = sum_{TP} IoU / (|TP| + |FP| / 2 + |FN| / 2)

and PQ/SQ/RQ of a group (All, Things, Stuff) are the means over the categories of the group
with ``|TP| + |FP| + |FN| > 0`` (``n`` of them).

We reproduce ``panopticapi.evaluation.pq_compute`` to floating-point summation order (the
tests compare to 1e-9), including its conventions:

* a pair (g, p) can match only when g is not crowd, both have the same ``category_id`` and
  ``IoU > 0.5``, where ``IoU = |g & p| / (area_g + area_p - |g & p| - |void & p|)``: the
  ground-truth area ``area_g`` is the ``area`` field of the GT JSON (not recounted from the
  PNG), the predicted area is counted from the prediction PNG, and prediction pixels on GT void
  (id 0) are left out of the union;
* an unmatched prediction is not a false positive when more than half of its pixels lie on GT
  void plus the crowd region of its own category (the last crowd segment of that category in
  ``segments_info`` order, as panopticapi keeps one per category);
* GT segments listed in the JSON but absent from the PNG are false negatives; GT PNG ids not
  listed in the JSON are ignored;
* ``per_class`` lists every category of the GT JSON (zeros when it has no TP, FP or FN).

One deliberate difference: a group with ``n = 0`` (e.g. no stuff category occurs) makes
panopticapi raise ``ZeroDivisionError``; we return ``pq = sq = rq = 0.0`` with ``n = 0``.
Another, for folder defaults only: panopticapi derives ``gt_folder`` with
``path.replace('.json', '')``, which also deletes ``.json`` inside folder names; we strip only
a trailing ``.json``. Bad input raises :class:`~p2m_core.errors.P2MInputError` naming the image
id, segment id and file (panopticapi raises ``KeyError`` or ``Exception``), and a GT segment
without ``area`` gets its pixel count (panopticapi raises ``KeyError``).

How it is fast: per image the segment ids of each PNG are mapped to contiguous codes with a
reused lookup table over all 256^3 ids (no sort), the (GT x prediction) intersection matrix is
one 2-D histogram of the two code maps (``cv2.calcHist``, or one ``np.bincount`` over
``gt_code * (P + 2) + pred_code``), and matching, FN and FP are array operations on that small
matrix. :func:`pq_compute` decodes PNGs with OpenCV (which, like the steps after it, releases
the GIL) in a thread pool, so images overlap without worker processes. PNG decoding is then
most of the cost (docs/BENCHMARKS.md).

References
----------
[1] Kirillov et al., "Panoptic Segmentation", CVPR 2019.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.errors import P2MInputError
from p2m_core.progress import Progress
from p2m_core.io import PathLike, load_json

VOID = 0
ID_LIMIT = 256**3  # ids representable in an RGB panoptic PNG
GROUPS = (("All", None), ("Things", True), ("Stuff", False))

__all__ = [
    "PQAccumulator",
    "format_pq_table",
    "pq_compute",
    "read_panoptic_png",
]


# --------------------------------------------------------------------------- PNG decoding
def read_panoptic_png(path: PathLike) -> np.ndarray:
    """Decode a COCO panoptic PNG into HxW uint32 segment ids ``R + 256 G + 256^2 B``.

    OpenCV decodes (BGR order, GIL released, faster than PIL); an alpha channel is ignored as
    panopticapi ignores it. Grey-level or 16-bit PNGs are rejected: they cannot hold ids.
    """
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise P2MInputError(f"panoptic PNG not found: {path}") from None
    except IsADirectoryError:
        raise P2MInputError(f"panoptic PNG path is a folder: {path}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise P2MInputError(f"{path}: not a readable PNG image")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise P2MInputError(
            f"{path}: a panoptic PNG must be 8-bit RGB, got dtype {image.dtype} and shape {image.shape}"
        )
    code = cv2.COLOR_BGR2RGBA if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    rgba = np.ascontiguousarray(cv2.cvtColor(image, code))
    # Bytes R, G, B, A read as one little-endian uint32 are R + 2^8 G + 2^16 B + 2^24 A.
    ids = rgba.view(np.dtype("<u4"))[..., 0]
    return np.bitwise_and(ids, np.uint32(ID_LIMIT - 1), dtype=np.uint32)


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
class _ImageStats:
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


def _image_pq_stats(
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
) -> _ImageStats:
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
    return _ImageStats(list(cat_code), iou_sum, tp, fp, fn)


# --------------------------------------------------------------------------- accumulator
def _normalise_categories(categories: Any) -> dict[Any, bool]:
    """``{category_id: isthing}`` from a list of dicts or a mapping id -> dict / object."""
    if isinstance(categories, Mapping):
        items = list(categories.items())
    elif isinstance(categories, (list, tuple)):
        items = []
        for index, cat in enumerate(categories):
            if not isinstance(cat, Mapping) or "id" not in cat:
                raise P2MInputError(f"categories[{index}]: expected an object with field 'id'")
            items.append((cat["id"], cat))
    else:
        raise P2MInputError(f"categories must be a list or a mapping, got {type(categories).__name__}")
    result: dict[Any, bool] = {}
    for cid, info in items:
        if isinstance(info, Mapping):
            if "isthing" not in info:
                raise P2MInputError(f"category {cid!r}: missing field 'isthing'")
            isthing = info["isthing"]
        elif hasattr(info, "isthing"):
            isthing = info.isthing
        else:
            isthing = info
        result[cid] = isthing == 1  # panopticapi: label_info['isthing'] == 1
    return result


def _group_average(
    stats: Mapping[Any, list], categories: Mapping[Any, bool], isthing: bool | None
) -> tuple[dict[str, Any], dict[Any, dict[str, float]]]:
    """Mean PQ/SQ/RQ over the group's categories with TP + FP + FN > 0 (panopticapi order)."""
    pq = sq = rq = 0.0
    n = 0
    per_class: dict[Any, dict[str, float]] = {}
    for cid, cat_isthing in categories.items():
        if isthing is not None and isthing != cat_isthing:
            continue
        iou, tp, fp, fn = stats.get(cid, (0.0, 0, 0, 0))
        if tp + fp + fn == 0:
            per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denominator = tp + 0.5 * fp + 0.5 * fn
        pq_c = iou / denominator
        sq_c = iou / tp if tp != 0 else 0.0
        rq_c = tp / denominator
        per_class[cid] = {"pq": float(pq_c), "sq": float(sq_c), "rq": float(rq_c)}
        pq += pq_c
        sq += sq_c
        rq += rq_c
    if n == 0:  # panopticapi raises ZeroDivisionError here
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": float(pq / n), "sq": float(sq / n), "rq": float(rq / n), "n": n}, per_class


class PQAccumulator:
    """Streaming panoptic quality: ``reset() / process(...) / evaluate()``, plus ``merge``.

    Per category it sums the IoU of matched pairs and counts TP, FP, FN over all processed
    images; :meth:`evaluate` turns the sums into PQ/SQ/RQ (module docstring). Arrays go in
    directly (no PNG round trip), so a training loop can evaluate in memory, and accumulators
    filled on different workers combine with :meth:`merge`. Picklable.

    Parameters
    ----------
    categories : the GT categories: a list of dicts with ``id`` and ``isthing`` (the COCO JSON
        ``categories`` field) or a mapping ``id -> dict / Category``. Their order is the order
        of ``per_class`` and of the averages.
    """

    def __init__(self, categories: Any) -> None:
        self.categories = _normalise_categories(categories)
        self._scratch = threading.local()
        self.reset()

    def reset(self) -> None:
        """Forget every processed image."""
        self._stats: dict[Any, list] = {}
        self.num_images = 0

    def process(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        *,
        image_id: Any = None,
    ) -> None:
        """Add one image.

        Parameters
        ----------
        gt_ids, pred_ids : [H, W] integer segment ids, 0 = void.
        gt_segments : ``[{'id', 'category_id', 'iscrowd', 'area'?}]``; ``area`` (as in the COCO
            JSON) enters the IoU union, counted from ``gt_ids`` when absent.
        pred_segments : ``[{'id', 'category_id'}]``; every id must occur in ``pred_ids`` and
            every non-zero id of ``pred_ids`` must be listed.
        image_id : quoted in error messages.
        """
        stats = _image_pq_stats(
            gt_ids, gt_segments, pred_ids, pred_segments, self.categories,
            image_id=image_id, scratch=self._scratch,
        )
        self._add(stats)

    def _add(self, stats: _ImageStats) -> None:
        for index, cid in enumerate(stats.categories):
            entry = self._stats.setdefault(cid, [0.0, 0, 0, 0])
            entry[0] += float(stats.iou[index])
            entry[1] += int(stats.tp[index])
            entry[2] += int(stats.fp[index])
            entry[3] += int(stats.fn[index])
        self.num_images += 1

    def merge(self, other: PQAccumulator) -> PQAccumulator:
        """Add the sums of ``other`` (e.g. from another worker) into this one; returns self."""
        if not isinstance(other, PQAccumulator):
            raise TypeError(f"can only merge a PQAccumulator, got {type(other).__name__}")
        if other.categories != self.categories:
            raise ValueError("cannot merge PQ accumulators built with different categories")
        for cid, (iou, tp, fp, fn) in other._stats.items():
            entry = self._stats.setdefault(cid, [0.0, 0, 0, 0])
            entry[0] += iou
            entry[1] += tp
            entry[2] += fp
            entry[3] += fn
        self.num_images += other.num_images
        return self

    def evaluate(self) -> dict[str, Any]:
        """``{'All'|'Things'|'Stuff': {'pq','sq','rq','n'}, 'per_class': {id: {'pq','sq','rq'}}}``."""
        results: dict[str, Any] = {}
        for name, isthing in GROUPS:
            results[name], per_class = _group_average(self._stats, self.categories, isthing)
            if name == "All":
                results["per_class"] = per_class
        return results

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_scratch", None)  # the lookup table is a per-thread cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scratch = threading.local()


# --------------------------------------------------------------------------- files
def _default_folder(json_file: PathLike) -> Path:
    text = str(json_file)
    return Path(text[: -len(".json")] if text.endswith(".json") else text)


def _annotations(raw: Any, source: PathLike) -> list[dict]:
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise P2MInputError(f"{source}: expected an object with a list field 'annotations'")
    for index, ann in enumerate(raw["annotations"]):
        for key in ("image_id", "file_name", "segments_info"):
            if not isinstance(ann, dict) or key not in ann:
                raise P2MInputError(f"{source}: annotations[{index}] is missing field '{key}'")
    return raw["annotations"]


def pq_compute(
    gt_json_file: PathLike,
    pred_json_file: PathLike,
    gt_folder: PathLike | None = None,
    pred_folder: PathLike | None = None,
    *,
    verbose: bool = False,
    progress: bool = False,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Panoptic quality of a prediction set, as ``panopticapi.evaluation.pq_compute``.

    Parameters
    ----------
    gt_json_file, pred_json_file : COCO panoptic JSONs; the GT one gives ``categories``.
    gt_folder, pred_folder : PNG folders; default to the JSON path without ``.json``.
    verbose : print the All/Things/Stuff table (percent) to stdout.
    progress : report images done, time per image and ETA on stderr.
    num_threads : PNG-decoding threads (default: CPU count, at most 8).

    Returns
    -------
    ``{'All'|'Things'|'Stuff': {'pq', 'sq', 'rq', 'n'}, 'per_class': {category_id: {'pq', 'sq', 'rq'}}}``
    with values in [0, 1].

    Raises
    ------
    P2MInputError : a missing file or folder, an image without prediction, a segment in a
        prediction PNG but not in its JSON or the reverse, an unknown category id.
    """
    gt_json = load_json(gt_json_file, what="ground-truth panoptic JSON")
    pred_json = load_json(pred_json_file, what="prediction panoptic JSON")
    gt_folder = Path(gt_folder) if gt_folder is not None else _default_folder(gt_json_file)
    pred_folder = Path(pred_folder) if pred_folder is not None else _default_folder(pred_json_file)
    if not isinstance(gt_json, dict) or not isinstance(gt_json.get("categories"), list):
        raise P2MInputError(f"{gt_json_file}: expected an object with a list field 'categories'")
    accumulator = PQAccumulator(gt_json["categories"])
    gt_annotations = _annotations(gt_json, gt_json_file)
    pred_by_image = {ann["image_id"]: ann for ann in _annotations(pred_json, pred_json_file)}
    if not gt_folder.is_dir():
        raise P2MInputError(f"ground-truth PNG folder not found: {gt_folder}")
    if not pred_folder.is_dir():
        raise P2MInputError(f"prediction PNG folder not found: {pred_folder}")
    pairs = []
    for gt_ann in gt_annotations:
        if gt_ann["image_id"] not in pred_by_image:
            raise P2MInputError(
                f"{pred_json_file}: no prediction for image id {gt_ann['image_id']!r} "
                f"(listed in {gt_json_file})"
            )
        pairs.append((gt_ann, pred_by_image[gt_ann["image_id"]]))

    scratch = threading.local()
    categories = accumulator.categories

    def one_image(pair: tuple[dict, dict]) -> _ImageStats:
        gt_ann, pred_ann = pair
        gt_path = gt_folder / gt_ann["file_name"]
        pred_path = pred_folder / pred_ann["file_name"]
        return _image_pq_stats(
            read_panoptic_png(gt_path), gt_ann["segments_info"],
            read_panoptic_png(pred_path), pred_ann["segments_info"], categories,
            image_id=gt_ann["image_id"], gt_source=str(gt_path), pred_source=str(pred_path),
            scratch=scratch,
        )

    workers = max(1, num_threads if num_threads is not None else min(8, _cpu_count()))
    report = Progress("PQ", len(pairs), progress)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pq") as pool:
        try:
            for pair in pairs:
                pending.append(pool.submit(one_image, pair))
                if len(pending) >= 2 * workers:
                    accumulator._add(pending.popleft().result())
                    report.update(accumulator.num_images)
            while pending:
                accumulator._add(pending.popleft().result())
                report.update(accumulator.num_images)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    results = accumulator.evaluate()
    if verbose:
        print(format_pq_table(results))
    return results


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def format_pq_table(results: Mapping[str, Any], groups: Iterable[str] = ("All", "Things", "Stuff")) -> str:
    """The panopticapi summary table: PQ, SQ, RQ in percent and N per group."""
    lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"), "-" * (10 + 7 * 4)]
    for name in groups:
        row = results[name]
        lines.append(
            "{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
                name, 100 * row["pq"], 100 * row["sq"], 100 * row["rq"], row["n"]
            )
        )
    return "\n".join(lines)
