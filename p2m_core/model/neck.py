"""The encoder neck: backbone stages -> multi-scale deformable encoder memory (Deformable DETR encoder).

Point2Mask's network (paper Sec. 3.1, Fig. 2; inherited from Panoptic SegFormer) turns the
backbone's C3/C4/C5 into four 256-d levels and refines them jointly::

    C3, C4, C5 --1x1 conv + GroupNorm--> X3, X4, X5  [B, d, H/8..H/32, W/8..W/32]
    C5 --3x3 stride-2 conv + GroupNorm-->        X6  [B, d, H/64, W/64]
    positions P_l = sine(mask_l) + e_l               (learned level embedding e_l [d])
    memory = N x EncoderLayer(X, P)                  (flattened over the four levels)

An encoder layer is post-norm::

    x = LN(x + Dropout(MSDeformAttn(x + P, ref, x)))
    x = LN(x + Dropout(W2 Dropout(ReLU(W1 x))))     (W1: d -> d_ffn, W2: d_ffn -> d)

Each pixel queries from its own centre: the reference point of pixel (i, j) of level l is
``((j + 0.5) / Wv_l, (i + 0.5) / Hv_l)`` over the level's valid extent ``(Hv_l, Wv_l)``, scaled to
every level ``l'`` by its valid ratio ``(Wv_l'/W_l', Hv_l'/H_l')``. With a padding mask (True =
padded, bottom/right) the valid region therefore sees what an unpadded image would see, as far as
the encoder goes; the projections' GroupNorm statistics include padded pixels, as in the release.

The heads (location, mask and boundary decoders) read :class:`NeckOutput`: memory per level,
position + level embedding per level, masks and the flattened layout (``spatial_shapes``,
``level_start_index``, ``valid_ratios``) that deformable cross-attention needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2m_core.model.deformable import MSDeformAttn, level_start_index
from p2m_core.model.position import sine_position_encoding

__all__ = [
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "EncoderNeck",
    "NeckOutput",
    "encoder_reference_points",
    "flatten_levels",
    "group_count",
    "valid_ratios",
]


def valid_ratios(masks: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """Padding masks ``[B, H_l, W_l]`` per level -> ``[B, L, 2]`` of ``dtype``: valid (width, height) fractions.

    The valid extent is read from the first row / column (padding is on the bottom and right).
    """
    ratios = []
    for m in masks:
        valid = ~m
        h = valid[:, :, 0].sum(1).to(dtype) / m.shape[1]
        w = valid[:, 0, :].sum(1).to(dtype) / m.shape[2]
        ratios.append(torch.stack((w, h), -1))
    return torch.stack(ratios, 1)


def encoder_reference_points(shapes: Sequence[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Pixel centres as reference points, ``ratios [B, L, 2]`` -> ``[B, S, L, 2]`` normalised (x, y).

    ``S = sum_l H_l W_l`` in the flattened order, dtype of ``ratios``; module docstring for the formula.
    """
    refs, kind = [], dict(dtype=ratios.dtype, device=ratios.device)
    for lvl, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, **kind) + 0.5,
            torch.arange(w, **kind) + 0.5,
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (ratios[:, None, lvl, 0] * w)
        y = ys.reshape(1, -1) / (ratios[:, None, lvl, 1] * h)
        refs.append(torch.stack((x, y), -1))
    return torch.cat(refs, 1)[:, :, None] * ratios[:, None]


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """``[B, C, H_l, W_l]`` per level (or ``[B, H_l, W_l]``) -> ``[B, S, C]`` (or ``[B, S]``)."""
    if maps[0].dim() == 3:
        return torch.cat([m.flatten(1) for m in maps], 1)
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def _shapes_tensor(shapes: Sequence[tuple[int, int]]) -> Tensor:
    return torch.tensor(shapes, dtype=torch.long).reshape(-1, 2)


class DeformableEncoderLayer(nn.Module):
    """One post-norm encoder layer (module docstring): ``x [B, S, d]`` -> ``[B, S, d]``."""

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        """``x, pos [B, S, d]``, ``reference_points [B, S, L, 2]``, ``padding_mask [B, S]`` -> ``[B, S, d]``."""
        attn = self.self_attn(x + pos, reference_points, x, spatial_shapes, start_index, padding_mask)
        x = self.norm1(x + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """``num_layers`` :class:`DeformableEncoderLayer` over flattened levels.

    ``layer_kwargs`` are :class:`DeformableEncoderLayer`'s (``d_model``, ``n_levels``, ``n_heads``,
    ``n_points``, ``d_ffn``, ``dropout``). ``forward(srcs, masks, pos)`` with ``srcs, pos [B, d, H_l, W_l]`` and ``masks [B, H_l, W_l]``
    bool per level -> memory ``[B, d, H_l, W_l]`` per level. ``pos`` is added to the queries
    only (not to the values), in every layer.
    """

    def __init__(self, num_layers: int = 6, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos: Sequence[Tensor]) -> list[Tensor]:
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        spatial_shapes = _shapes_tensor(shapes)
        start = level_start_index(spatial_shapes)
        ref = encoder_reference_points(shapes, valid_ratios(masks, srcs[0].dtype))
        mask_flat = flatten_levels(masks)
        pos_flat = flatten_levels(pos)
        x = flatten_levels(srcs)
        for layer in self.layers:
            x = layer(x, pos_flat, ref, spatial_shapes, start, mask_flat)
        B, _, d = x.shape
        return [m.transpose(1, 2).reshape(B, d, h, w) for m, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)]


