"""The pseudo-label ablation stage: oracle maps, corruption, scoring, sweep and command line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.points import sample_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.evaluate import (
    SWEEP_SETTINGS,
    evaluate_pseudo_labels,
    load_stage_config,
    main,
    markdown_table,
    run_sweep,
)
from p2m_core.pseudo.oracle import (
    CorruptionConfig,
    SourceConfig,
    build_image_maps,
    corrupt_maps,
    downsample_ids,
    instance_boundaries,
    parse_source,
    upsample_nearest,
)

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mIoU", "pixel_acc"}
DIAGNOSTIC_KEYS = {
    "ot_mc_disagreement", "row_error", "col_error", "rel_error", "k_violation", "iterations",
    "converged_fraction", "seconds_per_image",
}  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[CocoPanoptic, dict, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=0, num_val=4, size=64, seed=3, progress=False)
    dataset = CocoPanoptic(root / "panoptic_val.json", root / "images" / "val", root / "panoptic_val")
    return dataset, sample_points(dataset, seed=0), root


def _random_ids(rng: np.random.Generator, h: int = 23, w: int = 31) -> np.ndarray:
    ids = rng.integers(1, 4, size=(h, w))
    return ndimage.median_filter(ids, size=5)  # blobs, not noise


def _check_ranges(result: dict, assignment: str) -> None:
    assert METRIC_KEYS <= set(result["metrics"])
    assert DIAGNOSTIC_KEYS <= set(result["diagnostics"])
    for key in METRIC_KEYS:
        assert 0.0 <= result["metrics"][key] <= 1.0, key
    diag = result["diagnostics"]
    assert diag["seconds_per_image"] > 0
    if assignment == "mc":
        assert diag["ot_mc_disagreement"] is None and diag["iterations"] is None
    else:
        assert 0.0 <= diag["ot_mc_disagreement"] <= 1.0
        assert diag["col_error"] >= 0 and diag["row_error"] >= 0 and diag["iterations"] >= 1
        assert 0.0 <= diag["k_violation"] <= 1.0
    assert result["counts"]["images"] > 0
    assert len(result["config_hash"]) == 16 and len(result["run_hash"]) == 16
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN


# --------------------------------------------------------------------------- oracle maps
def test_instance_boundaries_match_an_independent_filter():
    ids = _random_ids(np.random.default_rng(0))
    # a pixel is on a boundary iff its 3x3 neighbourhood (border replicated) is not constant
    expected = ndimage.maximum_filter(ids, 3, mode="nearest") != ndimage.minimum_filter(ids, 3, mode="nearest")
    np.testing.assert_array_equal(instance_boundaries(ids).astype(bool), expected)


def test_oracle_maps_are_one_hot_with_gt_boundaries():
    ids = np.ones((12, 16), dtype=np.int64)
    ids[:, 8:] = 3  # segments 1 and 3 touch along column 7/8
    ids[8:, 2:6] = 2
    ids[0:3, 0:4] = 0  # void
    classes = {1: 2, 2: 0, 3: 2}  # two segments of the same class
    maps = build_image_maps(parse_source("oracle"), ids, classes, 4)
    assert maps.semantic.shape == (4,) + ids.shape
    np.testing.assert_array_equal(maps.semantic.sum(0), (ids != 0).astype(np.float32))
    np.testing.assert_array_equal(maps.semantic.argmax(0)[ids == 2], 0)
    np.testing.assert_array_equal(maps.semantic[2][ids == 3], 1.0)
    # instance boundaries separate segments 1 and 3 although they share class 2
    np.testing.assert_array_equal(maps.boundary_high[3:8, 7:9], 1.0)  # both sides of the contact
    assert maps.boundary_high[4:7, 12:].max() == 0.0  # inside segment 3
    np.testing.assert_array_equal(maps.boundary_low, maps.boundary_high)
    uniform = build_image_maps(parse_source("oracle"), ids, classes, 4, source_cfg=SourceConfig(void_semantic="uniform"))
    np.testing.assert_allclose(uniform.semantic[:, ids == 0], 0.25)


def test_image_source_uses_edges_and_no_gt_boundary():
    ids = _random_ids(np.random.default_rng(2))
    edges = np.random.default_rng(3).random(ids.shape).astype(np.float32)
    maps = build_image_maps(parse_source("image"), ids, {1: 0, 2: 1, 3: 2}, 3, edges=edges)
    assert maps.boundary_high is None
    np.testing.assert_array_equal(maps.boundary_low, edges)
    with pytest.raises(P2MInputError, match="edge map"):
        build_image_maps(parse_source("image"), ids, {1: 0, 2: 1, 3: 2}, 3)


def test_corruption_is_deterministic_per_seed_and_image():
    ids = _random_ids(np.random.default_rng(4))
    clean = build_image_maps(parse_source("oracle"), ids, {1: 0, 2: 1, 3: 2}, 3)
    cfg = CorruptionConfig(semantic_blur_sigma=1.5, semantic_noise_std=0.2, boundary_drop=0.5, boundary_blur_sigma=0.0)
    a, b = corrupt_maps(clean, cfg, image_id=7), corrupt_maps(clean, cfg, image_id=7)
    for name in ("semantic", "boundary_high", "boundary_low"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other_seed = corrupt_maps(clean, CorruptionConfig(**{**cfg.__dict__, "seed": 1}), image_id=7)
    other_image = corrupt_maps(clean, cfg, image_id=8)
    assert not np.array_equal(a.semantic, other_seed.semantic)
    assert not np.array_equal(a.boundary_high, other_image.boundary_high)
    # still probabilities; about half of the boundary pixels dropped
    np.testing.assert_allclose(a.semantic.sum(0), 1.0, atol=1e-5)
    assert (a.semantic >= 0).all()
    on = clean.boundary_high > 0
    assert 0.3 < (a.boundary_high[on] == 0).mean() < 0.7
    assert (a.boundary_high[~on] == 0).all()  # no blur: nothing appears off the boundary


def test_zero_corruption_is_the_oracle_and_full_drop_removes_boundaries():
    ids = _random_ids(np.random.default_rng(5))
    clean = build_image_maps(parse_source("oracle"), ids, {1: 0, 2: 1, 3: 2}, 3)
    none = CorruptionConfig(semantic_blur_sigma=0, semantic_noise_std=0, boundary_drop=0, boundary_blur_sigma=0)
    same = corrupt_maps(clean, none, image_id=1)
    np.testing.assert_array_equal(same.semantic, clean.semantic)
    np.testing.assert_array_equal(same.boundary_high, clean.boundary_high)
    gone = corrupt_maps(clean, CorruptionConfig(boundary_drop=1.0), image_id=1)
    assert not gone.boundary_high.any() and not gone.boundary_low.any()
    with pytest.raises(P2MInputError, match="boundary_drop"):
        corrupt_maps(clean, CorruptionConfig(boundary_drop=1.5), image_id=1)


def test_downsample_then_upsample_keeps_every_block_centre():
    ids = _random_ids(np.random.default_rng(6), 37, 22)
    for stride in (1, 2, 4, 5):
        small = downsample_ids(ids, stride)
        assert small.shape == (-(-37 // stride), -(-22 // stride))
        back = upsample_nearest(small, stride, 37, 22)
        ys = np.minimum(np.arange(small.shape[0]) * stride + stride // 2, 36)
        xs = np.minimum(np.arange(small.shape[1]) * stride + stride // 2, 21)
        np.testing.assert_array_equal(back[np.ix_(ys, xs)], ids[np.ix_(ys, xs)])


def test_sources_parse_and_checkpoint_is_not_available_yet():
    assert str(parse_source("checkpoint:/x/model.pt")) == "checkpoint:/x/model.pt"
    with pytest.raises(P2MInputError, match="unknown map source"):
        parse_source("gt")
    with pytest.raises(P2MInputError, match="not available yet"):
        build_image_maps(parse_source("checkpoint:m.pt"), np.ones((4, 4), int), {1: 0}, 1)


def test_stage_config_sections_and_unknown_keys(tmp_path):
    yaml_path = tmp_path / "abl.yaml"
    yaml_path.write_text("pseudo: {k_scheme: nearest_point}\nablation: {semantic_blur_sigma: 3.0}\n")
    cfg, stage = load_stage_config(yaml_path, ["ablation.boundary_drop=0.5", "source.void_semantic=uniform"])
    assert cfg.pseudo.k_scheme == "nearest_point"
    assert stage.ablation.semantic_blur_sigma == 3.0 and stage.ablation.boundary_drop == 0.5
    assert stage.source.void_semantic == "uniform"
    with pytest.raises(P2MInputError, match="ablation.blur"):
        load_stage_config(None, ["ablation.blur=2"])
    with pytest.raises(P2MInputError, match="pseudo.k_schem"):
        load_stage_config(None, ["pseudo.k_schem=nearest_point"])
    with pytest.raises(P2MInputError, match="boundary_drop"):
        load_stage_config(None, ["ablation.boundary_drop=2"])


# --------------------------------------------------------------------------- the stage
def _run(dataset, points, overrides, source="oracle_corrupt", **kw):
    cfg, stage = load_stage_config(None, overrides)
    return evaluate_pseudo_labels(dataset, points, cfg.pseudo, source, stage=stage, config=cfg, **kw)


def test_perfect_oracle_gives_high_thing_pq_and_blur_lowers_it(synthetic):
    dataset, points, _ = synthetic
    base = ["pseudo.mask_stride=1", "pseudo.graph_stride=2", "pseudo.assignment=mc", "pseudo.point_dilation=3"]
    oracle = _run(dataset, points, base, source="oracle")
    assert oracle["metrics"]["PQ_th"] > 0.5
    only_blur = ["ablation.semantic_noise_std=0", "ablation.boundary_drop=0", "ablation.boundary_blur_sigma=0"]
    pq = [
        _run(dataset, points, [*base, *only_blur, f"ablation.semantic_blur_sigma={s}"])["metrics"]["PQ"]
        for s in (0.0, 2.0, 4.0)
    ]
    assert pq[0] == pytest.approx(oracle["metrics"]["PQ"])  # zero corruption is the oracle
    assert pq[0] - pq[2] > 0.05  # heavy blur costs clearly
    assert all(later <= earlier + 0.01 for earlier, later in itertools.pairwise(pq))  # and more blur never helps much


def test_sweep_runs_every_setting_on_synthetic(synthetic, tmp_path):
    dataset, points, _ = synthetic
    overrides = ["pseudo.mask_stride=2", "pseudo.graph_stride=4", "pseudo.point_dilation=3"]
    results = run_sweep(dataset, points, None, overrides, "oracle_corrupt", tmp_path, max_images=3, overlays=1)
    assert list(results) == [name for name, _ in SWEEP_SETTINGS]
    for name, result in results.items():
        _check_ranges(result, "mc" if name == "mc" else "ot")
        assert (tmp_path / name / "metrics.json").is_file()
        assert len(list((tmp_path / name / "overlays").glob("*.png"))) == 1
        assert result["counts"]["images"] == 3
    assert results["ot_converged_nearest_centroid"]["pseudo"]["sinkhorn_mode"] == "converged"
    # the converged solver honours k, the reference one does not (ALGORITHM.md)
    assert results["ot_converged_equal_division"]["diagnostics"]["k_violation"] < results[
        "ot_reference_equal_division"]["diagnostics"]["k_violation"]
    # every run scored the same points and pixels
    assert len({r["counts"]["transported_pixels"] for r in results.values()}) == 1
    table = (tmp_path / "summary.md").read_text()
    assert table == markdown_table(results) + "\n"
    assert all(f"| {name} |" in table for name in results)


def test_stage_on_real_coco_sample(coco_sample, tmp_path):
    dataset = CocoPanoptic(coco_sample / "panoptic.json", coco_sample / "images", coco_sample / "panoptic")
    points = sample_points(dataset, seed=0)
    base = ["pseudo.mask_stride=8", "pseudo.graph_stride=16"]
    runs = {
        "mc": ["pseudo.assignment=mc"],
        "reference": ["pseudo.sinkhorn_mode=reference"],
        "converged": ["pseudo.sinkhorn_mode=converged"],
        "equal_division": ["pseudo.sinkhorn_mode=converged", "pseudo.k_scheme=equal_division"],
        "nearest_point": ["pseudo.k_scheme=nearest_point"],
        "image": ["pseudo.assignment=mc"],
    }
    for name, extra in runs.items():
        source = "image" if name == "image" else "oracle_corrupt"
        kw = {"out_dir": tmp_path / name, "overlays": 1 if name == "mc" else 0}
        if name == "image":
            with pytest.warns(UserWarning, match="boundary_high"):
                result = _run(dataset, points, [*base, *extra], source=source, **kw)
            assert result["maps_used"] == ["semantic", "boundary_low"] and result["source"] == "image"
        else:
            result = _run(dataset, points, [*base, *extra], source=source, **kw)
        _check_ranges(result, "mc" if "pseudo.assignment=mc" in extra else "ot")
        assert result["counts"]["images"] == 2
        assert result["counts"]["points"] == sum(len(e["points"]) for e in points["images"])
        on_disk = json.loads((tmp_path / name / "metrics.json").read_text())
        assert on_disk["metrics"] == result["metrics"]
    panel = np.asarray(Image.open(next((tmp_path / "mc" / "overlays").glob("*.png"))))
    assert panel.ndim == 3 and panel.shape[0] in {r.height for r in dataset.records}


# --------------------------------------------------------------------------- command line
def test_cli_end_to_end(synthetic, tmp_path):
    _, _, root = synthetic
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "p2m_core.pseudo.evaluate", "--data-root", str(root), "--split", "val",
         "--source", "oracle_corrupt", "--out", str(out), "--overlays", "2", "--max-images", "3",
         "--set", "pseudo.mask_stride=2", "--set", "pseudo.graph_stride=4", "--set", "ablation.semantic_blur_sigma=1.5"],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    _check_ranges(metrics, "ot")
    assert metrics["ablation"]["semantic_blur_sigma"] == 1.5 and metrics["pseudo"]["mask_stride"] == 2
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2
    assert np.asarray(Image.open(overlays[0])).shape[0] == 256  # 64 px upscaled x4 for visibility
    assert "| PQ |" in proc.stdout and "images" in proc.stderr  # table out, progress on stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "gt"], "unknown map source"),
        (["--source", "checkpoint:model.pt"], "not available yet"),
        (["--source", "oracle", "--set", "ablation.bogus=1"], "unknown key 'ablation.bogus'"),
        (["--source", "oracle", "--set", "pseudo.bogus=1"], "unknown key 'pseudo.bogus'"),
        (["--source", "oracle", "--set", "pseudo.assignment=greedy"], "pseudo.assignment"),
    ],
)
def test_cli_errors_exit_2(synthetic, tmp_path, args, message, capsys):
    _, _, root = synthetic
    code = main(["--data-root", str(root), "--out", str(tmp_path / "x"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_cli_error_via_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "p2m_core.pseudo.evaluate", "--source", "oracle", "--out", str(tmp_path),
         "--data-root", str(tmp_path / "missing")],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "panoptic JSON not found" in proc.stderr


def test_markdown_table_formats_and_marks_missing_values():
    result = {"metrics": {"PQ": 0.5, "PQ_th": 0.25, "PQ_st": 0.75, "mIoU": 0.6},
              "diagnostics": {"ot_mc_disagreement": None, "col_error": None, "k_violation": None, "seconds_per_image": 0.01}}  # fmt: skip
    table = markdown_table({"mc": result})
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.startswith("| mc | 50.0 | 25.0 | 75.0 | 60.0 | - | - | - | 0.010 |")
