"""What a training step logs, read back to the host once per logged window instead of every step.

A :class:`~p2m_core.engine.step.StepResult` keeps its loss terms on the device: a Python float
of each at every step would make the host wait for the device once per iteration on GPU. A caller
that logs every step (the Ray worker logs each step's metrics to MLflow) turns each step into a
:class:`StepRecord` as it comes (device work only, no wait), and at each log step reads the
window back with :func:`read_step_metrics`: one transfer for all its steps, the same values,
step by step, as a float per term would have given.

Per step (in this order, the order they are logged in): ``loss/<term>`` for each loss term,
``loss/total``, ``lr``, ``step_seconds``, ``pseudo_seconds``, ``pseudo_share``, and when the step
kept its pseudo labels the transport solve's batch means: :data:`SOLVER_METRICS` (solver
iterations, largest demand violation in pixels, OT-vs-MC disagreement in percent, share of
converged solves; NaN entries, where minimum cost has no solve, left out of the means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from p2m_core.engine.step import StepResult
from p2m_core.pseudo.labels import PseudoLabels

SOLVER_METRICS = ("solver_iterations", "solver_col_error", "disagreement_pct", "solver_converged")


@dataclass(frozen=True)
class StepRecord:
    """One step's metrics before read-back: the device values packed in one float64 tensor
    (loss terms in ``names`` order, the total, then the solver's ``[4, B]`` per-image rows when
    ``solver_images`` > 0; float64 holds every float32 and bfloat16 value exactly) and the
    values the host has already."""

    names: tuple[str, ...]
    packed: Tensor
    solver_images: int
    lr: float
    step_seconds: float
    pseudo_seconds: float
    pseudo_share: float


def _solver_rows(pseudo: PseudoLabels) -> Tensor:
    """The per-image solver diagnostics, ``[4, B]`` float32 in :data:`SOLVER_METRICS` order."""
    return torch.stack([
        pseudo.iterations.float(), pseudo.col_error.float(), 100.0 * pseudo.disagreement.float(), pseudo.converged.float(),
    ])  # fmt: skip


def step_record(result: StepResult) -> StepRecord:
    """A step's metrics kept for a later read-back; queues device work only (no host wait), and
    keeps neither the pseudo labels nor anything else of the step's graph alive."""
    parts = [value.detach().reshape(1).double() for value in result.losses.values()]
    parts.append(result.total.detach().reshape(1).double())
    solver_images = 0
    if result.pseudo is not None:
        rows = _solver_rows(result.pseudo)
        solver_images = rows.shape[1]
        parts.append(rows.double().reshape(-1))
    return StepRecord(
        tuple(result.losses), torch.cat([part.to(parts[0].device) for part in parts]), solver_images, result.lr,
        result.step_seconds, result.pseudo_seconds, result.pseudo_share,
    )  # fmt: skip


def read_step_metrics(records: Sequence[StepRecord]) -> list[dict[str, float]]:
    """Each record's metrics (module docstring) as floats, read from the device in one transfer."""
    if not records:
        return []
    values = torch.cat([record.packed.to(records[0].packed.device) for record in records]).cpu()
    out = []
    start = 0
    for record in records:
        own = values[start : start + record.packed.numel()]
        start += record.packed.numel()
        terms = len(record.names)
        metrics = {f"loss/{name}": value for name, value in zip(record.names, own[:terms].tolist())}
        metrics.update({
            "loss/total": float(own[terms]), "lr": record.lr, "step_seconds": record.step_seconds,
            "pseudo_seconds": record.pseudo_seconds, "pseudo_share": record.pseudo_share,
        })  # fmt: skip
        if record.solver_images:
            means = torch.nanmean(own[terms + 1 :].view(4, record.solver_images).float(), dim=1).tolist()
            metrics.update({name: float(value) for name, value in zip(SOLVER_METRICS, means) if value == value})
        out.append(metrics)
    return out
