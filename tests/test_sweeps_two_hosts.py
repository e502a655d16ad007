"""Sweep workers on two hosts sharing one PostgreSQL study (issue 24), on the two-host test bed.

PostgreSQL runs on host A, listening on A's link address with scram-sha-256 password
authentication for a role that can use only its own database (tests/pg_host.py). Workers on A
and B join with `--storage postgresql+psycopg://sweeper@10.231.0.1:5433/sweeps`, the password
from $PGPASSWORD (B) or a pgpass file (A). Both hosts see the same filesystem (namespaces share
it), so the sweep folder is shared, as an NFS mount would be between machines.

What is checked is read back independently: the study's trials by SQL as the superuser over the
server's own unix socket, never through mnistkit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from pg_host import DB, ROLE, HostedPostgres, pgpass_file, postgres_on
from sweep_helpers import REPO, write_sweep
from test_sweep_budget import race

pytestmark = pytest.mark.multihost


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[netns.TwoHosts, HostedPostgres]]:
    why = netns.why_not_available()
    if why:
        pytest.skip(why)
    with netns.two_hosts() as hosts, postgres_on(hosts.a) as pg:
        yield hosts, pg


def env_for(pg: HostedPostgres, folder: Path, how: str, **extra: str) -> dict[str, str]:
    """The environment of a process on a host: the password through $PGPASSWORD or a pgpass file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "MNISTKIT_DATA"}
    env["PYTHONPATH"] = str(REPO)
    if how == "env":
        env["PGPASSWORD"] = pg.password
    else:
        env["PGPASSFILE"] = str(pgpass_file(folder, pg))
    return {**env, **extra}


def states(pg: HostedPostgres, study: str) -> dict[str, int]:
    """The study's trials by state, read with SQL (not through mnistkit or Optuna)."""
    out = pg.sql(
        "SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) "
        f"WHERE s.study_name = '{study}' GROUP BY t.state",
        db=DB,
    )
    return {s: int(n) for s, n in (line.split("|") for line in out.splitlines())}


def study_exists(pg: HostedPostgres, study: str) -> bool:
    if pg.sql("SELECT to_regclass('studies') IS NOT NULL", db=DB) != "t":
        return False
    return pg.sql(f"SELECT count(*) FROM studies WHERE study_name = '{study}'", db=DB) != "0"


def sweep_on(host: netns.Host, sweep: Path, out: Path, url: str, log: Path, env: dict[str, str]):
    with open(log, "wb") as fh:
        return host.popen(
            [sys.executable, "-m", "mnistkit", "sweep", str(sweep), "--out", str(out), "--storage", url,
             "--progress", "plain"],
            env=env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_all(procs: list, seconds: float, logs: list[Path], pg: HostedPostgres, study: str) -> None:
    deadline = time.monotonic() + seconds
    while [p.poll() for p in procs].count(None):  # poll every one: a dead one is reaped
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in logs)
            rows = pg.sql(
                "SELECT t.number, t.state, h.heartbeat FROM trials t JOIN studies s USING (study_id) "
                f"LEFT JOIN trial_heartbeats h USING (trial_id) WHERE s.study_name = '{study}' "
                "ORDER BY t.number",
                db=DB,
            )
            pytest.fail(f"the workers did not end within {seconds:.0f} s\n{tails}\n--- trials:\n{rows}")
        time.sleep(0.25)


def assert_never_written(password: str, folder: Path, *texts: str) -> None:
    """Neither an output nor any file under ``folder`` holds the password (pytest.fail, not
    assert: the assertion's message would print the file, password included)."""
    for k, t in enumerate(texts):
        if password in t:
            pytest.fail(f"output {k} holds the password")
    for path in folder.rglob("*"):
        if path.is_file() and password.encode() in path.read_bytes():
            pytest.fail(f"{path} holds the password")


