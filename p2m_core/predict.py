"""Panoptic predictions of a trained checkpoint on your own images: the command line.

    python -m p2m_core.predict --checkpoint model.pt --images photos/ extra.jpg --out preds \\
        [--device auto|cpu|cuda] [--batch-size 4] [--max-size N]

``--images`` takes folders (their ``.jpg``/``.jpeg``/``.png`` files, not recursive) and files.
``--max-size N`` sets the shorter side fed to the network (default: the checkpoint's
``data.test_short_side``; ``--max-size 0`` keeps every image's own size). It writes
``OUT/panoptic/<stem>.png`` (COCO panoptic PNGs), ``OUT/predictions.json`` (COCO panoptic JSON,
written last) and ``OUT/overlays/<stem>.png``; how the images are resized, batched and written
is :mod:`p2m_core.engine.predictions`, the code a finished training run uses too. Bad input (no
image found, an unreadable image, two images with one stem, a checkpoint that is not one) exits
with status 2 and one ``error:`` line, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2m_core.engine.device import DEVICES
from p2m_core.engine.predictions import predict_images
from p2m_core.errors import P2MInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.predict",
        description="Panoptic predictions of a p2m checkpoint on your own images (COCO panoptic PNG + JSON, overlays).",
    )
    parser.add_argument("--checkpoint", required=True, help="a p2m checkpoint (p2m-checkpoint/1)")
    parser.add_argument("--images", required=True, nargs="+", metavar="DIR_OR_FILE", help="folders of images and/or image files (jpg, png)")
    parser.add_argument("--out", required=True, help="output folder: predictions.json, panoptic/, overlays/")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when available")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument(
        "--max-size", type=int, default=None,
        help="shorter side fed to the network (default: the checkpoint's data.test_short_side; 0: each image's own size)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = predict_images(
            args.checkpoint, args.images, args.out, device=args.device, batch_size=args.batch_size,
            max_size=args.max_size, progress=not args.quiet,
        )  # fmt: skip
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"predicted {summary['images']} images in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.2f} images/s, {summary['device']})"
    )
    for label, key in (("predictions", "predictions"), ("panoptic PNGs", "panoptic"), ("overlays", "overlays")):
        print(f"{label}: {summary[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
