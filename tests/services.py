"""Real services for the tests that claim Ray job submission and an MLflow server work.

Each service starts once per test session, in its own process group (so it can be stopped as a
whole, and never with ``ray stop``, which would end every Ray process on the machine), on free
ports of 127.0.0.1, and is stopped by that group when the session ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from p2m_core.tracking.schema_cache import seed_new_store

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # children that ignored SIGTERM
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        return


@contextmanager
def running(
    cmd: list[str], log: Path, health_url: str, timeout: float, env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[None]:
    """Start ``cmd`` in a new process group (output to ``log``), wait for ``health_url`` (sent
    with ``headers``), and stop the whole group on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(health_url, process, log, timeout, headers)
        yield
    finally:
        stop_group(process)


class MlflowServer:
    """``mlflow server`` with a sqlite backend and proxied artifacts under ``folder``, on a fixed
    free port, that a test can :meth:`stop` and :meth:`start` again on the same port and store:
    a real outage, seen by clients as a refused connection.

    ``auth_env``: run MLflow's basic-auth app with these variables (``MLFLOW_AUTH_CONFIG_PATH``,
    ``MLFLOW_FLASK_SERVER_SECRET_KEY``: :func:`ray_jobs.cluster_auth.environment` with
    ``server=True``), as ``cluster.yaml`` runs it. Its ``/health`` answers without a login.
    """

    def __init__(self, folder: Path, auth_env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        seed_new_store(f"sqlite:///{folder / 'mlflow.db'}")  # the cached empty schema: no 1.6 s of migrations per server
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / "mlflow_server.log"
        self.cmd = [
            str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        self.env = None
        if auth_env is not None:
            self.cmd += ["--app-name", "basic-auth"]
            self.env = {**os.environ, **auth_env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        """Start the server (its output appended to ``log``) and wait for ``/health``."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        try:
            wait_for(f"{self.url}/health", self.process, self.log, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server's whole process group (a no-op when it is not running)."""
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@contextmanager
def mlflow_server(folder: Path, auth_env: dict[str, str] | None = None) -> Iterator[str]:
    """A started :class:`MlflowServer`; yields its URL and stops it on exit."""
    with restartable_mlflow_server(folder, auth_env) as server:
        yield server.url


@contextmanager
def restartable_mlflow_server(folder: Path, auth_env: dict[str, str] | None = None) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer`, stopped on exit; yields the server itself."""
    server = MlflowServer(folder, auth_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def ray_head(folder: Path, token_path: Path | None = None) -> Iterator[str]:
    """``ray start --head --block`` with the dashboard (job server) on 127.0.0.1; yields its URL.

    The head has its own short temp folder (removed afterwards); `ray start --block` stops every
    process it started when its group gets SIGTERM. Without ``token_path`` it runs with token
    authentication off; with it, in token mode with that token file (``RAY_AUTH_TOKEN_PATH``, as
    ``cluster.yaml`` starts it) and with ``folder`` as its HOME, so nothing reads or writes
    ``~/.ray`` of the user running the tests.
    """
    dashboard = free_port()
    temp_dir = Path("/tmp") / f"p2m-ray-{secrets.token_hex(3)}"
    log = folder / "ray_head.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    headers = None
    if token_path is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), HOME=str(folder))
        env.pop("RAY_AUTH_TOKEN", None)
        headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}  # /api/version needs it
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--object-store-memory=100000000",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--node-ip-address=127.0.0.1", "--port=0", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        # the job agent's HTTP port is 52365 for every Ray node by default: with another cluster
        # on the machine (a test in the other lane), this head's agent could not bind it and
        # every `ray job submit` would answer "No available agent"
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        with running(cmd, log, f"{url}/api/version", timeout=120, env=env, headers=headers):
            yield url
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def processes_under(driver_pid: int, title_prefix: bytes) -> list[int]:
    """PIDs of the processes started (at any depth) under ``driver_pid`` whose title starts with
    ``title_prefix`` (Ray names its actor processes ``ray::<class>.<method>``)."""
    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if not title.startswith(title_prefix):
            continue
        pid = ancestor = int(entry.name)
        while ancestor > 1 and ancestor != driver_pid:
            ancestor = parent(ancestor)
        if ancestor == driver_pid:
            found.append(pid)
    return found


def kill_one_then_finish(driver: subprocess.Popen, ready: Callable[[], bool], title_prefix: bytes, what: str) -> str:
    """SIGKILL one process titled ``title_prefix`` under ``driver`` (started with
    ``start_new_session``) once ``ready()`` holds, then wait for the driver to end; returns its
    stderr. The driver's whole group is killed if anything here fails."""
    try:
        deadline = time.monotonic() + 240
        while True:
            assert driver.poll() is None, f"the command ended before {what} could be killed: {driver.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} to kill appeared in time"
            victims = processes_under(driver.pid, title_prefix) if ready() else []
            if victims:
                os.kill(victims[0], signal.SIGKILL)
                break
            time.sleep(0.2)
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return stderr



#: What Ray's job server answers while a fresh head's job agent is still starting.
NO_AGENT = "No available agent to submit job"


def ray_job_command(cmd: list[str], timeout: float = 420, agent_wait: float = 90, **kwargs) -> subprocess.CompletedProcess:
    """Run a ``ray job ...`` command line, again while the head says its job agent is not up
    yet (a fresh head on a busy machine: Ray asks to retry), for up to ``agent_wait`` s."""
    deadline = time.monotonic() + agent_wait
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if NO_AGENT not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)
