"""Progress lines for long runs: items done, time per item and ETA, on stderr.

One small class shared by every command-line tool, so they all report the same way
(detectron2's ``inference_on_dataset`` style) and stay quiet when asked.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label: done/total units, s/unit (units/s), ETA`` at most every ``every`` seconds.

    Call :meth:`update` with the number done so far, or :meth:`step` once per item; the last
    item is always reported.
    """

    def __init__(self, label: str, total: int, enabled: bool = True, every: float = 2.0, unit: str = "image") -> None:
        self.label, self.total, self.enabled, self.every, self.unit = label, total, enabled, every, unit
        self.start = self.last = time.perf_counter()
        self.done = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Units done per second so far (0 before the first)."""
        return self.done / self.elapsed if self.done else 0.0

    def step(self, count: int = 1) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        per = (now - self.start) / max(done, 1)
        eta = per * (self.total - done)
        print(
            f"{self.label}: {done}/{self.total} {self.unit}s, {per:.3f} s/{self.unit} "
            f"({self.rate:.1f} {self.unit}s/s), ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )
