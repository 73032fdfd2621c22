"""Start Ray in this process, or attach to a running cluster.

``RAY_ADDRESS`` set (``ray job submit`` sets it for its entrypoint; a user may set it to a
cluster's address) means attach. Otherwise a private single-node cluster is started in this
process with ``address="local"``: a plain ``ray.init()`` would attach to whatever cluster a
stale ``/tmp/ray/ray_current_cluster`` names, and fails outright when that cluster is gone.

The private cluster runs without token authentication (:data:`LOCAL_AUTH_MODE`) unless
``RAY_AUTH_MODE`` is set: see :func:`connect`. An attached cluster authenticates as its owner
set it up (``RAY_AUTH_MODE`` and the token in the user's environment); nothing is changed there.
"""

from __future__ import annotations

import logging
import os
import time

from p2m_core.errors import P2MInputError
from ray_jobs.stop import reinstall

log = logging.getLogger(__name__)

#: Seconds between the Ray Train controller's polls of its workers. Its default (2 s) makes every
#: ``ray.train.report`` (each training checkpoint) wait that long. Set before Ray starts, so the
#: in-process cluster's workers inherit it; ``runtime_env.yaml`` sets it for jobs.
TRAIN_HEALTH_CHECK_INTERVAL_S = "0.2"
#: OpenMP threads of the workers sleep rather than spin between parallel regions. With spinning
#: (libgomp's default) a worker whose cores are shared with other processes collapses: a tiny
#: training step measured 23.8 s instead of 0.45 s with 2 threads on 2 busy cores (BENCHMARKS.md).
OMP_WAIT_POLICY = "PASSIVE"
#: Object store of an in-process cluster. Trials exchange only small configs and metrics, and
#: Ray's default (30% of RAM, in /dev/shm) fails on small machines and containers.
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024
#: ``RAY_AUTH_MODE`` of the in-process cluster when the user did not set one (:func:`connect`).
LOCAL_AUTH_MODE = "disabled"


def connect() -> tuple[float, bool]:
    """Initialise Ray once; returns ``(seconds it took, attached to an existing cluster)``.

    The in-process cluster starts with ``RAY_AUTH_MODE=disabled`` unless the environment sets
    ``RAY_AUTH_MODE`` (an explicit value wins, ``token`` included). Since Ray 2.52 a fresh local
    ``ray.init()`` otherwise turns token authentication on, warns about it on the console (a
    warning nobody can act on: the cluster is ours and gone when the command ends), and writes
    ``~/.ray/auth_token``, which a later ``ray start`` picks up, so that ``ray job submit`` to
    that head then fails with "Missing authentication token". The cluster is private to this
    command: its driver and workers are on this machine, no dashboard is started, and it stops
    when the command ends. Its ports, though, listen on all interfaces (Ray's own choice, as
    before 2.52): on a network you do not trust, set ``RAY_AUTH_MODE=token`` and it is kept.
    """
    import ray  # Ray's imports only when a command needs the cluster (not for --help, bad input, a dry run)

    if ray.is_initialized():
        return 0.0, bool(os.environ.get("RAY_ADDRESS"))
    start = time.perf_counter()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_HEALTH_CHECK_INTERVAL_S)
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    address = os.environ.get("RAY_ADDRESS", "").strip()
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        try:
            ray.init(address=address, log_to_driver=True, **quiet)
        except ConnectionError as exc:
            raise P2MInputError(f"RAY_ADDRESS={address!r}: cannot attach to that Ray cluster: {exc}") from None
        reinstall()  # ray.init replaced the launcher's SIGTERM handler
        return time.perf_counter() - start, True
    # Set in this process's environment, which the cluster's processes inherit (Ray reads it there).
    os.environ.setdefault("RAY_AUTH_MODE", LOCAL_AUTH_MODE)
    # Workers' output stays in Ray's log files (/tmp/ray/session_latest/logs): the driver prints a
    # line per trial and Tune reports a failed trial's traceback itself.
    ray.init(
        address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        log_to_driver=False, **quiet,
    )
    reinstall()  # ray.init replaced the launcher's SIGTERM handler
    return time.perf_counter() - start, False


def node_id() -> str:
    """The Ray node this process runs on (hex id, as ``ray.nodes()`` and the dashboard show it);
    ``''`` outside Ray (a loop run in-process with ``num_workers=0``, a unit test)."""
    import ray  # as in connect

    if not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id() or ""


def check_fits(resources: dict[str, float], attached: bool, where: str) -> None:
    """Refuse a trial that can never be scheduled on this in-process cluster (Tune would wait
    forever). On an attached cluster an autoscaler may add nodes, so there it only warns."""
    import ray  # as in connect

    total = ray.cluster_resources()
    short = {k: v for k, v in resources.items() if v > total.get(k, 0.0)}
    if not short:
        return
    message = f"{where}: a trial asks for {short} but the Ray cluster has {({k: total.get(k, 0.0) for k in short})}"
    if attached:
        log.warning("%s; waiting for the autoscaler to add nodes", message)
        return
    raise P2MInputError(message + "; lower 'resources' in the spec or attach to a bigger cluster (RAY_ADDRESS)")


def shutdown() -> None:
    import ray  # as in connect

    if ray.is_initialized():
        ray.shutdown()
