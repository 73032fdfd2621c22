"""p2m: Point2Mask (ICCV 2023) point-supervised panoptic segmentation, as a platform.

Sub-packages are concepts, each importable alone:

- :mod:`p2m_core.config`     typed experiment configuration (YAML, ``_base_``, ``--set``).
- :mod:`p2m_core.data`       COCO-panoptic datasets, point labels, synthetic data, edges.
- :mod:`p2m_core.evaluation` panoptic quality (PQ/SQ/RQ) and semantic mIoU.
- :mod:`p2m_core.pseudo`     pseudo masks from points by optimal transport.
"""

__version__ = "0.1.0"
