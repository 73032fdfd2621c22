"""Ray Tune's events of a sweep as :class:`~ray_jobs.trial_lines.TrialLines`: one console line
per finished, failed or lost trial, in place of Tune's status table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray import tune

from ray_jobs.trial_lines import TrialLines


class TrialProgress(tune.Callback):
    """Counts and prints trial completions and errors of one sweep.

    ``trials`` are the sweep's trials by index (Tune's config ``trial`` holds the index);
    ``expected`` the number handed to Tune.
    """

    def __init__(self, name: str, trials: Sequence[Any], expected: int, quiet: bool = False) -> None:
        self.trials = trials
        self.lines = TrialLines(name, expected, quiet)

    @property
    def finished(self) -> int:
        return self.lines.finished

    @property
    def failed(self) -> int:
        return self.lines.failed

    @property
    def errors(self) -> list[str]:
        return self.lines.errors

    def _name(self, tune_trial: Any) -> str:
        return self.trials[int(tune_trial.config["trial"])].run_name

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.lines.ended(self._name(trial), trial.last_result or {})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune runs a trial again whose process was lost (its node died; Ray's memory monitor)."""
        self.lines.say("lost", f"{self._name(trial)}: {_summary(trial)}; running it again")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.lines.failed_with(self._name(trial), _summary(trial))


def _summary(trial: Any) -> str:
    """The last line of a Tune trial's error (the exception), or a pointer to the log."""
    lines = str(getattr(trial, "error_message", None) or "").strip().splitlines()
    return lines[-1] if lines else "error (see the log above)"