def test_the_role_can_use_only_its_own_database(bed, tmp_path: Path) -> None:
    hosts, pg = bed
    probe = "import psycopg,sys;psycopg.connect(sys.argv[1],connect_timeout=5).close()"
    env = env_for(pg, tmp_path, "env")
    own = f"host={hosts.a.address} port=5433 user={ROLE} dbname={DB}"
    assert hosts.b.run([sys.executable, "-c", probe, own], env=env).returncode == 0
    elsewhere = own.replace(f"dbname={DB}", "dbname=postgres")
    other = hosts.b.run([sys.executable, "-c", probe, elsewhere], env=env)
    assert other.returncode != 0 and "no pg_hba.conf entry" in other.stderr, other.stderr
    powers = f"SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = '{ROLE}'"
    assert pg.sql(powers) == "f|f|f"
    assert pg.sql("SELECT has_database_privilege('sweeper', 'postgres', 'CONNECT')") == "f"
    wrong = hosts.b.run([sys.executable, "-c", probe, own], env={**env, "PGPASSWORD": "not-it"})
    assert "password authentication failed" in wrong.stderr  # scram-sha-256, not trust


def test_racing_workers_on_two_hosts_take_exactly_the_budget(bed, tmp_path: Path) -> None:
    """Two racers on A and two on B claim slots of a 6-trial budget through the PostgreSQL
    advisory lock, each count-to-create window widened to 0.3 s: exactly 6 trials."""
    hosts, pg = bed
    env = env_for(pg, tmp_path, "env")
    # The study is created from host A (the test process is outside both namespaces).
    create = "import optuna,sys;optuna.create_study(study_name='race',storage=sys.argv[1])"
    made = hosts.a.run([sys.executable, "-c", create, pg.url], env=env)
    assert made.returncode == 0, made.stderr

    def on(host: netns.Host):
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return lambda argv: host.popen(argv, env=env, **pipes)

    counts = race(pg.url, "race", 6, tmp_path, [on(hosts.a), on(hosts.b)] * 2)
    assert sum(counts) == 6, counts
    assert states(pg, "race") == {"COMPLETE": 6}


def test_a_worker_killed_on_b_is_resumed_on_a_and_the_budget_is_exact(bed, tmp_path: Path) -> None:
    """`trials: 6`, one worker on A (password from $PGPASSWORD) and one on B (a pgpass file), both
    started at once. B's worker is killed (SIGKILL) in epoch 2 of its first trial; A notices its
    heartbeat going stale, takes the trial over and resumes it from its epoch-1 checkpoint in the
    shared sweep folder. The study ends with exactly 6 finished trials, nothing RUNNING, and the
    password is in no output and no file of the sweep folder."""
    hosts, pg = bed
    sweep = write_sweep(tmp_path, 6, extra="study: two-hosts\n")
    # A grace of 6 heartbeats: a live worker on a loaded machine is not taken for dead.
    sweep.write_text(sweep.read_text().replace("grace: 3", "grace: 6"))
    out = tmp_path / "s"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = sweep_on(hosts.a, sweep, out, pg.url, logs[0], env_for(pg, tmp_path, "env"))
    b = sweep_on(hosts.b, sweep, out, pg.url, logs[1], env_for(pg, tmp_path, "file", MNISTKIT_KILL_AT="2:3"))
    # B's process is reaped only after A ends: until then its pid still looks alive here, as the
    # pid of a worker on another machine may belong to a live process on this one (pids are per
    # machine). A takes the trial over on the heartbeat's word, not on that pid.
    wait_all([a], 240, logs, pg, "two-hosts")
    a_log, b_log = (log.read_text() for log in logs)
    assert b.wait(timeout=30) == -9, b_log
    assert a.returncode == 0, a_log
    # 6 trials count (COMPLETE); the killed one is FAIL and was retried, so it is not counted.
    assert states(pg, "two-hosts") == {"COMPLETE": 6, "FAIL": 1}, a_log
    took = re.search(r"trial (\d+) continues trial (\d+): (\S+)", a_log)
    assert took and took.group(3) == "resumed", a_log
    # The run directory agrees: one resume, from the dead worker's checkpoint.
    status = json.loads((out / "trials" / f"{int(took.group(2)):04d}" / "status.json").read_text())
    assert len(status["resumed"]) == 1 and status["status"] == "finished", status
    print(f"\n[figure] worker on A: {took.group(0)} ...")
    assert_never_written(pg.password, out, a_log, b_log)
    assert f"storage:   {pg.url}" in a_log


