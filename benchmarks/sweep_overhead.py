"""What the platform costs: a 12-trial pseudo sweep through Ray Tune + MLflow against the same
12 settings run one after another in one plain process, measured side by side in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [--repeats 2] [--num-val 16] [--size 128]
        [--before REV] [--attached] [--train]

Every side is a whole command started fresh (interpreter, imports, data, 12 stage runs writing
the same files), so the ratio is what a user waits for:

- **plain**: one Python process calls :func:`p2m_core.ablation.run_pseudo_stage` for each trial
  config in turn (torch uses every core);
- **sweep**: ``python -m ray_jobs.sweep SPEC`` with a fresh sqlite MLflow store: checks, MLflow
  set-up, ``ray.init`` in-process, Tune with ``reuse_actors``, one MLflow child run per trial
  with params, metrics and artifacts (1 CPU and 1 torch thread per trial, as many trials at
  once as there are cores);
- **local**: the same sweep command with ``--executor local``: the trials one after another,
  without Ray, computed in the command's one child process (torch uses every core, as in the
  plain loop); once on a fresh store and once on a store whose schema MLflow built before the
  command (a researcher's second sweep into the same store). A fresh store is a copy of the
  cached empty schema (``p2m_core/tracking/schema_cache.py``), built by the first side that
  needs it;
- ``--before REV``: the same sweep commands (in-process Ray and ``--executor local``) run from a
  checkout of the git revision ``REV`` (a temporary worktree), alternating with the others:
  before and after in one run;
- ``--attached``: the same sweep attached (``RAY_ADDRESS``) to a local Ray head started before
  the command and stopped after it (``ray start --head`` on 127.0.0.1 with as many CPUs as the
  machine; neither is timed), as a cluster that outlives its commands: no ``ray.init`` or
  shutdown per command. The head runs only for this side: an idle second cluster on the
  machine made the in-process ``ray.init`` of the other sides 3 s slower (7.1 s against 4.1 s);
- ``--train``: the fixed cost of a training trial: a one-trial ``stage: train`` sweep of
  ``experiments/train_tiny.yaml`` for 4 iterations on 16-image splits, in-process (and from
  ``REV`` with ``--before``). Its fixed cost is the trial's time less its training steps' own
  time (MLflow's ``step_seconds``): Ray Train's controller and worker group, the process group,
  the worker's imports and data, the final evaluations and predictions, and the teardown. Beside
  it, Ray Train's own floor: ``TorchTrainer.fit`` of a function that only imports torch.

Reported: wall times and ratios to the plain loop, the ``ray.init`` time the sweep printed, per
trial costs read back from MLflow (the trial's time outside the stage, median and a worker's
first trial), and the training trial's time and fixed cost. The machine must be quiet: with
torch's default OpenMP spinning a plain loop shares its 2 cores badly (one run took 127 s
instead of 8 s beside a second busy process).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2, 3]
GRID = {"pseudo.k_scheme": ["equal_division", "nearest_point", "nearest_centroid"]}  # x 4 seeds = 12
TRAIN_ITERS = 4
TRAIN_IMAGES = 16

PLAIN = """
import sys, time
from pathlib import Path
from p2m_core.ablation import run_pseudo_stage
from ray_jobs.spec import expand_trials, load_spec
trials = expand_trials(load_spec(sys.argv[1]))
out = Path(sys.argv[2])
for t in trials:
    run_pseudo_stage(t.config, out / t.config_hash)
