"""Datasets in the COCO panoptic format, point labels, synthetic data and edge maps."""

from p2m_core.data.panoptic_format import (
    Category,
    CocoPanoptic,
    PanopticRecord,
    Segment,
    id2rgb,
    rgb2id,
)

__all__ = ["Category", "CocoPanoptic", "PanopticRecord", "Segment", "id2rgb", "rgb2id"]
