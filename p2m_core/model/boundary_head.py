"""The boundary decoder ``P^b_high`` and the manifold projector: two heads on detached memory.

Both read the encoder memory of the levels at strides 8, 16 and 32 with its position and level
embedding added, resize every level to the stride-8 grid, sum them, **detach** the sum (their
losses train only the head, never the shared network), and apply a 1x1 conv ``d -> d``, ReLU and
a 1x1 conv ``d -> out_channels``:

- **boundary** (``out_channels = 1``): instance-boundary logits; ``P^b_high`` is their sigmoid
  after resizing to the input (paper Sec. 3.3.1, Eq. 6-7 train it);
- **projector** (``out_channels = 128``, L2-normalised over channels): the manifold projector of
  PSPS, whose pairwise term ``0.1 max(0, 1 - <e_p, e_q>)`` enters the pseudo-label edge lengths
  and whose contrastive loss pulls each point's embedding to its pseudo mask's prototype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DetachedPixelHead(nn.Module):
    """Sum of the resized, position-embedded memory levels, detached, then conv-ReLU-conv.

    ``forward(memory, pos, out_size)``: ``memory`` and ``pos`` one ``[B, d, H_l, W_l]`` per level
    -> ``[B, out_channels, *out_size]`` (L2-normalised over channels when ``normalize``).
    """

    def __init__(self, d_model: int = 256, out_channels: int = 1, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = nn.Sequential(nn.Conv2d(d_model, d_model, 1), nn.ReLU(inplace=True), nn.Conv2d(d_model, out_channels, 1))

    def forward(self, memory: list[Tensor], pos: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        total = None
        for level, embed in zip(memory, pos):
            x = level + embed
            if tuple(x.shape[-2:]) != tuple(out_size):
                x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        out = self.body(total.detach())
        return F.normalize(out, dim=1) if self.normalize else out


def boundary_head(d_model: int = 256) -> DetachedPixelHead:
    """``P^b_high`` logits (one channel)."""
    return DetachedPixelHead(d_model, 1)


def projector_head(d_model: int = 256, dim: int = 128) -> DetachedPixelHead:
    """Manifold-projector embeddings (``dim`` channels, unit norm)."""
    return DetachedPixelHead(d_model, dim, normalize=True)
