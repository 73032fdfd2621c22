"""Training augmentations that move labelled points together with the image.

A *sample* is a plain dict::

    image              [H, W, 3] uint8   RGB
    points_yx          [m, 2]    int64   (row, column) of each labelled point
    point_labels       [m]       int64   contiguous class index of the point's category
    point_is_thing     [m]       bool
    point_segment_ids  [m]       int64   panoptic id of the segment the point was drawn from
    segment_ids        [H, W]    int64   panoptic ground truth, 0 = void (optional)

Every transform is a callable ``t(sample, rng) -> sample`` that returns a new dict (the input
is not modified) and takes all of its random choices from the ``numpy.random.Generator`` it
is given, so a chain is reproducible from the generator's seed alone.

The invariant the chain keeps, and that the tests check: *when ground truth is present, every
point that survives lies inside its own segment in the transformed ground truth*. Flip and
crop keep it by construction (pixels move exactly, out-of-window points are dropped). Resizing
cannot: a thin segment may lose the pixel a point lands on, or vanish, so
:class:`ResizeShortestEdge` snaps such a point to the nearest pixel of its segment and drops
it when the segment is gone (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

#: Per-point arrays that are filtered together when points are dropped.
POINT_KEYS = ("points_yx", "point_labels", "point_is_thing", "point_segment_ids")


def select_points(sample: Sample, keep: np.ndarray) -> Sample:
    """A copy of ``sample`` keeping only the points where the bool mask ``keep`` [m] is true."""
    out = dict(sample)
    for key in POINT_KEYS:
        if key in out:
            out[key] = np.asarray(out[key])[keep]
    return out


def _nearest_source_index(new_len: int, old_len: int) -> np.ndarray:
    """Nearest-neighbour source index of each destination pixel, pixel-centre aligned.

    ``src(i) = floor((i + 0.5) * old / new)``, the pixel whose area holds the centre of
    destination pixel ``i``. Shape [new_len], values in [0, old_len).
    """
    idx = np.floor((np.arange(new_len) + 0.5) * (old_len / new_len)).astype(np.int64)
    return np.clip(idx, 0, old_len - 1)


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """An ``[H, W]`` label map at ``height x width`` by pixel-centre nearest neighbour
    (:func:`_nearest_source_index`): labels are never blended, and the same rule maps ground
    truth into a resized image and predictions back out of one."""
    labels = np.asarray(labels)
    rows = _nearest_source_index(height, labels.shape[0])
    cols = _nearest_source_index(width, labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def _map_coordinate(coord: np.ndarray, old_len: int, new_len: int) -> np.ndarray:
    """Destination pixel holding the centre of source pixel ``coord``: ``floor((c + 0.5) new / old)``."""
    mapped = np.floor((coord + 0.5) * (new_len / old_len)).astype(np.int64)
    return np.clip(mapped, 0, new_len - 1)


def snap_points_to_segments(
    points_yx: np.ndarray, point_segment_ids: np.ndarray, segment_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move each point that is off its segment to the segment's nearest pixel.

    Parameters
    ----------
    points_yx : [m, 2] int, inside the [H, W] grid.
    point_segment_ids : [m] int, the segment each point belongs to.
    segment_ids : [H, W] int panoptic ids.

    Returns
    -------
    points_yx : [m, 2] int64, every point with a surviving segment now on it; a point already
        on its segment is not moved. The nearest pixel is by Euclidean distance, ties broken
        by raster order (first row, then column), so the result is deterministic.
    keep : [m] bool, false where the point's segment has no pixel left.
    """
    points = np.array(points_yx, dtype=np.int64).reshape(-1, 2)
    keep = np.ones(len(points), dtype=bool)
    if len(points) == 0:
        return points, keep
    on_segment = segment_ids[points[:, 0], points[:, 1]] == point_segment_ids
    for index in np.flatnonzero(~on_segment):
        ys, xs = np.nonzero(segment_ids == point_segment_ids[index])
        if len(ys) == 0:
            keep[index] = False
            continue
        dist2 = (ys - points[index, 0]) ** 2 + (xs - points[index, 1]) ** 2
        best = int(np.argmin(dist2))
        points[index] = (ys[best], xs[best])
    return points, keep


