"""One random point per segment: the point labels Point2Mask trains from.

The paper draws, for every thing instance and every stuff region, one pixel uniformly at random
from its ground-truth mask; crowd segments get no point. This module does that once for a whole
dataset and stores the result, so every experiment trains from the same labels:

.. code-block:: text

    {"format": "p2m-points/1", "seed": 0, "panoptic_json": "<path as given>",
     "images": [{"image_id": ..., "file_name": "<panoptic png>", "height": H, "width": W,
                 "points": [{"segment_id": int, "category_id": int, "isthing": bool,
                             "y": int, "x": int}, ...]}]}

``(y, x)`` are integer pixel coordinates in the panoptic PNG. Each image draws from its own
generator, seeded by ``(seed, sha256(str(image_id)))``, so an image's points do not depend on
which other images are in the file or on their order.

Command line::

    python -m p2m_core.data.points --panoptic-json J --panoptic-dir D --out points.json --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.data.panoptic_format import Category, CocoPanoptic, Segment
from p2m_core.errors import P2MInputError
from p2m_core.progress import Progress
from p2m_core.io import PathLike, atomic_write_json, load_json

POINTS_FORMAT = "p2m-points/1"


def image_rng(seed: int, image_id: Any) -> np.random.Generator:
    """The generator of one image: ``SeedSequence([seed, *sha256(str(image_id))[:16] as 4 words])``.

    A stable hash, not Python's salted ``hash()``, so two processes draw the same points.
    """
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def sample_points_for_image(
    segment_ids: np.ndarray,
    segments: Sequence[Segment],
    rng: np.random.Generator,
    categories: Mapping[int, Category] | None = None,
) -> list[dict]:
    """Draw one pixel uniformly from each non-crowd segment.

    For segment ``s`` with pixel set ``Omega_s`` the point is ``p_s ~ U(Omega_s)``: the pixels of
    the flattened id map are grouped by one stable ``argsort``, and ``p_s`` is the ``u_s``-th
    pixel of its group with ``u_s ~ U{0, ..., |Omega_s| - 1}``, one draw per segment in the order
    of ``segments`` (O(HW log HW) per image, no mask per segment).

    Parameters
    ----------
    segment_ids : [H, W] integer segment id map (0 = void).
    segments : the image's segments (``id``, ``category_id``, ``iscrowd``); crowd ones are skipped.
    rng : the image's generator (see :func:`image_rng`).
    categories : category id -> :class:`Category`; when given, each point carries ``isthing``.

    Returns
    -------
    ``[{"segment_id", "category_id", ["isthing",] "y", "x"}, ...]`` in the order of ``segments``.
    Raises :class:`P2MInputError` for a listed segment with no pixel.
    """
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must be an [H, W] array, got shape {segment_ids.shape}")
    wanted = [s for s in segments if not s.iscrowd]
    if not wanted:
        return []
    width = segment_ids.shape[1]
    flat = segment_ids.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    present, starts, counts = np.unique(sorted_ids, return_index=True, return_counts=True)
    want_ids = np.array([s.id for s in wanted], dtype=sorted_ids.dtype)
    slot = np.searchsorted(present, want_ids)
    found = (slot < len(present)) & (present[np.minimum(slot, len(present) - 1)] == want_ids)
    if not found.all():
        missing = want_ids[~found].tolist()
        raise P2MInputError(f"segments {missing} are listed but have no pixel in the segment id map")
    offsets = rng.integers(0, counts[slot])  # one uniform draw per segment, vectorised
    ys, xs = np.divmod(order[starts[slot] + offsets], width)
    points = []
    for segment, y, x in zip(wanted, ys.tolist(), xs.tolist()):
        point: dict[str, Any] = {"segment_id": int(segment.id), "category_id": int(segment.category_id)}
        if categories is not None:
            point["isthing"] = bool(categories[segment.category_id].isthing)
        point.update(y=int(y), x=int(x))
        points.append(point)
    return points


def sample_image_entry(dataset: CocoPanoptic, record: Any, ids: np.ndarray, seed: int) -> dict:
    """The point-file entry of one image, drawn from its own generator (:func:`image_rng`).

    Split out of :func:`sample_points` so a caller that already holds the image's id map (the
    pseudo-label stage) samples exactly the points the point file would hold, without reading
    the PNG twice. An image without (non-crowd) segments gets no points and a warning.
    """
    height, width = ids.shape
    if (record.height, record.width) not in ((None, None), (height, width)):
        raise P2MInputError(
            f"{dataset.json_path}: image {record.image_id!r} is listed as {record.height}x{record.width} "
            f"but its panoptic PNG {record.png_path} is {height}x{width}"
        )
    points = sample_points_for_image(ids, record.segments, image_rng(seed, record.image_id), dataset.categories)
    if not points:
        what = "no segments" if not record.segments else "only crowd segments"
        warnings.warn(f"image {record.image_id!r} ({record.png_path.name}) has {what}: no points sampled", stacklevel=2)
    return {
        "image_id": record.image_id,
        "file_name": record.png_path.name,
        "height": int(height),
        "width": int(width),
        "points": points,
    }


def sample_points(dataset: CocoPanoptic, seed: int, progress: bool = False) -> dict:
    """Sample one point per non-crowd segment of every image of ``dataset``.

    Returns the point-label structure described in the module docstring. An image without
    (non-crowd) segments gets an empty point list and a warning naming it. A PNG whose segments
    disagree with its ``segments_info`` raises :class:`P2MInputError` (checked by
    :meth:`CocoPanoptic.load_segment_ids`).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise P2MInputError(f"point sampling: 'seed' must be a non-negative integer, got {seed!r}")
    images = []
    bar = Progress("points", len(dataset), progress)
    for done, record in enumerate(dataset.records, start=1):
        images.append(sample_image_entry(dataset, record, dataset.load_segment_ids(record), seed))
        bar.update(done)
    return {
        "format": POINTS_FORMAT,
        "seed": int(seed),
        "panoptic_json": str(dataset.json_path),
        "images": images,
    }


