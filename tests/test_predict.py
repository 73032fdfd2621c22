"""``python -m p2m_core.predict``: a checkpoint on a user's own images -> COCO panoptic PNGs and
JSON that agree with each other and with the network, overlays, and exit 2 on bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2m_core.data.dataset import image_tensor
from p2m_core.data.panoptic_format import CocoPanoptic, rgb2id
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.checkpoint import save_checkpoint
from p2m_core.model.point2mask import ClassInfo, build_model
from p2m_core.engine.predictions import predict_images
from p2m_core.predict import main
from tests.checkpoints import PERMISSIVE, REPO, tiny_checkpoint, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint for the synthetic categories and a folder of user images: the val images as
    PNG and JPEG, one of them at another size (so a batch is padded)."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=0, num_val=2, size=64, seed=5, progress=False)
    cfg = tiny_config(root, *PERMISSIVE)
    dataset = CocoPanoptic(root / "panoptic_val.json", root / "images" / "val")
    path, model = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", cfg, dataset)
    photos = tmp_path_factory.mktemp("photos")
    first, second = (dataset.load_image(r) for r in dataset.records)
    Image.fromarray(first).save(photos / "garden.png")
    Image.fromarray(second).save(photos / "street.JPG", quality=95)
    Image.fromarray(second).resize((80, 48)).save(photos / "wide.jpeg")
    (photos / "notes.txt").write_text("not an image")
    return path, model, dataset, photos


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2m_core.predict", *args],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


def check_outputs(out: Path, images: dict[str, tuple[int, int]], categories: dict) -> dict:
    """Every promised file exists, and each PNG holds exactly its JSON segments (ids, areas, boxes)."""
    pred = json.loads((out / "predictions.json").read_text())
    assert {a["file_name"] for a in pred["annotations"]} == {f"{Path(n).stem}.png" for n in images}
    assert {i["file_name"]: (i["height"], i["width"]) for i in pred["images"]} == images
    assert [c["id"] for c in pred["categories"]] == list(categories)
    for annotation in pred["annotations"]:
        ids = rgb2id(np.asarray(Image.open(out / "panoptic" / annotation["file_name"]).convert("RGB")))
        info = next(i for i in pred["images"] if i["id"] == annotation["image_id"])
        assert ids.shape == (info["height"], info["width"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in annotation["segments_info"]}
        for seg in annotation["segments_info"]:
            mask = ids == seg["id"]
            ys, xs = np.nonzero(mask)
            assert seg["area"] == mask.sum() and seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert seg["isthing"] == categories[seg["category_id"]].isthing and 0.0 <= seg["score"] <= 1.0
        overlay = np.asarray(Image.open(out / "overlays" / annotation["file_name"]))
        assert overlay.shape == (info["height"], info["width"], 3)
    return pred


def test_cli_predicts_a_folder_of_images(setup, tmp_path):
    path, model, dataset, photos = setup
    proc = run_cli("--checkpoint", str(path), "--images", str(photos), "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--batch-size", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sizes = {"garden.png": (64, 64), "street.JPG": (64, 64), "wide.jpeg": (48, 80)}
    pred = check_outputs(tmp_path / "out", sizes, dataset.categories)
    assert sum(len(a["segments_info"]) for a in pred["annotations"]) > 0  # something to check ids against
    assert "images/s" in proc.stdout and str(tmp_path / "out" / "predictions.json") in proc.stdout
    assert "predict: 3/3 images" in proc.stderr  # progress line


def test_predictions_are_the_networks_at_the_images_own_size(setup, tmp_path):
    path, model, dataset, photos = setup
    summary = predict_images(path, [photos / "garden.png"], tmp_path / "out", device="cpu", max_size=0, progress=False)
    assert summary["images"] == 1 and summary["images_per_second"] > 0
    image = image_tensor(np.asarray(Image.open(photos / "garden.png").convert("RGB")))[None]
    expected = model.predict(image, torch.zeros(1, 64, 64, dtype=torch.bool), [(64, 64)])[0]
    ids = rgb2id(np.asarray(Image.open(tmp_path / "out" / "panoptic" / "garden.png").convert("RGB")))
    np.testing.assert_array_equal(ids, expected["panoptic"].numpy())
    (annotation,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"]
    contiguous = list(dataset.categories)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in annotation["segments_info"]] == [
        (s["id"], contiguous[s["label"]], s["isthing"]) for s in expected["segments"]
    ]
    assert annotation["image_id"] == "garden"


def test_cli_on_the_real_coco_sample(coco_sample, tmp_path):
    coco = CocoPanoptic(coco_sample / "panoptic.json", check_files=False)
    assert len(coco.categories) == 133
    path, _ = tiny_checkpoint(tmp_path / "coco.pt", tiny_config(tmp_path, *PERMISSIVE), coco)
    proc = run_cli("--checkpoint", str(path), "--images", str(coco_sample / "images"), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    raw = json.loads((coco_sample / "panoptic.json").read_text())
    sizes = {i["file_name"]: (i["height"], i["width"]) for i in raw["images"]}
    pred = check_outputs(tmp_path / "out", sizes, coco.categories)
    assert sorted(a["image_id"] for a in pred["annotations"]) == sorted(i["id"] for i in raw["images"])  # COCO's int ids


def test_no_images_exits_2_with_one_line(tmp_path, setup):
    path = setup[0]
    (tmp_path / "empty").mkdir()
    proc = run_cli("--checkpoint", str(path), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --images") and "no .jpg/.jpeg/.png files in this folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"--images .*nowhere: no such file or folder"),
        ("text", r"--images .*notes\.txt: not a \.jpg/\.jpeg/\.png file"),
        ("broken", r"--images .*broken\.jpg: not a readable image"),
        ("same_stem", r"share the name 'garden'"),
        ("checkpoint", r"checkpoint .*photos.*garden\.png is not a readable torch file"),
        ("batch", r"--batch-size must be >= 1"),
    ],
)
def test_bad_input_exits_2_before_writing(setup, tmp_path, capsys, case, message):
    path, _, _, photos = setup
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "garden.jpg").write_bytes((photos / "street.JPG").read_bytes())
    images = {
        "missing": [str(tmp_path / "nowhere")], "text": [str(photos / "notes.txt")],
        "broken": [str(photos / "garden.png"), str(tmp_path / "broken.jpg")],
        "same_stem": [str(photos / "garden.png"), str(tmp_path / "garden.jpg")],
    }.get(case, [str(photos)])  # fmt: skip
    checkpoint = str(photos / "garden.png") if case == "checkpoint" else str(path)
    extra = ["--batch-size", "0"] if case == "batch" else []
    code = main(["--checkpoint", checkpoint, "--images", *images, "--out", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_train_steps_then_predict_on_the_real_coco_sample(coco_sample, tmp_path):
    """The two real COCO images (133 classes) through a few training steps, a checkpoint, and
    the prediction command, end to end."""
    from p2m_core.data.dataset import PointPanopticDataset, collate_points
    from p2m_core.engine.step import build_optimizer, train_step

    cfg = tiny_config(coco_sample, "data.dataset=coco_panoptic", "data.train.json=panoptic.json",
                      "data.train.images=images", "data.train.panoptic=panoptic",
                      "data.train_short_side=[128, 192]", *PERMISSIVE)  # fmt: skip
    dataset = PointPanopticDataset.from_config(cfg, "train")
    batch = collate_points([dataset[0], dataset[1]])
    torch.manual_seed(0)
    classes = ClassInfo.from_dataset(dataset.panoptic)
    assert classes.num_classes == 133
    model = build_model(cfg.model, classes)
    optimizer = build_optimizer(model, cfg)
    results = [train_step(model, batch, optimizer, cfg, iteration) for iteration in range(3)]
    assert all(math.isfinite(r.total) for r in results)
    path = save_checkpoint(tmp_path / "coco.pt", model.eval(), cfg, classes, dataset.panoptic.categories)
    proc = run_cli("--checkpoint", str(path), "--images", str(coco_sample / "images"), "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--max-size", "128")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = json.loads((coco_sample / "panoptic.json").read_text())
    sizes = {i["file_name"]: (i["height"], i["width"]) for i in raw["images"]}
    check_outputs(tmp_path / "out", sizes, dataset.panoptic.categories)
