"""Benchmark: p2m's ``pq_compute`` against ``panopticapi.evaluation.pq_compute``.

Generates (or reuses) a synthetic COCO-panoptic validation set, writes perturbed predictions
(perfect, boundary-eroded, shifted, block noise, recategorised, merged, cycling over images),
times both implementations in the same run (alternating, best of ``--repeats``), checks that
the results agree to 1e-9 and prints a Markdown table. Two clocks: the wall clock of each
``pq_compute`` as a user calls it (panopticapi with its process pool, p2m with its threads), and
the CPU seconds of the same work run in this process (panopticapi's per-image function without
its pool; p2m's ``pq_compute``), which other load on a shared machine disturbs much less.

    .venv/bin/python benchmarks/pq_compute.py --num-images 200 --size 512

``--data-dir DIR`` keeps the generated data in DIR and reuses it on the next run (the default
is a temporary folder, deleted at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from p2m_core.data.panoptic_format import id2rgb
from p2m_core.evaluation import PanopticPredictionWriter, pq_compute
from p2m_core.io import atomic_write_json, atomic_write_png

FALLBACK_CATEGORIES = [
    {"id": 1, "name": "thing_a", "isthing": 1},
    {"id": 2, "name": "thing_b", "isthing": 1},
    {"id": 3, "name": "stuff_a", "isthing": 0},
    {"id": 4, "name": "stuff_b", "isthing": 0},
]


def _fallback_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """Two stuff halves and 3-7 thing rectangles (used only without p2m_core.data.synthetic)."""
    labels = np.zeros((size, size), np.int64)
    cats = [3, 4]
    labels[: size // 2] = 1
    labels[size // 2 :] = 2
    for _ in range(int(rng.integers(3, 8))):
        y, x = rng.integers(0, size - size // 4, size=2)
        h, w = rng.integers(size // 10, size // 4, size=2)
        labels[y : y + h, x : x + w] = len(cats) + 1
        cats.append(int(rng.integers(1, 3)))
    seg_ids = rng.choice(np.arange(1, 256**3), size=len(cats), replace=False)
    ids = np.concatenate([[0], seg_ids])[labels]
    present, counts = np.unique(ids, return_counts=True)
    area = dict(zip(present.tolist(), counts.tolist()))
    segments = [
        {"id": int(s), "category_id": c, "iscrowd": 0, "area": area[int(s)]}
        for s, c in zip(seg_ids, cats)
        if int(s) in area
    ]
    return ids, segments


def make_ground_truth(root: Path, num_images: int, size: int, seed: int) -> Path:
    """``root/panoptic_val.json`` with ``num_images`` images, reused when it already matches."""
    gt_json = root / "panoptic_val.json"
    if gt_json.is_file():
        info = json.loads(gt_json.read_text()).get("info", {})
        if (info.get("num_images"), info.get("size"), info.get("seed")) == (num_images, size, seed):
            print(f"reusing {gt_json}", file=sys.stderr)
            return gt_json
    start = time.perf_counter()
    if importlib.util.find_spec("p2m_core.data.synthetic") is not None:
        from p2m_core.data.synthetic import generate_synthetic

        generate_synthetic(root, num_train=0, num_val=num_images, size=size, seed=seed, progress=True)
        data = json.loads(gt_json.read_text())
    else:
        rng = np.random.default_rng(seed)
        annotations = []
        for index in range(num_images):
            ids, segments = _fallback_image(rng, size)
            name = f"{index + 1:06d}.png"
            atomic_write_png(root / "panoptic_val" / name, id2rgb(ids))
            annotations.append({"image_id": index + 1, "file_name": name, "segments_info": segments})
        data = {"images": [], "annotations": annotations, "categories": FALLBACK_CATEGORIES}
    data["info"] = dict(data.get("info", {}), num_images=num_images, size=size, seed=seed)
    atomic_write_json(gt_json, data)
    print(f"generated {num_images} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return gt_json


def perturb(ids: np.ndarray, segments: list[dict], kind: int, rng: np.random.Generator, cat_ids: list[int]):
    """One of six prediction styles; returns (ids, [{'id', 'category_id'}])."""
    out = ids.copy()
    segs = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
    if kind == 1:  # boundary erosion: pixels near a label change become void
        edge = np.zeros(ids.shape, bool)
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        import cv2

        out[cv2.dilate(edge.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] = 0
    elif kind == 2:  # shift
        out = np.roll(ids, (5, -7), axis=(0, 1))
    elif kind == 3:  # 16x16 block noise
        h, w = ids.shape
        choices = np.array([0] + [s["id"] for s in segs])
        for by in range(0, h, 16):
            for bx in range(0, w, 16):
                if rng.random() < 0.2:
                    out[by : by + 16, bx : bx + 16] = rng.choice(choices)
    elif kind == 4:  # recategorise one segment
        k = int(rng.integers(len(segs)))
        segs[k]["category_id"] = int(rng.choice(cat_ids))
    elif kind == 5 and len(segs) >= 2:  # merge two segments (same class when possible)
        by_cat: dict[int, list[dict]] = {}
        for s in segs:
            by_cat.setdefault(s["category_id"], []).append(s)
        pair = next((v for v in by_cat.values() if len(v) >= 2), segs[-2:])
        out[out == pair[1]["id"]] = pair[0]["id"]
    present = set(np.unique(out).tolist())
    return out, [s for s in segs if s["id"] in present]


def make_predictions(gt_json: Path, seed: int) -> Path:
    from p2m_core.evaluation import read_panoptic_png

    data = json.loads(gt_json.read_text())
    cat_ids = [c["id"] for c in data["categories"]]
    rng = np.random.default_rng(seed + 1)
    pred_json = gt_json.parent / "pred_val.json"
    with PanopticPredictionWriter(pred_json, gt_json.parent / "pred_val", data["categories"]) as writer:
        for index, ann in enumerate(data["annotations"]):
            ids = read_panoptic_png(gt_json.parent / "panoptic_val" / ann["file_name"]).astype(np.int64)
            pred_ids, segs = perturb(ids, ann["segments_info"], index % 6, rng, cat_ids)
            writer.add(ann["image_id"], ann["file_name"], pred_ids, segs)
    return pred_json


def panopticapi_in_process(gt_json: Path, pred_json: Path) -> None:
    """panopticapi's per-image work and averages, in this process (its pool left out), so that
    its CPU time can be read with ``time.process_time``."""
    from panopticapi.evaluation import pq_compute_single_core

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_image[a["image_id"]]) for a in gt["annotations"]]
    stat = pq_compute_single_core(0, pairs, str(gt_json.with_suffix("")), str(pred_json.with_suffix("")), categories)
    for isthing in (None, True, False):
        stat.pq_average(categories, isthing=isthing)


def max_difference(a: dict, b: dict) -> float:
    diffs = []
    for group in ("All", "Things", "Stuff"):
        if a[group]["n"] != b[group]["n"]:
            return float("inf")
        diffs += [abs(a[group][k] - b[group][k]) for k in ("pq", "sq", "rq")]
    if list(a["per_class"]) != list(b["per_class"]):
        return float("inf")
    for cid, row in b["per_class"].items():
        diffs += [abs(a["per_class"][cid][k] - row[k]) for k in ("pq", "sq", "rq")]
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="keep and reuse the data here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from panopticapi.evaluation import pq_compute as panopticapi_pq_compute

    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="p2m_pq_bench_"))
    try:
        gt_json = make_ground_truth(root, args.num_images, args.size, args.seed)
        pred_json = make_predictions(gt_json, args.seed)
        times: dict[str, list[float]] = {"p2m": [], "panopticapi": []}
        cpu: dict[str, list[float]] = {"p2m": [], "panopticapi": []}
        results: dict[str, Any] = {}
        runners = {
            "p2m": lambda: pq_compute(gt_json, pred_json),
            "panopticapi": lambda: panopticapi_pq_compute(str(gt_json), str(pred_json)),
        }
        cpu_runners = {"p2m": runners["p2m"], "panopticapi": lambda: panopticapi_in_process(gt_json, pred_json)}
        for repeat in range(args.repeats):
            for name in ("panopticapi", "p2m") if repeat % 2 else ("p2m", "panopticapi"):
                with contextlib.redirect_stdout(io.StringIO()):  # panopticapi's per-core chatter
                    start = time.perf_counter()
                    results[name] = runners[name]()
                    times[name].append(time.perf_counter() - start)
                    start_cpu = time.process_time()
                    cpu_runners[name]()
                    cpu[name].append(time.process_time() - start_cpu)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {name}: {times[name][-1]:.3f} s wall, {cpu[name][-1]:.3f} s CPU",
                    file=sys.stderr,
                )
        difference = max_difference(results["p2m"], results["panopticapi"])
        theirs, ours = min(times["panopticapi"]), min(times["p2m"])
        theirs_cpu, ours_cpu = min(cpu["panopticapi"]), min(cpu["p2m"])
        n = args.num_images
        print(f"Command: `.venv/bin/python benchmarks/pq_compute.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip())
        print(
            f"\n{n} synthetic images of {args.size}x{args.size}, predictions perturbed 6 ways; "
            f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"best of {args.repeats}.\n"
        )
        print("| implementation | wall (s) | wall ms / image | speed-up (wall) | CPU (s, one process) | speed-up (CPU) |")
        print("|---|---:|---:|---:|---:|---:|")
        print(
            f"| panopticapi `pq_compute` ({os.cpu_count()}-process pool) | {theirs:.3f} | {1000 * theirs / n:.2f} | 1.00x "
            f"| {theirs_cpu:.3f} | 1.00x |"
        )
        print(
            f"| p2m `pq_compute` (threads, vectorised) | {ours:.3f} | {1000 * ours / n:.2f} | {theirs / ours:.2f}x "
            f"| {ours_cpu:.3f} | {theirs_cpu / ours_cpu:.2f}x |"
        )
        print(
            f"\nPQ (All) = {100 * results['p2m']['All']['pq']:.2f}; largest difference from panopticapi "
            f"over All/Things/Stuff and per class: {difference:.1e}"
        )
        if not difference <= 1e-9:
            print("error: results differ from panopticapi", file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
