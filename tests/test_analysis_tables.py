"""analysis.tables: the tables of pseudo-stage sweeps and their CLI, on a real MLflow store.

No mocks: one sqlite store per module (``tests/analysis_store.py``) holds sweeps and trial runs
made with ``MlflowClient`` as docs/TRACKING.md says. The numbers are checked against
``mlflow.search_runs`` and scipy's t interval (not through analysis/), the paper columns against
``analysis/paper_tables.yaml``; Markdown, LaTeX and CSV say what was measured, pair Δ by seed and
mark the intervals that exclude 0. The CLI writes files and fails with one clear line.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from analysis import tables
from tests.analysis_store import (
    DATASET,
    EXPERIMENT,
    OT_GAIN,
    REPO_ROOT,
    SEED_EFFECT,
    SOURCE,
    SPLIT,
    T0,
    Writer,
    build_store,
    make_trials,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store of ``tests/analysis_store.py``, once per module."""
    return build_store(tmp_path_factory.mktemp("mlstore"))


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
