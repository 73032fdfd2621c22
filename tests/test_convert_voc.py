"""Pascal VOC 2012 (+ SBD) -> COCO panoptic, on tiny fixtures in the real on-disk layouts.

VOC annotations are palette PNGs (PIL mode 'P'); SBD annotations are MATLAB structs written
with scipy.io.savemat (GTcls.Segmentation, GTinst.Segmentation / Categories), as SBD ships them.
The output is read back with CocoPanoptic and scored against itself with panopticapi.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from p2m_core.data.convert_voc import BACKGROUND_ID, VOC_CLASSES, convert, main, voc_palette_color
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.errors import P2MInputError

H, W = 24, 32
PERSON, DOG, CAT, CHAIR = 15, 12, 8, 9

VOC_TRAIN = ["2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003", "2008_000004"]
SBD_TRAIN = ["2007_000002", "2008_000010", "2007_000003"]
SBD_VAL = ["2008_000011", "2008_000004", "2008_000012"]
ALL_NAMES = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))


def voc_maps(seed: int) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Class and instance maps with background, two objects, a void band and a classless region.

    Returns (class_map, instance_map, instance -> expected category).
    """
    rng = np.random.default_rng(seed)
    cls = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.uint8)
    top, left = int(rng.integers(2, 6)), int(rng.integers(2, 8))
    cls[top : top + 8, left : left + 10] = PERSON
    inst[top : top + 8, left : left + 10] = 1
    cls[top - 1, left - 1 : left + 11] = 255  # VOC's boundary band: void in both maps
    inst[top - 1, left - 1 : left + 11] = 255
    # a second object whose class map disagrees on a minority of its pixels: majority wins
    cls[14:22, 18:28] = DOG
    cls[14:16, 18:28] = CAT
    inst[14:22, 18:28] = 2
    # object-class pixels that belong to no instance: void
    cls[0:2, 28:32] = CHAIR
    return cls, inst, {1: PERSON, 2: DOG}


def palette_png(array: np.ndarray, path: Path) -> None:
    img = Image.fromarray(array, mode="P")
    palette = [c for i in range(256) for c in voc_palette_color(i)]
    img.putpalette(palette)
    img.save(path)


