"""Pictures of pseudo labels and predictions: image, points and masks side by side (numpy + OpenCV drawing).

:func:`overlay_panel` gives one PNG-ready array per image with three panels,
``[image + points | pseudo masks | ground truth]``. In the mask panels every segment has its own
colour blended over the image, segment boundaries are drawn in white, and every point is drawn
in its segment's colour with a black outline: a disc for a thing point, a square for a stuff
point. A pseudo mask therefore has the colour of the point that owns it, so a reader sees at a
glance which point took which pixels. Unassigned pixels (label -1) are left as the image.

:func:`panoptic_overlay` draws a model's panoptic prediction the same way, one colour per
category and the category names written on the segments (``python -m p2m_core.predict``).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

GOLDEN = 0.618033988749895


def palette(n: int, seed: int = 0) -> np.ndarray:
    """``n`` well-separated RGB colours (uint8 [n, 3]): hues stepped by the golden ratio."""
    colours = np.empty((max(n, 0), 3), dtype=np.uint8)
    for i in range(max(n, 0)):
        hue = (seed * 0.37 + i * GOLDEN) % 1.0
        sat = 0.65 + 0.25 * ((i // 7) % 2)
        colours[i] = np.array(colorsys.hsv_to_rgb(hue, sat, 0.95)) * 255
    return colours


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels whose right or lower neighbour has a different label."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def colour_labels(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """Blend ``colours[label]`` over ``image`` where ``label >= 0``; white label boundaries.

    image : [H, W, 3] uint8; labels : [H, W] int (indices into ``colours``, -1: none).
    """
    out = image.astype(np.float32).copy()
    labels = np.asarray(labels)
    assigned = labels >= 0
    if assigned.any():
        tint = colours[np.clip(labels, 0, len(colours) - 1)].astype(np.float32)
        out[assigned] = (1 - alpha) * out[assigned] + alpha * tint[assigned]
    out[label_boundaries(labels)] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_points(
    canvas: np.ndarray, points_yx: np.ndarray, is_thing: np.ndarray, colours: np.ndarray, radius: int = 3
) -> np.ndarray:
    """Draw point ``i`` at ``points_yx[i]`` in ``colours[i]``: disc (thing) or square (stuff)."""
    canvas = np.ascontiguousarray(canvas.copy())
    for (y, x), thing, colour in zip(np.asarray(points_yx).tolist(), np.asarray(is_thing).tolist(), colours.tolist()):
        centre = (int(x), int(y))
        if thing:
            cv2.circle(canvas, centre, radius + 1, (0, 0, 0), -1, lineType=cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, tuple(int(c) for c in colour), -1, lineType=cv2.LINE_AA)
        else:
            r = radius
            cv2.rectangle(canvas, (centre[0] - r - 1, centre[1] - r - 1), (centre[0] + r + 1, centre[1] + r + 1), (0, 0, 0), -1)
            cv2.rectangle(canvas, (centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r), tuple(int(c) for c in colour), -1)
    return canvas


def point_owner_map(gt_ids: np.ndarray, point_segment_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The ground truth as :func:`overlay_panel`'s ``gt_labels``: each pixel of point i's
    segment -> i, every other pixel -1 (so the GT panel takes the pseudo panel's colours)."""
    gt_ids = np.asarray(gt_ids)
    lookup = {int(s): i for i, s in enumerate(np.asarray(point_segment_ids).tolist())}
    present, inverse = np.unique(gt_ids, return_inverse=True)
    table = np.array([lookup.get(int(v), -1) for v in present.tolist()], dtype=np.int64)
    return table[inverse.reshape(gt_ids.shape)]


def overlay_panel(
    image: np.ndarray,
    pseudo_labels: np.ndarray,
    points_yx: np.ndarray,
    is_thing: np.ndarray,
    gt_labels: np.ndarray | None = None,
    scale: int = 1,
    gap: int = 4,
) -> np.ndarray:
    """``[image + points | pseudo masks + points | ground truth + points]`` as uint8 [H', W', 3].

    Parameters
    ----------
    image : [H, W, 3] uint8 RGB.
    pseudo_labels : [H, W] int, index of the owning point (-1: unassigned).
    points_yx : [m, 2] int point coordinates in the image.
    is_thing : [m] bool.
    gt_labels : [H, W] int, index of the point of each GT segment (-1: void or no point), so the
        GT panel uses the same colours as the pseudo panel; ``None`` omits the GT panel.
    scale : integer nearest-neighbour upscaling (small synthetic images are easier to see).
    gap : white pixels between panels.
    """
    image = np.asarray(image, dtype=np.uint8)
    points_yx = np.asarray(points_yx, dtype=np.int64).reshape(-1, 2)
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        pseudo_labels = np.repeat(np.repeat(pseudo_labels, scale, axis=0), scale, axis=1)
        if gt_labels is not None:
            gt_labels = np.repeat(np.repeat(gt_labels, scale, axis=0), scale, axis=1)
        points_yx = points_yx * scale + scale // 2
    colours = palette(max(len(points_yx), 1))
    radius = max(2, min(image.shape[:2]) // 80)
    panels = [
        draw_points(image, points_yx, is_thing, colours, radius),
        draw_points(colour_labels(image, pseudo_labels, colours), points_yx, is_thing, colours, radius),
    ]
    if gt_labels is not None:
        panels.append(draw_points(colour_labels(image, gt_labels, colours), points_yx, is_thing, colours, radius))
    spacer = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        if row:
            row.append(spacer)
        row.append(panel)
    return np.concatenate(row, axis=1)


def panoptic_overlay(
    image: np.ndarray,
    ids: np.ndarray,
    segments: list[dict],
    categories: list[dict],
    alpha: float = 0.55,
    names: bool = True,
) -> np.ndarray:
    """A panoptic prediction drawn over its image, as uint8 [H, W, 3].

    Each segment is blended in its category's colour (the dataset's ``color``, else a palette
    colour of the category's index); things are jittered per instance so neighbours of one class
    stay apart, and every segment boundary is white, as in :func:`colour_labels`. With
    ``names`` the category name is written at the segment pixel nearest its centroid, so a
    reader needs no legend.

    image : [H, W, 3] uint8 RGB; ids : [H, W] segment ids (0 void); segments : dicts with
    ``id`` and ``category_id``; categories : dicts with ``id``, ``name``, ``isthing``, ``color``.
    """
    image = np.asarray(image, dtype=np.uint8)
    ids = np.asarray(ids)
    by_id = {c["id"]: (index, c) for index, c in enumerate(categories)}
    fallback = palette(len(categories))
    colours = np.zeros((max(len(segments), 1), 3), dtype=np.uint8)
    labels = np.full(ids.shape, -1, dtype=np.int64)
    for k, seg in enumerate(segments):
        index, cat = by_id[seg["category_id"]]
        colour = np.array(cat.get("color") or fallback[index], dtype=np.int64)
        if cat.get("isthing"):
            jitter = np.random.default_rng([k, int(seg["id"])]).integers(-40, 41, size=3)
            colour = colour + jitter
        colours[k] = np.clip(colour, 0, 255)
        labels[ids == seg["id"]] = k
    canvas = np.ascontiguousarray(colour_labels(image, labels, colours, alpha))
    if names:
        scale = max(0.3, min(image.shape[:2]) / 600)
        for k, seg in enumerate(segments):
            ys, xs = np.nonzero(labels == k)
            if len(ys) == 0:
                continue
            nearest = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            origin = (int(xs[nearest]), int(ys[nearest]))
            text = str(by_id[seg["category_id"]][1].get("name", seg["category_id"]))
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
