"""A job's life on a real head: `ray job stop` ends its MLflow runs KILLED with the reason and
gives Ray's resources back; submitting it again completes it; two identical sweeps at once never
compute one trial twice (docs/TRACKING.md, "Stopping a job" and "Claims")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from p2m_core.data.synthetic import generate_synthetic
from tests.services import ray_job_command

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "lifecycle-tests"
#: What the stopped runs carry (p2m_core.tracking.tags.END_REASON, ray_jobs.stop.stop_reason).
STOPPED = "stopped: SIGTERM (ray job stop?)"
#: Prints the head's total and available resources once every resource is back (or after 30 s).
RESOURCES = (
    "import json, time, ray; ray.init(); deadline = time.time() + 30\n"
    "while ray.available_resources() != ray.cluster_resources() and time.time() < deadline: time.sleep(0.5)\n"
    "print('RESOURCES', json.dumps([ray.cluster_resources(), ray.available_resources()]))"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Small images: training steps of a fraction of a second."""
    root = tmp_path_factory.mktemp("lifecycle_data")
    generate_synthetic(root, num_train=4, num_val=2, size=64, seed=5, progress=False, num_test=2)
    return root


@pytest.fixture(scope="module")
def slow_val_root(tmp_path_factory) -> Path:
    """A val split whose pseudo trials take seconds each (~1.5 s on one thread of 2 cores),
    so a job can be stopped mid-sweep: with 8 images a trial took ~0.8 s, and on a busy machine
    the last seven trials finished before `ray job stop` got through."""
    root = tmp_path_factory.mktemp("lifecycle_val")
    generate_synthetic(root, num_train=0, num_val=16, size=192, seed=5, progress=False)
    return root


def write_spec(folder: Path, data_root: Path, settings: list[str], seeds: list[int]) -> Path:
    spec = {"name": "lifecycle", "base": str(REPO / "experiments" / "ablation_synthetic.yaml"), "stage": "pseudo",
            "split": "val", "grid": {"pseudo.k_scheme": settings}, "seeds": seeds, "resources": {"cpu": 1},
            "set": {"data.root": str(data_root)}, "mlflow_experiment": EXPERIMENT}  # fmt: skip
    path = folder / "lifecycle.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(url: str, *entrypoint: str, wait: bool = True, submission_id: str = "") -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "ray_jobs" / "runtime_env.yaml")]  # fmt: skip
    cmd += (["--submission-id", submission_id] if submission_id else []) + ([] if wait else ["--no-wait"])
    return ray_job_command([*cmd, "--", *entrypoint], timeout=400, cwd=REPO)


