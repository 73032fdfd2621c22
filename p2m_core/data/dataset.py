"""Torch dataset of images with one labelled point per segment, and its collate function.

:class:`PointPanopticDataset` joins a :class:`~p2m_core.data.panoptic_format.CocoPanoptic`
dataset with a point-label file (``p2m-points/1``, see ``docs/DATA.md``), applies point-safe
transforms (:mod:`p2m_core.data.transforms`) and returns tensors. :func:`collate_points` pads
a list of items into a batch and keeps the variable-length point sets as lists.

Randomness: item ``index`` in epoch ``epoch`` draws every augmentation choice from
``numpy.random.default_rng([seed, epoch, index])``. Nothing depends on the worker that loads
the item or on the order items are loaded in, so a ``DataLoader`` gives identical batches with
any ``num_workers``. Call :meth:`PointPanopticDataset.set_epoch` before iterating an epoch
(with ``persistent_workers=False``, the default, workers receive the updated dataset).

The panoptic ground truth is always read, because resizing uses it to keep each point inside
its own segment (see :class:`~p2m_core.data.transforms.ResizeShortestEdge`); it is *returned*
only with ``with_gt=True`` (evaluation). Training code therefore sees the points, not the masks.

Low-level edges (``P^b_low``, :mod:`p2m_core.data.edges`) depend on the image alone, so the
dataset computes them when asked (``edges=True``; :meth:`PointPanopticDataset.from_config` asks
when ``pseudo.maps`` lists ``boundary_low``), on the *transformed* image, and keeps them in a
cache keyed by the transformed image's bytes (:class:`EdgeCache`): an image seen again, e.g. with
the same flip in a later epoch, costs a hash instead of an edge detection, and the training step
no longer runs the detector (it was ~20 % of the tiny network's step).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from p2m_core.data.edges import EdgeDetector
from p2m_core.data.panoptic_format import CocoPanoptic, PanopticRecord
from p2m_core.data.points import image_point_arrays, load_points, sample_points, validate_points
from p2m_core.data.splits import split_paths
from p2m_core.data.transforms import Compose, RandomCrop, RandomFlip, ResizeShortestEdge, Transform
from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike

#: ImageNet statistics of RGB images in [0, 1], used when ``normalize=True``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[3, H, W]`` float32 in [0, 1], what the network reads (it
    normalises inside). Read-only arrays (PIL's) are copied rather than shared."""
    pixels = torch.from_numpy(np.require(rgb, requirements=["C", "W"]))
    return pixels.permute(2, 0, 1).float().div_(255.0)