@dataclass
class NeckOutput:
    """What the heads read from the encoder neck (``L`` levels, strides ``strides``).

    memory: ``[B, d, H_l, W_l]`` per level, the encoder output.
    pos: ``[B, d, H_l, W_l]`` per level, sine position encoding + level embedding.
    masks: ``[B, H_l, W_l]`` bool per level, True at padded pixels.
    spatial_shapes: ``[L, 2]`` long on the CPU, ``(H_l, W_l)``.
    level_start_index: ``[L]`` long on the CPU, offsets into the flattened ``S`` axis.
    valid_ratios: ``[B, L, 2]`` valid (width, height) fraction of each level.
    strides: the stride of each level, e.g. ``(8, 16, 32, 64)``.
    """

    memory: list[Tensor]
    pos: list[Tensor]
    masks: list[Tensor]
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor
    strides: tuple[int, ...]

    def flat(self, levels: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Memory ``[B, S, d]``, pos ``[B, S, d]``, mask ``[B, S]`` and spatial shapes ``[L', 2]``
        of the chosen levels (all by default; the mask decoders use the first three)."""
        idx = list(range(len(self.memory))) if levels is None else list(levels)
        pick = lambda maps: [maps[i] for i in idx]  # noqa: E731
        return (
            flatten_levels(pick(self.memory)),
            flatten_levels(pick(self.pos)),
            flatten_levels(pick(self.masks)),
            self.spatial_shapes[idx],
        )


def group_count(channels: int, num_groups: int = 32, min_group_size: int = 8) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is at most
    ``num_groups`` and leaves at least ``min_group_size`` channels a group (at least 1 group).
    256 channels give the release's 32 groups; 32 channels give 4."""
    limit = max(1, min(num_groups, channels // min_group_size))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def _group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels, num_groups), channels)


class EncoderNeck(nn.Module):
    """Input projections, positions and the deformable encoder (module docstring).

    Parameters
    ----------
    in_channels: channels of the backbone levels, e.g. ``(512, 1024, 2048)`` (``ResNet.out_channels``).
    in_strides: their strides, ``(8, 16, 32)``.
    num_extra_levels: stride-2 3x3 conv levels added after the last input (the first on C5, each
        further one on the previous extra level); 1 gives the release's four levels.
    d_model, n_heads, n_points, num_layers, d_ffn, dropout: the encoder's sizes (release: 256, 8,
        4, 6, 1024, 0.1).
    num_groups: GroupNorm groups of the projections (32; fewer for small ``d_model``, at least 8
        channels a group: :func:`group_count`), so a 1x1 level normalises in training too.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        in_strides: Sequence[int] = (8, 16, 32),
        num_extra_levels: int = 1,
        d_model: int = 256,
        n_heads: int = 8,
        n_points: int = 4,
        num_layers: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError(f"EncoderNeck: {len(in_channels)} in_channels but {len(in_strides)} in_strides")
        if d_model % 2:
            raise ValueError(f"EncoderNeck: d_model={d_model} must be even (sine encoding per axis)")
        self.d_model, self.num_inputs = d_model, len(in_channels)
        self.strides: tuple[int, ...] = tuple(in_strides) + tuple(
            in_strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels)
        )
        self.num_levels = len(self.strides)
        projections = [nn.Sequential(nn.Conv2d(c, d_model, 1), _group_norm(d_model, num_groups)) for c in in_channels]
        extra_in = [in_channels[-1]] + [d_model] * (num_extra_levels - 1)
        projections += [
            nn.Sequential(nn.Conv2d(c, d_model, 3, stride=2, padding=1), _group_norm(d_model, num_groups))
            for c in extra_in[:num_extra_levels]
        ]
        self.input_proj = nn.ModuleList(projections)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, d_model))
        self.encoder = DeformableEncoder(
            num_layers,
            d_model=d_model,
            n_levels=self.num_levels,
            n_heads=n_heads,
            n_points=n_points,
            d_ffn=d_ffn,
            dropout=dropout,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix, zero conv biases, N(0, 1) level embeddings, and the
        deformable attention's own initialisation (Deformable DETR)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for proj in self.input_proj:
            nn.init.zeros_(proj[0].bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, features: Sequence[Tensor], padding_mask: Tensor | None = None) -> NeckOutput:
        """``features`` [C3, C4, C5] (``[B, in_channels[l], H_l, W_l]``), ``padding_mask [B, H, W]``
        bool at input resolution (True = padded) or None -> :class:`NeckOutput` of ``num_levels``."""
        if len(features) != self.num_inputs:
            raise ValueError(f"EncoderNeck expects {self.num_inputs} backbone levels, got {len(features)}")
        srcs = [proj(f) for proj, f in zip(self.input_proj, features)]
        extra = features[-1]
        for proj in self.input_proj[self.num_inputs :]:
            extra = proj(extra)
            srcs.append(extra)
        B = srcs[0].shape[0]
        if padding_mask is None:
            masks = [torch.zeros(B, s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device) for s in srcs]
        else:
            masks = [
                F.interpolate(padding_mask[:, None].float(), size=s.shape[-2:], mode="nearest")[:, 0].bool()
                for s in srcs
            ]
        pos = [
            sine_position_encoding(m, num_feats=self.d_model // 2).to(s.dtype) + self.level_embed[lvl][None, :, None, None]
            for lvl, (m, s) in enumerate(zip(masks, srcs))
        ]
        memory = self.encoder(srcs, masks, pos)
        shapes = _shapes_tensor([tuple(s.shape[-2:]) for s in srcs])
        return NeckOutput(
            memory=memory,
            pos=pos,
            masks=masks,
            spatial_shapes=shapes,
            level_start_index=level_start_index(shapes),
            valid_ratios=valid_ratios(masks, memory[0].dtype),
            strides=self.strides,
        )
