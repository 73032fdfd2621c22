"""The panoptic head: locate things, then decode thing and stuff masks (Panoptic SegFormer style).

Three parts, all reading the encoder memory of the levels at strides 8, 16 and 32:

- the :class:`~p2m_core.model.location_decoder.LocationDecoder` (``num_queries`` thing queries,
  classes and boxes per layer);
- the **thing mask decoder**: a :class:`~p2m_core.model.mask_decoder.MaskDecoder` without
  self-attention (4 layers) whose queries are the location decoder's last states of selected
  queries: the ones matched to pseudo masks in training, the best-scoring ``top_k`` at test;
- the **stuff decoder**: a mask decoder with self-attention (6 layers) over one learned query
  per stuff class, with a per-layer presence logit ``Linear(d, 1)``.

Masks are ``>= 0`` on the stride-8 grid, one per query and layer (module
:mod:`~p2m_core.model.mask_decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from p2m_core.model.location_decoder import LocationDecoder, LocationOutput
from p2m_core.model.mask_decoder import MaskDecoder
from p2m_core.model.neck import NeckOutput


@dataclass
class StuffOutput:
    """Per-layer stuff masks ``[B, S, H_8, W_8]`` and presence logits ``[B, S]``."""

    masks: list[Tensor]
    presence: list[Tensor]


class PanopticHead(nn.Module):
    """Location decoder, thing mask decoder and stuff decoder (module docstring)."""

    def __init__(
        self, num_thing_classes: int, num_stuff_classes: int, num_queries: int = 300, d_model: int = 256,
        n_heads: int = 8, n_points: int = 4, d_ffn: int = 1024, location_layers: int = 6, thing_layers: int = 4,
        stuff_layers: int = 6, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.location = LocationDecoder(
            num_thing_classes, num_queries, d_model, n_heads, n_points, 3, d_ffn, location_layers, dropout
        )
        self.things = MaskDecoder(thing_layers, d_model, n_heads, d_ffn, 3, self_attn=False, dropout=dropout)
        self.stuff_queries = nn.Embedding(num_stuff_classes, 2 * d_model)
        self.stuff = MaskDecoder(stuff_layers, d_model, n_heads, d_ffn, 3, self_attn=True, dropout=dropout)
        self.stuff_presence = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(stuff_layers))

    def locate(self, neck: NeckOutput) -> LocationOutput:
        return self.location(neck)

    def thing_masks(
        self, located: LocationOutput, index: Tensor, memory: list[Tensor], out_size: tuple[int, int]
    ) -> list[Tensor]:
        """Masks of the selected queries ``index [B, K]`` (long), one ``[B, K, *out_size]`` per layer."""
        gather = index[:, :, None].expand(-1, -1, located.states.shape[-1])
        query = located.states.gather(1, gather)
        query_pos = located.query_pos.gather(1, gather)
        return [mask for _, mask in self.things(query, query_pos, memory, out_size)]

    def stuff_masks(self, memory: list[Tensor], out_size: tuple[int, int]) -> StuffOutput:
        B = memory[0].shape[0]
        query, query_pos = self.stuff_queries.weight.unsqueeze(0).expand(B, -1, -1).chunk(2, dim=-1)
        masks, presence = [], []
        for (state, mask), head in zip(self.stuff(query, query_pos, memory, out_size), self.stuff_presence):
            masks.append(mask)
            presence.append(head(state).squeeze(-1))
        return StuffOutput(masks, presence)
