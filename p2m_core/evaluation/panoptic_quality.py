"""Panoptic quality (PQ, SQ, RQ) exactly as the COCO panoptic API computes it, vectorised.

For one category c, with TP the matched (ground truth, prediction) pairs, FP the unmatched
predictions and FN the unmatched ground-truth segments, over the whole dataset [1]::

    SQ_c = sum_{(g, p) in TP} IoU(g, p) / |TP|                  (0 when |TP| = 0)
    RQ_c = |TP| / (|TP| + |FP| / 2 + |FN| / 2)
    PQ_c = SQ_c * RQ_c = sum_{TP} IoU / (|TP| + |FP| / 2 + |FN| / 2)

and PQ/SQ/RQ of a group (All, Things, Stuff) are the means over the categories of the group
with ``|TP| + |FP| + |FN| > 0`` (``n`` of them).

We reproduce ``panopticapi.evaluation.pq_compute`` to floating-point summation order (the
tests compare to 1e-9): the matching of each image and its conventions are
:mod:`p2m_core.evaluation.panoptic_matching`; here the sums over images and categories, and
``per_class`` lists every category of the GT JSON (zeros when it has no TP, FP or FN).

One deliberate difference: a group with ``n = 0`` (e.g. no stuff category occurs) makes
panopticapi raise ``ZeroDivisionError``; we return ``pq = sq = rq = 0.0`` with ``n = 0``.
Another, for folder defaults only: panopticapi derives ``gt_folder`` with
``path.replace('.json', '')``, which also deletes ``.json`` inside folder names; we strip only
a trailing ``.json``. Bad input raises :class:`~p2m_core.errors.P2MInputError` naming the image
id, segment id and file (panopticapi raises ``KeyError`` or ``Exception``).

How it is fast: :func:`pq_compute` decodes PNGs with OpenCV (which, like the matching after it,
releases the GIL) in a thread pool, so images overlap without worker processes. PNG decoding is
then most of the cost (docs/BENCHMARKS.md).

References
----------
[1] Kirillov et al., "Panoptic Segmentation", CVPR 2019.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.errors import P2MInputError
from p2m_core.evaluation.panoptic_matching import ID_LIMIT, ImageStats, image_pq_stats
from p2m_core.io import PathLike, load_json
from p2m_core.progress import Progress

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
        stats = image_pq_stats(
            gt_ids, gt_segments, pred_ids, pred_segments, self.categories,
            image_id=image_id, scratch=self._scratch,
        )
        self._add(stats)

    def _add(self, stats: ImageStats) -> None:
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

    def one_image(pair: tuple[dict, dict]) -> ImageStats:
        gt_ann, pred_ann = pair
        gt_path = gt_folder / gt_ann["file_name"]
        pred_path = pred_folder / pred_ann["file_name"]
        return image_pq_stats(
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
