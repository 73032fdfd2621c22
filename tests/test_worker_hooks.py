"""The Ray worker's step logging reads the losses back from the device once per logged window,
not once per step, and logs every step with the values, order and time it always had: at each
``train.log_every`` step, and before an evaluation or a checkpoint (whose steps must be in the
store before Ray holds it)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

import ray_jobs.train_worker as train_worker
from p2m_core.engine.step import StepResult


class Recorder:
    """A TrainingLog stand-in that records the calls it gets, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.evals_done = -1

    def step(self, iteration: int, metrics: dict, timestamp_ms: int | None = None) -> None:
        self.calls.append(("step", iteration, dict(metrics), timestamp_ms))

    def evaluation(self, iteration: int, metrics: dict, overlays: dict | None = None) -> bool:
        self.calls.append(("evaluation", iteration))
        return True

    def flush(self, wait: bool = True) -> None:
        self.calls.append(("flush",))


def result(iteration: int) -> StepResult:
    """A step's result as train_step gives it: float32 loss tensors, and solver diagnostics of
    two images, one without a transport solve (NaN, left out of the means)."""
    losses = {"partial_ce": torch.tensor(0.1 * iteration + 1 / 3), "cls": torch.tensor(2.0 / (iteration + 7))}
    pseudo = SimpleNamespace(
        iterations=torch.tensor([10 + iteration, 20]), col_error=torch.tensor([0.25, float("nan")]),
        disagreement=torch.tensor([0.01 * iteration, float("nan")]), converged=torch.tensor([True, False]),
    )  # fmt: skip
    return StepResult(losses, sum(losses.values()), 1e-4, 0.5 + iteration, 0.125, pseudo)


def test_losses_are_read_back_once_per_logged_window(monkeypatch) -> None:
    import ray.train

    reads: list[int] = []
    read = train_worker.read_step_metrics
    monkeypatch.setattr(train_worker, "read_step_metrics", lambda records: reads.append(len(records)) or read(records))
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: None)
    monkeypatch.setattr(ray.train.Checkpoint, "from_directory", staticmethod(lambda folder: None))
    tracking = Recorder()
    run = SimpleNamespace(max_iters=7, overlays=lambda count: {}, save_state=lambda folder: None)
    hooks = train_worker.WorkerHooks(run, tracking, SimpleNamespace(train=SimpleNamespace(log_every=3, overlays=0)))
    results = {i: result(i) for i in range(1, 8)}

    before = int(time.time() * 1000)
    hooks.step(1, results[1])
    hooks.step(2, results[2])
    assert tracking.calls == [] and reads == []  # nothing read back between log steps
    hooks.evaluation(2, {"PQ": 1.0, "PQ_th": 1.0, "PQ_st": 1.0, "mIoU": 1.0, "pseudo_PQ": 1.0})
    hooks.step(3, results[3])  # a log step
    hooks.step(4, results[4])
    hooks.checkpoint(4, {})
    for i in (5, 6, 7):  # 6: a log step, 7: the last
        hooks.step(i, results[i])
    after = int(time.time() * 1000)

    assert reads == [2, 1, 1, 2, 1]  # one read-back per window: 5 for 7 steps
    order = [call[:2] for call in tracking.calls]
    assert order == [("step", 1), ("step", 2), ("evaluation", 2), ("step", 3), ("step", 4), ("flush",), ("step", 5),
                     ("step", 6), ("step", 7)]  # fmt: skip
    steps = [call for call in tracking.calls if call[0] == "step"]
    stamps = [call[3] for call in steps]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    for _, iteration, metrics, _ in steps:
        r = results[iteration]
        expected = {"loss/partial_ce": float(r.losses["partial_ce"]), "loss/cls": float(r.losses["cls"]),
                    "loss/total": float(r.total), "lr": 1e-4, "step_seconds": 0.5 + iteration, "pseudo_seconds": 0.125,
                    "pseudo_share": 0.125 / (0.5 + iteration), "solver_iterations": 15.0 + iteration / 2,
                    "solver_col_error": 0.25, "disagreement_pct": float(torch.tensor(100.0) * torch.tensor(0.01 * iteration)),
                    "solver_converged": 0.5}  # fmt: skip
        assert list(metrics) == list(expected)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-6) and math.isfinite(metrics[key]), key
        assert metrics["loss/total"] == float(r.total)  # the same float, not a near one
    assert hooks.unread == [] and hooks.window == []
