"""The Point2Mask network, assembled from its parts, and what its outputs become.

``images [B, 3, H, W]`` (RGB in [0, 1], zero-padded; ``padding_mask`` True on padding) ->
ImageNet normalisation -> :class:`~p2m_core.model.backbone.ResNet` -> the deformable encoder
:class:`~p2m_core.model.neck.EncoderNeck` -> memory at strides 8/16/32/64, read by

- :class:`~p2m_core.model.semantic_head.SemanticHead` (``P^s`` logits per layer, presence),
- the detached boundary head (``P^b_high``) and, with ``model.projector``, the manifold
  projector (:mod:`~p2m_core.model.boundary_head`),
- :class:`~p2m_core.model.panoptic_head.PanopticHead` (things located, thing and stuff masks).

:meth:`Point2Mask.task_maps` turns the outputs into the pseudo-label pipeline's
:class:`~p2m_core.pseudo.maps.TaskMaps` at the mask resolution (``pseudo.mask_stride``): the
cost-ready ``P^s`` (:func:`~p2m_core.pseudo.maps.semantic_cost_map`), ``P^b_high`` (sigmoid of
the resized boundary logits) and, when given, the image's low-level edges ``P^b_low``.
:meth:`Point2Mask.predict` paints panoptic predictions (:mod:`~p2m_core.model.inference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2m_core.config import ModelConfig
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.errors import P2MInputError
from p2m_core.model.backbone import ResNet
from p2m_core.model.boundary_head import boundary_head, projector_head
from p2m_core.model.inference import candidates, paint
from p2m_core.model.location_decoder import LocationOutput
from p2m_core.model.neck import EncoderNeck, NeckOutput
from p2m_core.model.panoptic_head import PanopticHead, StuffOutput
from p2m_core.model.pretrained import init_backbone
from p2m_core.model.semantic_head import SemanticHead, SemanticOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_LEVELS = 3  # the heads read the memory at strides 8, 16, 32


@dataclass(frozen=True)
class ClassInfo:
    """The model's classes (the dataset's contiguous class axis): which are things."""

    is_thing: tuple[bool, ...]

    @property
    def num_classes(self) -> int:
        return len(self.is_thing)

    @property
    def thing_classes(self) -> list[int]:
        return [c for c, t in enumerate(self.is_thing) if t]

    @property
    def stuff_classes(self) -> list[int]:
        return [c for c, t in enumerate(self.is_thing) if not t]

    @classmethod
    def from_dataset(cls, dataset: CocoPanoptic) -> ClassInfo:
        """The classes of a panoptic dataset, in its contiguous order."""
        flags = [False] * len(dataset.categories)
        for cid, index in dataset.contiguous_ids().items():
            flags[index] = dataset.categories[cid].isthing
        return cls(tuple(flags))


@dataclass
class NetworkOutput:
    """Everything one forward pass computes (stride-8 maps; lists are per decoder layer)."""

    semantic: SemanticOutput
    boundary: Tensor  # [B, 1, H_8, W_8] logits
    embedding: Tensor | None  # [B, D, H_8, W_8] unit-norm, or None without the projector
    located: LocationOutput
    stuff: StuffOutput
    neck: NeckOutput

    @property
    def size8(self) -> tuple[int, int]:
        return tuple(self.boundary.shape[-2:])


class Point2Mask(nn.Module):
    """The network (module docstring), built from ``model`` settings and the dataset's classes.

    The backbone starts from ``model.pretrained`` (:mod:`~p2m_core.model.pretrained`: ImageNet
    weights by name or from a file, or random with a WARNING); ``load_weights=False`` skips it
    (neither reads nor warns), for a caller that loads a trained state dict next.
    """

    def __init__(self, cfg: ModelConfig, classes: ClassInfo, load_weights: bool = True) -> None:
        super().__init__()
        if not classes.thing_classes:
            raise P2MInputError("Point2Mask: the dataset has no thing class (the panoptic head needs one)")
        self.cfg = cfg
        self.classes = classes
        depth = int(cfg.backbone.removeprefix("resnet"))
        self.backbone = ResNet(depth, width=cfg.width, frozen_stages=cfg.frozen_stages, norm=cfg.backbone_norm)
        if load_weights:
            init_backbone(self.backbone, cfg.pretrained, cfg.backbone)
        d = cfg.hidden_dim
        self.neck = EncoderNeck(
            self.backbone.out_channels, d_model=d, n_heads=cfg.num_heads, n_points=cfg.num_points,
            num_layers=cfg.encoder_layers, d_ffn=cfg.ffn_dim, dropout=cfg.dropout,
        )
        self.semantic = SemanticHead(classes.num_classes, d, cfg.num_heads, cfg.ffn_dim, cfg.semantic_layers,
                                     DECODER_LEVELS, cfg.dropout)  # fmt: skip
        self.boundary = boundary_head(d)
        self.projector = projector_head(d, cfg.projector_dim) if cfg.projector else None
        self.panoptic = PanopticHead(
            len(classes.thing_classes), max(len(classes.stuff_classes), 0), cfg.num_queries, d, cfg.num_heads,
            cfg.num_points, cfg.ffn_dim, cfg.num_decoder_layers, cfg.thing_layers, cfg.stuff_layers, cfg.dropout,
        )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, padding_mask: Tensor | None = None) -> NetworkOutput:
        """``images [B, 3, H, W]`` in [0, 1], ``padding_mask [B, H, W]`` bool -> :class:`NetworkOutput`."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise P2MInputError(f"Point2Mask: images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = (images - self.pixel_mean) / self.pixel_std
        neck = self.neck(self.backbone(x), padding_mask)
        memory = neck.memory[:DECODER_LEVELS]
        pos = neck.pos[:DECODER_LEVELS]
        size8 = tuple(memory[0].shape[-2:])
        return NetworkOutput(
            semantic=self.semantic(memory, size8),
            boundary=self.boundary(memory, pos, size8),
            embedding=None if self.projector is None else self.projector(memory, pos, size8),
            located=self.panoptic.locate(neck),
            stuff=self.panoptic.stuff_masks(memory, size8),
            neck=neck,
        )

    def thing_masks(self, out: NetworkOutput, index: Tensor) -> list[Tensor]:
        """Masks ``[B, K, H_8, W_8]`` per thing-decoder layer of the queries ``index [B, K]``."""
        return self.panoptic.thing_masks(out.located, index, out.neck.memory[:DECODER_LEVELS], out.size8)

    @torch.no_grad()
    def predict(self, images: Tensor, padding_mask: Tensor | None, image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Panoptic predictions, one dict per image: ``panoptic [h, w]`` long segment ids (0 void),
        ``segments`` (``id``, ``label``, ``isthing``, ``score``, ``area``) and ``semantic [h, w]``
        (argmax of ``P^s``, what mIoU is computed from), at each image's unpadded size."""
        return self.paint_predictions(self.forward(images, padding_mask), tuple(images.shape[-2:]), image_sizes)

    @torch.no_grad()
    def paint_predictions(
        self, out: NetworkOutput, padded_size: tuple[int, int], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        """:meth:`predict` from outputs already computed (on inputs of ``padded_size``)."""
        settings = self.cfg.inference
        B = out.boundary.shape[0]
        K = min(settings.top_k, out.located.logits[-1].shape[1])
        scores = out.located.logits[-1].sigmoid().amax(-1)  # [B, Q]
        index = scores.topk(K, dim=1).indices
        thing_masks = self.thing_masks(out, index)[-1]
        H, W = padded_size
        results = []
        for b in range(B):
            h, w = image_sizes[b]

            def full(x: Tensor) -> Tensor:
                return F.interpolate(x[None], size=(H, W), mode="bilinear", align_corners=False)[0, :, :h, :w]

            thing_logits = out.located.logits[-1][b].gather(0, index[b][:, None].expand(-1, len(self.classes.thing_classes)))
            cands = candidates(
                thing_logits, full(thing_masks[b]), self.classes.thing_classes,
                out.stuff.presence[-1][b], full(out.stuff.masks[-1][b]), self.classes.stuff_classes, settings,
            )
            panoptic, segments = paint(cands, (h, w), settings)
            semantic = full(out.semantic.logits[-1][b]).argmax(0)
            results.append({"panoptic": panoptic, "segments": segments, "semantic": semantic})
        return results


def build_model(cfg: ModelConfig, classes: ClassInfo, load_weights: bool = True) -> Point2Mask:
    """The network for ``model`` settings and a dataset's classes (``model.pretrained`` loaded
    unless ``load_weights`` is False: :class:`Point2Mask`)."""
    return Point2Mask(cfg, classes, load_weights)