def image_point_arrays(
    entry: Mapping[str, Any],
    record: Any,
    categories: Mapping[int, Category],
    contiguous: Mapping[int, int],
    source: str = "points",
) -> dict[str, np.ndarray]:
    """One image's points as arrays, checked against its panoptic record.

    ``entry`` is the image's item of a (validated) point file, ``record`` its
    :class:`~p2m_core.data.panoptic_format.PanopticRecord`. Checks that the file name and size
    match and that every point names a segment of the image with that segment's category.

    Returns ``points_yx`` int64 [m, 2] (row, column), ``point_labels`` int64 [m] (contiguous
    class index), ``point_is_thing`` bool [m], ``point_segment_ids`` int64 [m].
    """
    where = f"{source}: image {record.image_id!r}"
    if entry["file_name"] != record.png_path.name:
        raise P2MInputError(
            f"{where}: file_name {entry['file_name']!r} does not match the panoptic PNG {record.png_path.name!r}"
        )
    for key, expected in (("height", record.height), ("width", record.width)):
        if expected is not None and entry[key] != expected:
            raise P2MInputError(f"{where}: {key} {entry[key]} differs from the panoptic JSON's {expected}")
    segments = {s.id: s for s in record.segments}
    rows = []
    for index, point in enumerate(entry["points"]):
        sid, cid = int(point["segment_id"]), int(point["category_id"])
        if sid not in segments:
            raise P2MInputError(f"{where}: points[{index}] names segment {sid}, which is not in segments_info")
        if segments[sid].category_id != cid:
            raise P2MInputError(
                f"{where}: points[{index}] has category_id {cid} but segment {sid} has "
                f"category_id {segments[sid].category_id}"
            )
        rows.append((int(point["y"]), int(point["x"]), contiguous[cid], categories[cid].isthing, sid))
    return {
        "points_yx": np.array([r[:2] for r in rows], dtype=np.int64).reshape(-1, 2),
        "point_labels": np.array([r[2] for r in rows], dtype=np.int64),
        "point_is_thing": np.array([r[3] for r in rows], dtype=bool),
        "point_segment_ids": np.array([r[4] for r in rows], dtype=np.int64),
    }


