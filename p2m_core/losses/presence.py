r"""Sigmoid focal loss, and the class-presence loss of the semantic decoder.

For a logit ``x`` with probability ``p = sigmoid(x)`` and a 0/1 target ``t`` (Lin et al.,
"Focal Loss for Dense Object Detection", ICCV 2017):

.. math::

    p_t = t\,p + (1 - t)(1 - p), \qquad \alpha_t = t\,\alpha + (1 - t)(1 - \alpha),

    \mathrm{FL}(x, t) = -\alpha_t (1 - p_t)^\gamma \log p_t ,

with ``alpha = 0.25`` and ``gamma = 2``. ``-log p_t`` is the binary cross-entropy with logits,
computed stably. The same function serves the panoptic branch's classification loss
(:mod:`p2m_core.losses.panoptic`), where the sum is divided by the number of boxes.

The presence loss applies it to the semantic decoder's per-class presence logits ``s_{b,c}``: the
target ``t_{b,c}`` is 1 iff image ``b`` has a point of class ``c``. As in the release (an mmdet
focal loss with ``avg_factor`` the number of present classes, weight 2, every semantic layer), the
sum over all ``B x C`` slots is divided by the number of present (image, class) pairs, not by
``B x C``:

.. math::

    L_{pres} = w \, \frac{\sum_{b,c} \mathrm{FL}(s_{b,c}, t_{b,c})}{\max(1, \sum_{b,c} t_{b,c})} .

A mean over all slots would shrink the term as the dataset's class count grows (COCO's 133 classes
against VOC's 21) while the number of classes in an image stays small. The count is the batch's,
shared by the data-parallel workers (:func:`p2m_core.losses.normalise.batch_count`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count

Reduction = Literal["mean", "sum", "none"]


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Element-wise sigmoid focal loss ``FL(x, t)`` (module doc), then reduced.

    Parameters
    ----------
    logits : Tensor [...]
        Raw scores ``x``.
    targets : Tensor [...]
        Targets in [0, 1] (0/1 for classification), same shape; any dtype, cast to ``logits``'.
    alpha, gamma : float
        Balance of the positives and focusing exponent. ``alpha < 0`` disables the balance.
    reduction : "mean" | "sum" | "none"
        Mean over all elements (0 for an empty input), sum, or the element-wise tensor.
    """
    if logits.shape != targets.shape:
        raise P2MInputError(f"sigmoid_focal_loss: logits {list(logits.shape)} and targets {list(targets.shape)} differ")
    t = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / max(loss.numel(), 1)
    raise P2MInputError(f"sigmoid_focal_loss: reduction must be mean, sum or none, got {reduction!r}")


def presence_targets(point_labels: list[Tensor], num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """Presence targets [B, C] float: 1 where image ``b`` has a point of class ``c``.

    ``point_labels[b]`` is a long tensor [m_b] of class indices in ``[0, num_classes)``."""
    out = torch.zeros(len(point_labels), num_classes, device=device)
    for b, labels in enumerate(point_labels):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise P2MInputError(f"presence_targets: image {b} has a class outside [0, {num_classes})")
        out[b, labels.to(out.device)] = 1.0
    return out


def presence_loss(
    logits: Tensor,
    targets: Tensor,
    weight: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    num: float | Tensor | None = None,
) -> Tensor:
    """``L_pres`` (module doc): ``weight * sum_{b,c} FL(s_{b,c}, t_{b,c}) / num``.

    Parameters
    ----------
    logits : Tensor [B, C]
        Presence logits of one semantic layer.
    targets : Tensor [B, C]
        0/1 targets (:func:`presence_targets`).
    weight : float
        Release: 2.
    num : float or Tensor, optional
        The divisor; by default the number of present pairs ``sum t`` of the batch, shared by the
        data-parallel workers and at least 1 (a collective call: a caller that sums several
        layers may compute it once with :func:`~p2m_core.losses.normalise.batch_count` and pass
        it, so that every worker makes the same calls).
    """
    if logits.dim() != 2:
        raise P2MInputError(f"presence_loss: logits must be [B, C], got {list(logits.shape)}")
    if num is None:
        num = batch_count(targets.detach().sum(), logits.device)
    if isinstance(num, Tensor):
        num = num.to(logits.dtype)
    return weight * sigmoid_focal_loss(logits, targets, alpha, gamma, "sum") / num
