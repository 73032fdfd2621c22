"""One training step in one process on the tiny network: every loss term is finite and named,
the step changes the weights, and repeated steps on one batch lower the total loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset, collate_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.step import build_optimizer, train_step
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]
TERMS = {"presence", "partial_ce", "lab_affinity", "tree_energy", "boundary", "projector", "cls", "l1", "giou",
         "thing_dice", "stuff_dice", "stuff_presence"}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=4, num_val=0, size=64, seed=5, progress=False)
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml",
                      [f"data.root={root}", "data.train.points="])  # fmt: skip
    dataset = PointPanopticDataset.from_config(cfg, "train")
    batch = collate_points([dataset[i] for i in range(4)])
    return cfg, dataset, batch


def test_steps_name_every_term_and_lower_the_loss(setup) -> None:
    cfg, dataset, batch = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    optimizer = build_optimizer(model, cfg)
    before = [p.detach().clone() for p in model.semantic.parameters()]
    results = [train_step(model, batch, optimizer, cfg, iteration) for iteration in range(4)]
    assert set(results[0].losses) == TERMS
    assert all(math.isfinite(v) for r in results for v in r.losses.values())
    assert all(0.0 < r.pseudo_share < 1.0 for r in results)
    assert results[-1].total < results[0].total
    assert any(not torch.equal(a, b) for a, b in zip(before, model.semantic.parameters()))


def test_table4_terms_switch_off(setup) -> None:
    cfg, dataset, batch = setup
    from dataclasses import replace

    cfg = replace(cfg, loss=replace(cfg.loss, semantic_terms=["partial"]))
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    result = train_step(model, batch, build_optimizer(model, cfg), cfg, 0)
    assert "lab_affinity" not in result.losses and "tree_energy" not in result.losses and "partial_ce" in result.losses


def test_warmup_iterations_use_the_warmup_assignment(setup) -> None:
    cfg, dataset, batch = setup
    from dataclasses import replace

    cfg = replace(cfg, pseudo=replace(cfg.pseudo, warmup_iters=1))
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    optimizer = build_optimizer(model, cfg)
    warm = train_step(model, batch, optimizer, cfg, 0, keep_pseudo=True).pseudo
    after = train_step(model, batch, optimizer, cfg, 1, keep_pseudo=True).pseudo
    assert bool(torch.isnan(warm.disagreement).all())  # MC: no OT ran
    assert not bool(torch.isnan(after.disagreement).any())