class ResizeShortestEdge:
    """Resize so that the shorter side is a random length in ``[min_size, max_size]``.

    The short side ``s`` is drawn uniformly from ``min_size, min_size + step, ..., <= max_size``
    (``min_size + step * rng.integers(0, count)``: with ``step = 1`` the same draw as
    ``rng.integers(min_size, max_size + 1)``; the release's COCO scales are 480..800 in steps of
    32); the scale is ``s / min(H, W)``, reduced if needed so that the longer side
    does not exceed ``max_long_side``. The new size is ``round(H * scale), round(W * scale)``.

    - image: bilinear (``cv2.INTER_LINEAR``, pixel-centre aligned);
    - ground truth ``segment_ids``: nearest neighbour, ``src(i) = floor((i + 0.5) H / H')``;
    - points: to the resized pixel holding the centre of the original pixel,
      ``y' = floor((y + 0.5) H' / H)``. When ground truth is present and the point's segment
      does not cover that pixel after resizing (downscaling can drop thin parts), the point is
      snapped to the nearest pixel of its segment (:func:`snap_points_to_segments`); when the
      segment vanished entirely, the point is dropped. Without ground truth points are only
      mapped.

    Parameters
    ----------
    min_size, max_size : range of the shorter side, inclusive.
    max_long_side : cap of the longer side; ``None`` uses detectron2's COCO ratio,
        ``ceil(max_size * 1333 / 800)``, so that the cap scales with the chosen sizes.
    step : spacing of the short sides drawn.
    """

    def __init__(self, min_size: int, max_size: int, max_long_side: int | None = None, step: int = 1) -> None:
        if min_size < 1 or max_size < min_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.step = int(step)
        self.max_long_side = (
            int(max_long_side) if max_long_side is not None else math.ceil(max_size * 1333 / 800)
        )

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """(H', W') for an image of (height, width) whose short side should become ``short``."""
        scale = short / min(height, width)
        if max(height, width) * scale > self.max_long_side:
            scale = self.max_long_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        height, width = image.shape[:2]
        short = self.min_size + self.step * int(rng.integers(0, (self.max_size - self.min_size) // self.step + 1))
        new_h, new_w = self.output_size(height, width, short)
        out = dict(sample)
        if (new_h, new_w) == (height, width):
            return out
        out["image"] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        points = np.asarray(sample["points_yx"], dtype=np.int64).reshape(-1, 2)
        mapped = np.stack(
            [_map_coordinate(points[:, 0], height, new_h), _map_coordinate(points[:, 1], width, new_w)],
            axis=1,
        )
        out["points_yx"] = mapped
        if "segment_ids" in sample:
            resized_gt = resize_nearest(sample["segment_ids"], new_h, new_w)
            out["segment_ids"] = resized_gt
            snapped, keep = snap_points_to_segments(
                mapped, np.asarray(sample["point_segment_ids"]), resized_gt
            )
            out["points_yx"] = snapped
            out = select_points(out, keep)
        return out

    def __repr__(self) -> str:
        return (
            f"ResizeShortestEdge(min_size={self.min_size}, max_size={self.max_size}, "
            f"max_long_side={self.max_long_side}, step={self.step})"
        )


class RandomFlip:
    """Mirror left-right with probability ``prob`` (one ``rng.random()`` draw per call).

    Exact: pixel (y, x) goes to (y, W - 1 - x) in the image, the ground truth and the points.
    """

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = dict(sample)
        if not rng.random() < self.prob:
            return out
        width = sample["image"].shape[1]
        out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        if "segment_ids" in sample:
            out["segment_ids"] = np.ascontiguousarray(np.asarray(sample["segment_ids"])[:, ::-1])
        points = np.array(sample["points_yx"], dtype=np.int64).reshape(-1, 2)
        points[:, 1] = width - 1 - points[:, 1]
        out["points_yx"] = points
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class RandomCrop:
    """Crop a ``height x width`` window at a uniformly random position.

    The window is clamped to the image (an image smaller than the window is kept whole along
    that side; nothing is padded). The offsets are ``rng.integers(0, H - h + 1)`` and
    ``rng.integers(0, W - w + 1)``. A point outside the window is dropped, never moved: moving
    it would put a label where the annotator did not click.
    """

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"crop size must be positive, got {height}x{width}")
        self.height = int(height)
        self.width = int(width)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        height, width = image.shape[:2]
        crop_h, crop_w = min(self.height, height), min(self.width, width)
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        out = dict(sample)
        out["image"] = np.ascontiguousarray(image[top : top + crop_h, left : left + crop_w])
        if "segment_ids" in sample:
            gt = np.asarray(sample["segment_ids"])
            out["segment_ids"] = np.ascontiguousarray(gt[top : top + crop_h, left : left + crop_w])
        points = np.asarray(sample["points_yx"], dtype=np.int64).reshape(-1, 2) - np.array([top, left])
        inside = (
            (points[:, 0] >= 0) & (points[:, 0] < crop_h) & (points[:, 1] >= 0) & (points[:, 1] < crop_w)
        )
        out["points_yx"] = points
        return select_points(out, inside)

    def __repr__(self) -> str:
        return f"RandomCrop(height={self.height}, width={self.width})"


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"
