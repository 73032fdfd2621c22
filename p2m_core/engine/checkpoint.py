"""Model checkpoints: one torch file that rebuilds a trained network without its experiment.

A checkpoint is a plain dict saved with ``torch.save`` (format ``p2m-checkpoint/1``)::

    format        "p2m-checkpoint/1"
    model         the network's state dict
    config        the resolved config as the nested dict :func:`~p2m_core.config.from_dict`
                  rebuilds (what ``save_config`` writes as YAML)
    is_thing      ClassInfo.is_thing: one bool per class of the model's class axis
    categories    the dataset's categories in that (contiguous) order:
                  [{"id", "name", "isthing", "color"}], so predictions can be written with the
                  dataset's category ids without the dataset at hand
    optimizer     optimizer state dict, or None
    extra         caller's state (iteration, metrics ...), or None
    torch_version the torch that wrote it

Everything in it is a tensor or a plain Python value, so :func:`load_checkpoint` reads it with
``weights_only=True``: a checkpoint is user input, and unpickling arbitrary objects from it
would run code. The file is written atomically. Loading rebuilds the network from the saved
``model`` section with ``model.pretrained`` cleared (the ImageNet file it names was only the
starting point, and may not exist where the checkpoint is used) and loads the weights strictly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from p2m_core.config import Config, from_dict, to_dict
from p2m_core.data.panoptic_format import Category
from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike, atomic_open
from p2m_core.model.point2mask import ClassInfo, Point2Mask, build_model

CHECKPOINT_FORMAT = "p2m-checkpoint/1"
_REQUIRED = ("model", "config", "is_thing", "categories")


def category_dicts(categories: Mapping[int, Category] | Sequence[Category | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Categories in contiguous order as ``{"id", "name", "isthing", "color"}`` dicts.

    Accepts :attr:`CocoPanoptic.categories` (a dict in JSON order, which is the contiguous
    order), a list of :class:`Category`, or a list of COCO category dicts."""
    items = list(categories.values()) if isinstance(categories, Mapping) else list(categories)
    out = []
    for index, cat in enumerate(items):
        if isinstance(cat, Category):
            cid, name, isthing, color = cat.id, cat.name, cat.isthing, cat.color
        elif isinstance(cat, Mapping) and "id" in cat and "isthing" in cat:
            cid, name, isthing, color = cat["id"], cat.get("name", cat["id"]), cat["isthing"], cat.get("color")
        else:
            raise P2MInputError(f"categories[{index}]: expected a Category or a dict with 'id' and 'isthing', got {cat!r}")
        out.append({
            "id": int(cid), "name": str(name), "isthing": int(bool(isthing)),
            "color": None if color is None else [int(c) for c in color],
        })  # fmt: skip
    return out


def _check_classes(is_thing: Sequence[bool], categories: list[dict[str, Any]], where: str) -> None:
    flags = [bool(c["isthing"]) for c in categories]
    if list(map(bool, is_thing)) != flags:
        raise P2MInputError(
            f"{where}: the model's {len(is_thing)} classes (things at {[i for i, t in enumerate(is_thing) if t]}) "
            f"do not match the {len(categories)} categories (things at {[i for i, t in enumerate(flags) if t]})"
        )


def save_checkpoint(
    path: PathLike,
    model: Point2Mask,
    cfg: Config,
    classes: ClassInfo,
    categories: Mapping[int, Category] | Sequence[Category | Mapping[str, Any]],
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` with everything needed to rebuild and use it (module docstring).

    ``classes`` and ``categories`` must describe the same class axis (equal length and thing
    flags), and ``classes`` must be the model's: a checkpoint whose categories lie about its
    classes would write predictions under the wrong category ids. ``extra`` must hold tensors
    and plain Python values only (it is read back with ``weights_only=True``).
    """
    path = Path(path)
    cats = category_dicts(categories)
    _check_classes(classes.is_thing, cats, f"checkpoint {path}")
    if tuple(model.classes.is_thing) != tuple(classes.is_thing):
        raise P2MInputError(f"checkpoint {path}: 'classes' differ from the model's own classes ({model.classes.num_classes} classes)")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": to_dict(cfg),
        "is_thing": [bool(t) for t in classes.is_thing],
        "categories": cats,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": None if extra is None else dict(extra),
        "torch_version": str(torch.__version__),
    }
    with atomic_open(path) as handle:
        torch.save(payload, handle)
    return path


def read_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, checked to be a p2m checkpoint of a supported format version."""
    path = Path(path)
    if not path.is_file():
        raise P2MInputError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged file fails anywhere in unpickling (KeyError, zip errors ...)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's weights-only refusal is a page of advice; the line that names the object is the news
        named = [line for line in lines if line.startswith("WeightsUnpickler error")]
        reason = (named or lines or [type(exc).__name__])[0]
        raise P2MInputError(
            f"checkpoint {path} is not a readable torch file of plain values and tensors ({reason[:300]})"
        ) from exc
    if not isinstance(raw, dict) or "format" not in raw:
        raise P2MInputError(f"checkpoint {path} is not a p2m checkpoint: it has no 'format' field (a bare state dict?)")
    if raw["format"] != CHECKPOINT_FORMAT:
        raise P2MInputError(f"checkpoint {path}: field 'format' is {raw['format']!r}; this version reads {CHECKPOINT_FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise P2MInputError(f"checkpoint {path}: missing field(s) {', '.join(repr(k) for k in missing)}")
    return raw


def _weights_mismatch(model: Point2Mask, state: Mapping[str, Any]) -> str:
    """What differs between the network's parameters and a state dict ('' when they fit)."""
    own = model.state_dict()
    if not isinstance(state, Mapping):
        return f"expected a state dict, got {type(state).__name__}"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (saved vs network)", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
    return "; ".join(parts)


def load_checkpoint(
    path: PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Point2Mask, Config, list[dict[str, Any]], dict[str, Any]]:
    """Rebuild the network of a checkpoint: ``(model, cfg, categories, raw)``.

    ``model`` is in eval mode on ``map_location``; ``cfg`` is the saved config with
    ``model.pretrained`` cleared (the one that built ``model``); ``categories`` the saved
    categories in the model's class order; ``raw`` the whole saved dict (optimizer, extra).
    A missing or unreadable file, another format, a config this version rejects, or weights
    that do not fit the rebuilt network raise :class:`P2MInputError` naming the file.
    """
    path = Path(path)
    raw = read_checkpoint(path, map_location)
    try:
        cfg = from_dict(raw["config"], {}, Config) if isinstance(raw["config"], dict) else None
    except P2MInputError as exc:
        raise P2MInputError(f"checkpoint {path}: field 'config': {exc}") from exc
    if cfg is None:
        raise P2MInputError(f"checkpoint {path}: field 'config' must be a dict, got {type(raw['config']).__name__}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=""))
    categories = category_dicts(raw["categories"]) if isinstance(raw["categories"], list) else None
    if categories is None or not isinstance(raw["is_thing"], list):
        raise P2MInputError(f"checkpoint {path}: fields 'categories' and 'is_thing' must be lists")
    _check_classes(raw["is_thing"], categories, f"checkpoint {path}")
    # the trained weights replace the starting ones: neither read model.pretrained nor warn
    model = build_model(cfg.model, ClassInfo(tuple(bool(t) for t in raw["is_thing"])), load_weights=False)
    problem = _weights_mismatch(model, raw["model"])
    if problem:
        raise P2MInputError(f"checkpoint {path}: field 'model': the weights do not fit the network its config builds ({problem})")
    model.load_state_dict(raw["model"], strict=True)
    return model.to(map_location).eval(), cfg, categories, raw
