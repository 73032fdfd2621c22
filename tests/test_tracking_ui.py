"""What the MLflow UI is given: links, the experiment's kind, dataset inputs (real sqlite stores).

The sweeps that write all of this for real are checked in test_sweep_run.py and test_train_ray.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from mlflow.tracking import MlflowClient

from p2m_core.config import load_config
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.datasets import log_dataset_inputs, split_digest
from p2m_core.tracking.ui import compare_runs_url, experiment_url
from p2m_core.tracking.ui import main as ui_main

REPO = Path(__file__).resolve().parents[1]


def test_links_open_the_runs_table_in_model_training_mode() -> None:
    local = experiment_url("sqlite:////abs/mlflow.db", "7")
    assert local == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert experiment_url("http://head:5000/", "7") == "http://head:5000/#/experiments/7/runs?workflowType=machine_learning"
    compare = compare_runs_url("http://head:5000", "7", ["a1", "b2"])
    route, query = urlsplit(compare).fragment.split("?")
    assert route == "/compare-runs"
    values = {k: unquote(v[0]) for k, v in parse_qs(query).items()}
    assert values.pop("workflowType") == "machine_learning"
    assert {k: json.loads(v) for k, v in values.items()} == {"runs": ["a1", "b2"], "experiments": ["7"]}


def test_experiments_are_of_the_model_training_kind_new_or_reused(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    created = store.ensure_experiment(uri, "fresh")
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(created).tags[T.EXPERIMENT_KIND] == "custom_model_development"
    older = client.create_experiment("made-before")  # as an older p2m or a user made it: no kind
    assert T.EXPERIMENT_KIND not in client.get_experiment(older).tags
    assert store.ensure_experiment(uri, "made-before") == older
    assert client.get_experiment(older).tags[T.EXPERIMENT_KIND] == "custom_model_development"

    assert ui_main(["--tracking-uri", uri, "fresh", "made-before"]) == 0
    out = capsys.readouterr().out
    assert f"ui --backend-store-uri {uri}" in out
    assert f"#/experiments/{older}/runs?workflowType=machine_learning" in out
    assert ui_main(["--tracking-uri", uri, "absent"]) == 2
    assert ui_main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "fresh"]) == 2
    assert not (tmp_path / "none.db").exists()


def test_dataset_inputs_name_the_split_and_digest_its_annotations(tmp_path) -> None:
    root = tmp_path / "data"
    generate_synthetic(root, num_train=2, num_val=2, size=32, seed=0, progress=False)
    cfg = load_config(REPO / "experiments" / "ablation_synthetic.yaml", [f"data.root={root}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.client(uri)
    run_id = client.create_run(store.ensure_experiment(uri, "datasets")).info.run_id
    assert log_dataset_inputs(client, run_id, cfg, ["train", "val", "val", "test"]) == ["train", "val"]  # no test split here
    inputs = MlflowClient(tracking_uri=uri).get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, [(t.key, t.value) for t in i.tags]) for i in inputs] == [
        ("synthetic:train", [("mlflow.data.context", "train")]), ("synthetic:val", [("mlflow.data.context", "val")])]
    digests = {i.dataset.name: i.dataset.digest for i in inputs}
    assert digests["synthetic:val"] == split_digest(cfg, "val") != digests["synthetic:train"]
    assert json.loads(inputs[1].dataset.source) == {"uri": str((root / "panoptic_val.json").resolve())}
    # the digest follows the annotations' bytes, not just the path
    before = split_digest(cfg, "val")
    val_json = root / "panoptic_val.json"
    doc = json.loads(val_json.read_text())
    doc["annotations"] = doc["annotations"][:1]
    val_json.write_text(json.dumps(doc))
    assert split_digest(cfg, "val") != before
