"""Which embedded storage for `mnistkit sweep --workers N`: SQLite or Optuna's journal file?

Runs N worker processes against one storage file, each doing TRIALS quick trials (suggest 2
params, report 3 intermediate values, finish), and prints wall time, errors, finished trials and
whether the storage supports heartbeats (needed to detect a worker killed with kill -9).

    python bench/sweep_storage.py [--workers 2] [--trials 60]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import tempfile
import time
import traceback
from pathlib import Path

import optuna


def make_storage(kind: str, folder: Path) -> optuna.storages.BaseStorage:
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(folder / "study.log")))
    path = folder / "study.db"
    kwargs: dict = {}
    if kind == "sqlite-wal":
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA journal_mode=WAL")
        kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs=kwargs, heartbeat_interval=1)


def worker(kind: str, folder: str, trials: int, errors: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name="s", storage=make_storage(kind, Path(folder)))

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -1, 1)
            y = trial.suggest_int("y", 0, 10)
            for step in range(3):
                trial.report(x * x + y + step, step)
            return x * x + y

        study.optimize(objective, n_trials=trials)
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=2)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=60)
    args = ap.parse_args()
    for kind in ("sqlite", "sqlite-wal", "journal"):
        with tempfile.TemporaryDirectory() as folder:
            storage = make_storage(kind, Path(folder))
            optuna.create_study(study_name="s", storage=storage)
            errors: mp.Queue = mp.Queue()
            t0 = time.perf_counter()
            procs = [
                mp.Process(target=worker, args=(kind, folder, args.trials, errors))
                for _ in range(args.workers)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            wall = time.perf_counter() - t0
            study = optuna.load_study(study_name="s", storage=make_storage(kind, Path(folder)))
            done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            errs = []
            while not errors.empty():
                errs.append(errors.get())
            heartbeat = isinstance(study._storage, optuna.storages._heartbeat.BaseHeartbeat)
            print(
                f"{kind:<11} {args.workers} workers x {args.trials} trials: {wall:6.1f} s, "
                f"{done} finished, {len(errs)} worker errors, heartbeat support: {heartbeat}"
            )
            for e in errs[:2]:
                print("   ", e.splitlines()[0])


if __name__ == "__main__":
    main()
