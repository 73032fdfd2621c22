"""Benchmark of one training step: its wall time and the share spent making pseudo labels.

One process, no Ray (:func:`p2m_core.engine.step.train_step`): forward, pseudo labels from the
network's own maps (no gradient), every loss term, backward, AdamW. Settings:

- ``tiny`` (default, CPU): the tiny network's training config, ``experiments/train_tiny.yaml``
  (``--config``), on a batch of ``train.batch_size`` synthetic images of ``data.synthetic.size``
  pixels (``--batch``, ``--size``), with its pseudo-label strides;
- ``r50`` (``--model r50``, meant for a GPU): the paper's network (ResNet-50, 6-layer encoder,
  300 queries) on a batch of 2 images of 512x512, masks at stride 4, graph at 1/16, in fp32
  and, with ``--amp``, under ``torch.autocast`` in ``--amp-dtype`` (default bfloat16, what the
  training loop's ``train.amp`` uses on CUDA, :func:`p2m_core.engine.step.autocast`; float16
  runs without a loss scaler, so it times the step but is not how the loop trains).

Times are the median of ``--steps`` steps after ``--warmup`` steps, synchronised on CUDA. The
batch carries its low-level edge maps, as the training loop's batches do (the dataset computes
them once per image, :class:`~p2m_core.data.dataset.EdgeCache`).

    .venv/bin/python benchmarks/train_step.py [--model tiny|r50] [--config YAML] [--device cpu|cuda] [--steps 10]
                                              [--amp [--amp-dtype bfloat16|float16]] [--set k=v]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from p2m_core.config import load_config
from p2m_core.data.dataset import PointPanopticDataset, collate_points
from p2m_core.data.synthetic import generate_synthetic
from p2m_core.engine.loop import batch_to_device
from p2m_core.engine.step import build_optimizer, train_step
from p2m_core.model.point2mask import ClassInfo, build_model

REPO = Path(__file__).resolve().parents[1]
R50 = ["model.backbone=resnet50", "model.width=64", "model.hidden_dim=256", "model.num_heads=8", "model.num_points=4",
       "model.ffn_dim=1024", "model.encoder_layers=6", "model.num_queries=300", "model.num_decoder_layers=6",
       "model.semantic_layers=6", "model.thing_layers=4", "model.stuff_layers=6", "model.projector_dim=128",
       "pseudo.mask_stride=4", "pseudo.graph_stride=16", "pseudo.point_dilation=17"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "r50"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (tiny: 128, r50: 512)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (tiny: 4, r50: 2)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16",
                        help="autocast dtype with --amp (%(default)s: the training loop's)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--config", default=str(REPO / "experiments" / "train_tiny.yaml"),
                        help="the config whose network, losses and pseudo labels are timed (%(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(args.config, args.overrides)
    size = args.size or (base.data.synthetic.size if args.model == "tiny" else 512)
    batch_size = args.batch or (base.train.batch_size if args.model == "tiny" else 2)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic(tmp, num_train=batch_size, num_val=0, size=size, seed=0, progress=False)
        overrides = [f"data.root={tmp}", "data.train.points=", f"data.train_short_side=[{size}, {size}]"]
        cfg = load_config(args.config, args.overrides + overrides + (R50 if args.model == "r50" else []))
        dataset = PointPanopticDataset.from_config(cfg, "train")
        batch = batch_to_device(collate_points([dataset[i] for i in range(batch_size)]), device)
        torch.manual_seed(0)
        model = build_model(cfg.model, ClassInfo.from_dataset(dataset.panoptic)).to(device)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = getattr(torch, args.amp_dtype)
    steps, pseudo = [], []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            result = train_step(model, batch, optimizer, cfg, i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            steps.append(result.step_seconds)
            pseudo.append(result.pseudo_seconds)
    step, share = statistics.median(steps), statistics.median(p / s for p, s in zip(pseudo, steps))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    memory = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(f"train step: model {args.model} ({params:.2f} M parameters), batch {batch_size} x {size}^2, "
          f"masks at stride {cfg.pseudo.mask_stride}, graph at 1/{cfg.pseudo.graph_stride}, "
          f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
          f"{'AMP ' + args.amp_dtype if args.amp else 'fp32'}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"median step {step:.3f} s ({1000 * step / batch_size:.1f} ms per image), pseudo labels {100 * share:.1f} % "
          f"of the step ({1000 * statistics.median(pseudo):.1f} ms){memory}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
