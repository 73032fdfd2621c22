"""A launcher stopped on purpose: ``ray job stop`` (SIGTERM), Ctrl-C (SIGINT).

Without this, the process dies with its MLflow runs RUNNING: the sweep run and the trials that
were computing, or the training run, stay so until a later run of the same command marks them
KILLED, and the store says nothing of why. On either signal :func:`install`'s handler ends every
run in :class:`OpenRuns` KILLED with ``p2m.end_reason`` = ``stopped: SIGTERM ...`` (a sweep run's
RUNNING trials that this process opened too), then exits with status 128 + the signal. Ray then
ends the job's workers (their trials and Ray Train groups) and gives their resources back.

It must fit in Ray's grace period: the job supervisor sends SIGTERM to the entrypoint and its
children and SIGKILL ``RAY_JOB_STOP_WAIT_TIME_S`` (3) seconds later. So the store writes run on a
thread given :data:`STOP_BUDGET_S`; whatever they could not end is ended by the next run of the
same command (orphans and stale claims, docs/TRACKING.md).

Both ways a command ends, stopped or done, go through :func:`exit_process`.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from p2m_core.tracking import tags as T
from p2m_core.tracking.store import kill_runs, running_children

#: Seconds the handler gives the store writes; Ray's supervisor SIGKILLs 3 s after its SIGTERM.
STOP_BUDGET_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@functools.lru_cache(maxsize=1)
def owner_id() -> str:
    """This launcher process, as the tag ``p2m.owner`` names it (host, pid, start second)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


def stop_reason(signum: int) -> str:
    """``p2m.end_reason`` of the runs a signal ended, e.g. ``stopped: SIGTERM (ray job stop?)``."""
    name = signal.Signals(signum).name
    return f"{T.REASON_STOPPED}: {name} ({'ray job stop?' if signum == signal.SIGTERM else 'Ctrl-C?'})"


class OpenRuns:
    """The MLflow runs this process would leave RUNNING if it stopped now."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[str, str]] = {}  # run id -> (store, experiment of its children or "")
        self._lock = threading.Lock()

    def add(self, uri: str, run_id: str, children_in: str = "") -> None:
        """``children_in``: the experiment of the run's trial runs, which end with it."""
        with self._lock:
            self._runs[run_id] = (uri, children_in)

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._runs)

    def end_all(self, reason: str) -> None:
        """End every run KILLED with ``reason``: each parent first (the sweep run, the record a
        user reads), then the trials this process opened under it. When the store is slow and
        the time runs out (:data:`STOP_BUDGET_S`), what is left is trial runs, which the next
        run of the same command ends."""
        with self._lock:
            runs = dict(self._runs)
        for run_id, (uri, experiment_id) in runs.items():
            kill_runs(uri, [run_id], reason)
            if experiment_id:
                kill_runs(uri, running_children(uri, experiment_id, run_id, owner_id()), reason)
            self.discard(run_id)


#: This process's open runs: the launcher adds each run it opens and discards it once ended.
open_runs = OpenRuns()

#: Set by :func:`install`'s handler once a stop signal arrived: loops that start trials check it,
#: so that no new run opens while the open ones are being ended.
stopping = threading.Event()


#: The handler :func:`install` set, for :func:`reinstall`.
_installed: Callable[[int, object], None] | None = None


def install(open_runs: OpenRuns, say: Callable[[str], None]) -> None:
    """Handle SIGTERM and SIGINT in this (the main) thread: end ``open_runs`` and exit (module docstring)."""
    global _installed

    def handler(signum: int, frame: object) -> None:
        if stopping.is_set():  # a second signal while the first is handled: go now
            os._exit(128 + signum)
        stopping.set()
        reason = stop_reason(signum)
        say(f"{signal.Signals(signum).name} received: ending {len(open_runs)} open MLflow run(s) KILLED ({reason!r}) and stopping")
        writer = threading.Thread(target=_end_logged, args=(open_runs, reason, say), name="p2m-stop", daemon=True)
        writer.start()
        writer.join(STOP_BUDGET_S)
        if writer.is_alive():
            say(f"the store did not answer within {STOP_BUDGET_S:.0f} s; the next run of the same command ends what is left")
        exit_process(128 + signum)

    _installed = handler
    reinstall()


def reinstall() -> None:
    """Put :func:`install`'s handler back (no-op without one). ``ray.init`` replaces the SIGTERM
    handler with its own (``sys.exit``), so :func:`ray_jobs.cluster.connect` calls this after it:
    otherwise ``ray job stop`` would end the launcher with its runs left RUNNING."""
    if _installed is None or threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _installed)


def _end_logged(open_runs: OpenRuns, reason: str, say: Callable[[str], None]) -> None:
    try:
        open_runs.end_all(reason)
    except Exception as exc:  # the store may be what is failing; the exit must still happen
        say(f"could not end the open MLflow runs: {type(exc).__name__}: {exc}")


def exit_process(code: int) -> NoReturn:
    """End a command whose work is done and recorded, skipping the interpreter's finalisation.

    After a Ray driver, Python's own teardown (the modules of Ray, Tune and MLflow, and Ray's
    core-worker threads) took 1.2-1.9 s per command on 2 cores, for nothing a finished command
    needs. What a normal exit does that matters still happens: the ``atexit`` handlers run
    (logging is flushed and closed, MLflow ends an active run, Ray shuts down if it is still
    up), then both console streams are flushed. Files we write are closed by then (each is
    written to a temporary name and renamed)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
