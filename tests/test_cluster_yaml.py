"""cluster.yaml: accepted by `ray up` (Ray's own schema and checks) and fit for p2m's GPU sweeps.

The schema is the one shipped inside the installed ``ray`` package, the file the cluster
launcher validates against, so a config that passes here passes `ray up`'s validation with the
pinned Ray. The remaining tests check what the schema cannot: a GPU worker type, a head without
GPUs that runs the MLflow server, the CUDA torch build installed before the pinned requirements,
the repository synced without local data, and shared storage on every node.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
SHARED = "/mnt/shared"


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def config() -> dict:
    with CLUSTER_YAML.open(encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict), f"{CLUSTER_YAML} is not a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema_file = importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), schema.get("$schema")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, instance: dict) -> list[str]:
    """Every violation as ``path: message``, in a stable order."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]


def head_type(config: dict) -> dict:
    return config["available_node_types"][config["head_node_type"]]


def worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def gpu_worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in worker_types(config).items() if t.get("resources", {}).get("GPU", 0) >= 1}


def find_command(commands: list[str], needle: str) -> tuple[int, str]:
    """Index and text of the single command containing ``needle``."""
    hits = [(i, c) for i, c in enumerate(commands) if needle in c]
    assert len(hits) == 1, f"expected exactly one command containing {needle!r}, found {len(hits)}: {commands}"
    return hits[0]


def command_args(command: str, program: str) -> dict[str, str]:
    """``--flag value`` / ``--flag=value`` arguments of ``program`` inside a shell command line.

    The arguments run up to the first shell operator (redirection, ``&``, ``;``, ``|``) or
    quote that ends a ``bash -c '...'`` wrapper.
    """
    match = re.search(rf"{re.escape(program)}(?=\s+--)", command)
    assert match, f"{program!r} with arguments not found in {command!r}"
    start = match.end()
    tail = re.split(r"\s(?:>>|>|2>|<|&&|\|\||&|;|\|)|'", command[start:], maxsplit=1)[0]
    tokens = shlex.split(tail)
    args: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        assert token.startswith("--"), f"unexpected argument {token!r} of {program!r} in {command!r}"
        if "=" in token:
            key, value = token.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = token, tokens[i + 1]
            i += 1
        else:
            key, value = token, ""
        args[key] = value
        i += 1
    return args


def exported(command: str, name: str, before: str) -> str:
    """Value of ``export NAME=...`` in ``command``, which must come before ``before``."""
    match = re.search(rf"export {name}=(\S+);", command)
    assert match, f"{name} is not exported in {command!r}"
    assert match.start() < command.index(before), f"{name} is exported after {before!r} in {command!r}"
    return match.group(1)


