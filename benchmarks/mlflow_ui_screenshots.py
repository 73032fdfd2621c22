"""Screenshots of the MLflow UI as users open it: each experiment's runs table, a sweep's comparison.

    python benchmarks/mlflow_ui_screenshots.py --store sqlite:////abs/demo_out/mlflow.db --out shots/
        [--experiment p2m-pseudo ...] [--port 5055] [--chromium chromium] [--budget-ms 20000]

Starts ``mlflow ui`` on the store (127.0.0.1, its own process group), waits until ``/health``
answers, and takes with headless Chromium (a fresh profile per page, so no browser setting
carries over):

- ``<experiment>_runs.png``: the runs table in "Model training" mode
  (:func:`p2m_core.tracking.ui.experiment_url`);
- ``<experiment>_<spec>_compare.png``: the comparison page of the latest sweep's trial runs
  (:func:`p2m_core.tracking.ui.compare_runs_url`).

The server is stopped however the script ends (``finally`` and SIGTERM/SIGINT). Not part of the
test suite: it needs Chromium (``apt-get install -y chromium``) and takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from p2m_core.tracking import tags as T  # noqa: E402
from p2m_core.tracking.ui import compare_runs_url, experiment_url  # noqa: E402

#: Seconds to wait for ``mlflow ui`` to answer ``/health`` (~10 s with one worker on an idle
#: machine; with the default four on 2 busy cores the workers kept dying and restarting).
START_TIMEOUT_S = 240
#: Server worker processes: a screenshot session sends one page's requests at a time.
UI_WORKERS = 1
WINDOW = "1600,1000"


def start_ui(store: str, port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow ui`` on ``store`` at 127.0.0.1:``port`` in a new session (its workers die with it)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    program = str(mlflow) if mlflow.is_file() else "mlflow"
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
    return subprocess.Popen([program, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(UI_WORKERS)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop_ui(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


def wait_healthy(base: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {server.returncode}; its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow ui did not answer {base}/health within {START_TIMEOUT_S} s; its log: {log_path}")


def screenshot(chromium: str, url: str, path: Path, budget_ms: int) -> None:
    """One page, rendered in a fresh headless profile for up to ``budget_ms`` of virtual time."""
    with tempfile.TemporaryDirectory(prefix="p2m-chromium-") as profile:
        cmd = [chromium, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={WINDOW}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]  # fmt: skip
        if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
            cmd.insert(1, "--no-sandbox")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium could not take {url}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    print(f"wrote {path}  ({url})", file=sys.stderr)


def pages(store: str, names: Sequence[str], base: str) -> list[tuple[str, str]]:
    """``(file stem, URL)`` of every page to take from the UI at ``base``: each experiment's
    runs table and its latest sweep's comparison."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiments = [client.get_experiment_by_name(n) for n in names] if names else client.search_experiments()
    if any(e is None for e in experiments):
        missing = [n for n, e in zip(names, experiments) if e is None]
        raise SystemExit(f"error: {store} has no experiment {', '.join(map(repr, missing))}")
    found = []
    for experiment in experiments:
        eid = experiment.experiment_id
        sweeps = client.search_runs([eid], f"tags.`{T.KIND}` = '{T.KIND_SWEEP}'", order_by=["attributes.start_time DESC"],
                                    max_results=1)  # fmt: skip
        if not sweeps and not names:  # e.g. the "Default" experiment
            continue
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment.name)
        found.append((f"{stem}_runs", experiment_url(base, eid)))
        if sweeps:
            sweep = sweeps[0]
            trials = client.search_runs([eid], f"tags.`{T.PARENT_RUN_ID}` = '{sweep.info.run_id}'", max_results=100)
            spec = re.sub(r"[^A-Za-z0-9_.-]+", "-", sweep.data.tags.get(T.SPEC, "sweep"))
            if trials:
                found.append((f"{stem}_{spec}_compare", compare_runs_url(base, eid, [r.info.run_id for r in trials])))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the MLflow UI of a store (headless Chromium).")
    parser.add_argument("--store", required=True, help="backend store URI (what `mlflow ui --backend-store-uri` takes), e.g. sqlite:////abs/demo_out/mlflow.db")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    parser.add_argument("--experiment", action="append", default=[], help="experiment name (default: every experiment with a sweep)")
    parser.add_argument("--port", type=int, default=5055, help="port of the temporary `mlflow ui` (default %(default)s)")
    parser.add_argument("--chromium", default="chromium", help="Chromium executable (default %(default)s)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time Chromium gives each page to render")
    args = parser.parse_args(argv)
    if shutil.which(args.chromium) is None:
        print(f"error: {args.chromium!r} not found; install it (apt-get install -y chromium) or pass --chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    shots = pages(args.store, args.experiment, base)  # the links a server at `base` serves
    log_path = args.out / "mlflow_ui.log"
    server = start_ui(args.store, args.port, log_path)

    def stop(signum: int, _frame: object) -> None:
        stop_ui(server)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_healthy(base, server, log_path)
        for stem, url in shots:
            screenshot(args.chromium, url, args.out / f"{stem}.png", args.budget_ms)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_ui(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
