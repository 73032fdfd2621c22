"""Checkpoint manifests and the choice of the folder to resume from, on files written here (no
Ray: tests/test_train_ray.py damages a real run's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2m_core.engine.checkpoint_check import DamagedCheckpointError, check_folder, choose_checkpoint, write_manifest


def write_checkpoint(folder: Path, world_size: int = 2) -> Path:
    """A checkpoint as two workers write it: rank 0 a state file, each rank an RNG file, each a manifest."""
    folder.mkdir(parents=True)
    torch.save({"iteration": 4, "model": {"w": torch.arange(1000.0)}}, folder / "state.pt")
    for rank in range(world_size):
        torch.save({"torch": torch.get_rng_state()}, folder / f"rng-rank{rank}.pt")
        names = [f"rng-rank{rank}.pt"] + (["state.pt"] if rank == 0 else [])
        write_manifest(folder, names, rank, world_size)
    return folder


def test_a_whole_checkpoint_passes(tmp_path) -> None:
    assert check_folder(write_checkpoint(tmp_path / "checkpoint_a")) is None


def test_a_truncated_file_is_named(tmp_path) -> None:
    folder = write_checkpoint(tmp_path / "checkpoint_a")
    data = (folder / "state.pt").read_bytes()
    (folder / "state.pt").write_bytes(data[: len(data) // 2])
    damage = check_folder(folder)
    assert damage is not None and damage.file == "state.pt"
    assert str(damage).startswith(str(folder / "state.pt")) and "truncated" in str(damage)


def test_changed_bytes_a_missing_file_and_a_missing_manifest_are_named(tmp_path) -> None:
    changed = write_checkpoint(tmp_path / "checkpoint_a")
    data = bytearray((changed / "rng-rank1.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (changed / "rng-rank1.pt").write_bytes(bytes(data))
    assert (check_folder(changed).file, "SHA-256" in check_folder(changed).reason) == ("rng-rank1.pt", True)
    missing = write_checkpoint(tmp_path / "checkpoint_b")
    (missing / "rng-rank1.pt").unlink()
    assert (check_folder(missing).file, check_folder(missing).reason) == ("rng-rank1.pt", "missing")
    unlisted = write_checkpoint(tmp_path / "checkpoint_c")
    (unlisted / "manifest-rank1.json").unlink()  # rank 1 died before its part was complete
    assert check_folder(unlisted).file == "manifest-rank1.json" and "missing" in check_folder(unlisted).reason
    (unlisted / "manifest-rank0.json").unlink()  # no manifest at all: a checkpoint of an older p2m


def test_a_checkpoint_from_before_manifests_resumes_when_its_files_load(tmp_path, caplog) -> None:
    old = write_checkpoint(tmp_path / "checkpoint_a")
    for manifest in old.glob("manifest-rank*.json"):
        manifest.unlink()
    with caplog.at_level("WARNING", logger="p2m_core.engine.checkpoint_check"):
        assert check_folder(old) is None
    assert "no manifest" in caplog.text and str(old) in caplog.text
    data = (old / "state.pt").read_bytes()
    (old / "state.pt").write_bytes(data[: len(data) // 2])
    damage = check_folder(old)
    assert damage.file == "state.pt" and damage.reason.startswith("torch.load fails")
    empty = tmp_path / "checkpoint_b"
    empty.mkdir()
    assert check_folder(empty).file == "manifest-rank0.json"


def test_a_file_torch_cannot_read_is_damaged_even_when_it_matches_its_manifest(tmp_path) -> None:
    folder = tmp_path / "checkpoint_a"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"not a torch archive")
    write_manifest(folder, ["state.pt"], 0, 1)
    damage = check_folder(folder)
    assert damage.file == "state.pt" and damage.reason.startswith("torch.load fails")


def test_the_newest_good_earlier_checkpoint_is_chosen_and_none_good_is_an_error(tmp_path) -> None:
    names = ["checkpoint_2025-01-01_10-00-00.000001", "checkpoint_2025-01-01_10-00-05.000001",
             "checkpoint_2025-01-01_10-00-09.000001", "checkpoint_2025-01-01_10-00-12.000001"]  # fmt: skip
    oldest, previous, latest, newer = (write_checkpoint(tmp_path / name) for name in names)
    (latest / "state.pt").write_bytes(b"")
    choice = choose_checkpoint(latest, tmp_path)
    assert choice.folder == previous  # not the oldest, and never one newer than Ray's latest
    assert [(d.folder, d.file) for d in choice.damaged] == [(latest, "state.pt")]
    assert choose_checkpoint(newer, tmp_path).folder == newer and not choose_checkpoint(newer, tmp_path).damaged
    for folder in (previous, oldest):
        (folder / "manifest-rank0.json").unlink()
    with pytest.raises(DamagedCheckpointError) as error:
        choose_checkpoint(latest, tmp_path)
    message = str(error.value)
    for folder, file in ((latest, "state.pt"), (previous, "manifest-rank0.json"), (oldest, "manifest-rank0.json")):
        assert str(folder / file) in message
    assert f"delete {tmp_path}" in message
    with pytest.raises(DamagedCheckpointError, match="earlier checkpoints are not searched"):
        choose_checkpoint(latest, "s3://bucket/runs")
