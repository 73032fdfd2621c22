"""Pseudo masks from point labels by optimal transport (Point2Mask, paper Sec. 3).

Modules follow the paper's steps: :mod:`~p2m_core.pseudo.maps` (inputs, the cost-ready P^s),
:mod:`~p2m_core.pseudo.roles` (which pixels are stuff, transported or a point's own),
:mod:`~p2m_core.pseudo.edge_lengths` (Eq. 2-3), :mod:`~p2m_core.pseudo.geodesic` (costs),
:mod:`~p2m_core.pseudo.graph` (the coarse graph and its two resolutions),
:mod:`~p2m_core.pseudo.capacities` (k), :mod:`~p2m_core.pseudo.min_cost` (the minimum-cost
decodes), :mod:`~p2m_core.pseudo.assignment` (which pixels and which solver),
:mod:`~p2m_core.pseudo.transport` (the OT solvers: :mod:`~p2m_core.pseudo.sinkhorn_reference`,
:mod:`~p2m_core.pseudo.newton`, :mod:`~p2m_core.pseudo.exact`; :mod:`~p2m_core.pseudo.semidual`
what they share) and :mod:`~p2m_core.pseudo.labels` (the pipeline, :func:`generate_pseudo_labels`).
Every decode breaks exact ties the same way (:mod:`~p2m_core.pseudo.ties`). The method is
explained in docs/METHOD.md. This package holds the algorithm only: the stage that scores pseudo
masks against the ground truth is :mod:`p2m_core.ablation`.

The public names below are imported lazily, so that importing the package does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TaskMaps": "maps",
    "PointSet": "maps",
    "semantic_cost_map": "maps",
    "PseudoLabels": "labels",
    "ImagePseudoLabels": "labels",
    "generate_pseudo_labels": "labels",
    "sinkhorn": "transport",
    "disagreement": "transport",
    "sinkhorn_reference": "sinkhorn_reference",
    "sinkhorn_converged": "newton",
    "SinkhornLog": "semidual",
    "TransportResult": "semidual",
    "semidual_log_plan": "semidual",
    "transport_exact": "exact",
    "ExactLog": "exact",
    "equal_division": "capacities",
    "nearest_point": "capacities",
    "nearest_centroid": "capacities",
    "mask_centroids": "capacities",
    "edge_lengths": "edge_lengths",
    "geodesic_distances": "geodesic",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
