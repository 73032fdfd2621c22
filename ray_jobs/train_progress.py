"""Progress lines of a training run on the launcher's console, read back from MLflow.

The workers' own log lines stay in Ray's log files (shown on the console they would come with
Ray's internal warnings). The run's MLflow store already has what a user wants to see, written
by rank 0 every ``train.log_every`` steps: a thread in the launcher polls it and prints a line
when the run has moved on: iteration, loss, seconds per step, pseudo-label share, and the latest
evaluation. The same lines appear in a ``ray job submit`` job's log. :class:`SweepProgress` does
the same for the running trials of a training sweep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from p2m_core.tracking import tags as T
from p2m_core.tracking.store import client
from p2m_core.tracking.training import EVAL_KEY, STEP_KEY

log = logging.getLogger(__name__)

#: Seconds between polls of the store.
POLL_S = 10.0


class MlflowProgress:
    """Context manager: a daemon thread printing the run's progress until the block ends."""

    def __init__(self, uri: str, run_id: str, train: Any, say: Callable[[str], None], enabled: bool = True,
                 poll_s: float = POLL_S) -> None:  # fmt: skip
        self.uri, self.run_id, self.say, self.enabled, self.poll_s = uri, run_id, say, enabled, poll_s
        self.total = train.iters or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="p2m-train-progress", daemon=True)
        self._last = (-1, -1)

    def __enter__(self) -> MlflowProgress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 5)

    def line(self) -> str | None:
        """The progress line when the run moved on since the last one, else None."""
        mlflow_client = client(self.uri)
        steps = mlflow_client.get_metric_history(self.run_id, STEP_KEY)
        evals = mlflow_client.get_metric_history(self.run_id, EVAL_KEY)
        step = max((m.step for m in steps), default=0)
        evaluated = max((m.step for m in evals), default=0)
        if (step, evaluated) == self._last or step == 0:
            return None
        self._last = (step, evaluated)
        latest = mlflow_client.get_run(self.run_id).data.metrics
        total = f"/{self.total}" if self.total else ""
        parts = [f"iteration {step}{total}", f"loss {latest.get(STEP_KEY, float('nan')):.3f}"]
        if "step_seconds" in latest:
            parts.append(f"{latest['step_seconds']:.2f} s/step")
        if "pseudo_share" in latest:
            parts.append(f"pseudo labels {100 * latest['pseudo_share']:.0f}% of the step")
        if evaluated:
            parts.append(f"val PQ {latest.get('PQ', float('nan')):.1f} (things {latest.get('PQ_th', float('nan')):.1f}, "
                         f"stuff {latest.get('PQ_st', float('nan')):.1f}) at {evaluated}")  # fmt: skip
        return ", ".join(parts)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                lines = self.lines()
            except Exception as exc:  # progress must never break the run
                log.debug("progress poll failed: %s", exc)
                continue
            for text in lines:
                self.say(text)

    def lines(self) -> list[str]:
        text = self.line()
        return [text] if text else []


class SweepProgress(MlflowProgress):
    """Progress of every RUNNING child run of a training sweep's parent run, one line each."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, iters: int, say: Callable[[str], None],
                 enabled: bool = True, poll_s: float = POLL_S) -> None:  # fmt: skip
        super().__init__(uri, "", SimpleNamespace(iters=iters), say, enabled, poll_s)
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self._runs: dict[str, MlflowProgress] = {}

    def lines(self) -> list[str]:
        query = f"tags.`{T.PARENT_RUN_ID}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'"
        out = []
        for run in client(self.uri).search_runs([self.experiment_id], filter_string=query, max_results=100):
            run_id = run.info.run_id
            if run_id not in self._runs:
                self._runs[run_id] = MlflowProgress(self.uri, run_id, SimpleNamespace(iters=self.total), self.say, False)
            text = self._runs[run_id].line()
            if text:
                out.append(f"{run.info.run_name}: {text}")
        return out
