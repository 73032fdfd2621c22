"""Only the cluster's users get in: a real Ray head in token mode and a real MLflow server with
MLflow's basic-auth app, both started from the secret files that ``ray_jobs.cluster_auth``
writes on the cluster's head (docs/SCALING.md, "Who can reach what")."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from p2m_core.errors import P2MInputError
from ray_jobs import cluster_auth
from tests.services import mlflow_server, ray_head, ray_job_command

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("auth") / "secrets"
    cluster_auth.init(folder, f"sqlite:///{folder.parent / 'basic_auth.db'}")
    return folder


# --------------------------------------------------------------------------------------------
# the secret files


def test_init_creates_private_files_once_and_keeps_them(tmp_path):
    folder = tmp_path / "secrets"
    created = cluster_auth.init(folder, "sqlite:///auth.db")
    assert sorted(p.name for p in created) == sorted([cluster_auth.RAY_TOKEN, cluster_auth.MLFLOW_INI, cluster_auth.FLASK_KEY])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in created)
    before = {p.name: p.read_text() for p in created}
    assert cluster_auth.init(folder, "sqlite:///auth.db") == []  # a restart keeps the first secrets
    assert {p.name: p.read_text() for p in created} == before
    user, password = cluster_auth.read_admin(folder)
    assert user == cluster_auth.ADMIN_USER and len(password) >= 24


def test_a_secret_others_can_read_is_refused_by_name(tmp_path):
    folder = tmp_path / "secrets"
    cluster_auth.init(folder, "sqlite:///auth.db")
    token = folder / cluster_auth.RAY_TOKEN
    token.chmod(0o644)
    with pytest.raises(P2MInputError, match=rf"{token}: mode 644"):
        cluster_auth.environment(folder)
    with pytest.raises(P2MInputError, match=rf"{token}: mode 644"):
        cluster_auth.init(folder, "sqlite:///auth.db")


def test_env_prints_a_path_to_the_token_not_the_token(secrets_dir):
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.cluster_auth", "env", str(secrets_dir)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"export RAY_AUTH_TOKEN_PATH={secrets_dir / cluster_auth.RAY_TOKEN}" in out.splitlines()
    assert "export RAY_AUTH_MODE=token" in out.splitlines()
    assert (secrets_dir / cluster_auth.RAY_TOKEN).read_text() not in out
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" not in out  # only with --server


# --------------------------------------------------------------------------------------------
# Ray: token authentication


@pytest.fixture(scope="module")
def token_head(tmp_path_factory, secrets_dir) -> str:
    with ray_head(tmp_path_factory.mktemp("ray_token_head"), token_path=secrets_dir / cluster_auth.RAY_TOKEN) as url:
        yield url


def ray_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """The `ray` command line as a user's shell runs it: only the auth variables given here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    return ray_job_command([str(VENV_BIN / "ray"), *args], timeout=300, env={**base, **env})


@pytest.mark.slow
def test_ray_job_with_the_token_runs_and_without_it_is_refused(token_head, secrets_dir):
    user_env = {k: v for k, v in cluster_auth.environment(secrets_dir).items() if k.startswith("RAY_")}
    # The driver inside the job connects to the cluster too: it must find the token on the head.
    entry = "import ray; ray.init(); print('answer', ray.get(ray.remote(lambda: 6 * 7).remote()))"
    ok = ray_cli(["job", "submit", "--address", token_head, "--", "python", "-c", entry], **user_env)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "answer 42" in ok.stdout + ok.stderr

    marker = f"refused-{secrets.token_hex(4)}"
    refused = {
        "no token": ray_cli(["job", "submit", "--address", token_head, "--", "echo", marker], RAY_AUTH_MODE="disabled"),
        "wrong token": ray_cli(["job", "submit", "--address", token_head, "--", "echo", marker],
                               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),  # fmt: skip
    }
    expected = {"no token": "Missing authentication token", "wrong token": "Invalid authentication token"}
    for case, proc in refused.items():
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{case}: job submission was accepted:\n{output[-2000:]}"
        assert expected[case] in output, f"{case}: no authentication error in:\n{output[-2000:]}"
    listed = ray_cli(["job", "list", "--address", token_head], **user_env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert entry[:20] in listed.stdout and marker not in listed.stdout, "a refused submission left a job behind"


# --------------------------------------------------------------------------------------------
# MLflow: the basic-auth app


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, secrets_dir) -> str:
    with mlflow_server(tmp_path_factory.mktemp("mlflow_auth"), auth_env=cluster_auth.environment(secrets_dir, server=True)) as url:
        yield url


@pytest.fixture()
def as_admin(monkeypatch, secrets_dir) -> None:
    """MLflow's client variables, as the cluster exports them for jobs."""
    env = cluster_auth.environment(secrets_dir)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])


def test_mlflow_logs_with_credentials_and_refuses_requests_without(auth_server, as_admin, secrets_dir):
    client = MlflowClient(tracking_uri=auth_server)
    experiment_id = client.create_experiment(f"auth-{secrets.token_hex(3)}")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "PQ", 42.0, step=1)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "PQ")] == [42.0]

    api = f"{auth_server}/api/2.0/mlflow"
    user, _ = cluster_auth.read_admin(secrets_dir)
    for auth in (None, (user, "not-the-password")):
        create = requests.post(f"{api}/runs/create", json={"experiment_id": experiment_id}, auth=auth, timeout=30)
        assert create.status_code == 401, (auth, create.status_code, create.text[:300])
        metric = {"run_id": run.info.run_id, "key": "intruder", "value": 1.0, "timestamp": 0, "step": 0}
        log = requests.post(f"{api}/runs/log-metric", json=metric, auth=auth, timeout=30)
        assert log.status_code == 401, (auth, log.status_code, log.text[:300])
    # nothing was written
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run.info.run_id]
    assert client.get_metric_history(run.info.run_id, "intruder") == []


def test_a_new_user_reads_others_runs_but_cannot_write_them(auth_server, as_admin):
    """What docs/SCALING.md says of an added user (cluster_auth.DEFAULT_PERMISSION = READ)."""
    from mlflow.server import get_app_client

    name, password = f"reader-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    get_app_client("basic-auth", tracking_uri=auth_server).create_user(name, password)
    admin = MlflowClient(tracking_uri=auth_server)
    run = admin.create_run(admin.create_experiment(f"owned-{secrets.token_hex(3)}"))

    api = f"{auth_server}/api/2.0/mlflow"
    read = requests.get(f"{api}/runs/get", params={"run_id": run.info.run_id}, auth=(name, password), timeout=30)
    assert read.status_code == 200, read.text[:300]
    metric = {"run_id": run.info.run_id, "key": "PQ", "value": 1.0, "timestamp": 0, "step": 0}
    write = requests.post(f"{api}/runs/log-metric", json=metric, auth=(name, password), timeout=30)
    assert write.status_code == 403, (write.status_code, write.text[:300])
    assert admin.get_metric_history(run.info.run_id, "PQ") == []
