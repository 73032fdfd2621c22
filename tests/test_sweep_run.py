"""Sweeps for real: a Ray cluster started in-process by the sweep command, a sqlite MLflow store.

Every sweep runs as its own process (``python -m ray_jobs.sweep``), as users run it, so a
killed driver is a real SIGKILL of its process group (Ray's processes included).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from p2m_core.config import load_config
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.tracking.datasets import split_digest
from p2m_core.tracking.trial import config_params
from ray_jobs.spec import expand_trials, load_spec

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "ablation_synthetic.yaml"
EXPERIMENT = "sweep-tests"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic split, and a copy whose last panoptic PNG is corrupt."""
    good = tmp_path_factory.mktemp("good")
    generate_synthetic(good, num_train=0, num_val=3, size=64, seed=2, progress=False)
    broken = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(good, broken)
    last = CocoPanoptic(broken / "panoptic_val.json", png_dir=broken / "panoptic_val").records[-1]
    last.png_path.write_bytes(b"not a png")
    return {"good": good, "broken": broken}


def write_spec(folder: Path, name: str, grid: dict, seeds: list[int], data_root: Path) -> Path:
    spec = {"name": name, "base": str(BASE), "stage": "pseudo", "split": "val", "grid": grid, "seeds": seeds,
            "set": {"data.root": str(data_root)}, "resources": {"cpu": 1}, "mlflow_experiment": EXPERIMENT}  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray_jobs.sweep", *args, "--set", "ablation.overlays=1"]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def runs_of(uri: str, kind: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`p2m.kind` = '{kind}'", max_results=1000)


def settled_runs(uri: str, quiet_for: float = 5.0, limit: float = 60.0) -> list:
    """The trial runs once their statuses have not changed for ``quiet_for`` seconds."""
    deadline = time.monotonic() + limit
    state = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        runs = runs_of(uri, "trial")
        now = sorted((r.info.run_id, r.info.status) for r in runs)
        if now != state:
            state, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_for:
            return runs
        time.sleep(0.5)
    raise AssertionError("trial runs kept changing after the driver was killed")


def test_sweep_logs_every_trial_and_a_rerun_retries_only_the_failed_one(tmp_path, roots):
    # named table7, a table analysis.tables renders, so the sweep run gets its table
    ok = write_spec(tmp_path, "table7", {"pseudo.assignment": ["mc", "ot"]}, [0, 1], roots["good"])
    bad = write_spec(tmp_path, "broken", {"ablation.max_images": [2, 3]}, [0], roots["broken"])
    proc = run(sweep_command(str(ok), str(bad)), tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "[table7] 4 trials (2 settings x 2 seeds): 0 already finished, 4 to run" in proc.stderr
    assert "1 trial(s) did not finish" in proc.stderr and "max_images=3 seed=0" in proc.stderr
    assert proc.stderr.count("] ") >= 6  # one progress line per trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    sweeps = {r.data.tags["p2m.spec"]: r for r in runs_of(uri, "sweep")}
    assert set(sweeps) == {"table7", "broken"}
    assert sweeps["table7"].info.status == "FINISHED" and sweeps["broken"].info.status == "FAILED"
    assert sweeps["table7"].data.metrics["trials_finished"] == 4 and sweeps["broken"].data.metrics["trials_failed"] == 1
    trials = runs_of(uri, "trial")
    # one FAILED run: Tune does not run a trial again whose own code failed (only a lost one)
    assert sorted(r.info.status for r in trials) == ["FAILED"] + ["FINISHED"] * 5

    # the failed trial carries its error; the other trial of that sweep finished
    failed = next(r for r in trials if r.info.status == "FAILED")
    assert failed.data.tags["mlflow.parentRunId"] == sweeps["broken"].info.run_id
    assert failed.data.tags["p2m.error"] and json.loads(failed.data.tags["p2m.setting"]) == {"ablation.max_images": 3}
    assert "Traceback" in Path(client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()

    # params = the flat resolved config, tags = hash and provenance, metrics, artifacts
    expected = {t.config_hash: t for t in expand_trials(load_spec(ok), ["ablation.overlays=1"], tmp_path)}
    ok_runs = [r for r in trials if r.data.tags["mlflow.parentRunId"] == sweeps["table7"].info.run_id]
    assert {r.data.tags["p2m.config_hash"] for r in ok_runs} == set(expected)
    for r in ok_runs:
        trial = expected[r.data.tags["p2m.config_hash"]]
        assert r.data.params == config_params(trial.config)
        assert r.data.tags["p2m.seed"] == str(trial.seed) and r.data.tags["p2m.dataset"] == f"synthetic:{roots['good']}"
        assert r.data.tags["p2m.git_commit"] and r.data.tags["p2m.split"] == "val" and r.data.tags["p2m.hash_version"]
        assert 0 <= r.data.metrics["PQ"] <= 100 and r.data.metrics["seconds_per_image"] > 0
        assert ("disagreement_pct" in r.data.metrics) == (trial.setting["pseudo.assignment"] == "ot")
        folder = tmp_path / "artifacts" / r.info.run_id
        folder.mkdir(parents=True)
        client.download_artifacts(r.info.run_id, "", str(folder))
        assert load_config(folder / "config.yaml") == trial.config
        assert json.loads((folder / "metrics.json").read_text())["config_hash"] == trial.config_hash
        assert len(list((folder / "overlays").glob("*.png"))) == 1
    trials_json = json.loads(Path(client.download_artifacts(sweeps["table7"].info.run_id, "trials.json", str(tmp_path))).read_text())
    assert [t["config_hash"] for t in trials_json["trials"]] == list(expected)
    check_what_the_ui_shows(client, proc.stderr, sweeps["table7"], ok_runs, expected, tmp_path)

    # the same command again: the finished trials are skipped, the failed one is retried
    again = run(sweep_command(str(ok), str(bad)), tmp_path)
    assert again.returncode == 1
    assert "[table7] 4 trials (2 settings x 2 seeds): 4 already finished, 0 to run" in again.stderr
    assert "[broken] 2 trials (2 settings x 1 seeds): 1 already finished, 1 to run" in again.stderr
    after = runs_of(uri, "trial")
    assert len(after) == 7 and sum(r.info.status == "FINISHED" for r in after) == 5
    assert len(runs_of(uri, "sweep")) == 2  # the sweep runs were reused


def check_what_the_ui_shows(client: MlflowClient, stderr: str, sweep, trial_runs: list, expected: dict, folder: Path) -> None:
    """The experiment's kind, the printed link, the sweep run's name, description and table, and
    each trial's name and dataset input (docs/TRACKING.md)."""
    experiment_id = sweep.info.experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"[table7] MLflow UI: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning" in stderr
    assert sweep.info.run_name == f"table7: assignment x seeds 0,1 ({sweep.data.tags['p2m.sweep_hash'][:8]})"
    note = sweep.data.tags["mlflow.note.content"]
    assert "**table7**" in note and "`pseudo.assignment` (2 settings) x seeds 0, 1: 4 trials" in note
    assert f"python -m analysis.tables --table table7 --experiment {EXPERIMENT}" in note
    table_md = Path(client.download_artifacts(sweep.info.run_id, "table.md", str(folder / "table"))).read_text()
    assert "assignment=mc" in table_md and "assignment=ot" in table_md and "PQ" in table_md
    table_csv = Path(client.download_artifacts(sweep.info.run_id, "table.csv", str(folder / "table"))).read_text()
    assert table_csv.splitlines()[0].startswith("setting,") and "PQ_mean" in table_csv.splitlines()[0]
    digest = split_digest(next(iter(expected.values())).config, "val")
    for r in [*trial_runs, sweep]:  # the sweep's row shows its trials' data and source too
        inputs = client.get_run(r.info.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}) for i in inputs] == [
            ("synthetic:val", digest, {"mlflow.data.context": "val"})]
        assert r.data.tags["mlflow.source.name"] == "python -m ray_jobs.sweep" and r.data.tags["mlflow.source.type"] == "LOCAL"
        assert r.data.tags["mlflow.source.git.commit"] == r.data.tags["p2m.git_commit"].removesuffix("-dirty")
    for r in trial_runs:
        trial = expected[r.data.tags["p2m.config_hash"]]
        assert r.info.run_name == f"assignment={trial.setting['pseudo.assignment']} seed={trial.seed}"