def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, name in enumerate(ALL_NAMES):
        Image.fromarray(rng.integers(0, 256, (H, W, 3)).astype(np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        if name in VOC_TRAIN + VOC_VAL:
            cls, inst, _ = voc_maps(index)
            palette_png(cls, voc / "SegmentationClass" / f"{name}.png")
            palette_png(inst, voc / "SegmentationObject" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    return voc


def sbd_maps(name: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """SBD maps: no void band; 2008_000012 has a single instance (Categories squeezes to a scalar)."""
    cls = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.uint8)
    cls[3:12, 4:14] = CAT
    inst[3:12, 4:14] = 1
    if name == "2008_000012":
        return cls, inst, [CAT]
    cls[13:20, 16:30] = CHAIR
    inst[13:20, 16:30] = 2
    return cls, inst, [CAT, CHAIR]


def make_sbd(root: Path) -> Path:
    sbd = root / "SBD" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "inst").mkdir(parents=True)
    for name in set(SBD_TRAIN + SBD_VAL):
        cls, inst, categories = sbd_maps(name)
        boundaries = np.empty((1, 1), dtype=object)  # a MATLAB cell, as in SBD
        boundaries[0, 0] = np.zeros((H, W), np.uint8)
        scipy.io.savemat(
            sbd / "cls" / f"{name}.mat",
            {"GTcls": {"Segmentation": cls, "Boundaries": boundaries, "CategoriesPresent": np.unique(cls[cls > 0])}},
        )
        scipy.io.savemat(
            sbd / "inst" / f"{name}.mat",
            {
                "GTinst": {
                    "Segmentation": inst,
                    "Boundaries": boundaries,
                    "Categories": np.array(categories, dtype=np.uint8).reshape(-1, 1),
                }
            },
        )
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return sbd


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path]:
    return make_voc(tmp_path), make_sbd(tmp_path)


def open_split(out: Path, split: str) -> CocoPanoptic:
    return CocoPanoptic(out / f"panoptic_{split}.json", image_dir=out / "images" / split)


def pq_of_self(out: Path, split: str) -> dict:
    from panopticapi.evaluation import pq_compute

    json_path = str(out / f"panoptic_{split}.json")
    folder = str(out / f"panoptic_{split}")
    return pq_compute(json_path, json_path, folder, folder)


def test_voc_only_conversion_matches_the_annotation(sources, tmp_path):
    voc, _ = sources
    out = tmp_path / "out"
    assert main(["--voc-root", str(voc), "--out", str(out)]) == 0
    for split, names in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        data = open_split(out, split)
        assert [r.image_path.stem for r in data.records] == names
        assert data.records[0].image_id == int(names[0].replace("_", ""))
        assert set(data.thing_ids) == set(range(1, 21)) and data.stuff_ids == [BACKGROUND_ID]
        assert [data.categories[i].name for i in range(1, 21)] == list(VOC_CLASSES)
        assert data.categories[BACKGROUND_ID].name == "background"
        for record in data.records:
            assert record.image_path.is_symlink()
            assert record.image_path.resolve() == (voc / "JPEGImages" / record.image_path.name).resolve()
            cls = np.asarray(Image.open(voc / "SegmentationClass" / f"{record.image_path.stem}.png"))
            inst = np.asarray(Image.open(voc / "SegmentationObject" / f"{record.image_path.stem}.png"))
            _, _, expected = voc_maps(ALL_NAMES.index(record.image_path.stem))
            ids = data.load_segment_ids(record)  # also checks PNG ids == segments_info ids
            category = {s.id: s.category_id for s in record.segments}
            assert (ids[inst == 255] == 0).all()  # boundary band is void
            assert (ids[(inst == 0) & (cls == CHAIR)] == 0).all()  # classless object pixels are void
            background = (inst == 0) & (cls == 0)
            (bg_id,) = set(ids[background].tolist())
            assert category[bg_id] == BACKGROUND_ID and (ids == bg_id).sum() == background.sum()
            for k, cat in expected.items():
                (sid,) = set(ids[inst == k].tolist())
                assert category[sid] == cat and (ids == sid).sum() == (inst == k).sum()
            assert len(record.segments) == 3
            areas = {s.id: s.area for s in record.segments}
            assert all(areas[s] == int((ids == s).sum()) for s in areas)
        result = pq_of_self(out, split)
        assert result["All"]["pq"] == pytest.approx(1.0)
        assert result["Things"]["n"] == 2 and result["Stuff"]["n"] == 1


def test_sbd_makes_train_aug_with_voc_precedence_and_no_val_images(sources, tmp_path):
    voc, sbd = sources
    out = tmp_path / "out"
    convert(voc, out, ["train", "val"], sbd_root=sbd)
    train = open_split(out, "train")
    names = [r.image_path.stem for r in train.records]
    # VOC train + SBD train + SBD val - VOC val
    assert names == sorted({"2007_000001", "2007_000002", "2008_000010", "2008_000011", "2008_000012"})
    assert not set(names) & set(VOC_VAL)
    assert [r.image_path.stem for r in open_split(out, "val").records] == VOC_VAL
    for record in train.records:
        ids = train.load_segment_ids(record)
        cats = sorted(s.category_id for s in record.segments)
        if record.image_path.stem in VOC_TRAIN:  # VOC's PNG, not SBD's .mat (which has CAT/CHAIR)
            assert cats == sorted([PERSON, DOG, BACKGROUND_ID])
        else:
            cls, inst, categories = sbd_maps(record.image_path.stem)
            assert cats == sorted(categories + [BACKGROUND_ID])
            for k in range(1, len(categories) + 1):
                (sid,) = set(ids[inst == k].tolist())
                assert (ids == sid).sum() == (inst == k).sum()
            assert (ids != 0).all()  # SBD has no void band here
    assert pq_of_self(out, "train")["All"]["pq"] == pytest.approx(1.0)


def test_sbd_category_is_used_when_the_class_map_is_empty_on_an_instance(sources, tmp_path):
    voc, sbd = sources
    name = "2008_000010"
    cls, inst, _ = sbd_maps(name)
    cls[inst == 2] = 0  # class map silent on instance 2: GTinst.Categories[1] (CHAIR) decides
    scipy.io.savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": cls}})
    out = tmp_path / "out"
    convert(voc, out, ["train"], sbd_root=sbd)
    data = open_split(out, "train")
    record = next(r for r in data.records if r.image_path.stem == name)
    ids = data.load_segment_ids(record)
    (sid,) = set(ids[inst == 2].tolist())
    assert {s.id: s.category_id for s in record.segments}[sid] == CHAIR


def test_copy_images_and_workers_give_the_same_dataset(sources, tmp_path):
    voc, sbd = sources
    one, two = tmp_path / "one", tmp_path / "two"
    convert(voc, one, ["train"], sbd_root=sbd)
    assert main(["--voc-root", str(voc), "--sbd-root", str(sbd), "--out", str(two), "--splits", "train",
                 "--copy-images", "--workers", "2"]) == 0  # fmt: skip
    documents = [json.loads((root / "panoptic_train.json").read_text()) for root in (one, two)]
    assert documents[0] == documents[1]
    for png in (one / "panoptic_train").glob("*.png"):
        assert png.read_bytes() == (two / "panoptic_train" / png.name).read_bytes()
    for jpg in (two / "images" / "train").glob("*.jpg"):
        assert not jpg.is_symlink() and jpg.read_bytes() == (voc / "JPEGImages" / jpg.name).read_bytes()
    assert not list((two / "panoptic_train").glob(".*.tmp"))  # no leftovers of atomic writes


def test_missing_segmentation_object_file_is_a_clear_error(sources, tmp_path, capsys):
    voc, _ = sources
    missing = voc / "SegmentationObject" / "2007_000002.png"
    missing.unlink()
    with pytest.raises(P2MInputError, match=r"SegmentationObject.*2007_000002.*2007_000002\.png"):
        convert(voc, tmp_path / "out", ["train"])
    assert main(["--voc-root", str(voc), "--out", str(tmp_path / "out"), "--splits", "train"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and str(missing) in err
    assert not (tmp_path / "out" / "panoptic_train.json").exists()  # the JSON is written last


def test_missing_folders_and_files_are_named(sources, tmp_path):
    voc, sbd = sources
    with pytest.raises(P2MInputError, match="VOC root folder not found: .*nope"):
        convert(tmp_path / "nope", tmp_path / "out", ["val"])
    with pytest.raises(P2MInputError, match="SBD inst folder not found"):
        (sbd / "inst").rename(sbd / "inst_moved")
        convert(voc, tmp_path / "out", ["train"], sbd_root=sbd)
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(P2MInputError, match=r"VOC val split list not found: .*val\.txt"):
        convert(voc, tmp_path / "out", ["val"])
    bad = voc / "SegmentationClass" / "2007_000001.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(bad)  # an RGB-coloured map, not indices
    with pytest.raises(P2MInputError, match="2007_000001.png: expected a palette"):
        convert(voc, tmp_path / "out", ["train"])
