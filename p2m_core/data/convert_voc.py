"""Convert Pascal VOC 2012 (optionally with SBD) to the COCO panoptic format.

Classes: the 20 VOC object classes are *things* with their VOC ids 1..20; VOC's background
(index 0) becomes the single *stuff* class ``background`` with category id
:data:`BACKGROUND_ID` = 21 (a positive id is needed because panoptic id 0 means void).

Per image, from a class map ``C`` and an instance map ``I`` (both HxW, 255 = void/boundary):

- every instance ``k`` (``I == k``, ``k`` not 0 or 255) is one thing segment; its category is
  the majority class of ``C`` over its pixels, ignoring 0 and 255 (ties: the smaller id); when
  ``C`` has no object class there, SBD's per-instance ``Categories`` entry is used, and for VOC
  the instance is made void (reported);
- pixels with ``I == 0`` and ``C == 0`` form one stuff segment ``background``;
- everything else is void (id 0): ``I == 255`` (VOC's boundary band and "difficult" regions),
  and object-class pixels that belong to no instance.

Segment ids are ``1..n`` for the instances in increasing instance index, ``n + 1`` for the
background. Image ids are ``int("2007000032")`` for a VOC name ``2007_000032`` (other names
stay strings).

Splits. ``val`` is VOC's ``ImageSets/Segmentation/val.txt`` (1,449 images). ``train`` is VOC's
``train.txt`` (1,464); with ``--sbd-root`` it becomes the usual *train_aug* set (10,582 with
the full data): VOC train ∪ SBD train ∪ SBD val, minus every VOC val image. Images listed in VOC
train use VOC's annotation (PNG), the others SBD's (``.mat``).

Inputs::

    VOC2012/JPEGImages/<name>.jpg
    VOC2012/SegmentationClass/<name>.png     palette PNG: 0 background, 1..20 class, 255 void
    VOC2012/SegmentationObject/<name>.png    palette PNG: 0 background, 1..n instance, 255 void
    VOC2012/ImageSets/Segmentation/{train,val}.txt
    SBD/dataset/cls/<name>.mat               struct GTcls with field Segmentation
    SBD/dataset/inst/<name>.mat              struct GTinst with fields Segmentation, Categories
    SBD/dataset/{train,val}.txt              (images: VOC's JPEGImages, else SBD/dataset/img/)

Output (COCO's layout)::

    OUT/images/<split>/<name>.jpg            symlink to the source (``--copy-images``: a copy)
    OUT/panoptic_<split>/<name>.png          RGB-encoded segment ids
    OUT/panoptic_<split>.json                written last, so its presence means the split is complete

Example::

    python -m p2m_core.data.convert_voc --voc-root VOCdevkit/VOC2012 --sbd-root SBD/dataset \\
        --out data/voc_panoptic --workers 2
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.config import coco_layout
from p2m_core.data.panoptic_format import coco_segments_info, id2rgb
from p2m_core.errors import P2MInputError
from p2m_core.progress import Progress
from p2m_core.io import PathLike, atomic_write_bytes, atomic_write_json, atomic_write_png

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
BACKGROUND_ID = 21  # category id of VOC's background (VOC index 0; panoptic id 0 is void)
VOID_INDEX = 255


def voc_palette_color(index: int) -> tuple[int, int, int]:
    """VOC's colour of class ``index``: bits of the index spread over R, G, B, high bit first."""
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return r, g, b


def voc_categories() -> list[dict[str, Any]]:
    """COCO-panoptic ``categories``: 20 things (ids 1..20) then ``background`` (stuff, id 21)."""
    things = [
        {"id": i, "name": name, "supercategory": "object", "isthing": 1, "color": list(voc_palette_color(i))}
        for i, name in enumerate(VOC_CLASSES, start=1)
    ]
    background = {
        "id": BACKGROUND_ID,
        "name": "background",
        "supercategory": "background",
        "isthing": 0,
        "color": [64, 64, 64],  # VOC paints background black, which viewers confuse with void
    }
    return things + [background]


def image_id_for(name: str) -> int | str:
    """``'2007_000032'`` -> ``2007000032``; names of another shape are kept as strings."""
    return int(name.replace("_", "")) if re.fullmatch(r"\d{4}_\d{6}", name) else name


