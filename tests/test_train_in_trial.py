"""One-worker training sweeps train inside their Tune trials (ray_jobs/train_in_trial.py), for real:
in-process Ray, a sqlite MLflow store.

- checkpoints are stored complete or not at all, and only the newest are kept;
- an error starts training again from the last checkpoint up to ``train.max_failures`` times;
- a sweep trial trains the same numbers as ``ray_jobs.train`` (Ray Train) does for the same
  config, step by step, and writes its checkpoints where Ray Train would, without Ray Train;
- a trial whose process is killed mid-run is started again by Tune (``train.max_failures``),
  resumes from its last checkpoint, and MLflow holds every step exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from p2m_core.engine.checkpoint_check import FOLDER_GLOB
from ray_jobs.train import main as train_main
from ray_jobs.train_in_trial import STAGING_PREFIX, newest_checkpoint, store_checkpoint
from tests.services import kill_one_then_finish
from tests.test_train_ray import CONFIG, data_root, settings, steps_of  # noqa: F401  (data_root: a fixture)

EXPERIMENT = "in-trial-tests"


def test_checkpoints_are_stored_whole_and_only_the_newest_kept(tmp_path) -> None:
    checkpoints = tmp_path / "run"
    stored = []
    for iteration in range(4):
        stored.append(store_checkpoint(lambda folder: (folder / "state.pt").write_bytes(bytes([iteration]) * 100),
                                       checkpoints, kept=2))  # fmt: skip
        time.sleep(0.01)  # folder names carry the time to the microsecond
    kept = sorted(checkpoints.glob(FOLDER_GLOB))
    assert kept == stored[-2:] and newest_checkpoint(checkpoints) == stored[-1]
    assert (stored[-1] / "state.pt").read_bytes() == bytes([3]) * 100
    assert not list(checkpoints.glob(f"{STAGING_PREFIX}*"))
    # a copy that stopped half way (a staging folder) is never taken for a checkpoint
    (checkpoints / f"{STAGING_PREFIX}checkpoint_9999-01-01_00-00-00.000000").mkdir()
    assert newest_checkpoint(checkpoints) == stored[-1]
    assert newest_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("failures, max_failures, trained", [(1, 1, True), (2, 1, False), (0, 0, True)])
def test_an_error_starts_training_again_up_to_max_failures(monkeypatch, failures, max_failures, trained) -> None:
    """As Ray Train restarts a failed worker group: each attempt starts from the newest
    checkpoint (inside _train_once), the last error is raised."""
    from types import SimpleNamespace

    import ray_jobs.train_in_trial as in_trial

    attempts = []

    def attempt(plan, run_id):
        attempts.append(run_id)
        if len(attempts) <= failures:
            raise RuntimeError(f"attempt {len(attempts)} failed")
        return {"PQ": 1.0}

    monkeypatch.setattr(in_trial, "_train_once", attempt)
    monkeypatch.setattr(in_trial, "prepare_worker", lambda: None)
    plan = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(max_failures=max_failures)))
    if trained:
        assert in_trial.train_in_trial(plan, "run") == {"PQ": 1.0}
        assert len(attempts) == failures + 1
    else:
        with pytest.raises(RuntimeError, match=f"attempt {max_failures + 1} failed"):
            in_trial.train_in_trial(plan, "run")
        assert len(attempts) == max_failures + 1


def sweep_spec(folder: Path, root: Path, **extra: object) -> Path:
    spec = folder / "in_trial.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "in_trial", "base": str(CONFIG), "stage": "train", "split": "val", "seeds": [0],
        "grid": {"pseudo.assignment": ["ot"]}, "resources": {"cpu": 1}, "mlflow_experiment": EXPERIMENT,
        "set": {"data.root": str(root), "train.batch_size": 4, "train.log_every": 3, "train.overlays": 1,
                "data.flip_prob": 0.0, "tracking.output_dir": str(folder / "runs"), **extra},
    }))  # fmt: skip
    return spec


def trial_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`p2m.kind` = 'trial'")
    assert len(runs) == 1
    return client, runs[0]


def losses(client: MlflowClient, run_id: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, "loss/total"), key=lambda m: m.step)]


def test_a_one_worker_sweep_trial_trains_what_ray_train_trains(tmp_path, data_root, monkeypatch) -> None:
    iters = 8
    common = {"train.iters": iters, "train.checkpoint_every": 4, "train.eval_every": 8}
    trained = tmp_path / "ray_train"
    assert train_main([str(CONFIG), "--quiet", "--cpus-per-worker", "1",
                       *settings(data_root, trained, *(f"{k}={v}" for k, v in common.items()))]) == 0  # fmt: skip
    reference = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    (ray_run,) = reference.search_runs([reference.get_experiment_by_name("p2m-train").experiment_id])

    swept = tmp_path / "sweep"
    swept.mkdir()
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from ray_jobs.sweep import main as sweep_main

    assert sweep_main([str(sweep_spec(swept, data_root, **common)), "--quiet"]) == 0
    client, run = trial_run(uri)
    assert run.info.status == "FINISHED"
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))
    assert losses(client, run.info.run_id) == pytest.approx(losses(reference, ray_run.info.run_id), rel=1e-5)
    assert run.data.metrics["PQ"] == pytest.approx(ray_run.data.metrics["PQ"], abs=1e-6)
    (folder,) = (swept / "runs" / "ray").iterdir()
    assert len(list(folder.glob(FOLDER_GLOB))) == 2  # iterations 4 and 8, kept where Ray Train keeps them
    assert not list(folder.glob("checkpoint_manager_snapshot.json"))  # no Ray Train run behind it
    assert Path(run.data.tags["p2m.checkpoint.model"]).is_file()


@pytest.mark.slow
def test_a_killed_trial_is_restarted_by_tune_and_resumes_from_its_checkpoint(tmp_path, data_root) -> None:
    iters = 40
    spec = sweep_spec(tmp_path, data_root, **{"train.iters": iters, "train.checkpoint_every": 4, "train.max_failures": 1,
                                              "train.overlays": 0})  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    driver = subprocess.Popen([sys.executable, "-m", "ray_jobs.sweep", str(spec)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    checkpointed = lambda: bool(list((tmp_path / "runs" / "ray").glob("*/checkpoint_*/state.pt")))  # noqa: E731
    stderr = kill_one_then_finish(driver, checkpointed, b"ray::ImplicitFunc", "the trial")  # Tune's function actors
    assert driver.returncode == 0, stderr[-3000:]
    client, run = trial_run(uri)
    assert run.info.status == "FINISHED" and run.data.tags["p2m.resumed"] == "1"
    resumed_at = [int(i) for i in run.data.tags["p2m.resumed_at"].split(",")]
    assert len(resumed_at) == 1 and resumed_at[0] % 4 == 0 and 0 < resumed_at[0] < iters
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))  # each step exactly once
    assert steps_of(client, run.info.run_id, "PQ") == [iters]
