"""analysis/ on training sweeps: a real MLflow sqlite store written as docs/TRACKING.md says.

No mocks: sweep runs with ``trials.json`` and trial runs with the training contract (tags as
pseudo trials but ``p2m.stage=train``, flat config params, metrics logged per iteration whose
latest value is the final val evaluation, training metrics per step) are made with
``MlflowClient``. The histories are built so that the final evaluation is neither the best nor
the last one written in time: a table must show MLflow's latest value by step.
"""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis import plots, runs, tables, train_sweep_columns
from tests.spec_layouts import declared_layout

T0 = 1_700_000_000_000
ITERS = 300
EVAL_STEPS = (100, 200, ITERS)
TRAIN_DATASET, PSEUDO_DATASET = "synthetic:/abs/data/train_tiny", "synthetic:/abs/data/synthetic"
ASSIGN, TERMS = "pseudo.assignment", "loss.semantic_terms"

# table7_train: the final evaluation of each (assignment, seed).
NET = {("mc", 0): 20.0, ("mc", 1): 23.0, ("ot", 0): 26.0, ("ot", 1): 30.0}
NET_PSEUDO = {("mc", 0): 40.0, ("mc", 1): 41.0, ("ot", 0): 47.0, ("ot", 1): 48.0}
# table7 (the pseudo stage): PQ per (assignment, seed), three seeds.
STAGE = {("mc", 0): 50.0, ("mc", 1): 51.0, ("mc", 2): 52.0, ("ot", 0): 60.0, ("ot", 1): 62.0, ("ot", 2): 61.0}
# table4: one seed; the [partial, rgb_tree] trial fails.
T4_SETTINGS = [["partial"], ["partial", "lab"], ["partial", "rgb_tree"], ["partial", "lab", "rgb_tree"]]
T4_NET = {0: 11.0, 1: 14.5, 3: 17.25}


def chash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def final_metrics(pq: float, pseudo_pq: float, miou: float) -> dict[str, float]:
    """The final evaluation of a training trial (docs/TRACKING.md, training trials)."""
    return {"PQ": pq, "SQ": pq + 30, "RQ": pq + 10, "PQ_th": pq - 3, "SQ_th": pq + 29, "RQ_th": pq + 8,
            "PQ_st": pq + 40, "SQ_st": pq + 45, "RQ_st": pq + 42, "mIoU": miou,
            "pseudo_PQ": pseudo_pq, "pseudo_PQ_th": pseudo_pq - 2, "pseudo_PQ_st": pseudo_pq + 30}


