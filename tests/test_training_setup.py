"""What a training run reads besides the network: scales, the held-out split, one seed, the
global batch, and scoring at each image's original size (docs/METHOD.md, "Scales, seeds, batch
and held-out numbers")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset, build_transforms, collate_points
from p2m_core.data.panoptic_format import CocoPanoptic
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.data.transforms import ResizeShortestEdge
from p2m_core.engine.evaluate import NetworkEvaluator
from p2m_core.engine.data_check import check_training_data
from p2m_core.engine.loop import OptimisationLoop, batch_to_device, worker_batch_size
from p2m_core.engine.run import WorkerRun
from p2m_core.errors import P2MInputError
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "presets" / "synthetic_tiny.yaml"
TRAIN_TINY = REPO / "experiments" / "train_tiny.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("held_out")
    generate_synthetic(folder, num_train=6, num_val=3, size=64, seed=2, progress=False, num_test=4)
    return folder


def tiny(root: Path, *overrides: str):
    return load_config(TINY, [f"data.root={root}", "data.train.points=", "data.val.points=", "data.test.points=",
                              "train.batch_size=2", *overrides])  # fmt: skip


# --------------------------------------------------------------------------- the held-out split
def test_the_generator_writes_a_held_out_test_split_only_when_asked(root, tmp_path):
    val = CocoPanoptic(root / "panoptic_val.json", image_dir=root / "images/val", png_dir=root / "panoptic_val")
    test = CocoPanoptic(root / "panoptic_test.json", image_dir=root / "images/test", png_dir=root / "panoptic_test")
    assert len(test) == 4 and test.categories.keys() == val.categories.keys()
    val_images = {val.load_image(r).tobytes() for r in val.records}
    assert not any(test.load_image(r).tobytes() in val_images for r in test.records)  # no image in two splits
    paths = generate_synthetic(tmp_path, num_train=1, num_val=1, size=32, seed=0, progress=False)
    assert "test_json" not in paths and not (tmp_path / "panoptic_test.json").exists()


def test_a_missing_test_split_is_refused_naming_its_key(tmp_path):
    generate_synthetic(tmp_path, num_train=2, num_val=1, size=32, seed=0, progress=False)
    cfg = load_config(TRAIN_TINY, [f"data.root={tmp_path}", "train.batch_size=2"])
    assert cfg.train.test_split == "test"
    with pytest.raises(P2MInputError, match=r"data.test.json -> .*panoptic_test.json.*--num-test"):
        check_training_data(cfg)
    check_training_data(load_config(TRAIN_TINY, [f"data.root={tmp_path}", "train.batch_size=2", "train.test_split="]))


def test_the_test_split_is_scored_whole_and_val_by_eval_images(root):
    run = WorkerRun(tiny(root, "train.eval_images=1"), device="cpu")
    assert len(run.scored_set("test")) == 4 and run.scored_set("test").with_gt
    counted = []
    for split in ("val", "test"):
        batches = list(run._batches(split, run.cfg.train.eval_images if split == "val" else 0))
        counted.append(sum(len(b["image_ids"]) for b in batches))
    assert counted == [1, 4]
    assert set(run.evaluate("test")) >= {"PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ"}


# --------------------------------------------------------------------------- scales
def test_scale_keys_say_what_they_bound():
    cfg = load_config(REPO / "experiments" / "coco.yaml")
    chain = build_transforms(cfg.data, "train").transforms
    resize = chain[0]
    assert (resize.min_size, resize.max_size, resize.step, resize.max_long_side) == (480, 800, 32, 1333)
    rng = np.random.default_rng(0)
    image = np.zeros((400, 500, 3), np.uint8)
    shorts = {resize({"image": image, "points_yx": np.zeros((0, 2), np.int64)}, rng)["image"].shape[0] for _ in range(200)}
    assert shorts == set(range(480, 801, 32))  # the release's 11 COCO scales, and no other
    test = build_transforms(cfg.data, "test").transforms[0]
    assert (test.min_size, test.max_size, test.max_long_side) == (800, 800, 1333)
    wide = test({"image": np.zeros((100, 300, 3), np.uint8), "points_yx": np.zeros((0, 2), np.int64)}, rng)["image"]
    assert wide.shape[:2] == (444, 1333)  # the longer side capped, not the shorter side's 800
    voc = load_config(REPO / "experiments" / "voc.yaml").data
    assert (voc.train_short_side, voc.test_short_side, voc.long_side_max, voc.crop_size) == ([600, 600], 600, 1333, [])


def test_a_step_of_one_draws_what_the_plain_range_draws():
    image = {"image": np.zeros((50, 60, 3), np.uint8), "points_yx": np.zeros((0, 2), np.int64)}
    stepped, plain = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        short = ResizeShortestEdge(20, 40)(image, stepped)["image"].shape[0]
        assert short == int(plain.integers(20, 41))


@pytest.mark.parametrize("override, message", [
    ("data.min_size=64", "data.min_size' (value 64) is gone: use data.train_short_side"),
    ("data.max_size=64", "data.long_side_max"),
    ("train.seed=3", "the top-level 'seed' now seeds"),
    ("data.train_short_side=[64, 32]", "data.train_short_side' expects [low, high]"),
    ("data.train_short_step=0", "data.train_short_step' expects an integer >= 1"),
    ("train.workers=3", "train.batch_size' expects a multiple of train.workers (3)"),
])
def test_old_and_bad_keys_are_refused_with_what_to_write(override, message):
    with pytest.raises(P2MInputError, match=__import__("re").escape(message)):
        load_config(TINY, [override])


# --------------------------------------------------------------------------- batch and seed
def test_the_batch_is_global_and_split_over_workers():
    cfg = load_config(REPO / "experiments" / "voc.yaml", ["train.workers=4"])
    assert worker_batch_size(cfg, 4) == 2 and worker_batch_size(cfg, 1) == 8
    with pytest.raises(ValueError, match="must split evenly over 3 workers"):
        worker_batch_size(cfg, 3)


def test_one_seed_sets_the_weights_the_data_order_and_the_augmentation(root):
    def first_batch(seed: int):
        run = WorkerRun(tiny(root, f"seed={seed}"), device="cpu")
        weights = torch.cat([p.detach().flatten() for p in run.model.parameters()])
        return weights, next(run.loop.batches())["image_ids"]

    def augmented_sizes(seed: int):
        dataset = PointPanopticDataset.from_config(tiny(root, f"seed={seed}", "data.train_short_side=[40, 64]"), "train")
        return [tuple(dataset[i]["image"].shape) for i in range(len(dataset))]

    w0, ids0 = first_batch(0)
    w0b, ids0b = first_batch(0)
    assert torch.equal(w0, w0b) and ids0 == ids0b and augmented_sizes(0) == augmented_sizes(0)
    others = [first_batch(seed) for seed in (1, 2, 3)]
    assert all(not torch.equal(w0, w) for w, _ in others)  # initialisation
    assert any(ids != ids0 for _, ids in others)  # data order
    assert augmented_sizes(1) != augmented_sizes(0)  # augmentation


# --------------------------------------------------------------------------- scoring at the original size
def test_predictions_are_scored_at_each_images_original_size(root):
    cfg = tiny(root, "data.test_short_side=32")  # the 64-px images are fed at 32 px
    dataset = PointPanopticDataset.from_config(cfg, "val")
    item = dataset[0]
    assert item["image"].shape[-2:] == (32, 32) and item["orig_segment_ids"].shape == (64, 64)
    assert torch.equal(item["orig_segment_ids"], torch.from_numpy(dataset.panoptic.load_segment_ids(dataset.panoptic[0])))
    torch.manual_seed(0)
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    evaluator = NetworkEvaluator(dataset.panoptic, cfg)
    batch = batch_to_device(collate_points([dataset[i] for i in range(len(dataset))]), torch.device("cpu"))
    evaluator.process(model, batch)
    # every pixel of the original images went into mIoU (64 x 64 each), none of the resized ones
    assert int(evaluator.network.semantic.confusion.sum()) == len(dataset) * 64 * 64
    same = tiny(root, "data.test_short_side=64")  # the test scale is the image's own size: nothing is resized
    assert PointPanopticDataset.from_config(same, "val")[0]["image"].shape[-2:] == (64, 64)


def test_augmented_training_items_keep_their_own_frame(root):
    cfg = tiny(root, "data.flip_prob=1.0")
    item = PointPanopticDataset.from_config(cfg, "train", with_gt=True)[0]
    assert torch.equal(item["orig_segment_ids"], item["segment_ids"])  # a flip has no way back: scored where it is


def test_loop_loader_takes_the_workers_share(root):
    cfg = tiny(root, "train.batch_size=4")
    dataset = PointPanopticDataset.from_config(cfg, "train")
    model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic))
    loop = OptimisationLoop(cfg, model, dataset)
    assert loop.batch_size == 4 and len(next(loop.batches())["image_ids"]) == 4


# --------------------------------------------------------------------------- one loop
def test_the_run_calls_its_hooks_on_the_schedule(root):
    """The loop the Ray worker and the learning-curve benchmark share: a step hook every iteration,
    evaluations every train.eval_every and at the end (unless the caller has them), checkpoints
    at each evaluation and every train.checkpoint_every."""
    from p2m_core.engine.run import RunHooks

    calls: list[tuple] = []

    class Recorder(RunHooks):
        def step(self, iteration, result):
            calls.append(("step", iteration))

        def wants_evaluation(self, iteration):
            return iteration != 2  # say the store already has iteration 2's

        def evaluation(self, iteration, metrics):
            calls.append(("eval", iteration, round(metrics["PQ"], 6) >= 0))

        def checkpoint(self, iteration, metrics):
            calls.append(("ckpt", iteration, bool(metrics)))

    run = WorkerRun(tiny(root, "train.iters=5", "train.eval_every=2", "train.checkpoint_every=3", "train.eval_images=1"),
                      device="cpu")  # fmt: skip
    run.train(Recorder())
    assert calls == [
        ("step", 1), ("step", 2), ("ckpt", 2, False), ("step", 3), ("ckpt", 3, False), ("step", 4), ("eval", 4, True),
        ("ckpt", 4, True), ("step", 5), ("eval", 5, True), ("ckpt", 5, True),
    ]
    assert run.iteration == 5
