"""Several Ray nodes for real: Ray's own multi-node test cluster (``ray.cluster_utils.Cluster``)
on this machine, a sqlite MLflow store that every node reaches (as a server would be reached).

The head has no CPUs, so no trial or training worker runs there (the launcher's driver, the Ray
Train controller and Tune's scheduler do); each worker node has one CPU (and a custom resource
named after it, so ``ray status`` shows which is which). A training worker and a pseudo trial
each ask for one CPU, which pins them one per node (the launchers ask for CPUs only); the nodes they ran on are read back from MLflow (tags ``p2m.worker_nodes`` and
``p2m.ray_node``). A node is lost with ``Cluster.remove_node`` (its raylet and Ray's processes
killed), its workers frozen just before (:func:`lose`), as when a machine goes away.

- a 2-worker training run: its workers sit on the two worker nodes, both write their part of
  every checkpoint into ``train.storage_path``, and MLflow holds one run with each step once
  (rank 0 logs; a second writer would double the steps);
- node loss in training: the node of rank 0 (the MLflow writer) is lost after two
  checkpoints and a replacement joins; Ray Train restarts the group (``train.max_failures``) on
  the surviving and the new node from the last checkpoint, and MLflow holds every step once;
- node loss in a sweep: trials spread over two nodes; one is lost while a trial computes
  there; Tune runs that trial again on the other node, no config is computed twice, and the
  sweep's table is complete.

All three are ``slow`` (each starts its own cluster: ~10 s before any work).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from p2m_core.data.synthetic import generate_synthetic
from p2m_core.tracking.claims import EARLIER_ATTEMPT
from p2m_core.tracking.training import STEP_KEY
from ray_jobs.train import main as train_main
from tests.services import free_port
from tests.test_sweep_run import runs_of, write_spec
from tests.test_train_ray import CONFIG, only_run, settings, shards, steps_of

pytestmark = pytest.mark.slow

#: Environment of the cluster's processes (each node inherits this process's environment when
#: it starts): what ray_jobs.cluster.connect sets for an in-process cluster. Claims keep their
#: minute of staleness: a lost trial's claim is expired by Tune's next attempt of it, at once
#: (docs/TRACKING.md, "Claims").
NODE_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "OMP_WAIT_POLICY": "PASSIVE"}


@contextmanager
def multinode_cluster(monkeypatch: pytest.MonkeyPatch, workers: Sequence[str]) -> Iterator[tuple]:
    """A head with no CPUs and one node per name in ``workers`` (1 CPU, custom resource
    ``{name: 1}``); ``RAY_ADDRESS`` names the cluster, so launchers attach to it. Yields the
    cluster and ``{name: node}``. Its files (and Ray's ``ray_current_cluster`` address file)
    live in a private temporary folder, not in the machine's shared /tmp/ray."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="p2m-mn-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", temp)
    for key, value in NODE_ENV.items():
        monkeypatch.setenv(key, value)
    cluster = None
    try:
        # the head's minimal dashboard process would take Ray's default port 8265 (another head's)
        head = {"num_cpus": 0, "include_dashboard": False, "dashboard_port": free_port()}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1}) for name in workers}
        cluster.wait_for_nodes()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        yield cluster, nodes
    finally:
        ray.shutdown()  # this process's driver, when a launcher attached it
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode_data")
    generate_synthetic(root, num_train=4, num_val=2, size=64, seed=3, progress=False, num_test=2)
    return root


