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

import importlib
from typing import Any

#: Public name -> the module that defines it. Imported on first use (PEP 562): the sweep driver
#: reads ``p2m_core.model.pretrained`` to check configs, and importing the network here would
#: pull torch into it (about 1 s of its start, and more at its exit) for nothing.
_EXPORTS = {
    "FrozenBatchNorm2d": "backbone",
    "ResNet": "backbone",
    "load_pretrained": "backbone",
    "MSDeformAttn": "deformable",
    "DeformableEncoder": "neck",
    "DeformableEncoderLayer": "neck",
    "EncoderNeck": "neck",
    "NeckOutput": "neck",
    "sine_position_encoding": "position",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
