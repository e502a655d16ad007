"""Workers: the budget loop, the study's sampler and pruner, extra worker processes, Ctrl-C.

The budget is the number of *finished* trials in the storage (COMPLETE, PRUNED and FAIL; a trial
that was retried after its worker died counts once, through its retry), so it holds across
workers, machines and restarts, and it is exact: before each trial a worker takes a slot only if
finished + RUNNING + WAITING trials leave one, deciding under a lock that all the study's workers
share (:mod:`mnistkit.sweeps.slots`: a PostgreSQL advisory lock, or a file lock next to the
SQLite file). So `trials: 6` ends with 6 finished trials whatever the number of workers (unlike
Optuna's ``MaxTrialsCallback``, which overshoots by up to N-1), and a finished sweep started
again runs nothing.

A worker that finds the budget taken while other trials are still RUNNING waits for them: they
either finish, or their worker died and their heartbeat goes stale, and then this worker retries
them from their checkpoint (Optuna's ``fail_stale_trials`` + ``RetryHeartbeatStaleTrialCallback``).
So no trial is left RUNNING when the last worker exits.

The trial loop is Optuna's ``_run_trial`` without its ``ask``: the trial comes from the decision
above, then runs with a heartbeat thread and is told its result.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mnistkit.errors import RunError
from mnistkit.sweeps.objective import Objective, SweepInterrupted, TrialFailed, encoded_choices
from mnistkit.sweeps.slots import claim
from mnistkit.sweeps.spec import Sweep
from mnistkit.sweeps.storage import open_storage
from mnistkit.sweeps.tracked import tag_trial, tracks
from mnistkit.sweeps.trials import quiet_optuna


def budget(sweep: Sweep) -> int:
    """Trials to finish: the file's budget (a grid has no more points than its combinations)."""
    if sweep.spec.sampler.name == "grid":
        size = 1
        for ps in sweep.spec.params.values():
            size *= len(ps.choice or [])
        return min(sweep.spec.trials, size)
    return sweep.spec.trials


def fingerprint(sweep: Sweep) -> str:
    """What makes trials of one study comparable: search space, metric, direction, base recipe."""
    from mnistkit.recipe.schema import resolved_dict

    base = resolved_dict(sweep.base)
    base.pop("train", None)  # loop options (threads, progress) may differ between machines
    base.pop("name", None)
    base.get("data", {}).pop("root", None)
    return json.dumps(
        {
            "params": {n: ps.model_dump(mode="json") for n, ps in sweep.spec.params.items()},
            "metric": sweep.spec.metric,
            "direction": sweep.direction,
            "base": base,
        },
        sort_keys=True,
    )


