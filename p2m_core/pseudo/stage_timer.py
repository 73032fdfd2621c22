"""Wall-clock seconds per stage of the pipeline (``PseudoLabels.timings``), which the benchmarks
and the training step report."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Stage timings. On CUDA it synchronises at each stage only when asked (``profile``):
    a sync per stage would stall the training step, so by default CUDA timings are host times."""

    def __init__(self, device: torch.device, synchronize: bool = False) -> None:
        self.cuda = device.type == "cuda" and synchronize
        self.times: dict[str, float] = {}
        self._t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.times[name] = self.times.get(name, 0.0) + now - self._t
        self._t = now
