"""Where the files of a dataset split are: the one path rule of the platform.

A split (``train``, ``val`` or the held-out ``test``) is described by ``data.<split>`` of the config (``json``,
``panoptic``, ``images``, ``points``), each relative to ``data.root``; the defaults follow COCO's
layout (``panoptic_<split>.json`` beside ``panoptic_<split>/``, ``images/<split>/``,
``points_<split>.json``; docs/DATA.md). The training dataset, the pseudo-label stage and sweep
validation all resolve paths here, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2m_core.config import SPLITS
from p2m_core.errors import P2MInputError


@dataclass(frozen=True)
class SplitPaths:
    """Absolute or cwd-relative paths of one split; ``points`` is ``None`` when not configured."""

    split: str
    panoptic_json: Path
    panoptic_dir: Path | None
    images_dir: Path | None
    points: Path | None


def split_paths(data_cfg: Any, split: str) -> SplitPaths:
    """Paths of ``split`` under ``data_cfg.root`` (a :class:`~p2m_core.config.DataConfig`)."""
    if split not in SPLITS:
        raise P2MInputError(f"dataset split must be one of {', '.join(SPLITS)}, got {split!r}")
    split_cfg = getattr(data_cfg, split)
    if not split_cfg.json:
        raise P2MInputError(f"config: key 'data.{split}.json' is empty; it names the split's panoptic JSON")
    root = Path(data_cfg.root)
    return SplitPaths(
        split=split,
        panoptic_json=root / split_cfg.json,
        panoptic_dir=root / split_cfg.panoptic if split_cfg.panoptic else None,
        images_dir=root / split_cfg.images if split_cfg.images else None,
        points=root / split_cfg.points if split_cfg.points else None,
    )


def require_split(data_cfg: Any, split: str, need_points: bool = False) -> SplitPaths:
    """:func:`split_paths`, failing early and clearly when the split's files are not there.

    The message names the config keys and the paths, and for the synthetic dataset says how to
    generate it, so a sweep can refuse a missing dataset before any worker starts.
    """
    paths = split_paths(data_cfg, split)
    missing = []
    if not paths.panoptic_json.is_file():
        missing.append(f"data.{split}.json -> {paths.panoptic_json}")
    if paths.panoptic_dir is not None and not paths.panoptic_dir.is_dir():
        missing.append(f"data.{split}.panoptic -> {paths.panoptic_dir}")
    if need_points and (paths.points is None or not paths.points.is_file()):
        missing.append(f"data.{split}.points -> {paths.points}")
    if missing:
        hint = ""
        if data_cfg.dataset == "synthetic":
            hint = f"; generate it with: python -m p2m_core.data.synthetic --out {data_cfg.root}"
            if split == "test":
                hint += " --num-test N (the held-out split; or --config CONFIG to take data.synthetic's sizes)"
        raise P2MInputError(
            f"dataset not found: key 'data.root' is {str(data_cfg.root)!r} and these files are missing: "
            + ", ".join(missing) + hint
        )
    return paths
