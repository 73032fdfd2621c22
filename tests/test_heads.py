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


# ----------------------------------------------------------------------------- panoptic head
def tiny_neck_output(seed: int = 0, batch: int = 2):
    from p2m_core.model.backbone import ResNet
    from p2m_core.model.neck import EncoderNeck

    torch.manual_seed(seed)
    backbone = ResNet(18, width=8, frozen_stages=0)
    neck = EncoderNeck(backbone.out_channels, d_model=D, n_heads=HEADS, n_points=2, num_layers=1, d_ffn=32, dropout=0.0)
    return neck(backbone(torch.randn(batch, 3, 64, 80)))


def test_location_decoder_refines_centres_and_classes_start_at_the_prior() -> None:
    from p2m_core.model.location_decoder import LocationDecoder, inverse_sigmoid

    torch.manual_seed(3)
    out = tiny_neck_output()
    decoder = LocationDecoder(num_classes=3, num_queries=6, d_model=D, n_heads=HEADS, n_points=2, d_ffn=32,
                              num_layers=2, dropout=0.0)  # fmt: skip
    located = decoder(out)
    assert len(located.logits) == len(located.boxes) == 2
    assert located.logits[0].shape == (2, 6, 3) and located.boxes[0].shape == (2, 6, 4)
    # the box MLP's last layer starts at zero: the first boxes are the reference points, size 0.5
    query_pos = decoder.queries.weight.chunk(2, dim=-1)[1]
    torch.testing.assert_close(located.boxes[0][0, :, :2], decoder.reference(query_pos).sigmoid())
    torch.testing.assert_close(located.boxes[0][..., 2:], torch.full((2, 6, 2), 0.5))
    # focal-loss prior: the class bias says "1 % foreground"
    torch.testing.assert_close(decoder.class_heads[0].bias.sigmoid(), torch.full((3,), 0.01))
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.25])), torch.log(torch.tensor([1 / 3])))
    (located.boxes[-1].sum() + located.logits[-1].sum()).backward()
    assert decoder.layers[0].cross_attn.sampling_offsets.weight.grad is not None


def test_panoptic_head_thing_and_stuff_masks() -> None:
    from p2m_core.model.panoptic_head import PanopticHead

    torch.manual_seed(4)
    out = tiny_neck_output()
    head = PanopticHead(3, 2, num_queries=6, d_model=D, n_heads=HEADS, n_points=2, d_ffn=32, location_layers=2,
                        thing_layers=2, stuff_layers=3, dropout=0.0)  # fmt: skip
    located = head.locate(out)
    memory = out.memory[:3]
    size = tuple(memory[0].shape[-2:])
    index = torch.tensor([[0, 5], [2, 2]])
    masks = head.thing_masks(located, index, memory, size)
    assert len(masks) == 2 and masks[-1].shape == (2, 2, *size)
    # a query selected twice gets the same mask twice
    torch.testing.assert_close(masks[-1][1, 0], masks[-1][1, 1])
    stuff = head.stuff_masks(memory, size)
    assert len(stuff.masks) == len(stuff.presence) == 3
    assert stuff.masks[-1].shape == (2, 2, *size) and stuff.presence[-1].shape == (2, 2)


def test_masks_start_alive() -> None:
    """Non-negative mixing weights at initialisation: every query's mask is non-zero somewhere."""
    for seed in range(5):
        torch.manual_seed(seed)
        layer = MaskAttentionLayer(D, HEADS, d_ffn=32, self_attn=False)
        assert bool((layer.mask_conv.weight >= 0).all()) and bool((layer.mask_conv.bias == 0).all())
        _, mask = layer(torch.randn(2, 6, D), torch.randn(2, 6, D), memory(seed=seed), SHAPES[0])
        assert bool((mask.flatten(2).amax(2) > 0).all())
