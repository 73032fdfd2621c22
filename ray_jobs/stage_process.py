"""A child process that computes the local executor's pseudo stages, started before MLflow loads.

Why: before the first trial of ``--executor local`` can run, the command imports MLflow and
opens the store (about 2 s, one core), and the first trial imports torch and the stage's code
(about 1.5 s, one core). Both are pure imports, so one process can only do them one after the
other: overlapping them on a thread made both slower (the GIL). A second process can do the
second on the other core. :meth:`StageProcess.start` spawns it first thing, it imports torch
while the command talks to MLflow, and each trial's computation then runs in it: the
command claims, records and logs the trial, the child computes the stage into the trial's
folder and sends back the result record. docs/BENCHMARKS.md measures the difference.

The child is spawned rather than forked, so it starts clean of the command's threads and
state. Everything a trial's stage raises comes back to the command as the same exception, so
a failed trial is recorded as it would be in-process. If the child dies (killed, out of
memory), the trial fails with :class:`StageProcessLost` naming its exit code and the next
trial starts a new child. It ends with the command: killed after the last trial, or by an
``atexit`` handler if the command ends early (a stopped sweep must not leave a stage computing).
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

from p2m_core.config import Config

#: What the child imports while it waits for its first trial: torch and the stage's own lazy imports.
WARM_IMPORTS = ("torch", "p2m_core.ablation.stage", "p2m_core.pseudo.labels", "p2m_core.evaluation.overlay")


class StageProcessLost(RuntimeError):
    """The child process ended while it computed a trial's stage."""


def _child(conn: Connection) -> None:
    """The child's loop: import, then compute one ``(config, out_dir)`` request after another.

    SIGINT is ignored: a Ctrl-C reaches the whole process group, and the command, which handles
    it, ends its runs and then kills this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    from p2m_core.ablation import run_pseudo_stage

    while True:
        try:
            request = conn.recv()
        except EOFError:  # the command is gone
            return
        cfg, out_dir = request
        try:
            reply: tuple[str, Any, str] = ("ok", run_pseudo_stage(cfg, out_dir), "")
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the command
            reply = ("error", _portable(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        conn.send(reply)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles, else a RuntimeError with its type and message (the traceback goes
    back beside it either way)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class StageProcess:
    """One spawned child computing :func:`~p2m_core.ablation.run_pseudo_stage` for this command."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        atexit.register(self.kill)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (``None`` before :meth:`start` and after :meth:`kill`)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Spawn the child (it begins importing at once); a no-op while one is alive."""
        if self._process is not None and self._process.is_alive():
            return
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_child, args=(child,), name="p2m-stage", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def run(self, cfg: Config, out_dir: str | os.PathLike) -> dict[str, Any]:
        """The stage's result record for ``cfg``, computed in the child into ``out_dir``."""
        self.start()
        assert self._process is not None and self._conn is not None
        try:
            self._conn.send((cfg, os.fspath(out_dir)))
            status, value, remote_traceback = self._conn.recv()
        except (EOFError, OSError):  # the pipe broke: the child is gone
            self._process.join(timeout=5)
            code = self._process.exitcode
            self._process, self._conn = None, None
            raise StageProcessLost(f"the stage process ended while computing (exit code {code})") from None
        if status == "error":
            value.add_note(f"raised in the stage process:\n{remote_traceback}")
            raise value
        return value

    def kill(self) -> None:
        """End the child now: after the last trial (it waits for the next), or whatever it is
        doing when the command ends early."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._process, self._conn = None, None
