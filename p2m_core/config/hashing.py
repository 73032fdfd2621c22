"""What a run computes from: the keys each stage reads, the stage's config hash, and the flat
dotted params logged to MLflow (docs/TRACKING.md, "The config hash")."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from p2m_core.config.sections import Config
from p2m_core.errors import P2MInputError

#: Bump when the code changes what some setting computes: runs hashed under another version
#: are then never taken for finished (docs/TRACKING.md, "The config hash").
#: 2: the converged Sinkhorn became a Newton solver (same problem, different stopping point).
#: 3: training: the tree energy on the normalised image, the presence losses normalised by the
#: present classes, predictions scored at the original image size, one seed for initialisation,
#: data order and augmentation, the global batch.
HASH_VERSION = 3

#: Dotted prefixes of the keys each stage reads, and the keys among them that change only speed
#: or artifacts. A stage's hash covers exactly these, so e.g. ``train.lr`` never changes a
#: ``pseudo`` trial's hash. Augmentation (``data.min_size`` ...) is training-only.
STAGE_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "pseudo": {
        "include": (
            "data.dataset", "data.root", "data.train.", "data.val.", "data.test.", "data.point_seed", "data.edge_model",
            "pseudo.", "ablation.",
        ),
        "exclude": ("ablation.batch_size", "ablation.overlays", "ablation.device"),
    },
    "train": {
        "include": ("seed", "data.", "pseudo.", "model.", "loss.", "train."),
        "exclude": (
            "data.num_workers", "data.num_classes", "train.log_every", "train.device", "train.overlays", "train.checkpoint_every",
            "train.max_failures", "train.storage_path",
        ),
    },
}
STAGES: tuple[str, ...] = tuple(STAGE_KEYS)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def stage_keys(cfg: Config, stage: str) -> dict[str, Any]:
    """The flat ``{dotted key: value}`` that ``stage`` reads (:data:`STAGE_KEYS`)."""
    if stage not in STAGE_KEYS:
        raise P2MInputError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    rule = STAGE_KEYS[stage]
    flat = flatten(to_dict(cfg))
    return {k: v for k, v in flat.items() if _matches(k, rule["include"]) and not _matches(k, rule["exclude"])}


def stage_hash(cfg: Config, stage: str) -> str:
    """16 hex digits identifying what ``stage`` computes from ``cfg``.

    SHA-256 over canonical JSON of ``{"version": HASH_VERSION, "stage": stage, "config":
    stage_keys(cfg, stage)}``: stable across processes and machines, blind to the run's name,
    tracking location and execution settings, and different for different stages.
    """
    payload = {"version": HASH_VERSION, "stage": stage, "config": stage_keys(cfg, stage)}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedConfig:
    """A config as MLflow sees it: flat dotted params and the hash of one stage."""

    flat: dict[str, Any]
    hash: str
    stage: str


def resolve(cfg: Config, stage: str = "train") -> ResolvedConfig:
    """Flatten ``cfg`` to dotted keys (every field: what MLflow logs as params) and hash what
    ``stage`` computes from (:func:`stage_hash`)."""
    return ResolvedConfig(flat=flatten(to_dict(cfg)), hash=stage_hash(cfg, stage), stage=stage)

