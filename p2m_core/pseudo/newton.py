"""Converged entropic transport of pixels to points by Newton's method on the semi-dual.

What ``sinkhorn_mode: converged`` runs. The problem is the entropic OT of
:mod:`~p2m_core.pseudo.semidual` on costs normalised per image (``C' = C / max C``), so that
``relative_epsilon`` is a fraction of the image's largest cost. Its semi-dual has only m
variables (one potential per point), is concave and smooth, and its Hessian is cheap (an m x m
matrix from one pass over the plan), so Newton's method reaches the tolerance in a handful of
steps where Sinkhorn, a first-order method on the same dual, needs hundreds to thousands at
small eps:

- **Newton step**: solve ``(diag(r) - P Y P^T) d = eps (x - r)`` (float64, m x m; a ridge of
  ``1e-6 max r`` handles the constant direction and points that receive no mass) and cap
  ``max |d|`` at ``step_cap * eps``: the softmax saturates beyond a few eps, so a longer step
  carries no information.
- **Line search without host synchronisation**: every iteration evaluates one trial point
  ``f + t d`` per image and accepts it when the dual rises by the Armijo fraction of the
  predicted rise; otherwise ``t`` halves. One evaluation gives the objective, the gradient and
  the Hessian at once, so a rejected trial costs exactly one evaluation.
- **Epsilon scaling**: each image starts at ``epsilon_start`` (relative), where the dual is
  nearly quadratic, and moves to ``epsilon_decay`` times it as soon as its marginals are within
  ``level_tol``; potentials are in cost units, so each level warm-starts the next.
- **Stopping**: an image stops once ``sum_i |r_i - x_i| / sum_i x_i <= tol`` at the target eps
  and is then frozen; its result never depends on the other images of the batch. The host
  checks whether all images are done only every ``check_every`` iterations.

The column marginals hold exactly by construction, so ``rel_error`` is the row (supply) error.
Float32 carries the n x m work; float64 only the m-dimensional state and the linear solves,
and everything when ``relative_epsilon`` or ``tol`` is below what float32 resolves (1e-5).

References: [1] M. Cuturi, G. Peyre, "A Smoothed Dual Approach for Variational Wasserstein
Problems", SIAM J. Imaging Sci. 2016 (the semi-dual). [2] B. Schmitzer, "Stabilized Sparse
Scaling Algorithms for Entropy Regularized Transport Problems", SIAM J. Sci. Comput. 2019
(epsilon scaling). [3] J. Nocedal, S. Wright, "Numerical Optimization", 2006 (Newton, Armijo).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from p2m_core.config.defaults import SINKHORN_EPSILON, SINKHORN_MAX_ITERS, SINKHORN_TOL
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.semidual import (
    SOFTMAX_FLOOR,
    SinkhornLog,
    TransportResult,
    check_problem,
    empty_result,
)
from p2m_core.pseudo.ties import argmax_lowest

ARMIJO = 1e-4  # fraction of the predicted rise a step must achieve
FLOAT32_LIMIT = 1e-5  # below this epsilon or tol the n x m work runs in float64


def sinkhorn_converged(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    relative_epsilon: float = SINKHORN_EPSILON,
    tol: float = SINKHORN_TOL,
    max_iters: int = SINKHORN_MAX_ITERS,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
    epsilon_start: float = 0.1,
    epsilon_decay: float = 0.1,
    level_tol: float = 0.01,
    step_cap: float = 20.0,
    check_every: int = 4,
) -> TransportResult:
    """Entropic OT solved to a marginal tolerance, per image (module docstring).

    Parameters
    ----------
    cost : Tensor [B, M, N]
        Costs; only ratios within an image matter (they are divided by the image's max).
    supply, demand : Tensor [B, M] / [B, N]
        ``x`` (capacities k) and ``y`` (1 per pixel). Zero supplies count as padding; supplies
        are rescaled to the image's total demand (a no-op when k sums to the pixel count).
    relative_epsilon : float
        Target regularisation as a fraction of the image's largest cost (``pseudo.sinkhorn_epsilon``
        in converged mode); the result's ``epsilon`` is it in raw cost units.
    tol : float
        Stopping tolerance on the misplaced share of the supply.
    max_iters : int
        Cap on evaluations (each iteration is one), all levels included.
    point_mask, pixel_mask : Tensor [B, M] / [B, N] bool, optional
        Real (True) versus padded entries.
    epsilon_start, epsilon_decay, level_tol : float
        Epsilon scaling: the first level, the factor between levels, and the error at which an
        image moves to the next level.
    step_cap : float
        Largest Newton step, in units of the current eps.
    check_every : int
        Iterations between host checks of whether every image is done.

    Returns
    -------
    TransportResult
        ``labels = argmax_i (f_i - C_ij)``; ``potentials`` and ``epsilon`` in raw cost units.
    """
    point_mask, pixel_mask = check_problem(cost, supply, demand, point_mask, pixel_mask)
    for name, value, ok in (
        ("sinkhorn_epsilon", relative_epsilon, relative_epsilon > 0),
        ("sinkhorn_tol", tol, tol > 0),
        ("epsilon_decay", epsilon_decay, 0 < epsilon_decay < 1),
        ("epsilon_start", epsilon_start, epsilon_start > 0),
        ("step_cap", step_cap, step_cap > 0),
    ):
        if not ok:
            raise P2MInputError(f"sinkhorn_converged: {name}={value} is out of range")
    B, M, N = cost.shape
    dev = cost.device
    if B * M * N == 0:
        return empty_result(B, M, N, relative_epsilon, dev)
    dtype = torch.float64 if min(relative_epsilon, tol) < FLOAT32_LIMIT else torch.float32
    y = torch.where(pixel_mask, demand.to(dtype), 0.0)
    point_mask = point_mask & (supply > 0) & (y.sum(1, keepdim=True) > 0)
    pixel_mask = pixel_mask & (y > 0) & point_mask.any(1, keepdim=True)
    y = torch.where(pixel_mask, y, 0.0)
    # costs / (the image's largest finite real cost); +inf on padded entries
    norm_cost = cost.to(dtype).masked_fill(~point_mask[:, :, None], 0.0).masked_fill_(~pixel_mask[:, None, :], 0.0)
    scale = norm_cost.abs().nan_to_num_(posinf=0.0).flatten(1).amax(1) if M * N else cost.new_ones(B, dtype=dtype)
    scale = torch.where(scale > 0, scale, 1.0).double()
    norm_cost = norm_cost.mul_(1.0 / scale.to(dtype)[:, None, None])
    norm_cost = norm_cost.masked_fill_(~point_mask[:, :, None], math.inf).masked_fill_(~pixel_mask[:, None, :], math.inf)
    x = torch.where(point_mask, supply.double(), 0.0)
    x = x * (y.double().sum(1) / x.sum(1).clamp_min(1e-300))[:, None]
    unit_demand = bool(((y == 0) | (y == 1)).all())

    state = _NewtonState(B, M, dev, max(relative_epsilon, epsilon_start))
    state.done = ~point_mask.any(1)  # nothing to transport
    for it in range(max_iters):
        trial = state.f + state.t[:, None] * state.step
        value, grad, hess = _evaluate(norm_cost, y, x, trial, state.level, point_mask, unit_demand)
        state.update(trial, value, grad, hess, x, point_mask, relative_epsilon, tol, epsilon_decay, level_tol, step_cap)
        if (it + 1) % check_every == 0 and not bool((~state.done).any()):
            break

    f = state.f.to(dtype)
    shifted = torch.where(point_mask[:, :, None], f[:, :, None] - norm_cost, -math.inf)
    labels = torch.where(pixel_mask, argmax_lowest(shifted), -1)
    err = state.error.float()
    row_error = (state.grad.abs().amax(1) if M else torch.zeros(B, dtype=torch.float64, device=dev)).float()
    converged = ((state.error <= tol) & (state.level <= relative_epsilon * (1 + 1e-9))) | ~point_mask.any(1)
    log = SinkhornLog(
        iterations=state.evaluations,
        row_error=torch.where(point_mask.any(1), row_error, 0.0),
        col_error=torch.zeros(B, device=dev),
        rel_error=torch.where(point_mask.any(1), err, 0.0),
        converged=converged,
    )
    return TransportResult(
        labels=labels,
        potentials=torch.where(point_mask, state.f * scale[:, None], 0.0),
        epsilon=state.level * scale,
        log=log,
    )


def _evaluate(
    norm_cost: Tensor, y: Tensor, x: Tensor, f: Tensor, level: Tensor, point_mask: Tensor, unit_demand: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-dual value ``D(f)`` [B], gradient ``x - r`` [B, M] and ``eps`` times the negative
    Hessian ``diag(r) - P Y P^T`` [B, M, M] (float64) at potentials ``f`` and eps ``level``."""
    dtype = norm_cost.dtype
    inv_eps = (1.0 / level).to(dtype)[:, None, None]
    shifted = (f.to(dtype)[:, :, None] - norm_cost).mul_(inv_eps)  # -inf on padded entries
    top = shifted.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    soft = shifted.sub_(top).clamp_min_(-SOFTMAX_FLOOR).exp_()
    total = soft.sum(1, keepdim=True)
    if unit_demand:  # y in {0, 1}: the plan is the softmax with y folded in, y^2 = y in P Y P^T
        weighted = soft = soft.mul_(y[:, None, :] / total)
    else:
        soft = soft.mul_(1.0 / total)  # softmax over the points
        weighted = soft * y[:, None, :]  # the plan
    mass = weighted.sum(2).double()  # r
    # diag(r) - P Y P^T has zero row sums (columns of P sum to 1): it is the Laplacian of the
    # off-diagonal co-occupancy G_il = sum_j y_j pi_ij pi_lj. Built that way it is exactly PSD
    # and free of the float32 cancellation of r_i - G_ii when pi is nearly one-hot.
    cooc = torch.bmm(weighted, (weighted if unit_demand else soft).transpose(1, 2)).double()
    cooc = cooc - torch.diag_embed(torch.diagonal(cooc, dim1=1, dim2=2))
    hess = torch.diag_embed(cooc.sum(2)) - cooc
    lse = (total.squeeze(1).log() + top.squeeze(1)).double()
    value = (x * torch.where(point_mask, f, 0.0)).sum(1) - level * (y.double() * lse).sum(1)
    grad = torch.where(point_mask, x - mass, 0.0)
    return value, grad, hess


