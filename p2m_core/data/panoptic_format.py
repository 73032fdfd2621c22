"""Reader for the COCO panoptic format (COCO panoptic 2017, VOC panoptic, our synthetic data).

The format is a folder of RGB images, a folder of PNGs whose colour encodes a segment id
(``id = R + 256 G + 256^2 B``, 0 = void) and a JSON file with ``images``, ``annotations``
(one per image, with ``segments_info``) and ``categories`` (with ``isthing``).

:class:`CocoPanoptic` checks the JSON once when it is opened (unknown category ids, images
without annotation, missing files) and checks each PNG against its ``segments_info`` when it
is read, so a broken dataset fails on the item that is broken, with its name in the message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike, load_json

VOID = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Decode an HxWx3 panoptic PNG into HxW int64 segment ids."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 colour array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode HxW segment ids (< 256^3) as an HxWx3 uint8 panoptic PNG array."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("segment ids must lie in [0, 256^3)")
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // (256 * 256)
    return rgb


def segment_stats(ids: np.ndarray, segment_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel area and COCO box ``[x, y, w, h]`` of each segment of an id map.

    Parameters
    ----------
    ids : [H, W] integer segment ids.
    segment_ids : [K] ids to measure.

    Returns
    -------
    area : [K] int64 (0 for an id absent from ``ids``).
    bbox : [K, 4] int64 ``[x_min, y_min, x_max - x_min + 1, y_max - y_min + 1]`` (zeros when absent).
    """
    ids = np.asarray(ids)
    keys = np.asarray(segment_ids, dtype=np.int64)
    present, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    area_present = np.bincount(inverse.ravel(), minlength=len(present))
    slices = ndimage.find_objects(inverse + 1)  # labels 1..len(present)
    area = np.zeros(len(keys), dtype=np.int64)
    bbox = np.zeros((len(keys), 4), dtype=np.int64)
    position = np.searchsorted(present, keys)
    for k, pos in enumerate(position):
        if pos < len(present) and present[pos] == keys[k] and slices[pos] is not None:
            rows, cols = slices[pos]
            area[k] = area_present[pos]
            bbox[k] = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    return area, bbox


