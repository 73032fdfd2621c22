"""Training on Ray Train for real: in-process Ray clusters, DDP over gloo, a sqlite MLflow store.

- two workers train the tiny network: each trains on its own shard, the losses fall, and MLflow
  holds the run with params, every step's metrics once, evaluations and artifacts;
- a 2-worker DDP step gives the gradients of a 1-worker step on the two halves concatenated
  (to float32 rounding: the workers share their loss normalisers);
- a training worker killed by its PID mid-run: Ray restarts the group from the last checkpoint,
  the run finishes, and every step is in MLflow exactly once;
- a damaged latest checkpoint (a truncated or a missing file): the run resumes from the
  previous good one, warns naming the file, records it in MLflow and logs every step once;
- bad input (missing or empty data, a wrong class count, an unreachable tracking server) is
  refused before Ray starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from p2m_core.data.synthetic import generate_synthetic
from ray_jobs.train import main as train_main
from tests.services import kill_one_then_finish

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "train_tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    generate_synthetic(root, num_train=4, num_val=2, size=64, seed=3, progress=False, num_test=2)
    return root


def settings(root: Path, folder: Path, *extra: str) -> list[str]:
    args = [
        f"data.root={root}", f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}", f"tracking.output_dir={folder / 'runs'}",
        "train.batch_size=4", "train.log_every=3", "train.overlays=1", "data.flip_prob=0.0", *extra,
    ]  # fmt: skip
    return [item for arg in args for item in ("--set", arg)]


def only_run(folder: Path, experiment: str = "p2m-train"):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found.add(item.path)
        if item.is_dir:
            found |= artifact_paths(client, run_id, item.path)
    return found


def dataset_inputs(client: MlflowClient, run_id: str) -> list[tuple[str, str]]:
    """(name, split context) of the run's dataset inputs; each digest must be 16 hex digits."""
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert all(len(i.dataset.digest) == 16 and int(i.dataset.digest, 16) >= 0 for i in inputs)
    return [(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in inputs]


def shards(checkpoints: Path) -> dict[int, dict[int, list]]:
    """{iteration: {rank: image ids}} from every checkpoint's per-rank data record."""
    seen: dict[int, dict[int, list]] = {}
    for path in checkpoints.glob("checkpoint_*/data-rank*.json"):
        record = json.loads(path.read_text())
        for iteration, ids in record["iterations"]:
            seen.setdefault(iteration, {})[record["rank"]] = ids
    return seen


def test_two_workers_train_on_their_own_shards_and_log_to_mlflow(tmp_path, data_root) -> None:
    import ray

    iters = 12
    code = train_main([str(CONFIG), "--num-workers", "2", "--quiet",
                       *settings(data_root, tmp_path, f"train.iters={iters}", "train.eval_every=6")])  # fmt: skip
    assert code == 0
    assert not ray.is_initialized()  # the in-process cluster was shut down
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.workers"] == "2" and params["data.root"] == str(data_root) and len(params) > 100
    tags = run.data.tags
    assert tags["p2m.stage"] == "train" and tags["p2m.kind"] == "train" and len(tags["p2m.config_hash"]) == 16
    assert tags["p2m.git_commit"] and tags["p2m.dataset"] == f"synthetic:{data_root}"
    assert tags["mlflow.source.name"] == "python -m ray_jobs.train" and tags["mlflow.source.type"] == "LOCAL"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert dataset_inputs(client, run.info.run_id) == [  # train_tiny.yaml scores the test split at the end
        ("synthetic:train", "train"), ("synthetic:val", "val"), ("synthetic:test", "test")]
    # every step once, evaluations at 6 and 12
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))
    assert steps_of(client, run.info.run_id, "pseudo_share") == list(range(1, iters + 1))
    assert steps_of(client, run.info.run_id, "PQ") == [6, 12]
    for key in ("PQ_th", "PQ_st", "SQ", "RQ", "mIoU", "pseudo_PQ", "lr", "loss/partial_ce", "solver_iterations"):
        assert key in run.data.metrics, key
    # the held-out split (train_tiny.yaml's train.test_split) scored once, after the last iteration
    for key in ("test/PQ", "test/PQ_th", "test/PQ_st", "test/mIoU", "test/pseudo_PQ"):
        assert steps_of(client, run.info.run_id, key) == [iters], key
    # the losses fall (4 images, each worker sees 2 per step: the same images again and again)
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss/total"), key=lambda m: m.step)]
    assert sum(losses[-3:]) < sum(losses[:3])
    files = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "checkpoint.txt", "predictions/predictions.json"} <= files
    assert any(f.startswith("overlays/iter_000006/") and f.endswith(".png") for f in files)
    assert any(f.startswith("predictions/panoptic/") for f in files)
    model_file = Path(tags["p2m.checkpoint.model"])
    assert model_file.is_file()
    # the two workers saw different images at every iteration, together the whole split
    seen = shards(Path(tags["p2m.checkpoint.ray"]))
    assert sorted(seen) == list(range(1, iters + 1))
    for iteration, by_rank in seen.items():
        assert sorted(by_rank) == [0, 1]
        assert not set(by_rank[0]) & set(by_rank[1]), iteration
        assert sorted(by_rank[0] + by_rank[1]) == [1, 2, 3, 4]  # 4 images / (2 workers x 2): an epoch per step
    # a finished run is not trained again
    assert train_main([str(CONFIG), "--num-workers", "2", "--quiet",
                       *settings(data_root, tmp_path, f"train.iters={iters}", "train.eval_every=6")]) == 0  # fmt: skip
    assert len(steps_of(client, run.info.run_id, "loss/total")) == iters


