"""The training losses of Point2Mask from one forward pass and its pseudo labels (paper Sec. 3.4).

Named terms, each already weighted (``loss`` settings), summed over decoder layers where every
layer is supervised:

- ``presence``, ``partial_ce``, ``lab_affinity``, ``tree_energy``: the semantic map ``P^s`` on
  the stride-8 grid, every semantic layer (``loss.semantic_terms`` selects the last three, paper
  Table 4): points dilated to ``pseudo.point_dilation`` input pixels, the LAB colour affinity of
  3x3 and 5x5 dilated neighbourhoods (on RGB in [0, 1]), the tree energy over the minimum
  spanning tree of the image as the network sees it (ImageNet mean/std-normalised, padding 0:
  :func:`network_image`);
- ``boundary``: ``P^b_high`` against the pseudo segments at the input resolution (Eq. 6-7);
- ``projector``: the manifold projector's contrastive loss against pseudo-mask prototypes;
- ``cls``, ``l1``, ``giou``: the location decoder's queries matched (Hungarian, per layer) to the
  boxes of the thing pseudo masks; ``thing_dice``: the thing mask decoder on the queries matched
  at the last layer, every thing layer; ``stuff_dice``, ``stuff_presence``: the stuff decoder
  against the stuff pseudo segments (dice on present classes, focal on presence).

The pseudo labels come from :func:`~p2m_core.pseudo.labels.generate_pseudo_labels` on the mask
grid (``pseudo.mask_stride``); they are targets, without gradient.

The divisors are the release's (docs/METHOD.md, "Losses", has the table): presence focal over
the present (image, class) pairs, stuff presence and stuff dice over the present (image, stuff
class) pairs, partial cross-entropy over the labelled cells, tree energy over the unlabelled
cells, the location and thing-mask terms over the matched boxes, all of the batch; LAB affinity,
boundary and projector are per-image means averaged over the images. Batch counts are shared by
the data-parallel workers (:mod:`p2m_core.losses.normalise`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from p2m_core.config import Config
from p2m_core.losses import (
    IGNORE_INDEX,
    boundary_loss,
    dice_loss,
    hungarian_match,
    lab_affinity_loss,
    masks_to_boxes,
    merge_stuff_segments,
    partial_cross_entropy,
    presence_loss,
    presence_targets,
    projector_contrastive_loss,
    rasterise_points,
    set_losses,
    sigmoid_focal_loss,
    tree_energy_loss,
)
from p2m_core.losses.normalise import batch_count, worker_mean
from p2m_core.losses.segments import stuff_representatives
from p2m_core.model.point2mask import NetworkOutput, Point2Mask
from p2m_core.pseudo.labels import PseudoLabels
from p2m_core.pseudo.maps import PointSet, pad_points


# The release's weighting (loss.release_weighting): which terms its thing / stuff ratio scales,
# and which escape its linear ramp (its keys containing "sem", and the contrastive loss).
STUFF_TERMS = ("stuff_dice", "stuff_presence")
UNSCALED_TERMS = ("boundary", "projector")
UNRAMPED_TERMS = ("presence", "partial_ce", "lab_affinity", "projector")


def point2mask_losses(
    model: Point2Mask, out: NetworkOutput, batch: dict[str, Any], pseudo: PseudoLabels, points: list[PointSet],
    cfg: Config, iteration: int = 0,
) -> dict[str, Tensor]:
    """Named, weighted loss terms (module docstring). ``batch`` as :func:`~p2m_core.data.dataset.collate_points`
    returns it (images in [0, 1]); ``points`` the batch's points on the mask grid; ``iteration``
    (from 0) drives the release's ramp when ``loss.release_weighting`` is on."""
    images, padding = batch["images"], batch["padding_mask"]
    terms: dict[str, Tensor] = {}
    terms.update(_semantic_terms(out, batch, model.classes.num_classes, cfg, model.pixel_mean, model.pixel_std))
    _, labels, is_thing, point_mask = pad_points(points, images.device)
    segments, segment_is_thing = merge_stuff_segments(pseudo.panoptic, labels, is_thing & point_mask, point_mask)
    stride = cfg.pseudo.mask_stride
    H, W = images.shape[-2:]
    full = segments.repeat_interleave(stride, 1).repeat_interleave(stride, 2)[:, :H, :W] if stride > 1 else segments
    boundary = F.interpolate(out.boundary, size=(H, W), mode="bilinear", align_corners=False).sigmoid()[:, 0]
    terms["boundary"] = cfg.loss.boundary_weight * boundary_loss(boundary, full, segment_is_thing, valid=~padding)
    if out.embedding is not None:
        terms["projector"] = cfg.loss.projector_weight * _projector_term(out, batch, segments, labels, is_thing,
                                                                         point_mask, stride, cfg,
                                                                         len(model.classes.stuff_classes))  # fmt: skip
    terms.update(_panoptic_terms(model, out, segments, labels, is_thing, point_mask, batch, stride, cfg))
    if cfg.loss.release_weighting:
        terms = release_weighting(terms, segments, labels, is_thing, point_mask, iteration, cfg.loss.ramp_iters)
    return terms


