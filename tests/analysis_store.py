"""A real MLflow store of pseudo-stage sweeps for the tests of analysis/ (paper, runs, tables, plots).

No mocks: ``Writer`` makes sweeps and trial runs with ``MlflowClient`` exactly as docs/TRACKING.md
says (tags, JSON params, metrics, statuses, ``trials.json``, overlays), and ``build_store`` writes
one sqlite store with the awkward cases a real store has: a trial finished twice, FAILED and
KILLED runs, a trial computed by another sweep, a trial that never finished, an older sweep of
the same spec. """

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.spec_layouts import declared_layout

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "p2m-pseudo"
T0 = 1_700_000_000_000  # start times (ms) are set explicitly: "latest" must not depend on timing
DATASET, SPLIT, SOURCE = "synthetic:/abs/data/synthetic", "val", "oracle_corrupt"
SEED_KEYS = ["data.point_seed", "ablation.corruption.seed"]

# table7: seed effects that cancel in pairs; seed 2 of ot never finishes.
SEED_EFFECT = {0: 0.0, 1: 4.0, 2: -10.0}
OT_GAIN = {0: 2.5, 1: 1.7}


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


def build_store(root: Path) -> dict[str, Any]:
    """One sqlite store under ``root`` with sweeps of table7 (two), table5, table6, table3,
    sinkhorn, and their trials; returns its URI, client, root and the ids the tests look up."""
    from mlflow import MlflowClient

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
