"""The pseudo-label stage: one Config in, metrics/overlays out; the single-run command line."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from p2m_core.ablation import run_pseudo_stage
from p2m_core.ablation.prepare import load_stage_data, prepare_batches
from p2m_core.ablation.sources import max_pool
from p2m_core.config import load_config, stage_hash
from p2m_core.data.edges import EdgeDetector
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.points import sample_points, write_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from p2m_core.ablation.cli import main as pseudo_main
from p2m_core.ablation.cli import result_table

REPO = Path(__file__).resolve().parents[1]
QUALITY = {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mIoU", "pixel_acc"}
OT_DIAGNOSTICS = ("disagreement_pct", "row_error", "col_error", "rel_error", "k_violation_pct", "sinkhorn_iterations")
SMALL = ["pseudo.mask_stride=1", "pseudo.graph_stride=2", "pseudo.point_dilation=3", "ablation.overlays=0"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=0, num_val=4, size=64, seed=3, progress=False)
    return root


def cfg_for(root: Path, *overrides: str):
    return load_config(REPO / "experiments" / "ablation_synthetic.yaml", [f"data.root={root}", *SMALL, *overrides])


def check_result(result: dict, assignment: str) -> None:
    assert QUALITY <= set(result["metrics"])
    for key in QUALITY:
        assert 0.0 <= result["metrics"][key] <= 100.0, key
    diag = result["diagnostics"]
    if assignment == "mc":
        assert all(diag[k] is None for k in OT_DIAGNOSTICS)
    else:
        assert 0.0 <= diag["disagreement_pct"] <= 100.0 and 0.0 <= diag["k_violation_pct"] <= 100.0
        assert diag["col_error"] >= 0 and diag["sinkhorn_iterations"] >= 1
    assert result["timings"]["seconds_per_image"] > 0 and result["counts"]["images"] > 0
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN


# --------------------------------------------------------------------------- what runs is what is recorded
def test_result_records_the_hash_and_config_of_what_ran(synthetic, tmp_path):
    cfg = cfg_for(synthetic, "pseudo.assignment=mc", "ablation.overlays=2")
    result = run_pseudo_stage(cfg, tmp_path)
    check_result(result, "mc")
    assert result["config_hash"] == stage_hash(cfg, "pseudo") and result["stage"] == "pseudo"
    assert load_config(tmp_path / "config.yaml") == cfg  # the saved config is the one that ran
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    # the same config with OT is a different computation: hash and diagnostics change together
    ot = run_pseudo_stage(cfg_for(synthetic, "pseudo.assignment=ot"))
    check_result(ot, "ot")
    assert ot["config_hash"] != result["config_hash"]
    assert ot["counts"]["transported_pixels"] == result["counts"]["transported_pixels"]


def test_every_ablation_setting_reaches_the_stage(synthetic):
    # regression: sweep settings overriding ablation.* / source.* used to run with the base settings
    only_blur = ["ablation.corruption.semantic_noise_std=0", "ablation.corruption.boundary_drop=0",
                 "ablation.corruption.boundary_blur_sigma=0", "pseudo.assignment=mc"]  # fmt: skip
    oracle = run_pseudo_stage(cfg_for(synthetic, "ablation.source=oracle", "pseudo.assignment=mc"))
    assert oracle["metrics"]["PQ_th"] > 50
    pq = [run_pseudo_stage(cfg_for(synthetic, *only_blur, f"ablation.corruption.semantic_blur_sigma={s}"))["metrics"]["PQ"]
          for s in (0.0, 2.0, 4.0)]  # fmt: skip
    assert pq[0] == pytest.approx(oracle["metrics"]["PQ"])  # zero corruption is the oracle
    assert pq[0] - pq[2] > 5  # heavy blur costs clearly
    assert all(later <= earlier + 1 for earlier, later in itertools.pairwise(pq))
    uniform = run_pseudo_stage(cfg_for(synthetic, "ablation.source=oracle", "pseudo.assignment=mc", "ablation.void_semantic=uniform"))
    assert uniform["config_hash"] != oracle["config_hash"]


def test_point_seed_resamples_points_like_the_point_file(synthetic, tmp_path):
    cfg = cfg_for(synthetic, "data.point_seed=5")
    data = load_stage_data(cfg)
    written = sample_points(data.dataset, seed=5)
    batches = list(prepare_batches(data, cfg))
    drawn = {item.record.image_id: item.points_yx.tolist() for batch in batches for item in batch}
    assert drawn == {e["image_id"]: [[p["y"], p["x"]] for p in e["points"]] for e in written["images"]}
    other = {item.record.image_id: item.points_yx.tolist() for b in prepare_batches(load_stage_data(cfg_for(synthetic, "data.point_seed=6")), cfg) for item in b}
    assert other != drawn
    # points from a file: the file's points are used, a missing file is an error naming the key
    write_points(written, tmp_path / "points.json")
    from_file = cfg_for(synthetic, "ablation.points=file", f"data.val.points={tmp_path / 'points.json'}")
    assert run_pseudo_stage(from_file)["metrics"] == run_pseudo_stage(cfg)["metrics"]
    with pytest.raises(P2MInputError, match="data.val.points"):
        run_pseudo_stage(cfg_for(synthetic, "ablation.points=file", f"data.val.points={tmp_path / 'none.json'}"))


def test_data_edge_model_is_used_never_silently_ignored(synthetic, tmp_path):
    # regression: the stage's own edge_model="" default ignored data.edge_model
    from tests.test_edges import TINY_FOREST

    forest = tmp_path / "tiny.yml.gz"
    forest.write_bytes(gzip.compress(TINY_FOREST))
    cfg = cfg_for(synthetic, "ablation.source=image", "pseudo.maps=[semantic, boundary_low]", f"data.edge_model={forest}")
    data = load_stage_data(cfg)
    item = next(iter(prepare_batches(data, cfg)))[0]
    image = data.dataset.load_image(item.record)
    np.testing.assert_array_equal(item.maps.boundary_low, max_pool(EdgeDetector.from_model_path(forest)(image), 1))
    assert not np.array_equal(item.maps.boundary_low, max_pool(EdgeDetector.from_model_path(None)(image), 1))
    with pytest.raises(P2MInputError, match="missing.yml.gz"):
        run_pseudo_stage(cfg_for(synthetic, "ablation.source=image", "pseudo.maps=[semantic]", f"data.edge_model={tmp_path / 'missing.yml.gz'}"))


def test_maps_the_source_lacks_are_refused_not_dropped(synthetic):
    with pytest.raises(P2MInputError, match="provides no boundary_high"):
        run_pseudo_stage(cfg_for(synthetic, "ablation.source=image"))
    with pytest.raises(P2MInputError, match="provides no boundary_low"):
        run_pseudo_stage(cfg_for(synthetic, "ablation.oracle_boundary_low=none"))
    with pytest.raises(P2MInputError, match="checkpoint not found: m.pt"):
        run_pseudo_stage(cfg_for(synthetic, "ablation.source=checkpoint", "ablation.checkpoint=m.pt"))


def test_missing_dataset_names_the_key_and_how_to_make_it(tmp_path):
    with pytest.raises(P2MInputError, match=r"key 'data.root' is .*nothing.*python -m p2m_core.data.synthetic"):
        run_pseudo_stage(cfg_for(tmp_path / "nothing"))


def test_converged_solver_honours_k_where_the_reference_does_not(synthetic):
    def violation(mode: str) -> float:
        cfg = cfg_for(synthetic, "pseudo.k_scheme=equal_division", f"pseudo.sinkhorn_mode={mode}")
        return run_pseudo_stage(cfg)["diagnostics"]["k_violation_pct"]

    assert violation("converged") < 1.0 < violation("reference")


def test_stage_on_real_coco_sample(coco_sample, tmp_path):
    dataset = CocoPanoptic(coco_sample / "panoptic.json", coco_sample / "images", coco_sample / "panoptic")
    root_cfg = [
        f"data.root={coco_sample}", "data.dataset=coco_panoptic", "data.val.json=panoptic.json",
        "data.val.panoptic=panoptic", "data.val.images=images", "pseudo.mask_stride=8", "pseudo.graph_stride=16",
    ]  # fmt: skip
    runs = {
        "mc": ["pseudo.assignment=mc", "ablation.overlays=1"],
        "reference": ["pseudo.sinkhorn_mode=reference"],
        "converged": ["pseudo.sinkhorn_mode=converged"],
        "image": ["ablation.source=image", "pseudo.maps=[semantic, boundary_low]", "pseudo.assignment=mc"],
    }
    for name, extra in runs.items():
        cfg = load_config(None, [*root_cfg, *extra])
        result = run_pseudo_stage(cfg, tmp_path / name)
        check_result(result, "mc" if "pseudo.assignment=mc" in extra else "ot")
        assert result["counts"]["images"] == len(dataset) == 2
        assert result["counts"]["points"] == sum(len(e["points"]) for e in sample_points(dataset, 0)["images"])
    panel = np.asarray(Image.open(next((tmp_path / "mc" / "overlays").glob("*.png"))))
    assert panel.ndim == 3 and panel.shape[0] in {r.height for r in dataset.records}


# --------------------------------------------------------------------------- command line
def test_cli_end_to_end(synthetic, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "p2m_core.ablation", "--out", str(out), "--set", f"data.root={synthetic}",
         "--set", "pseudo.mask_stride=2", "--set", "pseudo.graph_stride=4", "--set", "ablation.overlays=2",
         "--set", "ablation.corruption.semantic_blur_sigma=1.5"],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    check_result(metrics, "ot")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["ablation"]["corruption"]["semantic_blur_sigma"] == 1.5 and saved["pseudo"]["mask_stride"] == 2
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2 and np.asarray(Image.open(overlays[0])).shape[0] == 256  # 64 px shown x4
    assert "| PQ |" in proc.stdout and "images" in proc.stderr  # table out, progress on stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ablation.source=gt"], "one of 'oracle', 'oracle_corrupt', 'image', 'checkpoint'"),
        (["ablation.source=checkpoint", "ablation.checkpoint=m.pt"], "checkpoint not found: m.pt"),
        (["ablation.bogus=1"], "unknown key 'ablation.bogus'"),
        (["pseudo.assignment=greedy"], "pseudo.assignment"),
    ],
)
def test_cli_errors_exit_2(synthetic, tmp_path, overrides, message, capsys):
    args = ["--out", str(tmp_path / "x"), "--set", f"data.root={synthetic}"]
    code = pseudo_main(args + [a for o in overrides for a in ("--set", o)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_result_table_marks_values_that_do_not_apply():
    result = {"metrics": {"PQ": 50.0, "PQ_th": 25.0, "PQ_st": 75.0, "mIoU": 60.0},
              "diagnostics": {"disagreement_pct": None, "col_error": None, "k_violation_pct": None},
              "timings": {"seconds_per_image": 0.01}}  # fmt: skip
    header, rule, row = result_table({"mc": result}).splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row == "| mc | 50.0 | 25.0 | 75.0 | 60.0 | - | - | - | 0.010 |"
