"""Where a study lives: an SQLite file in the sweep folder by default, PostgreSQL for many machines.

Why SQLite (in WAL mode, with a busy timeout) and not Optuna's JournalFileBackend for the
embedded default: both ran 2 worker processes x 60 trials with no "database is locked" failures
(bench/sweep_storage.py on the 2-core dev machine: SQLite+WAL 9.7 s, journal 4.3 s, SQLite
without WAL 24.0 s), but only Optuna's RDBStorage implements heartbeats. Without heartbeats a
worker killed with ``kill -9`` leaves its trial RUNNING forever; with them the trial is detected
as stale and retried from its checkpoint. The ~80 ms of storage time per trial is noise against
trials that train for seconds.

A PostgreSQL URL (``--storage postgresql+psycopg://user@host/db`` or ``$MNISTKIT_SWEEP_STORAGE``)
lets workers on several machines share one study. The password never appears in the URL (it would
end up in shell history, process lists and the sweep folder): libpq reads ``$PGPASSWORD`` or
``~/.pgpass``. Connections are pre-pinged and every storage call (the heartbeat thread's too) is
retried with backoff while the server is unreachable (:mod:`mnistkit.sweeps.retrying`), so a server
restart costs a wait, not the sweep. Opening the storage is not retried: a wrong password or an
unreachable host is a one-line error naming the host (exit 2), before anything is created, within
:data:`CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from mnistkit.errors import Problem, RecipeError, RunError

ENV_STORAGE = "MNISTKIT_SWEEP_STORAGE"
DB_NAME = "study.db"
SQLITE_TIMEOUT_S = 60  # how long a writer waits for another worker's transaction before failing
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout: a host that does not answer fails this fast


class StorageError(RunError):
    """The storage cannot be opened (wrong password, unknown or unreachable host): exit 2, as
    for a wrong --storage argument, since the fix is in the command line or the environment."""

    exit_code = 2


def storage_url(cli_url: str | None, sweep_dir: Path) -> str:
    """The storage URL: --storage, else $MNISTKIT_SWEEP_STORAGE, else the sweep folder's SQLite file."""
    url = cli_url or os.environ.get(ENV_STORAGE) or ""
    if not url:
        return f"sqlite:///{(sweep_dir / DB_NAME).resolve()}"
    check_url(url, "--storage" if cli_url else f"${ENV_STORAGE}")
    return url


def check_url(url: str, where: str) -> None:
    """Refuse URLs mnistkit cannot use, or that carry a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RecipeError(
            [Problem(where, "", f"not a database URL: {url!r}", "e.g. postgresql+psycopg://user@host/db")]
        ) from None
    if parsed.password:
        raise RecipeError(
            [
                Problem(
                    where,
                    "",
                    "the storage URL contains a password",
                    "remove it from the URL and set $PGPASSWORD or a ~/.pgpass line instead: a URL "
                    "ends up in shell history, process lists and the sweep folder",
                )
            ]
        )
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise RecipeError(
            [
                Problem(
                    where,
                    "",
                    f"unsupported database {parsed.get_backend_name()!r}",
                    "use postgresql+psycopg://user@host/db (or leave --storage out for the sweep "
                    "folder's SQLite file)",
                )
            ]
        )


def redact(url: str) -> str:
    """The URL as it may be shown and written down (never with a password)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat: Any = None) -> Any:
    """An Optuna RDBStorage for ``url`` with the settings its database needs.

    ``heartbeat``: the sweep's HeartbeatSpec (workers), or None (status, reports).
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from mnistkit.sweeps.retrying import RetryingRDBStorage

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers (the live table, `sweep status`) run beside a writer, and writers
        # queue instead of failing; the mode is stored in the file, so setting it once is enough.
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as con:
            con.execute("PRAGMA journal_mode=WAL")
        kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        kwargs["pool_pre_ping"] = True  # survive a server restart: test connections before use
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    hb: dict[str, Any] = {}
    if heartbeat is not None:
        hb = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=heartbeat.retries, inherit_intermediate_values=True
            ),
        }
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            return RetryingRDBStorage(url, engine_kwargs=kwargs, **hb)
        except ImportError as exc:
            raise RunError(
                f"cannot use storage {redact(url)}: {exc}; pip install 'psycopg[binary]'"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # Workers starting together race to create the tables: the loser's CREATE fails
            # once, and the tables exist when it tries again.
            if attempt < 2 and not isinstance(exc, sqlalchemy.exc.OperationalError):
                time.sleep(1.0)
                continue
            msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            error = StorageError if isinstance(exc, sqlalchemy.exc.OperationalError) else RunError
            raise error(f"cannot open the sweep storage {redact(url)}: {msg}") from None
    raise AssertionError("unreachable")