class Store:
    """Writes sweeps and trials as ray_jobs does; training trials with their metric histories."""

    def __init__(self, root) -> None:
        from mlflow import MlflowClient

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.train_exp = self.client.create_experiment("p2m-train", artifact_location=(root / "art-train").as_uri())
        self.pseudo_exp = self.client.create_experiment("p2m-pseudo", artifact_location=(root / "art-pseudo").as_uri())

    def sweep(self, experiment: str, spec: str, paper_table: str, stage: str, trials: list[dict], start: int,
              dataset: str, split: str = "val") -> str:
        tags = {"p2m.kind": "sweep", "p2m.spec": spec, "p2m.paper_table": paper_table, "p2m.stage": stage,
                "p2m.sweep_hash": chash(spec, start), "p2m.dataset": dataset, "p2m.split": split,
                "p2m.source": "oracle_corrupt", "p2m.grid_keys": json.dumps(list(trials[0]["setting"])),
                "p2m.seed_keys": json.dumps(["seed", "data.point_seed"]), "p2m.git_commit": "unknown",
                "mlflow.runName": f"sweep-{spec}"}
        run_id = self.client.create_run(experiment, start_time=start, tags=tags).info.run_id
        doc = {"format": "p2m-sweep-trials/1", "spec": spec, "paper_table": paper_table,
               "grid_keys": list(trials[0]["setting"]), "seed_keys": ["seed", "data.point_seed"], "trials": trials}
        layout = declared_layout(spec)
        if layout is not None:  # as the sweep driver records a shipped spec's table
            doc["table"] = layout
        self.client.log_text(run_id, json.dumps(doc), "trials.json")
        self.client.set_terminated(run_id, "FINISHED", end_time=start + 1)
        return run_id

    def _trial_run(self, experiment: str, parent: str, spec: str, paper_table: str, stage: str, trial: dict,
                   start: int, dataset: str) -> str:
        from mlflow.entities import Param

        tags = {"p2m.kind": "trial", "p2m.config_hash": trial["config_hash"], "p2m.hash_version": "2",
                "p2m.stage": stage, "p2m.spec": spec, "p2m.paper_table": paper_table, "p2m.dataset": dataset,
                "p2m.split": "val", "p2m.source": "oracle_corrupt", "p2m.git_commit": "unknown",
                "p2m.seed": str(trial["seed"]), "p2m.setting": json.dumps(trial["setting"]), "mlflow.parentRunId": parent,
                "mlflow.runName": f"{trial['label']} seed={trial['seed']}"}
        run_id = self.client.create_run(experiment, start_time=start, tags=tags).info.run_id
        flat = {"seed": trial["seed"], "data.point_seed": trial["seed"], "train.iters": ITERS, **trial["setting"]}
        self.client.log_batch(run_id, params=[Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in flat.items()])
        return run_id

    def train_trial(self, parent: str, spec: str, paper_table: str, trial: dict, final: dict[str, float], start: int,
                    status: str = "FINISHED") -> str:
        """Training metrics every 50 iterations, evaluations at EVAL_STEPS (step 200's written twice)."""
        from mlflow.entities import Metric

        run_id = self._trial_run(self.train_exp, parent, spec, paper_table, "train", trial, start, TRAIN_DATASET)
        metrics = []
        for step in range(50, ITERS + 1, 50):
            t = start + step
            metrics += [Metric("loss/total", 5.0 * math.exp(-step / 100) + 0.1, t, step),
                        Metric("loss/partial", 1.0 / step, t, step), Metric("lr", 3e-3, t, step),
                        Metric("pseudo_share", 0.3, t, step), Metric("step_seconds", 0.25, t, step)]
        for step in (100, ITERS):
            scale = 0.5 if step == 100 else 1.0
            metrics += [Metric(k, v * scale, start + step, step) for k, v in final.items()]
        # step 200 twice (a worker restored from the step-100 checkpoint evaluates it again): the
        # later write counts; it is better than the final evaluation and written after it
        metrics += [Metric(k, v + 1.0, start + 200, 200) for k, v in final.items()]
        metrics += [Metric(k, v + 5.0, start + ITERS + 50, 200) for k, v in final.items()]
        metrics.append(Metric("iteration", float(ITERS), start + ITERS, ITERS))
        self.client.log_batch(run_id, metrics=metrics)
        self.client.set_terminated(run_id, status, end_time=start + ITERS + 60)
        return run_id

    def pseudo_trial(self, parent: str, spec: str, paper_table: str, trial: dict, pq: float, start: int) -> str:
        from mlflow.entities import Metric

        run_id = self._trial_run(self.pseudo_exp, parent, spec, paper_table, "pseudo", trial, start, PSEUDO_DATASET)
        values = {"PQ": pq, "PQ_th": pq - 1.0, "PQ_st": pq + 20.0, "mIoU": 70.0}
        self.client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in values.items()])
        self.client.set_terminated(run_id, "FINISHED", end_time=start + 1)
        return run_id


def trials_of(stage: str, key: str, values: list, seeds: list[int]) -> list[dict]:
    last = key.rsplit(".", 1)[-1]
    return [{"config_hash": chash(stage, key, v, s), "setting": {key: v}, "seed": s,
             "label": f"{last}={'+'.join(v) if isinstance(v, list) else v}"} for v in values for s in seeds]