print(len(trials))
"""

CREATE_STORE = """
import sys
from mlflow.tracking import MlflowClient
MlflowClient(tracking_uri=sys.argv[1]).search_experiments()
"""

RAY_TRAIN_FLOOR = """
import os, sys, time
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
ray.init(address="local", include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
def imports_torch(config):
    import torch
start = time.perf_counter()
TorchTrainer(imports_torch, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
             torch_config=TorchConfig(backend="gloo"), run_config=RunConfig(name="floor", storage_path=sys.argv[1])).fit()
print(f"fit {time.perf_counter() - start:.3f}", file=sys.stderr)
"""


def write_spec(folder: Path, data_root: Path) -> Path:
    spec = {
        "name": "overhead", "base": str(REPO / "experiments" / "ablation_synthetic.yaml"), "stage": "pseudo",
        "split": "val", "set": {"data.root": str(data_root)}, "grid": GRID, "seeds": SEEDS,
        "resources": {"cpu": 1}, "mlflow_experiment": "overhead",
    }  # fmt: skip
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_train_spec(folder: Path, data_root: Path, output_dir: Path) -> Path:
    spec = {
        "name": "train_overhead", "base": str(REPO / "experiments" / "train_tiny.yaml"), "stage": "train",
        "split": "test", "grid": {"pseudo.assignment": ["ot"]}, "seeds": [0], "resources": {"cpu": 1},
        "mlflow_experiment": "train_overhead",
        "set": {"data.root": str(data_root), "tracking.output_dir": str(output_dir), "train.iters": TRAIN_ITERS,
                "train.eval_every": 0, "train.log_every": 2},
    }  # fmt: skip
    path = folder / "train_overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def trial_costs(uri: str) -> tuple[float, float, float]:
    """Per trial, read back from MLflow: median trial seconds, and the median and largest time
    a trial spends outside the stage (MLflow run, params, metrics, artifact upload; the largest
    is a worker's first trial, which also imports torch's and MLflow's modules)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("overhead")
    runs = client.search_runs([experiment.experiment_id], "tags.`p2m.kind` = 'trial'")
    trial = [r.data.metrics["trial_seconds"] for r in runs]
    extra = [r.data.metrics["trial_seconds"] - r.data.metrics["wall_seconds"] for r in runs]
    return statistics.median(trial), statistics.median(extra), max(extra)


def training_steps_seconds(uri: str) -> float:
    """The training trial's own step time: the sum of its logged ``step_seconds``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("train_overhead")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`p2m.kind` = 'trial'")
    return sum(m.value for m in client.get_metric_history(run.info.run_id, "step_seconds"))


@contextmanager
def worktree(rev: str, folder: Path) -> Iterator[Path]:
    """A detached checkout of ``rev`` (``git worktree``), removed afterwards."""
    path = folder / f"rev-{rev[:12]}"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=REPO, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False)


@contextmanager
def local_head(folder: Path, cpus: int) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1 in its own process group; yields its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp_dir = Path("/tmp") / f"p2m-bench-{os.getpid()}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = (folder / "ray_head.log").open("w")
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--num-cpus={cpus}",
        "--object-store-memory=200000000", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address={address}"],
                             env=env, capture_output=True, check=False).returncode != 0:  # fmt: skip
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the local Ray head did not start: {(folder / 'ray_head.log').read_text()[-2000:]}")
            time.sleep(1)
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def sweep_side(label: str, tmp: Path, spec: Path, env: dict[str, str], code: Path,
               flags: tuple[str, ...] = (), existing_store: bool = False) -> Callable[[int], dict[str, float]]:  # fmt: skip
    """One repeat of the sweep command (with ``flags``) run from ``code`` (a checkout), on a fresh
    store; ``existing_store``: a store whose schema MLflow created before the command (untimed)."""

    def run(repeat: int) -> dict[str, float]:
        uri = f"sqlite:///{tmp / f'{label}-{repeat}.db'}"
        side_env = {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(code)}
        if existing_store:
            subprocess.run([sys.executable, "-c", CREATE_STORE, uri], env=side_env, cwd=code, check=True)
        seconds, log = timed([sys.executable, "-m", "ray_jobs.sweep", str(spec), *flags], side_env, code)
        match = re.search(r"Ray (?:started in-process|attached) in ([0-9.]+) s", log)
        trial, outside, first = trial_costs(uri)
        return {"wall": seconds, "init": float(match.group(1)) if match else float("nan"), "trial": trial,
                "outside": outside, "first": first}  # fmt: skip

    return run


def attached_side(tmp: Path, spec: Path, env: dict[str, str], cpus: int) -> Callable[[int], dict[str, float]]:
    """One repeat of the sweep attached to a local head that runs for this repeat only."""

    def run(repeat: int) -> dict[str, float]:
        with local_head(tmp, cpus) as address:
            return sweep_side("attached", tmp, spec, {**env, "RAY_ADDRESS": address}, REPO)(repeat)

    return run


def train_side(label: str, tmp: Path, data: Path, env: dict[str, str], code: Path) -> Callable[[int], dict[str, float]]:
    """One repeat of the one-trial training sweep run from ``code``: its trial time and fixed cost."""

    def run(repeat: int) -> dict[str, float]:
        uri = f"sqlite:///{tmp / f'{label}-{repeat}.db'}"
        folder = tmp / f"{label}-{repeat}"
        folder.mkdir()
        spec = write_train_spec(folder, data, folder / "runs")
        side_env = {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(code)}
        seconds, log = timed([sys.executable, "-m", "ray_jobs.sweep", str(spec)], side_env, code)
        match = re.search(r"1/1 done .* in ([0-9.]+) s", log)
        if not match:
            raise SystemExit(f"{label}: no trial time in the sweep's output:\n{log[-2000:]}")
        trial = float(match.group(1))
        steps = training_steps_seconds(uri)
        return {"wall": seconds, "trial": trial, "steps": steps, "fixed": trial - steps}

    return run


def ray_train_floor(tmp: Path, env: dict[str, str]) -> Callable[[int], dict[str, float]]:
    """Ray Train alone: ``TorchTrainer.fit`` of a function that only imports torch, one worker."""

    def run(repeat: int) -> dict[str, float]:
        seconds, log = timed([sys.executable, "-c", RAY_TRAIN_FLOOR, str(tmp / f"floor{repeat}")], env, REPO)
        fit = float(re.search(r"fit ([0-9.]+)", log).group(1))
        return {"wall": seconds, "trial": fit, "steps": 0.0, "fixed": fit}

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each side (alternating)")
    parser.add_argument("--num-val", type=int, default=16, help="validation images of the synthetic set")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size")
    parser.add_argument("--before", default=None, metavar="REV", help="also measure the sweep of this git revision")
    parser.add_argument("--attached", action="store_true", help="also measure the sweep attached to a local head")
    parser.add_argument("--train", action="store_true", help="also measure a training trial's fixed cost")
    args = parser.parse_args()

    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="p2m-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        synthetic = [sys.executable, "-m", "p2m_core.data.synthetic", "--size", str(args.size), "--seed", "0", "--quiet"]
        subprocess.run(synthetic + ["--out", str(tmp / "data"), "--num-train", "0", "--num-val", str(args.num_val)],
                       check=True, env=env, cwd=REPO)  # fmt: skip
        if args.train:
            n = str(TRAIN_IMAGES)
            subprocess.run(synthetic + ["--out", str(tmp / "train_data"), "--num-train", n, "--num-val", n,
                                        "--num-test", n], check=True, env=env, cwd=REPO)  # fmt: skip
        spec = write_spec(tmp, tmp / "data")
        with worktree(args.before, tmp) if args.before else _nothing() as before_code:
            sides: dict[str, Callable[[int], dict[str, float]]] = {}

            def plain(repeat: int) -> dict[str, float]:
                seconds, _ = timed([sys.executable, "-c", PLAIN, str(spec), str(tmp / f"plain{repeat}")], env, REPO)
                return {"wall": seconds}

            sides["plain loop, one process"] = plain
            local = ("--executor", "local")
            if before_code is not None:
                sides[f"sweep, in-process Ray, before ({args.before})"] = sweep_side("before", tmp, spec, env, before_code)
                sides[f"sweep, --executor local, before ({args.before})"] = sweep_side(
                    "local-before", tmp, spec, env, before_code, local)
            sides["sweep, in-process Ray, now"] = sweep_side("now", tmp, spec, env, REPO)
            sides["sweep, --executor local, now"] = sweep_side("local", tmp, spec, env, REPO, local)
            sides["the same, into a store that exists (its MLflow schema made before)"] = sweep_side(
                "local-existing", tmp, spec, env, REPO, local, existing_store=True)
            if args.attached:
                sides["sweep attached to a running local head, now"] = attached_side(tmp, spec, env, cpus)
            if args.train and before_code is not None:
                sides[f"training trial, before ({args.before})"] = train_side("train-before", tmp, tmp / "train_data", env, before_code)
            if args.train:
                sides["training trial, now"] = train_side("train-now", tmp, tmp / "train_data", env, REPO)
                sides["training: Ray Train alone (TorchTrainer.fit, 1 worker importing torch)"] = ray_train_floor(tmp, env)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for repeat in range(args.repeats):
                for name, side in sides.items():
                    results[name].append(side(repeat))
                    print(f"repeat {repeat}: {name}: {results[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    report(results, args, cpus)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace, cpus: int) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    n = len(SEEDS) * len(GRID["pseudo.k_scheme"])
    plain = med("plain loop, one process", "wall")
    print(f"\n{n} pseudo trials of {args.num_val} images of {args.size} px; {cpus} cores; medians of {args.repeats}\n")
    print("| command | wall | ratio to plain | `ray.init` | per trial | outside the stage, median / first | overhead per trial |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in results:
        if name.startswith("training"):
            continue
        wall = med(name, "wall")
        if name.startswith("plain"):
            print(f"| {name} | {wall:.1f} s | 1.00x | | | | |")
            continue
        init = med(name, "init")
        init_cell = "" if math.isnan(init) else f"{init:.1f} s"  # no Ray started by --executor local
        print(f"| {name} | {wall:.1f} s | **{wall / plain:.2f}x** | {init_cell} | {med(name, 'trial'):.2f} s "
              f"| {med(name, 'outside'):.2f} s / {med(name, 'first'):.2f} s | {(wall - plain) / n:.2f} s |")  # fmt: skip
    training = [name for name in results if name.startswith("training")]
    if training:
        print(f"\nTraining trial: {TRAIN_ITERS} iterations of experiments/train_tiny.yaml on {TRAIN_IMAGES}-image splits\n")
        print("| side | whole command | trial (or `fit`) | its training steps | fixed cost |")
        print("|---|---:|---:|---:|---:|")
        for name in training:
            print(f"| {name} | {med(name, 'wall'):.1f} s | {med(name, 'trial'):.1f} s | {med(name, 'steps'):.1f} s "
                  f"| **{med(name, 'fixed'):.1f} s** |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
