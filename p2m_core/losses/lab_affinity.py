r"""Local LAB colour affinity loss of the semantic map (paper Sec. 3.4, ``L_LAB``, weight alpha1 = 3).

Neighbouring pixels of similar colour should get the same class (a BoxInst-style pairwise term).
The image is resized to the map's resolution and converted from sRGB to CIE Lab (D65,
:func:`rgb_to_lab`). For a kernel of ``k x k`` taps with dilation ``d``, every pixel ``p`` is
paired with each ``q = p + d (i, j)``, ``|i|, |j| <= k // 2``, ``(i, j) != 0``, inside the map.
With colour similarity and class agreement

.. math::

    \mathrm{sim}(p, q) = \exp\big(-\tfrac12 \lVert Lab(p) - Lab(q) \rVert_2\big), \qquad
    a(p, q) = \sum_c P_p(c) P_q(c),

the loss of a kernel in image ``b`` is the mean of ``-log a(p, q)`` over its counted pairs
``K_b`` (``sim >= 0.3``, both ends inside the map and the valid region), and the batch loss the
mean over the ``B`` images:

.. math::

    L^{k}_b = \frac{1}{\max(1, |K_b|)} \sum_{(p, q) \in K_b} -\log a(p, q), \qquad
    L_{LAB} = \frac{1}{B} \sum_b \big(0.35\, L^{3 \times 3, d=2}_b + 0.65\, L^{5 \times 5, d=2}_b\big) .

This is the release's normalisation (per image, then over images): an image with few counted
pairs (a small or busy one) weighs as much as one with many. ``B`` is the batch's image count,
shared by the data-parallel workers (:func:`p2m_core.losses.normalise.batch_count`), so a split
batch gives the whole batch's gradient.

Given the log-probabilities, ``log a(p, q) = logsumexp_c(log P_p(c) + log P_q(c))`` (the
release's form: exact, with a gradient however small ``a`` gets); given only probabilities,
``a`` is clamped at ``eps`` inside the log.

Each unordered pair is counted once (the term is symmetric, so the mean equals that over both
orders). Differences from the release, deliberately: pairs reaching outside the map are not
counted (the release's zero-padded unfold counts a near-black pixel's pairs with the outside,
at loss 0, in the denominator), and pairs touching padding are dropped (the release has no
padding mask; its count grows with the batch's padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.errors import P2MInputError
from p2m_core.losses.normalise import batch_count
from p2m_core.pseudo.edge_lengths import pair_slices

# sRGB (linear) -> XYZ, and the D65 white point (the values OpenCV uses).
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_LAB_T0 = 0.008856  # (6/29)^3, the cube-root / linear switch of CIE Lab

KERNELS: tuple[tuple[int, int, float], ...] = ((3, 2, 0.35), (5, 2, 0.65))
"""The release's kernels: (taps per side, dilation, weight)."""


