"""The pseudo-label step on CPU and on CUDA: per-image time on each, and whether the labels agree.

Training moves the pseudo-label step to the GPU, while every number this repository reports on
its labels (their agreement with the reference, the ablations) was measured on the CPU; this
check says whether the GPU labels are the CPU's, and what the GPU buys per image. It builds one
batch of the pseudo-label benchmark (``benchmarks/pseudo_labels.py``: oracle-like maps of random
scenes, 15 thing + 5 stuff points per image, graph at 1/16, ``nearest_centroid`` capacities,
the reference Sinkhorn) at an input of ``--input`` pixels and masks at ``--mask-stride`` (4: the
benchmark's setting, masks 128² for 512² input; 1: masks at the input resolution, the release's),
runs :func:`p2m_core.pseudo.generate_pseudo_labels` on it on the CPU and, when CUDA is there, on
the GPU, and compares the two panoptic label maps pixel by pixel.

Why a share of equal pixels and not exact equality: the GPU sums and reduces float32 in another
order than the CPU, so a pixel whose two best suppliers are within rounding of each other in the
transport plan may go to the other one. Such ties are rare on these maps; the check passes when
at least ``--min-equal`` of the pixels agree (default 99.99 %, the goal this repository already
sets for two implementations of the same solver on the CPU) and always prints how many pixels
and capacities differ, so that exact equality, when it holds, is visible too.

The last lines, ``RESULT<TAB>device<TAB>status<TAB>numbers``, are for ``benchmarks/gpu_check.sh``.
Exit status: 0 when the CPU ran and the GPU was skipped or agreed, 1 when the labels disagree.

    .venv/bin/python benchmarks/gpu_labels_match.py [--mask-stride 4|1] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys

import torch

from pseudo_labels import benchmark_config, best_of, make_batch  # run as a script, benchmarks/ is on sys.path

from p2m_core.pseudo.labels import generate_pseudo_labels
from p2m_core.pseudo.maps import TaskMaps


def result_line(device: str, status: str, numbers: str) -> str:
    """One machine-readable line for the shell script's summary (tabs separate the fields)."""
    return "\t".join(("RESULT", device, status, numbers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=int, default=512, help="input side in pixels (%(default)s)")
    parser.add_argument("--mask-stride", type=int, default=4, choices=(1, 2, 4),
                        help="masks at input / stride (4: the benchmark's setting; 1: the input resolution)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per device after one warm-up; the best counts")
    parser.add_argument("--min-equal", type=float, default=0.9999, help="share of pixels that must agree (%(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.input % (4 * 16):
        parser.error(f"--input must be a multiple of 64 (graph at 1/16 of masks at up to 1/4), got {args.input}")
    if args.threads:
        torch.set_num_threads(args.threads)
    mask = args.input // args.mask_stride
    cfg = benchmark_config(args.mask_stride)
    maps, points = make_batch(args.batch, mask, 15, 5, args.seed)
    print(f"pseudo labels: batch {args.batch}, input {args.input}^2, masks {mask}^2 (stride {args.mask_stride}), "
          f"graph 1/{cfg.graph_stride}, reference Sinkhorn ({cfg.sinkhorn_iters} iterations), "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    cpu_seconds, cpu = best_of(lambda: generate_pseudo_labels(maps, points, cfg), args.repeats)
    cpu_ms = 1000 * cpu_seconds / args.batch
    print(f"cpu: {cpu_ms:.1f} ms per image (best of {args.repeats})")
    lines = [result_line("cpu", "ok", f"{cpu_ms:.1f} ms/image")]
    failed = False
    if not torch.cuda.is_available():
        print("cuda: skipped (no CUDA device)")
        lines.append(result_line("cuda", "skipped: no CUDA", ""))
    else:
        dev_maps = TaskMaps(*(m.cuda() for m in (maps.semantic, maps.boundary_high, maps.boundary_low)))
        dev_points = [p.to("cuda") for p in points]
        gpu_seconds, gpu = best_of(lambda: generate_pseudo_labels(dev_maps, dev_points, cfg), args.repeats, cuda=True)
        gpu_ms = 1000 * gpu_seconds / args.batch
        differ = int((gpu.panoptic.cpu() != cpu.panoptic).sum())
        equal = 1.0 - differ / cpu.panoptic.numel()
        k_differ = int((gpu.k.cpu() != cpu.k).sum())
        failed = equal < args.min_equal
        numbers = (f"{gpu_ms:.2f} ms/image ({cpu_ms / gpu_ms:.0f}x the CPU), labels equal to the CPU's on "
                   f"{100 * equal:.4f} % of pixels ({differ} of {cpu.panoptic.numel()} differ), "
                   f"capacities k differ for {k_differ} of {int((cpu.thing_index >= 0).sum())} points")  # fmt: skip
        print(f"cuda ({torch.cuda.get_device_name()}): {numbers}")
        status = f"failed: < {100 * args.min_equal:g} % equal" if failed else "ok"
        lines.append(result_line("cuda", status, numbers))
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
