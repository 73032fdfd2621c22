"""A new sqlite store starts as a copy of MLflow's empty schema, built once per MLflow version.

Why: MLflow builds a new sqlite store by creating its tables and then running every one of its
alembic migrations, about 1.6 s on 2 cores. In a short sweep that is more than a trial's compute,
and every new store pays it again: each test's store, each fresh demo, each ``--set
tracking.tracking_uri=...`` a researcher tries. The schema it builds is the same file for one
MLflow version, so the first new store on a machine builds it into a cache folder with MLflow's
own functions, and every later new store is a copy of that file (milliseconds).

The copy holds tables and the alembic revision, and no rows. What MLflow does on opening a store
it still does on the copy: it checks the schema revision against its own, and creates the
Default experiment with this store's artifact root. ``tests/test_schema_cache.py`` compares a
copied store with one MLflow built itself: the same tables, indexes and revision, and the same
Default experiment.

The cache is ``$P2M_CACHE_DIR/mlflow-schema/`` (default ``$XDG_CACHE_HOME/p2m``, else
``~/.cache/p2m``), one file per MLflow version. It is only a speed-up: when the cache cannot be
written, or MLflow's internals moved, the store is left alone and MLflow builds it as usual (one
debug log line says why).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from p2m_core.tracking.uri import sqlite_path

log = logging.getLogger(__name__)

CACHE_ENV = "P2M_CACHE_DIR"
SCHEMA_DIR_NAME = "mlflow-schema"


def cache_dir() -> Path:
    """The project's cache folder: ``$P2M_CACHE_DIR``, else ``$XDG_CACHE_HOME/p2m``, else ``~/.cache/p2m``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "p2m"


def template_path(mlflow_version: str | None = None) -> Path:
    """Where the empty schema of ``mlflow_version`` (default: the installed one) is cached."""
    version = mlflow_version or metadata.version("mlflow")
    return cache_dir() / SCHEMA_DIR_NAME / f"mlflow-{version}.db"


def build_template(target: Path) -> Path:
    """Build MLflow's empty schema into ``target`` (complete or absent: temp file, then rename).

    The same two steps MLflow's ``SqlAlchemyStore`` runs on an empty database: its initial
    tables, then every migration up to its head revision, on an engine made MLflow's way.
    """
    from mlflow.store.db import utils as db_utils

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        engine = db_utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{tmp}")
        try:
            db_utils._initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def seed_new_store(uri: str) -> bool:
    """Make the sqlite file of ``uri`` a copy of the cached empty schema, if it does not exist yet.

    True when the file was created here. False, leaving everything to MLflow, for a server URI,
    a file that exists (another process may have just made it: never overwritten), or any
    failure to build or copy the template.
    """
    path = sqlite_path(uri)
    if path is None or path.exists():
        return False
    try:
        template = template_path()
        if not template.is_file():
            build_template(template)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, path)  # atomic, and refuses to replace a store made meanwhile
        finally:
            os.unlink(tmp)
    except FileExistsError:
        return False
    except Exception as exc:  # a speed-up only: MLflow builds the schema itself
        log.debug("new MLflow store %s not seeded from the schema cache: %s: %s", path, type(exc).__name__, exc)
        return False
    return True
