"""Sine position encoding of a feature map (DETR, Carion et al., ECCV 2020; Deformable DETR).

For a pixel at row ``i``, column ``j`` of the valid (unpadded) region, with ``n`` = ``num_feats``
features per axis and ``k = 0 .. n/2 - 1``::

    y = (#valid rows up to and including i    + offset) / (#valid rows of the column + eps) * scale
    x = (#valid columns up to and including j + offset) / (#valid columns of the row + eps) * scale
    PE_y[2k]   = sin(y / T^(2k/n)),   PE_y[2k+1] = cos(y / T^(2k/n))
    PE_x likewise;   PE = concat(PE_y, PE_x)  -> 2n channels

with temperature ``T = 10000``, ``scale = 2*pi``, ``eps = 1e-6`` and ``offset = -0.5`` (Deformable
DETR: the pixel centre, so coordinates lie in (0, 2*pi)). Counting only valid pixels makes the
encoding of an image the same whether or not it is padded on the bottom/right.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sine_position_encoding"]


def sine_position_encoding(
    padding_mask: Tensor,
    num_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
    offset: float = -0.5,
) -> Tensor:
    """Padding mask ``[B, H, W]`` bool (True = padded) -> encoding ``[B, 2*num_feats, H, W]`` float32.

    Channels ``0 .. num_feats-1`` encode y, the rest x; within an axis sin and cos alternate.
    Without ``normalize`` the raw counts are used (``offset`` and ``scale`` unused), as in DETR.
    """
    if padding_mask.dim() != 3:
        raise ValueError(f"padding mask must be [B, H, W], got {tuple(padding_mask.shape)}")
    if num_feats % 2:
        raise ValueError(f"num_feats={num_feats} must be even (sin/cos pairs)")
    valid = (~padding_mask.bool()).float()
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    if normalize:
        y = (y + offset) / (y[:, -1:, :] + eps) * scale
        x = (x + offset) / (x[:, :, -1:] + eps) * scale
    k = torch.arange(num_feats, dtype=torch.float32, device=padding_mask.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)

    def encode(coord: Tensor) -> Tensor:  # [B, H, W] -> [B, H, W, num_feats], sin/cos interleaved
        arg = coord[..., None] / dim_t
        return torch.stack((arg[..., 0::2].sin(), arg[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((encode(y), encode(x)), dim=3).permute(0, 3, 1, 2).contiguous()

