"""analysis/: tables and plots read a real MLflow store written exactly as docs/TRACKING.md says.

No mocks: one sqlite store per module holds sweeps and trial runs made with ``MlflowClient``
(tags, JSON params, metrics, statuses, ``trials.json``, overlays), with the awkward cases a
real store has: a trial finished twice, FAILED and KILLED runs, a trial computed by another
sweep, a trial that never finished, an older sweep of the same spec.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from analysis import paper, plots, runs, tables
from p2m_core.errors import P2MInputError
from tests.spec_layouts import declared_layout

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = Path(
    os.environ.get("P2M_SHARED_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_tables.yaml")
)
EXPERIMENT = "p2m-pseudo"
T0 = 1_700_000_000_000  # start times (ms) are set explicitly: "latest" must not depend on timing
DATASET, SPLIT, SOURCE = "synthetic:/abs/data/synthetic", "val", "oracle_corrupt"
SEED_KEYS = ["data.point_seed", "ablation.corruption.seed"]

# table7: seed effects that cancel in pairs; seed 2 of ot never finishes.
SEED_EFFECT = {0: 0.0, 1: 4.0, 2: -10.0}
OT_GAIN = {0: 2.5, 1: 1.7}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def config_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def png_bytes(width: int = 96, height: int = 32, value: int = 0) -> bytes:
    from PIL import Image

    array = np.full((height, width, 3), value, dtype=np.uint8)
    array[:, : width // 3, 0] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Writer:
    """Writes sweep and trial runs the way p2m_core/tracking and ray_jobs do (docs/TRACKING.md)."""

    def __init__(self, client, experiment_id: str, scratch: Path) -> None:
        self.client, self.experiment_id, self.scratch = client, experiment_id, scratch

    def sweep(self, spec: str, paper_table: str, grid_keys: list[str], trials: list[dict], start: int) -> str:
        from mlflow.entities import Metric

        sweep_hash = config_hash(spec, [t["config_hash"] for t in trials])
        tags = {
            "p2m.kind": "sweep", "p2m.spec": spec, "p2m.paper_table": paper_table, "p2m.stage": "pseudo",
            "p2m.sweep_hash": sweep_hash, "p2m.dataset": DATASET, "p2m.split": SPLIT, "p2m.source": SOURCE,
            "p2m.grid_keys": json.dumps(grid_keys), "p2m.seed_keys": json.dumps(SEED_KEYS),
            "p2m.git_commit": "unknown", "mlflow.runName": f"sweep-{spec}-{sweep_hash[:8]}",
        }
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
        run_id = run.info.run_id
        doc = {"format": "p2m-sweep-trials/1", "spec": spec, "paper_table": paper_table,
               "grid_keys": grid_keys, "seed_keys": SEED_KEYS, "trials": trials}
        layout = declared_layout(spec)
        if layout is not None:  # as the sweep driver records a shipped spec's table
            doc["table"] = layout
        self.client.log_text(run_id, json.dumps(doc), "trials.json")
        self.client.log_text(run_id, yaml.safe_dump({"name": spec, "grid": grid_keys}), "spec.yaml")
        counts = {"trials_total": len(trials), "trials_skipped": 0, "trials_finished": len(trials), "trials_failed": 0}
        self.client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in counts.items()])
        self.client.set_terminated(run_id, "FINISHED", end_time=start + 1)
        return run_id

    def trial(self, parent: str, spec: str, paper_table: str, trial: dict, metrics: dict[str, float], start: int,
              status: str = "FINISHED", params: dict | None = None, overlays: int = 0) -> str:
        from mlflow.entities import Metric, Param

        tags = {
            "p2m.kind": "trial", "p2m.config_hash": trial["config_hash"], "p2m.hash_version": "1",
            "p2m.stage": "pseudo", "p2m.spec": spec, "p2m.paper_table": paper_table, "p2m.dataset": DATASET,
            "p2m.split": SPLIT, "p2m.source": SOURCE, "p2m.git_commit": "unknown", "p2m.seed": str(trial["seed"]),
            "p2m.setting": json.dumps(trial["setting"]), "mlflow.parentRunId": parent,
        }
        if status == "FAILED":
            tags["p2m.error"] = "RuntimeError: boom"
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
        run_id = run.info.run_id
        flat = {"data.point_seed": trial["seed"], "ablation.corruption.seed": trial["seed"], "pseudo.sinkhorn_tol": 0.001,
                **trial["setting"], **(params or {})}
        logged = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flat.items()]
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()], params=logged)
        for i in range(overlays):
            path = self.scratch / run_id / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(value=40 * i))
            self.client.log_artifact(run_id, str(path), "overlays")
        self.client.set_terminated(run_id, status, end_time=start + 1)
        return run_id


def make_trials(spec: str, key: str, values: list, seeds: list[int], by_seed_first: bool = False) -> list[dict]:
    pairs = [(v, s) for s in seeds for v in values] if by_seed_first else [(v, s) for v in values for s in seeds]
    last = key.rsplit(".", 1)[-1]
    return [{"config_hash": config_hash("pseudo", key, v, s), "setting": {key: v}, "seed": s,
             "label": f"{last}={'+'.join(v) if isinstance(v, list) else v}"} for v, s in pairs]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store with sweeps of table7 (two), table5, table6, table3, sinkhorn, and their trials."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "mlartifacts-empty").as_uri())
    w = Writer(client, exp, root / "scratch")
    ids: dict[str, object] = {"uri": uri, "client": client, "root": root}

    # An older table7 sweep with another seed: must not be chosen.
    old = make_trials("table7", "pseudo.assignment", ["mc", "ot"], [7])
    ids["table7_old"] = w.sweep("table7", "table7_assignment", ["pseudo.assignment"], old, T0)
    for t in old:
        w.trial(ids["table7_old"], "table7", "table7_assignment", t, {"PQ": 10.0, "PQ_th": 10.0, "PQ_st": 10.0}, T0 + 10)

    t7 = make_trials("table7", "pseudo.assignment", ["mc", "ot"], [0, 1, 2], by_seed_first=True)
    by = {(t["setting"]["pseudo.assignment"], t["seed"]): t for t in t7}
    # table5 sweep computed the ot/seed-1 trial first (same config hash): table7 must find it.
    t5 = [{**by[("ot", 1)], "setting": {"pseudo.k_scheme": "nearest_centroid"}, "label": "k_scheme=nearest_centroid"}]
    ids["table5"] = w.sweep("table5", "table5_k_scheme", ["pseudo.k_scheme"], t5, T0 + 500)
    ids["table7"] = w.sweep("table7", "table7_assignment", ["pseudo.assignment"], t7, T0 + 1000)

    def pq(assignment: str, seed: int) -> dict[str, float]:
        base = 50.0 + SEED_EFFECT[seed] + (OT_GAIN[seed] if assignment == "ot" else 0.0)
        return {"PQ": base, "PQ_th": base - 2.0 - 0.1 * seed, "PQ_st": 90.0 + 0.2 * seed + (0.3 if assignment == "ot" else 0.0),
                "mIoU": 70.0, "seconds_per_image": 0.02}

    s = T0 + 1100
    ids["mc0"] = w.trial(ids["table7"], "table7", "table7_assignment", by[("mc", 0)], pq("mc", 0), s, overlays=3)
    w.trial(ids["table7"], "table7", "table7_assignment", by[("ot", 0)], {"PQ": 99.0, "PQ_th": 99.0, "PQ_st": 99.0}, s + 1)
    ids["ot0"] = w.trial(ids["table7"], "table7", "table7_assignment", by[("ot", 0)], pq("ot", 0), s + 100, overlays=3)
    w.trial(ids["table7"], "table7", "table7_assignment", by[("ot", 0)], {"PQ": 0.0}, s + 200, status="KILLED")
    w.trial(ids["table7"], "table7", "table7_assignment", by[("mc", 1)], pq("mc", 1), s + 2)
    w.trial(ids["table7"], "table7", "table7_assignment", by[("mc", 1)], {"PQ": 1.0}, s + 300, status="FAILED")
    ids["ot1"] = w.trial(ids["table5"], "table5", "table5_k_scheme", by[("ot", 1)], pq("ot", 1), T0 + 600)
    w.trial(ids["table7"], "table7", "table7_assignment", by[("mc", 2)], pq("mc", 2), s + 3)
    w.trial(ids["table7"], "table7", "table7_assignment", by[("ot", 2)], {"PQ": 80.0}, s + 4, status="FAILED")
    ids["t7"] = t7

    t6 = make_trials("table6", "pseudo.centroid_iters", [1, 2, 4], [0, 1])
    ids["table6"] = w.sweep("table6", "table6_centroid_iterations", ["pseudo.centroid_iters"], t6, T0 + 2000)
    for i, t in enumerate(t6):
        it, seed = t["setting"]["pseudo.centroid_iters"], t["seed"]
        w.trial(ids["table6"], "table6", "table6_centroid_iterations", t,
                {"PQ": 40.0 + 0.123 * it + 0.011 * seed, "PQ_th": 38.0 + 0.1 * it, "PQ_st": 88.0}, T0 + 2100 + i)

    keys = ["pseudo.sinkhorn_mode", "pseudo.sinkhorn_epsilon", "pseudo.sinkhorn_iters"]
    sk = []
    for eps in (1e-3, 1e-2):
        for iters in (10, 100, 1000):
            sk.append({"pseudo.sinkhorn_mode": "reference", "pseudo.sinkhorn_epsilon": eps, "pseudo.sinkhorn_iters": iters})
        sk.append({"pseudo.sinkhorn_mode": "converged", "pseudo.sinkhorn_epsilon": eps})  # one cap: not in the grid
    sk_trials = [{"config_hash": config_hash("sk", s_), "setting": s_, "seed": 0,
                  "label": ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in s_.items())} for s_ in sk]
    ids["sinkhorn"] = w.sweep("sinkhorn", "", keys, sk_trials, T0 + 3000)
    for i, t in enumerate(sk_trials):
        st = t["setting"]
        iters = st.get("pseudo.sinkhorn_iters", 300)
        err = 0.5 / iters if st["pseudo.sinkhorn_mode"] == "reference" else 2e-5
        w.trial(ids["sinkhorn"], "sinkhorn", "", t,
                {"PQ": 50 + math.log10(iters), "PQ_th": 48.0, "disagreement_pct": 5.0 + i, "col_error": err,
                 "rel_error": 2 * err, "sinkhorn_iterations": float(iters), "seconds_per_image": 0.01 * (i + 1)},
                T0 + 3100 + i, params={"pseudo.sinkhorn_iters": 80, "pseudo.sinkhorn_max_iters": 2000})

    t3 = make_trials("table3", "pseudo.maps", [["semantic"], ["semantic", "boundary_low"]], [0])
    for t in t3:
        del t["label"]  # an entry without a label: the table makes one from the setting
    ids["table3"] = w.sweep("table3", "table3_maps", ["pseudo.maps"], t3, T0 + 4000)
    for i, t in enumerate(t3):
        w.trial(ids["table3"], "table3", "table3_maps", t, {"PQ": 45.0 + i, "PQ_th": 44.0, "PQ_st": 89.0}, T0 + 4100 + i)
    return ids


def expected_from_search_runs(store, trials: list[dict], key: str) -> pd.DataFrame:
    """Mean/std/n per setting, computed here from mlflow.search_runs (not through analysis.runs)."""
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    df = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.`p2m.kind` = 'trial'",
                            output_format="pandas", max_results=50000)
    df = df[df["status"] == "FINISHED"].sort_values("start_time")
    df = df.drop_duplicates("tags.p2m.config_hash", keep="last").set_index("tags.p2m.config_hash")
    rows = []
    for t in trials:
        if t["config_hash"] in df.index:
            rows.append({"value": json.dumps(t["setting"][key]), "seed": t["seed"], "PQ": df.loc[t["config_hash"], "metrics.PQ"],
                         "PQ_th": df.loc[t["config_hash"], "metrics.PQ_th"]})
    return pd.DataFrame(rows).groupby("value", sort=False).agg(["mean", "std", "count"])


def t_interval(differences: list[float]) -> tuple[float, float]:
    """The 95 % interval of the mean of paired differences, from scipy (not through analysis.stats)."""
    arr = np.asarray(differences)
    return scipy_stats.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=scipy_stats.sem(arr))


def md_cells(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the pipe table of a Markdown output."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return split(lines[0]), [split(line) for line in lines[2:]]


# ------------------------------------------------------------------------------------------ paper


def test_paper_yaml_equals_shared_reference():
    if not SHARED_REFERENCE.is_file():
        message = f"shared paper tables missing at {SHARED_REFERENCE}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    ours = yaml.safe_load(paper.PAPER_TABLES_PATH.read_text())
    reference = yaml.safe_load(SHARED_REFERENCE.read_text())
    assert ours == reference  # every table, row, number and key


def test_paper_rows_match_normalised_settings():
    frame = paper.paper_frame("table3_maps")
    assert list(frame.columns) == ["maps", "PQ", "PQ_th", "PQ_st"]
    assert paper.match_row("table3_maps", {"pseudo.maps": ["semantic", "boundary_low"]}) == {"PQ": 51.1, "PQ_th": 49.1, "PQ_st": 90.3}
    assert paper.match_row("table3_maps", {"pseudo.maps": ["boundary_low", "semantic"]}) is None  # order matters
    assert paper.match_row("table6_centroid_iterations", {"pseudo.centroid_iters": 8.0}) == {"PQ": 54.24}
    assert paper.match_row("table7_assignment", {"pseudo.k_scheme": "mc"}) is None
    assert paper.row_key("table4_semantic_losses") == "terms"
    with pytest.raises(P2MInputError, match="table99"):
        paper.paper_table("table99")


# ------------------------------------------------------------------------------------------- runs


def test_latest_sweep_is_chosen(store):
    client = store["client"]
    assert runs.find_sweep(client, "table7").info.run_id == store["table7"]
    assert runs.find_sweep(client, "table7", EXPERIMENT).info.run_id == store["table7"]
    with pytest.raises(runs.NoSweepError, match=r"'beta'.*'empty'"):
        runs.find_sweep(client, "beta", "empty")
    with pytest.raises(P2MInputError, match="no experiment named 'nope'"):
        runs.find_sweep(client, "table7", "nope")


def test_trial_frame_joins_by_hash(store):
    client = store["client"]
    frame = runs.trial_frame(client, runs.find_sweep(client, "table7"))
    assert len(frame) == 6 and list(frame["seed"]) == [0, 0, 1, 1, 2, 2]
    row = lambda a, s: frame[(frame["pseudo.assignment"] == a) & (frame["seed"] == s)].iloc[0]  # noqa: E731
    assert row("ot", 0)["run_id"] == store["ot0"] and row("ot", 0)["PQ"] == 52.5  # latest FINISHED, not KILLED/older
    assert row("mc", 1)["PQ"] == 54.0  # the newer FAILED run is ignored
    assert row("ot", 1)["run_id"] == store["ot1"] and row("ot", 1)["parent_run_id"] == store["table5"]
    assert bool(row("ot", 2)["missing"]) and pd.isna(row("ot", 2)["run_id"]) and math.isnan(row("ot", 2)["PQ"])
    assert frame["missing"].sum() == 1


def test_paging_reads_every_run(store, monkeypatch):
    client = store["client"]
    expected, _ = tables.build_table(client, "table7")
    monkeypatch.setattr(runs, "PAGE_SIZE", 2)
    paged, _ = tables.build_table(client, "table7")
    pd.testing.assert_frame_equal(expected, paged)


# ----------------------------------------------------------------------------------------- tables


def test_table7_numbers_equal_mlflow(store):
    df, meta = tables.build_table(store["client"], "table7")
    assert list(df["setting"]) == ["assignment=mc", "assignment=ot"]  # grid order, seeds folded
    expected = expected_from_search_runs(store, store["t7"], "pseudo.assignment")
    for _, r in df.iterrows():
        e = expected.loc[json.dumps(r["pseudo.assignment"])]
        for m in ("PQ", "PQ_th"):
            assert r[f"{m}_mean"] == pytest.approx(e[(m, "mean")])
            assert r[f"{m}_std"] == pytest.approx(e[(m, "std")])
            assert r[f"{m}_n"] == e[(m, "count")]
    assert meta["sweep_run_id"] == store["table7"] and meta["seeds"] == [0, 1, 2]


def test_paper_columns_equal_yaml(store):
    df, meta = tables.build_table(store["client"], "table7")
    rows = yaml.safe_load((REPO_ROOT / "analysis" / "paper_tables.yaml").read_text())["table7_assignment"]["rows"]
    for (_, r), p in zip(df.iterrows(), rows):
        assert r["pseudo.assignment"] == p["assignment"]
        for m in ("PQ", "PQ_th", "PQ_st"):
            assert r[f"{m}_paper"] == p[m]
    assert df.loc[1, "delta_PQ_paper"] == pytest.approx(rows[1]["PQ"] - rows[0]["PQ"])
    assert meta["paper_columns"] == ["PQ", "PQ_th", "PQ_st"]


def test_ot_minus_mc_is_paired_by_seed(store):
    df, _ = tables.build_table(store["client"], "table7")
    ot = df.iloc[1]
    paired = [OT_GAIN[0], OT_GAIN[1]]  # seed 2 has no finished ot run: left out of the pairs
    assert ot["delta_PQ_n"] == 2
    assert ot["delta_PQ_mean"] == pytest.approx(np.mean(paired))
    assert ot["delta_PQ_std"] == pytest.approx(np.std(paired, ddof=1))
    unpaired = ot["PQ_mean"] - df.iloc[0]["PQ_mean"]
    assert abs(unpaired - ot["delta_PQ_mean"]) > 3  # the seed effects would swamp an unpaired difference
    assert bool(df.iloc[0]["baseline"]) and math.isnan(df.iloc[0]["delta_PQ_mean"])


def test_missing_trials_are_reported(store):
    df, meta = tables.build_table(store["client"], "table7")
    assert (meta["trials_missing"], meta["trials_total"]) == (1, 6)
    assert meta["missing"] == [("assignment=ot", 2)]
    assert list(df["missing"]) == [0, 1] and list(df["n"]) == [3, 2]
    text = tables.render(df, meta, "md")
    assert "1 of 6 trials missing" in text and "assignment=ot seed 2" in text


def test_markdown_says_what_was_measured(store):
    df, meta = tables.build_table(store["client"], "table7")
    text = tables.render(df, meta, "md")
    assert (f"pseudo-mask quality of the p2m pseudo-label stage (maps: {SOURCE}) on {DATASET} {SPLIT}, 3 seeds") in text
    assert "paper: trained Point2Mask network, ResNet-50, Pascal VOC 2012 val".split(":", 1)[1] in text
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == 4
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    assert header[:4] == ["setting", "n", "PQ", "PQ paper"] and "ΔPQ" in header and "ΔPQ paper" in header
    assert "pairs" not in header  # each Δ cell says its n
    ot = [c.strip() for c in table_lines[3].strip("|").split("|")]
    assert ot[2] == f"{np.mean([52.5, 55.7]):.1f} ± {np.std([52.5, 55.7], ddof=1):.1f}" and ot[3] == "54.2"
    low, high = t_interval([2.5, 1.7])  # seed 2 has no ot run: two pairs; the interval contains 0, no mark
    assert ot[header.index("ΔPQ")] == f"{np.mean([2.5, 1.7]):+.1f} [{low:+.1f}, {high:+.1f}] (n=2)" == "+2.1 [-3.0, +7.2] (n=2)"
    assert ot[header.index("ΔPQ paper")] == "+2.3"
    assert "Δ: each row minus the baseline (assignment=mc), paired by seed: mean [low, high] (n=pairs)" in text
    assert "the 95 % t interval of the mean over the n paired seeds (mean ± t(0.975, n-1) s/sqrt(n))" in text
    assert "a trailing * marks a Δ whose 95 % interval excludes 0" in text and "no interval" not in text


def test_latex_and_csv(store):
    df, meta = tables.build_table(store["client"], "table7")
    latex = tables.render(df, meta, "latex")
    assert r"\begin{tabular}" in latex and r"\end{tabular}" in latex and r"$\pm$" in latex and r"PQ\_th" in latex
    assert "±" not in latex and "% measured: pseudo-mask quality" in latex
    for line in latex.splitlines():
        if not line.startswith("%"):
            assert "_" not in line.replace(r"\_", "")
    frame = pd.read_csv(io.StringIO(tables.render(df, meta, "csv")))
    for column in ("PQ_mean", "PQ_std", "PQ_n", "PQ_paper", "delta_PQ_mean", "delta_PQ_std", "delta_PQ_n", "delta_PQ_ci_low",
                   "delta_PQ_ci_high", "delta_PQ_paper"):
        assert pd.api.types.is_numeric_dtype(frame[column]), column
    assert pd.api.types.is_bool_dtype(frame["delta_PQ_significant"])
    columns = list(frame.columns)
    assert columns[columns.index("delta_PQ_mean"):columns.index("delta_PQ_paper") + 1] == [
        "delta_PQ_mean", "delta_PQ_std", "delta_PQ_n", "delta_PQ_ci_low", "delta_PQ_ci_high", "delta_PQ_significant", "delta_PQ_paper"]
    assert frame.loc[1, "delta_PQ_mean"] == pytest.approx(2.1)
    assert (frame.loc[1, "delta_PQ_ci_low"], frame.loc[1, "delta_PQ_ci_high"]) == pytest.approx(t_interval([2.5, 1.7]))
    assert not frame.loc[1, "delta_PQ_significant"]
    assert math.isnan(frame.loc[0, "delta_PQ_ci_low"]) and not frame.loc[0, "delta_PQ_significant"]  # the baseline
    assert "+2.1 [-3.0, +7.2] (n=2)" in latex and "% a trailing * marks a Delta whose 95 % interval excludes 0" in latex
    assert frame.loc[0, "PQ_paper"] == 51.9 and frame.loc[0, "spec"] == "table7"
    assert not frame.astype(str).apply(lambda c: c.str.contains("±")).any().any()


def test_table6_two_decimals_and_list_settings(store):
    df, meta = tables.build_table(store["client"], "table6")
    assert list(df["pseudo.centroid_iters"]) == [1, 2, 4]
    text = tables.render(df, meta, "md")
    assert f"{40.0 + 0.123 + 0.0055:.2f} ± " in text and "| 53.76 |" in text
    df3, _ = tables.build_table(store["client"], "table3")
    assert list(df3["PQ_paper"]) == [50.6, 51.1] and list(df3["setting"]) == ["maps=semantic", "maps=semantic+boundary_low"]
    assert df3.loc[1, "delta_PQ_paper"] == pytest.approx(0.5)


def test_sinkhorn_table_single_seed(store):
    df, meta = tables.build_table(store["client"], "sinkhorn")
    assert len(df) == 8 and meta["paper_columns"] == [] and meta["header_paper"] == "paper: no corresponding table"
    text = tables.render(df, meta, "md")
    assert "0.050 ± -" in text  # col_error 0.5/10, 3 decimals, no std for one seed
    assert "PQ paper" not in text
    # one seed: each Δ is one pair, shown without an interval (never a made-up ±), and said so once
    header, body = md_cells(text)
    assert body[1][header.index("ΔPQ")] == f"{math.log10(100) - math.log10(10):+.1f} (n=1, no interval)" == "+1.0 (n=1, no interval)"
    delta_cells = [c for row in body[1:] for h, c in zip(header, row) if h.startswith("Δ")]
    assert all(c.endswith("(n=1, no interval)") or c == "-" for c in delta_cells)  # "-": k_violation_pct not logged
    assert delta_cells.count("-") == 7 and not [c for c in delta_cells if "[" in c or "±" in c or "*" in c]
    assert "n=1, no interval: a Δ over one paired seed has no spread to estimate, so no interval is given" in text
    frame = pd.read_csv(io.StringIO(tables.render(df, meta, "csv")))
    assert frame["delta_PQ_ci_low"].isna().all() and frame["delta_PQ_ci_high"].isna().all()
    assert list(frame["delta_PQ_n"]) == [0] + [1] * 7 and not frame["delta_PQ_significant"].any()
    assert "n=1, no interval" in tables.render(df, meta, "latex")


# table5 in a store of its own, three seeds: nearest_centroid gains PQ steadily (its interval
# excludes 0), its PQ_th gain is seed noise; nearest_point finished only seed 0 (one pair).
K_GAIN = {"nearest_point": {0: 0.5}, "nearest_centroid": {0: 2.0, 1: 2.4, 2: 2.2}}
K_GAIN_TH = {"nearest_point": {0: 0.4}, "nearest_centroid": {0: 3.0, 1: -2.0, 2: 0.5}}


@pytest.fixture
def interval_store(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    w = Writer(client, client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "art").as_uri()), tmp_path / "scratch")
    trials = make_trials("table5", "pseudo.k_scheme", ["equal_division", "nearest_point", "nearest_centroid"], [0, 1, 2])
    sweep = w.sweep("table5", "table5_k_scheme", ["pseudo.k_scheme"], trials, T0)
    for i, t in enumerate(trials):
        k, seed = t["setting"]["pseudo.k_scheme"], t["seed"]
        if k == "nearest_point" and seed > 0:
            w.trial(sweep, "table5", "table5_k_scheme", t, {"PQ": 1.0}, T0 + 10 + i, status="FAILED")
            continue
        pq = 50.0 + SEED_EFFECT[seed] + K_GAIN.get(k, {}).get(seed, 0.0)
        pq_th = 48.0 + SEED_EFFECT[seed] + K_GAIN_TH.get(k, {}).get(seed, 0.0)
        w.trial(sweep, "table5", "table5_k_scheme", t, {"PQ": pq, "PQ_th": pq_th, "PQ_st": 90.0 + 0.1 * seed}, T0 + 10 + i)
    return client


def test_delta_cells_carry_interval_and_mark(interval_store):
    df, meta = tables.build_table(interval_store, "table5")
    text = tables.render(df, meta, "md")
    header, body = md_cells(text)
    rows = {r[0]: dict(zip(header, r)) for r in body}
    assert list(rows) == ["k_scheme=equal_division", "k_scheme=nearest_point", "k_scheme=nearest_centroid"]
    assert rows["k_scheme=equal_division"]["ΔPQ"] == "(baseline)"
    gains = list(K_GAIN["nearest_centroid"].values())
    low, high = t_interval(gains)  # [1.70, 2.70]: excludes 0, marked
    assert rows["k_scheme=nearest_centroid"]["ΔPQ"] == f"{np.mean(gains):+.1f} [{low:+.1f}, {high:+.1f}] (n=3) *" == "+2.2 [+1.7, +2.7] (n=3) *"
    gains_th = list(K_GAIN_TH["nearest_centroid"].values())
    low, high = t_interval(gains_th)  # contains 0: no mark
    assert rows["k_scheme=nearest_centroid"]["ΔPQ_th"] == f"+0.5 [{low:+.1f}, {high:+.1f}] (n=3)" == "+0.5 [-5.7, +6.7] (n=3)"
    assert rows["k_scheme=nearest_centroid"]["ΔPQ_st"] == "+0.0 [+0.0, +0.0] (n=3)"  # no difference at all: not marked
    assert rows["k_scheme=nearest_point"]["n"] == "1" and rows["k_scheme=nearest_point"]["ΔPQ"] == "+0.5 (n=1, no interval)"
    assert rows["k_scheme=nearest_centroid"]["ΔPQ paper"] == "+1.4" and rows["k_scheme=nearest_point"]["ΔPQ paper"] == "+0.4"
    assert "a trailing * marks a Δ whose 95 % interval excludes 0" in text
    assert "n=1, no interval: a Δ over one paired seed has no spread to estimate" in text

    latex = tables.render(df, meta, "latex")  # the same cells, escaped
    assert r"k\_scheme=nearest\_centroid & 3 & " in latex and "& +2.2 [+1.7, +2.7] (n=3) * &" in latex
    assert "& +0.5 (n=1, no interval) &" in latex and "% n=1, no interval: a Delta over one paired seed" in latex

    frame = pd.read_csv(io.StringIO(tables.render(df, meta, "csv")))
    assert list(frame["delta_PQ_significant"]) == [False, False, True]
    assert list(frame["delta_PQ_th_significant"]) == [False, False, False]
    assert list(frame["delta_PQ_n"]) == [0, 1, 3]
    assert (frame.loc[2, "delta_PQ_ci_low"], frame.loc[2, "delta_PQ_ci_high"]) == pytest.approx(t_interval(gains))
    assert (frame.loc[2, "delta_PQ_th_ci_low"], frame.loc[2, "delta_PQ_th_ci_high"]) == pytest.approx(t_interval(gains_th))
    assert frame.loc[[0, 1], ["delta_PQ_ci_low", "delta_PQ_ci_high"]].isna().all().all()  # baseline, one pair: no bounds
    assert frame.loc[1, "delta_PQ_mean"] == pytest.approx(0.5) and math.isnan(frame.loc[1, "delta_PQ_std"])


# -------------------------------------------------------------------------------------------- CLI


def test_cli_writes_file(store, tmp_path, capsys):
    out = tmp_path / "t7.csv"
    assert tables.main(["--table", "table7", "--tracking-uri", store["uri"], "--format", "csv", "--out", str(out)]) == 0
    assert pd.read_csv(out)["PQ_n"].tolist() == [3, 2]
    assert tables.main(["--table", "table7", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT]) == 0
    assert "| assignment=ot |" in capsys.readouterr().out


def test_cli_missing_sqlite_file(tmp_path):
    db = tmp_path / "nothing" / "mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", "--table", "table7", "--tracking-uri", f"sqlite:///{db}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1 and str(db) in proc.stderr
    assert not db.exists()


def test_cli_default_uri_is_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tables.main(["--table", "table7"]) == 2
    assert str(tmp_path / "mlflow.db") in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_unknown_table(store, capsys):
    assert tables.main(["--table", "table9", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    # any spec renders, so the error is about the store: it names the sweeps it holds
    assert "no sweep run of spec 'table9'" in err and "sweeps in the store: sinkhorn, table3" in err


# ------------------------------------------------------------------------------------------ plots


def test_plots_written_and_logged(store, tmp_path):
    from PIL import Image

    client = store["client"]
    written = plots.make_plots(client, tmp_path / "plots")
    names = sorted(p.name for p in written)
    # the figures made for the paper's sweeps, then every numeric grid axis of any sweep
    assert names == ["sinkhorn.png", "sinkhorn_by_sinkhorn_epsilon.png", "sinkhorn_by_sinkhorn_iters.png",
                     "sinkhorn_epsilon.png", "table6_by_centroid_iters.png", "table6_centroid_iters.png",
                     "table7_overlays.png"]
    for path in written:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 200
    for sweep, expected in (("table6", {"plots/table6_centroid_iters.png", "plots/table6_by_centroid_iters.png"}),
                            ("sinkhorn", {"plots/sinkhorn.png", "plots/sinkhorn_epsilon.png", "plots/sinkhorn_by_sinkhorn_epsilon.png",
                                          "plots/sinkhorn_by_sinkhorn_iters.png"}),
                            ("table7", {"plots/table7_overlays.png"})):
        assert {f.path for f in client.list_artifacts(store[sweep], "plots")} == expected


def test_plots_cli_no_sweep(store, tmp_path, capsys):
    code = plots.main(["--tracking-uri", store["uri"], "--experiment", "empty", "--out", str(tmp_path / "p"), "--no-log"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "no sweep of table6, sinkhorn, table7" in err
    assert not (tmp_path / "p").exists()
