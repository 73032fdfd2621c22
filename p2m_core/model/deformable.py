"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 3) in plain torch.

Each query ``q`` with features ``z_q`` and a normalised reference point ``p_q`` (x, y in [0, 1]
per level) attends to ``K`` sampled points on each of ``L`` feature levels, per head ``m``::

    MSDeformAttn(z_q, p_q, {x^l}) = W_o [ concat_m  sum_l sum_k  A_mlqk * V_m x^l(phi_l(p_q) + dp_mlqk) ]

- ``V = value_proj(x)`` split into ``M`` heads of ``d / M`` channels (zeroed at padded pixels);
- ``dp_mlqk = sampling_offsets(z_q)``, in pixels of level ``l``: the sampling location is
  ``p_q + dp / (W_l, H_l)`` in normalised coordinates (for 4-d reference boxes ``(cx, cy, w, h)``:
  ``(cx, cy) + dp / K * (w, h) / 2``);
- ``A_mlqk = softmax over the L*K (level, point) pairs of attention_weights(z_q)``;
- ``x^l(.)`` bilinear interpolation with zeros outside the map, pixel centres at ``(i + 0.5) / W``
  (``F.grid_sample(..., align_corners=False, padding_mode="zeros")`` at ``2 * loc - 1``);
- ``W_o = output_proj``.

Initialisation follows the paper's code: offsets start (zero weight) at a bias that points head
``m`` in direction ``2*pi*m/M`` (scaled so the larger of |cos|, |sin| is 1) and moves point ``k``
``k + 1`` pixels out; attention weights start uniform (zero weight and bias); value and output
projections are Xavier-uniform with zero bias.

Shapes: ``query [B, Lq, d]``, ``reference_points [B, Lq, L, 2 or 4]``, ``value [B, S, d]`` with
``S = sum_l H_l W_l`` (levels flattened row-major and concatenated), ``spatial_shapes [L, 2]``
long ``(H_l, W_l)``, ``padding_mask [B, S]`` bool (True = padded) -> ``[B, Lq, d]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "level_start_index", "ms_deform_attn_sample"]


def level_start_index(spatial_shapes: Tensor) -> Tensor:
    """``[L, 2]`` (H_l, W_l) -> ``[L]`` long: offset of each level in the flattened ``S`` axis."""
    areas = spatial_shapes.prod(1)
    return torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))


def ms_deform_attn_sample(
    value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The sampling-and-weighting core of Eq. 3, without projections.

    ``value [B, S, M, D]`` (per-head values), ``shapes`` the ``(H_l, W_l)`` of each level as ints,
    ``sampling_locations [B, Lq, M, L, K, 2]`` normalised (x, y), ``attention_weights
    [B, Lq, M, L, K]`` -> ``[B, Lq, M*D]``.
    """
    B, S, M, D = value.shape
    _, Lq, _, L, K, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Lq, K, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=3)  # [B*M, D, Lq, L, K]
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L, K)
    out = (stacked * weights).sum((3, 4))  # [B*M, D, Lq]
    return out.view(B, M * D, Lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (module docstring: equation, shapes, initialisation).

    Parameters: ``d_model`` channels (divisible by ``n_heads``), ``n_levels`` feature levels,
    ``n_heads`` heads, ``n_points`` sampling points per head and level.
    Submodules: ``sampling_offsets`` Linear(d, M*L*K*2), ``attention_weights`` Linear(d, M*L*K),
    ``value_proj`` and ``output_proj`` Linear(d, d).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (module docstring)."""
        M, L, K = self.n_heads, self.n_levels, self.n_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        directions = torch.stack((thetas.cos(), thetas.sin()), -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, K + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * steps[None, None, :, None]  # [M, 1, K, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(M, L, K, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``query [B, Lq, d]``, ``reference_points [B, Lq, L, 2|4]``, ``value [B, S, d]``,
        ``spatial_shapes [L, 2]`` long, ``padding_mask [B, S]`` bool or None -> ``[B, Lq, d]``.

        ``level_start_index [L]`` is accepted for the usual signature of this operator; the plain
        implementation derives the level split from ``spatial_shapes``. Keep ``spatial_shapes``
        on the CPU: it is read as Python ints (a device tensor costs one synchronisation a call).
        """
        B, Lq, d = query.shape
        M, L, K = self.n_heads, self.n_levels, self.n_points
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        S = sum(h * w for h, w in shapes)
        if len(shapes) != L or value.shape != (B, S, d) or reference_points.shape[:3] != (B, Lq, L):
            raise ValueError(
                f"MSDeformAttn(d={self.d_model}, levels={L}): query {tuple(query.shape)}, value "
                f"{tuple(value.shape)}, reference points {tuple(reference_points.shape)}, shapes {shapes} "
                f"do not fit (value must be [B, sum H*W, d], reference points [B, Lq, {L}, 2|4])"
            )
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, S, M, d // M)
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, K, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * K).softmax(-1).view(B, Lq, M, L, K)
        ref = reference_points[:, :, None, :, None, :]  # [B, Lq, 1, L, 1, 2|4]
        if reference_points.shape[-1] == 2:
            normalizer = spatial_shapes.flip(-1).to(device=query.device, dtype=offsets.dtype)  # (W, H)
            locations = ref + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / K * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference points must end in 2 or 4 values, got {tuple(reference_points.shape)}")
        out = ms_deform_attn_sample(v, shapes, locations, weights)
        return self.output_proj(out)
