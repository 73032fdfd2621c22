"""Which of a trained network's maps limits its pseudo masks? Swap each for the ground truth's.

Loads a network trained on a config (a state dict written by ``benchmarks/learning_curve.py
--save``), makes the pseudo masks of the first ``--images`` images of ``--split`` from its own
maps as training does, then again with some maps replaced by ground-truth ones, and scores all
of them against the ground truth (:class:`~p2m_core.evaluation.PanopticScores`, PQ in percent):

- ``network``: the network's ``P^s``, ``P^b_high``, projector embedding, and the image's edges;
- ``oracle P^s``: the one-hot ground-truth semantic map (averaged onto the mask grid) instead;
- ``no boundaries``: the network's ``P^s`` alone (boundary maps zero, no embedding);
- ``oracle P^s, no boundaries``;
- ``oracle P^s and P^b_high``: ground-truth segment borders as the high-level boundary.

The gaps say where pseudo things are lost: a map the network has not learned, or the pseudo-label
pipeline's own resolution (``pseudo.graph_stride``, ``pseudo.mask_stride``) even with perfect maps.

    .venv/bin/python benchmarks/map_oracles.py experiments/train_tiny.yaml model.pt --data-root DATA \\
        [--split val] [--images 48] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from p2m_core.config import load_config  # noqa: E402
from p2m_core.data.dataset import collate_points  # noqa: E402
from p2m_core.engine.loop import batch_to_device  # noqa: E402
from p2m_core.engine.run import WorkerRun  # noqa: E402
from p2m_core.evaluation import PanopticScores, owner_prediction  # noqa: E402
from p2m_core.model.task_maps import low_level_edges, mask_grid, points_at_mask, task_maps  # noqa: E402
from p2m_core.pseudo.labels import generate_pseudo_labels  # noqa: E402
from p2m_core.pseudo.maps import TaskMaps  # noqa: E402

VARIANTS = ("network", "oracle P^s", "no boundaries", "oracle P^s, no boundaries", "oracle P^s and P^b_high")


def oracle_maps(batch: dict, num_classes: int, stride: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth ``P^s`` (one-hot, averaged over each mask cell) and ``P^b_high`` (segment
    borders, max over each cell), ``[B, C, H, W]`` and ``[B, H, W]`` on the mask grid."""
    seg = batch["segment_ids"]
    onehot = torch.zeros(seg.shape[0], num_classes, *seg.shape[1:])
    for b, segments in enumerate(batch["segments"]):
        for s in segments:
            onehot[b, s["label"]][seg[b] == s["id"]] = 1.0
    border = torch.zeros(seg.shape, dtype=torch.bool)
    border[:, :, 1:] |= seg[:, :, 1:] != seg[:, :, :-1]
    border[:, 1:, :] |= seg[:, 1:, :] != seg[:, :-1, :]
    H, W = size
    semantic = F.avg_pool2d(onehot, stride, ceil_mode=True)[:, :, :H, :W]
    boundary = F.max_pool2d(border[:, None].float(), stride, ceil_mode=True)[:, 0, :H, :W]
    return semantic, boundary


def variants(maps: TaskMaps, semantic: torch.Tensor, boundary: torch.Tensor) -> dict[str, TaskMaps]:
    def zero(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.zeros_like(x)

    bare = {"boundary_high": zero(maps.boundary_high), "boundary_low": zero(maps.boundary_low), "embedding": None}
    return {
        "network": maps,
        "oracle P^s": dataclasses.replace(maps, semantic=semantic),
        "no boundaries": dataclasses.replace(maps, **bare),
        "oracle P^s, no boundaries": dataclasses.replace(maps, semantic=semantic, **bare),
        "oracle P^s and P^b_high": dataclasses.replace(maps, semantic=semantic, boundary_high=boundary),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("state_dict", help="the network's state dict (learning_curve.py --save)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config, [f"data.root={args.data_root}", *args.overrides])
    run = WorkerRun(cfg, device="cpu")
    run.model.load_state_dict(torch.load(args.state_dict, weights_only=True))
    model = run.model.eval()
    dataset = run.scored_set(args.split)
    contiguous = dataset.panoptic.contiguous_ids()
    category_of = {index: cid for cid, index in contiguous.items()}
    scores = {name: PanopticScores(dataset.panoptic.categories, contiguous) for name in VARIANTS}
    pc = cfg.pseudo
    count = min(args.images, len(dataset))
    for start in range(0, count, args.batch):
        items = [dataset[i] for i in range(start, min(start + args.batch, count))]
        batch = batch_to_device(collate_points(items, cfg.data.size_divisor), torch.device("cpu"))
        with torch.no_grad():
            out = model(batch["images"], batch["padding_mask"])
        grid = mask_grid(batch["images"].shape, pc.mask_stride)
        points = points_at_mask(batch["points_yx"], batch["point_labels"], batch["point_is_thing"], pc.mask_stride, grid)
        low = low_level_edges(batch) if "boundary_low" in pc.maps else None
        maps = task_maps(out, points, grid, pc, boundary_low=low)
        semantic, boundary = oracle_maps(batch, maps.semantic.shape[1], pc.mask_stride, tuple(maps.semantic.shape[-2:]))
        for name, swapped in variants(maps, semantic, boundary).items():
            owners = generate_pseudo_labels(swapped, points, pc, check_values=False).panoptic.numpy()
            for b, size in enumerate(batch["image_sizes"]):
                gt = batch["orig_segment_ids"][b].numpy()
                classes = batch["point_labels"][b].numpy()
                pred = owner_prediction(owners[b], pc.mask_stride, size, [category_of[int(c)] for c in classes], classes, gt.shape)
                scores[name].process(batch["image_ids"][b], gt, batch["orig_segments"][b], *pred[:3])
    print(f"pseudo masks of {count} {args.split} images, graph 1/{pc.graph_stride}, masks 1/{pc.mask_stride}")
    print("| maps | PQ | PQ_th | PQ_st | mIoU |\n|---|---:|---:|---:|---:|")
    for name, score in scores.items():
        e = score.evaluate()
        print(f"| {name} | {e['PQ']:.1f} | {e['PQ_th']:.1f} | {e['PQ_st']:.1f} | {e['mIoU']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
