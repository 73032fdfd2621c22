"""Datasets in the COCO panoptic format, point labels, synthetic data and edge maps.

- :mod:`~p2m_core.data.panoptic_format` reads any COCO-panoptic-format dataset;
- :mod:`~p2m_core.data.synthetic` writes the built-in synthetic dataset;
- :mod:`~p2m_core.data.points` samples one point per segment (the paper's supervision);
- :mod:`~p2m_core.data.dataset` / :mod:`~p2m_core.data.transforms` serve them to torch;
- :mod:`~p2m_core.data.convert_voc` converts Pascal VOC 2012 (+SBD);
- :mod:`~p2m_core.data.edges` computes the low-level edge map ``P^b_low``.

Only the light reader is imported here; import the others from their modules.
"""

from p2m_core.data.panoptic_format import (
    Category,
    CocoPanoptic,
    PanopticRecord,
    Segment,
    id2rgb,
    rgb2id,
)

__all__ = ["Category", "CocoPanoptic", "PanopticRecord", "Segment", "id2rgb", "rgb2id"]