def stop_when(url: str, submission_id: str, ready, what: str, limit: float = 240) -> None:
    """``ray job stop`` the job once ``ready()`` holds."""
    deadline = time.monotonic() + limit
    checked = time.monotonic()
    while not ready():
        if time.monotonic() - checked > 5:  # a job that already ended will never get there: say why
            checked = time.monotonic()
            status = subprocess.run([RAY, "job", "status", "--address", url, submission_id],
                                    capture_output=True, text=True, timeout=60, check=False).stdout  # fmt: skip
            if any(word in status.upper() for word in ("FAILED", "SUCCEEDED", "STOPPED")):
                logs = subprocess.run([RAY, "job", "logs", "--address", url, submission_id],
                                      capture_output=True, text=True, timeout=60, check=False).stdout  # fmt: skip
                raise AssertionError(f"the job ended before {what}: {status[-500:]}\n{logs[-4000:]}")
        if time.monotonic() > deadline:
            logs = subprocess.run([RAY, "job", "logs", "--address", url, submission_id],
                                  capture_output=True, text=True, timeout=60, check=False).stdout  # fmt: skip
            raise AssertionError(f"{what} did not happen within {limit:.0f} s; the job's log:\n{logs[-4000:]}")
        time.sleep(0.3)
    stopped = subprocess.run([RAY, "job", "stop", "--address", url, submission_id],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def assert_resources_released(url: str) -> None:
    proc = submit(url, "python", "-c", RESOURCES)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESOURCES")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-2000:]
    total, available = json.loads(line.split(" ", 1)[1])
    assert {k: available.get(k) for k in ("CPU", "memory")} == {k: total.get(k) for k in ("CPU", "memory")}


def runs(uri: str, kind: str, view=ViewType.ACTIVE_ONLY) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`p2m.kind` = '{kind}'", view, max_results=1000)


@pytest.mark.slow
def test_a_stopped_sweep_job_ends_killed_and_resubmitting_completes_it(tmp_path, slow_val_root, ray_head_url):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs(uri, "trial") == []  # the schema exists before the job and this test read it at once
    # 9 trials, one at a time: once two have finished, seven are left, so the stop reaches a sweep
    # that is still computing (with 6, the last trials could finish while `ray job stop` starts)
    spec = write_spec(tmp_path, slow_val_root, ["equal_division", "nearest_point", "nearest_centroid"], [0, 1, 2])
    trials = 9
    sweep = ["python", "-m", "ray_jobs.sweep", str(spec), "--max-concurrent", "1", "--set", f"tracking.tracking_uri={uri}"]
    job = f"sweep-{uuid.uuid4().hex[:8]}"
    assert submit(ray_head_url, *sweep, wait=False, submission_id=job).returncode == 0

    def two_finished_one_running() -> bool:
        statuses = [r.info.status for r in runs(uri, "trial")]
        return statuses.count("FINISHED") >= 2 and "RUNNING" in statuses

    stop_when(ray_head_url, job, two_finished_one_running, "two finished trials and a third running")
    [sweep_run] = runs(uri, "sweep")
    assert sweep_run.info.status == "KILLED" and sweep_run.data.tags["p2m.end_reason"] == STOPPED
    before = runs(uri, "trial")
    # The trial that was computing ends KILLED with the reason, or FINISHED when its worker
    # completed it in the seconds before Ray ended the job's workers; none stays RUNNING.
    assert {r.info.status for r in before} <= {"FINISHED", "KILLED"}
    assert all(r.data.tags["p2m.end_reason"] == STOPPED for r in before if r.info.status == "KILLED")
    assert_resources_released(ray_head_url)

    again = submit(ray_head_url, *sweep)
    assert again.returncode == 0, again.stdout[-4000:]
    finished_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    assert f"{len(finished_before)} already finished, {trials - len(finished_before)} to run" in again.stdout
    after = runs(uri, "trial")
    finished = [r for r in after if r.info.status == "FINISHED"]
    assert finished_before <= {r.info.run_id for r in finished}  # finished trials kept their runs
    hashes = [r.data.tags["p2m.config_hash"] for r in finished]
    assert len(hashes) == len(set(hashes)) == trials
    assert len(after) == len(before) + trials - len(finished_before)  # only the missing trials ran


@pytest.mark.slow
def test_a_stopped_training_job_ends_killed_and_resubmitting_resumes_it(tmp_path, data_root, ray_head_url):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    assert client.search_experiments()  # the schema first
    iters = 120  # ~0.1-0.2 s each: the job is still training when it is stopped
    train = ["python", "-m", "ray_jobs.train", str(REPO / "experiments" / "train_tiny.yaml"), "--set", f"data.root={data_root}",
             "--set", f"tracking.tracking_uri={uri}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
             "--set", f"train.iters={iters}", "--set", "train.checkpoint_every=4", "--set", "train.batch_size=2",
             "--set", "train.log_every=2", "--set", "train.overlays=0", "--set", f"tracking.experiment={EXPERIMENT}"]  # fmt: skip
    job = f"train-{uuid.uuid4().hex[:8]}"
    assert submit(ray_head_url, *train, wait=False, submission_id=job).returncode == 0
    stop_when(ray_head_url, job, lambda: bool(list((tmp_path / "runs" / "ray").glob("*/checkpoint_*/state.pt"))),
              "a training checkpoint")  # fmt: skip
    [run] = runs(uri, "train")
    assert run.info.status == "KILLED" and run.data.tags["p2m.end_reason"] == STOPPED
    steps_before = len(client.get_metric_history(run.info.run_id, "loss/total"))
    assert steps_before < iters
    assert_resources_released(ray_head_url)

    again = submit(ray_head_url, *train)
    assert again.returncode == 0, again.stdout[-4000:]
    [resumed] = runs(uri, "train")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["p2m.resumed"] == "1" and int(resumed.data.tags["p2m.resumed_at"]) % 4 == 0
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/total"))
    assert steps == list(range(1, iters + 1))  # each step exactly once


@pytest.mark.slow
def test_two_identical_sweeps_at_once_compute_each_trial_once(tmp_path, data_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs(uri, "trial") == []
    spec = write_spec(tmp_path, data_root, ["equal_division", "nearest_point"], [0, 1])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "ray_jobs.sweep", str(spec), "--max-concurrent", "1"]
    sweeps = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    outputs = [proc.communicate(timeout=300)[1] for proc in sweeps]
    assert [proc.returncode for proc in sweeps] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    finished = [r for r in runs(uri, "trial") if r.info.status == "FINISHED"]
    hashes = [r.data.tags["p2m.config_hash"] for r in finished]
    assert len(hashes) == len(set(hashes)) == 4  # one computed run per trial
    assert not [r for r in runs(uri, "trial") if r.info.status != "FINISHED"]
    given_up = runs(uri, "trial", ViewType.DELETED_ONLY)  # a claim that lost: not computed
    assert {r.data.tags["p2m.claimed_by"] for r in given_up} <= {r.info.run_id for r in finished}
    assert all(r.info.status == "KILLED" for r in given_up)
    assert len(finished) + len(given_up) <= 8
    for out in outputs:  # both tables are complete
        assert "4 finished, 0 failed" in out or "already finished" in out, out[-3000:]
