"""A new sqlite store copied from the cached schema is the store MLflow would have built itself."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from p2m_core.tracking import schema_cache, store


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(schema_cache.CACHE_ENV, str(folder))
    return folder


def clauses(sql: str | None) -> tuple[str, ...]:
    """A CREATE statement's lines as a sorted tuple: MLflow's table-rebuilding migrations write a
    table's CHECK constraints in an order that varies from one build to the next."""
    return tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines()))


def schema(db: Path) -> tuple[set[tuple[str, str, tuple[str, ...]]], list[tuple[str]]]:
    with sqlite3.connect(db) as conn:
        objects = {(kind, name, clauses(sql)) for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return objects, revision


def default_experiment(uri: str) -> tuple[str, str]:
    experiment = MlflowClient(tracking_uri=uri).get_experiment("0")
    return experiment.name, experiment.lifecycle_stage


def test_a_seeded_store_has_mlflows_schema_and_default_experiment(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = tmp_path / "built.db"
    MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()  # MLflow's own migrations
    seeded = tmp_path / "seeded.db"
    assert schema_cache.seed_new_store(f"sqlite:///{seeded}")
    assert schema_cache.template_path().is_file()
    assert schema_cache.template_path().parent == cache / schema_cache.SCHEMA_DIR_NAME
    with sqlite3.connect(seeded) as conn:  # no rows: MLflow makes the Default experiment on opening
        assert conn.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)

    assert schema(seeded) == schema(built)
    assert schema(seeded)[1], "the copy carries the alembic revision MLflow checks"
    assert default_experiment(f"sqlite:///{seeded}") == default_experiment(f"sqlite:///{built}")
    built_root = MlflowClient(tracking_uri=f"sqlite:///{built}").get_experiment("0").artifact_location
    seeded_root = MlflowClient(tracking_uri=f"sqlite:///{seeded}").get_experiment("0").artifact_location
    assert seeded_root == built_root  # this store's own default, not the template's


def test_the_template_is_built_once_and_an_existing_store_is_never_replaced(tmp_path, cache):
    first = tmp_path / "a.db"
    assert schema_cache.seed_new_store(f"sqlite:///{first}")
    template = schema_cache.template_path()
    stamp = template.stat().st_mtime_ns
    second = tmp_path / "nested" / "b.db"
    assert schema_cache.seed_new_store(f"sqlite:///{second}")
    assert template.stat().st_mtime_ns == stamp

    before = first.read_bytes()
    client = MlflowClient(tracking_uri=f"sqlite:///{first}")
    client.create_experiment("kept")
    after = first.read_bytes()
    assert after != before
    assert not schema_cache.seed_new_store(f"sqlite:///{first}")
    assert first.read_bytes() == after
    assert not schema_cache.seed_new_store("http://127.0.0.1:5000")
    assert sorted(p.name for p in first.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_a_cache_that_cannot_be_written_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(schema_cache.CACHE_ENV, str(blocker))
    db = tmp_path / "store.db"
    assert not schema_cache.seed_new_store(f"sqlite:///{db}")
    assert not db.exists()
    store.client.cache_clear()
    client = store.client(f"sqlite:///{db}")  # MLflow builds it as usual
    assert client.get_experiment("0").name == "Default"
    assert schema(db)[1]


def test_the_store_client_seeds_a_new_store(tmp_path, cache):
    db = tmp_path / "runs" / "mlflow.db"
    store.client.cache_clear()
    client = store.client(f"sqlite:///{db}")
    assert schema_cache.template_path().is_file()
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "PQ", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"PQ": 1.5}
