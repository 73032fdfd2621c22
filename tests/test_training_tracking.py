"""A training run in a real sqlite MLflow store, without Ray: which run a launcher continues,
that a restarted writer logs no step twice and loses none it recomputes, what a resume past a
damaged checkpoint records, and the launcher's progress line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from mlflow.tracking import MlflowClient

from p2m_core.config import load_config
from p2m_core.tracking import store
from p2m_core.tracking.training import TrainingLog, end_training_run, open_training_run
from ray_jobs.train_progress import MlflowProgress


def setup(tmp_path, *overrides: str):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = store.ensure_experiment(uri, "tracking-tests")
    return uri, experiment, load_config(None, list(overrides))


def steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_a_launcher_continues_the_unfinished_run_of_its_config_and_skips_a_finished_one(tmp_path) -> None:
    uri, experiment, cfg = setup(tmp_path)
    run_id, state = open_training_run(uri, experiment, cfg, {"p2m.dataset": "x"}, "train-a")
    assert state == "new"
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.params["train.lr"] == str(cfg.train.lr) and run.data.tags["p2m.stage"] == "train"
    end_training_run(uri, run_id, RuntimeError("worker lost"))
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FAILED"
    again, state = open_training_run(uri, experiment, cfg, {}, "train-a")
    assert (again, state) == (run_id, "resumed")
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["p2m.resumed"] == "1"
    # another config, another name or another parent is another run
    other_cfg = load_config(None, ["train.lr=0.5"])
    assert open_training_run(uri, experiment, other_cfg, {}, "train-a")[0] != run_id
    assert open_training_run(uri, experiment, cfg, {}, "train-b")[0] != run_id
    assert open_training_run(uri, experiment, cfg, {}, "train-a", parent_run_id="p" * 32)[0] != run_id
    end_training_run(uri, run_id)
    assert open_training_run(uri, experiment, cfg, {}, "train-a") == (run_id, "finished")


def test_a_restarted_writer_logs_each_step_once(tmp_path) -> None:
    uri, experiment, cfg = setup(tmp_path)
    run_id, _ = open_training_run(uri, experiment, cfg, {}, "train-a")
    first = TrainingLog(uri, run_id, flush_every=4)
    for iteration in range(1, 11):  # steps 1-8 flushed in two batches; 9-10 still queued when it "dies"
        first.step(iteration, {"loss/total": float(iteration), "lr": 0.1})
        if iteration == 8:
            assert first.evaluation(8, {"PQ": 10.0, "mIoU": 5.0}, {"img": np.zeros((4, 4, 3), np.uint8)})
    assert steps(uri, run_id, "loss/total") == list(range(1, 9))
    # resumed from the checkpoint of iteration 4: steps 5-12 are recomputed
    second = TrainingLog(uri, run_id, flush_every=4)
    assert (second.steps_done, second.evals_done) == (8, 8)
    for iteration in range(5, 13):
        second.step(iteration, {"loss/total": float(iteration), "lr": 0.1})
    assert not second.evaluation(8, {"PQ": 99.0})  # already logged
    assert second.evaluation(12, {"PQ": 20.0})
    second.flush()
    assert steps(uri, run_id, "loss/total") == list(range(1, 13))
    assert steps(uri, run_id, "lr") == list(range(1, 13))
    assert steps(uri, run_id, "PQ") == [8, 12]
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "PQ")
    assert sorted((m.step, m.value) for m in history) == [(8, 10.0), (12, 20.0)]
    artifacts = [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, "overlays/iter_000008")]
    assert artifacts == ["overlays/iter_000008/img.png"]


def test_the_held_out_split_is_logged_once_at_the_last_iteration(tmp_path) -> None:
    uri, experiment, cfg = setup(tmp_path)
    run_id, _ = open_training_run(uri, experiment, cfg, {}, "train-a")
    writer = TrainingLog(uri, run_id)
    assert not writer.held_out_done("test", 40)
    writer.held_out(40, "test", {"PQ": 30.0, "PQ_th": 10.0, "mIoU": 50.0})
    # a launcher run again after the end: a new writer sees it and neither scores nor logs it again
    again = TrainingLog(uri, run_id)
    assert again.held_out_done("test", 40) and not again.held_out_done("val", 40) and not again.held_out_done("test", 41)
    assert steps(uri, run_id, "test/PQ") == [40] and steps(uri, run_id, "test/mIoU") == [40]
    assert "PQ" not in MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics  # the val metric is another key


def test_the_progress_line_follows_the_run(tmp_path) -> None:
    uri, experiment, cfg = setup(tmp_path)
    run_id, _ = open_training_run(uri, experiment, cfg, {}, "train-a")
    progress = MlflowProgress(uri, run_id, SimpleNamespace(iters=100), print, enabled=False)
    assert progress.line() is None  # nothing logged yet
    writer = TrainingLog(uri, run_id, flush_every=1)
    writer.step(10, {"loss/total": 2.5, "step_seconds": 0.25, "pseudo_share": 0.08})
    line = progress.line()
    assert line == "iteration 10/100, loss 2.500, 0.25 s/step, pseudo labels 8% of the step"
    assert progress.line() is None  # no news, no line
    writer.evaluation(10, {"PQ": 31.0, "PQ_th": 20.0, "PQ_st": 40.0})
    assert progress.line().endswith("val PQ 31.0 (things 20.0, stuff 40.0) at 10")


def test_a_training_sweep_reports_its_running_trials(tmp_path) -> None:
    from ray_jobs.train_progress import SweepProgress

    uri, experiment, cfg = setup(tmp_path)
    parent = MlflowClient(tracking_uri=uri).create_run(experiment, run_name="sweep").info.run_id
    running, _ = open_training_run(uri, experiment, cfg, {"p2m.kind": "trial"}, "assignment=ot seed=0", parent)
    done, _ = open_training_run(uri, experiment, load_config(None, ["train.lr=0.5"]), {"p2m.kind": "trial"},
                                "assignment=mc seed=0", parent)  # fmt: skip
    for run_id in (running, done):
        TrainingLog(uri, run_id, flush_every=1).step(5, {"loss/total": 1.0})
    end_training_run(uri, done)
    progress = SweepProgress(uri, experiment, parent, 20, print, enabled=False)
    assert progress.lines() == ["assignment=ot seed=0: iteration 5/20, loss 1.000"]
    assert progress.lines() == []


def test_a_resume_past_a_damaged_checkpoint_is_recorded_on_the_run(tmp_path) -> None:
    from p2m_core.tracking.training import damaged_checkpoints

    uri, experiment, cfg = setup(tmp_path)
    run_id, _ = open_training_run(uri, experiment, cfg, {}, "train-a")
    writer = TrainingLog(uri, run_id)
    writer.resumed_at(8, "checkpoint_b")  # a good latest checkpoint: nothing damaged
    assert damaged_checkpoints(uri, run_id) == []
    writer.resumed_at(4, "checkpoint_a", ["/ray/checkpoint_c/state.pt: 10 bytes, the manifest says 20"])
    writer.resumed_at(6, "checkpoint_d", ["/ray/checkpoint_e/rng-rank1.pt: missing"])
    tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    assert (tags["p2m.resumed_at"], tags["p2m.resumed_from"]) == ("8,4,6", "checkpoint_d")
    assert damaged_checkpoints(uri, run_id) == [
        "/ray/checkpoint_c/state.pt: 10 bytes, the manifest says 20", "/ray/checkpoint_e/rng-rank1.pt: missing"]
