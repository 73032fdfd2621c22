"""Entropic optimal transport of pixels to points (paper Sec. 3.2, Algorithm 1), batched.

Point2Mask assigns the transported pixels to the thing points by the plan of

.. math::

    \\Gamma^* = \\arg\\min_{\\Gamma \\ge 0} \\langle \\Gamma, C \\rangle - \\varepsilon H(\\Gamma)
    \\quad \\text{s.t.} \\quad \\Gamma \\mathbf{1}_N = x, \\; \\Gamma^\\top \\mathbf{1}_M = y,

with ``C[i, j]`` the geodesic cost from point i to pixel j, supplies ``x_i = k_i`` (pixel counts)
and demands ``y_j = 1``, then decodes ``label_j = argmax_i Gamma_ij`` (:func:`decode_plan`).

Two solvers, one function each, same signature (POT style), chosen by :func:`sinkhorn`'s
``mode``:

:func:`sinkhorn_reference`
    The reference code's solver, exactly (docs/METHOD.md, "The reference Sinkhorn and why it does not converge"):
    duals start at 1, ``eps`` in raw cost units, exactly ``num_iters`` iterations. With eps =
    1e-3 and costs of order 10 a dual moves by at most ``eps * log N`` per iteration, so 80
    iterations leave the decoded labels at (almost) the minimum-cost assignment whatever k is.
:func:`sinkhorn_converged`
    A stabilised solver (normalised costs, epsilon scaling, log domain, per-image stopping on a
    marginal tolerance) whose decoded labels really honour k.

All tensors are batched over B images and padded: ``point_mask [B, M]`` and ``pixel_mask [B, N]``
say which suppliers and consumers are real. A padded entry gets ``-inf`` in the log plan, so it
never influences a real one, and an image with no real point or pixel yields no NaN.

Marginal diagnostics (:class:`SinkhornLog`), for the returned plan ``Gamma = exp(log_plan)``
with row sums ``r = Gamma 1`` and column sums ``c = Gamma^T 1`` over the real entries:

- ``row_error = max_i |r_i - x_i|`` and ``col_error = max_j |c_j - y_j|``: the largest absolute
  violation, in the units of the marginals (pixels here: ``col_error = 0.98`` means some pixel
  receives 0.02 or 1.98 units instead of 1);
- ``rel_error = max(sum_i |r_i - x_i| / sum_i x_i, sum_j |c_j - y_j| / sum_j y_j)``: the share
  of the total mass that sits in the wrong place (total-variation distance). This is what the
  converged solver compares with ``tol``.

References
----------
[1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
[2] B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport
    Problems", SIAM J. Sci. Comput. 2019 (log-domain updates, epsilon scaling).
[3] W. Li et al., "Point2Mask: Point-supervised Panoptic Segmentation via Optimal Transport",
    ICCV 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from p2m_core.config import SINKHORN_MODES
from p2m_core.errors import P2MInputError


@dataclass
class SinkhornLog:
    """Per-image diagnostics of one Sinkhorn call (all tensors have shape [B]).

    ``iterations`` (long): (v, u) update pairs run; ``row_error``, ``col_error`` (float): the
    largest absolute violation of the supply / demand marginal (module docstring);
    ``rel_error`` (float): the misplaced share of the total mass; ``converged`` (bool): the
    marginals met ``tol`` (reference mode: ``rel_error <= tol`` after the fixed iterations;
    converged mode: the stopping test, evaluated in float32 inside the loop, fired, so the
    recomputed ``rel_error`` may exceed ``tol`` by float32 rounding).
    """

    iterations: Tensor
    row_error: Tensor
    col_error: Tensor
    rel_error: Tensor
    converged: Tensor


def _masks(
    cost: Tensor, supply: Tensor, demand: Tensor, point_mask: Tensor | None, pixel_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    if cost.dim() != 3:
        raise P2MInputError(f"sinkhorn: cost must be [B, M, N], got shape {tuple(cost.shape)}")
    B, M, N = cost.shape
    if tuple(supply.shape) != (B, M) or tuple(demand.shape) != (B, N):
        raise P2MInputError(
            f"sinkhorn: supply {tuple(supply.shape)} / demand {tuple(demand.shape)} do not match "
            f"cost {tuple(cost.shape)} (expected [B, M] and [B, N])"
        )
    if point_mask is None:
        point_mask = torch.ones(B, M, dtype=torch.bool, device=cost.device)
    if pixel_mask is None:
        pixel_mask = torch.ones(B, N, dtype=torch.bool, device=cost.device)
    if tuple(point_mask.shape) != (B, M) or tuple(pixel_mask.shape) != (B, N):
        raise P2MInputError(
            f"sinkhorn: point_mask {tuple(point_mask.shape)} / pixel_mask {tuple(pixel_mask.shape)} "
            f"do not match cost {tuple(cost.shape)}"
        )
    return point_mask.to(torch.bool), pixel_mask.to(torch.bool)


def _logsumexp_(x: Tensor, dim: int) -> Tensor:
    """``log sum exp`` over ``dim``, equal to :func:`torch.logsumexp` in float32, but fast on CPUs.
    It works in place: ``x`` is overwritten.

    Terms below ``exp(-80)`` times the largest one are raised to ``exp(-80)`` (~1.8e-35) before
    the sum: they cannot change a float32 sum that contains a term equal to 1, and it keeps
    ``exp`` out of the denormal range, where CPUs run it ~10x slower (at eps = 1e-3 nearly all
    of the plan lies there). An all ``-inf`` slice gives ``-inf``, as ``torch.logsumexp`` does.
    """
    if x.shape[dim] == 0:
        return torch.full(x.shape[:dim] + x.shape[dim + 1 :], -math.inf, dtype=x.dtype, device=x.device)
    m = x.amax(dim, keepdim=True)
    finite = torch.isfinite(m)
    m = torch.where(finite, m, 0.0)
    total = x.sub_(m).clamp_min_(-80.0).exp_().sum(dim).log_()
    return torch.where(finite.squeeze(dim), total + m.squeeze(dim), -math.inf)


def _log_m(neg_cost: Tensor, u: Tensor, v: Tensor, eps: float) -> Tensor:
    """``M = (-C + u_i + v_j) / eps``, [B, M, N], evaluated in the reference's order."""
    log_m = neg_cost + u[:, :, None]
    return log_m.add_(v[:, None, :]).div_(eps)