class _NewtonState:
    """Per-image Newton state: accepted potentials and their value, gradient and direction,
    the trial step length, the eps level, and the stop flags (all [B] or [B, M] tensors)."""

    def __init__(self, B: int, M: int, dev: torch.device, level: float) -> None:
        f64 = dict(dtype=torch.float64, device=dev)
        self.f = torch.zeros(B, M, **f64)
        self.value = torch.full((B,), -math.inf, **f64)
        self.grad = torch.zeros(B, M, **f64)
        self.step = torch.zeros(B, M, **f64)
        self.rise = torch.zeros(B, **f64)  # predicted rise grad . step
        self.t = torch.zeros(B, **f64)  # 0: (re-)evaluate at f itself, accepted unconditionally
        self.fresh = torch.ones(B, dtype=torch.bool, device=dev)
        self.level = torch.full((B,), level, **f64)
        self.error = torch.full((B,), math.inf, **f64)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.evaluations = torch.zeros(B, dtype=torch.long, device=dev)

    def update(
        self, trial: Tensor, value: Tensor, grad: Tensor, hess: Tensor, x: Tensor, point_mask: Tensor,
        relative_epsilon: float, tol: float, decay: float, level_tol: float, step_cap: float,
    ) -> None:
        """Accept or reject each image's trial, take the next Newton direction, move levels."""
        live = ~self.done
        self.evaluations += live.long()
        accept = live & (self.fresh | (value >= self.value + ARMIJO * self.t * self.rise))
        self.f = torch.where(accept[:, None], trial, self.f)
        self.value = torch.where(accept, value, self.value)
        self.grad = torch.where(accept[:, None], grad, self.grad)
        self.error = torch.where(accept, grad.abs().sum(1) / x.sum(1).clamp_min(1e-300), self.error)

        M = hess.shape[-1]
        ridge = 1e-6 * torch.diagonal(hess, dim1=1, dim2=2).amax(1).clamp_min(1e-9)
        pm = point_mask.double()
        system = hess + torch.diag_embed(torch.where(point_mask, ridge[:, None], 1.0)) \
            + ridge[:, None, None] * pm[:, :, None] * pm[:, None, :] / max(M, 1)
        direction = torch.linalg.solve_ex(system, (self.level[:, None] * grad)[..., None])[0][..., 0]
        direction = torch.where(point_mask, direction.nan_to_num(0.0), 0.0)
        longest = direction.abs().amax(1) if M else torch.zeros_like(self.level)
        direction = direction / (longest / (step_cap * self.level)).clamp_min(1.0)[:, None]
        self.step = torch.where(accept[:, None], direction, self.step)
        self.rise = torch.where(accept, (grad * direction).sum(1), self.rise)
        self.t = torch.where(accept, 1.0, self.t * 0.5)
        self.fresh = torch.zeros_like(self.fresh)

        at_target = self.level <= relative_epsilon * (1 + 1e-9)
        # a line search that has halved 50 times is at float resolution: take the point as it is
        stalled = live & (self.t < 2.0**-50)
        self.done = self.done | (accept & at_target & (self.error <= tol)) | (stalled & at_target)
        advance = ((accept & (self.error <= level_tol)) | stalled) & ~at_target
        self.level = torch.where(advance, (self.level * decay).clamp_min(relative_epsilon), self.level)
        self.fresh = advance
        self.t = torch.where(advance, 0.0, self.t)
