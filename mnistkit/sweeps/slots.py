"""One more trial? The decision a worker makes before each trial, made by one worker at a time.

The budget is exact: a worker takes a slot only while ``finished + RUNNING + WAITING < budget``
(a WAITING trial is a dead worker's queued retry; a RUNNING one may still finish, or go stale and
be retried, and counts once either way). Counting and creating the trial (``study.ask()``) happen
under a lock shared by all the study's workers, so two workers never both see the last free slot
(Optuna's ``MaxTrialsCallback`` counts without a lock and overshoots by up to N-1; optuna #3518).

* PostgreSQL: a transaction-scoped advisory lock (``pg_advisory_xact_lock``) keyed by the study
  name, so workers on every machine queue on the database server; the server drops it when the
  transaction ends or the holder's connection dies (a killed worker never keeps it).
* SQLite: an exclusive ``flock`` on ``study.db.lock`` next to the database. Not SQLite's own
  write lock: ``ask()`` writes through Optuna's connections, and a write transaction held open on
  another connection around it would make those writes wait on this worker itself (the busy
  timeout, then "database is locked"). A file lock serializes only the decision. flock works
  between the processes of one machine, which is what an SQLite study file is for (SQLite itself
  warns against network filesystems; several machines use PostgreSQL).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from mnistkit.sweeps.retrying import retry_call
from mnistkit.sweeps.trials import counted

Decision = optuna.Trial | Literal["wait", "done"]
NEVER_STARTED = "never started: lost as it was created (storage connection or worker)"  # orphans


def lock_key(study_name: str) -> int:
    """The advisory lock's 64-bit key: the same study name gives the same key on every machine."""
    digest = hashlib.sha256(f"mnistkit budget {study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def budget_lock(url: str, storage: Any, study_name: str) -> Iterator[None]:
    """Held by one worker of the study at a time (see the module doc)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        with open(path.with_name(path.name + ".lock"), "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield
        return
    import sqlalchemy

    with storage.engine.begin() as conn:  # the lock ends with this transaction
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(study_name)})
        yield


def orphans(storage: Any, study_id: int) -> list[int]:
    """The study's RUNNING trials that have no heartbeat: each was created by a decision that
    failed before its first heartbeat (the connection dropped between the two, or the worker died
    there), and is run by nobody. Optuna never counts a trial without a heartbeat as stale."""
    import sqlalchemy
    from optuna.storages._rdb import models

    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    with storage.engine.connect() as conn:
        query = (
            sqlalchemy.select(trial.trial_id)
            .outerjoin(beat, beat.trial_id == trial.trial_id)
            .where(trial.study_id == study_id, trial.state == TrialState.RUNNING)
            .where(beat.trial_heartbeat_id.is_(None))
        )
        return [row[0] for row in conn.execute(query)]


def _decide(study: optuna.Study, need: int, url: str, storage: Any) -> Decision:
    beats = storage.get_heartbeat_interval() is not None  # workers' storages have them
    with budget_lock(url, storage, study.study_name):
        if beats:
            # A trial left without a heartbeat gets one now, so that it goes stale after the
            # grace period and is retried like a dead worker's. Not failed at once: under the
            # lock no decision is between ask() and its heartbeat, unless the lock's own
            # connection was dropped alone; waiting out the grace period is safe either way.
            for trial_id in orphans(storage, study._study_id):
                storage.set_trial_user_attr(trial_id, "reason", NEVER_STARTED)
                storage.record_heartbeat(trial_id)
        optuna.storages.fail_stale_trials(study)  # dead workers' trials → FAIL + a WAITING retry
        trials = study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting or len(counted(trials)) + running < need:
            trial = study.ask()  # a WAITING retry first, else a new trial
            # A heartbeat before the lock is released: a trial without one is taken for an
            # orphan by the next decision (a worker that dies right here leaves one).
            if beats:
                storage.record_heartbeat(trial._trial_id)
            return trial
        return "wait" if running else "done"


def claim(study: optuna.Study, need: int, url: str, storage: Any) -> Decision:
    """A trial to run (its slot taken), "wait" (the budget is taken but trials still run: they
    finish, or go stale and are retried) or "done". Tried again as a whole while the storage is
    unreachable."""
    return retry_call(storage, lambda: _decide(study, need, url, storage))
