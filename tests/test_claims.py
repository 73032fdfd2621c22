"""Claims of a config hash (p2m_core/tracking/claims.py) in a sqlite store, without Ray: an earlier
attempt of the same trial, left RUNNING when its process was lost with its node, is expired by the
attempt Ray Tune runs next, at once; another driver's live claim of the hash is not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mlflow.tracking import MlflowClient

from p2m_core.config import load_config
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.claims import EARLIER_ATTEMPT, Claim, claim, claim_tags
from p2m_core.tracking.trial import TrialRun

PARENT, NAME, HASH = "p" * 32, "k_scheme=nearest_point seed=0", "abc"


def in_thread(fn: Callable[[], Claim]) -> tuple[threading.Thread, list[Claim]]:
    result: list[Claim] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def test_an_earlier_attempt_of_the_same_trial_is_expired_at_once_and_another_drivers_claim_is_not(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [])
    experiment = store.ensure_experiment(uri, "claims")
    base = {T.STAGE: "pseudo", T.HASH_VERSION: "1", T.CONFIG_HASH: HASH}

    def run_of(owner: str) -> TrialRun:
        return TrialRun(uri, experiment, PARENT, NAME, {**base, **claim_tags(), T.OWNER: owner}, cfg)

    def earlier_attempt(owner: str) -> Callable[[Any], bool]:
        return lambda run: run.data.tags.get(T.OWNER) == owner and run.info.run_name == NAME

    lost = run_of("driver-a")  # claimed and computing, then its node was lost: RUNNING, heartbeat fresh
    assert claim(uri, experiment, lost.run_id, HASH, "pseudo", 1).mine
    again = run_of("driver-a")  # Tune's next attempt of the same trial
    thread, outcome = in_thread(lambda: claim(uri, experiment, again.run_id, HASH, "pseudo", 1, None, earlier_attempt("driver-a")))
    thread.join(timeout=20)  # without the rule it would wait for the lost claim's heartbeat to go stale (60 s)
    assert outcome == [Claim(again.run_id, True)]
    gone = MlflowClient(tracking_uri=uri).get_run(lost.run_id)
    assert gone.info.status == "KILLED"
    assert gone.data.tags[T.END_REASON] == f"{T.REASON_STALE} ({EARLIER_ATTEMPT})"

    # a second driver of the same sweep, same trial: not an earlier attempt of its own; it waits
    # for the live claim and counts that run's result
    other = run_of("driver-b")
    thread, outcome = in_thread(lambda: claim(uri, experiment, other.run_id, HASH, "pseudo", 1, None, earlier_attempt("driver-b")))
    time.sleep(1.0)  # it reads the live claim and waits on it
    again.finish()
    thread.join(timeout=60)
    assert outcome == [Claim(again.run_id, False)]
    assert MlflowClient(tracking_uri=uri).get_run(again.run_id).info.status == "FINISHED"
