"""Learning curve of a training config in one process: PQ against iterations and seconds.

Trains ``CONFIG`` with :class:`~p2m_core.engine.run.WorkerRun` (one worker, no Ray, no
MLflow: the run a Ray Train worker executes) and evaluates the network on ``--split`` (default:
``train.test_split`` when the config has one, else val) every ``--eval-every`` iterations and at
the end with :meth:`WorkerRun.evaluate` (the worker's evaluation). It stops after
``train.iters`` iterations (``--iters``) or when the run's wall time (training and
evaluations) would pass ``--minutes``, whichever comes first: the next evaluation is skipped
when it would not fit, and the last one always runs.

The synthetic dataset of ``data.synthetic`` is read from ``--data-root`` (default: a folder per
dataset setting in the system's temporary directory), generated there when missing, with the
point files of ``data.point_seed`` (what ``python -m p2m_core.data.points`` writes). Settings are
chosen on val; the numbers in docs/BENCHMARKS.md are on the held-out test split.

Printed table (stdout; progress lines on stderr), one row per evaluation: ``iter``, ``train
s`` (seconds of training so far, evaluations excluded), ``wall s`` (since the start of
training, evaluations included), ``loss`` (mean total loss since the previous row), ``PQ``,
``PQ_th``, ``PQ_st``, ``mIoU``, ``pseudo_PQ`` and ``pseudo_PQ_th`` (the pseudo masks the
network's maps give with the split's points, against the ground truth), ``pseudo %`` (the share of the step time spent making
pseudo labels since the previous row), ``s/iter``.

    .venv/bin/python benchmarks/learning_curve.py experiments/train_tiny.yaml --minutes 12 \\
        --eval-every 100 [--iters N] [--split val|test] [--threads 2] [--set key=value ...] [--csv F] [--markdown F]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from p2m_core.config import Config, load_config  # noqa: E402
from p2m_core.data.panoptic_format import CocoPanoptic  # noqa: E402
from p2m_core.data.points import sample_points, write_points  # noqa: E402
from p2m_core.data.splits import split_paths  # noqa: E402
from p2m_core.data.synthetic import generate_synthetic  # noqa: E402
from p2m_core.engine.run import RunHooks, WorkerRun  # noqa: E402
from p2m_core.engine.step import StepResult  # noqa: E402

COLUMNS = ("iter", "train s", "wall s", "loss", "PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ", "pseudo_PQ_th", "pseudo %",
           "s/iter")


class _OutOfTime(Exception):
    """Raised from the step callback to end :meth:`OptimisationLoop.run` at the time limit."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_data(cfg: Config, data_root: str | None) -> Config:
    """``cfg`` with ``data.root`` holding its dataset: the synthetic one is generated from
    ``data.synthetic`` when its files are missing (under ``data_root`` or a cache folder)."""
    if cfg.data.dataset != "synthetic":
        return cfg
    syn = cfg.data.synthetic
    if data_root is None:
        key = f"synthetic-{syn.num_train}-{syn.num_val}-{syn.num_test}-{syn.size}-{syn.seed}"
        data_root = str(Path(tempfile.gettempdir()) / "p2m-learning-curve" / key)
    root = Path(data_root)
    cfg.data.root = str(root)
    splits = ("train", "val", "test") if syn.num_test else ("train", "val")
    if not all(split_paths(cfg.data, split).panoptic_json.is_file() for split in splits):
        log(f"generating the synthetic dataset ({syn.num_train} train, {syn.num_val} val, {syn.num_test} test, "
            f"{syn.size} px) under {root}")  # fmt: skip
        generate_synthetic(root, syn.num_train, syn.num_val, syn.size, syn.seed, progress=False, num_test=syn.num_test)
    for split in splits:
        paths = split_paths(cfg.data, split)
        if paths.points is not None and not paths.points.is_file():  # what `python -m p2m_core.data.points` writes
            panoptic = CocoPanoptic(paths.panoptic_json, image_dir=paths.images_dir, png_dir=paths.panoptic_dir)
            write_points(sample_points(panoptic, seed=cfg.data.point_seed), paths.points)
    return cfg


