"""Sweep specs: every shipped spec expands; bad specs fail before Ray with file, key and value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p2m_core.ablation import run_pseudo_stage
from p2m_core.config import stage_hash
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from ray_jobs.spec import expand_trials, load_spec, sweep_hash
from ray_jobs.sweep import main as sweep_main

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "ablation_synthetic.yaml"
SHIPPED = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
PAPER_AXES = {"table3": "pseudo.maps", "table5": "pseudo.k_scheme", "table6": "pseudo.centroid_iters",
              "table7": "pseudo.assignment"}  # fmt: skip
# Training sweeps: spec -> the pseudo-stage spec with the same grid and paper table (None: none).
TRAIN_SPECS = {"table4": None, "table3_train": "table3", "table5_train": "table5", "table7_train": "table7"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=4, num_val=2, size=48, seed=1, progress=False, num_test=2)
    return root


def write_spec(folder: Path, **fields) -> Path:
    spec = {"base": str(BASE), "stage": "pseudo", "grid": {"pseudo.assignment": ["mc", "ot"]}, "seeds": [0],
            "mlflow_experiment": "test", **fields}  # fmt: skip
    spec = {k: v for k, v in spec.items() if v is not None}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shipped_specs_expand_into_checked_trials(data_root):
    assert {p.stem for p in SHIPPED} == {"table3", "table5", "table6", "table7", "sinkhorn", "beta", "release", *TRAIN_SPECS}
    for path in SHIPPED:
        spec = load_spec(path)
        trials = expand_trials(spec, [f"data.root={data_root}"])
        # training trials cost minutes each: one seed by default (--seeds for more)
        assert len(trials) == len(spec.settings()) * len(spec.seeds) and len(spec.seeds) >= (1 if spec.stage == "train" else 3)
        assert len({t.config_hash for t in trials}) == len(trials)
        for trial in trials:
            assert trial.config_hash == stage_hash(trial.config, spec.stage)
            for key, value in trial.setting.items():  # the grid value is in the trial's config
                section, _, name = key.rpartition(".")
                node = trial.config
                for part in section.split("."):
                    node = getattr(node, part)
                assert getattr(node, name) == value
            if spec.stage == "train":
                assert trial.config.seed == trial.seed == trial.config.data.point_seed
            else:
                assert trial.config.data.point_seed == trial.seed == trial.config.ablation.corruption.seed
            assert Path(trial.config.data.root).is_absolute()
        if spec.name in PAPER_AXES:
            assert spec.grid_keys == [PAPER_AXES[spec.name]] and spec.paper_table.startswith(spec.name)
    assert [v for (v,) in (tuple(s.values()) for s in load_spec(REPO / "experiments/sweeps/table6.yaml").settings())] == [1, 2, 4, 8, 10]


def test_training_specs_answer_the_paper_tables(data_root):
    """table4 and the *_train specs: training trials of the tiny network, one per paper row."""
    from analysis import paper

    for name, pseudo_name in TRAIN_SPECS.items():
        spec = load_spec(REPO / "experiments" / "sweeps" / f"{name}.yaml")
        # reported on the held-out split; two seeds, each written where it varies weights, order, augmentation, points
        assert (spec.stage, spec.split, spec.mlflow_experiment) == ("train", "test", "p2m-train")
        assert spec.base == (REPO / "experiments" / "train_tiny.yaml").resolve()
        assert spec.seeds == (0, 1) and spec.seed_keys == ("seed", "data.point_seed") and spec.resources.as_ray() == {"CPU": 1.0}
        axis = paper.paper_table(spec.paper_table)["axis"]
        assert spec.grid_keys == [axis]
        # every paper row is a grid point, in the paper's order (its first row is the baseline)
        rows = paper.paper_frame(spec.paper_table)
        assert [paper.normalise(s[axis]) for s in spec.settings()] == list(rows.index)
        if pseudo_name is not None:  # the same grid and paper table as the pseudo-stage spec
            twin = load_spec(REPO / "experiments" / "sweeps" / f"{pseudo_name}.yaml")
            assert (twin.stage, twin.paper_table, twin.settings()) == ("pseudo", spec.paper_table, spec.settings())
        trials = expand_trials(spec, [f"data.root={data_root}"])
        assert len({t.config_hash for t in trials}) == 2 * len(spec.settings()) == len(trials)
        for trial, setting in zip(trials, [s for s in spec.settings() for _ in spec.seeds]):
            assert trial.config_hash == stage_hash(trial.config, "train") and trial.setting == setting
            assert trial.config.train.test_split == "test" and trial.config.seed == trial.seed == trial.config.data.point_seed
            section, _, key = axis.rpartition(".")
            assert getattr(getattr(trial.config, section), key) == setting[axis]
    t4 = load_spec(REPO / "experiments" / "sweeps" / "table4.yaml")
    assert [s["loss.semantic_terms"] for s in t4.settings()] == [
        ["partial"], ["partial", "lab"], ["partial", "rgb_tree"], ["partial", "lab", "rgb_tree"]]


def test_sinkhorn_grid_is_a_union_of_blocks(data_root):
    spec = load_spec(REPO / "experiments" / "sweeps" / "sinkhorn.yaml")
    modes = [s.get("pseudo.sinkhorn_mode", s.get("pseudo.assignment")) for s in spec.settings()]
    assert modes.count("reference") == 9 and modes.count("converged") == 4
    assert modes.count("mc") == 1 and modes.count("ot_exact") == 1
    assert all("pseudo.sinkhorn_iters" not in s for s in spec.settings() if s.get("pseudo.sinkhorn_mode") == "converged")


def test_grid_over_ablation_settings_reaches_the_stage(tmp_path, data_root):
    # regression: a sweep setting overriding ablation.* ran with the base settings
    spec = load_spec(write_spec(tmp_path, grid={"ablation.corruption.semantic_blur_sigma": [0.0, 4.0],
                                                 "ablation.source": ["oracle_corrupt"]}))  # fmt: skip
    trials = expand_trials(spec, [f"data.root={data_root}", "pseudo.assignment=mc", "ablation.overlays=0"])
    sigmas = [t.config.ablation.corruption.semantic_blur_sigma for t in trials]
    assert sigmas == [0.0, 4.0]
    pq = [run_pseudo_stage(t.config)["metrics"]["PQ"] for t in trials]
    assert pq[0] > pq[1]


def test_sweep_hash_follows_the_trials(tmp_path, data_root):
    spec = load_spec(write_spec(tmp_path))
    a = expand_trials(spec, [f"data.root={data_root}"])
    b = expand_trials(spec, [f"data.root={data_root}", "train.lr=1.0"])  # not read by the pseudo stage
    c = expand_trials(spec, [f"data.root={data_root}", "pseudo.beta=0.5"])
    assert sweep_hash(spec, a) == sweep_hash(spec, b) != sweep_hash(spec, c)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"grids": {}}, "unknown key 'grids'"),
        ({"grid": {}}, "key 'grid' expects a non-empty mapping"),
        ({"grid": {"pseudo.k_scheme": []}}, "key 'grid.pseudo.k_scheme' expects a non-empty list"),
        ({"grid": [{}]}, "key 'grid[0]' expects a non-empty mapping"),
        ({"stage": "eval"}, "key 'stage' expects one of pseudo, train, got 'eval'"),
        ({"seeds": [0, 0]}, "key 'seeds' expects a non-empty list of distinct non-negative integers, got [0, 0]"),
        ({"seeds": "0"}, "key 'seeds' expects"),
        ({"resources": {"cpu": 0}}, "key 'resources.cpu' expects a number > 0"),
        ({"resources": {"tpu": 1}}, "key 'resources' expects a mapping with cpu and/or gpu"),
        ({"base": "nowhere.yaml"}, "key 'base' expects an existing config file"),
        ({"split": "holdout"}, "key 'split' expects 'train' or 'val' or 'test', got 'holdout'"),
        ({"mlflow_experiment": 3}, "key 'mlflow_experiment' expects a string, got 3"),
        ({"grid": {"data.point_seed": [1, 2]}}, "not also a seed key"),
    ],
)
def test_bad_spec_fields_name_file_key_and_value(tmp_path, fields, fragment):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(P2MInputError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    "grid, fragment",
    [
        ({"pseudo.k_shceme": ["nearest_point"]}, "unknown key 'pseudo.k_shceme'"),
        ({"pseudo.centroid_iters": [1, "two"]}, "key 'pseudo.centroid_iters' expects an integer, got 'two'"),
        ({"pseudo.assignment": ["greedy"]}, "key 'pseudo.assignment' expects one of 'ot', 'ot_exact', 'mc', got 'greedy'"),
        ({"ablation.corruption.boundary_drop": [2.0]}, "key 'ablation.corruption.boundary_drop' expects a number in [0, 1], got 2.0"),
        ({"ablation.batch_size": [1, 2]}, "compute the same thing"),
        ({"pseudo.maps": [["semantic", "boundary_high"]], "ablation.source": ["image"]}, "provides no boundary_high"),
    ],
)
def test_bad_grid_values_fail_before_ray_naming_the_spec(tmp_path, data_root, grid, fragment):
    path = write_spec(tmp_path, grid=grid)
    with pytest.raises(P2MInputError) as info:
        expand_trials(load_spec(path), [f"data.root={data_root}"])
    assert f"sweep spec {path}" in str(info.value) and fragment in str(info.value)


def test_missing_dataset_and_set_conflicts(tmp_path, data_root):
    spec = load_spec(write_spec(tmp_path))
    with pytest.raises(P2MInputError, match=rf"sweep spec {tmp_path}/spec.yaml: dataset not found: key 'data.root'"):
        expand_trials(spec, [f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(P2MInputError, match="'pseudo.assignment' is a grid or seed key"):
        expand_trials(spec, [f"data.root={data_root}", "pseudo.assignment=mc"])


def test_cli_refuses_bad_specs_and_an_unreachable_server_before_ray(tmp_path, data_root, monkeypatch, capsys):
    import socket

    assert sweep_main([str(write_spec(tmp_path, stage="eval"))]) == 2
    assert "key 'stage' expects one of pseudo, train, got 'eval'" in capsys.readouterr().err
    missing = tmp_path / "no_data"
    assert sweep_main([str(write_spec(tmp_path, stage="train")), "--set", f"data.root={missing}"]) == 2
    assert f"data.train.json -> {missing}" in capsys.readouterr().err
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert sweep_main([str(write_spec(tmp_path)), "--set", f"data.root={data_root}"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in err
    import ray

    assert not ray.is_initialized()  # nothing started


def test_ray_job_refuses_the_default_store_and_relative_data(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sweep_main([str(write_spec(tmp_path)), "--set", f"data.root={data_root}"]) == 2
    err = capsys.readouterr().err
    assert "Ray job" in err and "MLFLOW_TRACKING_URI" in err
    assert sweep_main([str(write_spec(tmp_path)), "--set", "data.root=data/synthetic"]) == 2
    assert "relative path 'data/synthetic'" in capsys.readouterr().err


def test_training_trials_fit_the_machine_side_by_side():
    """A training trial's own 0.01 CPU comes out of its workers' share: with cpu 1 per worker
    a one-worker trial holds exactly 1 CPU, so 2 run at once on 2 cores (at 1.01, one did), and
    each worker runs as many torch threads as CPUs it holds."""
    from ray_jobs.tuning import TRAIN_TRIAL_CPU, training_worker_resources
    from ray_jobs.worker_setup import threads_for

    one = training_worker_resources({"CPU": 1.0}, workers=1)
    assert one["CPU"] + TRAIN_TRIAL_CPU == pytest.approx(1.0) and int(2.0 / (one["CPU"] + TRAIN_TRIAL_CPU)) == 2
    two = training_worker_resources({"CPU": 1.0, "GPU": 1.0}, workers=2)
    assert 2 * two["CPU"] + TRAIN_TRIAL_CPU == pytest.approx(2.0) and two["GPU"] == 1.0
    assert [threads_for(c) for c in (one["CPU"], 0.3, 1.99, 2.0, 4.0)] == [1, 1, 2, 2, 4]
    with pytest.raises(P2MInputError, match="leaves nothing for a training worker"):
        training_worker_resources({"CPU": 0.01}, workers=1)


# Plans a sweep as the driver does, then says whether torch was imported on the way.
PLAN_ONLY = """
import sys
from ray_jobs.spec import expand_trials, load_spec
trials = expand_trials(load_spec(sys.argv[1]))
print(len(trials), "torch" in sys.modules)
"""


def test_planning_a_sweep_does_not_import_torch(tmp_path, data_root):
    """The driver only checks configs; torch in it cost ~1 s at start and more at exit."""
    spec = write_spec(tmp_path, set={"data.root": str(data_root)}, seeds=[0, 1])
    proc = subprocess.run([sys.executable, "-c", PLAN_ONLY, str(spec)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["4", "False"]
