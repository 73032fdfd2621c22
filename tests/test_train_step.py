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


def test_optimizer_groups_follow_the_lr_factors(setup) -> None:
    cfg, dataset, batch = setup
    from dataclasses import replace

    cfg = replace(cfg, train=replace(cfg.train, lr=1e-3, lr_backbone_mult=0.1, lr_offsets_mult=0.5))
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["offsets"]["lr"] == pytest.approx(5e-4)
    assert groups["rest"]["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in groups["backbone"]["params"])
    assert all("sampling_offsets" in names[id(p)] or ".reference." in names[id(p)] for p in groups["offsets"]["params"])
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_release_weighting_scales_by_the_thing_ratio_and_ramps() -> None:
    from p2m_core.model.criterion import UNRAMPED_TERMS, release_weighting

    names = ("presence", "partial_ce", "lab_affinity", "tree_energy", "boundary", "projector", "cls", "thing_dice",
             "stuff_dice", "stuff_presence")  # fmt: skip
    terms = {n: torch.tensor(1.0) for n in names}
    # one image: points 0, 1 things (both own pixels), 2, 3 stuff of one class: 2 things, 1 stuff
    segments = torch.tensor([[[0, 1], [2, 2]]])
    labels = torch.tensor([[0, 0, 5, 5]])
    is_thing = torch.tensor([[True, True, False, False]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    start = release_weighting(terms, segments, labels, is_thing, mask, iteration=0, ramp_iters=10)
    half = release_weighting(terms, segments, labels, is_thing, mask, iteration=5, ramp_iters=10)
    for name in names:
        scale = 1.0 if name in ("boundary", "projector") else (1 / 3 if name.startswith("stuff") else 2 / 3)
        ramp0, ramp5 = (1.0, 1.0) if name in UNRAMPED_TERMS else (0.0, 0.5)
        assert float(start[name]) == pytest.approx(scale * ramp0), name
        assert float(half[name]) == pytest.approx(scale * ramp5), name


def test_training_outputs_are_maps_pseudo_labels_and_losses(setup) -> None:
    from p2m_core.engine.step import training_outputs

    cfg, dataset, batch = setup
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    outputs = training_outputs(model, batch, cfg, 0)
    assert set(outputs.losses) == TERMS and all(v.requires_grad for v in outputs.losses.values())
    assert outputs.maps.semantic.shape[-2:] == outputs.pseudo.panoptic.shape[-2:]
    assert not outputs.maps.semantic.requires_grad and outputs.maps.embedding is not None
    assert outputs.network.semantic.logits[-1].requires_grad


def test_masks_at_the_network_stride(setup) -> None:
    """pseudo.mask_stride 8 is the network's own grid: its maps enter the pseudo labels as they
    are, detached (they once reached the geodesic solver with their gradient)."""
    cfg, dataset, batch = setup
    from dataclasses import replace

    cfg = replace(cfg, pseudo=replace(cfg.pseudo, mask_stride=8, graph_stride=8))
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    result = train_step(model, batch, build_optimizer(model, cfg), cfg, 0, keep_pseudo=True)
    assert result.pseudo.panoptic.shape[-2:] == (batch["images"].shape[-2] // 8, batch["images"].shape[-1] // 8)
    assert math.isfinite(result.total)


def test_step_leaves_its_losses_on_the_device_and_one_read_gives_the_floats(setup) -> None:
    """The step returns its losses as detached tensors (a float of each would make the host wait
    for the device at every step on GPU); read back together, several steps give exactly the
    floats, and the solver means, that each step's own conversion gives."""
    from p2m_core.engine.step_metrics import SOLVER_METRICS, read_step_metrics, step_record

    cfg, dataset, batch = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    optimizer = build_optimizer(model, cfg)
    results = [train_step(model, batch, optimizer, cfg, iteration, keep_pseudo=True) for iteration in range(2)]
    for result in results:
        assert isinstance(result.total, torch.Tensor) and not result.total.requires_grad
        assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in result.losses.values())
    metrics = read_step_metrics([step_record(result) for result in results])
    for result, got in zip(results, metrics):
        pseudo = result.pseudo
        rows = torch.stack([pseudo.iterations.float(), pseudo.col_error.float(), 100.0 * pseudo.disagreement.float(),
                            pseudo.converged.float()]).cpu()  # fmt: skip
        solver = {name: float(v) for name, v in zip(SOLVER_METRICS, torch.nanmean(rows, dim=1).tolist()) if v == v}
        expected = {f"loss/{name}": float(value) for name, value in result.losses.items()}
        expected.update({"loss/total": float(result.total), "lr": result.lr, "step_seconds": result.step_seconds,
                         "pseudo_seconds": result.pseudo_seconds, "pseudo_share": result.pseudo_share, **solver})  # fmt: skip
        assert list(got) == list(expected) and got == expected
        assert "solver_iterations" in got
