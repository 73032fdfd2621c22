"""From the panoptic head's outputs to one panoptic prediction per image (the release's rules).

Candidates are scored, then painted onto an empty canvas in descending score:

- **things**: sigmoid class scores of every (query, thing class) pair, flattened, the top
  ``top_k`` (100) kept, so a query may appear with several labels; **stuff**: one candidate per
  stuff class, scored by the sigmoid of its presence logit;
- each candidate's mask (probabilities resized to the image) is binarised at
  ``mask_threshold`` (0.5); its *mask score* is the mean probability inside the binary region,
  and its final score is ``class score * mask score ** 2``;
- a candidate is skipped when its score is below ``score_threshold`` (0.25), its binary mask is
  empty, or the share of its area already painted exceeds ``thing_overlap`` (0.4) for things or
  ``stuff_overlap`` (0.2) for stuff; otherwise it paints its still-unpainted pixels.

Unpainted pixels are void. The numbers are settings (``model.inference``,
:class:`~p2m_core.config.InferenceConfig`), not constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from p2m_core.config import InferenceConfig


@dataclass
class Candidate:
    """One segment candidate: class index (into the model's classes), thing or stuff, final
    score and its binary mask ``[H, W]``."""

    label: int
    is_thing: bool
    score: float
    mask: Tensor


def candidates(
    thing_logits: Tensor, thing_masks: Tensor, thing_classes: list[int],
    stuff_logits: Tensor, stuff_masks: Tensor, stuff_classes: list[int], settings: InferenceConfig,
) -> list[Candidate]:
    """Scored candidates of one image (module docstring).

    ``thing_logits [Q, T]`` (class logits of the thing queries over the T thing classes),
    ``thing_masks [Q, H, W]`` and ``stuff_masks [S, H, W]`` mask probabilities at the image
    size, ``stuff_logits [S]`` presence logits; ``thing_classes`` / ``stuff_classes`` map the
    columns to model class indices.
    """
    out = []
    Q, T = thing_logits.shape
    if Q * T:
        scores = thing_logits.sigmoid().flatten()
        top = scores.topk(min(settings.top_k, scores.numel()))
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            q, t = divmod(flat, T)
            out.append(_candidate(thing_classes[t], True, score, thing_masks[q], settings))
    for s, score in enumerate(stuff_logits.sigmoid().tolist()):
        out.append(_candidate(stuff_classes[s], False, score, stuff_masks[s], settings))
    return out


def _candidate(label: int, is_thing: bool, class_score: float, prob: Tensor, settings: InferenceConfig) -> Candidate:
    binary = prob > settings.mask_threshold
    area = int(binary.sum())
    mask_score = float(prob[binary].mean()) if area else 0.0
    return Candidate(label, is_thing, class_score * mask_score**2, binary)


def paint(cands: list[Candidate], size: tuple[int, int], settings: InferenceConfig) -> tuple[Tensor, list[dict[str, Any]]]:
    """Paint candidates in descending score -> ``(segment ids [H, W] long, 0 = void;
    segments [{"id", "label", "isthing", "score", "area"}])`` (module docstring)."""
    canvas = torch.zeros(size, dtype=torch.long)
    segments: list[dict[str, Any]] = []
    for cand in sorted(cands, key=lambda c: -c.score):
        if cand.score < settings.score_threshold:
            break
        mask = cand.mask.to(canvas.device)
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & (canvas == 0)
        limit = settings.thing_overlap if cand.is_thing else settings.stuff_overlap
        if (area - int(free.sum())) / area > limit:
            continue
        seg_id = len(segments) + 1
        canvas[free] = seg_id
        segments.append({"id": seg_id, "label": cand.label, "isthing": cand.is_thing, "score": cand.score,
                         "area": int(free.sum())})  # fmt: skip
    return canvas, segments
