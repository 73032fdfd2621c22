"""A researcher's own sweep, end to end: a spec written here (not one of experiments/sweeps/),
run by ``python -m ray_jobs.sweep`` (Ray in-process, a sqlite store), rendered by
``analysis.tables`` in every format and plotted by ``analysis.plots``, without a Python edit;
then the same sweep described with ``--grid`` flags; two more runs of it, in the command's
process (``--executor local``), compared with ``analysis.compare``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis import plots, tables
from p2m_core.data.synthetic import generate_synthetic
from ray_jobs.spec import expand_trials, load_spec

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "ablation_synthetic.yaml"
NAME, EXPERIMENT = "my_axis", "my-experiment"
K, BETA = "pseudo.k_scheme", "pseudo.beta"
METRICS = ["PQ", "PQ_th", "disagreement_pct"]
BASELINE = {K: "nearest_point", BETA: 0.5}


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "ray_jobs.sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    """The spec file's sweep, run once: 2 k schemes x 2 betas x 2 seeds on 3 images."""
    root = tmp_path_factory.mktemp("own")
    data = root / "data"
    generate_synthetic(data, num_train=0, num_val=3, size=64, seed=5, progress=False)
    spec = {"name": NAME, "description": "does beta matter per k scheme?", "base": str(BASE), "stage": "pseudo",
            "grid": {K: ["equal_division", "nearest_point"], BETA: [0.5, 2.0]}, "seeds": [0, 1],
            "set": {"data.root": str(data)}, "resources": {"cpu": 1}, "mlflow_experiment": EXPERIMENT,
            "metrics": METRICS, "baseline": BASELINE}  # fmt: skip
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = sweep(str(path), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return {"root": root, "data": data, "spec": path, "uri": uri, "client": MlflowClient(tracking_uri=uri)}


def trial_metrics(ran: dict) -> pd.DataFrame:
    """Each FINISHED trial run's setting, seed and metrics, read straight from MLflow."""
    client = ran["client"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    rows = []
    for r in client.search_runs([experiment.experiment_id], "tags.`p2m.kind` = 'trial' and attributes.status = 'FINISHED'"):
        setting = json.loads(r.data.tags["p2m.setting"])
        rows.append({"k": setting[K], "beta": float(setting[BETA]), "seed": int(r.data.tags["p2m.seed"]),
                     "parent": r.data.tags["mlflow.parentRunId"], **r.data.metrics})
    return pd.DataFrame(rows)


def test_any_spec_renders_its_declared_table_with_the_runs_numbers(ran):
    df, meta = tables.build_table(ran["client"], NAME)
    measured = trial_metrics(ran)
    measured = measured[measured["parent"] == meta["sweep_run_id"]]  # the runs of the sweep the table read
    assert len(measured) == 8
    assert meta["metrics"] == METRICS and meta["baseline"] == "k_scheme=nearest_point, beta=0.5"
    assert list(df["baseline"]) == [False, False, True, False]
    base = measured[(measured["k"] == "nearest_point") & (measured["beta"] == 0.5)].set_index("seed")
    for _, row in df.iterrows():
        mine = measured[(measured["k"] == row[K]) & (measured["beta"] == float(row[BETA]))].set_index("seed")
        for m in METRICS:
            assert row[f"{m}_mean"] == pytest.approx(mine[m].mean()) and row[f"{m}_n"] == 2
            assert row[f"{m}_std"] == pytest.approx(mine[m].std(ddof=1))
            if not row["baseline"]:
                diff = (mine[m] - base[m]).to_numpy()
                assert row[f"delta_{m}_mean"] == pytest.approx(diff.mean()) and row[f"delta_{m}_n"] == 2
                half = row[f"delta_{m}_ci_high"] - row[f"delta_{m}_mean"]
                assert half == pytest.approx(12.706 * diff.std(ddof=1) / np.sqrt(2), rel=1e-3, abs=1e-9)


def test_every_format_from_the_command_line(ran, capsys):
    outputs = {}
    for fmt in ("md", "latex", "csv"):
        assert tables.main(["--table", NAME, "--tracking-uri", ran["uri"], "--format", fmt]) == 0
        outputs[fmt] = capsys.readouterr().out
    lines = outputs["md"].splitlines()
    header = [cell.strip() for cell in lines[lines.index("") + 1].strip("|").split("|")]
    # only the declared columns, each with its difference to the declared baseline
    assert header == ["setting", "n", *METRICS, *(f"Δ{m}" for m in METRICS)]
    assert "baseline (k_scheme=nearest_point, beta=0.5)" in outputs["md"] and "(baseline)" in outputs["md"]
    assert r"\begin{tabular}" in outputs["latex"] and "disagreement\\_pct" in outputs["latex"]
    csv = pd.read_csv(io.StringIO(outputs["csv"]))
    assert {"PQ_mean", "delta_PQ_ci_low", "delta_disagreement_pct_significant"} <= set(csv.columns)
    assert "PQ_st_mean" not in csv.columns and set(csv["spec"]) == {NAME}


def test_the_table_needs_only_the_store(ran):
    """The spec file gone, the table is the same: its layout lives in the sweep run."""
    before, _ = tables.build_table(ran["client"], NAME)
    moved = ran["spec"].with_suffix(".gone")
    ran["spec"].rename(moved)
    try:
        after, meta = tables.build_table(ran["client"], NAME)
    finally:
        moved.rename(ran["spec"])
    pd.testing.assert_frame_equal(before, after)
    sweep_run = ran["client"].search_runs(
        [ran["client"].get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`p2m.kind` = 'sweep'")[0]
    logged = yaml.safe_load(Path(ran["client"].download_artifacts(sweep_run.info.run_id, "spec.yaml", str(ran["root"]))).read_text())
    assert logged["metrics"] == METRICS and logged["baseline"] == BASELINE


def test_plots_draw_the_numeric_axis(ran, tmp_path):
    from PIL import Image

    written = plots.make_plots(ran["client"], tmp_path, EXPERIMENT)
    assert [p.name for p in written] == [f"{NAME}_by_beta.png"]  # k_scheme is no number: no axis
    with Image.open(written[0]) as image:
        assert image.format == "PNG" and image.size[0] > 3 * image.size[1] / 2  # three panels side by side
    sweep_id = tables.build_table(ran["client"], NAME)[1]["sweep_run_id"]
    assert [f.path for f in ran["client"].list_artifacts(sweep_id, "plots")] == [f"plots/{NAME}_by_beta.png"]


def test_the_same_sweep_from_grid_flags(ran):
    """--grid flags describe the same trials: nothing is recomputed, the table is the same, and
    --save-spec writes a file that expands into the same trials."""
    saved = ran["root"] / "saved" / "flags.yaml"
    saved.parent.mkdir()
    proc = sweep("--base", str(BASE), "--grid", f"{K}=equal_division,nearest_point", "--grid", f"{BETA}=0.5,2.0",
                 "--seeds", "0,1", "--name", NAME, "--experiment", EXPERIMENT, "--metrics", ",".join(METRICS),
                 "--baseline", f"{K}=nearest_point", "--baseline", f"{BETA}=0.5", "--set", f"data.root={ran['data']}",
                 "--save-spec", str(saved), cwd=ran["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[{NAME}] 8 trials (4 settings x 2 seeds): 8 already finished, 0 to run" in proc.stderr
    file_trials = expand_trials(load_spec(ran["spec"]), (), ran["root"])
    saved_trials = expand_trials(load_spec(saved), (), ran["root"])
    assert [t.config_hash for t in saved_trials] == [t.config_hash for t in file_trials]
    assert load_spec(saved).metrics == tuple(METRICS) and load_spec(saved).baseline == BASELINE
    df, meta = tables.build_table(ran["client"], NAME)
    assert meta["metrics"] == METRICS and list(df["n"]) == [2, 2, 2, 2]
    note = ran["client"].get_run(meta["sweep_run_id"]).data.tags["mlflow.note.content"]
    assert "spec `--grid flags (artifact spec.yaml)`" in note  # the flags' run describes where its spec is


def test_bad_flags_are_refused_before_ray(tmp_path):
    proc = sweep("--base", str(BASE), "--grid", "pseudo.maps=[semantic", "--name", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "unbalanced brackets" in proc.stderr
    proc = sweep("--base", str(BASE), "--grid", "pseudo.beta=1,2", cwd=tmp_path)
    assert proc.returncode == 2 and "--grid needs --name NAME" in proc.stderr
    proc = sweep("--base", str(BASE), "--grid", "pseudo.beta=1,2", "--name", "x", "--baseline", "pseudo.beta=3", cwd=tmp_path)
    assert proc.returncode == 2 and "key 'baseline'" in proc.stderr and "no grid point" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------------ compare


#: A sweep command run in this test's own interpreter, saying at the end whether Ray was imported.
IN_PROCESS = "import sys; from ray_jobs.sweep import main; code = main(sys.argv[1:]); print('ray' in sys.modules); sys.exit(code)"


@pytest.fixture(scope="module")
def copies(ran) -> dict:
    """Two more sweeps of the same spec, both with ``--executor local`` (in the command's process,
    without Ray): unchanged into another experiment (recomputed there), and with one real change
    of the base config (much noisier semantic maps). Comparing the first with the original, a
    Tune sweep, checks the two executors too."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": ran["uri"], "PYTHONPATH": str(REPO)}
    same = subprocess.run([sys.executable, "-c", IN_PROCESS, str(ran["spec"]), "--experiment", "my-experiment-again",
                           "--executor", "local"], cwd=ran["root"], env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert same.returncode == 0, same.stderr[-3000:]
    assert same.stdout.split() == ["False"]  # Ray never imported
    assert f"[{NAME}] 8 trials (4 settings x 2 seeds): 0 already finished, 8 to run" in same.stderr
    assert f"[{NAME}] 8/8 done" in same.stderr and "Ray started" not in same.stderr
    changed = sweep(str(ran["spec"]), "--set", "ablation.corruption.semantic_noise_std=1.0", "--executor", "local", cwd=ran["root"])
    assert changed.returncode == 0, changed.stderr[-3000:]
    ids = {}
    for r in ran["client"].search_runs(
            [e.experiment_id for e in ran["client"].search_experiments()], "tags.`p2m.kind` = 'sweep'", order_by=["attributes.start_time ASC"]):
        ids.setdefault("original", r.info.run_id) if "original" not in ids else (
            ids.setdefault("same", r.info.run_id) if "same" not in ids else ids.setdefault("changed", r.info.run_id))
    return ids


def compare_cli(ran: dict, *args: str, capsys) -> tuple[int, str, str]:
    from analysis import compare

    code = compare.main(["--table", NAME, "--tracking-uri", ran["uri"], *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_unchanged_sweep_compares_identical(ran, copies, capsys):
    """The original ran as Ray Tune trials, the copy in the command's process: the same numbers."""
    code, out, err = compare_cli(ran, "--runs", copies["original"], copies["same"], "--fail-if-moved", capsys=capsys)
    assert code == 0, err
    assert "0 of 4 settings moved, 4 identical" in err
    rows = [line for line in out.splitlines() if line.startswith("| k_scheme=")]
    assert len(rows) == 4 and all(row.endswith("| identical |") for row in rows)
    assert "+0.0 [+0.0, +0.0] (n=2)" in out


def test_a_real_change_is_marked_moved_and_fails_the_check(ran, copies, capsys):
    from analysis import compare

    client = ran["client"]
    before, after = client.get_run(copies["original"]), client.get_run(copies["changed"])
    df, meta = compare.compare(client, before, after)
    assert meta["moved"] >= 1 and meta["identical"] == 0
    assert set(df["n"]) == {2} and df["delta_PQ_mean"].lt(0).all()  # noisier maps: worse masks everywhere
    # the numbers are the trial runs' own: after − before per seed, averaged
    measured = trial_metrics(ran)
    assert len(measured) == 16  # both sweeps' runs, told apart by their parent
    for _, row in df.iterrows():
        k, beta = row["setting"].split(", ")
        mine = measured[(measured["k"] == k.split("=")[1]) & (measured["beta"] == float(beta.split("=")[1]))]
        new = mine[mine["parent"] == copies["changed"]].set_index("seed")["PQ"]
        old = mine[mine["parent"] == copies["original"]].set_index("seed")["PQ"]
        assert row["delta_PQ_mean"] == pytest.approx((new - old).mean())
    code, out, err = compare_cli(ran, "--runs", copies["original"], copies["changed"], "--fail-if-moved", capsys=capsys)
    assert code == 1 and "**moved**" in out and f"{meta['moved']} of 4 settings moved" in err
    code, _, _ = compare_cli(ran, "--runs", copies["original"], copies["changed"], "--tolerance", "1000", "--fail-if-moved",
                             capsys=capsys)
    assert code == 0  # nothing is beyond a tolerance of 1000 points


def test_compare_picks_the_latest_two_and_names_what_it_cannot_find(ran, copies, capsys):
    from analysis import compare

    before, after = compare.select_sweeps(ran["client"], NAME)
    assert (before.info.run_id, after.info.run_id) == (copies["same"], copies["changed"])
    code, _, err = compare_cli(ran, "--commits", "0000000", "1111111", capsys=capsys)
    assert code == 2 and "no sweep of spec 'my_axis' at commit '0000000'" in err
    code, _, err = compare_cli(ran, "--runs", copies["original"], "nope", capsys=capsys)
    assert code == 2 and "--runs: no run 'nope'" in err
    code, _, err = compare_cli(ran, "--experiment", "my-experiment-again", capsys=capsys)
    assert code == 2 and "1 sweep run(s) of spec 'my_axis', two are needed" in err


# ----------------------------------------------------------------------- --executor local


def test_a_sweep_run_in_the_commands_process_is_recorded_as_a_tune_sweep_is(ran, copies):
    """``--executor local`` (the copies) computes the trials in the command's process: the same
    records as the Tune trials, marked by their executor (the numbers: the compare tests above)."""
    client = ran["client"]
    experiment = client.get_experiment_by_name("my-experiment-again").experiment_id
    local = client.get_run(copies["same"])
    assert local.data.tags["p2m.executor"] == "local" and local.data.metrics["trials_finished"] == 8
    trials = client.search_runs([experiment], "tags.`p2m.kind` = 'trial'")
    assert len(trials) == 8 and {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["p2m.executor"] for r in trials} == {"local"} and {r.data.tags["p2m.ray_node"] for r in trials} == {""}
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {local.info.run_id}
    assert [f.path for f in client.list_artifacts(local.info.run_id) if f.path.startswith("table")] == ["table.csv", "table.md"]
    on_ray = client.get_run(copies["original"])
    assert on_ray.data.tags["p2m.executor"] == "ray"
    ray_trials = client.search_runs([on_ray.info.experiment_id], f"tags.`mlflow.parentRunId` = '{on_ray.info.run_id}'")
    assert {r.data.tags["p2m.ray_node"] for r in ray_trials} != {""}
    assert {frozenset(r.data.params) for r in trials} == {frozenset(r.data.params) for r in ray_trials}


def test_a_training_sweep_is_refused_by_the_local_executor(tmp_path):
    generate_synthetic(tmp_path / "data", num_train=4, num_val=1, num_test=1, size=64, seed=0, progress=False)
    proc = sweep("--base", str(REPO / "experiments" / "train_tiny.yaml"), "--grid", "pseudo.beta=1,2", "--stage", "train",
                 "--name", "x", "--executor", "local", "--set", f"data.root={tmp_path / 'data'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sweep 'x' from the command line: --executor local runs stage 'pseudo' sweeps only" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
