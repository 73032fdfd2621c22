"""The mask decoder block shared by the semantic, thing and stuff decoders.

A set of queries (one per class for the semantic decoder, one per stuff class, or one per thing
instance) attends to the encoder memory of the levels at strides 8, 16 and 32; each layer's
*mask* per query is read off the attention itself, which is how Panoptic SegFormer-style heads
(and Point2Mask's) predict masks without a pixel decoder:

1. optional self-attention among the queries (add + LayerNorm);
2. cross-attention of the queries (plus their positional part ``query_pos``, re-added every
   layer) into the concatenated memory tokens of all levels; keys and values carry no position
   encoding. With ``h`` heads of size ``d_h``, the pre-softmax logits are
   ``A_l = (W_q q)(W_k m_l)^T / sqrt(d_h)``, ``[B, h, Q, H_l W_l]`` per level ``l``;
3. add + LayerNorm, MLP ``d -> d_ffn -> d`` with GELU, add + LayerNorm.

The layer's mask: per level, the logits reshaped to ``[B Q, h, H_l, W_l]`` go through a 1x1 conv
``h -> h`` and ReLU, are resized (bilinear) to the stride-8 grid, concatenated over levels
(``3h`` channels) and mapped by a 1x1 conv ``3h -> 1`` and ReLU: masks are ``>= 0`` with no
sigmoid, ``[B, Q, H_8, W_8]``.

References: [1] Z. Li et al., "Panoptic SegFormer", CVPR 2022 (masks from attention).
[2] W. Li et al., "Point2Mask", ICCV 2023 (docs/METHOD.md, "The network").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskAttentionLayer(nn.Module):
    """One decoder layer (module docstring): ``(query, mask)`` from queries and memory.

    Parameters
    ----------
    d_model, n_heads, d_ffn : int
        Width, attention heads, MLP hidden width.
    n_levels : int
        Memory levels attended to (strides 8, 16, 32: 3).
    self_attn : bool
        Self-attention among the queries first (semantic and stuff decoders: yes; thing: no).
    dropout : float
    """

    def __init__(
        self, d_model: int = 256, n_heads: int = 8, d_ffn: int = 1024, n_levels: int = 3,
        self_attn: bool = True, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True) if self_attn else None
        self.norm_self = nn.LayerNorm(d_model) if self_attn else None
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ffn, d_model))
        self.norm_ffn = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.level_convs = nn.ModuleList(nn.Conv2d(n_heads, n_heads, 1) for _ in range(n_levels))
        self.mask_conv = nn.Conv2d(n_levels * n_heads, 1, 1)
        # The mask is ReLU(conv(ReLU(...))): with the default signed initialisation a layer's
        # mask is zero everywhere about half the time, and a dead ReLU never learns (measured on
        # the tiny network: every thing mask 0 within 10 steps). Non-negative mixing weights and a
        # zero bias start every mask alive; training may then change their signs.
        with torch.no_grad():
            self.mask_conv.weight.abs_()
            self.mask_conv.bias.zero_()

    def forward(
        self, query: Tensor, query_pos: Tensor, memory: list[Tensor], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """``query, query_pos [B, Q, d]``, ``memory``: one ``[B, d, H_l, W_l]`` per level ->
        ``(query [B, Q, d], mask [B, Q, *out_size])``."""
        if self.self_attn is not None:
            q = query + query_pos
            attended = self.self_attn(q, q, query, need_weights=False)[0]
            query = self.norm_self(query + self.dropout(attended))
        B, Q, d = query.shape
        h, dh = self.n_heads, self.head_dim
        shapes = [tuple(m.shape[-2:]) for m in memory]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in memory], 1)  # [B, L, d]
        q = self.q_proj(query + query_pos).reshape(B, Q, h, dh).transpose(1, 2)  # [B, h, Q, dh]
        k = self.k_proj(tokens).reshape(B, -1, h, dh).transpose(1, 2)
        v = self.v_proj(tokens).reshape(B, -1, h, dh).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(dh)  # [B, h, Q, L]
        attended = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Q, d)
        query = self.norm_cross(query + self.dropout(self.out_proj(attended)))
        query = self.norm_ffn(query + self.dropout(self.ffn(query)))
        return query, self._mask(logits, shapes, out_size)

    def _mask(self, logits: Tensor, shapes: list[tuple[int, int]], out_size: tuple[int, int]) -> Tensor:
        B, h, Q, _ = logits.shape
        per_level = []
        start = 0
        for conv, (H, W) in zip(self.level_convs, shapes):
            level = logits[..., start : start + H * W].permute(0, 2, 1, 3).reshape(B * Q, h, H, W)
            level = F.relu(conv(level))
            if (H, W) != tuple(out_size):
                level = F.interpolate(level, size=out_size, mode="bilinear", align_corners=False)
            per_level.append(level)
            start += H * W
        return F.relu(self.mask_conv(torch.cat(per_level, 1))).reshape(B, Q, *out_size)


class MaskDecoder(nn.Module):
    """``num_layers`` :class:`MaskAttentionLayer` in sequence; returns every layer's output.

    ``forward(query, query_pos, memory, out_size) -> list of (query [B, Q, d], mask [B, Q, H, W])``,
    one pair per layer (the losses supervise every layer; inference reads the last).
    """

    def __init__(
        self, num_layers: int, d_model: int = 256, n_heads: int = 8, d_ffn: int = 1024, n_levels: int = 3,
        self_attn: bool = True, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MaskAttentionLayer(d_model, n_heads, d_ffn, n_levels, self_attn, dropout) for _ in range(num_layers)
        )

    def forward(
        self, query: Tensor, query_pos: Tensor, memory: list[Tensor], out_size: tuple[int, int]
    ) -> list[tuple[Tensor, Tensor]]:
        outputs = []
        for layer in self.layers:
            query, mask = layer(query, query_pos, memory, out_size)
            outputs.append((query, mask))
        return outputs
