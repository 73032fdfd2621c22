"""The dataset splits a run reads, as MLflow dataset inputs (the UI's "Dataset" column).

Each split becomes one input: name ``<dataset>:<split>`` (``synthetic:val``), source the split's
panoptic JSON, the split as its context tag (``mlflow.data.context``) and a digest of the data
itself (:func:`split_digest`). Two runs with the same digest read the same annotations; a
regenerated or edited split gets a new one, even under the same root. The tags ``p2m.dataset``
and ``p2m.split`` stay the record ``analysis`` reads; the inputs are for people browsing runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2m_core.config import Config
from p2m_core.tracking import tags as T

log = logging.getLogger(__name__)

#: Hex digits of the digest kept (MLflow stores at most 36).
DIGEST_CHARS = 16
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes, cached per (path, size, mtime): a Ray worker that Tune reuses
    for the next trial of the same split does not read the JSON again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def split_digest(cfg: Config, split: str) -> str:
    """What identifies the data of ``split``: the dataset kind and root, and the bytes of the
    split's panoptic JSON and, when configured, of its point file (:data:`DIGEST_CHARS` hex).

    The JSON lists every image and segment (with its area and box), so a split whose images or
    masks change gets another JSON; hashing it costs one read of a file the run reads anyway."""
    from p2m_core.data.splits import split_paths

    paths = split_paths(cfg.data, split)
    parts = {"dataset": cfg.data.dataset, "root": str(Path(cfg.data.root).resolve()), "split": split,
             "panoptic_json": file_sha256(paths.panoptic_json)}  # fmt: skip
    if paths.points is not None and paths.points.is_file():
        parts["points"] = file_sha256(paths.points)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]


def dataset_input(cfg: Config, split: str) -> Any:
    """The ``mlflow.entities.DatasetInput`` of one split of ``cfg``'s dataset."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from p2m_core.data.splits import split_paths

    source = {"uri": str(Path(split_paths(cfg.data, split).panoptic_json).resolve())}
    dataset = Dataset(name=f"{cfg.data.dataset}:{split}", digest=split_digest(cfg, split), source_type="local",
                      source=json.dumps(source))  # fmt: skip
    return DatasetInput(dataset=dataset, tags=[InputTag(key=T.DATASET_CONTEXT, value=split)])


def log_dataset_inputs(mlflow_client: Any, run_id: str, cfg: Config, splits: Sequence[str]) -> list[str]:
    """Log the given splits of ``cfg``'s dataset (each once, in order) as inputs of ``run_id``;
    returns the splits logged.

    A split whose panoptic JSON is missing gets no input (logged as a warning): there is no data
    to digest, and the input is a record for the UI, not the place to refuse a run; the launchers
    refuse missing data before they open a run, and the stage fails reading it."""
    from p2m_core.data.splits import split_paths

    logged = []
    for split in dict.fromkeys(s for s in splits if s):
        path = split_paths(cfg.data, split).panoptic_json
        if not Path(path).is_file():
            log.warning("run %s: no dataset input for split %r: %s does not exist", run_id, split, path)
            continue
        logged.append(split)
    if logged:
        _log_inputs(mlflow_client, run_id, [dataset_input(cfg, split) for split in logged])
    return logged


#: Tries of one ``log_inputs`` call that lost a race to create the same dataset record.
_INPUT_TRIES = 3


def _log_inputs(mlflow_client: Any, run_id: str, datasets: list[Any]) -> None:
    """``log_inputs``, tried again when another process created the same dataset record first.

    MLflow's SQL store looks a dataset up and inserts it when missing, in two steps: two sweeps
    started at once on one store (the claims of docs/TRACKING.md let them) both insert, and one
    fails on the store's uniqueness rule ("UNIQUE constraint failed" in sqlite, "violates unique
    constraint" in PostgreSQL). Tried again, the lookup finds the record and only links it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, _INPUT_TRIES + 1):
        try:
            mlflow_client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as exc:
            if "unique constraint" not in str(exc).lower() or attempt == _INPUT_TRIES:
                raise
            log.info("run %s: a dataset record was created by another process at the same time; logging again", run_id)
            time.sleep(0.2 * attempt)
