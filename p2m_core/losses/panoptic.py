r"""Losses of the panoptic branch: box conversions, GIoU, L1, dice and the matched set losses.

Boxes are normalised to the image (``[0, 1]``) and given as ``(cx, cy, w, h)`` unless the name says
``xyxy``. With ``B_1 = (x_0, y_0, x_1, y_1)``, ``B_2`` and ``C`` the smallest box enclosing both
(Rezatofighi et al., CVPR 2019):

.. math::

    \mathrm{GIoU}(B_1, B_2) = \frac{|B_1 \cap B_2|}{|B_1 \cup B_2|}
        - \frac{|C| - |B_1 \cup B_2|}{|C|} \in [-1, 1] .

Losses per matched pair, each summed and divided by the number of targets (``num``, default the
pairs here; the caller passes the batch's count when it sums images):

* classification: sigmoid focal loss (:func:`p2m_core.losses.presence.sigmoid_focal_loss`) over
  all queries and classes, target 1 only at each matched query's class;
* ``L1 = sum |b - \hat b|_1`` on normalised cxcywh boxes;
* ``L_GIoU = sum (1 - GIoU)``;
* dice on masks without a sigmoid (the decoders' masks are >= 0):

.. math::

    L_{dice}(p, t) = 1 - \frac{2 \sum_i p_i t_i}{\sum_i p_i^2 + \sum_i t_i^2 + 2 \cdot 10^{-3}} .

Release weights: focal 2, L1 5, GIoU 2, dice 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.presence import sigmoid_focal_loss


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] ``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] ``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area (0 for degenerate boxes)."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1]).clamp(min=0)


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise GIoU (module doc) of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> [N, M]."""
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise P2MInputError(f"generalized_box_iou: boxes must be [N, 4] and [M, 4], got {list(a.shape)} and {list(b.shape)}")
    a, b = a[:, None, :], b[None, :, :]
    low = torch.maximum(a[..., :2], b[..., :2])
    high = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    union = box_area(a) + box_area(b) - inter
    enclosing = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(dim=-1)
    return inter / union.clamp(min=eps) - (enclosing - union) / enclosing.clamp(min=eps)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Normalised cxcywh boxes [N, 4] of binary masks [N, H, W].

    Pixel ``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``; the box spans the covered pixels and is
    divided by ``(W, H)``. An empty mask gets the zero box."""
    if masks.dim() != 3:
        raise P2MInputError(f"masks_to_boxes: masks must be [N, H, W], got {list(masks.shape)}")
    _, H, W = masks.shape
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)  # [N, H], [N, W]
    ys = torch.arange(H, device=masks.device, dtype=torch.float32)
    xs = torch.arange(W, device=masks.device, dtype=torch.float32)
    big = float(max(H, W))
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs + 1, -1.0).amax(dim=1)
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys + 1, -1.0).amax(dim=1)
    boxes = torch.stack((x0 / W, y0 / H, x1 / W, y1 / H), dim=1)
    empty = ~cols.any(dim=1)
    return torch.where(empty[:, None], 0.0, box_xyxy_to_cxcywh(boxes))


def _normaliser(num: float | Tensor | None, n: int) -> float | Tensor:
    return max(n, 1) if num is None else num


def box_l1_loss(pred: Tensor, target: Tensor, num: float | Tensor | None = None) -> Tensor:
    """``sum |pred - target|_1 / num`` over matched boxes [N, 4] (normalised cxcywh)."""
    if pred.shape != target.shape:
        raise P2MInputError(f"box_l1_loss: {list(pred.shape)} vs {list(target.shape)}")
    return (pred - target).abs().sum() / _normaliser(num, pred.shape[0])


def giou_loss(pred: Tensor, target: Tensor, num: float | Tensor | None = None) -> Tensor:
    """``sum (1 - GIoU(pred_i, target_i)) / num`` over matched cxcywh boxes [N, 4]."""
    if pred.shape != target.shape:
        raise P2MInputError(f"giou_loss: {list(pred.shape)} vs {list(target.shape)}")
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    giou = torch.diagonal(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)))
    return (1 - giou).sum() / _normaliser(num, pred.shape[0])


def dice_loss(pred: Tensor, target: Tensor, num: float | Tensor | None = None, eps: float = 1e-3) -> Tensor:
    """``sum_n L_dice(pred_n, target_n) / num`` (module doc) over masks [N, ...], no sigmoid."""
    if pred.shape != target.shape:
        raise P2MInputError(f"dice_loss: {list(pred.shape)} vs {list(target.shape)}")
    p, t = pred.flatten(1), target.flatten(1).to(pred.dtype)
    dice = 2 * (p * t).sum(dim=1) / ((p * p).sum(dim=1) + (t * t).sum(dim=1) + 2 * eps)
    return (1 - dice).sum() / _normaliser(num, pred.shape[0])


def set_losses(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    query_idx: Tensor,
    gt_idx: Tensor,
    num: float | Tensor | None = None,
    focal_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> dict[str, Tensor]:
    """Weighted classification and box losses of one image's matched queries.

    Parameters
    ----------
    cls_logits : Tensor [Q, C]
    pred_boxes : Tensor [Q, 4] normalised cxcywh
    gt_labels : Tensor [G] long, gt_boxes : Tensor [G, 4]
    query_idx, gt_idx : Tensor [K] long
        The matching (:func:`p2m_core.losses.matcher.hungarian_match`).
    num : normaliser (default ``max(K, 1)``).

    Returns
    -------
    ``{"cls": focal_weight * focal, "l1": l1_weight * L1, "giou": giou_weight * L_GIoU}``.
    """
    target = torch.zeros_like(cls_logits)
    target[query_idx, gt_labels[gt_idx]] = 1.0
    norm = _normaliser(num, int(query_idx.numel()))
    matched, boxes = pred_boxes[query_idx], gt_boxes[gt_idx]
    return {
        "cls": focal_weight * sigmoid_focal_loss(cls_logits, target, reduction="sum") / norm,
        "l1": l1_weight * box_l1_loss(matched, boxes, norm),
        "giou": giou_weight * giou_loss(matched, boxes, norm),
    }
