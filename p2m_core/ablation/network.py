"""The ``checkpoint`` map source: ``P^s`` and ``P^b_high`` from a frozen trained network.

:meth:`CheckpointMaps.open` loads ``ablation.checkpoint`` onto the stage's device and refuses it
when its classes are not the dataset's categories (same ids, same order, same thing flags):
the pseudo labels index ``P^s`` by the dataset's contiguous classes, so a network trained on
other categories would give maps of the wrong classes without any error. This happens before
any image is read. Each batch of the stage (images of one mask size) is then padded as in
training (:func:`~p2m_core.data.dataset.pad_images`), run through the network once, and its
maps (:func:`~p2m_core.model.task_maps.network_maps`, at ``pseudo.mask_stride`` of the
*stage's* config) are cropped to each image and stored in its
:class:`~p2m_core.ablation.sources.ImageMaps`. The semantic map is stored as probabilities
(softmax), as the other sources' are, so ``ablation.cost_ready`` treats it the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p2m_core.ablation.prepare import PreparedImage
from p2m_core.ablation.sources import ImageMaps
from p2m_core.config import Config
from p2m_core.data.dataset import image_tensor, pad_images
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.engine.checkpoint import load_checkpoint
from p2m_core.errors import P2MInputError
from p2m_core.model.point2mask import Point2Mask
from p2m_core.model.task_maps import mask_grid, network_maps

log = logging.getLogger(__name__)


def _describe(category: dict[str, Any] | None) -> str:
    if category is None:
        return "nothing"
    kind = "thing" if category["isthing"] else "stuff"
    return f"id {category['id']} '{category['name']}' ({kind})"


def check_same_classes(path: Path, categories: list[dict[str, Any]], dataset: CocoPanoptic) -> None:
    """Refuse a checkpoint whose class axis is not the dataset's (module docstring), naming
    both files and the first class that differs."""
    ours = [{"id": c.id, "name": c.name, "isthing": c.isthing} for c in dataset.categories.values()]
    saved_keys = [(c["id"], bool(c["isthing"])) for c in categories]
    our_keys = [(c["id"], bool(c["isthing"])) for c in ours]
    if saved_keys == our_keys:
        return
    common = min(len(saved_keys), len(our_keys))
    first = next((i for i in range(common) if saved_keys[i] != our_keys[i]), common)
    raise P2MInputError(
        f"key 'ablation.checkpoint': checkpoint {path} has {len(categories)} classes that do not match the "
        f"{len(ours)} categories of {dataset.json_path}: class {first} is {_describe(categories[first] if first < len(categories) else None)} "
        f"in the checkpoint but {_describe(ours[first] if first < len(ours) else None)} in the dataset"
    )


def file_sha256(path: Path) -> str:
    """The checkpoint's content hash, recorded beside the metrics: the config hash covers the
    path only, and a file overwritten by further training must not look like the same run."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CheckpointMaps:
    """A loaded network that fills the maps of the stage's batches (module docstring)."""

    path: Path
    model: Point2Mask
    mask_stride: int
    size_divisor: int
    device: str
    sha256: str
    seconds: float = 0.0
    images: int = 0

    @classmethod
    def open(cls, cfg: Config, dataset: CocoPanoptic, device: str) -> CheckpointMaps:
        """Load ``cfg.ablation.checkpoint`` for ``dataset`` onto ``device`` (eval mode)."""
        path = Path(cfg.ablation.checkpoint)
        model, model_cfg, categories, _ = load_checkpoint(path, map_location=device)
        check_same_classes(path, categories, dataset)
        log.info("checkpoint maps from %s (%d classes) on %s", path, len(categories), device)
        return cls(path, model, cfg.pseudo.mask_stride, model_cfg.data.size_divisor, device, file_sha256(path))

    @torch.inference_mode()
    def __call__(self, batch: list[PreparedImage]) -> None:
        """Predict ``P^s``, ``P^b_high`` and the projector's embedding (when the network has one)
        of every image of ``batch`` (which must carry its RGB image) and store them in its maps,
        keeping its ``P^b_low``."""
        start = time.perf_counter()
        inputs = []
        for item in batch:
            if item.image is None:
                raise ValueError(f"checkpoint maps: image {item.record.image_id!r} was prepared without its RGB image")
            inputs.append(image_tensor(item.image))
        images, padding_mask, _ = pad_images(inputs, self.size_divisor)
        out = self.model(images.to(self.device), padding_mask.to(self.device))
        logits, high, embedding = network_maps(out, mask_grid(images.shape, self.mask_stride))
        semantic = logits.softmax(1).cpu().numpy()
        high = high.clamp(0, 1).cpu().numpy()
        embedding = None if embedding is None else embedding.cpu().numpy()
        for b, item in enumerate(batch):
            h, w = item.mask_shape
            item.maps = ImageMaps(
                semantic[b, :, :h, :w].copy(), high[b, :h, :w].copy(), item.maps.boundary_low,
                None if embedding is None else embedding[b, :, :h, :w].copy(),
            )
        self.seconds += time.perf_counter() - start
        self.images += len(batch)

    def record(self) -> dict[str, Any]:
        """What the result record says of the network: file, content hash, classes, speed."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "num_classes": self.model.classes.num_classes,
            "network_seconds_per_image": self.seconds / max(self.images, 1),
        }
