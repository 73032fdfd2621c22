"""Atomic file output and careful JSON/YAML input.

Every file the platform writes (datasets, point labels, predictions, metrics) goes through
:func:`atomic_write_bytes`: the bytes land in a temporary file in the same folder, are
flushed to disk, then renamed over the target. An interrupted run therefore leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from p2m_core.errors import P2MInputError

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace ``path`` only when the block ends without error.

    For writers that stream into a file object (``torch.save``), so a large file need not be
    held in memory twice; :func:`atomic_write_bytes` is the same for bytes already in hand.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON values: NaN/inf -> None, numpy scalars -> Python, keys -> str.

    Python's ``json`` writes NaN as a bare ``NaN`` token, which strict readers (browsers, jq,
    MLflow's UI) reject; metrics with no value (e.g. the OT diagnostics of a minimum-cost run)
    are therefore written as ``null``.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = None) -> Path:
    """Serialise ``obj`` (numpy scalars and arrays allowed) and write it atomically."""
    text = json.dumps(obj, indent=indent, default=_json_default)
    return atomic_write_text(path, text + "\n")


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 HxW or HxWx3 array encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def atomic_write_png(path: PathLike, array: np.ndarray) -> Path:
    """Encode a uint8 HxW or HxWx3 array as PNG and write it atomically."""
    return atomic_write_bytes(path, png_bytes(array))


def load_json(path: PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a :class:`P2MInputError`."""
    path = Path(path)
    if not path.is_file():
        raise P2MInputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise P2MInputError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc


def load_yaml(path: PathLike, what: str = "YAML file") -> Any:
    """Read YAML, turning a missing or malformed file into a :class:`P2MInputError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise P2MInputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise P2MInputError(f"{what} {path} is not valid YAML{where}: {problem}") from exc
