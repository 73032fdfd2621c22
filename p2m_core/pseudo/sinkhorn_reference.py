"""The reference code's Sinkhorn (paper Sec. 3.2, Algorithm 1), same result, a fraction of the work.

The reference runs log-domain Sinkhorn-Knopp with duals ``u [M]`` (points) and ``v [N]``
(pixels) in raw cost units, both starting at 1, ``eps`` in raw cost units (1e-3) and exactly
``num_iters`` (80) iterations, v before u::

    M_ij = (-C_ij + u_i + v_j) / eps
    v_j <- eps * (log(y_j + 1e-8) - logsumexp_i M_ij) + v_j
    u_i <- eps * (log(x_i + 1e-8) - logsumexp_j M_ij) + u_i

and decodes ``argmax_i M_ij`` (docs/METHOD.md, "The reference Sinkhorn and why it does not
converge"). Two facts make it cheap without changing what it computes:

1. **v is a function of u.** After its update, ``v_j`` normalises column j, so each iteration is
   ``u <- u + eps (log(x + 1e-8) - log r(u))`` with ``r_i(u) = sum_j (y_j + 1e-8)
   softmax_i((u_i - C_ij) / eps)``: the semi-dual form (:mod:`~p2m_core.pseudo.semidual`).
   ``v`` never needs storing, and the decoded label is ``argmax_i (u_i - C_ij)``.
2. **Most pixels are settled.** With eps = 1e-3 and costs of order 10, a pixel whose two cheapest
   points differ by a cost gap ``g_j`` puts a share ``<= exp(-(g_j - s) / eps)`` of its unit on
   the runner-up while the spread ``s = max_i u_i - min_i u_i`` stays small (u starts flat and
   moves by ``~eps log N`` per iteration). Where ``g_j >= margin`` with
   ``margin - s >= SOFTMAX_FLOOR * eps``, that share is below float32 resolution for all 80
   iterations: the pixel contributes exactly its demand to its cheapest point, and only the
   *boundary* pixels (``g_j < margin``, typically a few percent) enter the per-iteration softmax.

The margin is chosen up front (``eps * (SOFTMAX_FLOOR + 8 * num_iters)``: the spreads seen in
training reach ~3 eps per iteration, and a retry costs more than a wider band) and *verified*
after the run against the largest spread that occurred; an image that fails is solved again with twice the
margin it needed, and then with every pixel a boundary pixel, i.e. the plain algorithm. A point
that settles no pixel (two points on one graph node tie everywhere) is fine while its row sum
stays of order 1, which the run checks (``MIN_ROW_MASS``); one that is nobody's cheapest
anywhere, or whose row sum falls below that, can carry a mass far below float32 resolution,
which the reference tracks in the log domain: its image is solved with every pixel a boundary
pixel and rows reduced in the log domain. Decoded labels equal the plain
transcription's on every test problem and on >= 99.99 % of the benchmark's pixels (the rest are
float32 near-ties: the reference rounds ``-C + u + v`` at cost magnitude, ~1e-6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from p2m_core.config.defaults import SINKHORN_EPSILON, SINKHORN_ITERS, SINKHORN_TOL
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.semidual import (
    SOFTMAX_FLOOR,
    TransportResult,
    check_problem,
    empty_result,
)
from p2m_core.pseudo.ties import argmin_lowest


MIN_ROW_MASS = 1e-3  # the linear-domain rows are trusted down to this mass (module docstring)


def sinkhorn_reference(
    cost: Tensor,
    supply: Tensor,
    demand: Tensor,
    raw_epsilon: float = SINKHORN_EPSILON,
    num_iters: int = SINKHORN_ITERS,
    tol: float = SINKHORN_TOL,
    point_mask: Tensor | None = None,
    pixel_mask: Tensor | None = None,
    margin: float | None = None,
) -> TransportResult:
    """The reference code's Sinkhorn (module docstring), batched over images with padding.

    Parameters
    ----------
    cost : Tensor [B, M, N]
        Raw costs ``C`` (unnormalised geodesic distances).
    supply : Tensor [B, M]
        ``x``: point capacities k (pixel counts).
    demand : Tensor [B, N]
        ``y``: pixel demands (1 per transported pixel).
    raw_epsilon : float
        ``eps`` in raw cost units, the costs as given (``pseudo.sinkhorn_epsilon`` in reference
        mode; the reference: 1e-3).
    num_iters : int
        Iterations run, always exactly this many (reference: 80).
    tol : float
        Only sets ``log.converged = rel_error <= tol``; it never stops the loop.
    point_mask, pixel_mask : Tensor [B, M] / [B, N] bool, optional
        Real (True) versus padded entries.
    margin : float, optional
        Cost gap above which a pixel counts as settled (default ``eps * (SOFTMAX_FLOOR + 8 *
        num_iters)``). It only changes the speed: a margin that proves too small is retried.

    Returns
    -------
    TransportResult
        ``labels = argmax_i (u_i - C_ij)``, ``potentials = u`` after ``num_iters`` iterations,
        and the marginal errors of the plan the reference returns (its rows sum to ``x``; its
        columns, normalised one half-iteration earlier, do not: ``col_error`` measures that).
    """
    point_mask, pixel_mask = check_problem(cost, supply, demand, point_mask, pixel_mask)
    if not raw_epsilon > 0:
        raise P2MInputError(f"pseudo.sinkhorn_epsilon must be > 0, got {raw_epsilon}")
    B, M, N = cost.shape
    dev = cost.device
    costs = cost.float().masked_fill(~point_mask[:, :, None], math.inf).masked_fill_(~pixel_mask[:, None, :], math.inf)
    col_live = pixel_mask & point_mask.any(1, keepdim=True)
    row_live = point_mask & pixel_mask.any(1, keepdim=True)
    weights = torch.where(col_live, demand.float() + 1e-8, 0.0)  # reference columns sum to y + 1e-8
    log_x = torch.log(supply.float() + 1e-8)
    result = empty_result(B, M, N, raw_epsilon, dev)
    result.log.iterations.fill_(num_iters)
    if M == 0 or N == 0 or B == 0:
        return result

    first = raw_epsilon * (SOFTMAX_FLOOR + 8 * num_iters) if margin is None else margin
    margin = torch.full((B,), float(first), device=dev)
    todo = torch.arange(B, device=dev)
    for attempt in range(3):
        whole = attempt == 0  # the first pass takes the batch as it is, without a copy
        pick = (lambda t: t) if whole else (lambda t: t[todo])
        part = _solve(pick(costs), pick(weights), pick(log_x), pick(row_live), raw_epsilon, num_iters, margin[todo])
        retry, next_margin = part.pop("retry"), part.pop("next_margin")
        if attempt == 2:
            retry = torch.zeros_like(retry)  # the last pass is dense: always exact
        ok = ~retry
        for name, value in part.items():
            target = getattr(result, name) if hasattr(result, name) else getattr(result.log, name)
            target[todo[ok]] = value[ok].to(target.dtype)
        margin[todo] = next_margin.fill_(math.inf) if attempt == 1 else next_margin
        todo = todo[retry]
        if not todo.numel():
            break
    result.labels = torch.where(pixel_mask & row_live.any(1, keepdim=True), result.labels, -1)
    result.log.converged = result.log.rel_error <= tol
    return result


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` over ``dim`` with terms below ``exp(-SOFTMAX_FLOOR)`` of the largest raised to
    it (invisible in float32, and it keeps ``exp`` out of the slow denormal range); -inf for an
    all -inf slice. ``x`` is not modified."""
    top = x.amax(dim, keepdim=True)
    empty = torch.isneginf(top)
    top = torch.where(empty, 0.0, top)
    total = (x - top).clamp_min_(-SOFTMAX_FLOOR).exp_().sum(dim, keepdim=True)
    return torch.where(empty, -math.inf, total.log_() + top).squeeze(dim)


