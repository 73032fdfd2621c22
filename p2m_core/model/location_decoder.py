"""The location decoder: thing queries that find instances (Deformable DETR with box refinement).

``num_queries`` (300) learned queries, each ``Embedding(2 d)`` split into a content part and a
positional part; 2-D reference points ``sigmoid(Linear(d, 2)(query_pos))``. Every layer (post-norm):

1. self-attention among the queries (``q = k = query + query_pos``), add + LayerNorm;
2. multi-scale deformable cross-attention (:class:`~p2m_core.model.deformable.MSDeformAttn`) from
   ``query + query_pos`` around the reference points into the memory of the levels at strides
   8, 16, 32, add + LayerNorm;
3. FFN (ReLU), add + LayerNorm;
4. heads: class logits ``Linear(d, T)`` over the T thing classes (sigmoid; bias prior 0.01)
   and a box MLP ``d-d-d-4`` giving ``(cx, cy, w, h)``: the reference point is refined, only
   ``cx, cy`` offset by it, ``box = sigmoid(delta + [logit(ref), 0, 0])``, and the next layer's
   reference points are the (detached) new centres.

Every layer's classes and boxes are supervised; the last layer's states become the thing mask
decoder's queries.

Reference: X. Zhu et al., "Deformable DETR", ICLR 2021 (iterative box refinement).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from p2m_core.model.deformable import MSDeformAttn
from p2m_core.model.neck import NeckOutput


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]``."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


@dataclass
class LocationOutput:
    """Per-layer outputs (lists, one entry per layer) and the last layer's states.

    logits : list of Tensor [B, Q, T]; boxes : list of Tensor [B, Q, 4] (normalised cx, cy, w, h);
    states : Tensor [B, Q, d]; query_pos : Tensor [B, Q, d].
    """

    logits: list[Tensor]
    boxes: list[Tensor]
    states: Tensor
    query_pos: Tensor


class LocationLayer(nn.Module):
    """Self-attention, deformable cross-attention, FFN; post-norm (module docstring)."""

    def __init__(self, d_model: int, n_heads: int, n_points: int, n_levels: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(d_ffn, d_model))
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: Tensor, query_pos: Tensor, reference: Tensor, value: Tensor, shapes: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        q = query + query_pos
        query = self.norm1(query + self.dropout(self.self_attn(q, q, query, need_weights=False)[0]))
        attended = self.cross_attn(query + query_pos, reference, value, shapes, padding_mask=padding_mask)
        query = self.norm2(query + self.dropout(attended))
        return self.norm3(query + self.dropout(self.ffn(query)))


class LocationDecoder(nn.Module):
    """Thing queries, reference points and box refinement (module docstring)."""

    def __init__(
        self, num_classes: int, num_queries: int = 300, d_model: int = 256, n_heads: int = 8, n_points: int = 4,
        n_levels: int = 3, d_ffn: int = 1024, num_layers: int = 6, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.queries = nn.Embedding(num_queries, 2 * d_model)
        self.reference = nn.Linear(d_model, 2)
        layer = LocationLayer(d_model, n_heads, n_points, n_levels, d_ffn, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.class_heads = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_layers))
        self.box_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model),
                          nn.ReLU(inplace=True), nn.Linear(d_model, 4))  # fmt: skip
            for _ in range(num_layers)
        )
        prior = -math.log((1 - 0.01) / 0.01)
        for head in self.class_heads:
            nn.init.constant_(head.bias, prior)
        for head in self.box_heads:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        nn.init.xavier_uniform_(self.reference.weight)
        nn.init.zeros_(self.reference.bias)

    def forward(self, neck: NeckOutput, levels: int = 3) -> LocationOutput:
        """Decode from the first ``levels`` levels of the neck's memory (strides 8, 16, 32)."""
        value, _, flat_mask, shapes = neck.flat(range(levels))
        ratios = neck.valid_ratios[:, :levels]  # [B, L, 2]
        B = value.shape[0]
        query, query_pos = self.queries.weight.unsqueeze(0).expand(B, -1, -1).chunk(2, dim=-1)
        reference = self.reference(query_pos).sigmoid()  # [B, Q, 2] normalised (x, y)
        logits, boxes = [], []
        for layer, cls_head, box_head in zip(self.layers, self.class_heads, self.box_heads):
            ref_levels = reference[:, :, None] * ratios[:, None]  # [B, Q, L, 2]
            query = layer(query, query_pos, ref_levels, value, shapes, flat_mask)
            delta = box_head(query)
            box = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
            logits.append(cls_head(query))
            boxes.append(box)
            reference = box[..., :2].detach()
        return LocationOutput(logits, boxes, query, query_pos)
