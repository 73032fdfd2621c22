"""Riding out a tracking server that goes away for a while (docs/TRACKING.md, "When the
tracking server goes away").

MLflow's client retries a failed HTTP request itself, but its default (7 retries, backoff
factor 2) blocks one call for minutes and then gives up whatever the run's limit is. p2m's
writers in Ray workers therefore shorten MLflow's own retries (:func:`bound_client_retries`) and
retry on top of them with an :class:`Outage`: it knows when the server was first found
unreachable, logs a WARNING then and an INFO when it answers again, and raises
:class:`TrackingOutageError` once the outage has lasted ``tracking.outage_limit_s``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: MLflow's own retries inside one call in a worker: a short burst, so that a call returns
#: within seconds and the :class:`Outage` around it, which knows the run's limit, decides.
CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # fmt: skip
#: The longest pause between two tries of a blocked call (the backoff doubles from 1 s up to it).
MAX_BACKOFF_S = 8.0


class TrackingOutageError(RuntimeError):
    """The tracking server stayed unreachable longer than ``tracking.outage_limit_s``."""


def bound_client_retries() -> None:
    """Shorten MLflow's per-call HTTP retries in this process (:data:`CLIENT_RETRIES`); values
    the user set in the environment are kept. Call it in the worker before its first MLflow call."""
    for name, value in CLIENT_RETRIES.items():
        os.environ.setdefault(name, value)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached or failed on its side (a refused or
    broken connection, a timeout, HTTP 5xx), as opposed to a request it refused (4xx), which
    retrying cannot fix."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return exc.response.status_code >= 500
        if isinstance(exc, MlflowException):
            return exc.get_http_status_code() >= 500
        exc = exc.__cause__ or exc.__context__
    return False


class Outage:
    """The state of one writer's connection to ``uri``: since when it has been down, if it is,
    and when to try again (the pause doubles from 1 s up to :data:`MAX_BACKOFF_S`).

    :meth:`due`, :meth:`failed` and :meth:`recovered` are for callers that keep their data and
    try again later (a training step); :meth:`call` blocks and retries (a checkpoint, which must
    not be reported before its metrics are stored).
    """

    def __init__(self, uri: str, limit_s: float) -> None:
        self.uri, self.limit_s = uri, float(limit_s)
        self.since: float | None = None  # time.monotonic() of the first failure of this outage
        self.retry_at = 0.0
        self.last_error: BaseException | None = None
        self._pause = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def due(self) -> bool:
        """Whether the next try is due (always, while the server answers)."""
        return self.since is None or time.monotonic() >= self.retry_at

    def failed(self, exc: BaseException, queued: str = "") -> None:
        """Record a failed call: re-raise ``exc`` when it is no outage, raise
        :class:`TrackingOutageError` when the outage has lasted the limit, else return."""
        if not is_outage(exc):
            raise exc
        now = time.monotonic()
        if self.since is None:
            self.since, self._pause = now, 1.0
            log.warning("MLflow tracking server %s unreachable (%s)%s; retrying for up to %g s (tracking.outage_limit_s)",
                        self.uri, _short(exc), f"; training goes on with {queued} queued" if queued else "", self.limit_s)  # fmt: skip
        else:
            self._pause = min(2 * self._pause, MAX_BACKOFF_S)
        # the last try falls on the limit itself
        self.retry_at = min(now + self._pause, self.since + self.limit_s)
        self.last_error = exc
        self.check_limit()

    def check_limit(self) -> None:
        """Raise :class:`TrackingOutageError` once the outage has lasted the limit."""
        if self.since is None:
            return
        down_s = time.monotonic() - self.since
        if down_s >= self.limit_s:
            raise TrackingOutageError(
                # short, the URI included: Ray shows the end of a worker's error only
                f"MLflow tracking server {self.uri} unreachable for {down_s:.0f} s ({type(self.last_error).__name__}), "
                f"longer than tracking.outage_limit_s = {self.limit_s:g} s; nothing logged was lost: start the server "
                "again and re-run the same command to resume from the last checkpoint"
            ) from self.last_error

    def recovered(self, queued: str = "") -> None:
        """Record a successful call; logs the end of an outage."""
        if self.since is not None:
            log.info("MLflow tracking server %s answers again after %.0f s%s", self.uri, time.monotonic() - self.since,
                     f"; sending {queued} queued meanwhile" if queued else "")  # fmt: skip
            self.since = None

    def call(self, fn: Callable[[], T], queued: Callable[[], str] = lambda: "") -> T:
        """``fn()``, tried again while the server is unreachable, up to the limit.

        ``fn`` must be safe to repeat: a request that reached the server before the connection
        broke is sent again (callers re-read the store first where a repeat would duplicate)."""
        while True:
            if not self.due():
                time.sleep(max(0.0, self.retry_at - time.monotonic()))
            before = queued()
            try:
                result = fn()
            except Exception as exc:
                self.failed(exc, before)
                continue
            self.recovered(before)
            return result


def _short(exc: BaseException | None) -> str:
    """The first line of ``exc``, cut to 300 characters (MLflow's messages repeat the URL and
    the whole urllib3 retry chain)."""
    if exc is None:
        return "none"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"
