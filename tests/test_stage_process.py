"""The local executor's child process: it computes what the command would, returns the stage's
own errors, survives being killed, and does not outlive a stopped sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from p2m_core.ablation import run_pseudo_stage
from p2m_core.config import load_config
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from ray_jobs.stage_process import StageProcess, StageProcessLost

REPO = Path(__file__).resolve().parents[1]
SMALL = ["pseudo.mask_stride=1", "pseudo.graph_stride=2", "pseudo.point_dilation=3", "ablation.overlays=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage-data")
    generate_synthetic(root, num_train=0, num_val=3, size=64, seed=5, progress=False)
    return root


@pytest.fixture()
def stages():
    process = StageProcess()
    yield process
    process.kill()


def cfg_for(root: Path, *overrides: str):
    return load_config(REPO / "experiments" / "ablation_synthetic.yaml", [f"data.root={root}", *SMALL, *overrides])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "metrics.json"}


def test_the_child_computes_what_the_command_would(tmp_path, data, stages):
    cfg = cfg_for(data)
    here = run_pseudo_stage(cfg, tmp_path / "here")
    there = stages.run(cfg, tmp_path / "there")
    assert stages.pid is not None and stages.pid != os.getpid()
    assert there["metrics"] == here["metrics"] and there["diagnostics"] == here["diagnostics"]
    assert there["config_hash"] == here["config_hash"] and there["counts"] == here["counts"]
    assert files(tmp_path / "there") == files(tmp_path / "here")  # the overlays and the resolved config


def test_a_failing_stage_raises_its_own_error_in_the_command(tmp_path, stages):
    cfg = cfg_for(tmp_path / "no-such-data")
    with pytest.raises(P2MInputError) as in_process:
        run_pseudo_stage(cfg, tmp_path / "here")
    with pytest.raises(P2MInputError) as in_child:
        stages.run(cfg, tmp_path / "there")
    assert str(in_child.value) == str(in_process.value)
    assert any("raised in the stage process" in note for note in in_child.value.__notes__)


def test_a_lost_child_fails_its_trial_and_the_next_trial_gets_a_new_one(tmp_path, data, stages):
    cfg = cfg_for(data, "ablation.overlays=0")
    first = stages.run(cfg, tmp_path / "a")
    lost = stages.pid
    os.kill(lost, signal.SIGKILL)
    with pytest.raises(StageProcessLost, match=r"exit code -9"):
        stages.run(cfg, tmp_path / "b")
    assert stages.pid is None
    again = stages.run(cfg, tmp_path / "c")
    assert stages.pid not in (None, lost) and again["metrics"] == first["metrics"]


def processes_with(marker: str) -> list[int]:
    """Ids of the running processes whose environment holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_stopped_local_sweep_leaves_no_stage_computing(tmp_path, data):
    """SIGTERM mid-sweep: the sweep run and the trial in progress end KILLED with the reason (the
    trials write to the store from a thread, so the handler never waits on a write it
    interrupted), and the stage process ends with the command."""
    spec = {"name": "stopped", "base": str(REPO / "experiments" / "ablation_synthetic.yaml"), "stage": "pseudo",
            "split": "val", "grid": {"pseudo.k_scheme": ["equal_division", "nearest_point", "nearest_centroid"]},
            "seeds": [0, 1, 2, 3, 4, 5], "set": {"data.root": str(data), "ablation.overlays": 0},
            "mlflow_experiment": "stopped"}  # fmt: skip
    (tmp_path / "stopped.yaml").write_text(yaml.safe_dump(spec))
    marker = f"P2M_TEST_MARK=stage-{uuid.uuid4().hex}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.sweep", str(tmp_path / "stopped.yaml"), "--executor", "local"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in proc.stderr:
            if "1/18 done" in line:
                break
        assert len(processes_with(marker)) >= 2  # the command, its stage process (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("stopped").experiment_id])
    assert proc.returncode == 128 + signal.SIGTERM and "did not answer" not in err, err[-3000:]
    ended = [r for r in runs if r.info.status != "FINISHED"]
    assert {r.data.tags.get("p2m.kind") for r in ended} >= {"sweep"}
    assert {(r.info.status, r.data.tags.get("p2m.end_reason")) for r in ended} == {("KILLED", "stopped: SIGTERM (ray job stop?)")}
