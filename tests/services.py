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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
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


def kill_matching(marker: str) -> None:
    """SIGKILL processes whose command line contains ``marker`` (Ray workers and agents that
    moved to process groups of their own)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and proxied artifacts; yields its URL."""
    port = free_port()
    log = folder / "mlflow_server.log"
    cmd = [
        str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process, log, timeout=90)
        yield url
    finally:
        stop_group(process)


@contextmanager
def ray_head(folder: Path) -> Iterator[str]:
    """``ray start --head --block`` with the dashboard (job server) on 127.0.0.1; yields its URL.

    The head has its own short temp folder, which also names its processes for clean-up.
    """
    dashboard = free_port()
    temp_dir = Path("/tmp") / f"p2m-ray-{secrets.token_hex(3)}"
    log = folder / "ray_head.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", "--object-store-memory=100000000",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--node-ip-address=127.0.0.1", "--port=0", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for(f"{url}/api/version", process, log, timeout=120)
        yield url
    finally:
        stop_group(process)
        kill_matching(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
