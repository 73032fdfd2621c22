r"""Hungarian matching of the location decoder's queries to the pseudo-mask boxes.

The cost of giving ground truth ``g`` (class ``c_g``, box ``b_g``) to query ``q`` is

.. math::

    C_{qg} = \lambda_{cls} \big( \alpha (1 - p)^\gamma (-\log p)
        - (1 - \alpha) p^\gamma (-\log(1 - p)) \big)\big|_{p = \sigma(z_{q c_g})}
        + \lambda_{L1} \lVert b_q - b_g \rVert_1 - \lambda_{GIoU} \mathrm{GIoU}(b_q, b_g),

(focal cost 2, L1 cost 5 on normalised cxcywh, GIoU cost 2; alpha 0.25, gamma 2), and the
matching is the assignment of minimum total cost (``scipy.optimize.linear_sum_assignment``, on
the CPU): every ground truth gets one query when ``G <= Q``.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.panoptic import box_cxcywh_to_xyxy, generalized_box_iou


COST_WEIGHTS = (2.0, 5.0, 2.0)
"""``(lambda_cls, lambda_L1, lambda_GIoU)`` of the release's matcher."""


def matching_cost(
    cls_logits: Tensor,
    boxes: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    weights: tuple[float, float, float] = COST_WEIGHTS,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """The cost matrix ``C`` [Q, G] of the module doc (no gradient); ``weights`` are
    ``(lambda_cls, lambda_L1, lambda_GIoU)``."""
    if cls_logits.dim() != 2 or boxes.shape != (cls_logits.shape[0], 4) or gt_boxes.shape != (gt_labels.shape[0], 4):
        raise P2MInputError(
            f"matching_cost: cls_logits [Q, C], boxes [Q, 4], gt_labels [G], gt_boxes [G, 4] expected, got "
            f"{list(cls_logits.shape)}, {list(boxes.shape)}, {list(gt_labels.shape)}, {list(gt_boxes.shape)}"
        )
    with torch.no_grad():
        p = torch.sigmoid(cls_logits[:, gt_labels.long()])  # [Q, G]
        positive = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)
        negative = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)
        l1 = torch.cdist(boxes.to(gt_boxes.dtype), gt_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))
        return weights[0] * (positive - negative) + weights[1] * l1 - weights[2] * giou


def hungarian_match(
    cls_logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, weights: tuple[float, float, float] = COST_WEIGHTS
) -> tuple[Tensor, Tensor]:
    """Minimum-cost matching of queries to ground truths (module doc).

    Parameters
    ----------
    cls_logits : Tensor [Q, C]
    boxes : Tensor [Q, 4] normalised cxcywh
    gt_labels : Tensor [G] long
    gt_boxes : Tensor [G, 4] normalised cxcywh
    weights : ``(lambda_cls, lambda_L1, lambda_GIoU)``, release ``(2, 5, 2)``

    Returns
    -------
    query_idx, gt_idx : Tensor [min(Q, G)] long, on the inputs' device
        Query ``query_idx[k]`` takes ground truth ``gt_idx[k]``; ``query_idx`` ascending.
    """
    cost = matching_cost(cls_logits, boxes, gt_labels, gt_boxes, weights)
    if not torch.isfinite(cost).all():
        raise P2MInputError("hungarian_match: the cost matrix has non-finite entries (NaN logits or boxes?)")
    rows, cols = linear_sum_assignment(cost.double().cpu().numpy())
    device = cls_logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(cols, dtype=torch.long, device=device)
