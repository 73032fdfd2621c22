"""A tracking server that goes away: a real ``mlflow server`` stopped and started again on the
same port and store (tests/services.py), real Ray.

- the retry logic: a writer keeps steps queued while the server is down and sends each once
  when it is back, also when part of the queue reached the store before the connection broke;
  a store unreachable past ``tracking.outage_limit_s`` fails with an error naming it;
- a training run whose server is down for :data:`OUTAGE_S` mid-run finishes with every step
  and evaluation in MLflow once (the issue's 30 s outage, shortened to keep the test short:
  what matters is that steps are queued meanwhile and the checkpoint waits);
- a pseudo sweep whose server goes down mid-sweep finishes every trial, one run each;
- an outage past the limit fails the run with the error, and the same command run again once
  the server is back resumes from the checkpoint and logs every step once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from p2m_core.config import load_config
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.tracking import store
from p2m_core.tracking.outage import CLIENT_RETRIES, TrackingOutageError
from p2m_core.tracking.training import STEP_KEY, TrainingLog, open_training_run
from ray_jobs.train import main as train_main
from tests.services import MlflowServer, free_port, restartable_mlflow_server

REPO = Path(__file__).resolve().parents[1]
#: Seconds the server stays down in the training and sweep tests (plus its restart, ~5-10 s).
OUTAGE_S = 12.0


@pytest.fixture(autouse=True)
def short_client_retries(monkeypatch) -> None:
    """This process's MLflow calls retry briefly, as the workers' do."""
    for name, value in CLIENT_RETRIES.items():
        monkeypatch.setenv(name, value)


@pytest.fixture()
def server(tmp_path) -> MlflowServer:
    with restartable_mlflow_server(tmp_path / "server") as running:
        yield running


def steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_a_writer_queues_through_an_outage_and_logs_each_step_once(tmp_path, server) -> None:
    experiment = store.ensure_experiment(server.url, "outage-tests")
    run_id, _ = open_training_run(server.url, experiment, load_config(None, []), {}, "train-a")
    writer = TrainingLog(server.url, run_id, flush_every=2, outage_limit_s=120)
    for i in range(1, 5):
        writer.step(i, {STEP_KEY: 1.0 / i, "lr": 0.1})
    server.stop()
    started = time.monotonic()
    for i in range(5, 9):  # training goes on: the failed flushes keep the steps
        writer.step(i, {STEP_KEY: 1.0 / i, "lr": 0.1})
    assert time.monotonic() - started < 15 and writer.queued_steps() == 4 and writer.outage.down
    server.start()
    # step 5 reached the store before the connection broke (another client stands in for that batch)
    MlflowClient(tracking_uri=server.url).log_batch(run_id, metrics=[Metric("lr", 0.1, 1, 5), Metric(STEP_KEY, 0.2, 1, 5)])
    writer.flush()
    assert not writer.outage.down and writer.queued_steps() == 0
    assert steps(server.url, run_id, STEP_KEY) == list(range(1, 9))
    assert steps(server.url, run_id, "lr") == list(range(1, 9))


def test_a_store_unreachable_past_the_limit_fails_naming_it() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingOutageError) as info:
        TrainingLog(uri, "0" * 32, outage_limit_s=3)
    assert 3 <= time.monotonic() - started < 30
    message = str(info.value)
    assert uri in message and "tracking.outage_limit_s = 3 s" in message and "re-run the same command" in message


@contextmanager
def down_for(server: MlflowServer, seconds: float):
    """The server stopped now and started again ``seconds`` later, while the block runs."""
    server.stop()
    restart = threading.Timer(seconds, server.start)
    restart.start()
    try:
        yield
    finally:
        restart.join()


def test_a_trial_claims_and_gives_up_its_hash_through_an_outage(tmp_path, server) -> None:
    """The claim's reads and writes wait for the server like the trial's others (a sweep in CI
    failed a trial on the claim's first write while the server restarted)."""
    from p2m_core.tracking import tags as T
    from p2m_core.tracking.claims import claim, claim_tags
    from p2m_core.tracking.trial import TrialRun

    cfg = load_config(None, ["tracking.outage_limit_s=120"])
    experiment = store.ensure_experiment(server.url, "outage-claims")
    tags = {**claim_tags(), T.STAGE: "pseudo", T.HASH_VERSION: "1", T.CONFIG_HASH: "abc"}
    first = TrialRun(server.url, experiment, "p" * 32, "first", tags, cfg)
    with down_for(server, 3.0):
        outcome = claim(server.url, experiment, first.run_id, "abc", "pseudo", 1, first.outage)
    assert outcome.mine and outcome.winner == first.run_id
    first.finish()
    second = TrialRun(server.url, experiment, "p" * 32, "second", tags, cfg)
    with down_for(server, 3.0):
        outcome = claim(server.url, experiment, second.run_id, "abc", "pseudo", 1, second.outage)
        second.abandon(outcome.winner)
    assert not outcome.mine and outcome.winner == first.run_id
    gone = MlflowClient(tracking_uri=server.url).get_run(second.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags[T.CLAIMED_BY] == first.run_id


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outage_data")
    generate_synthetic(root, num_train=4, num_val=2, size=64, seed=3, progress=False, num_test=2)
    return root


def train_args(root: Path, folder: Path, uri: str, *extra: str) -> list[str]:
    settings = [f"data.root={root}", f"tracking.tracking_uri={uri}", f"tracking.output_dir={folder / 'runs'}",
                "train.batch_size=4", "train.log_every=2", "train.overlays=1", "data.flip_prob=0.0", *extra]  # fmt: skip
    return [str(REPO / "experiments" / "train_tiny.yaml"), "--quiet", *[x for s in settings for x in ("--set", s)]]


def the_run(uri: str, experiment: str = "p2m-train"):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def outage_after(server: MlflowServer, step: int, down_s: float | None, window: dict[str, float]) -> threading.Thread:
    """A thread that stops the server once a run of p2m-train has ``step``, and starts it again
    ``down_s`` later (None: leaves it down); ``window`` gets the wall times (ms) of both."""

    def watch() -> None:
        client = MlflowClient(tracking_uri=server.url)
        while True:
            experiment = client.get_experiment_by_name("p2m-train")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and max((m.step for m in client.get_metric_history(runs[0].info.run_id, STEP_KEY)), default=0) >= step:
                break
            time.sleep(0.3)
        server.stop()
        window["stopped"] = time.time() * 1000
        if down_s is not None:
            time.sleep(down_s)
            server.start()
            window["started"] = time.time() * 1000

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_training_goes_on_through_an_outage_and_logs_every_step_once(tmp_path, server, data_root) -> None:
    iters = 60
    window: dict[str, float] = {}
    watcher = outage_after(server, 10, OUTAGE_S, window)
    code = train_main(train_args(data_root, tmp_path, server.url, f"train.iters={iters}", "train.eval_every=30"))
    watcher.join(timeout=120)
    assert code == 0 and "started" in window, window
    client, run = the_run(server.url)
    assert run.info.status == "FINISHED"
    assert steps(server.url, run.info.run_id, STEP_KEY) == list(range(1, iters + 1))
    assert steps(server.url, run.info.run_id, "lr") == list(range(1, iters + 1))
    assert steps(server.url, run.info.run_id, "PQ") == [30, iters]
    assert steps(server.url, run.info.run_id, "test/PQ") == [iters]
    # steps were computed (and queued) while the server was down
    during = [m.step for m in client.get_metric_history(run.info.run_id, STEP_KEY)
              if window["stopped"] < m.timestamp < window["started"]]  # fmt: skip
    assert len(during) >= 3, window


@pytest.mark.slow
def test_an_outage_past_the_limit_fails_the_run_and_the_same_command_resumes_it(tmp_path, server, data_root, capsys) -> None:
    iters = 40
    args = train_args(data_root, tmp_path, server.url, f"train.iters={iters}", "train.checkpoint_every=10",
                      "train.eval_every=40", "train.max_failures=0", "tracking.outage_limit_s=5")  # fmt: skip
    window: dict[str, float] = {}
    watcher = outage_after(server, 12, None, window)
    started = time.monotonic()
    assert train_main(args) == 1
    watcher.join(timeout=10)
    assert time.monotonic() - started < 300
    err = capsys.readouterr().err
    assert f"MLflow tracking server {server.url} unreachable for" in err and "tracking.outage_limit_s = 5 s" in err, err[-3000:]
    assert "re-run the same command" in err
    server.start()
    assert train_main(args) == 0
    client, run = the_run(server.url)
    assert run.info.status == "FINISHED" and run.data.tags["p2m.resumed"] == "1"
    assert int(run.data.tags["p2m.resumed_at"]) >= 10  # from a checkpoint, not from iteration 0
    assert steps(server.url, run.info.run_id, STEP_KEY) == list(range(1, iters + 1))
    assert steps(server.url, run.info.run_id, "PQ") == [iters]


@pytest.mark.slow
def test_a_sweep_rides_out_an_outage_with_one_run_per_trial(tmp_path, server) -> None:
    data = tmp_path / "data"
    generate_synthetic(data, num_train=0, num_val=3, size=64, seed=2, progress=False)
    spec = {"name": "table7", "base": str(REPO / "experiments" / "ablation_synthetic.yaml"), "stage": "pseudo",
            "split": "val", "grid": {"pseudo.assignment": ["mc", "ot"]}, "seeds": [0, 1, 2], "set": {"data.root": str(data)},
            "resources": {"cpu": 1}, "mlflow_experiment": "outage-sweep"}  # fmt: skip
    (tmp_path / "table7.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "ray_jobs.sweep", str(tmp_path / "table7.yaml"), "--max-concurrent", "1",
           "--set", "ablation.overlays=1", "--set", f"tracking.tracking_uri={server.url}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(tracking_uri=server.url)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            experiment = client.get_experiment_by_name("outage-sweep")
            query = "tags.`p2m.kind` = 'trial' and attributes.status = 'FINISHED'"
            if experiment and client.search_runs([experiment.experiment_id], query):
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the sweep ended before the outage"
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    experiment = client.get_experiment_by_name("outage-sweep").experiment_id
    trials = client.search_runs([experiment], "tags.`p2m.kind` = 'trial'")
    assert len(trials) == 6 and {r.info.status for r in trials} == {"FINISHED"}
    assert len({r.data.tags["p2m.config_hash"] for r in trials}) == 6  # one run per trial
    assert all("PQ" in r.data.metrics for r in trials)
    sweep = client.search_runs([experiment], "tags.`p2m.kind` = 'sweep'")[0]
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["trials_finished"] == 6
    assert "table.md" in {item.path for item in client.list_artifacts(sweep.info.run_id)}  # the table, complete