def test_a_database_restart_mid_sweep_costs_a_wait_not_the_sweep(bed, tmp_path: Path) -> None:
    """Workers on A and B; once the first trial is COMPLETE, the server is stopped for 3 s and
    started again (pg_ctl, fast shutdown: every connection drops; a stop, 3 s and a start rather
    than `pg_ctl restart`, whose sub-second gap a worker may not happen to hit, so the test could
    not fail). With a heartbeat every second, both workers meet the outage. Both wait, say so and
    how long, and go on; the sweep ends with its 3 trials, the one finished before the restart
    among them."""
    hosts, pg = bed
    sweep = write_sweep(tmp_path, 3, extra="study: restart\n")
    sweep.write_text(sweep.read_text().replace("grace: 3", "grace: 30"))  # the outage is no death
    out = tmp_path / "s"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = sweep_on(hosts.a, sweep, out, pg.url, logs[0], env_for(pg, tmp_path, "env"))
    b = sweep_on(hosts.b, sweep, out, pg.url, logs[1], env_for(pg, tmp_path, "file"))
    deadline = time.monotonic() + 120
    while not (study_exists(pg, "restart") and states(pg, "restart").get("COMPLETE")):
        assert time.monotonic() < deadline and a.poll() is None, logs[0].read_text()
        time.sleep(0.25)
    before = pg.sql(
        "SELECT t.number FROM trials t JOIN studies s USING (study_id) "
        "WHERE s.study_name = 'restart' AND t.state = 'COMPLETE'",
        db=DB,
    ).split()
    pg.pg_ctl("-w", "-m", "fast", "stop")
    time.sleep(3)
    pg.pg_ctl("-w", "-t", "60", "start", "-o", pg.options())
    wait_all([a, b], 240, logs, pg, "restart")
    texts = [log.read_text() for log in logs]
    assert a.returncode == 0 and b.returncode == 0, texts
    assert states(pg, "restart") == {"COMPLETE": 3}, texts
    after = pg.sql(
        "SELECT t.number FROM trials t JOIN studies s USING (study_id) "
        "WHERE s.study_name = 'restart' AND t.state = 'COMPLETE'",
        db=DB,
    ).split()
    assert set(before) <= set(after)
    waits = [float(w) for t in texts for w in re.findall(r"storage reachable again after ([\d.]+) s", t)]
    assert all("storage unreachable (10.231.0.1:5433), retrying in" in t for t in texts), texts
    assert waits, texts
    print(f"\n[figure] waits through the restart (s): {sorted(waits)}")
    assert "Traceback" not in "".join(texts)


