"""One console line per finished or failed trial of a sweep, and the counts the sweep run is
closed with, whichever executor ran the trials (Ray Tune, :mod:`ray_jobs.tune_progress`, or the
in-process loop, :mod:`ray_jobs.local_sweep`).

Tune's own table reprints every trial every few seconds; a sweep of short trials wants one line
per trial with the number that matters (PQ) and the time it took.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray_jobs.pseudo_trial import FAILED_KEY


class TrialLines:
    """Counts and prints the trials of one sweep as they end; ``expected`` is the number to run."""

    def __init__(self, name: str, expected: int, quiet: bool = False) -> None:
        self.name, self.expected, self.quiet = name, expected, quiet
        self.finished = 0
        self.failed = 0
        self.errors: list[str] = []
        self.start = time.perf_counter()

    def say(self, status: str, detail: str) -> None:
        if not self.quiet:
            done = self.finished + self.failed
            elapsed = time.perf_counter() - self.start
            print(f"[{self.name}] {done}/{self.expected} {status} {detail} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    def ended(self, run_name: str, result: dict[str, Any]) -> None:
        """A trial's result: its numbers, or its error under :data:`~ray_jobs.pseudo_trial.FAILED_KEY`."""
        if FAILED_KEY in result:
            self.failed_with(run_name, str(result[FAILED_KEY]))
            return
        self.finished += 1
        pq, seconds = result.get("PQ", float("nan")), result.get("trial_seconds", float("nan"))
        self.say("done", f"{run_name}: PQ {pq:.2f} in {seconds:.1f} s")

    def failed_with(self, run_name: str, summary: str) -> None:
        self.failed += 1
        self.errors.append(f"{run_name}: {summary}")
        self.say("FAILED", f"{run_name}: {summary}")