# --------------------------------------------------------------------------- maps -> segments
def panoptic_from_maps(
    class_map: np.ndarray,
    instance_map: np.ndarray,
    instance_categories: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], list[int]]:
    """Turn a VOC class map and instance map into panoptic ids and ``segments_info``.

    Parameters
    ----------
    class_map : [H, W] int, 0 background, 1..20 class, 255 void.
    instance_map : [H, W] int, 0 no instance, 1..n instance, 255 void.
    instance_categories : SBD's class of instance ``k`` at ``[k - 1]``; used only where the
        class map has no object class on an instance.

    Returns
    -------
    segment_ids : [H, W] int64, 0 = void.
    segments_info : COCO-panoptic entries (id, category_id, iscrowd, area, bbox [x, y, w, h]).
    dropped : instance indices made void because no class could be found for them.
    """
    class_map = np.asarray(class_map).astype(np.int64)
    instance_map = np.asarray(instance_map).astype(np.int64)
    if class_map.shape != instance_map.shape or class_map.ndim != 2:
        raise ValueError(f"class map {class_map.shape} and instance map {instance_map.shape} must be equal HxW")
    segment_ids = np.zeros(class_map.shape, dtype=np.int64)
    categories: list[int] = []
    dropped: list[int] = []
    next_id = 1
    for k in np.unique(instance_map).tolist():
        if k in (0, VOID_INDEX):
            continue
        mask = instance_map == k
        classes = class_map[mask]
        classes = classes[(classes >= 1) & (classes <= len(VOC_CLASSES))]
        if classes.size:
            category = int(np.argmax(np.bincount(classes)))
        elif instance_categories is not None and 0 < k <= len(instance_categories):
            category = int(instance_categories[k - 1])
        else:
            category = 0
        if not 1 <= category <= len(VOC_CLASSES):
            dropped.append(int(k))
            continue
        segment_ids[mask] = next_id
        categories.append(category)
        next_id += 1
    background = (instance_map == 0) & (class_map == 0)
    if background.any():
        segment_ids[background] = next_id
        categories.append(BACKGROUND_ID)
    segments = coco_segments_info(segment_ids, range(1, len(categories) + 1), categories)
    return segment_ids, segments, dropped


# --------------------------------------------------------------------------- reading inputs
@dataclass(frozen=True)
class ImageSource:
    """Where one image and its annotation come from."""

    name: str
    image_path: Path
    kind: str  # "voc" (palette PNGs) or "sbd" (.mat files)
    class_path: Path
    instance_path: Path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise P2MInputError(f"{what} folder not found: {path}")
    return path


def read_name_list(path: Path, what: str) -> list[str]:
    """Image names of a split list file (one per line, blank lines ignored)."""
    if not path.is_file():
        raise P2MInputError(f"{what} split list not found: {path}")
    names = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise P2MInputError(f"{what} split list {path} is empty")
    return names


def _read_index_png(path: Path, what: str, name: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise P2MInputError(f"missing {what} file for image {name}: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise P2MInputError(f"{path}: expected a palette (mode P) or grey PNG of indices, got mode {img.mode}")
            return np.asarray(img).astype(np.int64)
    except OSError as exc:
        raise P2MInputError(f"cannot read {what} file {path}: {exc}") from exc


def _read_mat_struct(path: Path, struct: str, fields: Sequence[str], name: str) -> dict[str, np.ndarray]:
    import scipy.io

    if not path.is_file():
        raise P2MInputError(f"missing SBD {struct} file for image {name}: {path}")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError or OSError on bad files
        raise P2MInputError(f"cannot read SBD file {path}: {exc}") from exc
    if struct not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise P2MInputError(f"SBD file {path}: no struct '{struct}' (found: {found})")
    value = mat[struct]
    out = {}
    for field in fields:
        if not hasattr(value, field):
            raise P2MInputError(f"SBD file {path}: struct '{struct}' has no field '{field}'")
        out[field] = np.asarray(getattr(value, field))
    return out


def load_maps(source: ImageSource) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """(class map, instance map, SBD instance categories or None) of one image."""
    if source.kind == "voc":
        class_map = _read_index_png(source.class_path, "SegmentationClass", source.name)
        instance_map = _read_index_png(source.instance_path, "SegmentationObject", source.name)
        categories = None
    else:
        cls = _read_mat_struct(source.class_path, "GTcls", ["Segmentation"], source.name)
        inst = _read_mat_struct(source.instance_path, "GTinst", ["Segmentation", "Categories"], source.name)
        class_map = cls["Segmentation"].astype(np.int64)
        instance_map = inst["Segmentation"].astype(np.int64)
        categories = np.atleast_1d(inst["Categories"]).astype(np.int64).ravel().tolist()
    if class_map.ndim != 2 or class_map.shape != instance_map.shape:
        raise P2MInputError(
            f"image {source.name}: class map {source.class_path} is {class_map.shape} but instance map "
            f"{source.instance_path} is {instance_map.shape}"
        )
    return class_map, instance_map, categories


def _voc_source(voc_root: Path, name: str) -> ImageSource:
    return ImageSource(
        name=name,
        image_path=voc_root / "JPEGImages" / f"{name}.jpg",
        kind="voc",
        class_path=voc_root / "SegmentationClass" / f"{name}.png",
        instance_path=voc_root / "SegmentationObject" / f"{name}.png",
    )


def _sbd_source(voc_root: Path, sbd_root: Path, name: str) -> ImageSource:
    image_path = voc_root / "JPEGImages" / f"{name}.jpg"
    if not image_path.is_file() and (sbd_root / "img" / f"{name}.jpg").is_file():
        image_path = sbd_root / "img" / f"{name}.jpg"
    return ImageSource(
        name=name,
        image_path=image_path,
        kind="sbd",
        class_path=sbd_root / "cls" / f"{name}.mat",
        instance_path=sbd_root / "inst" / f"{name}.mat",
    )


#: The splits VOC 2012 publishes segmentation ground truth for (its test split has none).
VOC_SPLITS: tuple[str, ...] = ("train", "val")


def split_sources(voc_root: PathLike, split: str, sbd_root: PathLike | None = None) -> list[ImageSource]:
    """The images of ``split`` and where each one's annotation comes from (see module doc)."""
    if split not in VOC_SPLITS:
        raise P2MInputError(f"unknown split {split!r}; choose from {', '.join(VOC_SPLITS)}")
    voc_root = _require_dir(Path(voc_root), "VOC root")
    _require_dir(voc_root / "JPEGImages", "VOC JPEGImages")
    _require_dir(voc_root / "SegmentationClass", "VOC SegmentationClass")
    _require_dir(voc_root / "SegmentationObject", "VOC SegmentationObject")
    lists = voc_root / "ImageSets" / "Segmentation"
    voc_names = read_name_list(lists / f"{split}.txt", f"VOC {split}")
    if split == "val" or sbd_root is None:
        return [_voc_source(voc_root, name) for name in voc_names]
    sbd_root = _require_dir(Path(sbd_root), "SBD root")
    _require_dir(sbd_root / "cls", "SBD cls")
    _require_dir(sbd_root / "inst", "SBD inst")
    voc_val = set(read_name_list(lists / "val.txt", "VOC val"))
    voc_train = set(voc_names)
    sbd_names = set(read_name_list(sbd_root / "train.txt", "SBD train")) | set(
        read_name_list(sbd_root / "val.txt", "SBD val")
    )
    names = sorted((voc_train | sbd_names) - voc_val)
    return [
        _voc_source(voc_root, name) if name in voc_train else _sbd_source(voc_root, sbd_root, name)
        for name in names
    ]


# --------------------------------------------------------------------------- writing
def _place_image(source: Path, target: Path, copy: bool) -> None:
    """Put ``source`` at ``target`` atomically: a copy, or an absolute symlink."""
    if copy:
        atomic_write_bytes(target, source.read_bytes())
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    os.symlink(source.resolve(), tmp)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert_image(source: ImageSource, out_dir: Path, split: str, copy_images: bool) -> dict[str, Any]:
    """Convert one image; returns its ``image``, ``annotation`` entries and dropped instances."""
    from PIL import Image

    if not source.image_path.is_file():
        raise P2MInputError(f"missing image file for {source.name}: {source.image_path}")
    with Image.open(source.image_path) as img:
        width, height = img.size
    class_map, instance_map, categories = load_maps(source)
    if class_map.shape != (height, width):
        raise P2MInputError(
            f"image {source.name}: annotation {source.class_path} is {class_map.shape[0]}x{class_map.shape[1]} "
            f"but image {source.image_path} is {height}x{width}"
        )
    segment_ids, segments, dropped = panoptic_from_maps(class_map, instance_map, categories)
    png_name = f"{source.name}.png"
    atomic_write_png(out_dir / coco_layout(split).panoptic / png_name, id2rgb(segment_ids))
    image_name = f"{source.name}.jpg"
    _place_image(source.image_path, out_dir / coco_layout(split).images / image_name, copy_images)
    image_id = image_id_for(source.name)
    return {
        "image": {"id": image_id, "file_name": image_name, "height": height, "width": width},
        "annotation": {"image_id": image_id, "file_name": png_name, "segments_info": segments},
        "dropped": dropped,
        "name": source.name,
    }


def _convert_job(job: tuple[ImageSource, Path, str, bool]) -> dict[str, Any]:
    return convert_image(*job)


def convert_split(
    voc_root: PathLike,
    out_dir: PathLike,
    split: str,
    sbd_root: PathLike | None = None,
    copy_images: bool = False,
    workers: int = 1,
) -> Path:
    """Convert one split; returns the path of the written ``panoptic_<split>.json``."""
    out_dir = Path(out_dir)
    sources = split_sources(voc_root, split, sbd_root)
    n_sbd = sum(s.kind == "sbd" for s in sources)
    print(
        f"{split}: {len(sources)} images ({len(sources) - n_sbd} VOC annotations, {n_sbd} SBD annotations)",
        file=sys.stderr,
    )
    jobs = [(source, out_dir, split, copy_images) for source in sources]
    progress = Progress(split, len(jobs))
    results: list[dict[str, Any]] = []
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(_convert_job, jobs, chunksize=8):
                results.append(result)
                progress.step()
    else:
        for job in jobs:
            results.append(_convert_job(job))
            progress.step()
    dropped = [(r["name"], r["dropped"]) for r in results if r["dropped"]]
    if dropped:
        listed = "; ".join(f"{name}: {ks}" for name, ks in dropped[:10])
        warnings.warn(
            f"{split}: {sum(len(ks) for _, ks in dropped)} instance(s) without an object class "
            f"were made void ({listed})",
            stacklevel=2,
        )
    document = {
        "info": {
            "description": f"Pascal VOC 2012{' + SBD' if sbd_root and split == 'train' else ''} {split}, "
            "converted to COCO panoptic by p2m_core.data.convert_voc",
        },
        "licenses": [],
        "images": [r["image"] for r in results],
        "annotations": [r["annotation"] for r in results],
        "categories": voc_categories(),
    }
    return atomic_write_json(out_dir / coco_layout(split).json, document)


def convert(
    voc_root: PathLike,
    out_dir: PathLike,
    splits: Iterable[str] = VOC_SPLITS,
    sbd_root: PathLike | None = None,
    copy_images: bool = False,
    workers: int = 1,
) -> list[Path]:
    """Convert several splits (see :func:`convert_split`)."""
    return [convert_split(voc_root, out_dir, split, sbd_root, copy_images, workers) for split in splits]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.data.convert_voc",
        description="Convert Pascal VOC 2012 (+ SBD for train_aug) to the COCO panoptic format.",
    )
    parser.add_argument("--voc-root", required=True, help="VOCdevkit/VOC2012")
    parser.add_argument("--sbd-root", default=None, help="SBD 'dataset' folder; makes 'train' the train_aug set")
    parser.add_argument("--out", required=True, help="output root (COCO layout)")
    parser.add_argument("--splits", nargs="+", choices=VOC_SPLITS, default=list(VOC_SPLITS))
    parser.add_argument("--copy-images", action="store_true", help="copy JPEGs instead of symlinking them")
    parser.add_argument("--workers", type=int, default=1, help="processes converting images in parallel")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        for path in convert(args.voc_root, args.out, args.splits, args.sbd_root, args.copy_images, args.workers):
            print(f"wrote {path}", file=sys.stderr)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
