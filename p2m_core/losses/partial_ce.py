r"""Partial cross-entropy on the labelled pixels of the semantic map (paper Sec. 3.4, ``L_partial``).

Only pixels near a point carry a label. Each point is dilated to a square of ``size x size``
*input* pixels (release: 17), the squares are nearest-downsampled to the map's stride, and the
loss is the cross-entropy averaged over the labelled pixels ``\Omega`` of the whole batch:

.. math::

    L_{partial} = \frac{1}{|\Omega|} \sum_{(b, i) \in \Omega} -\log \mathrm{softmax}(z_{b,i})_{y_{b,i}} .

``|Omega|`` is the batch's count, shared by the data-parallel workers
(:func:`p2m_core.losses.normalise.batch_count`); the release divides by the same count.

Label map conventions (:func:`rasterise_points`): unlabelled pixels hold ``ignore_index`` (-1);
where squares of different classes overlap, the lowest class index wins with ``order="class"``
(the release: its per-class masks go through an argmax over classes, which returns the first
maximum) and the point listed first with ``order="point"``. Nearest downsampling picks, for
map cell ``(i, j)`` of an ``h x w`` map over an ``H x W`` canvas, the input pixel
``(floor(i H / h), floor(j W / w))`` (PyTorch's ``nearest``; the top-left pixel of the cell when
the stride divides the canvas).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count

IGNORE_INDEX = -1
"""Label of the pixels without a point label."""


def rasterise_points(
    points_yx: Sequence[Tensor],
    point_labels: Sequence[Tensor],
    image_size: tuple[int, int],
    map_size: tuple[int, int],
    size: int = 17,
    ignore_index: int = IGNORE_INDEX,
    order: Literal["point", "class"] = "point",
) -> Tensor:
    """Label maps [B, h, w] long of points dilated to squares (module doc).

    Parameters
    ----------
    points_yx : sequence of B Tensors [m_b, 2] long
        Point positions ``(y, x)`` in *input* pixels (of the ``H x W`` canvas).
    point_labels : sequence of B Tensors [m_b] long
        Class of each point.
    image_size : (H, W)
        The input canvas the points live on.
    map_size : (h, w)
        The map resolution (e.g. ``ceil(H / 8)``).
    size : int
        Side of the square in input pixels; it covers ``y - size // 2 .. y - size // 2 + size - 1``.
    ignore_index : int
        Value of unlabelled pixels.
    order : "point" | "class"
        Which covering square labels a cell: the lowest point index, or the lowest class (the
        release's rule; the criterion's).

    Returns
    -------
    Tensor [B, h, w] long on the points' device; cell ``(i, j)`` holds the class of the first
    (``order``) point whose square covers the cell's sampled input pixel, else ``ignore_index``.
    """
    if order not in ("point", "class"):
        raise P2MInputError(f"rasterise_points: order must be point or class, got {order!r}")
    if len(points_yx) != len(point_labels):
        raise P2MInputError(f"rasterise_points: {len(points_yx)} point sets but {len(point_labels)} label sets")
    if size < 1:
        raise P2MInputError(f"rasterise_points: size must be >= 1, got {size}")
    (H, W), (h, w) = image_size, map_size
    device = points_yx[0].device if len(points_yx) else torch.device("cpu")
    ys = torch.arange(h, device=device) * H // h  # sampled input row of each map row
    xs = torch.arange(w, device=device) * W // w
    out = torch.full((len(points_yx), h, w), ignore_index, dtype=torch.long, device=device)
    for b, (yx, labels) in enumerate(zip(points_yx, point_labels, strict=True)):
        if yx.dim() != 2 or yx.shape[-1] != 2 or labels.shape != yx.shape[:1]:
            raise P2MInputError(
                f"rasterise_points: image {b}: points must be [m, 2] with labels [m], got {list(yx.shape)} and {list(labels.shape)}"
            )
        if yx.shape[0] == 0:
            continue
        if order == "class":
            rank = labels.to(device).long().argsort(stable=True)
            yx, labels = yx.to(device)[rank], labels.to(device)[rank]
        top_left = yx.to(device).long() - size // 2
        rows = (ys[None, :] >= top_left[:, :1]) & (ys[None, :] < top_left[:, :1] + size)  # [m, h]
        cols = (xs[None, :] >= top_left[:, 1:]) & (xs[None, :] < top_left[:, 1:] + size)  # [m, w]
        covers = rows[:, :, None] & cols[:, None, :]  # [m, h, w]
        first = covers.to(torch.uint8).argmax(dim=0)  # lowest covering index (0 if none)
        painted = labels.to(device).long()[first]
        out[b] = torch.where(covers.any(dim=0), painted, out[b])
    return out


def partial_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``L_partial`` (module doc): mean cross-entropy over the labelled pixels of the batch.

    Parameters
    ----------
    logits : Tensor [B, C, h, w]
        Class scores before the softmax.
    labels : Tensor [B, h, w] long
        Class per pixel or ``ignore_index`` (:func:`rasterise_points`).

    Returns
    -------
    Scalar tensor; 0 (connected to ``logits``, gradient zero) when no pixel is labelled.
    """
    if logits.dim() != 4 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise P2MInputError(
            f"partial_cross_entropy: logits must be [B, C, h, w] and labels [B, h, w], got {list(logits.shape)} and {list(labels.shape)}"
        )
    labelled = labels != ignore_index
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / batch_count(labelled.sum()).to(logits.dtype)