def release_weighting(
    terms: dict[str, Tensor], segments: Tensor, labels: Tensor, is_thing: Tensor, point_mask: Tensor, iteration: int,
    ramp_iters: int,
) -> dict[str, Tensor]:
    """The release's weighting of the terms (docs/METHOD.md, "Losses"): each term but
    ``boundary`` and ``projector`` times the batch's thing ratio ``r = things / (things + stuff)``
    (the stuff terms times ``1 - r``; things: thing pseudo masks; stuff: stuff classes with a
    point, per image), then every term but the semantic ones that the release's names mark and the
    projector's times ``min(iteration / ramp_iters, 1)``. The release's ramp counter restarts when
    training resumes; this one follows the (checkpointed) iteration."""
    things = stuff = 0
    for b in range(segments.shape[0]):
        present = torch.unique(segments[b][segments[b] >= 0])  # point indices owning pixels
        things += int((is_thing[b] & point_mask[b])[present].sum())
        stuff += len(set(labels[b][point_mask[b] & ~is_thing[b]].tolist()))
    ratio = things / (things + stuff) if things + stuff else 1.0
    ramp = min(iteration / ramp_iters, 1.0)
    out = {}
    for name, value in terms.items():
        if name not in UNSCALED_TERMS:
            value = value * ((1.0 - ratio) if name in STUFF_TERMS else ratio)
        if name not in UNRAMPED_TERMS:
            value = value * ramp
        out[name] = value
    return out


