"""benchmarks/gpu_check.sh on a machine without CUDA: the CI guard that keeps the GPU check working
between GPU loans. The script's CPU sides run for real (labels, timings, a training step, the
training command's checks); its CUDA parts must be listed as skipped, not silently dropped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# (start of the part's name, device, status) of every row the summary must hold on CPU
EXPECTED_ROWS = [
    ("CUDA-only tests", "cuda", "skipped: no CUDA"),
    ("pseudo labels, benchmark setting", "cpu", "ok"),
    ("pseudo labels, benchmark setting", "cuda", "skipped: no CUDA"),
    ("pseudo labels, masks at 512²", "cpu", "ok"),
    ("pseudo labels, masks at 512²", "cuda", "skipped: no CUDA"),
    ("train step, tiny network", "cpu", "ok"),
    ("train step, ResNet-50 (2 x 512²), fp32", "cuda", "skipped: no CUDA"),
    ("train step, ResNet-50 (2 x 512²), bf16", "cuda", "skipped: no CUDA"),
    ("ray_jobs.train config and data check", "cpu", "ok"),
    ("ray_jobs.train --gpu", "cuda", "skipped: no CUDA"),
]


def summary_rows(stdout: str) -> list[list[str]]:
    """The summary table's data rows, as lists of cells."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip() != "part"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script is the GPU check itself: run it by hand")
def test_gpu_check_runs_on_cpu_with_the_cuda_parts_skipped(tmp_path: Path) -> None:
    env = {**os.environ, "P2M_PYTHON": sys.executable, "OUT": str(tmp_path), "GPU_CHECK_BUDGET_S": "240"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    rows = summary_rows(done.stdout)
    got = [(part, device, status) for part, device, status, *_ in rows]
    assert len(got) == len(EXPECTED_ROWS), done.stdout
    for (part, device, status), (prefix, want_device, want_status) in zip(got, EXPECTED_ROWS):
        assert part.startswith(prefix) and (device, status) == (want_device, want_status), done.stdout
    marked = re.fullmatch(r"(\d+) test\(s\) marked cuda", rows[0][4])
    assert marked and int(marked[1]) >= 1, f"no test is selected by -m cuda, the GPU check would run none: {rows[0]}"
    assert rows[1][4].endswith("ms/image") and rows[5][4].startswith("step "), done.stdout
    results = (tmp_path / "results.tsv").read_text().splitlines()
    assert results[0].split("\t") == ["part", "device", "status", "seconds", "numbers"] and len(results) == 1 + len(EXPECTED_ROWS)
