"""Training losses of Point2Mask (paper Sec. 3.4), one small function per term.

Semantic map (at the map's stride, every semantic layer):
:mod:`~p2m_core.losses.presence` (class-presence focal loss, and the sigmoid focal loss itself),
:mod:`~p2m_core.losses.partial_ce` (cross-entropy on points dilated to squares),
:mod:`~p2m_core.losses.lab_affinity` (local LAB colour affinity, ``L_LAB``) and
:mod:`~p2m_core.losses.tree_energy` (long-range RGB affinity through a minimum spanning tree,
``L_RGB``): ``L_sem = L_partial + alpha1 L_LAB + alpha2 L_RGB``.
High-level boundary (Eq. 6-7): :mod:`~p2m_core.losses.boundary`.
Manifold projector (contrastive, prototypes from the pseudo masks): :mod:`~p2m_core.losses.projector`.
Panoptic branch: :mod:`~p2m_core.losses.panoptic` (box conversions, GIoU, L1, dice, focal) and
:mod:`~p2m_core.losses.matcher` (Hungarian matching of queries to pseudo-mask boxes).
:mod:`~p2m_core.losses.segments` turns the pseudo labels' point-owner map into the segment map
the boundary and projector losses read (stuff merged per class).

Every function takes tensors and plain numbers (weights included) and returns a scalar tensor on
the inputs' device; none reads the config. Empty inputs (no labelled pixel, no pair, no point)
give 0, never NaN.
"""

from p2m_core.losses.boundary import boundary_loss
from p2m_core.losses.lab_affinity import lab_affinity_loss, rgb_to_lab
from p2m_core.losses.matcher import hungarian_match, matching_cost
from p2m_core.losses.panoptic import (
    box_cxcywh_to_xyxy,
    box_l1_loss,
    box_xyxy_to_cxcywh,
    dice_loss,
    generalized_box_iou,
    giou_loss,
    masks_to_boxes,
    set_losses,
)
from p2m_core.losses.partial_ce import IGNORE_INDEX, partial_cross_entropy, rasterise_points
from p2m_core.losses.presence import presence_loss, presence_targets, sigmoid_focal_loss
from p2m_core.losses.projector import projector_contrastive_loss, segment_prototypes
from p2m_core.losses.segments import merge_stuff_segments
from p2m_core.losses.tree_energy import GridTree, grid_mst, tree_aggregate, tree_energy_loss, tree_filter

__all__ = [
    "IGNORE_INDEX",
    "GridTree",
    "boundary_loss",
    "box_cxcywh_to_xyxy",
    "box_l1_loss",
    "box_xyxy_to_cxcywh",
    "dice_loss",
    "generalized_box_iou",
    "giou_loss",
    "grid_mst",
    "hungarian_match",
    "lab_affinity_loss",
    "masks_to_boxes",
    "matching_cost",
    "merge_stuff_segments",
    "partial_cross_entropy",
    "presence_loss",
    "presence_targets",
    "projector_contrastive_loss",
    "rasterise_points",
    "rgb_to_lab",
    "segment_prototypes",
    "set_losses",
    "sigmoid_focal_loss",
    "tree_aggregate",
    "tree_energy_loss",
    "tree_filter",
]