def _ddp_gradients(config: dict) -> None:
    """Ray Train worker: one DDP step on this rank's half of a fixed batch; rank 0 saves the
    averaged gradients."""
    import ray.train

    from p2m_core.config import Config, from_dict
    from p2m_core.data.dataset import collate_points
    from p2m_core.engine.loop import batch_to_device
    from p2m_core.engine.run import WorkerRun
    from p2m_core.engine.step import train_step

    rank = ray.train.get_context().get_world_rank()
    cfg = from_dict(config["config"], {}, Config)
    run = WorkerRun(cfg, rank, 2, "cpu")
    batch = collate_points([run.train_set[i] for i in config["halves"][rank]])
    train_step(run.loop.module, batch_to_device(batch, torch.device("cpu")), run.loop.optimizer, cfg, 0)
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in run.model.named_parameters() if p.grad is not None}, config["out"])


def test_a_two_worker_step_equals_one_worker_on_the_concatenated_batch(tmp_path, data_root) -> None:
    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from p2m_core.config import load_config, to_dict
    from p2m_core.data.dataset import collate_points
    from p2m_core.engine.loop import batch_to_device
    from p2m_core.engine.run import WorkerRun
    from p2m_core.engine.step import train_step

    cfg = load_config(CONFIG, [f"data.root={data_root}", "train.batch_size=2", "train.grad_clip=0", "data.flip_prob=0.0"])
    halves = [[0, 1], [2, 3]]
    out = tmp_path / "ddp_grads.pt"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100_000_000, log_to_driver=False)
    try:
        TorchTrainer(
            _ddp_gradients, train_loop_config={"config": to_dict(cfg), "halves": halves, "out": str(out)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="ddp-grads", storage_path=str(tmp_path / "ray")),
        ).fit()
    finally:
        ray.shutdown()
    distributed = torch.load(out, weights_only=True)

    single = WorkerRun(cfg, 0, 1, "cpu")
    batch = collate_points([single.train_set[i] for i in halves[0] + halves[1]])
    train_step(single.loop.module, batch_to_device(batch, torch.device("cpu")), single.loop.optimizer, cfg, 0)
    reference = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    assert set(distributed) == set(reference) and len(reference) > 100
    flat_d = torch.cat([distributed[n].flatten() for n in sorted(reference)])
    flat_r = torch.cat([reference[n].flatten() for n in sorted(reference)])
    assert flat_r.norm() > 0
    relative = (flat_d - flat_r).norm() / flat_r.norm()
    # 2.2e-7 measured: float32 summation order. Without the workers' shared loss normalisers
    # (p2m_core.losses.normalise) it was 1.5e-2.
    assert relative < 1e-5, f"2-worker gradient differs from the concatenated batch's by {relative:.2e}"


def test_a_killed_worker_resumes_from_its_checkpoint_and_logs_every_step_once(tmp_path, data_root) -> None:
    iters = 40
    cmd = [sys.executable, "-m", "ray_jobs.train", str(CONFIG),
           *settings(data_root, tmp_path, f"train.iters={iters}", "train.checkpoint_every=4", "train.max_failures=2")]  # fmt: skip
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    storage = tmp_path / "runs" / "ray"
    # two checkpoints on disk: the first is surely registered with Ray (the newest may still be
    # in its upload, and a kill then restarts from the one before, or from scratch)
    two = lambda: len(list(storage.glob("*/checkpoint_*/state.pt"))) >= 2  # noqa: E731
    stderr = kill_one_then_finish(driver, two, b"ray::RayTrainWorker", "a training worker")
    assert driver.returncode == 0, stderr[-3000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    resumed_at = [int(i) for i in run.data.tags["p2m.resumed_at"].split(",")]
    assert len(resumed_at) == 1 and resumed_at[0] % 4 == 0 and 0 < resumed_at[0] < iters
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))  # each step exactly once
    assert steps_of(client, run.info.run_id, "PQ") == [iters]
    assert Path(run.data.tags["p2m.checkpoint.model"]).is_file()