def _solve(
    costs: Tensor, weights: Tensor, log_x: Tensor, row_live: Tensor, eps: float, num_iters: int, margin: Tensor
) -> dict[str, Tensor]:
    """Run the reference iterations on the boundary pixels of each image (module docstring).

    ``costs [b, M, N]`` float32 with +inf on padded entries. Returns per-image tensors keyed by
    the :class:`TransportResult` / :class:`SinkhornLog` field they fill, plus ``retry [b]``: the
    margin ``[b]`` did not hold (a settled pixel may have moved, or a point settles no pixel),
    and ``next_margin [b]``: the margin to retry with (inf when a point settles nothing). With an
    infinite margin every pixel is a boundary pixel and rows are reduced in the log domain, as
    the reference does.
    """
    b, M, N = costs.shape
    dev = costs.device
    dense = bool(torch.isinf(margin).any())
    owner = argmin_lowest(costs)  # cheapest point of each pixel, ties to the lowest index
    cheapest = costs.gather(1, owner[:, None]).squeeze(1)
    live = torch.isfinite(cheapest)
    runner_up = costs.scatter(1, owner[:, None], math.inf).amin(1)
    settled = live & (runner_up - cheapest >= margin[:, None])  # inf - finite: a lone point settles
    boundary = live & ~settled
    settled_mass = torch.zeros(b, M + 1, device=dev).scatter_add_(1, torch.where(settled, owner, M), weights)[:, :M]

    n_band = boundary.sum(1, keepdim=True)
    width = int(n_band.max()) if b else 0
    cols = torch.sort((~boundary).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    in_band = torch.arange(width, device=dev)[None] < n_band
    band_cost = costs.gather(2, cols[:, None, :].expand(b, M, width))
    # A point that settles no pixel keeps a row sum of order 1 only while it is (tied-)cheapest
    # on some boundary pixel; one that is nowhere cheapest may carry a mass far below float32
    # resolution, which the reference tracks in the log domain: such an image is solved densely.
    # Points without settled pixels are watched during the run as well (``light`` below).
    unsettled = row_live & (settled_mass <= 0)
    cheapest_somewhere = ((band_cost == cheapest.gather(1, cols)[:, None, :]) & in_band[:, None, :]).any(2)
    starved = (unsettled & ~cheapest_somewhere).any(1)
    band_w = torch.where(in_band, weights.gather(1, cols), 0.0)
    # padded band columns: weight 0, and a finite cost so that no column is empty in the loop
    scaled_cost = band_cost.masked_fill_(~in_band[:, None, :], 0.0 if not dense else math.inf) / eps
    log_w = band_w.log()[:, None, :]

    # The loop is overhead-bound at small sizes, so it only records u and the band row sums;
    # the spread and the lightest row are reduced from those histories once, after it.
    us = torch.ones(num_iters + 1, b, M, device=dev)  # us[i]: u after i iterations
    masses = torch.full((num_iters, b, M), math.inf, device=dev)  # band row sums (linear domain)
    plan = scaled_cost.new_empty(b, M, width)  # the last iteration's plan (log plan when dense)
    band_w_row = band_w[:, None, :]
    for i in range(num_iters):
        u = us[i]
        shifted = (u / eps)[:, :, None] - scaled_cost  # (u_i - C_ij) / eps, -inf where padded
        if dense:  # log domain, as the reference: a starved point's row stays exact
            col_lse = _logsumexp(shifted, 1).nan_to_num_(neginf=0.0)
            plan = shifted.sub_(col_lse[:, None, :]).add_(log_w)
            log_r = _logsumexp(plan, 2)
        else:  # row sums of order 1 (checked): the linear domain is exact
            top = shifted.amax(1, keepdim=True)
            plan = shifted.sub_(top).clamp_min_(-SOFTMAX_FLOOR).exp_()
            plan = plan.mul_(band_w_row / plan.sum(1, keepdim=True))
            band_mass = torch.sum(plan, 2, out=masses[i])
            log_r = torch.log(settled_mass + band_mass)
        torch.where(row_live, u + eps * (log_x - log_r), u, out=us[i + 1])
    u, u_prev = us[num_iters], us[max(num_iters - 1, 0)]
    later = us[1:]
    spread = torch.where(row_live, later, -math.inf).amax(2) - torch.where(row_live, later, math.inf).amin(2)
    spread = spread.amax(0).clamp_min(0.0) if num_iters else torch.zeros(b, device=dev)
    # least row sum of a point without settled pixels
    light = torch.where(unsettled, masses, math.inf).amin(2).amin(0) if num_iters else torch.full((b,), math.inf, device=dev)
    needed = spread + SOFTMAX_FLOOR * eps
    # below MIN_ROW_MASS the floored terms of the boundary softmax could matter to a row
    starved = starved | (light < MIN_ROW_MASS)
    retry = torch.isfinite(margin) & (starved | ~(needed <= margin))
    next_margin = torch.where(starved, math.inf, 2 * needed)

    labels = torch.where(settled, owner, -1)
    if width:
        band_labels = argmin_lowest(band_cost.masked_fill_(~in_band[:, None, :], math.inf) - u[:, :, None])
        labels = _scatter_band(labels, cols, in_band, band_labels)
    # columns of the returned plan: normalised against u_prev, then rows rescaled by exp(du / eps)
    step = torch.where(row_live, (u - u_prev) / eps, 0.0)
    band_plan = plan.exp() if dense else plan
    col_band = (band_plan * step.exp()[:, :, None]).sum(1) if num_iters else band_w
    col = torch.where(settled, weights * step.exp().gather(1, owner), 0.0)
    col = col.scatter_add(1, cols, torch.where(in_band, col_band, 0.0))
    demand = torch.where(live, weights - 1e-8, 0.0)
    col_dev = torch.where(live, col - demand, 0.0).abs()
    return {
        "labels": labels,
        "potentials": u,
        "row_error": torch.zeros(b, device=dev),
        "col_error": col_dev.amax(1),
        "rel_error": col_dev.sum(1) / demand.sum(1).clamp_min(1e-30),
        "retry": retry,
        "next_margin": next_margin,
    }


def _scatter_band(labels: Tensor, cols: Tensor, in_band: Tensor, band_labels: Tensor) -> Tensor:
    """Write the boundary pixels' labels (``band_labels [b, width]``) back to their columns."""
    N = labels.shape[1]
    padded = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], 1)
    return padded.scatter(1, torch.where(in_band, cols, N), torch.where(in_band, band_labels, -1))[:, :N]
