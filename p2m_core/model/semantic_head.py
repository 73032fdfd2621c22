"""The semantic decoder: ``P^s``, one query per class (paper Sec. 3.3.1, the high-level map).

A :class:`~p2m_core.model.mask_decoder.MaskDecoder` with self-attention runs ``num_layers``
layers over ``C`` learned class queries (things and stuff). Every layer gives, per class ``c``,
a mask ``m_c >= 0`` on the stride-8 grid and a *presence* logit ``s_c`` (``Linear(d, 1)`` of the
class query), combined into the class logit

.. math::

    \\text{logit}_c = (a_c m_c + b_c)\\,\\sigma(s_c),

with ``a_c, b_c`` a per-class (depthwise 1x1) scale and shift initialised to 1 and 0. ``P^s`` is
the softmax of the last layer's logits over classes; every layer is supervised (partial
cross-entropy on the points, LAB affinity, tree energy) and every presence logit by a focal loss
against "the class has a point in the image".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from p2m_core.model.mask_decoder import MaskDecoder


@dataclass
class SemanticOutput:
    """Per-layer outputs of :class:`SemanticHead`, each a list with one entry per layer.

    logits : list of Tensor [B, C, H_8, W_8]
        Class logits on the stride-8 grid (the last entry is the prediction).
    presence : list of Tensor [B, C]
        Presence logits ``s_c``.
    """

    logits: list[Tensor]
    presence: list[Tensor]


class SemanticHead(nn.Module):
    """One learned query per class, a mask decoder, per-layer class logits (module docstring)."""

    def __init__(
        self, num_classes: int, d_model: int = 256, n_heads: int = 8, d_ffn: int = 1024, num_layers: int = 6,
        n_levels: int = 3, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.queries = nn.Embedding(num_classes, 2 * d_model)  # query | query_pos
        self.decoder = MaskDecoder(num_layers, d_model, n_heads, d_ffn, n_levels, self_attn=True, dropout=dropout)
        self.presence = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(num_layers))
        self.scale_shift = nn.ModuleList(
            nn.Conv2d(num_classes, num_classes, 1, groups=num_classes) for _ in range(num_layers)
        )
        for conv in self.scale_shift:
            nn.init.ones_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, memory: list[Tensor], out_size: tuple[int, int]) -> SemanticOutput:
        """``memory``: ``[B, d, H_l, W_l]`` for strides 8, 16, 32 -> :class:`SemanticOutput`."""
        B = memory[0].shape[0]
        query, query_pos = self.queries.weight.unsqueeze(0).expand(B, -1, -1).chunk(2, dim=-1)
        logits, presence = [], []
        for (state, mask), head, affine in zip(
            self.decoder(query, query_pos, memory, out_size), self.presence, self.scale_shift
        ):
            s = head(state).squeeze(-1)  # [B, C]
            logits.append(affine(mask) * torch.sigmoid(s)[:, :, None, None])
            presence.append(s)
        return SemanticOutput(logits, presence)
