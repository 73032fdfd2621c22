"""The in-process Ray cluster of ``ray_jobs.cluster.connect``, started for real.

Each start runs in its own Python process with its own ``HOME``: the tests' environment sets
``RAY_AUTH_MODE`` for every other test (conftest), and a cluster that turned token auth on would
write ``~/.ray/auth_token`` and leave this process in token mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Starts the cluster as the sweep and training commands do, then reports what Ray itself says.
START = """
import json, os
from ray._raylet import AuthenticationMode, get_authentication_mode
from ray_jobs.cluster import connect, shutdown
seconds, attached = connect()
print(json.dumps({"attached": attached, "env": os.environ.get("RAY_AUTH_MODE"),
                  "token": get_authentication_mode() == AuthenticationMode.TOKEN}))
shutdown()
"""


def start_local(home: Path, auth_mode: str | None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    if auth_mode is not None:
        env["RAY_AUTH_MODE"] = auth_mode
    proc = subprocess.run([sys.executable, "-c", START], cwd=home, env=env, capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("auth_mode", [None, "token"])
def test_the_local_cluster_runs_without_token_auth_unless_the_user_asks(tmp_path, auth_mode) -> None:
    state, stderr = start_local(tmp_path, auth_mode)
    assert state["attached"] is False
    if auth_mode is None:  # ours: disabled, no token file, no warning on the console
        assert state == {"attached": False, "env": "disabled", "token": False}
        assert not (tmp_path / ".ray" / "auth_token").exists()
        assert "Token authentication" not in stderr, stderr
    else:  # the user's explicit value wins
        assert state == {"attached": False, "env": "token", "token": True}
        assert (tmp_path / ".ray" / "auth_token").is_file()


# A command that ends through exit_process: an atexit handler and a large buffered stdout.
EXIT = """
import atexit, sys
from ray_jobs.stop import exit_process
atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
sys.stdout.write("x" * 200_000)  # more than one buffer: the tail is lost unless flushed
exit_process(3)
"""


def test_exit_process_keeps_the_exit_status_the_atexit_handlers_and_the_output(tmp_path) -> None:
    marker = tmp_path / "marker.txt"
    proc = subprocess.run([sys.executable, "-c", EXIT, str(marker)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "x" * 200_000
    assert marker.read_text() == "atexit ran"