def lose(cluster, node) -> None:
    """Lose ``node`` as when its machine goes away: everything on it stops at once. Its workers
    (children of its raylet) are frozen first: ``Cluster.remove_node`` kills the raylet, and a
    worker notices that only after a moment, long enough to finish a short trial or reach the
    next checkpoint."""
    import signal

    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    workers = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == raylet:
                workers.append(int(entry.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    cluster.remove_node(node, allow_graceful=False)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def node_of(nodes: dict, node_id: str) -> str:
    """The name of the cluster node with Ray id ``node_id`` ('?' for none of them)."""
    return next((name for name, node in nodes.items() if node.node_id == node_id), "?")


def test_two_workers_train_on_two_nodes_into_shared_storage(tmp_path, data_root, monkeypatch) -> None:
    iters = 6
    storage = tmp_path / "shared" / "ray"  # the "shared mount" every node writes its checkpoints to
    args = [str(CONFIG), "--num-workers", "2", "--cpus-per-worker", "1", "--quiet",
            *settings(data_root, tmp_path, f"train.iters={iters}", "train.checkpoint_every=3", "train.eval_every=6",
                      "train.batch_size=2", f"train.storage_path={storage}")]  # fmt: skip
    with multinode_cluster(monkeypatch, ["node_a", "node_b"]) as (_, nodes):
        assert train_main(args) == 0
    client, run = only_run(tmp_path)  # one MLflow run: the workers never open their own
    assert run.info.status == "FINISHED"
    workers = run.data.tags["p2m.worker_nodes"].split(",")
    # one worker on each worker node (rank order is Ray's choice), none on the head
    assert sorted(node_of(nodes, n) for n in workers) == ["node_a", "node_b"], workers
    # only rank 0 logs: a second writer would put each step in twice
    for key in (STEP_KEY, "lr", "pseudo_share"):
        assert steps_of(client, run.info.run_id, key) == list(range(1, iters + 1)), key
    assert steps_of(client, run.info.run_id, "PQ") == [iters] and steps_of(client, run.info.run_id, "test/PQ") == [iters]
    # the checkpoints are in train.storage_path, each with the part of both workers
    checkpoints = Path(run.data.tags["p2m.checkpoint.ray"])
    assert checkpoints.parent == storage
    seen = shards(checkpoints)
    assert sorted(seen) == list(range(1, iters + 1)) and all(sorted(by_rank) == [0, 1] for by_rank in seen.values())
    assert Path(run.data.tags["p2m.checkpoint.model"]).is_file()


def launch(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """Start a launcher as users run it, attached to the cluster (``RAY_ADDRESS``); its output
    (the workers' lines too, forwarded by Ray) goes to ``<cwd>/launcher.log``, not to a pipe
    that nobody drains while the test watches."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    with open(cwd / "launcher.log", "w") as log:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(driver: subprocess.Popen, cwd: Path, timeout: float) -> str:
    """Wait for the launcher (killed if it outlives ``timeout``); its whole output."""
    try:
        driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return (cwd / "launcher.log").read_text()


def test_a_lost_node_is_replaced_and_training_resumes_from_its_checkpoint(tmp_path, data_root, monkeypatch) -> None:
    iters = 24
    storage = tmp_path / "shared" / "ray"
    cmd = [sys.executable, "-m", "ray_jobs.train", str(CONFIG), "--num-workers", "2", "--cpus-per-worker", "1",
           *settings(data_root, tmp_path, f"train.iters={iters}", "train.checkpoint_every=4", "train.eval_every=24",
                     "train.batch_size=2", "train.log_every=2", "train.max_failures=2", f"train.storage_path={storage}")]  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with multinode_cluster(monkeypatch, ["node_a", "node_b"]) as (cluster, nodes):
        driver = launch(cmd, tmp_path)
        try:
            deadline = time.monotonic() + 300
            # two checkpoints on disk: the first is surely registered with Ray (the newest may
            # still be in its upload)
            while len(list(storage.glob("*/checkpoint_*/state.pt"))) < 2:
                assert driver.poll() is None, "training ended before a node was lost: " + finish(driver, tmp_path, 0)[-4000:]
                assert time.monotonic() < deadline, "no checkpoint appeared in time"
                time.sleep(0.2)
            run = client.search_runs([client.get_experiment_by_name("p2m-train").experiment_id])[0]
            before = run.data.tags["p2m.worker_nodes"].split(",")
            lost = node_of(nodes, before[0])  # rank 0's node: the MLflow writer goes with it
            lose(cluster, nodes[lost])
            # what the lost writer logged (the new group cannot start before node_c joins)
            logged = max(m.step for m in client.get_metric_history(run.info.run_id, STEP_KEY))
            nodes["node_c"] = cluster.add_node(num_cpus=1, resources={"node_c": 1})
        finally:
            output = finish(driver, tmp_path, 400)
    assert driver.returncode == 0, output[-4000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert sorted(node_of(nodes, n) for n in before) == ["node_a", "node_b"]
    survivor = "node_b" if lost == "node_a" else "node_a"
    # the restarted group: on the surviving node and the replacement
    assert sorted(node_of(nodes, n) for n in run.data.tags["p2m.worker_nodes"].split(",")) == sorted([survivor, "node_c"])
    # resumed once, from a checkpoint (not from scratch); rank 0 flushes its steps before each
    # checkpoint, so that checkpoint's steps were all logged
    resumed_at = [int(i) for i in run.data.tags["p2m.resumed_at"].split(",")]
    assert len(resumed_at) == 1 and resumed_at[0] % 4 == 0 and 4 <= resumed_at[0] <= logged < iters, (resumed_at, logged)
    # steps between that checkpoint and the loss were computed twice; each is logged once
    for key in (STEP_KEY, "lr"):
        assert steps_of(client, run.info.run_id, key) == list(range(1, iters + 1)), key
    assert steps_of(client, run.info.run_id, "PQ") == [iters] and steps_of(client, run.info.run_id, "test/PQ") == [iters]
    assert Path(run.data.tags["p2m.checkpoint.model"]).is_file()


def test_a_sweep_spread_over_nodes_reruns_the_trials_of_a_lost_node(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    # trials long enough (~4 s) to be caught computing: the graph at full resolution (stride 1)
    generate_synthetic(data, num_train=0, num_val=64, size=128, seed=2, progress=False)
    spec = write_spec(tmp_path, "table7", {"pseudo.assignment": ["mc", "ot"]}, [0, 1, 2], data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs_of(uri, "trial") == []  # the store's schema, created before the driver and this test poll it
    cmd = [sys.executable, "-m", "ray_jobs.sweep", str(spec), "--set", "pseudo.graph_stride=1", "--storage-path", str(tmp_path / "tune")]
    with multinode_cluster(monkeypatch, ["node_a", "node_b"]) as (cluster, nodes):
        driver = launch(cmd, tmp_path)
        try:
            deadline = time.monotonic() + 300
            while True:  # one trial finished; one on node_b claimed its config, started at most 1.5 s ago
                assert driver.poll() is None, "the sweep ended before a node was lost: " + finish(driver, tmp_path, 0)[-4000:]
                assert time.monotonic() < deadline, "no trial computed on node_b in time"
                trials = runs_of(uri, "trial")
                computing = [r for r in trials if r.info.status == "RUNNING" and r.data.tags.get("p2m.claim", "").isdigit()
                             and node_of(nodes, r.data.tags["p2m.ray_node"]) == "node_b"]  # fmt: skip
                if any(r.info.status == "FINISHED" for r in trials) and any(
                        time.time() - r.info.start_time / 1000 < 1.5 for r in computing):  # fmt: skip
                    break
                time.sleep(0.2)
            lose(cluster, nodes["node_b"])
        finally:
            output = finish(driver, tmp_path, 400)
    assert driver.returncode == 0, output[-4000:]
    assert "running it again" in output, output[-4000:]  # the driver said so
    client = MlflowClient(tracking_uri=uri)
    trials = runs_of(uri, "trial")
    finished = [r for r in trials if r.info.status == "FINISHED"]
    # each config computed to the end exactly once; the table is complete
    assert sorted(r.data.tags["p2m.config_hash"] for r in finished) == sorted({r.data.tags["p2m.config_hash"] for r in finished})
    assert len(finished) == 6 and all("PQ" in r.data.metrics for r in finished)
    # the lost trials: their runs were ended KILLED by Tune's next attempt of the same trial (not
    # a minute later, when their heartbeat went stale), and each config was computed again on the
    # other node
    by_id = {r.info.run_id: r for r in trials}
    lost = {r.info.run_id: r.data.tags["p2m.config_hash"] for r in computing if by_id[r.info.run_id].info.status != "FINISHED"}
    assert lost, "the trials computing on node_b finished before it was lost"
    for run_id, config_hash in lost.items():
        assert by_id[run_id].info.status == "KILLED" and by_id[run_id].data.tags["p2m.end_reason"] == f"claim expired ({EARLIER_ATTEMPT})"
        redone = next(r for r in finished if r.data.tags["p2m.config_hash"] == config_hash)
        assert node_of(nodes, redone.data.tags["p2m.ray_node"]) == "node_a"
    assert len(trials) == 6 + len(lost)  # no other run: nothing else was lost or computed twice
    # the trials ran on both worker nodes, none on the head
    assert {node_of(nodes, r.data.tags["p2m.ray_node"]) for r in trials} == {"node_a", "node_b"}
    sweep = runs_of(uri, "sweep")[0]
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["trials_finished"] == 6
    assert sweep.data.metrics["trials_failed"] == 0
    assert "table.md" in {item.path for item in client.list_artifacts(sweep.info.run_id)}
