"""The paper's numbers (``paper_tables.yaml`` beside this module) and which row a setting matches.

A sweep's setting is a dict of dotted config keys (``{"pseudo.maps": ["semantic"]}``); a paper
row names the same value by the last component of its table's ``axis`` (``maps``). Values are
compared after :func:`normalise`, so ``1`` matches ``1.0`` and ``["a", "b"]`` matches
``("a", "b")``: the sweep side writes JSON, YAML reads numbers as it likes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from p2m_core.errors import P2MInputError
from p2m_core.io import load_yaml

PAPER_TABLES_PATH = Path(__file__).resolve().parent / "paper_tables.yaml"


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    data = load_yaml(PAPER_TABLES_PATH, "paper tables")
    if not isinstance(data, dict):
        raise P2MInputError(f"{PAPER_TABLES_PATH}: expected a mapping of table keys, got {type(data).__name__}")
    return data


def paper_table(key: str) -> dict[str, Any]:
    """One table (``axis``, ``columns``, ``rows``); an unknown key is an input error naming the known ones."""
    tables = _load()
    table = tables.get(key)
    if not isinstance(table, dict) or "rows" not in table:
        known = ", ".join(k for k, v in tables.items() if isinstance(v, dict) and "rows" in v)
        raise P2MInputError(f"{PAPER_TABLES_PATH}: no paper table {key!r} (known: {known})")
    return table


def normalise(value: Any) -> Any:
    """A hashable, comparable form: lists as tuples, numbers as floats, everything else as is.

    Booleans stay booleans (JSON ``true`` is not the number 1 for a setting).
    """
    if isinstance(value, (list, tuple)):
        return tuple(normalise(v) for v in value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return normalise(value.item())
    return value


def row_key(key: str) -> str:
    """The field of a paper row that holds the axis value: the axis's last component.

    Falls back to the one non-metric field of the rows when they name it otherwise (table 4's
    axis is ``loss.semantic_terms`` but its rows say ``terms``).
    """
    table = paper_table(key)
    axis = table.get("axis")
    if not axis:
        raise P2MInputError(f"{PAPER_TABLES_PATH}: paper table {key!r} has no axis to match settings on")
    last = str(axis).rsplit(".", 1)[-1]
    rows = table["rows"]
    if all(last in row for row in rows):
        return last
    others = {f for row in rows for f in row if f not in table.get("columns", [])}
    if len(others) == 1:
        return others.pop()
    raise P2MInputError(f"{PAPER_TABLES_PATH}: rows of {key!r} do not name the axis value {last!r}")


def paper_frame(key: str) -> pd.DataFrame:
    """The paper rows of a table, indexed by the normalised axis value, one column per metric.

    The raw axis value is kept in the column named by :func:`row_key`; a metric the paper does
    not give for a row is NaN.
    """
    table = paper_table(key)
    field = row_key(key)
    columns = list(table.get("columns", []))
    records = []
    for row in table["rows"]:
        record = {field: row[field]}
        record.update({c: float(row[c]) if row.get(c) is not None else math.nan for c in columns})
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[field, *columns])
    frame.index = pd.Index([normalise(r[field]) for r in table["rows"]], name=table["axis"], tupleize_cols=False)
    return frame


def match_row(key: str, setting: Mapping[str, Any]) -> dict[str, float] | None:
    """The paper's metrics for the row a measured setting corresponds to, or ``None``.

    Only the table's axis key of ``setting`` is compared; a setting without that key, or with
    a value the paper did not report, has no row.
    """
    table = paper_table(key)
    axis = table.get("axis")
    if not axis or axis not in setting:
        return None
    wanted = normalise(setting[axis])
    frame = paper_frame(key)
    for index, (_, row) in zip(frame.index, frame.iterrows()):
        if index == wanted:
            return {c: float(row[c]) for c in table.get("columns", []) if not math.isnan(float(row[c]))}
    return None

