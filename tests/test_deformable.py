"""Multi-scale deformable attention against a loop oracle; the encoder neck; the sine encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2m_core.model.backbone import ResNet
from p2m_core.model.deformable import MSDeformAttn, level_start_index
from p2m_core.model.neck import DeformableEncoder, EncoderNeck, encoder_reference_points, valid_ratios
from p2m_core.model.position import sine_position_encoding

SHAPES = [(4, 5), (2, 3), (1, 2)]  # (H_l, W_l) of three levels



# --------------------------------------------------------------------------- the loop oracle
def bilinear_zero_pad(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """``image [H, W, C]`` at normalised (x, y), pixel centres at (i + 0.5) / size, zeros outside."""
    H, W, _ = image.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(image.shape[2])
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * image[yy, xx]
    return out


def loop_ms_deform_attn(attn, query, ref, value, shapes, padding_mask=None) -> np.ndarray:
    """Eq. 3 written out: per batch, query, head, level and point, one bilinear sample."""
    P = {k: v.detach().double().numpy() for k, v in attn.state_dict().items()}
    q, r, val = (t.detach().double().numpy() for t in (query, ref, value))
    B, Lq, d = q.shape
    M, L, K = attn.n_heads, attn.n_levels, attn.n_points
    D = d // M
    V = val @ P["value_proj.weight"].T + P["value_proj.bias"]
    if padding_mask is not None:
        V[padding_mask.numpy()] = 0.0
    offsets = (q @ P["sampling_offsets.weight"].T + P["sampling_offsets.bias"]).reshape(B, Lq, M, L, K, 2)
    logits = (q @ P["attention_weights.weight"].T + P["attention_weights.bias"]).reshape(B, Lq, M, L * K)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).reshape(B, Lq, M, L, K)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((B, Lq, d))
    for b in range(B):
        for i in range(Lq):
            for m in range(M):
                acc = np.zeros(D)
                for lvl, (h, w) in enumerate(shapes):
                    image = V[b, starts[lvl] : starts[lvl + 1], m * D : (m + 1) * D].reshape(h, w, D)
                    for k in range(K):
                        dx, dy = offsets[b, i, m, lvl, k]
                        if r.shape[-1] == 2:
                            x, y = r[b, i, lvl, 0] + dx / w, r[b, i, lvl, 1] + dy / h
                        else:
                            cx, cy, bw, bh = r[b, i, lvl]
                            x, y = cx + dx / K * bw * 0.5, cy + dy / K * bh * 0.5
                        acc += weights[b, i, m, lvl, k] * bilinear_zero_pad(image, x, y)
                out[b, i, m * D : (m + 1) * D] = acc
    return out @ P["output_proj.weight"].T + P["output_proj.bias"]


def random_attention(dtype=torch.float64, seed=0):
    """A small MSDeformAttn with random (non-initial) parameters and inputs; offsets reach past borders."""
    g = torch.Generator().manual_seed(seed)
    attn = MSDeformAttn(d_model=8, n_levels=len(SHAPES), n_heads=2, n_points=3).to(dtype)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
        attn.sampling_offsets.bias.mul_(2.0)
    B, Lq, S = 2, 5, sum(h * w for h, w in SHAPES)
    query = torch.randn(B, Lq, 8, generator=g, dtype=dtype)
    value = torch.randn(B, S, 8, generator=g, dtype=dtype)
    ref = torch.rand(B, Lq, len(SHAPES), 2, generator=g, dtype=dtype)
    return attn, query, ref, value, torch.tensor(SHAPES, dtype=torch.long)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ms_deform_attn_matches_loop(dtype, tol):
    attn, query, ref, value, shapes = random_attention(dtype)
    out = attn(query, ref, value, shapes, level_start_index(shapes))
    expected = loop_ms_deform_attn(attn, query, ref, value, SHAPES)
    assert out.shape == query.shape
    np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=tol, rtol=tol)


def test_ms_deform_attn_padding_mask_and_boxes_match_loop():
    attn, query, ref, value, shapes = random_attention(seed=1)
    mask = torch.rand(value.shape[:2], generator=torch.Generator().manual_seed(2)) < 0.3
    out = attn(query, ref, value, shapes, padding_mask=mask)
    np.testing.assert_allclose(out.detach().numpy(), loop_ms_deform_attn(attn, query, ref, value, SHAPES, mask), atol=1e-10)
    assert not torch.allclose(out, attn(query, ref, value, shapes))  # the mask matters here

    boxes = torch.cat((ref, 0.1 + 0.5 * torch.rand(ref.shape, dtype=ref.dtype)), -1)  # (cx, cy, w, h)
    out = attn(query, boxes, value, shapes)
    np.testing.assert_allclose(out.detach().numpy(), loop_ms_deform_attn(attn, query, boxes, value, SHAPES), atol=1e-10)


def test_ms_deform_attn_gradients_reach_inputs_and_parameters():
    attn, query, ref, value, shapes = random_attention()
    for t in (query, ref, value):
        t.requires_grad_(True)
    attn(query, ref, value, shapes).square().sum().backward()
    for name, t in [("query", query), ("value", value), ("reference_points", ref)] + list(attn.named_parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_ms_deform_attn_initialisation():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head m points along 2*pi*m/4 (larger component 1), point k goes k+1 pixels out, every level
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = directions[:, None, None] * torch.arange(1.0, 4.0)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(4, 2, 3, 2), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0 and attn.output_proj.bias.abs().sum() == 0


def test_ms_deform_attn_rejects_mismatched_value():
    attn, query, ref, value, shapes = random_attention()
    with pytest.raises(ValueError, match="do not fit"):
        attn(query, ref, value[:, :-1], shapes)


# --------------------------------------------------------------------------- sine encoding
def test_sine_encoding_by_hand():
    mask = torch.tensor([[[False, False, True]]])  # one row, two valid columns, one padded
    pe = sine_position_encoding(mask, num_feats=4)
    assert pe.shape == (1, 8, 1, 3)
    scale, eps = 2 * math.pi, 1e-6
    y = (1 - 0.5) / (1 + eps) * scale  # every column: row 0 of 1 valid row
    dims = [10000 ** (2 * (k // 2) / 4) for k in range(4)]  # 1, 1, 100, 100
    for j, count in enumerate([1, 2]):  # valid columns
        x = (count - 0.5) / (2 + eps) * scale
        want = [f(v / t) for v in (y, x) for f, t in zip((math.sin, math.cos, math.sin, math.cos), dims)]
        np.testing.assert_allclose(pe[0, :, 0, j].numpy(), want, atol=1e-6)


def test_sine_encoding_ignores_padding():
    small = sine_position_encoding(torch.zeros(2, 3, 4, dtype=torch.bool), num_feats=8)
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[:, :3, :4] = False
    padded = sine_position_encoding(mask, num_feats=8)
    torch.testing.assert_close(padded[:, :, :3, :4], small)


# --------------------------------------------------------------------------- the encoder neck
def tiny_neck(**kwargs) -> EncoderNeck:
    torch.manual_seed(0)
    backbone_channels = (16, 32, 64)
    return EncoderNeck(backbone_channels, d_model=32, n_heads=4, n_points=2, num_layers=2, d_ffn=64, **kwargs)


def test_neck_shapes_and_determinism():
    torch.manual_seed(0)
    backbone = ResNet(18, width=8, frozen_stages=0).eval()
    neck = tiny_neck().eval()
    images = torch.randn(2, 3, 64, 64)
    out = neck(backbone(images))
    assert out.strides == (8, 16, 32, 64)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert [tuple(m.shape) for m in out.memory] == [(2, 32, h, w) for h, w in sizes]
    assert [tuple(p.shape) for p in out.pos] == [(2, 32, h, w) for h, w in sizes]
    assert [tuple(m.shape) for m in out.masks] == [(2, h, w) for h, w in sizes]
    assert out.spatial_shapes.tolist() == [list(s) for s in sizes]
    assert out.level_start_index.tolist() == [0, 64, 80, 84]
    torch.testing.assert_close(out.valid_ratios, torch.ones(2, 4, 2))
    memory, pos, mask, shapes = out.flat([0, 1, 2])
    assert memory.shape == pos.shape == (2, 84, 32) and mask.shape == (2, 84) and shapes.shape == (3, 2)
    again = neck(backbone(images))
    for a, b in zip(out.memory, again.memory):
        assert torch.equal(a, b)
    neck.train()
    assert not torch.equal(neck(backbone(images)).memory[0], out.memory[0])  # dropout acts in training


def test_neck_backward_reaches_every_parameter():
    neck = tiny_neck()
    feats = [torch.randn(1, c, s, s) for c, s in zip((16, 32, 64), (8, 4, 2))]
    sum(m.square().sum() for m in neck(feats).memory).backward()
    for name, p in neck.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_encoder_reference_points_are_pixel_centres_of_the_valid_region():
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[:, :, 2:] = True  # half the width padded
    ratios = valid_ratios([mask])
    torch.testing.assert_close(ratios, torch.tensor([[[0.5, 1.0]]]))
    ref = encoder_reference_points([(2, 4)], ratios)
    # column j sits at (j + 0.5) / W of the padded canvas: the same pixel as without padding
    torch.testing.assert_close(ref[0, :4, 0, 0], (torch.arange(4.0) + 0.5) / 4)
    torch.testing.assert_close(ref[0, ::4, 0, 1], torch.tensor([0.25, 0.75]))


def test_encoder_with_padding_mask_equals_unpadded_encoder_on_the_valid_region():
    """A 40x72 image on a 64x128 canvas: levels 5x9, 3x5, 2x3, 1x2 of 8x16, 4x8, 2x4, 1x2.

    The valid ratios differ between levels, so the reference points must be scaled per level.
    """
    torch.manual_seed(0)
    encoder = DeformableEncoder(num_layers=2, d_model=16, n_levels=4, n_heads=2, n_points=3, d_ffn=32).double().eval()
    with torch.no_grad():  # move past the initial offsets so that samples cross the valid border
        for layer in encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.5)
    small = [(5, 9), (3, 5), (2, 3), (1, 2)]
    canvas = [(8, 16), (4, 8), (2, 4), (1, 2)]
    srcs = [torch.randn(2, 16, h, w, dtype=torch.float64) for h, w in canvas]
    image_mask = torch.ones(2, 64, 128)
    image_mask[:, :40, :72] = 0
    masks = [torch.nn.functional.interpolate(image_mask[:, None], size=s)[:, 0].bool() for s in canvas]
    assert [int((~m[0]).sum()) for m in masks] == [h * w for h, w in small]
    level = torch.randn(4, 16, dtype=torch.float64)
    pos = [sine_position_encoding(m, num_feats=8).double() + level[i, :, None, None] for i, m in enumerate(masks)]
    padded = encoder(srcs, masks, pos)
    crop = lambda maps: [t[..., :h, :w] for t, (h, w) in zip(maps, small)]  # noqa: E731
    unpadded = encoder(crop(srcs), crop(masks), crop(pos))
    for a, b in zip(crop(padded), unpadded):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
