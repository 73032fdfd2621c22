"""The assembled network on real batches of the synthetic dataset: every output has the shape
the losses and the pseudo-label pipeline expect, padding does not leak into predictions, and
inference produces valid panoptic predictions (docs/METHOD.md, "The network")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset, collate_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.errors import P2MInputError
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=2, num_val=2, size=64, seed=5, progress=False)
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml", [f"data.root={root}", "data.val.points="])
    dataset = PointPanopticDataset.from_config(cfg, "val")
    batch = collate_points([dataset[0], dataset[1]])
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    return cfg, dataset, batch, model


def test_outputs_have_the_documented_shapes(tiny) -> None:
    cfg, dataset, batch, model = tiny
    out = model(batch["images"], batch["padding_mask"])
    B, _, H, W = batch["images"].shape
    C = model.classes.num_classes
    h8, w8 = out.size8
    assert (h8, w8) == (H // 8, W // 8)
    assert len(out.semantic.logits) == cfg.model.semantic_layers and out.semantic.logits[-1].shape == (B, C, h8, w8)
    assert out.boundary.shape == (B, 1, h8, w8) and out.embedding.shape == (B, cfg.model.projector_dim, h8, w8)
    n_things, n_stuff = len(model.classes.thing_classes), len(model.classes.stuff_classes)
    assert out.located.logits[-1].shape == (B, cfg.model.num_queries, n_things)
    assert out.stuff.masks[-1].shape == (B, n_stuff, h8, w8)
    masks = model.thing_masks(out, torch.zeros(B, 3, dtype=torch.long))
    assert len(masks) == cfg.model.thing_layers and masks[-1].shape == (B, 3, h8, w8)


def test_predictions_are_valid_panoptic_maps(tiny) -> None:
    cfg, dataset, batch, model = tiny
    model.eval()
    results = model.predict(batch["images"], batch["padding_mask"], batch["image_sizes"])
    for result, (h, w) in zip(results, batch["image_sizes"]):
        assert result["panoptic"].shape == (h, w) and result["semantic"].shape == (h, w)
        ids = set(result["panoptic"].unique().tolist()) - {0}
        assert ids == {s["id"] for s in result["segments"]}
        for s in result["segments"]:
            assert s["isthing"] == model.classes.is_thing[s["label"]] and s["score"] >= cfg.model.inference.score_threshold


def test_a_dataset_without_things_is_refused(tiny) -> None:
    cfg = tiny[0]
    with pytest.raises(P2MInputError, match="no thing class"):
        build_model(cfg.model, ClassInfo((False, False)))


def test_task_maps_feed_the_pseudo_label_pipeline(tiny) -> None:
    from p2m_core.data.edges import classical_edges
    from p2m_core.model.task_maps import mask_grid, points_at_mask, task_maps
    from p2m_core.pseudo.labels import generate_pseudo_labels

    cfg, dataset, batch, model = tiny
    out = model(batch["images"], batch["padding_mask"])
    grid = mask_grid(batch["images"].shape, cfg.pseudo.mask_stride)
    points = points_at_mask(batch["points_yx"], batch["point_labels"], batch["point_is_thing"], cfg.pseudo.mask_stride, grid)
    images = (batch["images"].permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()
    low = torch.stack([torch.from_numpy(classical_edges(im)) for im in images])
    maps = task_maps(out, points, grid, cfg.pseudo, boundary_low=low)
    assert maps.semantic.shape == (2, model.classes.num_classes, *grid) and not maps.semantic.requires_grad
    assert maps.boundary_high.shape == maps.boundary_low.shape == (2, *grid)
    labels = generate_pseudo_labels(maps, points, cfg.pseudo, check_values=False)
    assert labels.panoptic.shape == (2, *grid)
    # every point owns its own pixel on the mask grid
    for b, p in enumerate(points):
        owners = labels.panoptic[b, p.yx[:, 0], p.yx[:, 1]]
        assert bool((owners >= 0).all())