def add_train_sweeps(store: Store) -> dict[str, object]:
    ids: dict[str, object] = {}
    t7 = trials_of("train", ASSIGN, ["mc", "ot"], [0, 1])
    ids["table7_train"] = store.sweep(store.train_exp, "table7_train", "table7_assignment", "train", t7, T0 + 100, TRAIN_DATASET)
    for i, t in enumerate(t7):
        key = (t["setting"][ASSIGN], t["seed"])
        ids[key] = store.train_trial(ids["table7_train"], "table7_train", "table7_assignment", t,
                                     final_metrics(NET[key], NET_PSEUDO[key], 60.0 + i), T0 + 200 + 1000 * i)
    t4 = trials_of("train", TERMS, T4_SETTINGS, [0])
    ids["table4"] = store.sweep(store.train_exp, "table4", "table4_semantic_losses", "train", t4, T0 + 50_000, TRAIN_DATASET)
    for i, t in enumerate(t4):
        if i in T4_NET:
            store.train_trial(ids["table4"], "table4", "table4_semantic_losses", t,
                              final_metrics(T4_NET[i], 30.0 + i, 50.0 + i), T0 + 51_000 + 1000 * i)
        else:  # a failed trial: its partial history must not show up anywhere
            store.train_trial(ids["table4"], "table4", "table4_semantic_losses", t, final_metrics(99.0, 99.0, 99.0),
                              T0 + 51_000 + 1000 * i, status="FAILED")
    return ids


