"""Is a resume checkpoint whole? Manifests written with it, checked before it is loaded.

A worker killed while writing, a full disk or a storage copy that stopped half way can leave a
checkpoint folder whose files are truncated, missing or changed; loading one would crash every
restart of the worker group (or, worse, resume from garbage). So each worker ends its part of a
checkpoint with :data:`MANIFEST` (written last and atomically: it exists only when the files it
lists are complete), naming each file with its size and SHA-256; rank 0's also records the
number of workers. :func:`check_folder` says what is wrong with a folder, naming the file, or
that it is good: every rank's manifest present, every listed file present with its size and
digest, and each ``.pt`` file readable by ``torch.load``. A folder with no manifest at all was
written before checkpoints carried them (a run started on an older p2m): it counts as good when
every ``.pt`` file in it loads, with a warning that its completeness cannot be verified, so that
upgrading p2m does not strand the runs in flight.

:func:`choose_checkpoint` picks the folder to resume from: the one Ray Train hands back when it is
good, else the newest good one written before it in the run's checkpoint directory (Ray keeps
``CHECKPOINTS_KEPT`` of them, so a spare exists). When none is good it raises
:class:`DamagedCheckpointError` rather than train from iteration 0: restarting a long run from
scratch is a decision for its owner (delete the checkpoint directory, then run the same command
again), not something to do behind a warning. The fallback lists folders on a local (or mounted)
storage path only; with an ``s3://`` or other URI storage path a damaged latest checkpoint stops
the run with that error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest-rank{rank}.json"
MANIFEST_FORMAT = "p2m-checkpoint-manifest/1"
#: Ray Train's checkpoint folders are ``checkpoint_<date and time>``: their names sort by age.
FOLDER_GLOB = "checkpoint_*"


class DamagedCheckpointError(RuntimeError):
    """No good checkpoint to resume from (the message names every damaged file)."""


@dataclass(frozen=True)
class Damage:
    """What is wrong with a checkpoint folder: the first bad file and why."""

    folder: Path
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.folder / self.file}: {self.reason}"


@dataclass(frozen=True)
class Choice:
    """The folder to resume from and the damaged ones passed over to get there (newest first)."""

    folder: Path
    damaged: list[Damage] = field(default_factory=list)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(folder: str | Path, names: Iterable[str], rank: int, world_size: int) -> Path:
    """Record ``names`` (files in ``folder`` this worker wrote) in its manifest; call it after
    they are all written, since the manifest is what marks the worker's part complete."""
    from p2m_core.io import atomic_write_json

    folder = Path(folder)
    files = {name: {"size": (folder / name).stat().st_size, "sha256": _digest(folder / name)} for name in sorted(names)}
    record = {"format": MANIFEST_FORMAT, "rank": rank, "world_size": world_size, "files": files}
    return atomic_write_json(folder / MANIFEST.format(rank=rank), record)


def _read_manifest(folder: Path, rank: int) -> dict | Damage:
    name = MANIFEST.format(rank=rank)
    path = folder / name
    if not path.is_file():
        return Damage(folder, name, "missing: the checkpoint was not completely written")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return Damage(folder, name, f"unreadable: {exc}")
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT or record.get("rank") != rank:
        return Damage(folder, name, f"not a {MANIFEST_FORMAT} manifest of rank {rank}")
    return record


def _check_file(folder: Path, name: str, expected: dict) -> Damage | None:
    path = folder / name
    if not path.is_file():
        return Damage(folder, name, "missing")
    size = path.stat().st_size
    if size != expected.get("size"):
        return Damage(folder, name, f"{size} bytes, the manifest says {expected.get('size')} (truncated or rewritten)")
    if _digest(path) != expected.get("sha256"):
        return Damage(folder, name, "its SHA-256 differs from the manifest's (corrupted)")
    if name.endswith(".pt"):
        import torch

        try:  # mmap: the archive and its pickle are read, the tensors' bytes are not
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            return Damage(folder, name, f"torch.load fails: {type(exc).__name__}: {exc}")
    return None


def _check_unlisted(folder: Path) -> Damage | None:
    """A checkpoint from before manifests: its ``.pt`` files must load (module docstring)."""
    files = sorted(folder.glob("*.pt"))
    if not files:
        return Damage(folder, MANIFEST.format(rank=0), "missing, and no checkpoint file either")
    for path in files:
        try:
            import torch

            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            return Damage(folder, path.name, f"torch.load fails: {type(exc).__name__}: {exc}")
    log.warning("checkpoint %s has no manifest (written before p2m checked checkpoints): its files load, "
                "but whether each is complete cannot be verified", folder)  # fmt: skip
    return None


def check_folder(folder: str | Path) -> Damage | None:
    """None when ``folder`` is a whole checkpoint (module docstring), else its first problem."""
    folder = Path(folder)
    if not any(folder.glob(MANIFEST.format(rank="*"))):
        return _check_unlisted(folder)
    first = _read_manifest(folder, 0)
    if isinstance(first, Damage):
        return first
    world_size = first.get("world_size")
    if not isinstance(world_size, int) or world_size < 1:
        return Damage(folder, MANIFEST.format(rank=0), f"world_size {world_size!r} is not a positive integer")
    for rank in range(world_size):
        record = first if rank == 0 else _read_manifest(folder, rank)
        if isinstance(record, Damage):
            return record
        for name, expected in sorted(record.get("files", {}).items()):
            damage = _check_file(folder, name, expected)
            if damage is not None:
                return damage
    return None


def earlier_folders(checkpoints: str | Path, latest: str | Path) -> list[Path]:
    """Checkpoint folders of the run written before ``latest`` (by Ray's dated names), newest
    first; none when ``checkpoints`` is a URI (module docstring)."""
    if "://" in str(checkpoints):
        return []
    name = Path(latest).name
    found = [p for p in Path(checkpoints).glob(FOLDER_GLOB) if p.is_dir() and p.name < name]
    return sorted(found, key=lambda p: p.name, reverse=True)


def choose_checkpoint(handed: str | Path, checkpoints: str | Path) -> Choice:
    """The folder to resume from (module docstring): ``handed`` (Ray's latest) when good, else
    the newest good earlier one; raises :class:`DamagedCheckpointError` when there is none."""
    handed = Path(handed)
    damaged: list[Damage] = []
    for folder in [handed, *earlier_folders(checkpoints, handed)]:
        damage = check_folder(folder)
        if damage is None:
            return Choice(folder, damaged)
        damaged.append(damage)
    where = "" if "://" not in str(checkpoints) else " (a URI storage path: earlier checkpoints are not searched)"
    raise DamagedCheckpointError(
        f"no good checkpoint to resume from in {checkpoints}{where}: " + "; ".join(map(str, damaged))
        + f". To train this run from iteration 0, delete {checkpoints} and run the same command again."
    )