# ---------------------------------------------------------------------------- file format
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(obj: Any, key: str, where: str, check, expected: str) -> Any:
    if not isinstance(obj, dict):
        raise P2MInputError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise P2MInputError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not check(value):
        raise P2MInputError(f"{where}: field '{key}' must be {expected}, got {value!r}")
    return value


def validate_points(points: Any, source: str = "points") -> None:
    """Check the point-label structure; raise :class:`P2MInputError` naming file, field and value.

    Checks the format tag, types, that image ids are unique, that segment ids are unique per
    image, and that every ``(y, x)`` lies inside its image's ``height x width``.
    """
    _field(points, "format", source, lambda v: v == POINTS_FORMAT, f"'{POINTS_FORMAT}'")
    _field(points, "seed", source, lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    _field(points, "panoptic_json", source, lambda v: isinstance(v, str), "a string")
    images = _field(points, "images", source, lambda v: isinstance(v, list), "a list")
    seen_images: set = set()
    for i, image in enumerate(images):
        where = f"{source}: images[{i}]"
        image_id = _field(image, "image_id", where, lambda v: _is_int(v) or isinstance(v, str), "an int or string")
        if image_id in seen_images:
            raise P2MInputError(f"{where}: field 'image_id' repeats {image_id!r}")
        seen_images.add(image_id)
        _field(image, "file_name", where, lambda v: isinstance(v, str) and v != "", "a non-empty string")
        height = _field(image, "height", where, lambda v: _is_int(v) and v > 0, "a positive integer")
        width = _field(image, "width", where, lambda v: _is_int(v) and v > 0, "a positive integer")
        plist = _field(image, "points", where, lambda v: isinstance(v, list), "a list")
        seen_segments: set[int] = set()
        for j, point in enumerate(plist):
            pwhere = f"{where}.points[{j}]"
            sid = _field(point, "segment_id", pwhere, lambda v: _is_int(v) and v > 0, "a positive integer")
            if sid in seen_segments:
                raise P2MInputError(f"{pwhere}: field 'segment_id' repeats {sid} in image {image_id!r}")
            seen_segments.add(sid)
            _field(point, "category_id", pwhere, _is_int, "an integer")
            _field(point, "isthing", pwhere, lambda v: isinstance(v, bool), "true or false")
            _field(point, "y", pwhere, lambda v: _is_int(v) and 0 <= v < height, f"an integer in [0, {height})")
            _field(point, "x", pwhere, lambda v: _is_int(v) and 0 <= v < width, f"an integer in [0, {width})")


def write_points(points: dict, path: PathLike) -> Path:
    """Validate ``points`` and write it as JSON atomically (an interrupted write leaves the old file)."""
    validate_points(points, source="points to write")
    return atomic_write_json(path, points)


def load_points(path: PathLike) -> dict:
    """Read and validate a point-label file; errors name the file, the field and the value."""
    points = load_json(path, what="point-label file")
    validate_points(points, source=str(path))
    return points


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.data.points",
        description="Sample one uniform random point per non-crowd segment of a COCO panoptic dataset.",
    )
    parser.add_argument("--panoptic-json", required=True, help="panoptic JSON")
    parser.add_argument("--panoptic-dir", required=True, help="folder of the panoptic PNGs")
    parser.add_argument("--images-dir", default=None, help="folder of the RGB images (only checked to exist)")
    parser.add_argument("--out", required=True, help="output point-label JSON")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        dataset = CocoPanoptic(args.panoptic_json, image_dir=args.images_dir, png_dir=args.panoptic_dir)
        points = sample_points(dataset, args.seed, progress=not args.quiet)
        write_points(points, args.out)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(len(image["points"]) for image in points["images"])
    print(f"wrote {total} points for {len(points['images'])} images to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