def network_image(images: Tensor, padding: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The image as the network sees it, ``(rgb - mean) / std`` per channel, 0 on padding: the
    release's input batch (normalised, then zero-padded), which its tree energy loss reads and
    its LAB term un-normalises. ``images [B, 3, H, W]`` RGB in [0, 1], ``padding [B, H, W]`` bool
    (True on padding), ``mean``, ``std`` broadcastable to ``images`` (``Point2Mask.pixel_mean``,
    ``pixel_std``: ImageNet's)."""
    return ((images - mean) / std).masked_fill(padding[:, None], 0.0)


def _semantic_terms(
    out: NetworkOutput, batch: dict[str, Any], num_classes: int, cfg: Config, mean: Tensor, std: Tensor
) -> dict[str, Tensor]:
    images, padding = batch["images"], batch["padding_mask"]
    h8, w8 = out.size8
    valid = ~F.interpolate(padding[:, None].float(), size=(h8, w8), mode="nearest")[:, 0].bool()
    labels = rasterise_points(batch["points_yx"], batch["point_labels"], tuple(images.shape[-2:]), (h8, w8),
                              size=cfg.pseudo.point_dilation, order="class")  # fmt: skip
    labels = labels.to(images.device).masked_fill(~valid, IGNORE_INDEX)
    present = presence_targets(list(batch["point_labels"]), num_classes, images.device)
    present_count = batch_count(present.sum(), images.device)  # release: avg_factor = present classes
    unlabelled = labels == IGNORE_INDEX  # release: padding counts as unlabelled (sum and count over the canvas)
    seen = network_image(images, padding, mean.to(images.dtype), std.to(images.dtype))
    # The release's LAB term un-normalises its input: RGB in [0, 1] inside, the mean colour on padding.
    lab_rgb = seen * std + mean
    wanted = set(cfg.loss.semantic_terms)
    terms: dict[str, Tensor] = {}

    def add(name: str, value: Tensor) -> None:
        terms[name] = terms[name] + value if name in terms else value

    for logits, presence in zip(out.semantic.logits, out.semantic.presence):
        add("presence", presence_loss(presence, present, weight=cfg.loss.presence_weight, num=present_count))
        probs = logits.softmax(1)
        if "partial" in wanted:
            add("partial_ce", partial_cross_entropy(logits, labels))
        if "lab" in wanted:
            add("lab_affinity", cfg.loss.alpha1 * lab_affinity_loss(probs, lab_rgb, valid=valid, threshold=cfg.loss.lab_threshold,
                                                                    log_probs=logits.log_softmax(1)))  # fmt: skip
        if "rgb_tree" in wanted:
            add("tree_energy", cfg.loss.alpha2 * tree_energy_loss(probs, seen, unlabelled, sigma=cfg.loss.tree_sigma))
    return terms


def _grid_sample_ids(segments: Tensor, stride: int, size: tuple[int, int], coarse_stride: int = 8) -> Tensor:
    """Segment ids on the stride-8 grid (``size``) from the mask grid (``stride``): each coarse
    cell takes the mask pixel under its centre, input pixel ``8 i + 4``."""
    H, W = segments.shape[-2:]
    centre = coarse_stride // 2
    ys = ((torch.arange(size[0], device=segments.device) * coarse_stride + centre) // stride).clamp_(0, H - 1)
    xs = ((torch.arange(size[1], device=segments.device) * coarse_stride + centre) // stride).clamp_(0, W - 1)
    return segments[:, ys][:, :, xs]


def _projector_term(
    out: NetworkOutput, batch: dict[str, Any], segments: Tensor, labels: Tensor, is_thing: Tensor,
    point_mask: Tensor, stride: int, cfg: Config, num_stuff_classes: int,
) -> Tensor:
    h8, w8 = out.size8
    seg8 = _grid_sample_ids(segments, stride, (h8, w8))
    own = stuff_representatives(labels, is_thing, point_mask)
    points8, point_segments = [], []
    for b, yx in enumerate(batch["points_yx"]):
        yx = yx.to(seg8.device).long() // 8
        points8.append(torch.stack([yx[:, 0].clamp(0, h8 - 1), yx[:, 1].clamp(0, w8 - 1)], 1) if len(yx) else yx.reshape(0, 2))
        point_segments.append(own[b, : len(yx)])
    # the release's prototypes: one per thing point and one per stuff class of the dataset
    num_prototypes = [int((is_thing[b] & point_mask[b]).sum()) + num_stuff_classes for b in range(len(points8))]
    return projector_contrastive_loss(out.embedding, seg8, points8, point_segments,
                                      temperature=cfg.loss.projector_temperature, num_prototypes=num_prototypes)  # fmt: skip


def _panoptic_terms(
    model: Point2Mask, out: NetworkOutput, segments: Tensor, labels: Tensor, is_thing: Tensor, point_mask: Tensor,
    batch: dict[str, Any], stride: int, cfg: Config,
) -> dict[str, Tensor]:
    loss = cfg.loss
    device = segments.device
    h8, w8 = out.size8
    thing_classes = model.classes.thing_classes
    thing_pos = torch.full((model.classes.num_classes,), -1, dtype=torch.long, device=device)
    thing_pos[thing_classes] = torch.arange(len(thing_classes), device=device)
    B, M = labels.shape
    targets = []  # per image: (gt labels [G], gt boxes [G, 4], masks on the stride-8 grid [G, h8, w8])
    for b in range(B):
        h, w = batch["image_sizes"][b]
        vh, vw = -(-h // stride), -(-w // stride)
        ids = [i for i in range(M) if bool(point_mask[b, i] & is_thing[b, i])]
        masks = torch.stack([segments[b] == i for i in ids]) if ids else segments.new_zeros(0, *segments.shape[-2:]).bool()
        keep = masks[:, :vh, :vw].flatten(1).any(1)
        masks, ids = masks[keep], [i for i, k in zip(ids, keep.tolist()) if k]
        boxes = masks_to_boxes(masks[:, :vh, :vw])
        coarse = F.interpolate(masks[None].float(), size=(h8, w8), mode="area")[0] if len(ids) else masks.new_zeros(0, h8, w8).float()
        gt = thing_pos[labels[b, ids]] if ids else labels.new_zeros(0)
        targets.append((gt, boxes, coarse))
    num = batch_count(sum(len(t[0]) for t in targets), device)
    terms = {"cls": out.boundary.new_zeros(()), "l1": out.boundary.new_zeros(()), "giou": out.boundary.new_zeros(())}
    last_match = []
    for layer, (logits, boxes) in enumerate(zip(out.located.logits, out.located.boxes)):
        for b, (gt, gt_boxes, _) in enumerate(targets):
            with torch.no_grad():
                q_idx, g_idx = hungarian_match(logits[b].float(), boxes[b].float(), gt, gt_boxes,
                                               (loss.focal_weight, loss.l1_weight, loss.giou_weight))  # fmt: skip
            part = set_losses(logits[b], boxes[b], gt, gt_boxes, q_idx, g_idx, num, loss.focal_weight, loss.l1_weight,
                              loss.giou_weight)  # fmt: skip
            for key in terms:
                terms[key] = terms[key] + part[key]
            if layer == len(out.located.logits) - 1:
                last_match.append((q_idx, g_idx))
    terms["thing_dice"] = _thing_dice(model, out, targets, last_match, num, loss.dice_weight)
    terms.update(_stuff_terms(model, out, segments, labels, is_thing, point_mask, stride, cfg))
    return terms


def _thing_dice(
    model: Point2Mask, out: NetworkOutput, targets: list, matches: list, num: Tensor, weight: float
) -> Tensor:
    K = max((len(q) for q, _ in matches), default=0)
    if K == 0:
        return out.boundary.new_zeros(())
    index = torch.zeros(len(matches), K, dtype=torch.long, device=out.boundary.device)
    for b, (q, _) in enumerate(matches):
        index[b, : len(q)] = q.to(index.device)
    total = out.boundary.new_zeros(())
    for layer_masks in model.thing_masks(out, index):
        for b, ((q, g), (_, _, coarse)) in enumerate(zip(matches, targets)):
            if len(q):
                total = total + weight * dice_loss(layer_masks[b, : len(q)], coarse[g.to(coarse.device)], num)
    return total


def _stuff_terms(
    model: Point2Mask, out: NetworkOutput, segments: Tensor, labels: Tensor, is_thing: Tensor, point_mask: Tensor,
    stride: int, cfg: Config,
) -> dict[str, Tensor]:
    stuff_classes = model.classes.stuff_classes
    zero = out.boundary.new_zeros(())
    if not stuff_classes:
        return {"stuff_dice": zero, "stuff_presence": zero}
    h8, w8 = out.size8
    B, M = labels.shape
    S = len(stuff_classes)
    own = stuff_representatives(labels, is_thing, point_mask)
    present = torch.zeros(B, S, device=segments.device)
    masks = torch.zeros(B, S, *segments.shape[-2:], device=segments.device)
    for s, c in enumerate(stuff_classes):
        of_class = point_mask & ~is_thing & (labels == c)  # [B, M]
        first = torch.where(of_class, own, M).amin(1)  # the merged segment id of class c
        has = first < M
        present[:, s] = has.float()
        masks[:, s] = ((segments == first[:, None, None]) & has[:, None, None]).float()
    coarse = F.interpolate(masks, size=(h8, w8), mode="area")
    # The release divides both stuff terms by the present (image, stuff class) pairs of the batch,
    # and gives both 0 when there is none.
    count = worker_mean(present.sum(), present.device)
    num = count.clamp(min=1.0)
    any_stuff = (count > 0).to(out.boundary.dtype)
    dice, focal = zero, zero
    for layer_masks, presence in zip(out.stuff.masks, out.stuff.presence):
        focal = focal + cfg.loss.stuff_presence_weight * any_stuff * sigmoid_focal_loss(presence, present, reduction="sum") / num
        on = present.bool()
        if bool(on.any()):
            dice = dice + cfg.loss.stuff_dice_weight * dice_loss(layer_masks[on], coarse[on], num)
    return {"stuff_dice": dice, "stuff_presence": focal}