def coco_segments_info(
    ids: np.ndarray, segment_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """``segments_info`` entries (``id, category_id, iscrowd=0, area, bbox``) measured on ``ids``.

    Area and box come from the pixels, as the COCO panoptic format defines them, so every
    writer of the format (synthetic data, VOC conversion, predictions) measures them one way.
    """
    area, bbox = segment_stats(ids, segment_ids)
    return [
        {"id": int(sid), "category_id": cid, "iscrowd": 0, "area": int(a), "bbox": [int(v) for v in box]}
        for sid, cid, a, box in zip(segment_ids, category_ids, area, bbox)
    ]


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    iscrowd: bool
    area: int | None = None
    bbox: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class PanopticRecord:
    """One image of a panoptic dataset: its files and its segments (no pixels loaded)."""

    image_id: Any
    image_path: Path
    png_path: Path
    height: int | None
    width: int | None
    segments: tuple[Segment, ...]


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise P2MInputError(f"{where}: expected an object, got {type(mapping).__name__}")
    if key not in mapping:
        raise P2MInputError(f"{where}: missing field '{key}'")
    return mapping[key]


def parse_categories(raw: Any, source: str) -> dict[int, Category]:
    """Parse a ``categories`` list, rejecting duplicates and missing ``isthing``."""
    if not isinstance(raw, list):
        raise P2MInputError(f"{source}: field 'categories' must be a list")
    categories: dict[int, Category] = {}
    for index, item in enumerate(raw):
        where = f"{source}: categories[{index}]"
        cid = _require(item, "id", where)
        isthing = _require(item, "isthing", where)
        if isthing not in (0, 1, True, False):
            raise P2MInputError(f"{where}: field 'isthing' must be 0 or 1, got {isthing!r}")
        if cid in categories:
            raise P2MInputError(f"{where}: duplicate category id {cid}")
        color = item.get("color")
        categories[int(cid)] = Category(
            id=int(cid),
            name=str(item.get("name", cid)),
            isthing=bool(isthing),
            color=tuple(int(c) for c in color) if color is not None else None,
        )
    if not categories:
        raise P2MInputError(f"{source}: field 'categories' is empty")
    return categories


class CocoPanoptic:
    """A COCO-panoptic-format dataset on disk.

    Parameters
    ----------
    json_path : path to the panoptic JSON (``images``, ``annotations``, ``categories``).
    image_dir : folder of RGB images named by ``images[].file_name``.
    png_dir : folder of panoptic PNGs named by ``annotations[].file_name``; defaults to the
        JSON path without ``.json``, as the COCO panoptic API does.
    check_files : stat every image and PNG at open time (cheap; turn off for huge remote sets).
    """

    def __init__(
        self,
        json_path: PathLike,
        image_dir: PathLike | None = None,
        png_dir: PathLike | None = None,
        check_files: bool = True,
    ) -> None:
        self.json_path = Path(json_path)
        raw = load_json(self.json_path, what="panoptic JSON")
        source = str(self.json_path)
        self.png_dir = Path(png_dir) if png_dir is not None else self.json_path.with_suffix("")
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.categories = parse_categories(_require(raw, "categories", source), source)
        images = _require(raw, "images", source)
        annotations = _require(raw, "annotations", source)
        image_info: dict[Any, dict] = {}
        for index, image in enumerate(images):
            iid = _require(image, "id", f"{source}: images[{index}]")
            image_info[iid] = image
        self.records: list[PanopticRecord] = []
        for index, ann in enumerate(annotations):
            where = f"{source}: annotations[{index}]"
            iid = _require(ann, "image_id", where)
            png_name = _require(ann, "file_name", where)
            if iid not in image_info:
                raise P2MInputError(f"{where}: image_id {iid!r} is not listed in 'images'")
            segments = self._parse_segments(_require(ann, "segments_info", where), where, iid)
            image = image_info[iid]
            image_name = image.get("file_name", Path(png_name).with_suffix(".jpg").name)
            record = PanopticRecord(
                image_id=iid,
                image_path=(self.image_dir / image_name) if self.image_dir else Path(image_name),
                png_path=self.png_dir / png_name,
                height=image.get("height"),
                width=image.get("width"),
                segments=segments,
            )
            if check_files:
                if self.image_dir is not None and not record.image_path.is_file():
                    raise P2MInputError(f"{where}: image file not found: {record.image_path}")
                if not record.png_path.is_file():
                    raise P2MInputError(f"{where}: panoptic PNG not found: {record.png_path}")
            if not segments:
                warnings.warn(f"{where}: image {iid!r} has no segments", stacklevel=2)
            self.records.append(record)
        self._by_id = {r.image_id: r for r in self.records}

    def _parse_segments(self, raw: Any, where: str, image_id: Any) -> tuple[Segment, ...]:
        if not isinstance(raw, list):
            raise P2MInputError(f"{where}: field 'segments_info' must be a list")
        segments = []
        seen: set[int] = set()
        for index, item in enumerate(raw):
            swhere = f"{where}.segments_info[{index}]"
            sid = int(_require(item, "id", swhere))
            cid = int(_require(item, "category_id", swhere))
            if cid not in self.categories:
                raise P2MInputError(
                    f"{swhere}: image {image_id!r} segment {sid} has unknown category_id {cid}"
                )
            if sid in seen or sid == VOID:
                raise P2MInputError(f"{swhere}: image {image_id!r} has invalid or duplicate segment id {sid}")
            seen.add(sid)
            bbox = item.get("bbox")
            segments.append(
                Segment(
                    id=sid,
                    category_id=cid,
                    iscrowd=bool(item.get("iscrowd", 0)),
                    area=item.get("area"),
                    bbox=tuple(bbox) if bbox is not None else None,
                )
            )
        return tuple(segments)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PanopticRecord:
        return self.records[index]

    def record(self, image_id: Any) -> PanopticRecord:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise P2MInputError(f"{self.json_path}: no annotation for image id {image_id!r}") from None

    @property
    def thing_ids(self) -> list[int]:
        return [c.id for c in self.categories.values() if c.isthing]

    @property
    def stuff_ids(self) -> list[int]:
        return [c.id for c in self.categories.values() if not c.isthing]

    def contiguous_ids(self) -> dict[int, int]:
        """Category id -> channel index 0..C-1, in JSON order (the model's class axis)."""
        return {cid: index for index, cid in enumerate(self.categories)}

    def load_image(self, record: PanopticRecord) -> np.ndarray:
        """The RGB image as HxWx3 uint8."""
        from PIL import Image

        if not record.image_path.is_file():
            raise P2MInputError(f"image file not found: {record.image_path} (image id {record.image_id!r})")
        with Image.open(record.image_path) as img:
            return np.asarray(img.convert("RGB"))

    def load_segment_ids(self, record: PanopticRecord, validate: bool = True) -> np.ndarray:
        """The panoptic PNG decoded to HxW int64 segment ids (0 = void).

        With ``validate`` the ids present in the PNG must equal the ids in ``segments_info``:
        a segment listed in the JSON but absent from the PNG, or the reverse, is an error.
        """
        from PIL import Image

        if not record.png_path.is_file():
            raise P2MInputError(f"panoptic PNG not found: {record.png_path} (image id {record.image_id!r})")
        with Image.open(record.png_path) as img:
            ids = rgb2id(np.asarray(img.convert("RGB")))
        if validate:
            present = set(np.unique(ids).tolist()) - {VOID}
            listed = {s.id for s in record.segments}
            if present - listed:
                raise P2MInputError(
                    f"{record.png_path}: segment ids {sorted(present - listed)} are in the PNG "
                    f"but not in segments_info of image {record.image_id!r}"
                )
            if listed - present:
                raise P2MInputError(
                    f"{record.png_path}: segment ids {sorted(listed - present)} are in segments_info "
                    f"of image {record.image_id!r} but not in the PNG"
                )
        return ids
