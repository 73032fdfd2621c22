"""Checkpoints of the tiny network for the tests: built (untrained) on a dataset's categories."""

from __future__ import annotations

from pathlib import Path

import torch

from p2m_core.config import Config, load_config
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.engine.checkpoint import save_checkpoint
from p2m_core.model.point2mask import ClassInfo, Point2Mask, build_model

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "presets" / "synthetic_tiny.yaml"
# An untrained network scores every candidate low and its masks stay near 0.5: without these
# the predictions would be empty and prove nothing about ids, files and categories.
PERMISSIVE = ["model.inference.score_threshold=0.0", "model.inference.mask_threshold=0.3"]


def tiny_config(root: Path, *overrides: str) -> Config:
    """The tiny preset on the synthetic data at ``root``, points sampled on the fly."""
    return load_config(TINY, [f"data.root={root}", "data.train.points=", "data.val.points=", *overrides])


def tiny_checkpoint(path: Path, cfg: Config, dataset: CocoPanoptic, seed: int = 0) -> tuple[Path, Point2Mask]:
    """An untrained tiny network for ``dataset``'s categories, saved at ``path``."""
    torch.manual_seed(seed)
    classes = ClassInfo.from_dataset(dataset)
    model = build_model(cfg.model, classes).eval()
    return save_checkpoint(path, model, cfg, classes, dataset.categories), model
