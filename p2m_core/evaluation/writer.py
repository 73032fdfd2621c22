"""Write panoptic predictions in the COCO panoptic format, and build segments from label maps.

The format is what ``panopticapi`` and :func:`p2m_core.evaluation.pq_compute` read: one PNG
per image whose colour encodes the segment id (``id = R + 256 G + 256^2 B``, 0 = void) and one
JSON::

    {"annotations": [{"image_id", "file_name",
                      "segments_info": [{"id", "category_id", "area", "bbox", "iscrowd": 0}]}],
     "categories": [...]}

plus ``images`` (``{"id", "file_name", "height", "width"}``) when the caller describes its
images, and any further per-segment fields it gives (a model's ``score``, ``isthing``).
``bbox`` is COCO's ``[x, y, width, height]`` of the segment's pixels. Every file is written
atomically (temporary file + rename), so an interrupted run leaves no half-written PNG and
no JSON until :meth:`PanopticPredictionWriter.close`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from p2m_core.data.panoptic_format import coco_segments_info, id2rgb, segment_stats
from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike, atomic_write_json, atomic_write_png

VOID = 0

__all__ = [
    "PanopticPredictionWriter",
    "segment_stats",
    "segments_from_labels",
    "segments_from_semantic_instance",
]


def upsample_nearest(labels: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """Inverse of the mask grid: full-resolution pixel (y, x) takes mask pixel (y // s, x // s)."""
    labels = np.asarray(labels)
    if stride == 1:
        return labels[:height, :width].copy()
    rows = np.arange(height) // stride
    cols = np.arange(width) // stride
    return labels[np.ix_(rows, cols)]


def segments_from_labels(
    labels: np.ndarray, label_to_category: Mapping[int, Any] | Sequence[Any], void_label: int = -1
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Panoptic ids and segments from a map of segment labels and each label's category.

    Use it for query-style outputs: ``labels[y, x]`` is the winning mask/query index and
    ``label_to_category[label]`` its category. Every distinct label becomes one segment with
    id ``1 + rank`` (labels in increasing order); ``void_label`` pixels become void (id 0).

    Parameters
    ----------
    labels : [H, W] integer labels.
    label_to_category : ``label -> category_id`` (a mapping, or a sequence indexed by label).

    Returns
    -------
    ids : [H, W] int64 panoptic ids, 0 = void.
    segments : ``[{'id', 'category_id'}]`` in id order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise P2MInputError(f"labels: expected an HxW integer map, got {labels.dtype} of shape {labels.shape}")
    present, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    code = np.zeros(len(present), dtype=np.int64)
    segments: list[dict[str, Any]] = []
    for index, label in enumerate(present.tolist()):
        if label == void_label:
            continue
        try:
            category = label_to_category[label]
        except (KeyError, IndexError):
            raise P2MInputError(f"labels: label {label} has no entry in label_to_category") from None
        code[index] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": category})
    return code[inverse], segments


def segments_from_semantic_instance(
    semantic: np.ndarray,
    instance: np.ndarray,
    thing_ids: Sequence[int] | set[int],
    void_label: int = 255,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Panoptic ids and segments from a semantic map and an instance map.

    A stuff category gives one segment (its instance values are ignored); a thing category
    gives one segment per distinct instance value > 0. Thing pixels with instance 0 have no
    instance and become void, as do ``void_label`` pixels. Segment ids are ``1..K`` in order of
    (category, instance).

    Parameters
    ----------
    semantic : [H, W] integer category ids.
    instance : [H, W] non-negative integer instance ids (only read on thing pixels).
    thing_ids : the category ids that are things.

    Returns
    -------
    ids : [H, W] int64 panoptic ids, 0 = void.
    segments : ``[{'id', 'category_id'}]``.
    """
    semantic = np.asarray(semantic)
    instance = np.asarray(instance)
    if semantic.shape != instance.shape or semantic.ndim != 2:
        raise P2MInputError(f"semantic {semantic.shape} and instance {instance.shape} must be equal HxW maps")
    if not (np.issubdtype(semantic.dtype, np.integer) and np.issubdtype(instance.dtype, np.integer)):
        raise P2MInputError("semantic and instance maps must be integer arrays")
    if instance.size and instance.min() < 0:
        raise P2MInputError("instance ids must be non-negative")
    is_thing = np.isin(semantic, np.asarray(list(thing_ids), dtype=semantic.dtype))
    inst = np.where(is_thing, instance.astype(np.int64), 0)
    valid = (semantic != void_label) & ~(is_thing & (inst == 0))
    # One key per (category, instance) pair; invalid pixels share the key -1.
    span = int(inst.max()) + 1 if inst.size else 1
    key = np.where(valid, semantic.astype(np.int64) * span + inst, -1)
    present, inverse = np.unique(key, return_inverse=True)
    code = np.zeros(len(present), dtype=np.int64)
    segments: list[dict[str, Any]] = []
    for index, value in enumerate(present.tolist()):
        if value < 0:
            continue
        code[index] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(value // span)})
    return code[inverse.reshape(key.shape)], segments


class PanopticPredictionWriter:
    """Collect predictions image by image; PNGs are written on :meth:`add`, the JSON on :meth:`close`.

    Parameters
    ----------
    out_json : the prediction JSON to write.
    out_folder : the folder for the PNGs (panopticapi's default is ``out_json`` without ``.json``).
    categories : the ``categories`` list to store (dicts with ``id``, ``isthing``, ...), usually
        the ground truth's; predicted ``category_id`` values must be among them.

    Used as a context manager, the JSON is written when the block ends without an exception
    (a failed run leaves no JSON that would look complete).
    """

    def __init__(self, out_json: PathLike, out_folder: PathLike, categories: Sequence[Mapping[str, Any]]) -> None:
        self.out_json = Path(out_json)
        self.out_folder = Path(out_folder)
        self.categories = [dict(cat) for cat in categories]
        self._category_ids = {cat.get("id") for cat in self.categories}
        self._annotations: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []
        self._image_ids: set[Any] = set()
        self._file_names: set[str] = set()
        self.closed = False

    def add(
        self,
        image_id: Any,
        file_name: str,
        pred_ids: np.ndarray,
        segments: Sequence[Mapping[str, Any]],
        image_info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``out_folder/file_name`` (the id map as PNG) and record its annotation.

        ``segments`` are ``{'id', 'category_id'}`` dicts; ``area``, ``bbox`` and ``iscrowd``
        are computed here, other keys (e.g. ``score``, ``isthing``) are kept as given. Every
        non-zero id of ``pred_ids`` must be listed; a listed segment with no pixel is dropped
        with a warning (it could not be evaluated). ``image_info`` (e.g. the input image's
        ``file_name``, ``height``, ``width``) becomes this image's entry of the JSON's
        ``images`` list, with ``id`` set to ``image_id``. Returns the annotation.
        """
        if self.closed:
            raise RuntimeError(f"writer for {self.out_json} is closed")
        where = f"prediction for image id {image_id!r} ({file_name})"
        if image_id in self._image_ids:
            raise P2MInputError(f"{where}: image id already added")
        if not str(file_name).lower().endswith(".png") or Path(file_name).name != file_name:
            raise P2MInputError(f"{where}: file_name must be a plain '*.png' name")
        if file_name in self._file_names:
            raise P2MInputError(f"{where}: file name already used by another image")
        ids = np.asarray(pred_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise P2MInputError(f"{where}: expected an HxW integer id map, got {ids.dtype} of shape {ids.shape}")
        listed: dict[int, Any] = {}
        extras: dict[int, dict[str, Any]] = {}
        for index, seg in enumerate(segments):
            if "id" not in seg or "category_id" not in seg:
                raise P2MInputError(f"{where}: segments[{index}] needs 'id' and 'category_id'")
            sid = int(seg["id"])
            if sid == VOID or sid in listed:
                raise P2MInputError(f"{where}: segments[{index}] has invalid or duplicate id {sid}")
            if seg["category_id"] not in self._category_ids:
                raise P2MInputError(f"{where}: segment {sid} has unknown category_id {seg['category_id']!r}")
            listed[sid] = seg["category_id"]
            extras[sid] = {k: v for k, v in seg.items() if k not in ("id", "category_id", "area", "bbox", "iscrowd")}
        present = np.unique(ids)
        if present.size and (present[0] < 0 or present[-1] >= 256**3):
            raise P2MInputError(f"{where}: ids must lie in [0, 256^3) to fit an RGB PNG")
        unlisted = sorted(set(present.tolist()) - set(listed) - {VOID})
        if unlisted:
            raise P2MInputError(f"{where}: ids {unlisted[:10]} are in the map but not in segments")
        keys = list(listed)
        segments_info = []
        for seg in coco_segments_info(ids, keys, [listed[sid] for sid in keys]):
            if seg["area"] == 0:
                warnings.warn(f"{where}: segment {seg['id']} has no pixel and is dropped", stacklevel=2)
                continue
            segments_info.append({**seg, **extras[seg["id"]]})
        atomic_write_png(self.out_folder / file_name, id2rgb(ids))
        annotation = {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}
        self._annotations.append(annotation)
        if image_info is not None:
            self._images.append({**dict(image_info), "id": image_id})
        self._image_ids.add(image_id)
        self._file_names.add(file_name)
        return annotation

    def close(self) -> Path:
        """Write the JSON (``annotations`` in insertion order, ``categories``, and ``images``
        when any was described); idempotent."""
        if not self.closed:
            content: dict[str, Any] = {"images": self._images} if self._images else {}
            content.update(annotations=self._annotations, categories=self.categories)
            atomic_write_json(self.out_json, content)
            self.closed = True
        return self.out_json

    def __len__(self) -> int:
        return len(self._annotations)

    def __enter__(self) -> PanopticPredictionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