def add_pseudo_sweeps(store: Store) -> dict[str, str]:
    ids = {}
    # an older table7 sweep with other numbers: the latest must be used
    old = trials_of("pseudo-old", ASSIGN, ["mc", "ot"], [0])
    ids["old"] = store.sweep(store.pseudo_exp, "table7", "table7_assignment", "pseudo", old, T0 + 60_000, PSEUDO_DATASET)
    for i, t in enumerate(old):
        store.pseudo_trial(ids["old"], "table7", "table7_assignment", t, 1.0 + i, T0 + 60_100 + i)
    t7 = trials_of("pseudo", ASSIGN, ["ot", "mc"], [0, 1, 2])  # not the training sweep's order: matched by setting
    ids["table7"] = store.sweep(store.pseudo_exp, "table7", "table7_assignment", "pseudo", t7, T0 + 70_000, PSEUDO_DATASET)
    for i, t in enumerate(t7):
        store.pseudo_trial(ids["table7"], "table7", "table7_assignment", t, STAGE[(t["setting"][ASSIGN], t["seed"])],
                           T0 + 70_100 + i)
    # another paper table's pseudo sweep, newer: must not be taken for table 7
    t5 = trials_of("pseudo", "pseudo.k_scheme", ["equal_division"], [0])
    ids["table5"] = store.sweep(store.pseudo_exp, "table5", "table5_k_scheme", "pseudo", t5, T0 + 80_000, PSEUDO_DATASET)
    store.pseudo_trial(ids["table5"], "table5", "table5_k_scheme", t5[0], 77.0, T0 + 80_100)
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Training sweeps table7_train and table4, and the pseudo-stage sweeps of tables 7 and 5."""
    s = Store(tmp_path_factory.mktemp("train-store"))
    s.ids = {**add_train_sweeps(s), **add_pseudo_sweeps(s)}
    return s


def row(df: pd.DataFrame, key: str, value) -> pd.Series:
    return df[[v == value for v in df[key]]].iloc[0]


def cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return split(lines[0]), [split(line) for line in lines[2:]]


# ----------------------------------------------------------------------------------------- tables


def test_network_columns_are_the_final_evaluation(store):
    df, meta = tables.build_table(store.client, "table7_train")
    assert list(df["setting"]) == ["assignment=mc", "assignment=ot"] and list(df["n"]) == [2, 2]
    for a in ("mc", "ot"):
        r = row(df, ASSIGN, a)
        finals = [final_metrics(NET[(a, s)], NET_PSEUDO[(a, s)], 0.0) for s in (0, 1)]
        for m in ("PQ", "PQ_th", "PQ_st", "pseudo_PQ"):  # the columns table7_train.yaml declares
            values = [f[m] for f in finals]  # the step-300 values, not step 200's better late write
            assert r[f"{m}_mean"] == pytest.approx(np.mean(values)) and r[f"{m}_n"] == 2, (a, m)
            assert r[f"{m}_std"] == pytest.approx(np.std(values, ddof=1))
    ot = row(df, ASSIGN, "ot")
    assert (ot["PQ_paper"], ot["PQ_th_paper"], ot["PQ_st_paper"]) == (54.2, 52.4, 90.3)  # the paper's trained network
    assert ot["delta_PQ_mean"] == pytest.approx(np.mean([26.0 - 20.0, 30.0 - 23.0]))  # paired by seed
    assert ot["delta_PQ_paper"] == pytest.approx(54.2 - 51.9)
    assert meta["stage"] == "train" and meta["sweep_run_id"] == store.ids["table7_train"]
    assert meta["header_measured"].startswith(f"measured: the network each trial trained (p2m train stage after {ITERS} iterations)")


def test_a_held_out_split_is_what_the_table_reports(tmp_path):
    """A sweep with ``split: test``: its trials evaluated on val as they trained (what settings
    were chosen on) and on test once at the end; the table reports test, and says so."""
    from mlflow.entities import Metric

    s = Store(tmp_path)
    t7 = trials_of("held-out", ASSIGN, ["mc", "ot"], [0, 1, 2])
    sweep = s.sweep(s.train_exp, "table7_train", "table7_assignment", "train", t7, T0, TRAIN_DATASET, split="test")
    expected = {}
    for i, t in enumerate(t7):
        run_id = s.train_trial(sweep, "table7_train", "table7_assignment", t, final_metrics(90.0, 80.0, 70.0), T0 + 1000 * i)
        test_pq = 40.0 + 2 * t["seed"] + (3.0 if t["setting"][ASSIGN] == "ot" else 0.0)
        expected.setdefault(t["setting"][ASSIGN], []).append(test_pq)
        held_out = {f"test/{k}": v for k, v in final_metrics(test_pq, 30.0, 50.0).items()}
        s.client.log_batch(run_id, metrics=[Metric(k, v, T0 + 1000 * i + 999, ITERS) for k, v in held_out.items()])
    df, meta = tables.build_table(s.client, "table7_train")
    row = df.set_index("setting")
    for setting, values in expected.items():
        assert row.loc[f"assignment={setting}", "PQ_mean"] == pytest.approx(sum(values) / 3)  # not val's 90
    assert row.loc["assignment=ot", "delta_PQ_mean"] == pytest.approx(3.0)
    assert "evaluated on its test split" in tables.render(df, meta, "md")


def test_pseudo_stage_columns_hold_the_same_settings_values(store):
    df, meta = tables.build_table(store.client, "table7_train", "p2m-train")  # the pseudo sweep is in another experiment
    for a in ("mc", "ot"):
        r = row(df, ASSIGN, a)
        pq = [STAGE[(a, s)] for s in (0, 1, 2)]
        assert r["pseudo_stage_PQ_mean"] == pytest.approx(np.mean(pq)) and r["pseudo_stage_PQ_n"] == 3
        assert r["pseudo_stage_PQ_std"] == pytest.approx(np.std(pq, ddof=1))
        assert r["pseudo_stage_PQ_th_mean"] == pytest.approx(np.mean(pq) - 1.0)
        assert r["pseudo_stage_PQ_st_mean"] == pytest.approx(np.mean(pq) + 20.0)
    assert meta["pseudo_stage"]["sweep_run_id"] == store.ids["table7"] and meta["pseudo_stage"]["n_seeds"] == 3

    header, body = cells(tables.render(df, meta, "md"))
    assert header[:9] == ["setting", "n", "net PQ", "net PQ paper", "net PQ_th", "net PQ_th paper", "net PQ_st",
                          "net PQ_st paper", "pseudo PQ (trained net)"]
    assert header[9] == "pseudo PQ (pseudo stage)" and header[10:12] == ["Δnet PQ", "Δnet PQ paper"]
    assert not [h for h in header if h.startswith("Δpseudo")]  # pseudo-stage columns are no differences: no interval
    ot = body[1]
    assert ot[header.index("net PQ")] == f"{np.mean([26.0, 30.0]):.1f} ± {np.std([26.0, 30.0], ddof=1):.1f}"
    assert ot[header.index("net PQ paper")] == "54.2"
    assert ot[header.index("pseudo PQ (trained net)")] == f"{np.mean([47.0, 48.0]):.1f} ± {np.std([47.0, 48.0], ddof=1):.1f}"
    assert ot[header.index("pseudo PQ (pseudo stage)")] == "61.0 ± 1.0 (n=3)"
    assert body[0][header.index("pseudo PQ (pseudo stage)")] == "51.0 ± 1.0 (n=3)"
    # ot - mc per seed: 6 and 7, t(0.975, 1) = 12.706: [+0.1, +12.9] excludes 0, marked
    low, high = scipy_stats.t.interval(0.95, 1, loc=6.5, scale=scipy_stats.sem([6.0, 7.0]))
    assert ot[header.index("Δnet PQ")] == f"+6.5 [{low:+.1f}, {high:+.1f}] (n=2) *" == "+6.5 [+0.1, +12.9] (n=2) *"
    assert ot[header.index("Δnet PQ paper")] == "+2.3" and body[0][header.index("Δnet PQ")] == "(baseline)"
    assert "a trailing * marks a Δ whose 95 % interval excludes 0" in tables.render(df, meta, "md")
    text = tables.render(df, meta, "md")
    assert f"sweep table7 (run {store.ids['table7']}), maps oracle_corrupt on {PSEUDO_DATASET} val, 3 seeds" in text


def test_table4_without_a_pseudo_sweep_leaves_those_columns_out(store):
    df, meta = tables.build_table(store.client, "table4")
    assert not [c for c in df.columns if c.startswith("pseudo_stage_")] and "pseudo_stage" not in meta
    assert list(df["setting"]) == ["semantic_terms=partial", "semantic_terms=partial+lab", "semantic_terms=partial+rgb_tree",
                                   "semantic_terms=partial+lab+rgb_tree"]
    assert list(df["mIoU_mean"][[0, 1, 3]]) == [50.0, 51.0, 53.0] and list(df["PQ_mean"][[0, 1, 3]]) == [11.0, 14.5, 17.25]
    assert list(df["mIoU_paper"]) == [61.6, 69.0, 68.0, 69.5]  # rows matched through the paper's `terms`
    assert meta["trials_missing"] == 1 and meta["missing"] == [("semantic_terms=partial+rgb_tree", 0)]
    text = tables.render(df, meta, "md")
    header, body = cells(text)
    assert header[2:4] == ["net mIoU", "net mIoU paper"] and not [h for h in header if "pseudo stage" in h]
    assert body[3][2] == "53.0 ± -" and body[2][2] == "-"
    # one seed: a Δ is one pair, so it has no interval; the failed trial's row has no pair at all
    assert body[1][header.index("Δnet mIoU")] == "+1.0 (n=1, no interval)" and body[2][header.index("Δnet mIoU")] == "-"
    assert "n=1, no interval: a Δ over one paired seed has no spread to estimate" in text
    assert "no pseudo-stage sweep of paper table table4_semantic_losses" in text


def test_columns_appear_once_the_pseudo_sweep_exists(tmp_path):
    s = Store(tmp_path)
    add_train_sweeps(s)
    df, meta = tables.build_table(s.client, "table7_train")
    assert not [c for c in df.columns if c.startswith("pseudo_stage_")]
    assert "pseudo (pseudo stage)" not in tables.render(df, meta, "md")  # table7_train itself is no pseudo sweep
    add_pseudo_sweeps(s)
    df, meta = tables.build_table(s.client, "table7_train")
    assert list(df["pseudo_stage_PQ_mean"]) == pytest.approx([51.0, 61.0])
    assert "pseudo PQ (pseudo stage)" in tables.render(df, meta, "md")


def test_latex_and_csv(store):
    df, meta = tables.build_table(store.client, "table7_train")
    latex = tables.render(df, meta, "latex")
    assert r"\begin{tabular}" in latex and r"net PQ\_th paper" in latex and "pseudo PQ (pseudo stage)" in latex
    assert "% columns: net = the trained network" in latex and "±" not in latex
    frame = pd.read_csv(io.StringIO(tables.render(df, meta, "csv")))
    assert list(frame["PQ_mean"]) == pytest.approx([21.5, 28.0]) and list(frame["pseudo_PQ_mean"]) == pytest.approx([40.5, 47.5])
    assert list(frame["pseudo_stage_PQ_th_mean"]) == pytest.approx([50.0, 60.0])
    assert set(frame["pseudo_stage_sweep_run_id"]) == {store.ids["table7"]} and set(frame["stage"]) == {"train"}
    assert list(frame["delta_PQ_significant"]) == [False, True] and frame.loc[1, "delta_PQ_ci_low"] == pytest.approx(0.1469, abs=1e-3)
    assert "+6.5 [+0.1, +12.9] (n=2) *" in latex


def test_cli_renders_every_format(store, capsys):
    for fmt in ("md", "latex", "csv"):
        assert tables.main(["--table", "table7_train", "--tracking-uri", store.uri, "--format", fmt]) == 0
        assert "61.0" in capsys.readouterr().out
    assert tables.main(["--table", "table5_train", "--tracking-uri", store.uri]) == 2
    assert "no sweep run of spec 'table5_train'" in capsys.readouterr().err


def test_pseudo_tables_keep_their_layout(store):
    df, meta = tables.build_table(store.client, "table7")  # the pseudo sweep itself: no training columns
    header, _ = cells(tables.render(df, meta, "md"))
    assert header[:4] == ["setting", "n", "PQ", "PQ paper"] and "pseudo_stage" not in meta
    assert meta["header_measured"].startswith("measured: pseudo-mask quality of the p2m pseudo-label stage")


# ------------------------------------------------------------------------------------------ plots


def test_metric_histories_are_per_iteration(store):
    frame = runs.trial_frame(store.client, runs.find_sweep(store.client, "table7_train"))
    history = runs.metric_histories(store.client, frame, ["PQ", "loss/total"])
    pq = history[(history["key"] == "PQ") & (history["run_id"] == store.ids[("ot", 1)])]
    assert list(pq["step"]) == list(EVAL_STEPS) and list(pq["value"]) == [15.0, 35.0, 30.0]
    assert len(history[history["key"] == "loss/total"]) == 4 * 6
    frame4 = runs.trial_frame(store.client, runs.find_sweep(store.client, "table4"))
    assert set(runs.metric_histories(store.client, frame4, ["PQ"])["label"]) == {
        "semantic_terms=partial", "semantic_terms=partial+lab", "semantic_terms=partial+lab+rgb_tree"}  # not the FAILED run


def test_learning_curves_written_and_logged(store, tmp_path, capsys):
    from PIL import Image

    written = plots.make_plots(store.client, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert "table7_train_learning_curves.png" in names and "table4_learning_curves.png" in names
    for name in ("table7_train_learning_curves.png", "table4_learning_curves.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600
    assert {f.path for f in store.client.list_artifacts(store.ids["table7_train"], "plots")} == {"plots/table7_train_learning_curves.png"}


def test_learning_curves_skipped_without_training_sweeps(tmp_path, capsys):
    s = Store(tmp_path)
    add_pseudo_sweeps(s)
    with pytest.raises(runs.NoSweepError, match="no training sweep"):
        plots.plot_learning_curves(s.client, None)
    written = plots.make_plots(s.client, tmp_path / "plots", log=False)
    assert not [p for p in written if p.name.endswith("_learning_curves.png")]
    assert "note: no train sweep, its plot skipped" in capsys.readouterr().err
    assert train_sweep_columns.label("pseudo_stage_PQ") == "pseudo PQ (pseudo stage)"
