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

#: The result key of a trial whose own code failed (:func:`ray_jobs.trial.report_failure`): the
#: error, reported instead of raised so that Tune does not run the trial again.
FAILED_KEY = "p2m_error"


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
        result = trial.last_result or {}
        if FAILED_KEY in result:
            self._failed(trial, str(result[FAILED_KEY]))
            return
        self.finished += 1
        pq, seconds = result.get("PQ", float("nan")), result.get("trial_seconds", float("nan"))
        self._say("done", f"{self._name(trial)}: PQ {pq:.2f} in {seconds:.1f} s")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune runs a trial again whose process was lost (its node died; Ray's memory monitor)."""
        self._say("lost", f"{self._name(trial)}: {_summary(trial)}; running it again")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed(trial, _summary(trial))

    def _failed(self, trial: Any, summary: str) -> None:
        self.failed += 1
        self.errors.append(f"{self._name(trial)}: {summary}")
        self._say("FAILED", f"{self._name(trial)}: {summary}")


def _summary(trial: Any) -> str:
    """The last line of a Tune trial's error (the exception), or a pointer to the log."""
    lines = str(getattr(trial, "error_message", None) or "").strip().splitlines()
    return lines[-1] if lines else "error (see the log above)"
