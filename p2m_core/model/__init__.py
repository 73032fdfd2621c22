"""The Point2Mask network (paper Sec. 3.1, Fig. 2), in plain PyTorch.

Image ``[B, 3, H, W]`` -> :mod:`~p2m_core.model.backbone` (ResNet, frozen batch norm; C3/C4/C5 at
strides 8/16/32) -> :mod:`~p2m_core.model.neck` (projections to ``d_model``, an extra stride-64
level, :mod:`~p2m_core.model.position` sine encodings plus level embeddings, and a stack of
:mod:`~p2m_core.model.deformable` multi-scale deformable-attention encoder layers) -> memory at
strides 8/16/32/64, which the heads read: :mod:`~p2m_core.model.semantic_head` (``P^s``),
:mod:`~p2m_core.model.boundary_head` (``P^b_high`` and the manifold projector, on detached
memory), :mod:`~p2m_core.model.panoptic_head` (:mod:`~p2m_core.model.location_decoder` and the
thing / stuff :mod:`~p2m_core.model.mask_decoder`), and :mod:`~p2m_core.model.inference` (the
painting rules). docs/METHOD.md ("The network: backbone and encoder") explains the design.

Modules take plain keyword arguments (sizes, depths); building them from a ``ModelConfig`` is
the caller's job. Nothing here calls ``.cuda()``: tensors follow the inputs' device.
"""

from __future__ import annotations

from p2m_core.model.backbone import FrozenBatchNorm2d, ResNet, load_pretrained
from p2m_core.model.deformable import MSDeformAttn
from p2m_core.model.neck import DeformableEncoder, DeformableEncoderLayer, EncoderNeck, NeckOutput
from p2m_core.model.position import sine_position_encoding

__all__ = [
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "EncoderNeck",
    "FrozenBatchNorm2d",
    "MSDeformAttn",
    "NeckOutput",
    "ResNet",
    "load_pretrained",
    "sine_position_encoding",
]
