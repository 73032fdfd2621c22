"""ResNet backbone with frozen batch norm (He et al., CVPR 2016; paper Sec. 4.2 "ResNet-50/101").

Point2Mask reads the last three stages of an ImageNet-pretrained ResNet::

    x [B, 3, H, W] -> stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool)   stride 4
                   -> layer1                                        stride 4
                   -> layer2 -> C3 [B, 2w*e, H/8,  W/8 ]             stride 8
                   -> layer3 -> C4 [B, 4w*e, H/16, W/16]             stride 16
                   -> layer4 -> C5 [B, 8w*e, H/32, W/32]             stride 32

with ``w`` the stem width (64 in torchvision) and ``e`` the block expansion (1 for the
BasicBlock of ResNet-18, 4 for the Bottleneck of ResNet-50/101), so ResNet-50 gives
512/1024/2048 channels. The Bottleneck strides its 3x3 conv (torchvision's "v1.5").
Spatial sizes are ``ceil`` of the divisions (each stride-2 layer pads).

As in the release, batch norm is frozen (fixed ImageNet statistics and affine, never
updated: :class:`FrozenBatchNorm2d`) and the stem plus ``layer1`` are not trained
(``frozen_stages=1``). Parameter and buffer names are torchvision's, so an ImageNet state dict
in torchvision's format loads with :func:`load_pretrained` (from a local file; nothing is
downloaded here: :mod:`~p2m_core.model.pretrained` turns ``model.pretrained``, e.g.
``torchvision:resnet50``, into a checked local file). ``width`` scales every channel count, which
gives tiny models for CPU tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2m_core.errors import P2MInputError

__all__ = ["BLOCKS", "FrozenBatchNorm2d", "ResNet", "load_pretrained"]

# depth -> (block kind, blocks per stage); one source for the model and its docs.
BLOCKS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    All four tensors are buffers (``weight``, ``bias``, ``running_mean``, ``running_var``, each
    ``[C]``), so no optimiser touches them and train/eval mode give the same output. Loading a
    state dict that carries ``num_batches_tracked`` (torchvision's ``BatchNorm2d``) ignores it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> same shape."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def group_norm(num_channels: int) -> nn.GroupNorm:
    """A trainable GroupNorm (Wu and He, ECCV 2018) for a backbone trained from scratch:
    ``min(32, C / 4)`` groups (32 as in mmdetection's GN ResNets once ``C >= 128``; narrower
    layers of a tiny network keep 4 channels a group)."""
    return nn.GroupNorm(max(1, min(32, num_channels // 4)), num_channels)


#: ``model.backbone_norm`` -> the normalisation layer of every conv of the trunk.
NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "group_norm": group_norm}


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34); the first conv carries the stride."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None, norm: Any = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, planes, 3, stride)
        self.bn1 = norm(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, torchvision v1.5), 1x1 expand by 4, with a residual."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None, norm: Any = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, planes, 1)
        self.bn1 = norm(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = norm(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = norm(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-18/50/101 trunk returning C3, C4, C5 (strides 8, 16, 32).

    Parameters
    ----------
    depth:
        18 (BasicBlock, [2, 2, 2, 2]), 50 ([3, 4, 6, 3]) or 101 ([3, 4, 23, 3] Bottlenecks).
    width:
        Stem width; stage ``i`` (1-based) has ``width * 2**(i-1)`` planes. 64 is torchvision's
        network (and the only width an ImageNet checkpoint fits); 8 makes a tiny CPU model.
    frozen_stages:
        0 trains everything; ``k`` in 1..4 freezes the stem and ``layer1``..``layerk``
        (``requires_grad`` False). The release freezes 1.
    norm:
        ``"frozen_bn"`` (the release: ImageNet statistics, never updated; with random weights
        the identity) or ``"group_norm"`` (trainable, for a trunk trained from scratch, with the
        last norm of every residual branch starting at 0, mmdetection's ``zero_init_residual``,
        so each block starts as the identity). ImageNet weights fit ``frozen_bn`` only.

    Attributes
    ----------
    out_channels: ``(C3, C4, C5)`` channel counts, e.g. ``(512, 1024, 2048)`` for ResNet-50.
    strides: ``(8, 16, 32)``.
    """

    strides: tuple[int, int, int] = (8, 16, 32)

    def __init__(self, depth: int = 50, width: int = 64, frozen_stages: int = 1, norm: str = "frozen_bn") -> None:
        super().__init__()
        if norm not in NORM_LAYERS:
            raise P2MInputError(f"ResNet: norm={norm!r} is not one of {sorted(NORM_LAYERS)}")
        norm_layer = NORM_LAYERS[norm]
        self.norm = norm
        if depth not in BLOCKS:
            raise P2MInputError(f"ResNet: depth={depth!r} is not one of {sorted(BLOCKS)}")
        if width < 1:
            raise P2MInputError(f"ResNet: width={width!r} must be a positive integer")
        if not 0 <= frozen_stages <= 4:
            raise P2MInputError(f"ResNet: frozen_stages={frozen_stages!r} is not in 0..4")
        kind, counts = BLOCKS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.frozen_stages = depth, width, frozen_stages

        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        c_in = width
        for i, n_blocks in enumerate(counts):
            planes, stride = width * 2**i, (1 if i == 0 else 2)
            blocks = []
            for j in range(n_blocks):
                downsample = None
                if j == 0 and (stride != 1 or c_in != planes * block.expansion):
                    downsample = nn.Sequential(
                        _conv(c_in, planes * block.expansion, 1, stride), norm_layer(planes * block.expansion)
                    )
                blocks.append(block(c_in, planes, stride if j == 0 else 1, downsample, norm_layer))
                c_in = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels: tuple[int, int, int] = tuple(width * 2**i * block.expansion for i in (1, 2, 3))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, (BasicBlock, Bottleneck)) and isinstance(last := m.bn3 if hasattr(m, "bn3") else m.bn2, nn.GroupNorm):
                nn.init.zeros_(last.weight)
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages == 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """Set the mode; frozen stages stay in eval mode."""
        super().train(mode)
        self._freeze()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, 3, H, W]`` -> ``[C3, C4, C5]``, ``C_l [B, out_channels[l], ceil(H/s), ceil(W/s)]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects images [B, 3, H, W], got {tuple(x.shape)}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict in torchvision's format from a local file into ``model``.

    The file holds a state dict (``torch.save(resnet.state_dict(), path)``) or a dict with it
    under ``"state_dict"``. The classifier (``fc.*``) and, where the model has no such buffer,
    ``num_batches_tracked`` are ignored. Every other key must match the model in name and shape;
    otherwise :class:`P2MInputError` names the file and the first missing, unexpected and
    mis-shaped keys (with both shapes), and the model is left unchanged. Nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise P2MInputError(f"pretrained weights: no such file {path}")
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a corrupt or non-tensor pickle: say which file
        raise P2MInputError(f"pretrained weights {path}: cannot be read as a state dict ({exc})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise P2MInputError(f"pretrained weights {path}: not a state dict of tensors")

    own = model.state_dict()
    state = {
        k: v
        for k, v in loaded.items()
        if not k.startswith("fc.") and not (k.endswith("num_batches_tracked") and k not in own)
    }
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{label}: {_describe(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise P2MInputError(f"pretrained weights {path} do not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
