"""The mask decoder block, the semantic decoder and the detached pixel heads: attention against
torch's own multi-head attention, masks against a direct per-level computation, shapes, and
which parameters each loss can reach (docs/METHOD.md, "The network")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from p2m_core.model.boundary_head import boundary_head, projector_head
from p2m_core.model.mask_decoder import MaskAttentionLayer, MaskDecoder
from p2m_core.model.semantic_head import SemanticHead

D, HEADS = 16, 4
SHAPES = [(8, 10), (4, 5), (2, 3)]  # strides 8, 16, 32 of an 64x80 input


def memory(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, D, h, w, generator=g) for h, w in SHAPES]


def test_cross_attention_equals_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    layer = MaskAttentionLayer(D, HEADS, d_ffn=32, self_attn=False).eval()
    reference = nn.MultiheadAttention(D, HEADS, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
        reference.out_proj.weight.copy_(layer.out_proj.weight)
        reference.out_proj.bias.copy_(layer.out_proj.bias)
    mem = memory()
    query, pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in mem], 1)
    expected = reference(query + pos, tokens, tokens, need_weights=False)[0]
    expected = layer.norm_ffn(layer.norm_cross(query + expected) + layer.ffn(layer.norm_cross(query + expected)))
    got, _ = layer(query, pos, mem, SHAPES[0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mask_is_read_off_the_attention_logits() -> None:
    torch.manual_seed(1)
    layer = MaskAttentionLayer(D, HEADS, d_ffn=32, self_attn=True).eval()
    mem = memory()
    query, pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    _, mask = layer(query, pos, mem, SHAPES[0])
    assert mask.shape == (2, 5, *SHAPES[0]) and bool((mask >= 0).all())
    # direct computation: the query after self-attention, per-level logits, convs, resize, concat
    q_in = query + pos
    after_self = layer.norm_self(query + layer.self_attn(q_in, q_in, query, need_weights=False)[0])
    q = layer.q_proj(after_self + pos).reshape(2, 5, HEADS, D // HEADS)
    levels = []
    for conv, m, (h, w) in zip(layer.level_convs, mem, SHAPES):
        k = layer.k_proj(m.flatten(2).transpose(1, 2)).reshape(2, h * w, HEADS, D // HEADS)
        logits = torch.einsum("bqhd,blhd->bqhl", q, k) / (D // HEADS) ** 0.5  # [B, Q, h, HW]
        x = F.relu(conv(logits.reshape(10, HEADS, h, w)))
        levels.append(F.interpolate(x, size=SHAPES[0], mode="bilinear", align_corners=False) if (h, w) != SHAPES[0] else x)
    expected = F.relu(layer.mask_conv(torch.cat(levels, 1))).reshape(2, 5, *SHAPES[0])
    torch.testing.assert_close(mask, expected, rtol=1e-5, atol=1e-5)


def test_decoder_returns_every_layer() -> None:
    decoder = MaskDecoder(3, D, HEADS, d_ffn=32, self_attn=False)
    outputs = decoder(torch.randn(2, 4, D), torch.randn(2, 4, D), memory(), SHAPES[0])
    assert len(outputs) == 3 and all(q.shape == (2, 4, D) and m.shape == (2, 4, *SHAPES[0]) for q, m in outputs)


def test_semantic_head_logits_presence_and_initial_affine() -> None:
    torch.manual_seed(2)
    head = SemanticHead(num_classes=7, d_model=D, n_heads=HEADS, d_ffn=32, num_layers=2)
    out = head(memory(), SHAPES[0])
    assert len(out.logits) == len(out.presence) == 2
    assert out.logits[-1].shape == (2, 7, *SHAPES[0]) and out.presence[-1].shape == (2, 7)
    # a = 1, b = 0 at initialisation: logit_c = m_c * sigmoid(s_c) >= 0
    assert bool((out.logits[0] >= 0).all())
    out.logits[-1].sum().backward()
    assert head.queries.weight.grad is not None and head.scale_shift[-1].weight.grad is not None


def test_pixel_heads_are_detached_from_the_memory() -> None:
    mem = [m.requires_grad_() for m in memory()]
    pos = [torch.randn_like(m) for m in mem]
    boundary, projector = boundary_head(D), projector_head(D, dim=6)
    logits = boundary(mem, pos, SHAPES[0])
    embedding = projector(mem, pos, SHAPES[0])
    assert logits.shape == (2, 1, *SHAPES[0]) and embedding.shape == (2, 6, *SHAPES[0])
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2, *SHAPES[0]))
    (logits.sum() + embedding.sum()).backward()
    assert all(m.grad is None for m in mem)
    assert boundary.body[0].weight.grad is not None and projector.body[2].weight.grad is not None