def test_killed_sweep_resumes_with_only_the_missing_trials(tmp_path, roots, monkeypatch):
    # the killed trials' claims expire within seconds, not the default minute (docs/TRACKING.md, "Claims")
    monkeypatch.setenv("P2M_HEARTBEAT_STALE_S", "4")
    spec = write_spec(tmp_path, "resume", {"pseudo.k_scheme": ["equal_division", "nearest_point", "nearest_centroid"]},
                      [0, 1], roots["good"])  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    # The store's schema is created here, before the driver and this test's polling could both
    # create it at once (sqlite migrations race: "table _alembic_tmp_experiments already exists").
    assert runs_of(uri, "trial") == []
    driver = subprocess.Popen(
        sweep_command(str(spec), "--max-concurrent", "1"), cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    try:
        while sum(r.info.status == "FINISHED" for r in runs_of(uri, "trial")) < 2:
            assert driver.poll() is None, "the sweep ended before it could be interrupted: " + driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        driver.wait(timeout=30)
    # Ray's workers have process groups of their own: one may still finish its trial before it
    # notices its raylet is gone (a legitimate FINISHED run). Wait until the store is quiet.
    before = settled_runs(uri)
    finished_before = {r.data.tags["p2m.config_hash"] for r in before if r.info.status == "FINISHED"}
    assert 2 <= len(finished_before) < 6

    resumed = run(sweep_command(str(spec), "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(finished_before)} already finished, {6 - len(finished_before)} to run" in resumed.stderr
    after = runs_of(uri, "trial")
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert len(new) == 6 - len(finished_before)  # only the missing trials ran
    finished = [r.data.tags["p2m.config_hash"] for r in after if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 6
    running_before = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    assert {r.info.run_id for r in after if r.info.status == "KILLED"} == running_before  # interrupted: KILLED
    assert not any(r.info.status == "RUNNING" for r in after)

    rerun = run(sweep_command(str(spec)), tmp_path)
    assert rerun.returncode == 0 and "6 already finished, 0 to run" in rerun.stderr
    assert "Ray started" not in rerun.stderr and len(runs_of(uri, "trial")) == len(after)
