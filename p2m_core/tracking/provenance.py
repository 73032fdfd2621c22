"""Which code produced a run: the git commit of the checkout, marked dirty when it has changes.

Recorded as a tag on every run (docs/TRACKING.md), so a number in a table can be traced to the
code that made it. Inside a Ray job the code is an unpacked copy without ``.git``; there the
environment variable ``P2M_GIT_COMMIT`` (if the submitter set it) or ``unknown`` is recorded.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ENV_VAR = "P2M_GIT_COMMIT"


@functools.lru_cache(maxsize=4)
def git_commit(path: str | os.PathLike | None = None) -> str:
    """``<sha>`` or ``<sha>-dirty`` of the repository holding ``path`` (default: this package)."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(ENV_VAR, "unknown")
    return f"{sha}-dirty" if dirty else sha
