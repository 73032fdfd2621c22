"""The data (and the starting weights) of a training run, checked before any worker starts.

A distributed run that fails on a missing file only after its workers have started costs a
cluster's start-up time and buries the reason in a worker's log. :func:`check_training_data`
opens the annotation files of the train split and of every split the run scores in the launching
process and refuses, with the config key and the path or value: a missing split, a split without
images, a class count that disagrees with ``data.num_classes``, a scored split (val,
``train.test_split``) whose categories differ from the train split's (the network's class axis
comes from the train split; evaluation would then score the wrong classes), and a train split too
small for one batch. It also refuses a ``model.pretrained`` that cannot work (an unknown weights
name, one for another backbone or width, a missing file:
:func:`~p2m_core.model.pretrained.check_pretrained`), without downloading anything: the workers
fetch named weights into their own cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2m_core.config import Config
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.splits import require_split
from p2m_core.errors import P2MInputError
from p2m_core.model.pretrained import check_pretrained


@dataclass(frozen=True)
class TrainingData:
    """What the checks found: the train and val image counts, the number of classes and how many
    of them are things."""

    train_images: int
    val_images: int
    num_classes: int
    thing_classes: int


def _open_split(cfg: Config, split: str) -> CocoPanoptic:
    paths = require_split(cfg.data, split, need_points=bool(getattr(cfg.data, split).points))
    return CocoPanoptic(paths.panoptic_json, image_dir=paths.images_dir, png_dir=paths.panoptic_dir)


def _category_summary(dataset: CocoPanoptic) -> list[tuple[Any, bool]]:
    return [(cid, bool(cat.isthing)) for cid, cat in dataset.categories.items()]


def check_training_data(cfg: Config) -> TrainingData:
    """Open the train split and every split the run scores (val, and ``train.test_split`` when
    set) and check them, and ``model.pretrained`` (module docstring)."""
    check_pretrained(cfg.model.pretrained, cfg.model.backbone, cfg.model.width)
    splits = {name: _open_split(cfg, name) for name in dict.fromkeys(("train", "val", cfg.train.test_split)) if name}
    for split, dataset in splits.items():
        if len(dataset) == 0:
            raise P2MInputError(f"data.{split}.json -> {dataset.json_path}: the split has no images; a training run needs at least one")
    expected = cfg.data.num_classes
    for split, dataset in splits.items():
        if expected and len(dataset.categories) != expected:
            raise P2MInputError(
                f"data.num_classes is {expected} but data.{split}.json -> {dataset.json_path} has "
                f"{len(dataset.categories)} categories; fix data.num_classes or point the split at the right annotations"
            )
    train = splits["train"]
    for split, dataset in splits.items():
        if _category_summary(train) != _category_summary(dataset):
            raise P2MInputError(
                f"data.train.json -> {train.json_path} and data.{split}.json -> {dataset.json_path} list different "
                f"categories ({len(train.categories)} vs {len(dataset.categories)}, or other ids / thing flags): the "
                f"network is built from the train split's classes and scored on the {split} split's"
            )
    if len(train) < cfg.train.batch_size:
        raise P2MInputError(
            f"data.train.json -> {train.json_path}: {len(train)} images give no batch of train.batch_size="
            f"{cfg.train.batch_size} (the global batch, over train.workers={cfg.train.workers} workers)"
        )
    things = sum(1 for cat in train.categories.values() if cat.isthing)
    return TrainingData(len(train), len(splits["val"]), len(train.categories), things)