def marginal_errors(
    log_plan: Tensor, supply: Tensor, demand: Tensor, point_mask: Tensor, pixel_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(row_error, col_error, rel_error)``, each [B], of a log plan [B, M, N] (module docstring).

    Only real entries count: padded points and pixels are left out of both sums and targets.
    """
    plan = torch.exp(log_plan.double())
    x = torch.where(point_mask, supply.double(), 0.0)
    y = torch.where(pixel_mask, demand.double(), 0.0)
    row_dev = torch.where(point_mask, plan.sum(2) - x, 0.0).abs()
    col_dev = torch.where(pixel_mask, plan.sum(1) - y, 0.0).abs()
    row_error = row_dev.amax(1) if row_dev.shape[1] else row_dev.new_zeros(row_dev.shape[0])
    col_error = col_dev.amax(1) if col_dev.shape[1] else col_dev.new_zeros(col_dev.shape[0])
    rel_row = row_dev.sum(1) / x.sum(1).clamp_min(1e-12)
    rel_col = col_dev.sum(1) / y.sum(1).clamp_min(1e-12)
    return row_error.float(), col_error.float(), torch.maximum(rel_row, rel_col).float()


def sinkhorn_reference(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    epsilon: float = 1e-3,
    num_iters: int = 80,
    tol: float = 1e-3,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
) -> tuple[Tensor, SinkhornLog]:
    """The reference code's log-domain Sinkhorn-Knopp, exactly, batched with padding.

    Solves (approximately: it is stopped after ``num_iters``, converged or not) the entropic OT
    problem of the module docstring with duals ``u [M]`` (points) and ``v [N]`` (pixels) in raw
    cost units, both initialised to 1, and for ``num_iters`` iterations, v before u::

        M_ij = (-C_ij + u_i + v_j) / eps
        v_j <- eps * (log(y_j + 1e-8) - logsumexp_i M_ij) + v_j
        u_i <- eps * (log(x_i + 1e-8) - logsumexp_j M_ij) + u_i

    returning ``log Gamma = M`` of the final duals, float32 (docs/METHOD.md). The ``+1e-8`` keeps
    a zero supply or demand finite, as in the reference.

    Parameters
    ----------
    cost : Tensor [B, M, N]
        Raw costs ``C`` (unnormalised geodesic distances).
    supply : Tensor [B, M]
        ``x``: point capacities k (pixel counts).
    demand : Tensor [B, N]
        ``y``: pixel demands (1 per transported pixel).
    epsilon : float
        ``eps`` in raw cost units (reference: 1e-3).
    num_iters : int
        Iterations run, always exactly this many (reference: 80).
    tol : float
        Only sets ``SinkhornLog.converged = rel_error <= tol``; it never stops the loop.
    point_mask, pixel_mask : Tensor [B, M] / [B, N] bool, optional
        Real (True) versus padded entries; padded ones get ``-inf`` in ``M`` and keep their dual.

    Returns
    -------
    log_plan : Tensor [B, M, N]
        ``log Gamma`` (``-inf`` on padded entries).
    log : SinkhornLog
    """
    point_mask, pixel_mask = _masks(cost, supply, demand, point_mask, pixel_mask)
    B, M, N = cost.shape
    cost = cost.float()
    valid = point_mask[:, :, None] & pixel_mask[:, None, :]
    neg_cost = torch.where(valid, -cost, -math.inf)  # (-C), -inf where masked
    log_x = torch.log(supply.float() + 1e-8)
    log_y = torch.log(demand.float() + 1e-8)
    u = torch.ones(B, M, dtype=torch.float32, device=cost.device)
    v = torch.ones(B, N, dtype=torch.float32, device=cost.device)
    # A dual only moves where its row / column has at least one real entry.
    col_live = valid.any(1)
    row_live = valid.any(2)
    for _ in range(num_iters):
        v = torch.where(col_live, epsilon * (log_y - _logsumexp_(_log_m(neg_cost, u, v, epsilon), 1)) + v, v)
        u = torch.where(row_live, epsilon * (log_x - _logsumexp_(_log_m(neg_cost, u, v, epsilon), 2)) + u, u)
    log_plan = _log_m(neg_cost, u, v, epsilon)
    row_e, col_e, rel_e = marginal_errors(log_plan, supply, demand, point_mask, pixel_mask)
    iterations = torch.full((B,), num_iters, dtype=torch.long, device=cost.device)
    return log_plan, SinkhornLog(iterations, row_e, col_e, rel_e, rel_e <= tol)


def sinkhorn_converged(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    epsilon: float = 1e-3,
    tol: float = 1e-3,
    max_iters: int = 2000,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
    epsilon_start: float = 1.0,
    epsilon_decay: float = 0.5,
    overrelaxation: float = 1.9,
    patience: int = 200,
) -> tuple[Tensor, SinkhornLog]:
    """Stabilised log-domain Sinkhorn with epsilon scaling, run per image to a marginal tolerance.

    Solves the entropic OT problem of the module docstring on normalised costs
    ``C' = C / max |C|`` (max over the image's real, finite entries; 1 if that is 0), so that
    ``epsilon`` is relative to the image's cost range and one setting fits every image:

        g_j <- (1 - w) g_j + w * eps * (log y_j - logsumexp_i (f_i - C'_ij) / eps)
        f_i <- (1 - w) f_i + w * eps * (log x_i - logsumexp_j (g_j - C'_ij) / eps)

    with dual potentials ``f [M]``, ``g [N]`` in (normalised) cost units and ``log Gamma_ij =
    (f_i + g_j - C'_ij) / eps``. Why it converges where the reference does not:

    - the log domain never overflows at small eps;
    - **epsilon scaling** [2]: one plain iteration (``w = 1``) per level, from ``eps =
      epsilon_start`` (the whole cost range, where Sinkhorn contracts fast) shrinking by
      ``epsilon_decay`` to ``epsilon``; the duals are in cost units, so each level warm-starts
      the next and the target level only needs local corrections;
    - **over-relaxation** [4] at the target eps: ``w = overrelaxation`` in (1, 2) extrapolates
      each update; it cuts the iterations at eps = 1e-3 from ~500-1500 to ~50-100 on pixel
      grids. It converges locally for ``0 < w < 2`` [4] but can cycle at small eps (measured
      here at eps = 3e-4 on random costs); as a safeguard an image whose marginal error has not
      improved for ``patience`` iterations continues with plain updates (``w = 1``), which
      always converge.

    An image stops as soon as both marginals meet ``sum |.| / total mass <= tol``
    (``SinkhornLog.rel_error``) and is then frozen while the others go on, so a result never
    depends on the other images of the batch.

    Zero supplies or demands are treated as padding (their log would be -inf anyway). The
    problem must be balanced: the supplies are rescaled to the total demand of their image
    (a no-op when k sums to the number of transported pixels, as the pipeline guarantees).

    Parameters
    ----------
    cost : Tensor [B, M, N]
        Costs; only ratios within an image matter.
    supply, demand : Tensor [B, M] / [B, N]
        ``x`` (capacities k) and ``y`` (1 per pixel).
    epsilon : float
        Target regularisation relative to the image's max cost (default 1e-3).
    tol : float
        Stopping tolerance on the misplaced share of the mass (``SinkhornLog.rel_error``).
    max_iters : int
        Cap on iterations, epsilon-scaling ones included.
    point_mask, pixel_mask : Tensor [B, M] / [B, N] bool, optional
        Real (True) versus padded entries.
    epsilon_start, epsilon_decay : float
        Epsilon-scaling schedule ``eps_t = max(epsilon, epsilon_start * epsilon_decay**t)``.
    overrelaxation : float
        ``w`` at the target eps, in [1, 2); 1 gives plain Sinkhorn.
    patience : int
        Iterations without a new best marginal error before an image drops to ``w = 1``.

    Returns
    -------
    log_plan : Tensor [B, M, N]
        ``log Gamma`` in mass units, ``-inf`` on padded entries.
    log : SinkhornLog

    References: [4] A. Thibault, L. Chizat, C. Dossal, N. Papadakis, "Overrelaxed Sinkhorn-Knopp
    Algorithm for Regularized Optimal Transport", Algorithms 2021.
    """
    point_mask, pixel_mask = _masks(cost, supply, demand, point_mask, pixel_mask)
    if not 0.0 < epsilon_decay < 1.0:
        raise P2MInputError(f"sinkhorn_converged: epsilon_decay must be in (0, 1), got {epsilon_decay}")
    if not 1.0 <= overrelaxation < 2.0:
        raise P2MInputError(f"sinkhorn_converged: overrelaxation must be in [1, 2), got {overrelaxation}")
    if epsilon <= 0:
        raise P2MInputError(f"pseudo.sinkhorn_epsilon must be > 0, got {epsilon}")
    B, M, N = cost.shape
    dev = cost.device
    x = supply.float()
    y = demand.float()
    point_mask = point_mask & (x > 0)
    pixel_mask = pixel_mask & (y > 0)
    cost = cost.float()
    valid = point_mask[:, :, None] & pixel_mask[:, None, :] & torch.isfinite(cost)
    scale = torch.where(valid, cost.abs(), 0.0).flatten(1).amax(1) if M * N else cost.new_ones(B)
    scale = torch.where(scale > 0, scale, 1.0)
    neg_cost = torch.where(valid, -cost / scale[:, None, None], -math.inf)
    x = torch.where(point_mask, x, 0.0)
    y = torch.where(pixel_mask, y, 0.0)
    x = x * (y.sum(1) / x.sum(1).clamp_min(1e-30))[:, None]
    log_x = torch.log(x.clamp_min(1e-30))
    log_y = torch.log(y.clamp_min(1e-30))
    x_total, y_total = x.sum(1), y.sum(1)
    col_live = valid.any(1)
    row_live = valid.any(2)
    f = torch.zeros(B, M, dtype=torch.float32, device=dev)
    g = torch.zeros(B, N, dtype=torch.float32, device=dev)
    active = row_live.any(1)  # images with nothing to transport are done at once
    met = ~active  # images that met tol
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    row_rel = torch.full((B,), math.inf, device=dev)  # row error of the current state
    best = torch.full((B,), math.inf, device=dev)  # best error seen at the target eps
    stall = torch.zeros(B, dtype=torch.long, device=dev)  # iterations since `best` improved
    w = torch.ones(B, device=dev)  # relaxation per image: 1 while eps scaling
    eps_t = max(epsilon, epsilon_start)
    eps_used = eps_t  # eps of the last update: the plan is read at it
    for _ in range(max_iters):
        lse_col = _logsumexp_((neg_cost + f[:, :, None]).div_(eps_t), 1)  # [B, N]
        if eps_t == eps_used == epsilon:
            col_dev = torch.where(pixel_mask, torch.exp(g / eps_t + lse_col) - y, 0.0).abs()
            err = torch.maximum(row_rel, col_dev.sum(1) / y_total.clamp_min(1e-30))
            met = met | (active & (err <= tol))
            active = active & ~met  # stop the images whose marginals both meet tol
            improved = err < best
            best = torch.where(improved, err, best)
            stall = torch.where(improved, 0, stall + 1)
            w = torch.where(stall >= patience, 1.0, w)  # safeguard: relaxation stalls -> plain
        elif eps_t == epsilon:  # first iteration at the target eps
            w = torch.full((B,), overrelaxation, device=dev)
        if not bool(active.any()):
            break
        step_g = active[:, None] & col_live
        g = torch.where(step_g, (1 - w[:, None]) * g + w[:, None] * eps_t * (log_y - lse_col), g)
        lse_row = _logsumexp_((neg_cost + g[:, None, :]).div_(eps_t), 2)  # [B, M]
        step_f = active[:, None] & row_live
        f = torch.where(step_f, (1 - w[:, None]) * f + w[:, None] * eps_t * (log_x - lse_row), f)
        row_dev = torch.where(point_mask, torch.exp(f / eps_t + lse_row) - x, 0.0).abs()
        row_rel = row_dev.sum(1) / x_total.clamp_min(1e-30)
        iterations += active.long()
        eps_used = eps_t
        eps_t = max(epsilon, eps_t * epsilon_decay)
    log_plan = (neg_cost + f[:, :, None] + g[:, None, :]) / eps_used
    log_plan = torch.where(valid, log_plan, -math.inf)
    row_e, col_e, rel_e = marginal_errors(log_plan, x, y, point_mask, pixel_mask)
    met = met | ((rel_e <= tol) & (eps_used == epsilon))  # the last update of a capped run may meet tol
    return log_plan, SinkhornLog(iterations, row_e, col_e, rel_e, met)


def sinkhorn(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    mode: str = "reference",
    epsilon: float = 1e-3,
    num_iters: int = 80,
    tol: float = 1e-3,
    max_iters: int = 2000,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
) -> tuple[Tensor, SinkhornLog]:
    """Entropic OT plan of pixels to points: dispatch on ``mode`` (module docstring).

    ``mode="reference"`` runs :func:`sinkhorn_reference` (``epsilon`` in raw cost units,
    exactly ``num_iters`` iterations); ``mode="converged"`` runs :func:`sinkhorn_converged`
    (``epsilon`` relative to the image's max cost, until ``tol`` or ``max_iters``).
    Shapes: cost [B, M, N], supply [B, M], demand [B, N], masks [B, M] / [B, N] bool;
    returns the log plan [B, M, N] and a :class:`SinkhornLog`.

    Example
    -------
    >>> cost = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]])
    >>> log_plan, log = sinkhorn(cost, torch.tensor([[2.0, 1.0]]), torch.ones(1, 3),
    ...                          mode="converged", epsilon=1e-2)
    >>> decode_plan(log_plan).tolist()
    [[0, 0, 1]]
    """
    if mode == "reference":
        return sinkhorn_reference(
            cost, supply, demand, epsilon=epsilon, num_iters=num_iters, tol=tol,
            point_mask=point_mask, pixel_mask=pixel_mask,
        )
    if mode == "converged":
        return sinkhorn_converged(
            cost, supply, demand, epsilon=epsilon, tol=tol, max_iters=max_iters,
            point_mask=point_mask, pixel_mask=pixel_mask,
        )
    raise P2MInputError(f"pseudo.sinkhorn_mode: unknown mode {mode!r}, expected one of {SINKHORN_MODES}")


def decode_plan(log_plan: Tensor, point_mask: Tensor | None = None, pixel_mask: Tensor | None = None) -> Tensor:
    """``label_j = argmax_i Gamma_ij`` (paper: no threshold), [B, M, N] -> [B, N] long.

    Padded points never win; a padded pixel, or one with no real point, gets -1. Ties go to the
    lowest point index (``torch.argmax``).
    """
    B, M, N = log_plan.shape
    if point_mask is not None:
        log_plan = log_plan.masked_fill(~point_mask.bool()[:, :, None], -math.inf)
    if M == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=log_plan.device)
    best, labels = log_plan.max(dim=1)
    keep = best > -math.inf
    if pixel_mask is not None:
        keep = keep & pixel_mask.bool()
    return torch.where(keep, labels, -1)


def disagreement(labels_a: Tensor, labels_b: Tensor, mask: Tensor) -> Tensor:
    """Share of the masked pixels whose labels differ, per image: [B, ...] x 2, mask -> [B].

    ``sum(mask & (a != b)) / sum(mask)``; 0 for an image with an empty mask. Used for the
    OT-versus-MC diagnostic (docs/METHOD.md, "The converged solver").
    """
    B = labels_a.shape[0]
    mask = mask.reshape(B, -1).bool()
    differ = (labels_a.reshape(B, -1) != labels_b.reshape(B, -1)) & mask
    return differ.sum(1).float() / mask.sum(1).clamp_min(1).float()
