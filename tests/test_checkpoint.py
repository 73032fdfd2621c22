"""Checkpoints: a saved network comes back identical, broken files are refused by name, and the
pseudo-label stage runs on the maps of a frozen checkpoint (``ablation.source=checkpoint``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from p2m_core.ablation import run_pseudo_stage
from p2m_core.ablation.network import CheckpointMaps
from p2m_core.ablation.prepare import load_stage_data, prepare_batches
from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset, collate_points, image_tensor
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_checkpoint, save_checkpoint
from p2m_core.engine.step import build_optimizer
from p2m_core.errors import P2MInputError
from p2m_core.model.point2mask import ClassInfo
from p2m_core.model.task_maps import mask_grid, network_maps
from tests.checkpoints import REPO, tiny_checkpoint, tiny_config

STAGE = ["pseudo.mask_stride=2", "pseudo.graph_stride=4", "pseudo.point_dilation=3", "ablation.overlays=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The synthetic dataset (2 + 2 images of 64 px), the tiny config and a saved checkpoint."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=2, num_val=2, size=64, seed=5, progress=False)
    cfg = tiny_config(root)
    dataset = PointPanopticDataset.from_config(cfg, "val")
    path, model = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", cfg, dataset.panoptic)
    return root, cfg, dataset, path, model


def stage_cfg(root: Path, checkpoint: Path, *overrides: str):
    return load_config(
        REPO / "experiments" / "ablation_synthetic.yaml",
        [f"data.root={root}", "ablation.source=checkpoint", f"ablation.checkpoint={checkpoint}", *STAGE, *overrides],
    )


# --------------------------------------------------------------------------- round trip
def test_a_loaded_checkpoint_predicts_exactly_as_the_saved_network(tiny):
    root, cfg, dataset, path, model = tiny
    loaded, loaded_cfg, categories, raw = load_checkpoint(path)
    assert raw["format"] == CHECKPOINT_FORMAT and not loaded.training
    assert loaded_cfg == cfg and loaded.classes == model.classes
    assert categories == [
        {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)} for c in dataset.panoptic.categories.values()
    ]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    batch = collate_points([dataset[0], dataset[1]])
    before = model.predict(batch["images"], batch["padding_mask"], batch["image_sizes"])
    after = loaded.predict(batch["images"], batch["padding_mask"], batch["image_sizes"])
    for a, b in zip(before, after):
        assert torch.equal(a["panoptic"], b["panoptic"]) and torch.equal(a["semantic"], b["semantic"])
        assert a["segments"] == b["segments"]


def test_pretrained_weights_are_not_read_again_and_state_rides_along(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    # the ImageNet file a run started from is gone where the checkpoint is used
    gone = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=str(tmp_path / "imagenet.pth")))
    optimizer = build_optimizer(model, cfg)
    save_checkpoint(tmp_path / "m.pt", model, gone, model.classes, dataset.panoptic.categories, optimizer, {"iteration": 7})
    loaded, loaded_cfg, _, raw = load_checkpoint(tmp_path / "m.pt")
    assert loaded_cfg.model.pretrained == "" and raw["config"]["model"]["pretrained"] == str(tmp_path / "imagenet.pth")
    assert raw["extra"] == {"iteration": 7}
    assert raw["optimizer"]["param_groups"][0]["lr"] == cfg.train.lr


def test_saving_is_atomic_and_checks_classes_against_categories(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    target = tmp_path / "m.pt"
    shutil.copy(path, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # a value torch cannot serialise fails the write ...
        save_checkpoint(target, model, cfg, model.classes, dataset.panoptic.categories, extra={"bad": lambda: 0})
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # ... leaving the old file
    wrong = ClassInfo(tuple(not t for t in model.classes.is_thing))
    with pytest.raises(P2MInputError, match="classes .* do not match the 7 categories"):
        save_checkpoint(tmp_path / "x.pt", model, cfg, wrong, dataset.panoptic.categories)
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------- broken files
def _rewrite(path: Path, target: Path, **changes) -> Path:
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    torch.save(raw, target)
    return target


def test_broken_checkpoints_are_refused_naming_file_and_problem(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    with pytest.raises(P2MInputError, match=r"checkpoint not found: .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(P2MInputError, match=r"corrupt\.pt is not a readable torch file"):
        load_checkpoint(corrupt)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(P2MInputError, match=r"text\.pt is not a readable torch file"):
        load_checkpoint(text)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(P2MInputError, match=r"bare\.pt is not a p2m checkpoint: it has no 'format' field"):
        load_checkpoint(bare)
    code = tmp_path / "code.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": Path("x")}, code)  # an object, not plain values
    with pytest.raises(P2MInputError, match=r"code\.pt is not a readable torch file .*WeightsUnpickler"):
        load_checkpoint(code)
    with pytest.raises(P2MInputError, match=r"v9\.pt: field 'format' is 'p2m-checkpoint/9'"):
        load_checkpoint(_rewrite(path, tmp_path / "v9.pt", format="p2m-checkpoint/9"))
    raw = torch.load(path, weights_only=True)
    del raw["categories"]
    torch.save(raw, tmp_path / "nocats.pt")
    with pytest.raises(P2MInputError, match=r"nocats\.pt: missing field\(s\) 'categories'"):
        load_checkpoint(tmp_path / "nocats.pt")


def test_weights_and_config_that_do_not_fit_are_refused(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    raw = torch.load(path, weights_only=True)
    wider = json.loads(json.dumps(raw["config"]))
    wider["model"]["hidden_dim"] = 64
    with pytest.raises(P2MInputError, match=r"wide\.pt: field 'model': the weights do not fit .*shape \(saved vs network\)"):
        load_checkpoint(_rewrite(path, tmp_path / "wide.pt", config=wider))
    state = dict(raw["model"])
    state.pop(next(iter(state)))
    with pytest.raises(P2MInputError, match=r"short\.pt: field 'model'.*1 missing"):
        load_checkpoint(_rewrite(path, tmp_path / "short.pt", model=state))
    unknown = json.loads(json.dumps(raw["config"]))
    unknown["model"]["bogus"] = 1
    with pytest.raises(P2MInputError, match=r"bogus\.pt: field 'config': .*unknown key 'model.bogus'"):
        load_checkpoint(_rewrite(path, tmp_path / "bogus.pt", config=unknown))
    flipped = [not t for t in raw["is_thing"]]
    with pytest.raises(P2MInputError, match=r"flip\.pt: the model's 7 classes .* do not match the 7 categories"):
        load_checkpoint(_rewrite(path, tmp_path / "flip.pt", is_thing=flipped))
    assert read_checkpoint(path)["format"] == CHECKPOINT_FORMAT


# --------------------------------------------------------------------------- the pseudo stage
def test_pseudo_stage_runs_on_a_frozen_checkpoint(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    result = run_pseudo_stage(stage_cfg(root, path), tmp_path / "out")
    assert result["source"] == "checkpoint" and result["counts"]["images"] == 2
    for key in ("PQ", "PQ_th", "PQ_st", "mIoU", "pixel_acc"):  # untrained: low, but valid numbers
        assert 0.0 <= result["metrics"][key] <= 100.0, key
    record = result["checkpoint"]
    assert record["path"] == str(path) and record["num_classes"] == 7 and record["network_seconds_per_image"] > 0
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["checkpoint"] == record
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 1


def test_checkpoint_maps_are_the_networks_own_maps(tiny):
    root, cfg, dataset, path, model = tiny
    scfg = stage_cfg(root, path, "ablation.batch_size=2")
    data = load_stage_data(scfg)
    network = CheckpointMaps.open(scfg, data.dataset, "cpu")
    (batch,) = list(prepare_batches(data, scfg, fill=network))
    assert [item.image is not None for item in batch] == [True, False]  # only the overlay image is kept
    for item in batch:  # each image alone through the network, as training would see it
        image = image_tensor(data.dataset.load_image(item.record))[None]
        with torch.no_grad():
            out = model(image, torch.zeros(1, *image.shape[-2:], dtype=torch.bool))
        logits, high, embedding = network_maps(out, mask_grid(image.shape, scfg.pseudo.mask_stride))
        np.testing.assert_allclose(item.maps.semantic, logits.softmax(1)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(item.maps.boundary_high, high[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(item.maps.embedding, embedding[0].numpy(), atol=1e-5)  # the projector's vectors
        assert item.maps.boundary_low is not None and item.maps.boundary_low.shape == item.mask_shape
    with pytest.raises(ValueError, match="needs the network"):
        next(prepare_batches(data, scfg))


def test_a_checkpoint_of_other_classes_is_refused_before_any_image_is_read(tiny, tmp_path):
    root, cfg, dataset, path, model = tiny
    # the split without its images: reading any image would fail with another message
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("images"))
    raw = json.loads((root / "panoptic_val.json").read_text())
    raw["categories"] = raw["categories"][::-1]
    (tmp_path / "other.json").write_text(json.dumps({**raw, "annotations": [], "images": []}))
    other, _ = tiny_checkpoint(tmp_path / "other.pt", cfg, CocoPanoptic(tmp_path / "other.json"))
    with pytest.raises(P2MInputError) as caught:
        run_pseudo_stage(stage_cfg(bare, other))
    message = str(caught.value)
    assert "other.pt has 7 classes that do not match the 7 categories of" in message and "panoptic_val.json" in message
    assert "class 0 is id 7" in message and "in the dataset" in message
    with pytest.raises(P2MInputError, match="image file not found"):  # the images were indeed needed
        run_pseudo_stage(stage_cfg(bare, path))
