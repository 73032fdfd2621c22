"""The training loop resumes exactly: a run stopped after 3 iterations and restored from its state
ends with the same weights as one that never stopped; the schedule steps at the configured epochs
and the data order covers each epoch once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.loop import OptimisationLoop
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=4, num_val=0, size=64, seed=5, progress=False)
    cfg = load_config(REPO / "experiments" / "presets" / "synthetic_tiny.yaml",
                      [f"data.root={root}", "data.train.points=", "train.batch_size=2", "train.lr_steps=[2]"])  # fmt: skip
    return cfg, PointPanopticDataset.from_config(cfg, "train")


def fresh_loop(cfg, dataset) -> OptimisationLoop:
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    return OptimisationLoop(cfg, model, dataset)


def test_resumed_run_equals_the_uninterrupted_one(data) -> None:
    cfg, dataset = data
    straight = fresh_loop(cfg, dataset)
    seen = []
    straight.run(5, on_step=lambda i, r: seen.append(i))
    assert seen == [1, 2, 3, 4, 5] and straight.iteration == 5

    first = fresh_loop(cfg, dataset)
    first.run(3)
    state = copy.deepcopy(first.state_dict())
    resumed = fresh_loop(cfg, dataset)  # a fresh process would build everything anew
    resumed.load_state_dict(state)
    resumed.run(5)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_schedule_decays_at_the_configured_epoch(data) -> None:
    cfg, dataset = data
    run = fresh_loop(cfg, dataset)
    assert run.iters_per_epoch == 2
    lrs = []
    run.run(6, on_step=lambda i, r: lrs.append(run.optimizer.param_groups[-1]["lr"]))
    base = cfg.train.lr
    assert lrs[:3] == pytest.approx([base, base, base]) and lrs[3:] == pytest.approx([base / 10] * 3)


def test_each_epoch_sees_every_image_once(data) -> None:
    cfg, dataset = data
    run = fresh_loop(cfg, dataset)
    ids = []
    for batch in run.batches():
        ids.extend(batch["image_ids"])
        run.iteration += 1
        if run.iteration == 4:
            break
    assert sorted(ids[:4]) == sorted(ids[4:]) and len(set(ids[:4])) == 4
