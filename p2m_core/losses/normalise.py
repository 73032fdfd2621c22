"""The counts a loss divides by, shared by the data-parallel workers.

A loss that is a mean over a batch-level count (labelled pixels, matched instances, counted
pixel pairs) is ``sum_b S_b / n``. Under data parallelism each of ``W`` workers holds a slice of
the batch and DDP averages their gradients, so a worker dividing its own sum by its own count
gives a gradient that depends on how the batch was split (1.5 % off the whole batch's on the
tiny network with 2 workers). Dividing by the workers' *mean* count ``n / W`` instead makes the
averaged gradient exactly that of the whole batch: ``1/W sum_w grad(S_w) W / n = grad(sum S) / n``.
In one process :func:`worker_mean` is the identity.

Every worker must call it the same number of times in the same order (it is a collective):
the losses call it once per term, unconditionally, whatever their slice of the batch holds.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def worker_mean(count: Tensor | int | float, device: torch.device | str | None = None) -> Tensor:
    """``count`` (a scalar) averaged over the workers of the default process group, as float32."""
    value = torch.as_tensor(count, dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def batch_count(count: Tensor | int | float, device: torch.device | str | None = None) -> Tensor:
    """The divisor of a batch-level mean: :func:`worker_mean` of ``count``, at least 1."""
    return worker_mean(count, device).clamp(min=1.0)
