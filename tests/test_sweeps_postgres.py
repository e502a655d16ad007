"""Sweeps on a real PostgreSQL server: several worker processes, one study, one budget.

The fixture starts a throw-away server from the distribution's binaries (PostgreSQL 15 on
Debian: /usr/lib/postgresql/15/bin, or whatever `pg_ctl` is on PATH): ``initdb`` as the
unprivileged ``postgres`` user when the tests run as root (initdb refuses root), a unix socket in
a private temporary folder and no TCP port (``listen_addresses=''``), trust authentication for
that socket only. Without the binaries the tests are skipped and say why; `.ci/run` installs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg import postgres
from sweep_helpers import REPO, finished, read_trials, write_sweep
from test_sweep_budget import ORPHAN_SQL, finish_with_a_dropped_first_heartbeat


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A running PostgreSQL server; yields a password-free psycopg URL (unix socket)."""
    with postgres("sweeps") as sock:
        yield f"postgresql+psycopg://postgres@/sweeps?host={sock}"


def _worker(
    sweep: Path, out: Path, url: str, log: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A `mnistkit sweep` worker process, its output in ``log`` (a file, not a pipe: a pipe that
    nobody reads while the test waits on the other worker would block this one once full)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "mnistkit", "sweep", str(sweep), "--out", str(out), "--storage", url,
             "--progress", "none", *extra],
            env=full, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for(what: str, seconds: float, done: Callable[[], bool], logs: dict[str, Path]) -> None:
    """Wait until ``done()`` (polled twice a second); fail after ``seconds`` naming what was awaited,
    with the end of each worker's log."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {name}'s log:\n{_tail(log)}" for name, log in logs.items())
            pytest.fail(f"waited {seconds:.0f} s for {what}\n{tails}")
        time.sleep(0.5)


def test_two_workers_share_one_budget(pg_url: str, tmp_path: Path, cli) -> None:
    sweep = write_sweep(tmp_path, 4, extra="study: two-workers\n")
    out = tmp_path / "s"
    res = cli(
        "sweep",
        sweep,
        "--out",
        out,
        "--storage",
        pg_url,
        "--workers",
        "2",
        "--progress",
        "plain",
        timeout=250,  # within the test's own limit (pyproject's `timeout`), so its output is shown
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    numbers = [int(r["number"]) for r in rows]
    assert len(numbers) == len(set(numbers))
    assert len(finished(rows)) == 4, rows  # the budget is exact (mnistkit/sweeps/slots.py)
    assert not [r for r in rows if r["state"] in ("RUNNING", "WAITING")]
    logs = sorted((out / "workers").glob("worker-*.log"))
    assert len(logs) == 2
    # Both processes ran trials (each trial's status.json names the process that ran it).
    pids = {json.loads((out / r["run_dir"] / "status.json").read_text())["pid"] for r in rows}
    assert len(pids) == 2, pids
    assert "storage:   postgresql+psycopg://postgres@/sweeps" in res.stdout
    # The same command again joins the finished study and runs nothing.
    res = cli("sweep", sweep, "--out", out, "--storage", pg_url, "--progress", "plain", timeout=40)
    assert res.returncode == 0 and "already finished" in res.stdout, res.stdout + res.stderr
    assert len(read_trials(out)) == len(rows)


@pytest.mark.timeout(500)  # the waits below add up to 470 s, for a loaded machine
def test_a_killed_worker_s_trial_is_resumed_by_another_worker(pg_url: str, tmp_path: Path) -> None:
    """Worker A kills itself (SIGKILL) in epoch 2 of its first trial; worker B, started once A's
    trial is under way, notices A's heartbeat going stale and continues that trial from its
    epoch-1 checkpoint. Every wait is on an event, bounded, and says what it waited for; both
    workers are killed whatever happens, so a failure leaves no process behind."""
    sweep = write_sweep(tmp_path, 3, extra="study: kill-9\n")
    out = tmp_path / "s"
    logs = {"worker A": tmp_path / "a.log", "worker B": tmp_path / "b.log"}
    procs: list[subprocess.Popen] = []
    try:
        a = _worker(sweep, out, pg_url, logs["worker A"], env={"MNISTKIT_KILL_AT": "2:3"})
        procs.append(a)
        # B joins the study A created, once A is inside its first trial (its run directory exists).
        started = lambda: a.poll() is not None or any((out / "trials").glob("*/recipe.yaml"))  # noqa: E731
        _wait_for("worker A to start its first trial", 100, started, logs)
        b = _worker(sweep, out, pg_url, logs["worker B"])
        procs.append(b)
        _wait_for(
            "worker A to kill itself in epoch 2 of its first trial", 100, lambda: a.poll() is not None, logs
        )
        assert a.returncode == -9, _tail(logs["worker A"])
        summary = lambda: b.poll() is not None or "saved:" in logs["worker B"].read_text()  # noqa: E731
        _wait_for("worker B to finish the budget, the dead worker's trial included", 150, summary, logs)
        # Its summary printed, B must also end: at load 12-18 this has taken over 35 s (the process
        # busy in interpreter finalization, py-spy showed), hence a bound of its own.
        _wait_for("worker B to exit after printing its summary", 120, lambda: b.poll() is not None, logs)
        assert b.returncode == 0, _tail(logs["worker B"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    rows = read_trials(out)
    dead = [r for r in rows if r["state"] == "FAIL" and "heartbeat stale" in r["reason"]]
    assert len(dead) == 1, rows
    [retry] = [r for r in rows if r["retry_of"] == dead[0]["number"]]
    assert retry["state"] == "COMPLETE" and retry["run_dir"] == dead[0]["run_dir"]
    status = json.loads((out / retry["run_dir"] / "status.json").read_text())
    assert len(status["resumed"]) == 1  # continued from its epoch-1 checkpoint, not restarted
    assert len(finished(rows)) == 3 and not [r for r in rows if r["state"] in ("RUNNING", "WAITING")]


def test_a_trial_created_just_before_the_connection_dropped_is_retried_on_postgresql(
    pg_url: str, monkeypatch
) -> None:
    """test_sweep_budget's orphan on PostgreSQL (its trial states are an enum type there): the
    worker's loop ends with 2 COMPLETE trials and the orphan FAIL with its reason. Read back with
    psycopg, not through Optuna."""
    import psycopg

    url = pg_url.replace("/sweeps?", "/orphan?")
    sock = pg_url.split("host=")[1]
    with psycopg.connect(host=sock, dbname="sweeps", user="postgres", autocommit=True) as con:
        con.execute("CREATE DATABASE orphan")
    lost = finish_with_a_dropped_first_heartbeat(url, monkeypatch)
    with psycopg.connect(host=sock, dbname="orphan", user="postgres") as con:
        states = dict(con.execute(ORPHAN_SQL[0]).fetchall())
        left = con.execute(ORPHAN_SQL[1].format(id=lost)).fetchone()
    assert states == {"COMPLETE": 2, "FAIL": 1}, states
    assert left is not None and left[0] == "FAIL" and "never started" in left[1], left