def make_sampler(sweep: Sweep, seed_offset: int) -> optuna.samplers.BaseSampler:
    s = sweep.spec.sampler
    # Extra workers (and restarts) must not replay the first worker's sequence: offset the seed.
    seed = None if s.seed is None else s.seed + seed_offset
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        space = {n: encoded_choices(ps) for n, ps in sweep.spec.params.items()}
        return optuna.samplers.GridSampler(space, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    p = sweep.spec.pruner
    if p.name == "median":
        # Steps are 1-based epochs; Optuna prunes from step == n_warmup_steps on.
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs + 1
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=sweep.base.epochs, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(
    sweep: Sweep, url: str, *, create: bool, seed_offset: int = 0, storage: Any = None
) -> optuna.Study:
    """The sweep's study (created on first use); refuses to mix a different search space into it."""
    quiet_optuna()
    storage = storage or open_storage(url, sweep.spec.heartbeat)
    kwargs = {"sampler": make_sampler(sweep, seed_offset), "pruner": make_pruner(sweep)}
    if create:
        study = optuna.create_study(
            study_name=sweep.study_name,
            storage=storage,
            direction=sweep.direction,
            load_if_exists=True,
            **kwargs,
        )
        fp = fingerprint(sweep)
        old = study.user_attrs.get("mnistkit_space")
        if old is None:
            study.set_user_attr("mnistkit_space", fp)
            study.set_user_attr("metric", sweep.spec.metric)
        elif old != fp:
            raise RunError(
                f"study {sweep.study_name!r} in this storage was started with a different search "
                "space, metric or base recipe; its trials would not be comparable. Give the sweep a "
                "new `study:` name (or --out folder), or restore the sweep file"
            )
        return study
    return optuna.load_study(study_name=sweep.study_name, storage=storage, **kwargs)


@dataclass
class WorkerOutcome:
    status: str  # done | timeout | interrupted
    ran: int  # trials this worker ran


def run_worker(
    sweep: Sweep,
    sweep_dir: Path,
    url: str,
    data_dir: Path | None,
    worker_index: int,
    refresh: Callable[[optuna.Study], None] = lambda study: None,
) -> WorkerOutcome:
    """Run trials until the study's budget is reached (or the timeout, or Ctrl-C)."""
    storage = open_storage(url, sweep.spec.heartbeat)
    study = open_study(sweep, url, create=False, seed_offset=0, storage=storage)
    offset = 1000 * worker_index + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sweep, offset)
    # What Optuna's optimize() sets for its loop: samplers and pruners may call study.stop()
    # (the grid sampler when its grid is used up; the budget ends the loop here instead).
    study._thread_local.in_optimize_loop = True
    objective = Objective(sweep, sweep_dir, data_dir, on_epoch=lambda: refresh(study))
    need = budget(sweep)
    hb = sweep.spec.heartbeat
    start = time.monotonic()
    ran = 0
    after = [partial(tag_trial, sweep, sweep_dir)] if tracks(sweep) else []  # MLflow: state tags
    try:
        while True:
            if sweep.spec.timeout is not None and time.monotonic() - start >= sweep.spec.timeout:
                return WorkerOutcome("timeout", ran)
            trial = claim(study, need, url, storage)
            if trial == "done":
                return WorkerOutcome("done", ran)
            if trial == "wait":
                refresh(study)
                time.sleep(min(hb.interval, 2))  # wait: they finish, or go stale and are retried
                continue
            objective.current = None
            try:
                run_trial(study, trial, objective, after)
            finally:
                ran += objective.current is not None
                refresh(study)
    except (SweepInterrupted, KeyboardInterrupt):
        if objective.current is not None:
            requeue(study, objective.current)
        return WorkerOutcome("interrupted", ran)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Objective,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
) -> None:
    """Run one claimed trial with its heartbeat and tell the study how it ended (Optuna's
    ``_run_trial`` after its ``ask``). A failure the objective reports (TrialFailed) ends the
    trial FAIL and the worker goes on; anything else (Ctrl-C) is told as FAIL and raised."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    state, value, raised = TrialState.COMPLETE, None, None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialFailed:
            state = TrialState.FAIL
        except (Exception, KeyboardInterrupt) as exc:
            state, raised = TrialState.FAIL, exc
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # failed meanwhile
        study.tell(trial, value, state=state, skip_if_finished=True)
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != state:
        # Its heartbeat went stale (a machine so busy that the heartbeat thread stalled, or the
        # storage unreachable for longer than the grace period): another worker failed it and
        # queued its retry, which continues from this run directory's last checkpoint.
        print(
            f"trial {trial.number} was marked stale meanwhile ({frozen.state.name}); its retry continues it",
            file=sys.stderr,
            flush=True,
        )
    for cb in callbacks:
        cb(study, frozen)
    if raised is not None:
        raise raised


def requeue(study: optuna.Study, number: int) -> None:
    """A trial stopped by Ctrl-C is FAIL ("interrupted"); queue its continuation, as the
    heartbeat callback does for a dead worker's trial, so the next `mnistkit sweep` resumes it."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    for t in study.get_trials(deepcopy=True):
        if t.number == number and t.state == TrialState.FAIL:
            RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, t)


# ---------------------------------------------------------------------- several processes
def run_processes(
    args: list[str],
    workers: int,
    log_dir: Path,
    poll: Callable[[], None],
) -> tuple[list[int], bool]:
    """Start ``workers`` worker processes (``mnistkit sweep ... --worker-index K``) and wait.

    Each runs in its own session, so a Ctrl-C in the terminal reaches only this process, which
    passes it on once: every worker stops at its next safe point. Returns the exit codes and
    whether Ctrl-C was pressed.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    interrupted = [False]

    def forward(signum: int, frame: Any) -> None:
        interrupted[0] = True
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        for k in range(workers):
            log = open(log_dir / f"worker-{k}.log", "ab")  # noqa: SIM115 (closed with the process)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mnistkit", *args, "--worker-index", str(k)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
            _share_cores(procs[-1].pid, k, workers)
        while any(p.poll() is None for p in procs):
            poll()
            time.sleep(1.0)
        poll()
    finally:
        signal.signal(signal.SIGINT, previous)
    return [p.returncode for p in procs], interrupted[0]


def _share_cores(pid: int, k: int, workers: int) -> None:
    """Give worker k its share of this process's cores. Each run sizes its torch thread pool by
    the cores it may use (training/threads.core_share), so N workers on N cores run one thread each
    instead of N threads each spin-waiting for the others (docs/performance.md)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        if workers <= len(cores):
            share = [c for i, c in enumerate(cores) if i % workers == k]
        else:
            share = [cores[k % len(cores)]]
        os.sched_setaffinity(pid, set(share))
    except (AttributeError, OSError):  # not Linux, or the process already ended
        pass
