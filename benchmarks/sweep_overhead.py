"""What the platform costs: a 12-trial pseudo sweep through Ray Tune + MLflow against the same
12 settings run one after another in one plain process, measured side by side in one run.

    .venv/bin/python benchmarks/sweep_overhead.py [--repeats 2] [--num-val 16] [--size 128]

Both sides are whole commands started fresh (interpreter, imports, data, 12 stage runs writing
the same files), so the ratio is what a user waits for:

- **plain**: one Python process calls :func:`p2m_core.ablation.run_pseudo_stage` for each trial
  config in turn (torch uses every core);
- **platform**: ``python -m ray_jobs.sweep SPEC`` with a fresh sqlite MLflow store: checks,
  MLflow set-up, ``ray.init`` in-process, Tune with ``reuse_actors``, one MLflow child run per
  trial with params, metrics and artifacts (1 CPU and 1 torch thread per trial, as many trials
  at once as there are cores).

Reported: both wall times and their ratio (goal: platform <= 1.5x plain on 2 cores), the
``ray.init`` time the sweep printed, and per-trial costs read back from MLflow: the trial's own
time minus the stage's time inside it (MLflow run creation, params, metrics, artifact upload),
as the median and for a worker's first trial.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2, 3]
GRID = {"pseudo.k_scheme": ["equal_division", "nearest_point", "nearest_centroid"]}  # x 4 seeds = 12

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


def write_spec(folder: Path, data_root: Path) -> Path:
    spec = {
        "name": "overhead", "base": str(REPO / "experiments" / "ablation_synthetic.yaml"), "stage": "pseudo",
        "split": "val", "set": {"data.root": str(data_root)}, "grid": GRID, "seeds": SEEDS,
        "resources": {"cpu": 1}, "mlflow_experiment": "overhead",
    }  # fmt: skip
    path = folder / "overhead.yaml"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each side (alternating)")
    parser.add_argument("--num-val", type=int, default=16, help="validation images of the synthetic set")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size")
    args = parser.parse_args()

    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="p2m-overhead-") as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "p2m_core.data.synthetic", "--out", str(tmp / "data"), "--num-train", "0",
             "--num-val", str(args.num_val), "--size", str(args.size), "--seed", "0", "--quiet"],
            check=True, env=env, cwd=REPO,
        )  # fmt: skip
        spec = write_spec(tmp, tmp / "data")
        plain, platform, inits, per_trial, extra, first = [], [], [], [], [], []
        for repeat in range(args.repeats):
            seconds, _ = timed([sys.executable, "-c", PLAIN, str(spec), str(tmp / f"plain{repeat}")], env, REPO)
            plain.append(seconds)
            uri = f"sqlite:///{tmp / f'mlflow{repeat}.db'}"
            seconds, log = timed(
                [sys.executable, "-m", "ray_jobs.sweep", str(spec)], {**env, "MLFLOW_TRACKING_URI": uri}, REPO
            )
            platform.append(seconds)
            match = re.search(r"Ray started in-process in ([0-9.]+) s", log)
            inits.append(float(match.group(1)) if match else float("nan"))
            trial, cost, worst = trial_costs(uri)
            per_trial.append(trial)
            extra.append(cost)
            first.append(worst)
            print(f"repeat {repeat}: plain {plain[-1]:.1f} s, platform {platform[-1]:.1f} s "
                  f"(ray.init {inits[-1]:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
    n = len(SEEDS) * len(GRID["pseudo.k_scheme"])
    p, q = statistics.median(plain), statistics.median(platform)
    print(f"| measure ({n} trials, {args.num_val} images of {args.size} px each, {os.cpu_count()} cores) | value |")
    print("|---|---|")
    print(f"| plain loop, one process (median of {args.repeats}) | {p:.1f} s |")
    print(f"| Ray Tune + MLflow sweep, whole command (median of {args.repeats}) | {q:.1f} s |")
    print(f"| ratio platform / plain | {q / p:.2f}x |")
    print(f"| ray.init (in-process cluster) | {statistics.median(inits):.1f} s |")
    print(f"| per trial: time inside the trial | {statistics.median(per_trial):.2f} s |")
    print(f"| per trial: outside the stage (MLflow run, params, metrics, artifacts), median | {statistics.median(extra):.2f} s |")
    print(f"| per trial: outside the stage, a worker's first trial (imports torch, MLflow) | {statistics.median(first):.2f} s |")
    print(f"| per trial: end-to-end overhead ((platform - plain) / {n}) | {(q - p) / n:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
