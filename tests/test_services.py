"""The cluster path for real: `ray job submit` to a `ray start --head`, runs logged to an
`mlflow server`, and the paper table rendered from that server."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from p2m_core.data.synthetic import generate_synthetic
from tests.services import ray_job_command

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def submitted_sweep(tmp_path_factory, ray_head_url, mlflow_server_url) -> dict:
    """The table7 spec with two seeds, submitted as a Ray job that logs to the MLflow server."""
    data = tmp_path_factory.mktemp("job_data")
    generate_synthetic(data, num_train=0, num_val=3, size=64, seed=4, progress=False)
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head_url, "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "ray_jobs" / "runtime_env.yaml"), "--",
        "python", "-m", "ray_jobs.sweep", "experiments/sweeps/table7.yaml", "--seeds", "0,1",
        "--set", f"data.root={data}", "--set", f"tracking.tracking_uri={mlflow_server_url}",
    ]  # fmt: skip
    proc = ray_job_command(cmd, cwd=REPO)
    return {"proc": proc, "data": data, "uri": mlflow_server_url}


def test_job_submission_runs_the_sweep_on_the_head(submitted_sweep, ray_head_url):
    proc = submitted_sweep["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert "[table7] 4 trials (2 settings x 2 seeds)" in proc.stdout + proc.stderr
    assert "Ray attached" in proc.stdout + proc.stderr  # the job's driver joined the head, not a new cluster

    client = MlflowClient(tracking_uri=submitted_sweep["uri"])
    experiment = client.get_experiment_by_name("p2m-pseudo")
    trials = client.search_runs([experiment.experiment_id], "tags.`p2m.kind` = 'trial'")
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4
    assert {r.data.params["pseudo.assignment"] for r in trials} == {"mc", "ot"}
    assert all(r.data.params["data.root"] == str(submitted_sweep["data"]) for r in trials)
    # artifacts went through the server (proxied artifact store)
    names = {a.path for a in client.list_artifacts(trials[0].info.run_id)}
    assert {"config.yaml", "metrics.json", "overlays"} <= names


def test_paper_table_from_the_server_equals_the_runs(submitted_sweep):
    assert submitted_sweep["proc"].returncode == 0
    uri = submitted_sweep["uri"]
    out = subprocess.run(
        [sys.executable, "-m", "analysis.tables", "--table", "table7", "--tracking-uri", uri, "--format", "csv"],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(io.StringIO(out.stdout))

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["p2m-pseudo"], filter_string="tags.`p2m.kind` = 'trial'")
    paper = yaml.safe_load((REPO / "analysis" / "paper_tables.yaml").read_text())["table7_assignment"]["rows"]
    label_column = next(c for c in table.columns if c in ("setting", "label"))
    for assignment in ("mc", "ot"):
        row = table[table[label_column].astype(str).str.contains(f"assignment={assignment}")].iloc[0]
        values = runs.loc[runs["params.pseudo.assignment"] == assignment]
        for metric in ("PQ", "PQ_th", "PQ_st"):
            measured = values[f"metrics.{metric}"].to_numpy()
            assert row[f"{metric}_mean"] == pytest.approx(measured.mean(), abs=1e-9)
            assert row[f"{metric}_std"] == pytest.approx(np.std(measured, ddof=1), abs=1e-9)
            assert row[f"{metric}_paper"] == next(p[metric] for p in paper if p["assignment"] == assignment)
    # OT - MC, paired by seed
    seeds = runs.set_index(["params.pseudo.assignment", "tags.p2m.seed"])["metrics.PQ"]
    diffs = [seeds[("ot", s)] - seeds[("mc", s)] for s in ("0", "1")]
    ot_row = table[table[label_column].astype(str).str.contains("assignment=ot")].iloc[0]
    assert ot_row["delta_PQ_mean"] == pytest.approx(np.mean(diffs), abs=1e-9)


def test_job_submission_trains_on_the_head(tmp_path, ray_head_url, mlflow_server_url):
    """``ray_jobs.train`` as a Ray job: attaches to the head, logs to the server, writes its
    model where the submitter said (an absolute path outside the job's temporary copy)."""
    data = tmp_path / "data"
    generate_synthetic(data, num_train=4, num_val=1, size=64, seed=6, progress=False, num_test=1)
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head_url, "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "ray_jobs" / "runtime_env.yaml"), "--",
        "python", "-m", "ray_jobs.train", "experiments/train_tiny.yaml", "--set", f"data.root={data}",
        "--set", f"tracking.tracking_uri={mlflow_server_url}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        "--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "tracking.experiment=job-train",
    ]  # fmt: skip
    proc = ray_job_command(cmd, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Ray attached" in output
    client = MlflowClient(tracking_uri=mlflow_server_url)
    runs = client.search_runs([client.get_experiment_by_name("job-train").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/total")) == [1, 2]
    assert Path(runs[0].data.tags["p2m.checkpoint.model"]).parent.parent == tmp_path / "runs"
    assert "predictions" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
