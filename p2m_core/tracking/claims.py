"""Who computes a trial: a claim per config hash in the store, and the heartbeat that keeps it.

Two sweeps launched at once against one store (the same spec twice, or two specs sharing grid
points) plan the same trials, since neither sees a FINISHED run yet. MLflow has no transaction
across runs, so the claim is Lamport's bakery algorithm over run tags, which needs only that a
tag written is seen by every later search (true of MLflow's SQL stores and its server), and no
clock agreement between machines:

1. the trial creates its run RUNNING with ``p2m.claim = choosing`` and a fresh heartbeat;
2. it reads the live claims of its config hash and takes ticket ``1 + max(their tickets)``,
   written to ``p2m.claim`` (which ends "choosing");
3. it waits while any live claim is still choosing, then the live claim with the smallest
   ``(ticket, run id)`` computes; every other one waits for it and, when it FINISHED, ends its
   own run KILLED with ``p2m.claimed_by`` = the winner, deletes it and counts the trial done.

A claim is live while its run is RUNNING and its ``p2m.heartbeat`` (seconds since the epoch,
rewritten every :func:`beat_every` s by the trial) is at most :func:`stale_after` s old. A stale
claim's owner is dead (its driver or worker was killed): whoever sees it first marks it KILLED,
so a killed sweep never blocks the next one for longer than that (docs/TRACKING.md, "Claims").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from p2m_core.tracking import tags as T
from p2m_core.tracking.outage import Outage
from p2m_core.tracking.store import client, search_all

log = logging.getLogger(__name__)

#: Environment variable replacing :data:`STALE_AFTER_S` (tests that kill drivers set a few seconds).
STALE_ENV = "P2M_HEARTBEAT_STALE_S"
#: Seconds without a heartbeat after which a RUNNING trial run counts as dead: long enough that a
#: loaded machine or a slow server never misses it (a beat is one tag write every sixth of it).
STALE_AFTER_S = 60.0
#: The claim of a run that has not taken its ticket yet.
CHOOSING = "choosing"
#: Seconds between two reads of the store while waiting on another claim.
POLL_S = 0.25


def stale_after() -> float:
    return float(os.environ.get(STALE_ENV) or STALE_AFTER_S)


def beat_every() -> float:
    return stale_after() / 6


def claim_tags() -> dict[str, str]:
    """The tags a trial run is created with: choosing, alive now."""
    return {T.CLAIM: CHOOSING, T.HEARTBEAT: f"{time.time():.1f}"}


def is_stale(run: Any, now: float | None = None) -> bool:
    """Whether a RUNNING run's owner is gone: no heartbeat (or, for a run without one, no start)
    within :func:`stale_after` seconds."""
    beat = run.data.tags.get(T.HEARTBEAT)
    last = float(beat) if beat else run.info.start_time / 1000
    return (now if now is not None else time.time()) - last > stale_after()


#: Why a claim ended that an earlier attempt of the same trial held (:func:`claim`'s ``earlier_attempt``).
EARLIER_ATTEMPT = "an earlier attempt of this trial, whose process was lost: Ray Tune ran it again"


def expire(uri: str, run: Any, why: str = "") -> None:
    """End a dead claim's run KILLED, saying why (default: its heartbeat stopped)."""
    mlflow_client = client(uri)
    why = why or f"no heartbeat for {stale_after():.0f} s"
    mlflow_client.set_tag(run.info.run_id, T.END_REASON, f"{T.REASON_STALE} ({why})")
    mlflow_client.set_terminated(run.info.run_id, status="KILLED")


def kill_orphaned_children(uri: str, experiment_id: str, parent_run_id: str) -> int:
    """Mark the sweep's trial runs still RUNNING whose heartbeat is stale as KILLED (their
    driver is gone); returns how many.

    A child with a fresh heartbeat belongs to a driver of the same sweep still running (two
    identical sweeps share the sweep run): it is left alone, and the claims decide.
    """
    query = f"tags.`{T.PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    stale = [run for run in search_all(client(uri), experiment_id, query) if is_stale(run)]
    for run in stale:
        expire(uri, run)
    return len(stale)