class EdgeCache:
    """Low-level edge maps of images, computed once per distinct image (module docstring).

    Keyed by a digest of the image's shape and bytes, so any augmentation is handled (a flipped
    image is another key) and a hit returns exactly what the detector would. Least recently used
    maps are dropped beyond ``max_bytes`` (default 256 MiB: ~4,000 maps of 128x128, and with
    COCO-sized random resizes, where images rarely repeat, a bounded memory).

    ``model_path``: ``data.edge_model`` (empty: the classical fallback); the detector is loaded
    on first use, in the process that uses it (DataLoader workers included).
    """

    def __init__(self, model_path: str = "", max_bytes: int = 256 * 2**20) -> None:
        self.model_path = str(model_path or "")
        self.max_bytes = int(max_bytes)
        self._maps: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __getstate__(self) -> dict[str, Any]:  # workers start with an empty cache of their own
        state = dict(self.__dict__)
        state["_maps"], state["_bytes"] = OrderedDict(), 0
        return state

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Edge map of ``rgb`` [H, W, 3] uint8: [H, W] float32 in [0, 1] (a copy of the cached map)."""
        rgb = np.ascontiguousarray(rgb)
        key = (rgb.shape, rgb.dtype.str, hashlib.blake2b(rgb.data, digest_size=16).digest())
        edges = self._maps.get(key)
        if edges is not None:
            self.hits += 1
            self._maps.move_to_end(key)
            return edges.copy()
        self.misses += 1
        edges = EdgeDetector.from_model_path(self.model_path)(rgb)
        self._maps[key] = edges.copy()
        self._bytes += edges.nbytes
        while self._bytes > self.max_bytes and len(self._maps) > 1:
            self._bytes -= self._maps.popitem(last=False)[1].nbytes
        return edges


# --------------------------------------------------------------------------- dataset
class PointPanopticDataset(Dataset):
    """Images, their labelled points and (optionally) panoptic ground truth, as tensors.

    Parameters
    ----------
    panoptic : the images and their panoptic ground truth.
    points : path to a ``p2m-points/1`` JSON, or the already-loaded dict. It must have an
        entry for every image of ``panoptic``; each point must name a segment of its image,
        with that segment's category, and lie on that segment in the PNG.
    transforms : ``t(sample, rng) -> sample`` (see :mod:`p2m_core.data.transforms`); ``None``
        keeps images as they are.
    seed : base seed of the per-item generators (non-negative).
    with_gt : also return ``segment_ids`` and ``segments`` (for evaluation).
    normalize : return ``(image / 255 - IMAGENET_MEAN) / IMAGENET_STD`` instead of
        ``image / 255``. Off by default: the losses compare raw colours (LAB affinity, RGB
        tree), so models are expected to normalise inside, as detectron2 models do.
    edges : also return the low-level edge map of the transformed image (``P^b_low``), from
        an :class:`EdgeCache` (``True``: the classical detector; a string: the path of a
        Structured Edge forest, ``data.edge_model``).

    Item
    ----
    ``image`` float32 [3, H, W]; ``points_yx`` int64 [m, 2] (row, column);
    ``point_labels`` int64 [m] (contiguous index, :meth:`CocoPanoptic.contiguous_ids`);
    ``point_is_thing`` bool [m]; ``point_segment_ids`` int64 [m]; ``image_id``;
    ``orig_size`` (H0, W0) before transforms; with ``edges``: ``edges`` float32 [H, W] in
    [0, 1]; with ``with_gt``: ``segment_ids`` int64 [H, W]
    (0 = void) and ``segments``, a list of ``{'id', 'category_id', 'label', 'isthing',
    'iscrowd', 'area'}`` for the segments still present after the transforms, and the same two
    before any transform, ``orig_segment_ids`` [H0, W0] and ``orig_segments``: what predictions
    are scored against, at the image's own size, as the COCO panoptic API scores them. (With
    augmentation that moves pixels, a training split's flip or crop, there is no way back to the
    original frame: there both are the transformed ground truth.)
    """

    #: Decoded samples kept in memory per dataset (and per DataLoader worker), in bytes.
    SAMPLE_CACHE_BYTES = 512 * 2**20

    def __init__(
        self,
        panoptic: CocoPanoptic,
        points: PathLike | dict,
        transforms: Transform | None = None,
        seed: int = 0,
        with_gt: bool = False,
        normalize: bool = False,
        edges: bool | str = False,
    ) -> None:
        if seed < 0:
            raise P2MInputError(f"dataset seed must be non-negative, got {seed}")
        self.panoptic = panoptic
        if isinstance(points, dict):
            self.points_source = "points dict"
            validate_points(points, source=self.points_source)
            raw = points
        else:
            self.points_source = str(points)
            raw = load_points(points)
        by_id = {entry["image_id"]: entry for entry in raw["images"]}
        self.transforms = transforms
        self.seed = int(seed)
        self.with_gt = bool(with_gt)
        self.normalize = bool(normalize)
        self.edges = EdgeCache("" if edges is True else edges) if edges is not False else None
        self.epoch = 0
        self._samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._sample_bytes = 0
        self.contiguous = panoptic.contiguous_ids()
        self._points = [self._points_of(record, by_id) for record in panoptic.records]

    def _points_of(self, record: PanopticRecord, by_id: dict[Any, dict]) -> dict[str, np.ndarray]:
        entry = by_id.get(record.image_id)
        if entry is None:
            raise P2MInputError(
                f"{self.points_source}: no points for image id {record.image_id!r} ({record.png_path.name})"
            )
        return image_point_arrays(entry, record, self.panoptic.categories, self.contiguous, self.points_source)

    # ------------------------------------------------------------------ randomness
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch: seeded by (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.panoptic)

    def load_sample(self, index: int) -> dict[str, Any]:
        """The untransformed numpy sample of item ``index`` (see :mod:`p2m_core.data.transforms`).

        The decoded, checked image and segment ids are kept (read-only) while they fit in
        :attr:`SAMPLE_CACHE_BYTES`: a small dataset (the synthetic one) is decoded once, not
        once per epoch."""
        cached = self._samples.get(index)
        if cached is not None:
            return {"image": cached[0], "segment_ids": cached[1], **{k: v.copy() for k, v in self._points[index].items()}}
        sample = self._read_sample(index)
        size = sample["image"].nbytes + sample["segment_ids"].nbytes
        if self._sample_bytes + size <= self.SAMPLE_CACHE_BYTES:
            for key in ("image", "segment_ids"):
                sample[key].setflags(write=False)  # transforms make new arrays; a write would be a bug
            self._samples[index] = (sample["image"], sample["segment_ids"])
            self._sample_bytes += size
        return sample

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers decode their own
        state = dict(self.__dict__)
        state["_samples"], state["_sample_bytes"] = {}, 0
        return state

    def _read_sample(self, index: int) -> dict[str, Any]:
        record = self.panoptic[index]
        image = self.panoptic.load_image(record)
        segment_ids = self.panoptic.load_segment_ids(record)
        if image.shape[:2] != segment_ids.shape:
            raise P2MInputError(
                f"image {record.image_path} is {image.shape[0]}x{image.shape[1]} but its panoptic PNG "
                f"{record.png_path} is {segment_ids.shape[0]}x{segment_ids.shape[1]}"
            )
        points = self._points[index]
        yx = points["points_yx"]
        if len(yx) and (yx[:, 0].max() >= image.shape[0] or yx[:, 1].max() >= image.shape[1]):
            raise P2MInputError(
                f"{self.points_source}: image {record.image_id!r} has points outside its "
                f"{image.shape[0]}x{image.shape[1]} pixels"
            )
        on_segment = segment_ids[yx[:, 0], yx[:, 1]] == points["point_segment_ids"]
        if not on_segment.all():
            bad = int(np.flatnonzero(~on_segment)[0])
            raise P2MInputError(
                f"{self.points_source}: image {record.image_id!r} point {bad} at (y={yx[bad, 0]}, x={yx[bad, 1]}) "
                f"is not on its segment {points['point_segment_ids'][bad]} in {record.png_path}"
            )
        return {"image": image, "segment_ids": segment_ids, **{k: v.copy() for k, v in points.items()}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.panoptic[index]
        sample = self.load_sample(index)
        orig_size = tuple(sample["image"].shape[:2])
        if self.transforms is not None:
            sample = self.transforms(sample, self.rng_for(index))
        image = image_tensor(sample["image"])
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            image = (image - mean) / std
        item: dict[str, Any] = {
            "image": image,
            "points_yx": torch.as_tensor(np.asarray(sample["points_yx"], dtype=np.int64).reshape(-1, 2)),
            "point_labels": torch.as_tensor(np.asarray(sample["point_labels"], dtype=np.int64)),
            "point_is_thing": torch.as_tensor(np.asarray(sample["point_is_thing"], dtype=bool)),
            "point_segment_ids": torch.as_tensor(np.asarray(sample["point_segment_ids"], dtype=np.int64)),
            "image_id": record.image_id,
            "orig_size": orig_size,
        }
        if self.edges is not None:
            item["edges"] = torch.from_numpy(self.edges(sample["image"]))
        if self.with_gt:
            gt = np.require(sample["segment_ids"], dtype=np.int64, requirements=["C", "W"])  # a copy of a cached array
            item["segment_ids"] = torch.from_numpy(gt)
            item["segments"] = self._present_segments(record, gt)
            if self.transforms is None or not only_resizes(self.transforms):
                # the image's own frame, or augmentation (flip, crop) with no way back: score here
                item["orig_segment_ids"], item["orig_segments"] = item["segment_ids"], item["segments"]
            else:
                orig = np.array(self.load_sample(index)["segment_ids"], dtype=np.int64)
                item["orig_segment_ids"] = torch.from_numpy(orig)
                item["orig_segments"] = self._present_segments(record, orig)
        return item

    def _present_segments(self, record: PanopticRecord, gt: np.ndarray) -> list[dict[str, Any]]:
        ids, counts = np.unique(gt, return_counts=True)
        area = dict(zip(ids.tolist(), counts.tolist()))
        return [
            {
                "id": s.id,
                "category_id": s.category_id,
                "label": self.contiguous[s.category_id],
                "isthing": self.panoptic.categories[s.category_id].isthing,
                "iscrowd": s.iscrowd,
                "area": area[s.id],
            }
            for s in record.segments
            if s.id in area
        ]

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(
        cls,
        cfg: Any,
        split: str,
        with_gt: bool | None = None,
        transforms: Transform | None = None,
    ) -> PointPanopticDataset:
        """Build the ``split`` ('train', 'val' or 'test') dataset described by ``cfg.data``.

        Paths are relative to ``cfg.data.root``. An empty ``points`` entry samples one point
        per segment on the fly with ``cfg.data.point_seed``
        (:func:`p2m_core.data.points.sample_points`). Transforms default to
        :func:`build_transforms`; ``with_gt`` defaults to true for the scored splits (val, test). The per-item
        seed is ``cfg.seed``. Items carry edge maps (``data.edge_model``'s detector) when
        ``cfg.pseudo.maps`` lists ``boundary_low``.
        """
        paths = split_paths(cfg.data, split)
        panoptic = CocoPanoptic(paths.panoptic_json, image_dir=paths.images_dir, png_dir=paths.panoptic_dir)
        if paths.points is not None:
            points: PathLike | dict = paths.points
        else:
            points = sample_points(panoptic, seed=cfg.data.point_seed)
        return cls(
            panoptic,
            points,
            transforms=transforms if transforms is not None else build_transforms(cfg.data, split),
            seed=cfg.seed,
            with_gt=(split != "train") if with_gt is None else with_gt,
            edges=(cfg.data.edge_model or True) if "boundary_low" in cfg.pseudo.maps else False,
        )


def build_transforms(data_cfg: Any, split: str) -> Compose:
    """The augmentation chain of a split from a ``DataConfig`` (its scale keys).

    train: the shorter side drawn from ``train_short_side`` in steps of ``train_short_step``, the
    longer side capped at ``long_side_max`` (:class:`ResizeShortestEdge`), ``RandomFlip(flip_prob)``,
    and ``RandomCrop(*crop_size)`` when ``crop_size`` is set. val and test: the shorter side at
    ``test_short_side``, the longer side capped at ``long_side_max`` (the release tests VOC at
    600 / 1333 and COCO at 800 / 1333).
    """
    if split == "train":
        low, high = data_cfg.train_short_side
        chain: list[Transform] = [
            ResizeShortestEdge(low, high, data_cfg.long_side_max, step=data_cfg.train_short_step),
            RandomFlip(data_cfg.flip_prob),
        ]
        if data_cfg.crop_size:
            chain.append(RandomCrop(*data_cfg.crop_size))
        return Compose(chain)
    if split in ("val", "test"):
        return Compose([scoring_resize(data_cfg)])
    raise P2MInputError(f"dataset split must be 'train', 'val' or 'test', got {split!r}")


def only_resizes(transforms: Transform) -> bool:
    """Whether ``transforms`` only rescales (the val / test chain): then a prediction maps back
    to the original image by resizing alone."""
    steps = transforms.transforms if isinstance(transforms, Compose) else [transforms]
    return all(isinstance(step, ResizeShortestEdge) for step in steps)


def scoring_resize(data_cfg: Any, short_side: int | None = None) -> ResizeShortestEdge:
    """The resize every evaluation feeds the network: shorter side ``short_side`` (default
    ``data.test_short_side``), longer side at most ``data.long_side_max``."""
    short = data_cfg.test_short_side if short_side is None else short_side
    return ResizeShortestEdge(short, short, data_cfg.long_side_max)


# --------------------------------------------------------------------------- batching
def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def pad_images(images: Sequence[torch.Tensor], size_divisor: int = 32) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad ``[3, h, w]`` images at the bottom and right into one ``[B, 3, Hp, Wp]`` batch.

    ``Hp, Wp`` are the largest height and width rounded up to a multiple of ``size_divisor``
    (the backbone's total stride, so feature maps tile the padded image exactly). Returns the
    batch, ``padding_mask [B, Hp, Wp]`` (true on padding, DETR's convention) and each image's
    ``(h, w)``: what every caller of the network (training, prediction) feeds it.
    """
    if not images:
        raise ValueError("cannot pad an empty list of images")
    if size_divisor < 1:
        raise ValueError(f"size_divisor must be positive, got {size_divisor}")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    pad_h = _round_up(max(h for h, _ in sizes), size_divisor)
    pad_w = _round_up(max(w for _, w in sizes), size_divisor)
    batch = images[0].new_zeros((len(images), 3, pad_h, pad_w))
    padding_mask = torch.ones((len(images), pad_h, pad_w), dtype=torch.bool)
    for i, (image, (h, w)) in enumerate(zip(images, sizes)):
        batch[i, :, :h, :w] = image
        padding_mask[i, :h, :w] = False
    return batch, padding_mask, sizes


def collate_points(batch: Sequence[dict[str, Any]], size_divisor: int = 32) -> dict[str, Any]:
    """Pad a list of dataset items into one batch.

    Images are zero-padded at the bottom and right to ``(Hp, Wp)``, the largest height and
    width in the batch rounded up to a multiple of ``size_divisor`` (the backbone's total
    stride, so feature maps tile the padded image exactly).

    Returns
    -------
    dict with ``images`` float [B, 3, Hp, Wp]; ``padding_mask`` bool [B, Hp, Wp], **true on
    padded pixels** (DETR's convention); ``image_sizes`` list of (h, w); ``image_ids``,
    ``orig_sizes``; lists of per-image tensors ``points_yx`` ([m_i, 2]), ``point_labels``,
    ``point_is_thing``, ``point_segment_ids``; when the items carry edge maps, ``edges`` float32
    [B, Hp, Wp] padded with 0; and, when the items carry ground truth,
    ``segment_ids`` int64 [B, Hp, Wp] padded with 0 (void) and ``segments`` (list of lists), and
    ``orig_segment_ids`` (list of [H0, W0] tensors) and ``orig_segments`` (list of lists).
    Use ``functools.partial(collate_points, size_divisor=...)`` as a DataLoader ``collate_fn``.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images, padding_mask, sizes = pad_images([item["image"] for item in batch], size_divisor)
    pad_h, pad_w = images.shape[-2:]
    out: dict[str, Any] = {
        "images": images,
        "padding_mask": padding_mask,
        "image_sizes": sizes,
        "image_ids": [item["image_id"] for item in batch],
        "orig_sizes": [item.get("orig_size") for item in batch],
    }
    for key in ("points_yx", "point_labels", "point_is_thing", "point_segment_ids"):
        out[key] = [item[key] for item in batch]
    if all("edges" in item for item in batch):
        edges = torch.zeros((len(batch), pad_h, pad_w), dtype=torch.float32)
        for i, (item, (h, w)) in enumerate(zip(batch, sizes)):
            edges[i, :h, :w] = item["edges"]
        out["edges"] = edges
    if all("segment_ids" in item for item in batch):
        segment_ids = torch.zeros((len(batch), pad_h, pad_w), dtype=torch.int64)
        for i, (item, (h, w)) in enumerate(zip(batch, sizes)):
            segment_ids[i, :h, :w] = item["segment_ids"]
        out["segment_ids"] = segment_ids
        out["segments"] = [item["segments"] for item in batch]
        out["orig_segment_ids"] = [item["orig_segment_ids"] for item in batch]
        out["orig_segments"] = [item["orig_segments"] for item in batch]
    return out
