"""Optimal transport of pixels to points (paper Sec. 3.2, Algorithm 1): the solvers' front door.

Point2Mask assigns the transported pixels to the thing points by the plan of

.. math::

    \\Gamma^* = \\arg\\min_{\\Gamma \\ge 0} \\langle \\Gamma, C \\rangle - \\varepsilon H(\\Gamma)
    \\quad \\text{s.t.} \\quad \\Gamma \\mathbf{1}_N = x, \\; \\Gamma^\\top \\mathbf{1}_M = y,

with ``C[i, j]`` the geodesic cost from point i to pixel j, supplies ``x_i = k_i`` (pixel counts)
and demands ``y_j = 1``, decoded as ``label_j = argmax_i Gamma_ij``. Three solvers, one result
type (:class:`~p2m_core.pseudo.semidual.TransportResult`: labels, supplier potentials, eps and
a :class:`~p2m_core.pseudo.semidual.SinkhornLog`), batched over images with padding
(``point_mask [B, M]``, ``pixel_mask [B, N]``):

``sinkhorn(..., mode="reference")``
    :func:`~p2m_core.pseudo.sinkhorn_reference.sinkhorn_reference`: the reference code's
    80-iteration Sinkhorn at eps = 1e-3 raw cost units (``raw_epsilon``), same labels, computed
    on the pixels near a tie only. It does not converge (docs/METHOD.md): its labels are close to minimum cost.
``sinkhorn(..., mode="converged")``
    :func:`~p2m_core.pseudo.newton.sinkhorn_converged`: the same entropic problem on costs
    normalised per image (so eps is ``relative_epsilon``, a fraction of the image's largest
    cost), solved to a marginal tolerance by Newton's method on the semi-dual.
:func:`~p2m_core.pseudo.exact.transport_exact` (``assignment: ot_exact``)
    The unregularised problem (the eps -> 0 limit): an integral assignment in which every
    point gets exactly k_i pixels at minimum total cost.

No solver builds the M x N plan; :func:`~p2m_core.pseudo.semidual.semidual_log_plan` rebuilds
it from a result when it is wanted. Marginal diagnostics (``SinkhornLog``), for a plan with row
sums ``r`` and column sums ``c``: ``row_error = max_i |r_i - x_i|``, ``col_error = max_j |c_j -
y_j|`` (pixels: ``col_error = 0.98`` means some pixel receives 0.02 or 1.98 units instead of 1)
and ``rel_error``, the misplaced share of the mass (total-variation distance).
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2m_core.config import SINKHORN_EPSILON, SINKHORN_ITERS, SINKHORN_MAX_ITERS, SINKHORN_MODES, SINKHORN_TOL
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.exact import transport_exact
from p2m_core.pseudo.newton import sinkhorn_converged
from p2m_core.pseudo.semidual import SinkhornLog, TransportResult
from p2m_core.pseudo.sinkhorn_reference import sinkhorn_reference

__all__ = ["SinkhornLog", "TransportResult", "disagreement", "exact", "sinkhorn"]


def sinkhorn(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    mode: str = "reference",
    epsilon: float = SINKHORN_EPSILON,
    num_iters: int = SINKHORN_ITERS,
    tol: float = SINKHORN_TOL,
    max_iters: int = SINKHORN_MAX_ITERS,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
) -> TransportResult:
    """Entropic OT of pixels to points: dispatch on ``mode`` (module docstring).

    ``epsilon`` is ``pseudo.sinkhorn_epsilon`` as configured, and this is the one place that
    reads its unit from ``mode``: ``"reference"`` hands it on as ``raw_epsilon`` (raw cost
    units, as the reference code uses it) and runs exactly ``num_iters`` iterations;
    ``"converged"`` hands it on as ``relative_epsilon`` (a fraction of the image's largest cost:
    that solver normalises the costs per image) and runs until the supply error is within
    ``tol`` (``max_iters`` caps the Newton evaluations). Either way the result's ``epsilon`` is
    in raw cost units. Shapes: cost [B, M, N], supply [B, M], demand [B, N], masks [B, M] /
    [B, N] bool.

    Example
    -------
    >>> cost = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]])
    >>> result = sinkhorn(cost, torch.tensor([[2.0, 1.0]]), torch.ones(1, 3), mode="converged", epsilon=1e-2)
    >>> result.labels.tolist()
    [[0, 0, 1]]
    """
    if mode == "reference":
        return sinkhorn_reference(
            cost, supply, demand, raw_epsilon=epsilon, num_iters=num_iters, tol=tol,
            point_mask=point_mask, pixel_mask=pixel_mask,
        )
    if mode == "converged":
        return sinkhorn_converged(
            cost, supply, demand, relative_epsilon=epsilon, tol=tol, max_iters=max_iters,
            point_mask=point_mask, pixel_mask=pixel_mask,
        )
    raise P2MInputError(f"pseudo.sinkhorn_mode: unknown mode {mode!r}, expected one of {SINKHORN_MODES}")


def exact(
    cost: Tensor,
    supply: Tensor,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
    potentials: Tensor | None = None,
    warm_start: bool = True,
) -> TransportResult:
    """:func:`~p2m_core.pseudo.exact.transport_exact` as a :class:`TransportResult`, so that every
    solver answers alike: ``epsilon`` 0, marginal errors 0 (counts equal k exactly, which the
    solver certifies), ``iterations`` its dual rounds plus augmenting paths.

    Without ``potentials`` and with ``warm_start``, the converged entropic solver at its default
    eps (1e-3 of the largest cost) supplies them: its potentials leave few pixels to repair, which makes the exact solve
    ~1.6x faster on the benchmark (docs/BENCHMARKS.md). The result never depends on them."""
    if potentials is None and warm_start and cost.numel():
        demand = torch.ones(cost.shape[0], cost.shape[2], device=cost.device)
        start = sinkhorn_converged(cost, supply, demand, point_mask=point_mask, pixel_mask=pixel_mask)
        potentials = start.potentials.nan_to_num(0.0, posinf=0.0, neginf=0.0)  # a start, never a result
    labels, log = transport_exact(cost, supply, point_mask, pixel_mask, potentials)
    B = cost.shape[0]
    zero = torch.zeros(B, device=labels.device)
    return TransportResult(
        labels=labels,
        potentials=log.potentials.to(labels.device),
        epsilon=torch.zeros(B, dtype=torch.float64, device=labels.device),
        log=SinkhornLog(
            iterations=(log.coordinate_steps + log.augmentations).to(labels.device),
            row_error=zero, col_error=zero.clone(), rel_error=zero.clone(),
            converged=torch.ones(B, dtype=torch.bool, device=labels.device),
        ),
    )


def disagreement(labels_a: Tensor, labels_b: Tensor, mask: Tensor) -> Tensor:
    """Share of the masked pixels whose labels differ, per image: [B, ...] x 2, mask -> [B].

    ``sum(mask & (a != b)) / sum(mask)``; 0 for an image with an empty mask. Used for the
    OT-versus-MC diagnostic (docs/METHOD.md, "The converged solver").
    """
    B = labels_a.shape[0]
    mask = mask.reshape(B, -1).bool()
    differ = (labels_a.reshape(B, -1) != labels_b.reshape(B, -1)) & mask
    return differ.sum(1).float() / mask.sum(1).clamp_min(1).float()
