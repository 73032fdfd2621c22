"""Links into the MLflow UI: the one place that spells its URLs (docs/TRACKING.md, "The UI").

The MLflow 3.17 UI opens an experiment in its GenAI mode (an overview of traces) unless the
browser chose otherwise: the mode is a per-browser setting that the URL query
:data:`MODEL_TRAINING_QUERY` switches to "Model training", which shows the runs table our
sweeps fill. So every link p2m prints goes to :func:`experiment_url`, never to a bare
``#/experiments/<id>``.

A sqlite store has no server of its own: its links point at what ``mlflow ui
--backend-store-uri URI`` serves by default (:data:`LOCAL_UI`), and :func:`ui_command` is the
command that starts it. An ``http(s)://`` tracking URI is the UI itself.

    python -m p2m_core.tracking.ui --tracking-uri URI EXPERIMENT [EXPERIMENT ...]

prints the command (sqlite) and one link per experiment; ``make demo`` ends with it.
This module imports MLflow only in :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from p2m_core.tracking.uri import is_server

#: Where ``mlflow ui`` listens by default (its ``--host 127.0.0.1 --port 5000``).
LOCAL_UI = "http://127.0.0.1:5000"
#: The query that opens the runs table in "Model training" mode (checked with headless Chromium).
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def ui_base(tracking_uri: str) -> str:
    """The UI's address for a store: the server itself, else the local ``mlflow ui``."""
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else LOCAL_UI


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in "Model training" mode, e.g.
    ``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning``."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def compare_runs_url(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The UI's comparison of ``run_ids`` (params, metrics, parallel coordinates).

    The route is the frontend's own (``getCompareRunPageRoute``: ``/compare-runs?runs=<JSON
    list>&experiments=<JSON list>``); the lists are percent-encoded so a shell or browser passes
    them unchanged, and :data:`MODEL_TRAINING_QUERY` keeps the sidebar in "Model training"."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    experiments = quote(json.dumps([str(experiment_id)], separators=(",", ":")), safe="")
    return f"{ui_base(tracking_uri)}/#/compare-runs?runs={runs}&experiments={experiments}&{MODEL_TRAINING_QUERY}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI at :data:`LOCAL_UI`; ``None`` for a server.

    Names the ``mlflow`` beside this interpreter (the virtualenv's) when there is one, relative
    to the working directory when it lies below it."""
    if is_server(tracking_uri):
        return None
    beside = Path(sys.executable).with_name("mlflow")
    program = "mlflow"
    if beside.is_file():
        relative = os.path.relpath(beside)
        program = relative if not relative.startswith("..") else str(beside)
    return f"{shlex.quote(program)} ui --backend-store-uri {shlex.quote(tracking_uri)}"


def ui_lines(tracking_uri: str, experiments: Sequence[tuple[str, str]]) -> list[str]:
    """What to print for browsing ``experiments`` (``(name, id)`` pairs): the command that
    starts the UI (a sqlite store) and one link per experiment."""
    lines = []
    command = ui_command(tracking_uri)
    if command:
        lines.append(f"Browse the runs in the MLflow UI: start it with  {command}")
        lines.append("then open (the runs table, in its \"Model training\" mode):")
    else:
        lines.append("Browse the runs in the MLflow UI (the runs table, in its \"Model training\" mode):")
    width = max((len(name) for name, _ in experiments), default=0)
    lines.extend(f"  {name + ':':<{width + 1}} {experiment_url(tracking_uri, eid)}" for name, eid in experiments)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2m_core.tracking.ui",
                                     description="Print the MLflow UI command and links for experiments.")  # fmt: skip
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="experiment name, e.g. p2m-pseudo")
    parser.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    args = parser.parse_args(argv)
    from p2m_core.errors import P2MInputError
    from p2m_core.tracking.store import client
    from p2m_core.tracking.uri import resolve_tracking_uri, sqlite_path

    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        path = sqlite_path(uri)
        if path is not None and not path.is_file():  # opening it would create an empty store
            raise P2MInputError(f"tracking store {uri}: no such file {path}")
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    found, missing = [], []
    for name in args.experiments:
        experiment = client(uri).get_experiment_by_name(name)
        if experiment is None:
            missing.append(name)
        else:
            found.append((name, experiment.experiment_id))
    if missing:
        print(f"error: tracking store {uri} has no experiment {', '.join(map(repr, missing))}", file=sys.stderr)
        return 2
    print("\n".join(ui_lines(uri, found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