def test_a_password_changed_mid_sweep_is_named_and_a_corrected_pgpass_continues_it(
    bed, tmp_path: Path
) -> None:
    """A worker on B reads its password from a pgpass file. Once its first trial has a heartbeat,
    it is paused (SIGSTOP: a trial can take under a second, and a worker that finished the sweep
    meanwhile would never meet the change), the role's password is changed, its connections are
    ended (as a rotation does once the pool reconnects) and it is resumed. All 3 trials are still
    to be run, so it needs a new connection: it says the server refused the login and why, not
    "unreachable", and keeps trying; once the pgpass file holds the new password it goes on, and
    the sweep ends with its 3 trials. Neither password is in its output or the sweep folder."""
    hosts, pg = bed
    sweep = write_sweep(tmp_path, 3, extra="study: rotated\n")
    sweep.write_text(sweep.read_text().replace("grace: 3", "grace: 30"))  # the wait is no death
    out, log = tmp_path / "s", tmp_path / "b.log"
    env = env_for(pg, tmp_path, "file")
    b = sweep_on(hosts.b, sweep, out, pg.url, log, env)
    new = f"rotated-{pg.password[::-1]}"
    try:
        deadline = time.monotonic() + 120
        beats = (
            "SELECT count(*) FROM trial_heartbeats JOIN trials USING (trial_id) "
            "JOIN studies s USING (study_id) WHERE s.study_name = 'rotated'"
        )
        while not (study_exists(pg, "rotated") and pg.sql(beats, db=DB) != "0"):
            assert time.monotonic() < deadline and b.poll() is None, log.read_text()
            time.sleep(0.1)
        os.killpg(b.pid, signal.SIGSTOP)
        assert states(pg, "rotated").get("COMPLETE", 0) < 3  # trials to run: it must reconnect
        pg.sql(f"ALTER ROLE {ROLE} PASSWORD '{new}'")
        pg.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
        os.killpg(b.pid, signal.SIGCONT)
        refused = (
            "storage refused the login (10.231.0.1:5433): password authentication failed for user "
            '"sweeper"; retrying in'
        )
        deadline = time.monotonic() + 60
        while refused not in log.read_text():
            assert time.monotonic() < deadline and b.poll() is None, log.read_text()
            time.sleep(0.25)
        pgpass = Path(env["PGPASSFILE"])
        pgpass.write_text(pgpass.read_text().replace(pg.password, new))
        wait_all([b], 240, [log], pg, "rotated")
    finally:
        if b.poll() is None:  # failed while it was paused or waiting: no worker outlives the test
            os.killpg(b.pid, signal.SIGKILL)
        pg.sql(f"ALTER ROLE {ROLE} PASSWORD '{pg.password}'")  # the other tests use the first one
    text = log.read_text()
    assert b.returncode == 0, text
    assert states(pg, "rotated") == {"COMPLETE": 3}, text
    assert "storage reachable again after" in text, text
    assert "Traceback" not in text
    assert_never_written(pg.password, out, text)
    assert_never_written(new, out, text)


def _fails_fast(host: netns.Host, url: str, env: dict[str, str], tmp_path: Path, name: str):
    sweep = write_sweep(tmp_path, 2, extra=f"study: {name}\n")
    out = tmp_path / name
    t0 = time.monotonic()
    res = host.run(
        [sys.executable, "-m", "mnistkit", "sweep", str(sweep), "--out", str(out), "--storage", url],
        env=env, timeout=30,
    )  # fmt: skip
    return res, time.monotonic() - t0, out


def test_a_wrong_password_or_an_unreachable_host_is_one_line_exit_2_nothing_created(
    bed, tmp_path: Path
) -> None:
    hosts, pg = bed
    wrong = "wrong-" + pg.password[::-1]
    env = {**env_for(pg, tmp_path, "env"), "PGPASSWORD": wrong}
    res, seconds, out = _fails_fast(hosts.b, pg.url, env, tmp_path, "wrong-password")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "10.231.0.1" in lines[0], lines
    assert "password authentication failed" in lines[0], lines
    assert wrong not in res.stderr + res.stdout and pg.password not in res.stderr + res.stdout
    assert not out.exists() and not study_exists(pg, "wrong-password")
    print(f"\n[figure] wrong password: exit 2 after {seconds:.1f} s: {lines[0]}")

    # A host that accepts the connection but never answers (a hung server, a half-open network):
    # libpq's connect timeout ends the wait. Without it, the worker would hang for good.
    silent = (
        "import socket,time;s=socket.create_server(('10.231.0.1',5999));print(1,flush=True);time.sleep(120)"
    )
    listener = hosts.a.popen([sys.executable, "-c", silent], stdout=subprocess.PIPE, text=True)
    try:
        listener.stdout.readline()
        url = pg.url.replace(":5433", ":5999")
        res, seconds, out = _fails_fast(hosts.b, url, env_for(pg, tmp_path, "env"), tmp_path, "silent")
    finally:
        listener.kill()
        listener.wait()
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "10.231.0.1:5999" in lines[0], res.stderr
    assert "timeout" in lines[0] and not out.exists(), lines
    print(f"[figure] silent host: exit 2 after {seconds:.1f} s: {lines[0]}")
