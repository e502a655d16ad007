"""Storage calls that wait for the database while it is unreachable (a restart, a network blip).

Optuna raises on the first dropped connection: in the worker (``StorageInternalError`` from
``_create_scoped_session``, caused by SQLAlchemy's ``OperationalError``) and in the trial's
heartbeat thread (``record_heartbeat``; the thread dies, its trial goes stale and another worker
re-runs it). :class:`RetryingRDBStorage` tries each call again with backoff instead.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from optuna.storages import RDBStorage

RETRY_FOR_S = 600.0  # how long a running worker waits for an unreachable storage before it fails
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # backoff between attempts; the last one repeats


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: Optuna wraps SQLAlchemy's errors in
    StorageInternalError) says the database could not be reached, rather than a bad request."""
    import sqlalchemy.exc

    for seen in _chain(exc):
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, outermost first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


REFUSED = ("password authentication failed", "no password supplied", "no pg_hba.conf entry")


def _refusal(exc: BaseException) -> str | None:
    """The server's reason when it answered but refused the login (a password changed or a
    pg_hba.conf rule removed mid-sweep), else None. libpq's message never holds the password."""
    for seen in _chain(exc):
        text = str(seen)
        for marker in REFUSED:
            if marker in text:
                line = next(ln for ln in text.splitlines() if marker in ln)
                return line[line.index(marker) :].strip()
    return None


def _unreachable(storage: Any, refused: str | None, delay: float) -> str:
    """What the worker says while it waits: why it cannot use the storage, and what it does."""
    if refused is None:
        return f"storage unreachable ({storage.where}), retrying in {delay:g} s"
    return (
        f"storage refused the login ({storage.where}): {refused}; retrying in {delay:g} s "
        "(each try reads $PGPASSFILE or ~/.pgpass again)"
    )


_depth = threading.local()  # retry only the outermost storage call (they call each other)


def retry_call(storage: Any, fn: Callable[[], Any]) -> Any:
    """``fn()``, tried again with backoff while ``storage`` is unreachable (a
    :class:`RetryingRDBStorage` once opened; anything else: called once). The storage calls
    inside ``fn`` do not retry on their own: the whole of ``fn`` is tried again."""
    if getattr(_depth, "n", 0) or not getattr(storage, "ready", False):
        return fn()
    start, attempt, said, why = time.monotonic(), 0, -1.0, None
    while True:
        _depth.n = 1
        try:
            result = fn()
        except Exception as exc:
            waited = time.monotonic() - start
            if not _connection_lost(exc) or waited >= RETRY_FOR_S:
                raise
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            attempt += 1
            # The first failure, a new reason (a restart, then a refused login), every 10 s.
            refused = _refusal(exc)
            if said < 0 or refused != why or waited - said >= 10:
                said, why = waited, refused
                storage.say(_unreachable(storage, refused, delay))
            time.sleep(delay)
            continue
        finally:
            _depth.n = 0
        if attempt:
            storage.say(f"storage reachable again after {time.monotonic() - start:.1f} s")
        return result


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_call(self, lambda: method(self, *args, **kwargs))

    return call


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls wait for the database while it is unreachable.

    Optuna raises on the first dropped connection, in the worker (StorageInternalError from
    ``_create_scoped_session``) and in the trial's heartbeat thread (``record_heartbeat``, which
    then dies and lets the trial go stale). Here each call is tried again with backoff
    (:data:`RETRY_DELAYS_S`) for up to :data:`RETRY_FOR_S`, saying so on stderr once, again when
    the reason changes and every 10 s, and how long it waited once the storage answers again.
    Only the connection errors are retried; a bad request still raises at once. A refused login
    (a password changed mid-sweep) is retried too, since libpq reads the pgpass file again on
    each try, but named as what it is.

    A write whose commit reached the server just before the connection dropped is sent twice:
    a duplicated trial state is refused by Optuna, and a trial created twice leaves one RUNNING
    without a heartbeat, which the next budget decision finds (:func:`slots.orphans`).
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        from sqlalchemy.engine import make_url

        self.ready = False  # opening is not retried: a wrong password must fail at once
        super().__init__(url, **kwargs)
        parsed = make_url(url)
        port = f":{parsed.port}" if parsed.port else ""
        self.where = f"{parsed.host or parsed.query.get('host') or parsed.database}{port}"
        self.ready = True

    @staticmethod
    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)


for _name in (
    *("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr"),
    *("get_study_id_from_name", "get_study_name_from_id", "get_study_directions"),
    *("get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial"),
    *("set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id"),
    *("get_trial_param", "set_trial_state_values", "set_trial_intermediate_value"),
    *("set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials"),
    *("get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs"),
    *("get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids"),
    # What Optuna's _CachedStorage (which wraps every RDBStorage a study opens) calls instead
    # of the public methods:
    *("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"),
):
    if hasattr(RDBStorage, _name):  # private ones may go in another Optuna version
        setattr(RetryingRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))