def pinned_version(requirements: str, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", requirements, re.MULTILINE)
    assert match, f"{package} is not pinned with == in {requirements[:200]!r}..."
    return match.group(1)


def rsync_excluded(relpath: str, is_dir: bool, patterns: list[str]) -> bool:
    """Whether `rsync --exclude PATTERN ... SRC/ DST/` skips ``relpath`` (relative to SRC).

    rsync's rules for the patterns used here: a leading ``/`` anchors the pattern at the
    transfer root, otherwise it matches the end of the path at a component boundary (the last
    component when it has no ``/``); a trailing ``/`` matches directories only; ``*`` and ``?``
    do not cross ``/``, ``**`` does. An excluded directory is not descended into, so a file is
    skipped when it or any of its parent directories matches.
    """
    compiled = []
    for pattern in patterns:
        assert not set("[]\\") & set(pattern), f"pattern {pattern!r} needs rsync syntax this check does not model"
        dir_only = pattern.endswith("/")
        body = pattern.rstrip("/")
        anchored = body.startswith("/")
        body = body.lstrip("/")
        regex = re.sub(r"\\\*\\\*|\\\*|\\\?", lambda m: {r"\*\*": ".*", r"\*": "[^/]*", r"\?": "[^/]"}[m.group(0)], re.escape(body))
        compiled.append((re.compile(("^" if anchored else "(^|/)") + regex + "$"), dir_only))
    parts = relpath.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        path_is_dir = is_dir or depth < len(parts)
        if any(rx.search(path) and (path_is_dir or not dir_only) for rx, dir_only in compiled):
            return True
    return False


# --------------------------------------------------------------------------------------------
# (a) the launcher's own validation


def test_cluster_yaml_validates_against_rays_schema(config, validator):
    errors = schema_errors(validator, config)
    assert not errors, "cluster.yaml violates ray-schema.json:\n" + "\n".join(errors)


def test_ray_launcher_accepts_the_prepared_config(config):
    """What `ray up` runs before it launches anything: defaults merged, then its checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on a head type missing from the node types, min > max, ...
    assert prepared["provider"]["type"] == "aws"
    # Our setup replaces the defaults' (which would pip-install into the system Python).
    assert prepared["setup_commands"] == config["setup_commands"]
    assert "boto3" in " ".join(prepared["head_setup_commands"]), "the head's autoscaler needs boto3 in the venv"


# --------------------------------------------------------------------------------------------
# (b) what p2m needs that the schema does not check


def test_a_gpu_worker_type_that_can_scale(config):
    gpu_types = gpu_worker_types(config)
    assert gpu_types, f"no worker type with resources GPU >= 1 in {list(config['available_node_types'])}"
    for name, node_type in gpu_types.items():
        assert node_type["resources"].get("CPU", 0) >= 1, f"{name}: trials need CPUs next to the GPU"
        min_workers, max_workers = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
        assert 0 <= min_workers <= max_workers, f"{name}: min_workers {min_workers} > max_workers {max_workers}"
        assert max_workers >= 1, f"{name}: max_workers {max_workers} never launches a GPU"
        assert max_workers <= config["max_workers"], f"{name}: max_workers above the cluster's max_workers"
        node_config = node_type["node_config"]
        assert node_config.get("InstanceType"), f"{name}: no InstanceType"
        assert str(node_config.get("ImageId", "")).startswith("ami-"), f"{name}: no ImageId"
        root = node_config["BlockDeviceMappings"][0]["Ebs"]
        assert root["VolumeSize"] >= 100, f"{name}: root volume {root['VolumeSize']} GB is too small for the AMI + CUDA venv"


def test_head_advertises_no_gpu_and_keeps_the_dashboard_local(config):
    head = head_type(config)
    assert head["resources"].get("GPU", 0) == 0, f"head advertises GPUs: {head['resources']}"
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0
    _, start = find_command(config["head_start_ray_commands"], "ray start --head")
    args = command_args(start, "ray start")
    assert args.get("--num-gpus") == "0", f"ray start --head must pass --num-gpus=0: {start}"
    assert args.get("--dashboard-host") == "127.0.0.1", f"dashboard must stay on the head's loopback: {start}"
    assert args.get("--autoscaling-config") == "~/ray_bootstrap_config.yaml", "the head runs the autoscaler"


def test_head_starts_the_mlflow_server_after_ray(config):
    commands = config["head_start_ray_commands"]
    ray_index, _ = find_command(commands, "ray start --head")
    mlflow_index, mlflow = find_command(commands, "mlflow server")
    assert mlflow_index > ray_index, "mlflow server must start after `ray stop` / `ray start --head`"
    args = command_args(mlflow, "mlflow server")
    assert args["--backend-store-uri"] == f"sqlite:///{SHARED}/mlflow/mlflow.db"
    assert args["--artifacts-destination"] == f"{SHARED}/mlflow/artifacts"
    assert args["--port"] == "5000"
    assert args["--workers"] == "1", "one process writes the sqlite file on NFS"
    # Loopback for the SSH tunnel (ray attach -p 5000) and the head's private address for the
    # GPU workers, where the trials log: only all interfaces give both (port 5000 stays closed
    # to the internet through the security group).
    assert args["--host"] == "0.0.0.0", f"mlflow server must accept the tunnel and the workers: {mlflow}"
    # Detached, so that it outlives the SSH session of `ray up`.
    assert "nohup" in mlflow and re.search(r"\s&\s", mlflow), f"mlflow server is not started in the background: {mlflow}"
    assert "/health" in mlflow, "ray up should wait for the server to answer"


def test_tracking_uri_reaches_the_server_from_head_and_workers(config):
    _, head_start = find_command(config["head_start_ray_commands"], "ray start --head")
    head_uri = exported(head_start, "MLFLOW_TRACKING_URI", "ray start --head")
    assert re.fullmatch(r"http://\S+:5000", head_uri), head_uri
    host = head_uri[len("http://") : -len(":5000")]
    assert host not in ("127.0.0.1", "localhost"), (
        "trials run on the GPU workers, where 127.0.0.1 is the worker itself: "
        f"export the head's private address, got {head_uri}"
    )
    worker_commands = config["worker_start_ray_commands"]
    _, worker_start = find_command(worker_commands, "ray start --address")
    assert exported(worker_start, "MLFLOW_TRACKING_URI", "ray start") == "http://$RAY_HEAD_IP:5000"
    assert command_args(worker_start, "ray start")["--address"] == "$RAY_HEAD_IP:6379"
    assert command_args(head_start, "ray start")["--port"] == "6379"


def auth_env_dir(command: str, before: str, server: bool = False) -> str:
    """The folder of ``eval "$(... ray_jobs.cluster_auth env DIR)"`` in ``command``, which must
    come before ``before`` (and exit when the secrets cannot be read)."""
    flag = r" --server" if server else ""
    match = re.search(rf"AUTH=\$\(~/venv/bin/python -m ray_jobs\.cluster_auth env (\S+){flag}\) \|\| exit 1; eval \"\$AUTH\";", command)
    assert match, f"cluster_auth env{flag} is not exported (or a failure does not stop) in {command!r}"
    assert match.start() < command.index(before), f"the credentials are exported after {before!r} in {command!r}"
    return match.group(1)


def test_every_node_runs_ray_with_token_auth_and_mlflow_with_logins(config, tmp_path):
    from ray_jobs import cluster_auth

    head_commands = config["head_start_ray_commands"]
    init_index, init = find_command(head_commands, "ray_jobs.cluster_auth init")
    head_index, head_start = find_command(head_commands, "ray start --head")
    mlflow_index, mlflow = find_command(head_commands, "mlflow server")
    assert init_index < head_index < mlflow_index, "the secrets must exist before Ray and MLflow start"
    _, worker_start = find_command(config["worker_start_ray_commands"], "ray start --address")
    init_args = shlex.split(init.split("cluster_auth init", 1)[1])
    secrets_dir, auth_db = init_args[0], init_args[init_args.index("--auth-db") + 1]
    # Workers read the head's token: the folder must be on the shared disk, and the same everywhere.
    assert secrets_dir.startswith(f"{SHARED}/"), secrets_dir
    assert auth_env_dir(head_start, "ray start") == secrets_dir
    assert auth_env_dir(worker_start, "ray start") == secrets_dir
    assert auth_env_dir(mlflow, "/mlflow server", server=True) == secrets_dir
    assert auth_db == f"sqlite:///{SHARED}/mlflow/basic_auth.db", "MLflow's users must outlive the head"
    assert command_args(mlflow, "mlflow server").get("--app-name") == "basic-auth", mlflow
    for command in (head_start, worker_start):
        assert "RAY_AUTH_MODE=disabled" not in command, command
    # What those commands export, from files made by the same code in a temporary folder.
    folder = tmp_path / "secrets"
    cluster_auth.init(folder, auth_db)
    env = cluster_auth.environment(folder, server=True)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(folder / cluster_auth.RAY_TOKEN)
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH"} <= env.keys()
    # The shells of `ray exec` / `ray attach` get the same variables (reading the files, not copying them).
    bashrc = "\n".join(c for c in config["setup_commands"] if "bashrc" in c)
    assert f"ray_jobs.cluster_auth env {secrets_dir}" in bashrc, "ray exec 'ray status' would have no token"


def test_setup_installs_the_cuda_torch_build_before_the_pinned_requirements(config):
    requirements = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    torch_version = pinned_version(requirements, "torch")
    panopticapi_version = re.search(r"panopticapi-lite==(\S+)", makefile).group(1)
    setup = "\n".join(config["setup_commands"])

    torch = re.search(
        rf"pip install\b[^\n]*\btorch=={re.escape(torch_version)}\s[^\n]*--index-url https://download\.pytorch\.org/whl/cu\d+",
        setup,
    )
    assert torch, f"setup_commands do not install torch=={torch_version} from PyTorch's CUDA index"
    reqs = re.search(r"pip install\b[^\n]*-r requirements\.txt -c requirements-lock\.txt", setup)
    assert reqs, "setup_commands do not install requirements.txt with the lock as constraints"
    panoptic = re.search(rf"pip install\b[^\n]*--no-deps panopticapi-lite=={re.escape(panopticapi_version)}\b", setup)
    assert panoptic, f"setup_commands do not install panopticapi-lite=={panopticapi_version} (the Makefile's) --no-deps"
    project = re.search(r"pip install\b[^\n]*--no-deps [^\n]*-e \.(\s|$)", setup)
    assert project, "setup_commands do not install p2m itself (--no-deps -e .)"
    assert torch.start() < reqs.start(), "the CUDA torch must come first, or requirements.txt installs the CPU/PyPI wheel"
    assert reqs.start() < panoptic.start() < project.start()


def test_ray_mlflow_and_p2m_share_one_venv(config):
    """Ray must run from the Python that p2m was installed into, or jobs cannot import p2m."""
    setup = "\n".join(config["setup_commands"])
    pythons = set(re.findall(r"(\S+)/python -m pip install", setup))
    assert len(pythons) == 1, f"pip installs into several environments: {pythons}"
    venv_bin = pythons.pop()
    _, head_start = find_command(config["head_start_ray_commands"], "ray start --head")
    _, worker_start = find_command(config["worker_start_ray_commands"], "ray start --address")
    _, mlflow = find_command(config["head_start_ray_commands"], "mlflow server")
    assert f"{venv_bin}/ray start" in head_start, head_start
    assert f"{venv_bin}/ray start" in worker_start, worker_start
    assert f"{venv_bin}/mlflow server" in mlflow, mlflow
    venv_dir = venv_bin.rsplit("/", 1)[0]
    assert re.search(rf"python3\.11 -m venv {re.escape(venv_dir)}\b", setup), "the venv must be Python 3.11, like .venv"


def test_file_mounts_sync_the_repository_where_setup_installs_it(config):
    mounts = {remote: (REPO_ROOT / local).resolve() for remote, local in config["file_mounts"].items()}
    repo_remotes = [remote for remote, local in mounts.items() if local == REPO_ROOT]
    assert repo_remotes, f"no file mount copies the repository: {config['file_mounts']}"
    remote = repo_remotes[0]
    install = [c for c in config["setup_commands"] if "-e ." in c]
    assert install and all(c.startswith(f"cd {remote} &&") for c in install), (
        f"`pip install -e .` must run inside the synced copy {remote}: {install}"
    )


@pytest.mark.parametrize(
    "path, is_dir",
    [
        (".venv/lib/python3.11/site-packages/torch/__init__.py", False),
        (".venv", True),
        ("data/voc_panoptic/panoptic_val.json", False),
        ("data", True),
        ("mlflow.db", False),
        ("mlartifacts/1/abc/artifacts/config.yaml", False),
        ("runs/sweep/trial_0/result.json", False),
        ("demo_out/data/panoptic_val.json", False),
    ],
)
def test_rsync_excludes_local_environment_and_data(config, path, is_dir):
    assert rsync_excluded(path, is_dir, config["rsync_exclude"]), f"{path} would be uploaded by ray up"


def test_rsync_excludes_keep_every_source_file(config):
    """No exclude pattern may drop code: p2m_core/data/ is a package, not the ./data folder."""
    must_sync = ["p2m_core/data/dataset.py", "p2m_core/data/__init__.py", "pyproject.toml", "README.md",
                 "requirements.txt", "requirements-lock.txt", "experiments/base.yaml", "ray_jobs/runtime_env.yaml",
                 "analysis/tables.py", "tests/test_cluster_yaml.py", "cluster.yaml"]
    dropped = [p for p in must_sync if rsync_excluded(p, False, config["rsync_exclude"])]
    assert not dropped, f"rsync_exclude drops source files: {dropped}"

    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("no git checkout to list the repository's files")
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    files = [f for f in listed if f and (REPO_ROOT / f).is_file()]
    assert files, "git lists no files"
    dropped = [f for f in files if rsync_excluded(f, False, config["rsync_exclude"])]
    assert not dropped, f"rsync_exclude drops files of the repository: {dropped[:20]}"


def test_shared_storage_is_mounted_on_every_node(config):
    init = "\n".join(config["initialization_commands"])
    for name, value in re.findall(r"\b([A-Z_]+)=(\S+);", init):  # shell variables set in the commands
        init = init.replace(f"${name}", value)
    fstab = re.search(rf"fs-\w+\.efs\.([\w-]+)\.amazonaws\.com:/ {SHARED} nfs4 \S*_netdev", init)
    assert fstab, "no EFS entry for /mnt/shared in /etc/fstab"
    assert fstab.group(1) == config["provider"]["region"], "the EFS file system must be in the cluster's region"
    assert re.search(rf"mount {SHARED}\b", init), "EFS is not mounted"
    for folder in ("data", "mlflow/artifacts", "ray_results"):
        assert f"{SHARED}/{folder}" in init, f"{SHARED}/{folder} is not created"
    overriding = [n for n, t in config["available_node_types"].items() if "initialization_commands" in t]
    assert not overriding, f"node types {overriding} replace the global initialization_commands and skip the mount"
    setup = "\n".join(config["setup_commands"])
    assert f"ln -sfn {SHARED}/ray_results ~/ray_results" in setup, "Ray results must land on the shared disk"


# --------------------------------------------------------------------------------------------
# (c) the validation bites


def test_validator_rejects_an_unknown_top_level_key(config, validator):
    broken = copy.deepcopy(config)
    broken["gpus_per_worker"] = 1
    errors = schema_errors(validator, broken)
    assert errors, "an unknown top-level key passed the schema"
    assert any("gpus_per_worker" in e and "Additional properties" in e for e in errors), errors


@pytest.mark.parametrize("bad_value", [0.5, "1"])
def test_validator_rejects_a_non_integer_resource(config, validator, bad_value):
    broken = copy.deepcopy(config)
    name = next(iter(gpu_worker_types(config)))
    broken["available_node_types"][name]["resources"]["GPU"] = bad_value
    errors = schema_errors(validator, broken)
    assert any(e.startswith(f"available_node_types/{name}/resources/GPU:") and "integer" in e for e in errors), errors


def test_validator_rejects_a_node_type_without_node_config(config, validator):
    broken = copy.deepcopy(config)
    name = next(iter(gpu_worker_types(config)))
    del broken["available_node_types"][name]["node_config"]
    errors = schema_errors(validator, broken)
    assert any("'node_config' is a required property" in e for e in errors), errors


# --------------------------------------------------------------------------------------------
# (d) node types: the instances they name, and the configs that need them

#: vCPUs and GPUs of each EC2 instance type cluster.yaml names (AWS's instance-type facts; the
#: one place this test knows them from).
INSTANCES = {"m5.2xlarge": {"CPU": 8, "GPU": 0}, "g5.xlarge": {"CPU": 4, "GPU": 1},
             "g5.12xlarge": {"CPU": 48, "GPU": 4}, "g5.48xlarge": {"CPU": 192, "GPU": 8}}  # fmt: skip


def test_each_worker_type_advertises_its_instances_cpus_and_gpus(config):
    for name, node_type in worker_types(config).items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCES, f"{name}: instance type {instance} missing from this test's INSTANCES"
        assert node_type["resources"] == INSTANCES[instance], (
            f"{name}: resources {node_type['resources']} do not match {instance} {INSTANCES[instance]}"
        )
        assert node_type.get("min_workers", 0) == 0, f"{name}: min_workers {node_type['min_workers']} pays for idle GPUs"
    assert config["max_workers"] == sum(t["max_workers"] for t in worker_types(config).values()), (
        "the cluster's max_workers must let every type reach its own max_workers"
    )


def scaling_doc_node_types() -> dict[str, str]:
    """``{config path: node type}`` from docs/SCALING.md's table "Which node a config needs"."""
    doc = (REPO_ROOT / "docs" / "SCALING.md").read_text(encoding="utf-8")
    section = doc.split("## Which node a config needs", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(experiments/[\w/.-]+\.yaml)` \| `(\w+)`", section, re.MULTILINE)
    assert rows, "docs/SCALING.md has no table of configs and node types"
    return dict(rows)


@pytest.mark.parametrize("config_path", ["experiments/voc.yaml", "experiments/coco.yaml", "experiments/train_tiny.yaml"])
def test_a_training_run_of_each_config_gets_one_node_of_the_documented_type(config, config_path):
    """Ray's own autoscaler, given the run's demand, launches exactly one node of the type the
    docs name: the run's GPUs (train.workers, one GPU each as ray_jobs.train asks) in one bundle."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    from p2m_core.config import load_config
    from ray_jobs.training import placement_strategy, worker_resources

    node_type = scaling_doc_node_types().get(config_path)
    assert node_type in worker_types(config), f"docs/SCALING.md names {node_type!r} for {config_path}"
    workers = load_config(REPO_ROOT / config_path).train.workers
    per_worker = worker_resources(workers, use_gpu=True, cpus_per_worker=1.0)
    bundles = [per_worker] * workers
    if placement_strategy(use_gpu=True) == "STRICT_PACK":  # the autoscaler merges such a group
        bundles = [{k: sum(b[k] for b in bundles) for k in per_worker}]
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    launched, unmet = get_nodes_for(
        config["available_node_types"], {}, config["head_node_type"], config["max_workers"], bundles, scorer,
    )  # fmt: skip
    assert not unmet, f"{config_path}: {workers} workers cannot be placed: {unmet}"
    assert dict(launched) == {node_type: 1}, f"{config_path} ({workers} GPU workers) launches {dict(launched)}"


def test_every_node_reads_the_pretrained_weights_from_the_shared_disk(config):
    _, head_start = find_command(config["head_start_ray_commands"], "ray start --head")
    _, worker_start = find_command(config["worker_start_ray_commands"], "ray start --address")
    folder = exported(head_start, "P2M_WEIGHTS_DIR", "ray start")
    assert exported(worker_start, "P2M_WEIGHTS_DIR", "ray start") == folder
    assert folder.startswith(f"{SHARED}/") and folder in "\n".join(config["initialization_commands"]), folder
