"""Panoptic predictions of a trained checkpoint on image files: the code behind
``python -m p2m_core.predict`` and behind a finished training run's ``predictions/``, kept in
the engine so that a training run needs nothing above it.

Each image is resized as the checkpoint's config evaluates (shorter side to
``data.test_short_side``, longer side at most ``data.long_side_max``:
:func:`~p2m_core.data.dataset.scoring_resize`; ``max_size=N`` sets the shorter side to N
instead, ``max_size=0`` keeps every image's own size), padded into batches (size divisor
``data.size_divisor``), run through :meth:`Point2Mask.predict`, and the prediction is mapped back
to the image's own size by nearest neighbour. Written, each file atomically:

- ``OUT/panoptic/<stem>.png``: COCO panoptic PNGs (``id = R + 256 G + 256^2 B``, 0 void);
- ``OUT/predictions.json``: COCO panoptic JSON: ``images`` (``id``, ``file_name``, ``height``,
  ``width``), ``annotations`` with ``segments_info`` (``id``, ``category_id``, ``isthing``,
  ``score``, ``area``, ``bbox``, ``iscrowd``) and the checkpoint's ``categories``;
  written last, so its presence means the run finished;
- ``OUT/overlays/<stem>.png``: the prediction drawn over the image, category names on it.

Image ids are the file stems, as integers when the stem is all digits (COCO's file names), so
the JSON matches a COCO ground truth by id. Bad input (no image found, an unreadable image, two
images with one stem, a checkpoint that is not one) raises
:class:`~p2m_core.errors.P2MInputError` before anything is written; the messages name the
command-line option (``--images``, ``--batch-size``, ``--max-size``) the values come from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.data.dataset import image_tensor, pad_images, scoring_resize
from p2m_core.data.transforms import Compose, resize_nearest
from p2m_core.engine.checkpoint import load_checkpoint
from p2m_core.engine.device import resolve_device
from p2m_core.errors import P2MInputError
from p2m_core.evaluation.overlay import panoptic_overlay
from p2m_core.evaluation.writer import PanopticPredictionWriter
from p2m_core.io import PathLike, atomic_write_png
from p2m_core.progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

log = logging.getLogger(__name__)


def find_images(inputs: Sequence[PathLike]) -> list[Path]:
    """The image files named by ``inputs`` (folders: their image files in name order; files as
    given), without repeats. Refuses a missing path, a file of another type, an input that
    yields nothing, and two images with one stem (their outputs would overwrite each other)."""
    found: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise P2MInputError(f"--images {path}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
            found.extend(files)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise P2MInputError(f"--images {path}: not a {'/'.join(IMAGE_SUFFIXES)} file")
            found.append(path)
        else:
            raise P2MInputError(f"--images {path}: no such file or folder")
    unique = list({p.resolve(): p for p in found}.values())
    if not unique:
        raise P2MInputError("--images: no image given")
    by_stem: dict[str, Path] = {}
    for path in unique:
        if path.stem in by_stem:
            raise P2MInputError(f"--images: {by_stem[path.stem]} and {path} share the name '{path.stem}' (outputs are named by it)")
        by_stem[path.stem] = path
    return unique


def image_id_of(path: Path) -> int | str:
    """The id of an image in the JSON: its stem, as an integer when all digits (COCO's names)."""
    return int(path.stem) if path.stem.isdigit() else path.stem


def check_readable(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """Each image's ``(height, width)`` from its header, so an unreadable file fails the run
    before any output is written, not halfway through it."""
    from PIL import Image

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.append((img.height, img.width))
        except (OSError, ValueError) as exc:
            raise P2MInputError(f"--images {path}: not a readable image ({exc})") from exc
    return sizes


def read_rgb(path: Path) -> np.ndarray:
    """The image as ``[H, W, 3]`` uint8 RGB (a truncated file is an input error naming it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise P2MInputError(f"--images {path}: not a readable image ({exc})") from exc


def eval_resize(data_cfg: Any, max_size: int | None) -> Compose | None:
    """The resize of evaluation: the config's (shorter side ``data.test_short_side``), ``--max-size
    N`` (shorter side N), the longer side capped at ``data.long_side_max`` either way; or none
    for ``--max-size 0``."""
    if max_size == 0:
        return None
    return Compose([scoring_resize(data_cfg, max_size)])


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    checkpoint: PathLike,
    images: Sequence[PathLike],
    out: PathLike,
    device: str = "auto",
    batch_size: int = 4,
    max_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image and write the outputs (module docstring); returns a summary:
    ``images``, ``seconds``, ``images_per_second``, ``predictions`` (the JSON), ``panoptic``
    and ``overlays`` (folders), ``device``."""
    if batch_size < 1:
        raise P2MInputError(f"--batch-size must be >= 1, got {batch_size}")
    if max_size is not None and max_size < 0:
        raise P2MInputError(f"--max-size must be >= 0, got {max_size}")
    device = resolve_device(device, "--device")
    paths = find_images(images)
    sizes = check_readable(paths)
    model, cfg, categories, _ = load_checkpoint(checkpoint, map_location=device)
    resize = eval_resize(cfg.data, max_size)
    out = Path(out)
    pred_json, png_dir, overlay_dir = out / "predictions.json", out / "panoptic", out / "overlays"
    bar = Progress("predict", len(paths), progress)
    rng = np.random.default_rng(0)  # the val resize draws nothing; the transform API wants a generator
    with PanopticPredictionWriter(pred_json, png_dir, categories) as writer:
        for batch in _batches(list(zip(paths, sizes)), batch_size):
            originals = [read_rgb(path) for path, _ in batch]
            inputs = []
            for rgb in originals:
                resized = rgb if resize is None else resize({"image": rgb, "points_yx": np.zeros((0, 2), np.int64)}, rng)["image"]
                inputs.append(image_tensor(resized))
            padded, padding_mask, image_sizes = pad_images(inputs, cfg.data.size_divisor)
            results = model.predict(padded.to(device), padding_mask.to(device), image_sizes)
            for (path, (height, width)), rgb, result in zip(batch, originals, results):
                ids = result["panoptic"].cpu().numpy().astype(np.int64)
                if ids.shape != (height, width):
                    ids = resize_nearest(ids, height, width)
                present = set(np.unique(ids).tolist())
                segments = [
                    {"id": int(s["id"]), "category_id": categories[s["label"]]["id"], "isthing": bool(s["isthing"]),
                     "score": round(float(s["score"]), 5)}
                    for s in result["segments"] if int(s["id"]) in present
                ]  # fmt: skip
                info = {"file_name": path.name, "height": height, "width": width}
                annotation = writer.add(image_id_of(path), f"{path.stem}.png", ids, segments, image_info=info)
                atomic_write_png(overlay_dir / f"{path.stem}.png", panoptic_overlay(rgb, ids, annotation["segments_info"], categories))
            bar.update(bar.done + len(batch))
    seconds = bar.elapsed
    log.info("predicted %d images in %.1f s on %s", len(paths), seconds, device)
    return {
        "images": len(paths), "seconds": seconds, "images_per_second": len(paths) / max(seconds, 1e-9),
        "predictions": pred_json, "panoptic": png_dir, "overlays": overlay_dir, "device": device,
    }  # fmt: skip