def format_row(row: dict[str, Any]) -> list[str]:
    out = [str(row["iter"]), f"{row['train s']:.0f}", f"{row['wall s']:.0f}", f"{row['loss']:.3f}"]
    out += [f"{row[k]:.1f}" for k in ("PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ", "pseudo_PQ_th", "pseudo %")]
    return out + [f"{row['s/iter']:.3f}"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class CurveHooks(RunHooks):
    """The benchmark's side of :meth:`WorkerRun.train`: times the steps (evaluations apart),
    adds a row per evaluation, skips an intermediate evaluation when the final one would no
    longer fit in the time budget, and stops the run (:class:`_OutOfTime`) when the next step
    and the final evaluation would not."""

    def __init__(self, run: WorkerRun, minutes: float, verbose: bool) -> None:
        self.run, self.verbose = run, verbose
        self.budget = 60.0 * minutes
        self.start = self.last_step_end = time.perf_counter()
        self.train_seconds = 0.0
        self.eval_seconds: list[float] = []
        self.eval_started = 0.0
        self.window: dict[str, list[float]] = {"loss": [], "step": [], "pseudo": []}
        self.rows: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def step(self, iteration: int, result: StepResult) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self.last_step_end  # data loading included
        self.last_step_end = now
        loss = float(result.total)  # a read-back per step: the benchmark runs on the CPU, where it costs nothing
        for key, value in (("loss", loss), ("step", result.step_seconds), ("pseudo", result.pseudo_seconds)):
            self.window[key].append(value)
        if self.verbose and iteration % max(self.run.cfg.train.log_every, 1) == 0:
            log(f"iter {iteration}: loss {loss:.3f}, step {result.step_seconds:.3f} s, "
                f"pseudo {100 * result.pseudo_share:.0f} %, lr {result.lr:.2g}, {now - self.start:.0f} s")  # fmt: skip
        if iteration < self.run.max_iters and self.left() < self.train_seconds / iteration + max(self.eval_seconds, default=0.0):
            raise _OutOfTime

    def wants_evaluation(self, iteration: int) -> bool:
        cost = max(self.eval_seconds, default=0.0)
        # an intermediate evaluation only when the final one still fits after it
        wanted = iteration >= self.run.max_iters or self.left() - cost >= cost + self.train_seconds / iteration
        self.eval_started = time.perf_counter()
        return wanted

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        self.eval_seconds.append(time.perf_counter() - self.eval_started)
        steps = sum(self.window["step"])
        row = {
            "iter": iteration, "train s": self.train_seconds, "wall s": time.perf_counter() - self.start,
            "loss": statistics.fmean(self.window["loss"]) if self.window["loss"] else float("nan"),
            **{k: metrics[k] for k in ("PQ", "PQ_th", "PQ_st", "mIoU", "pseudo_PQ", "pseudo_PQ_th")},
            "pseudo %": 100.0 * sum(self.window["pseudo"]) / steps if steps else 0.0,
            "s/iter": steps / len(self.window["step"]) if self.window["step"] else 0.0,
        }
        self.rows.append(row)
        for values in self.window.values():
            values.clear()
        if self.verbose:
            log("  ".join(f"{k} {v}" for k, v in zip(COLUMNS, format_row(row))) + f"  (eval {self.eval_seconds[-1]:.1f} s)")
        self.last_step_end = time.perf_counter()


def learning_curve(
    cfg: Config, minutes: float, eval_every: int, iters: int, split: str = "val", verbose: bool = True
) -> tuple[list[dict[str, Any]], WorkerRun]:
    """Train ``cfg`` for ``iters`` iterations or ``minutes`` and evaluate on ``split`` along the
    way (module docstring): :meth:`WorkerRun.train`, the loop a Ray Train worker runs, with
    :class:`CurveHooks`. Returns the rows of the table and the run (its network trained)."""
    cfg.train.iters, cfg.train.eval_every = iters, eval_every
    run = WorkerRun(cfg, device="cpu")
    hooks = CurveHooks(run, minutes, verbose)
    try:
        run.train(hooks, eval_split=split)
    except _OutOfTime:
        if verbose:
            log(f"time limit: stopping at iteration {run.iteration}")
    if not hooks.rows or hooks.rows[-1]["iter"] != run.iteration:
        hooks.wants_evaluation(run.iteration)
        hooks.evaluation(run.iteration, run.evaluate(split))
    return hooks.rows, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config YAML (e.g. experiments/train_tiny.yaml)")
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-time limit, evaluations included (%(default)s)")
    parser.add_argument("--eval-every", type=int, default=None, help="iterations between evaluations (train.eval_every)")
    parser.add_argument("--iters", type=int, default=None, help="iterations (train.iters; 0 there: epochs)")
    parser.add_argument("--eval-images", type=int, default=None, help="val images per evaluation (train.eval_images; 0: all)")
    parser.add_argument("--split", default=None, help="the split evaluated (default: train.test_split, else val)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (%(default)s)")
    parser.add_argument("--data-root", default=None, help="where the synthetic dataset is (generated if missing)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--csv", default=None, help="also write the table as CSV")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown")
    parser.add_argument("--save", default=None, help="save the trained network's state dict here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ensure_data(load_config(args.config, args.overrides), args.data_root)
    iters = args.iters if args.iters is not None else cfg.train.iters
    eval_every = args.eval_every if args.eval_every is not None else cfg.train.eval_every
    if args.eval_images is not None:
        cfg.train.eval_images = args.eval_images
    split = args.split or cfg.train.test_split or "val"
    log(f"{args.config} {' '.join(args.overrides)}: up to {iters} iterations or {args.minutes:g} min, "
        f"evaluation on {split} every {eval_every or 'end'}, {args.threads} torch threads")  # fmt: skip
    rows, run = learning_curve(cfg, args.minutes, eval_every, iters, split)
    width = [max(len(c), 7) for c in COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, width)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(format_row(row), width)))
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(rows))
    if args.save:
        torch.save(run.model.state_dict(), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
