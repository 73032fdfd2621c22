r"""Local LAB colour affinity loss of the semantic map (paper Sec. 3.4, ``L_LAB``, weight alpha1 = 3).

Neighbouring pixels of similar colour should get the same class (a BoxInst-style pairwise term).
The image is resized to the map's resolution and converted from sRGB to CIE Lab (D65,
:func:`rgb_to_lab`). For a kernel of ``k x k`` taps with dilation ``d``, every pixel ``p`` is
paired with each ``q = p + d (i, j)``, ``|i|, |j| <= k // 2``, ``(i, j) != 0``, inside the map.
With colour similarity and class agreement

.. math::

    \mathrm{sim}(p, q) = \exp\big(-\tfrac12 \lVert Lab(p) - Lab(q) \rVert_2\big), \qquad
    a(p, q) = \sum_c P_p(c) P_q(c),

the loss of a kernel is the mean of ``-log max(a(p, q), eps)`` over the pairs with
``sim >= 0.3`` (both ends inside the valid region), and

.. math::

    L_{LAB} = 0.35\, L_{3 \times 3, d=2} + 0.65\, L_{5 \times 5, d=2} .

Each unordered pair is counted once (the term is symmetric, so the mean equals that over both
orders). A kernel with no counted pair contributes 0. The mean runs over the pairs of the whole
batch.
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
) -> Tensor:
    """``L_LAB`` (module doc).

    Parameters
    ----------
    probs : Tensor [B, C, h, w]
        Class probabilities (softmax of the semantic logits).
    image : Tensor [B, 3, H, W]
        sRGB image in ``[0, max_value]`` (not mean/std normalised); resized bilinearly
        (``align_corners=False``) to ``h x w`` when ``(H, W) != (h, w)``, then converted to Lab.
    valid : Tensor [B, h, w] bool, optional
        Pixels inside the image (not padding); a pair counts only when both ends are valid.
    kernels : sequence of (taps, dilation, weight)
    threshold : float
        Minimum colour similarity of a counted pair.
    eps : float
        Clamp of ``a(p, q)`` inside the log.

    Returns
    -------
    Scalar tensor (0 when nothing is counted, never NaN).
    """
    if probs.dim() != 4 or image.dim() != 4 or image.shape[0] != probs.shape[0] or image.shape[1] != 3:
        raise P2MInputError(
            f"lab_affinity_loss: probs must be [B, C, h, w] and image [B, 3, H, W], got {list(probs.shape)} and {list(image.shape)}"
        )
    h, w = probs.shape[-2:]
    if valid is not None and valid.shape != (probs.shape[0], h, w):
        raise P2MInputError(f"lab_affinity_loss: valid must be [B, h, w] = {[probs.shape[0], h, w]}, got {list(valid.shape)}")
    with torch.no_grad():
        small = image.to(probs.dtype)
        if small.shape[-2:] != (h, w):
            small = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        lab = rgb_to_lab(small, max_value)
    total = probs.sum() * 0.0
    for taps, dilation, weight in kernels:
        loss_sum, count = total * 0.0, 0
        for dy, dx in kernel_offsets(taps, dilation):
            p_sl, q_sl = pair_slices(dy, dx, h, w)
            with torch.no_grad():
                sim = torch.exp(-0.5 * torch.linalg.vector_norm(lab[..., p_sl[0], p_sl[1]] - lab[..., q_sl[0], q_sl[1]], dim=1))
                counted = sim >= threshold
                if valid is not None:
                    counted &= valid[:, p_sl[0], p_sl[1]] & valid[:, q_sl[0], q_sl[1]]
            agree = (probs[..., p_sl[0], p_sl[1]] * probs[..., q_sl[0], q_sl[1]]).sum(dim=1)
            loss_sum = loss_sum + (-torch.log(agree.clamp(min=eps)) * counted).sum()
            count = count + counted.sum()
        total = total + weight * loss_sum / batch_count(count, probs.device).to(probs.dtype)
    return total
