"""The budget is exact (issue 24): `trials: 6` with several workers ends with 6 finished trials.

Before each trial a worker counts finished + RUNNING + WAITING trials and creates one only if a
slot is left, under a lock that all the study's workers share (mnistkit/sweeps/slots.py: a file
lock next to study.db here; a PostgreSQL advisory lock in tests/test_sweeps_two_hosts.py). Without
it, two workers that count at the same moment both take the last slot (Optuna's MaxTrialsCallback
overshoots by up to N-1, and so did mnistkit: 7 of 6 with two workers).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
from sweep_helpers import REPO, finished, read_trials, write_sweep

RACE = Path(__file__).with_name("sweep_race.py")


def race(url: str, study_name: str, need: int, folder: Path, hosts: list) -> list[int]:
    """Start one racer per entry of ``hosts`` (a callable that turns argv into a Popen: this machine,
    or host A / host B), start them all at once, return how many trials each finished."""
    procs = []
    for k, start in enumerate(hosts):
        ready, go = folder / f"ready-{k}", folder / "go"
        argv = [sys.executable, str(RACE), url, study_name, str(need), str(ready), str(go)]
        procs.append(start(argv))
    deadline = time.monotonic() + 60
    while not all((folder / f"ready-{k}").exists() for k in range(len(hosts))):
        assert time.monotonic() < deadline, "the racers did not start within 60 s"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (folder / "go").touch()
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        counts.append(int(out.split()[-1]))
    return counts


def local(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_racing_workers_take_exactly_the_budget_sqlite(tmp_path: Path) -> None:
    """Four processes claim slots of a 6-trial budget at once, each count-to-create window
    widened to 0.3 s: exactly 6 trials exist at the end, all finished."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="race", storage=url)
    counts = race(url, "race", 6, tmp_path, [local] * 4)
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    assert sum(counts) == 6 and len(trials) == 6, counts
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}


def test_two_workers_finish_exactly_six_of_six(cli, tmp_path: Path) -> None:
    """A real sweep, `--workers 2`, `trials: 6`: 6 finished trials, none RUNNING, both workers
    ran trials (before issue 24 this ended with 7)."""
    sweep = write_sweep(tmp_path, 6, extra="study: exact\n")
    out = tmp_path / "s"
    res = cli("sweep", sweep, "--out", out, "--workers", "2", "--progress", "plain",
              "--set", "epochs=1", "--set", "data.limit=240", timeout=250)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    assert len(rows) == 6 and len(finished(rows)) == 6, rows
    assert not [r for r in rows if r["state"] in ("RUNNING", "WAITING")]
    # Read by SQL, not through mnistkit: Optuna's trials table holds 6 trials, all COMPLETE.
    with sqlite3.connect(out / "study.db") as con:
        states = con.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall()
    assert states == [("COMPLETE", 6)], states


def finish_with_a_dropped_first_heartbeat(url: str, monkeypatch) -> int:
    """A worker's loop (claim, finish, claim) over a 2-trial study at ``url`` whose first trial's
    first heartbeat raises a dropped connection; returns that trial's id once the loop ends (it
    fails the test if the loop waits for longer than 60 s, 30 grace periods)."""
    import sqlalchemy.exc

    from mnistkit.sweeps.slots import claim
    from mnistkit.sweeps.spec import HeartbeatSpec
    from mnistkit.sweeps.storage import open_storage
    from mnistkit.sweeps.trials import quiet_optuna

    quiet_optuna()
    storage = open_storage(url, HeartbeatSpec(interval=1, grace=2, retries=3))
    study = optuna.create_study(study_name="orphan", storage=storage)
    real, dropped = storage.record_heartbeat, []

    def first_one_drops(trial_id: int) -> None:
        if not dropped:
            dropped.append(trial_id)
            lost = Exception("server closed the connection unexpectedly")
            raise sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats", {}, lost)
        real(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", first_one_drops)
    deadline = time.monotonic() + 60
    while (got := claim(study, 2, url, storage)) != "done":
        if got == "wait":
            assert time.monotonic() < deadline, "still waiting for a trial nobody runs"
            time.sleep(0.2)
            continue
        study.tell(got, 1.0)
    assert dropped
    return dropped[0]


ORPHAN_SQL = (
    "SELECT state, count(*) FROM trials GROUP BY state",
    "SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a USING (trial_id) "
    "WHERE t.trial_id = {id} AND a.key = 'reason'",
)


def test_a_trial_created_just_before_the_connection_dropped_is_retried_not_waited_for(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The connection drops after `ask()` created a trial but before its first heartbeat was
    written (CI's database restart hit this window once). The decision is tried again and makes
    another trial; the first one stays RUNNING with no heartbeat, which Optuna never counts as
    stale, so every worker waited for it forever. Here the worker's loop must end: the trial left
    behind goes stale after the grace period (2 s) and is retried like a dead worker's, and the
    study ends with its budget, 2 finished trials, nothing RUNNING. (The same on PostgreSQL:
    tests/test_sweeps_postgres.py.)"""
    lost = finish_with_a_dropped_first_heartbeat(f"sqlite:///{tmp_path / 'study.db'}", monkeypatch)
    assert "storage unreachable" in capsys.readouterr().err
    with sqlite3.connect(tmp_path / "study.db") as con:
        states = dict(con.execute(ORPHAN_SQL[0]).fetchall())
        left = con.execute(ORPHAN_SQL[1].format(id=lost)).fetchone()
    assert states == {"COMPLETE": 2, "FAIL": 1}, states  # the FAIL one is counted by its retry
    assert left[0] == "FAIL" and "never started" in left[1], left


def test_a_worker_lost_between_creating_a_trial_and_its_heartbeat_leaves_a_trial_that_is_retried(
    cli, tmp_path: Path
) -> None:
    """The study already holds a RUNNING trial without a heartbeat, as a worker killed between
    `ask()` and the first heartbeat leaves it. `mnistkit sweep` (`trials: 2`) runs one trial,
    then finds that one stale and starts its retry afresh, saying so; trials.csv shows why the
    trial failed and the budget counts 2."""
    sweep = write_sweep(tmp_path, 2, extra="study: orphan\n")
    out = tmp_path / "s"
    out.mkdir()
    study = optuna.create_study(study_name="orphan", storage=f"sqlite:///{out / 'study.db'}")
    lost = study.ask()  # RUNNING, never a heartbeat
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=250)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"continues trial {lost.number}: started afresh: it never began" in res.stderr, res.stderr
    rows = {int(r["number"]): r for r in read_trials(out)}
    assert rows[lost.number]["state"] == "FAIL" and "never started" in rows[lost.number]["reason"]
    assert "retried" in rows[lost.number]["reason"], rows
    assert len(finished(list(rows.values()))) == 2, rows
    assert not [r for r in rows.values() if r["state"] in ("RUNNING", "WAITING")]
