"""Shared fixtures: repository paths and the shared real COCO panoptic sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository beside shared/; P2M_SHARED_DATA points elsewhere when it is not.
SHARED_DATA = Path(os.environ.get("P2M_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_SAMPLE = SHARED_DATA / "coco_panoptic_sample"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The two real COCO val2017 images with panoptic ground truth (``../shared/data``).

    In CI a missing sample is a failure, never a skip: a test that claims real data must run.
    """
    if not (SHARED_SAMPLE / "panoptic.json").is_file():
        message = f"shared COCO panoptic sample missing at {SHARED_SAMPLE}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_SAMPLE

# Since Ray 2.52 a local ray.init() writes ~/.ray/auth_token and turns token auth on, which a
# later `ray start` picks up and `ray job submit` then refuses; every Ray process of the tests
# (in-process clusters, subprocesses, the head they start) runs without it.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.pop("RAY_ADDRESS", None)

# The tests' torch work is small tensors, which run fastest on one intra-op thread; with two
# threads on a 2-core machine shared with Ray workers and servers, a width-8 ResNet-101 forward
# was measured at 3.2 s against 0.03 s on one thread. Subprocesses keep torch's default.
torch.set_num_threads(1)


#: The modules that start Ray clusters, Ray Train runs or servers, in two lanes: under
#: ``pytest -n 2 --dist loadgroup`` (``make test``) each lane runs on one worker, one test after
#: another, and every other test runs on whichever worker is free. So at most two clusters run
#: at once on a 2-core machine, the tests that share a session's head and server
#: (``ray_head_url``, ``mlflow_server_url``) share a lane, and the lanes take about as long as
#: each other (their durations: the ``--durations`` list of a CI run).
CLUSTER_LANES = {
    "lane-a": ("test_tracking_outage", "test_multinode", "test_train_in_trial", "test_gpu_check", "test_cluster",
               "test_auth", "test_own_sweep"),
    "lane-b": ("test_job_lifecycle", "test_services", "test_train_ray", "test_sweep_run"),
}
_LANE_OF = {module: lane for lane, modules in CLUSTER_LANES.items() for module in modules}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the cluster tests in their lanes (:data:`CLUSTER_LANES`), and skip the tests marked
    ``cuda`` on a machine without CUDA. One marker both skips them here and selects them on a
    GPU (``pytest -m cuda``, run by benchmarks/gpu_check.sh), so a CUDA test cannot be left out
    of the GPU check by being marked only with a ``skipif``."""
    for item in items:
        lane = _LANE_OF.get(item.path.stem)
        if lane is not None:
            item.add_marker(pytest.mark.xdist_group(lane))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mlflow_server_url(tmp_path_factory) -> str:
    """A real `mlflow server` (sqlite backend) on 127.0.0.1, shared by the session's tests."""
    from tests.services import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


@pytest.fixture(scope="session")
def ray_head_url(tmp_path_factory) -> str:
    """A real `ray start --head` (with the job server) on 127.0.0.1, shared by the session's tests."""
    from tests.services import ray_head

    with ray_head(tmp_path_factory.mktemp("ray_head")) as url:
        yield url
