"""One console line per finished or failed trial, in place of Ray Tune's status table.

Tune's table reprints every trial every few seconds; a sweep of short trials wants one line
per trial with the number that matters (PQ) and the time it took.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from ray import tune


class TrialProgress(tune.Callback):
    """Counts and prints trial completions and errors of one sweep.

    ``trials`` are the sweep's trials by index (Tune's config ``trial`` holds the index);
    ``expected`` the number handed to Tune.
    """

    def __init__(self, name: str, trials: Sequence[Any], expected: int, quiet: bool = False) -> None:
        self.name, self.trials, self.expected, self.quiet = name, trials, expected, quiet
        self.finished = 0
        self.failed = 0
        self.errors: list[str] = []
        self.start = time.perf_counter()

    def _say(self, status: str, detail: str) -> None:
        if not self.quiet:
            done = self.finished + self.failed
            elapsed = time.perf_counter() - self.start
            print(f"[{self.name}] {done}/{self.expected} {status} {detail} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    def _name(self, tune_trial: Any) -> str:
        return self.trials[int(tune_trial.config["trial"])].run_name

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        result = trial.last_result or {}
        pq, seconds = result.get("PQ", float("nan")), result.get("trial_seconds", float("nan"))
        self._say("done", f"{self._name(trial)}: PQ {pq:.2f} in {seconds:.1f} s")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed += 1
        lines = str(getattr(trial, "error_message", None) or "").strip().splitlines()
        summary = lines[-1] if lines else "error (see the log above)"
        self.errors.append(f"{self._name(trial)}: {summary}")
        self._say("FAILED", f"{self._name(trial)}: {summary}")