# One damage end to end, the one only several workers have: rank 1's file of the newest checkpoint
# gone, which rank 0 must notice. A truncated file, changed bytes and an unreadable file are
# named by the same check (tests/test_checkpoint_check.py, without Ray: each such run here took
# a minute of the suite).
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_good_one(tmp_path, data_root, capsys) -> None:
    iters = 6
    args = [str(CONFIG), "--num-workers", "2", "--quiet",
            *settings(data_root, tmp_path, f"train.iters={iters}", "train.checkpoint_every=2")]  # fmt: skip
    assert train_main(args) == 0
    client, run = only_run(tmp_path)
    # the launcher "was killed" after its last checkpoint: the run is unfinished, Ray keeps 4 and 6
    client.set_terminated(run.info.run_id, status="KILLED")
    previous, latest = sorted(p for p in Path(run.data.tags["p2m.checkpoint.ray"]).glob("checkpoint_*") if p.is_dir())
    bad = latest / "rng-rank1.pt"  # rank 1's part: rank 0 checks every worker's files
    bad.unlink()
    capsys.readouterr()
    assert train_main(args) == 0
    assert f"warning: damaged checkpoint file {bad}: " in capsys.readouterr().err
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["p2m.damaged_checkpoint"].startswith(f"{bad}: ")
    assert (tags["p2m.resumed_at"], tags["p2m.resumed_from"]) == ("4", previous.name)  # not from scratch
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))  # each step exactly once
    assert steps_of(client, run.info.run_id, "PQ") == [iters] and steps_of(client, run.info.run_id, "test/PQ") == [iters]


@pytest.mark.parametrize("problem", ["missing", "empty", "classes", "server"])
def test_bad_input_is_refused_before_any_worker_starts(tmp_path, data_root, problem, capsys) -> None:
    import ray

    root = data_root
    extra: list[str] = []
    if problem == "missing":
        root = tmp_path / "nowhere"
        fragment = f"data.train.json -> {root / 'panoptic_train.json'}"
    elif problem == "empty":
        root = tmp_path / "empty"
        generate_synthetic(root, num_train=0, num_val=1, size=64, seed=0, progress=False, num_test=1)
        fragment = "the split has no images"
    elif problem == "classes":
        extra = ["data.num_classes=133"]
        fragment = "data.num_classes is 133 but data.train.json"
    else:
        from tests.services import free_port

        extra = [f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"]
        fragment = "is not reachable"
    assert train_main([str(CONFIG), *settings(root, tmp_path, *extra)]) == 2  # a later --set wins
    assert fragment in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def test_a_killed_sweep_driver_is_completed_by_running_it_again(tmp_path, data_root, monkeypatch) -> None:
    # the killed trial's run is stale within seconds, not the default minute (docs/TRACKING.md, "Claims")
    monkeypatch.setenv("P2M_HEARTBEAT_STALE_S", "4")
    import yaml

    iters = 40
    spec = tmp_path / "train_resume.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "train_resume", "base": str(CONFIG), "stage": "train", "split": "val", "seeds": [0],
        "grid": {"pseudo.assignment": ["ot"]}, "resources": {"cpu": 1}, "mlflow_experiment": "train-sweep-tests",
        "set": {"data.root": str(data_root), "train.iters": iters, "train.checkpoint_every": 4, "train.batch_size": 2,
                "train.log_every": 3, "train.overlays": 0, "tracking.output_dir": str(tmp_path / "runs")},
    }))  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "ray_jobs.sweep", str(spec)]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "runs" / "ray").glob("*/checkpoint_*/state.pt")):
            assert driver.poll() is None, f"the sweep ended before it could be killed: {driver.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        driver.wait(timeout=30)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("train-sweep-tests").experiment_id

    def trial_runs():
        return client.search_runs([experiment], filter_string="tags.`p2m.kind` = 'trial'")

    # the orphaned worker notices its raylet is gone and stops; wait until it logs no more
    deadline, last = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        now = len(client.get_metric_history(trial_runs()[0].info.run_id, "loss/total"))
        if now == last:
            break
        last = now
        time.sleep(5)
    before = trial_runs()
    assert len(before) == 1 and before[0].info.status == "RUNNING"
    assert len(client.get_metric_history(before[0].info.run_id, "loss/total")) < iters

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 interrupted runs marked KILLED" in again.stderr
    after = trial_runs()
    assert [r.info.run_id for r in after] == [before[0].info.run_id]  # the same MLflow run, continued
    run = after[0]
    assert run.info.status == "FINISHED" and run.data.tags["p2m.resumed"] == "1"
    assert run.info.run_name == "assignment=ot seed=0"
    assert dataset_inputs(client, run.info.run_id) == [
        ("synthetic:train", "train"), ("synthetic:val", "val"), ("synthetic:test", "test")]
    assert f"#/experiments/{experiment}/runs?workflowType=machine_learning" in again.stderr
    assert int(run.data.tags["p2m.resumed_at"]) % 4 == 0
    assert steps_of(client, run.info.run_id, "loss/total") == list(range(1, iters + 1))  # each step exactly once
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert rerun.returncode == 0 and "1 already finished, 0 to run" in rerun.stderr
