"""The semi-dual view of pixel-to-point transport, shared by the Sinkhorn and Newton solvers.

Point2Mask's transport problem has few suppliers (the m thing points) and many consumers (the n
transported pixels, each demanding one unit). For entropic OT with regularisation ``eps`` the
pixel duals can be eliminated in closed form: given supplier potentials ``f [m]`` (cost units),
every pixel's column of the optimal plan is a softmax over the suppliers,

.. math::

    \\pi_{ij}(f) = y_j \\, \\mathrm{softmax}_i\\big((f_i - C_{ij}) / \\varepsilon\\big),

so the column marginals hold exactly and only the m row sums ``r_i(f) = sum_j pi_ij(f)`` remain
to match the supplies ``x_i``. Everything a solver needs is therefore m-dimensional: the
semi-dual objective ``D(f) = sum_i x_i f_i - eps sum_j y_j lse_i((f_i - C_ij) / eps)`` (concave),
its gradient ``x - r(f)`` and its negative Hessian ``(diag(r) - P Y P^T) / eps``. The decoded label
of a pixel is ``argmax_i (f_i - C_ij)``: it needs no plan at all.

This module holds what the solvers share: the result types
(:class:`TransportResult`, :class:`SinkhornLog`) and the input checks; their decodes break ties
by :mod:`~p2m_core.pseudo.ties` (exact ties go to the lowest supplier index). The solvers are
:mod:`~p2m_core.pseudo.sinkhorn_reference` (the reference's fixed 80 iterations) and
:mod:`~p2m_core.pseudo.newton` (converged); :mod:`~p2m_core.pseudo.transport` dispatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from p2m_core.errors import P2MInputError

# exp(-SOFTMAX_FLOOR) relative to a column's largest term is below float32 resolution even when
# summed over a few hundred suppliers; clamping there keeps exp out of the denormal range, where
# CPUs run it ~50x slower (at small eps nearly the whole plan lies there).
SOFTMAX_FLOOR = 30.0


@dataclass
class SinkhornLog:
    """Per-image diagnostics of one transport solve (all tensors have shape [B]).

    ``iterations`` (long): solver iterations (Sinkhorn updates, or Newton evaluations);
    ``row_error``, ``col_error`` (float): the largest absolute violation of the supply / demand
    marginal, in pixels; ``rel_error`` (float): the misplaced share of the total mass,
    ``max(sum_i |r_i - x_i| / sum x, sum_j |c_j - y_j| / sum y)``; ``converged`` (bool): the
    marginals met the tolerance.
    """

    iterations: Tensor
    row_error: Tensor
    col_error: Tensor
    rel_error: Tensor
    converged: Tensor

    @staticmethod
    def empty(batch: int, device: torch.device | str) -> SinkhornLog:
        """The log of a batch with nothing to transport: zero errors, converged."""
        zero = torch.zeros(batch, device=device)
        return SinkhornLog(
            torch.zeros(batch, dtype=torch.long, device=device), zero, zero.clone(), zero.clone(),
            torch.ones(batch, dtype=torch.bool, device=device),
        )


@dataclass
class TransportResult:
    """What a transport solve returns.

    labels : Tensor [B, N] long
        Supplier of each pixel (-1 on padded pixels and in images without a real supplier).
    potentials : Tensor [B, M] float64
        Supplier potentials ``f`` in raw cost units (0 on padded suppliers): ``labels`` is
        ``argmax_i (f_i - C_ij)``, and :func:`semidual_log_plan` rebuilds the plan from them.
    epsilon : Tensor [B] float64
        The regularisation of the plan, in raw cost units (0 for the exact solver).
    log : SinkhornLog
    """

    labels: Tensor
    potentials: Tensor
    epsilon: Tensor
    log: SinkhornLog


def empty_result(B: int, M: int, N: int, epsilon: float, device: torch.device | str) -> TransportResult:
    """The result of a batch with nothing to transport: every label -1, zero potentials."""
    return TransportResult(
        labels=torch.full((B, N), -1, dtype=torch.long, device=device),
        potentials=torch.zeros(B, M, dtype=torch.float64, device=device),
        epsilon=torch.full((B,), float(epsilon), dtype=torch.float64, device=device),
        log=SinkhornLog.empty(B, device),
    )


def check_problem(
    cost: Tensor, supply: Tensor, demand: Tensor | None, point_mask: Tensor | None, pixel_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validate shapes; return the bool masks (all True where not given)."""
    if cost.dim() != 3:
        raise P2MInputError(f"transport: cost must be [B, M, N], got shape {tuple(cost.shape)}")
    B, M, N = cost.shape
    if tuple(supply.shape) != (B, M) or (demand is not None and tuple(demand.shape) != (B, N)):
        got = "" if demand is None else f" / demand {tuple(demand.shape)}"
        raise P2MInputError(
            f"transport: supply {tuple(supply.shape)}{got} do not match cost {tuple(cost.shape)} "
            "(expected [B, M] and [B, N])"
        )
    if point_mask is None:
        point_mask = torch.ones(B, M, dtype=torch.bool, device=cost.device)
    if pixel_mask is None:
        pixel_mask = torch.ones(B, N, dtype=torch.bool, device=cost.device)
    if tuple(point_mask.shape) != (B, M) or tuple(pixel_mask.shape) != (B, N):
        raise P2MInputError(
            f"transport: point_mask {tuple(point_mask.shape)} / pixel_mask {tuple(pixel_mask.shape)} "
            f"do not match cost {tuple(cost.shape)}"
        )
    return point_mask.to(torch.bool), pixel_mask.to(torch.bool)


def semidual_log_plan(
    cost: Tensor, result: TransportResult, demand: Tensor | None = None,
    point_mask: Tensor | None = None, pixel_mask: Tensor | None = None,
) -> Tensor:
    """``log pi_ij`` of the column-normalised plan of ``result`` (module docstring), ``[B, M, N]``.

    For inspection and tests: a solver never builds the plan. ``-inf`` on padded entries.
    Exact solves (``epsilon = 0``) give 0 where a pixel is assigned and -inf elsewhere.
    """
    B, M, N = cost.shape
    point_mask, pixel_mask = check_problem(cost, result.potentials, demand, point_mask, pixel_mask)
    y = torch.ones(B, N, dtype=torch.float64, device=cost.device) if demand is None else demand.double()
    valid = point_mask[:, :, None] & pixel_mask[:, None, :]
    eps = result.epsilon.double()[:, None, None]
    shifted = result.potentials.double()[:, :, None] - cost.double()
    hard = torch.where(result.labels[:, None, :] == torch.arange(M, device=cost.device)[None, :, None], 0.0, -math.inf)
    soft = torch.log_softmax(torch.where(valid, shifted / eps.clamp_min(1e-300), -math.inf), 1)
    log_plan = torch.where(eps > 0, soft, hard) + torch.log(y)[:, None, :]
    return torch.where(valid, log_plan, -math.inf)
