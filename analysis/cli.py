"""The command-line pieces every ``analysis`` command shares: which store, which format, where to."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2m_core.errors import P2MInputError
from p2m_core.io import atomic_write_text


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--experiment`` and ``--tracking-uri``: where the sweeps are read from."""
    parser.add_argument("--experiment", default=None, help="MLflow experiment to search (default: all)")
    parser.add_argument("--tracking-uri", default="", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")


def add_output_arguments(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    """``--format`` (first of ``formats`` by default) and ``--out``."""
    parser.add_argument("--format", default=formats[0], help=f"output format: {', '.join(formats)} (default %(default)s)")
    parser.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")


def check_format(fmt: str, formats: Sequence[str]) -> None:
    """An unknown ``--format`` is an input error naming the known ones (before MLflow is read)."""
    if fmt not in formats:
        raise P2MInputError(f"--format {fmt!r} is not one of {', '.join(formats)}")


def emit(text: str, out: str | None) -> None:
    """The rendered text to ``out`` (written atomically: a half-written table never exists) or stdout."""
    if out:
        atomic_write_text(out, text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