def rgb_to_lab(rgb: Tensor, max_value: float = 1.0) -> Tensor:
    r"""sRGB to CIE Lab under D65, as OpenCV's ``COLOR_RGB2Lab`` on float images.

    ``v = rgb / max_value``; linearise ``v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055)^2.4``;
    ``XYZ = M v`` divided by the white point; ``f(t) = t^{1/3}`` for ``t > 0.008856`` else
    ``7.787 t + 16/116``; ``L = 116 f(Y) - 16`` (``903.3 Y`` below the switch),
    ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``.

    Parameters
    ----------
    rgb : Tensor [B, 3, H, W] or [3, H, W]
        sRGB values in ``[0, max_value]`` (1 for floats in [0, 1], 255 for 8-bit values).

    Returns
    -------
    Tensor, same shape, float: L in [0, 100], a and b roughly in [-128, 128].
    """
    if rgb.dim() not in (3, 4) or rgb.shape[-3] != 3:
        raise P2MInputError(f"rgb_to_lab: expected [B, 3, H, W] or [3, H, W], got {list(rgb.shape)}")
    dtype = rgb.dtype if rgb.dtype.is_floating_point else torch.float32
    v = (rgb.to(dtype) / max_value).clamp(0.0, 1.0)
    lin = torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(_RGB_TO_XYZ, dtype=dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=dtype, device=rgb.device)
    xyz = torch.einsum("kc,...chw->...khw", m, lin) / white[:, None, None]
    f = torch.where(xyz > _LAB_T0, xyz.clamp(min=_LAB_T0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    y = xyz.select(-3, 1)
    lightness = torch.where(y > _LAB_T0, 116.0 * fy - 16.0, 903.3 * y)
    return torch.stack((lightness, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def kernel_offsets(taps: int, dilation: int) -> list[tuple[int, int]]:
    """Half of the neighbour offsets of a ``taps x taps`` kernel with ``dilation``: one of each
    pair ``+-(dy, dx)`` (those with ``dy > 0``, or ``dy == 0`` and ``dx > 0``)."""
    r = taps // 2
    return [(i * dilation, j * dilation) for i in range(0, r + 1) for j in range(-r, r + 1) if i > 0 or j > 0]


def lab_affinity_loss(
    probs: Tensor,
    image: Tensor,
    max_value: float = 1.0,
    valid: Tensor | None = None,
    kernels: Sequence[tuple[int, int, float]] = KERNELS,
    threshold: float = 0.3,
    eps: float = 1e-6,
    log_probs: Tensor | None = None,
) -> Tensor:
    """``L_LAB`` (module doc).

    Parameters
    ----------
    probs : Tensor [B, C, h, w]
        Class probabilities (softmax of the semantic logits); unused when ``log_probs`` is given.
    image : Tensor [B, 3, H, W]
        sRGB image in ``[0, max_value]`` (not mean/std normalised); resized bilinearly
        (``align_corners=False``) to ``h x w`` when ``(H, W) != (h, w)``, then converted to Lab.
    valid : Tensor [B, h, w] bool, optional
        Pixels inside the image (not padding); a pair counts only when both ends are valid.
    kernels : sequence of (taps, dilation, weight)
    threshold : float
        Minimum colour similarity of a counted pair.
    eps : float
        Clamp of ``a(p, q)`` inside the log when only ``probs`` is given.
    log_probs : Tensor [B, C, h, w], optional
        ``log_softmax`` of the semantic logits: ``log a`` by a log-sum-exp (module doc).

    Returns
    -------
    Scalar tensor (0 when nothing is counted, never NaN).
    """
    if log_probs is not None:
        if log_probs.shape != probs.shape:
            raise P2MInputError(f"lab_affinity_loss: log_probs {list(log_probs.shape)} and probs {list(probs.shape)} differ")
        probs = log_probs
    if probs.dim() != 4 or image.dim() != 4 or image.shape[0] != probs.shape[0] or image.shape[1] != 3:
        raise P2MInputError(
            f"lab_affinity_loss: probs must be [B, C, h, w] and image [B, 3, H, W], got {list(probs.shape)} and {list(image.shape)}"
        )
    B, _, h, w = probs.shape
    if valid is not None and valid.shape != (B, h, w):
        raise P2MInputError(f"lab_affinity_loss: valid must be [B, h, w] = {[B, h, w]}, got {list(valid.shape)}")
    with torch.no_grad():
        small = image.to(probs.dtype)
        if small.shape[-2:] != (h, w):
            small = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        lab = rgb_to_lab(small, max_value)
    per_image = probs.new_zeros(B) + probs.sum() * 0.0  # keeps the graph when nothing counts
    for taps, dilation, weight in kernels:
        loss_sum, count = per_image * 0.0, torch.zeros(B, device=probs.device)
        for dy, dx in kernel_offsets(taps, dilation):
            p_sl, q_sl = pair_slices(dy, dx, h, w)
            with torch.no_grad():
                sim = torch.exp(-0.5 * torch.linalg.vector_norm(lab[..., p_sl[0], p_sl[1]] - lab[..., q_sl[0], q_sl[1]], dim=1))
                counted = sim >= threshold
                if valid is not None:
                    counted &= valid[:, p_sl[0], p_sl[1]] & valid[:, q_sl[0], q_sl[1]]
            p_end, q_end = probs[..., p_sl[0], p_sl[1]], probs[..., q_sl[0], q_sl[1]]
            if log_probs is not None:
                neg_log_agree = -torch.logsumexp(p_end + q_end, dim=1)
            else:
                neg_log_agree = -torch.log((p_end * q_end).sum(dim=1).clamp(min=eps))
            loss_sum = loss_sum + (neg_log_agree * counted).sum(dim=(1, 2))
            count = count + counted.sum(dim=(1, 2))
        per_image = per_image + weight * loss_sum / count.clamp(min=1).to(probs.dtype)
    return per_image.sum() / batch_count(B, probs.device).to(probs.dtype)
