"""Which code produced a run: the git commit of the checkout, marked dirty when it has changes.

Recorded as a tag on every run (docs/TRACKING.md), so a number in a table can be traced to the
code that made it, and as MLflow's own source tags (:func:`source_tags`), which fill the UI's
"Source" column. Inside a Ray job the code is an unpacked copy without ``.git``; there the
environment variable ``P2M_GIT_COMMIT`` (if the submitter set it) or ``unknown`` is recorded.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ENV_VAR = "P2M_GIT_COMMIT"
#: Set by Ray in the entrypoint process of ``ray job submit`` (whose working directory is a copy).
RAY_JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """True inside ``ray job submit``'s entrypoint, whose working directory is a temporary copy."""
    return RAY_JOB_ENV_VAR in os.environ


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


def source_tags(entrypoint: str) -> dict[str, str]:
    """MLflow's source tags of a run started by ``python -m <entrypoint>``: its name, its type
    (``JOB`` inside a Ray job, else ``LOCAL``) and the commit when it is known. The UI shows
    them in the runs table's "Source" column, which is empty without them."""
    from p2m_core.tracking import tags as T

    tags = {T.SOURCE_NAME: f"python -m {entrypoint}", T.SOURCE_TYPE: "JOB" if in_ray_job() else "LOCAL"}
    commit = git_commit()
    if commit != "unknown":
        tags[T.SOURCE_GIT_COMMIT] = commit.removesuffix("-dirty")
    return tags
