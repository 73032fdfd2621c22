"""Which MLflow tracking store a command uses (one rule for sweeps, trials and analysis).

The rule (docs/TRACKING.md, "Where the store is"): the configured URI, else the environment
variable ``MLFLOW_TRACKING_URI``, else ``sqlite:///<launch directory>/mlflow.db`` as an absolute
path. Absolute because Ray runs trials in their own working directories: a relative sqlite path
would give every worker a new, empty store.

This module does not import MLflow, so the rule can be applied (and its errors raised) before
any heavy import.
"""

from __future__ import annotations

import os
from pathlib import Path

from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike

ENV_VAR = "MLFLOW_TRACKING_URI"
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "mysql://", "databricks")


def default_tracking_uri(launch_dir: PathLike | None = None) -> str:
    """``sqlite:///<abs launch_dir>/mlflow.db`` (``launch_dir`` defaults to the current directory)."""
    folder = Path(launch_dir if launch_dir is not None else os.getcwd()).resolve()
    return f"sqlite:///{folder / DEFAULT_DB_NAME}"


def resolve_tracking_uri(configured: str = "", launch_dir: PathLike | None = None) -> str:
    """The tracking URI a command uses: ``configured``, else ``$MLFLOW_TRACKING_URI``, else the default.

    A relative sqlite path (``sqlite:///mlflow.db``) is made absolute against ``launch_dir``;
    an unknown scheme (e.g. a bare path or ``file:``, which MLflow 3 refuses by default) is an
    error naming the value.
    """
    uri = (configured or os.environ.get(ENV_VAR, "")).strip()
    where = "tracking.tracking_uri" if configured else ENV_VAR
    if not uri:
        return default_tracking_uri(launch_dir)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            base = Path(launch_dir if launch_dir is not None else os.getcwd()).resolve()
            path = base / path
        return f"sqlite:///{path}"
    if not uri.startswith(_SCHEMES):
        raise P2MInputError(
            f"{where}: tracking URI {uri!r} is not supported; use sqlite:////abs/path/mlflow.db or "
            "http://host:port (an `mlflow server`)"
        )
    return uri


def is_server(uri: str) -> bool:
    """True for an ``http(s)://`` tracking server (reachability is checked before a sweep)."""
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def default_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact folder of a new experiment in a sqlite store: ``<db dir>/mlartifacts/<experiment>``.

    ``None`` for servers, which choose their own (``mlflow server --artifacts-destination``).
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    return (path.parent / ARTIFACTS_DIR_NAME / experiment).as_uri()