@contextmanager
def heartbeat(uri: str, run_id: str) -> Iterator[None]:
    """Rewrite the run's ``p2m.heartbeat`` every :func:`beat_every` s on a daemon thread while
    the block runs; a failed write is logged, never raised (the next one may get through)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(beat_every()):
            try:
                client(uri).set_tag(run_id, T.HEARTBEAT, f"{time.time():.1f}")
            except Exception as exc:
                log.warning("heartbeat of MLflow run %s not written: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"p2m-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@dataclass(frozen=True)
class Claim:
    """The outcome: ``winner`` is the run that computes (this one, or the FINISHED one to count)."""

    winner: str
    mine: bool


def _ticket(run: Any) -> int | None:
    value = run.data.tags.get(T.CLAIM, "")
    return int(value) if value.isdigit() else None


def _peers(uri: str, experiment_id: str, run_id: str, config_hash: str, stage: str, hash_version: int,
           earlier_attempt: Callable[[Any], bool] | None = None) -> tuple[list[Any], str]:  # fmt: skip
    """The other live claims of the hash, and a FINISHED run of it ('' when none); stale ones and
    earlier attempts of this trial are expired. Safe to repeat after a broken connection:
    expiring a run twice changes nothing."""
    query = (
        f"tags.`{T.KIND}` = '{T.KIND_TRIAL}' and tags.`{T.STAGE}` = '{stage}' and tags.`{T.HASH_VERSION}` = '{hash_version}' "
        f"and tags.`{T.CONFIG_HASH}` = '{config_hash}'"
    )
    live, finished, now = [], "", time.time()
    for run in search_all(client(uri), experiment_id, query):
        if run.info.run_id == run_id:
            continue
        if run.info.status == "FINISHED":
            finished = finished or run.info.run_id
        elif run.info.status == "RUNNING":
            if is_stale(run, now):
                expire(uri, run)
            elif earlier_attempt is not None and earlier_attempt(run):
                expire(uri, run, EARLIER_ATTEMPT)
            else:
                live.append(run)
    return live, finished


def claim(
    uri: str, experiment_id: str, run_id: str, config_hash: str, stage: str, hash_version: int, outage: Outage | None = None,
    earlier_attempt: Callable[[Any], bool] | None = None,
) -> Claim:
    """Take part in the bakery for ``config_hash`` until this run may compute it, or another run
    of it FINISHED (module docstring). Blocks while another live claim goes first.

    With ``outage`` (the trial run's), every read and write waits through a tracking server that
    is down, up to its limit, like the trial's other calls; without it, the first failure raises.

    ``earlier_attempt`` tells a RUNNING run of the hash that was an earlier attempt of this very
    trial (the same driver's run of the same trial): one attempt runs at a time, so that one's
    process is gone, and its claim is expired at once rather than after :func:`stale_after` s
    without a heartbeat (its heartbeat thread may have died only a moment ago, with its node)."""
    call: Callable[[Callable[[], Any]], Any] = outage.call if outage is not None else (lambda fn: fn())
    key = (uri, experiment_id, run_id, config_hash, stage, hash_version, earlier_attempt)
    live, finished = call(lambda: _peers(*key))
    if finished:
        return Claim(finished, False)
    ticket = 1 + max((t for t in map(_ticket, live) if t is not None), default=0)
    call(lambda: client(uri).set_tag(run_id, T.CLAIM, str(ticket)))  # the same value again: no change
    waiting_on = ""
    while True:
        live, finished = call(lambda: _peers(*key))
        if finished:
            return Claim(finished, False)
        if not any(_ticket(run) is None for run in live):
            ahead = [run for run in live if (_ticket(run), run.info.run_id) < (ticket, run_id)]
            if not ahead:
                return Claim(run_id, True)
            first = min(ahead, key=lambda run: (_ticket(run), run.info.run_id)).info.run_id
            if first != waiting_on:
                log.info("config %s is being computed by run %s; waiting for it", config_hash[:12], first)
                waiting_on = first
        time.sleep(POLL_S)
