"""A synthetic panoptic dataset in the COCO panoptic format, made for point supervision.

Point2Mask's hard case is several instances of one class that touch or overlap: a point per
instance says *that* there are two discs, the optimal transport has to decide *where* one
ends. Every image here is built for that case:

- **stuff** (sky, grass, wall, water): 2-4 textured regions tiling the background, a Voronoi
  partition of the image whose borders are bent by a smooth random warp;
- **things** (disc, box, star): 3-7 instances drawn back to front (z-order = occlusion order),
  most of them placed against an earlier instance *of the same class*, often with a similar or
  identical colour, so that neither colour nor edges alone separate them.

Layout on disk (COCO's): ``<out>/panoptic_<split>.json``, ``<out>/panoptic_<split>/*.png``
(segment id = R + 256 G + 256^2 B) and ``<out>/images/<split>/*.png`` (RGB, lossless), for
``split`` in ``train``, ``val`` and, when asked for, ``test`` (held out: settings are chosen on
val). Every listed segment is visible with at least :func:`min_segment_area` pixels, fully
occluded instances are not listed, and every image has at least one stuff and one thing segment.

Each image comes from its own ``numpy`` generator seeded by ``(seed, split, index)``, so image
``i`` is the same whatever the number of images generated, and the same arguments give the
same bytes.

Command line::

    python -m p2m_core.data.synthetic --out data/synthetic --num-train 48 --num-val 16 --num-test 0 \\
        --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import colorsys
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from p2m_core.config import SPLITS, SyntheticConfig, coco_layout
from p2m_core.data.panoptic_format import coco_segments_info, id2rgb
from p2m_core.errors import P2MInputError
from p2m_core.progress import Progress
from p2m_core.io import PathLike, atomic_write_json, atomic_write_png

MIN_SIZE = 32

SYNTHETIC_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "box", "isthing": 1, "color": [0, 80, 200], "supercategory": "shape"},
    {"id": 3, "name": "star", "isthing": 1, "color": [250, 170, 30], "supercategory": "shape"},
    {"id": 4, "name": "sky", "isthing": 0, "color": [135, 206, 235], "supercategory": "background"},
    {"id": 5, "name": "grass", "isthing": 0, "color": [60, 160, 60], "supercategory": "background"},
    {"id": 6, "name": "wall", "isthing": 0, "color": [150, 100, 80], "supercategory": "background"},
    {"id": 7, "name": "water", "isthing": 0, "color": [30, 90, 150], "supercategory": "background"},
]

_THING_IDS = [c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]]
_STUFF_IDS = [c["id"] for c in SYNTHETIC_CATEGORIES if not c["isthing"]]
_NAMES = {c["id"]: c["name"] for c in SYNTHETIC_CATEGORIES}
# Per-class hue (0..1) of the things; each image shifts it a little, each instance a little more.
_THING_HUE = {"disc": 0.0, "box": 0.6, "star": 0.13}


def min_segment_area(size: int) -> int:
    """Smallest visible area (pixels) a segment may keep: ``max(10, 0.001 * size^2)``.

    Anything smaller is an occlusion sliver, not a sensible target for a point label.
    """
    return max(10, int(0.001 * size * size))


# ---------------------------------------------------------------------------- randomness
def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a ``SeedSequence`` over ``(seed, crc32(split), index)``.

    A stable hash (``zlib.crc32``) rather than Python's salted ``hash()``, so runs agree.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise, HxW float32 with roughly unit spread: a ``cells x cells`` grid of
    Gaussian values upsampled bicubically."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0.0, amount, 3), 0, 255).astype(np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.asarray(rgb, np.float32) * 255


# ---------------------------------------------------------------------------- stuff
def _stuff_texture(name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """An HxWx3 float32 texture for one stuff class, covering the whole image."""
    h, w = yy.shape
    if name == "sky":  # vertical gradient with soft clouds
        top = _jitter_rgb(rng, (90, 150, 230), 15)
        bottom = _jitter_rgb(rng, (190, 220, 245), 12)
        t = (yy / max(h - 1, 1))[..., None]
        clouds = np.clip(_smooth_noise(rng, h, w, 4), 0, None)[..., None] * rng.uniform(15, 40)
        tex = top * (1 - t) + bottom * t + clouds
    elif name == "grass":  # fine, vertically streaked noise
        base = _jitter_rgb(rng, (70, 150, 55), 18)
        streaks = cv2.resize(rng.standard_normal((max(h // 6, 2), w)).astype(np.float32), (w, h))
        fine = rng.standard_normal((h, w)).astype(np.float32)
        shade = 1 + 0.12 * streaks + 0.08 * fine + 0.1 * _smooth_noise(rng, h, w, 3)
        tex = base * shade[..., None]
    elif name == "wall":  # bricks in offset rows with darker mortar
        base = _jitter_rgb(rng, (160, 95, 75), 20)
        mortar = _jitter_rgb(rng, (120, 115, 110), 10)
        bh = rng.uniform(0.05, 0.09) * h
        bw = bh * rng.uniform(1.8, 2.6)
        row = np.floor(yy / bh)
        shifted = xx + (row % 2) * bw / 2
        edge = (yy - row * bh < 1.0) | (shifted - np.floor(shifted / bw) * bw < 1.0)
        brick_id = row * 7919 + np.floor(shifted / bw)
        brick_shade = 1 + 0.08 * np.sin(brick_id * 12.9898)  # per-brick brightness, deterministic
        tex = base * brick_shade[..., None] * (1 + 0.05 * rng.standard_normal((h, w, 1)).astype(np.float32))
        tex = np.where(edge[..., None], mortar, tex)
    elif name == "water":  # horizontal ripples whose phase wanders
        base = _jitter_rgb(rng, (35, 95, 160), 15)
        freq = rng.uniform(0.25, 0.6)
        phase = 3.0 * _smooth_noise(rng, h, w, 3)
        ripples = np.sin(yy * freq + phase + 0.05 * xx)
        tex = base * (1 + 0.15 * ripples)[..., None]
    else:  # pragma: no cover - the category list is fixed above
        raise ValueError(f"unknown stuff class {name!r}")
    return tex.astype(np.float32)


def _stuff_distances(rng: np.random.Generator, k: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Squared distances, [k, H, W], from warped pixel coordinates to k random seeds.

    The argmin over seeds is a Voronoi partition; warping the coordinates by smooth noise and a
    sine bends the straight Voronoi borders into wavy ones.
    """
    h, w = yy.shape
    amp = rng.uniform(0.05, 0.12) * h
    wave = 0.5 * amp * np.sin(xx * rng.uniform(0.05, 0.2) + rng.uniform(0, 6.3))
    wy = yy + amp * _smooth_noise(rng, h, w, 3) + wave
    wx = xx + amp * _smooth_noise(rng, h, w, 3)
    seeds = rng.uniform(0.1, 0.9, size=(k, 2)) * np.array([h, w], np.float32)
    return (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2


# ---------------------------------------------------------------------------- things
@dataclass
class _Thing:
    category_id: int
    cy: float
    cx: float
    radius: float
    colour: np.ndarray
    mask: np.ndarray | None = None  # HxW bool
    texture: np.ndarray | None = None  # HxWx3 float32


def _polygon_mask(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """Fill a float polygon [N, 2] (x, y) with 4 bits of sub-pixel precision."""
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([cx, cy])


def _thing_mask(name: str, thing: _Thing, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    r, angle = thing.radius, rng.uniform(0, np.pi)
    if name == "disc":  # rotated ellipse
        aspect = rng.uniform(0.6, 1.0)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([r * np.cos(t), aspect * r * np.sin(t)], axis=1)
    elif name == "box":  # rotated rounded rectangle
        hw, hh = r, r * rng.uniform(0.55, 1.0)
        rc = rng.uniform(0.0, 0.5) * min(hw, hh)
        # (arc centre x, arc centre y, start angle / pi) of the four corners, counter-clockwise
        corners = [
            (hw - rc, hh - rc, 0.0),
            (-hw + rc, hh - rc, 0.5),
            (-hw + rc, -hh + rc, 1.0),
            (hw - rc, -hh + rc, 1.5),
        ]
        arcs = []
        for x0, y0, start in corners:
            t = (start + np.linspace(0, 0.5, 6)) * np.pi
            arcs.append(np.stack([x0 + rc * np.cos(t), y0 + rc * np.sin(t)], axis=1))
        pts = np.concatenate(arcs)
    elif name == "star":  # 4-7 spikes
        spikes = int(rng.integers(4, 8))
        inner = rng.uniform(0.4, 0.65)
        t = np.arange(2 * spikes) * np.pi / spikes
        radii = np.where(np.arange(2 * spikes) % 2 == 0, r, inner * r)
        pts = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    else:  # pragma: no cover
        raise ValueError(f"unknown thing class {name!r}")
    return _polygon_mask(_rotate(pts, angle, thing.cx, thing.cy), h, w)


def _thing_texture(thing: _Thing, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Instance texture: its colour, a linear shading, pixel noise and sometimes stripes."""
    angle = rng.uniform(0, 2 * np.pi)
    proj = ((xx - thing.cx) * np.cos(angle) + (yy - thing.cy) * np.sin(angle)) / thing.radius
    shade = 1 + rng.uniform(0.0, 0.25) * proj
    if rng.random() < 0.3:
        perp = (-(xx - thing.cx) * np.sin(angle) + (yy - thing.cy) * np.cos(angle)) / thing.radius
        shade = shade * (1 + 0.12 * np.sign(np.sin(perp * rng.uniform(4, 9))))
    noise = rng.normal(0, rng.uniform(0, 10), yy.shape).astype(np.float32)
    return (thing.colour * shade[..., None] + noise[..., None]).astype(np.float32)


def _sample_things(rng: np.random.Generator, size: int) -> list[_Thing]:
    """3-7 instances in z-order. About 65% are placed against an earlier instance of the same
    class (overlapping or touching it), and a third of those copy its colour exactly."""
    class_hue = {cid: _THING_HUE[_NAMES[cid]] + rng.uniform(-0.06, 0.06) for cid in _THING_IDS}
    things: list[_Thing] = []
    for _ in range(int(rng.integers(3, 8))):
        radius = max(4.0, rng.uniform(0.08, 0.19) * size)
        if things and rng.random() < 0.65:
            anchor = things[int(rng.integers(max(0, len(things) - 3), len(things)))]  # a recent one
            direction = rng.uniform(0, 2 * np.pi)
            reach = (anchor.radius + radius) * rng.uniform(0.55, 0.9)
            cy = float(np.clip(anchor.cy + reach * np.sin(direction), 0, size - 1))
            cx = float(np.clip(anchor.cx + reach * np.cos(direction), 0, size - 1))
            cid = anchor.category_id
            if rng.random() < 0.35:
                colour = anchor.colour.copy()
            else:
                colour = np.clip(anchor.colour + rng.normal(0, 14, 3), 0, 255).astype(np.float32)
        else:
            cid = int(rng.choice(_THING_IDS))
            cy, cx = (float(v) for v in rng.uniform(0.12, 0.88, 2) * size)
            hue = class_hue[cid] + rng.uniform(-0.03, 0.03)
            colour = _hsv(hue, rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.95))
        things.append(_Thing(cid, cy, cx, radius, colour.astype(np.float32)))
    return things


# ---------------------------------------------------------------------------- one image
def _compose(
    dist: np.ndarray, stuff_keep: list[int], things: list[_Thing], thing_keep: list[int]
) -> np.ndarray:
    """Layer index map HxW: ``s`` < len(stuff) for stuff region s, ``len(dist) + t`` for thing t."""
    keep = np.asarray(stuff_keep)
    layers = keep[np.argmin(dist[keep], axis=0)]
    for t in thing_keep:
        layers[things[t].mask] = len(dist) + t
    return layers


def generate_image(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One synthetic image: ``(rgb HxWx3 uint8, segment ids HxW int64, segments_info)``.

    The segments are listed back to front (stuff first, then things in z-order); ids are
    distinct random integers in [1, 256^3). Depends only on ``(seed, split, index, size)``.
    """
    rng = image_rng(seed, split, index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    min_area = min_segment_area(size)

    stuff_classes = [int(c) for c in rng.choice(_STUFF_IDS, size=int(rng.integers(2, 5)), replace=False)]
    dist = _stuff_distances(rng, len(stuff_classes), yy, xx)
    stuff_tex = [_stuff_texture(_NAMES[c], rng, yy, xx) for c in stuff_classes]
    things = _sample_things(rng, size)
    for thing in things:
        thing.mask = _thing_mask(_NAMES[thing.category_id], thing, rng, size, size)
        thing.texture = _thing_texture(thing, rng, yy, xx)

    # Drop slivers and hidden instances until every layer keeps >= min_area pixels. Removing a
    # thing only uncovers the layers below it and removing a Voronoi seed only grows the other
    # regions, so every pass strictly shrinks the layer set and the loop ends.
    stuff_keep, thing_keep = list(range(len(stuff_classes))), list(range(len(things)))
    while True:
        layers = _compose(dist, stuff_keep, things, thing_keep)
        areas = np.bincount(layers.ravel(), minlength=len(dist) + len(things))
        tiny_stuff = [s for s in stuff_keep if areas[s] < min_area]
        tiny_things = [t for t in thing_keep if areas[len(dist) + t] < min_area]
        if not tiny_stuff and not tiny_things:
            if thing_keep:
                break
            # Every instance was hidden or clipped away: add one in the middle, on top.
            cid = int(rng.choice(_THING_IDS))
            thing = _Thing(cid, size / 2, size / 2, 0.15 * size, _hsv(rng.random(), 0.7, 0.8))
            thing.mask = _thing_mask("disc", thing, rng, size, size)
            thing.texture = _thing_texture(thing, rng, yy, xx)
            things.append(thing)
            thing_keep.append(len(things) - 1)
            continue
        thing_keep = [t for t in thing_keep if t not in tiny_things]
        if len(tiny_stuff) == len(stuff_keep):  # the background is nearly all covered
            largest = max(stuff_keep, key=lambda s: areas[s])
            stuff_keep = [largest]
            if areas[largest] < min_area and thing_keep:
                thing_keep = thing_keep[1:]  # uncover it by dropping the bottom thing
        else:
            stuff_keep = [s for s in stuff_keep if s not in tiny_stuff]

    # Pixels: stuff textures under the things, a slight blur (soft edges, as a camera gives),
    # then sensor noise.
    rgb = np.zeros((size, size, 3), np.float32)
    for s in stuff_keep:
        rgb[layers == s] = stuff_tex[s][layers == s]
    for t in thing_keep:
        sel = layers == len(dist) + t
        rgb[sel] = things[t].texture[sel]
    rgb = cv2.GaussianBlur(rgb, (3, 3), 0.6)
    rgb += rng.normal(0, rng.uniform(1.0, 4.0), rgb.shape).astype(np.float32)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    # Segment ids and segments_info.
    order = stuff_keep + [len(dist) + t for t in thing_keep]
    categories = [stuff_classes[s] for s in stuff_keep] + [things[t].category_id for t in thing_keep]
    seg_ids = _distinct_ids(rng, len(order))
    lut = np.zeros(len(dist) + len(things), np.int64)
    lut[order] = seg_ids
    ids = lut[layers]
    segments = coco_segments_info(ids, seg_ids, categories)
    return rgb, ids, segments


def _distinct_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = rng.integers(1, 256**3, size=n)
    while len(np.unique(ids)) < n:  # vanishingly rare; redraw deterministically
        ids = rng.integers(1, 256**3, size=n)
    return ids


# ---------------------------------------------------------------------------- dataset
def _check_args(num_train: Any, num_val: Any, size: Any, seed: Any, num_test: Any = 0) -> None:
    checks = (("num_train", num_train, 0), ("num_val", num_val, 0), ("num_test", num_test, 0), ("size", size, MIN_SIZE),
              ("seed", seed, 0))  # fmt: skip
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise P2MInputError(f"synthetic dataset: '{name}' must be an integer, got {value!r}")
        if value < low:
            raise P2MInputError(f"synthetic dataset: '{name}' must be >= {low}, got {value}")


def generate_synthetic(
    out_dir: PathLike, num_train: int, num_val: int, size: int, seed: int, progress: bool = True, num_test: int = 0
) -> dict[str, Path]:
    """Write the synthetic train, val and test splits under ``out_dir`` in the COCO panoptic layout.

    Parameters
    ----------
    out_dir : root folder (created). Files of an earlier run with the same names are replaced;
        extra files of a larger earlier run are left alone (the JSON lists what belongs).
    num_train, num_val, num_test : number of images per split (>= 0). The test split is held out:
        settings are chosen on val and reported on test; each split draws its images from its
        own generators, so no image is in two splits.
    size : side of the square images in pixels (>= 32).
    seed : non-negative integer; image ``i`` of a split depends only on (seed, split, i, size).
    progress : print progress to stderr.

    Returns
    -------
    ``{"<split>_json", "<split>_panoptic", "<split>_images"}`` for every split written (train and
    val always, test when ``num_test > 0``), plus ``"root"``.
    Each split's JSON is written last, so a JSON on disk implies its PNGs are there.
    """
    _check_args(num_train, num_val, size, seed, num_test)
    root = Path(out_dir)
    paths: dict[str, Path] = {"root": root}
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    for split in SPLITS:
        count = counts[split]
        if split == "test" and count == 0:  # no held-out split asked for: none written
            continue
        layout = coco_layout(split)
        json_path, png_dir, image_dir = root / layout.json, root / layout.panoptic, root / layout.images
        png_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        bar = Progress(f"synthetic {split}", count, progress)
        for index in range(count):
            rgb, ids, segments = generate_image(int(seed), split, index, int(size))
            image_id = index + 1
            name = f"{image_id:06d}.png"
            atomic_write_png(image_dir / name, rgb)
            atomic_write_png(png_dir / name, id2rgb(ids))
            images.append({"id": image_id, "file_name": name, "height": int(size), "width": int(size)})
            annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
            bar.update(index + 1)
        atomic_write_json(
            json_path,
            {
                "info": {
                    "description": "p2m synthetic panoptic dataset",
                    "split": split,
                    "seed": int(seed),
                    "size": int(size),
                    "generator": "p2m_core.data.synthetic",
                },
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": SYNTHETIC_CATEGORIES,
            },
        )
        paths.update({f"{split}_json": json_path, f"{split}_panoptic": png_dir, f"{split}_images": image_dir})
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.data.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="output root folder")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="take the sizes from this experiment's data.synthetic (the options below override them)")  # fmt: skip
    parser.add_argument("--num-train", type=int, default=None, help="train images (default: data.synthetic.num_train)")
    parser.add_argument("--num-val", type=int, default=None, help="val images (default: data.synthetic.num_val)")
    parser.add_argument("--num-test", type=int, default=None, help="held-out test images (default: data.synthetic.num_test)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: data.synthetic.size)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: data.synthetic.seed)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        if args.config is not None:
            from p2m_core.config import load_config

            sizes = load_config(args.config).data.synthetic
        else:
            sizes = SyntheticConfig()
        chosen = {name: getattr(sizes, name) if getattr(args, name) is None else getattr(args, name)
                  for name in ("num_train", "num_val", "num_test", "size", "seed")}  # fmt: skip
        paths = generate_synthetic(args.out, progress=not args.quiet, **chosen)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {chosen['num_train']} train + {chosen['num_val']} val + {chosen['num_test']} test images under "
          f"{paths['root']}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
