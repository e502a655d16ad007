"""CPU threads that fit the machine: the cores this process may use, an OpenMP wait policy that
does not spin against other processes, and ``train.threads: auto``'s probe of the real step.

Torch-free on purpose: the CLI calls :func:`quiet_openmp` before torch is first imported (the
OpenMP runtime reads its settings once, when torch loads it), and the probe sets the thread
count through the callable it is given (``torch.set_num_threads`` in a run, a list in tests).

Why (issue 18, docs/performance.md): on a busy 2-core machine torch's default 2 threads
spin-wait for each other while another process holds a core, and an mlp5 epoch took 2.2-2.8 s
instead of 0.9-1.0 s with one thread; with several jobs it was 13-28x slower. No single count is
right on both a quiet and a busy machine, so ``auto`` measures.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

#: Set in the environment before torch loads, unless the user set them: OpenMP threads sleep
#: as soon as they have no work instead of spinning (libgomp spins ~300,000 iterations by
#: default, the Intel runtime 200 ms), so a process that shares its cores does not burn them.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
#: Which of WAIT_POLICY mnistkit set (not the user): inherited by torchrun ranks and sweep
#: workers, so they too know the value is not the user's.
SET_BY_MNISTKIT_ENV = "MNISTKIT_SET_OPENMP"
#: Fewer threads are chosen only when their median step is this many times faster. With the
#: OpenMP threads sleeping instead of spinning, more threads no longer collapse under load, and a
#: short probe's small gaps misled: on the loaded 2-core VM it chose 1 thread on 12-23 % gaps and
#: 1 thread then ran mlp5 2-4.7x slower than 2 (docs/performance.md).
FEWER_THREADS_MARGIN = 1.5
#: The load average (1 min) must move by more than this between epochs to re-probe.
LOAD_CHANGE = 1.0


def quiet_openmp(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set WAIT_POLICY's variables the user did not set; returns the names it set. Call before
    torch is first imported: afterwards the OpenMP runtime has read its settings already."""
    env = os.environ if environ is None else environ
    ours = [k for k in env.get(SET_BY_MNISTKIT_ENV, "").split(",") if k]
    for key, value in WAIT_POLICY.items():
        if key not in env:
            env[key] = value
            ours.append(key)
    if ours:
        env[SET_BY_MNISTKIT_ENV] = ",".join(dict.fromkeys(ours))
    return ours


def openmp_record(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """For env.json: the wait policy in effect and who chose it (``mnistkit`` or ``user``)."""
    env = os.environ if environ is None else environ
    ours = set(env.get(SET_BY_MNISTKIT_ENV, "").split(","))
    return {
        key: {"value": env[key], "set_by": "mnistkit" if key in ours else "user"}
        for key in (*WAIT_POLICY, "GOMP_SPINCOUNT")
        if key in env
    }


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a sweep worker's share, a
    container's limit), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def core_share(environ: MutableMapping[str, str] | None = None) -> int:
    """This process's share of the cores: the N processes of one job on one machine (torchrun's
    LOCAL_WORLD_SIZE, see training/distributed.py) get cores // N each, at least 1. Sweep workers
    get theirs as an affinity mask (sweeps/worker.py), which available_cores reads."""
    env = os.environ if environ is None else environ
    local = env.get("LOCAL_WORLD_SIZE", "")
    n = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, available_cores() // n)


def candidates(cores: int) -> list[int]:
    """Thread counts the probe tries: 1, 2, 4, ... and ``cores`` itself (every count up to 4)."""
    counts = {c for c in range(1, min(cores, 4) + 1)}
    c = 4
    while c < cores:
        counts.add(c)
        c *= 2
    counts.add(cores)
    return sorted(counts)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


@dataclass
class Decision:
    """What the probe measured and chose: shown in the run header, kept in env.json."""

    chosen: int
    ms_per_step: dict[int, float]  # median per candidate
    steps_timed: dict[int, int]  # how many steps each median is of
    load: float | None
    epoch: int  # the epoch the probe started in
    why: str  # "start" or "load 2.3 → 4.1"

    def describe(self) -> str:
        probe = ", ".join(f"{n}→{ms:.0f} ms" for n, ms in sorted(self.ms_per_step.items()))
        load = f"; load {self.load:.1f}" if self.load is not None else ""
        again = f", re-probed at epoch {self.epoch}: {self.why}" if self.why != "start" else ""
        return f"threads: {self.chosen} (auto: probe {probe} per step{load}{again})"

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "ms_per_step": {str(n): round(ms, 3) for n, ms in sorted(self.ms_per_step.items())},
            "steps_timed": {str(n): k for n, k in sorted(self.steps_timed.items())},
            "load": None if self.load is None else round(self.load, 2),
            "epoch": self.epoch,
            "why": self.why,
        }


@dataclass
class ThreadProbe:
    """``train.threads: auto``: time the real training step at each candidate count, keep the
    fastest. Nothing is skipped or repeated: the probe's steps are training steps.

    The loop calls :meth:`tick` before every step and :meth:`epoch_start` before every epoch.
    After ``warmup`` untimed steps, candidates run in blocks of ``block`` steps, in alternating
    order over ``rounds`` rounds (1,2,4 then 4,2,1), so a change of load during the probe lands on
    all of them; the first step of a block (the pool resizing) and the last step before an epoch
    boundary (its interval holds the evaluation) are not timed.
    The median step time per candidate decides. When the load average has moved by more than
    LOAD_CHANGE since the last decision, the next epoch starts with a new probe.
    """

    cores: list[int]
    set_threads: Callable[[int], None]
    on_decision: Callable[[Decision], None]
    clock: Callable[[], float] = time.perf_counter
    load: Callable[[], float | None] = load_average
    block: int = 6
    rounds: int = 2
    warmup: int = 3  # a run's first steps (allocations, kernel set-up) are not timed
    decisions: list[Decision] = field(default_factory=list)
    _plan: list[int] = field(default_factory=list)  # the thread count of each remaining probe step
    _times: dict[int, list[float]] = field(default_factory=dict)
    _last: float | None = None
    _current: int | None = None  # the count the step now running uses (None: not probing)
    _timed: bool = False
    _epoch: int = 0
    _why: str = "start"
    _since: int | None = None  # the epoch the current probe started in

    def __post_init__(self) -> None:
        self._arm("start")

    @property
    def probing(self) -> bool:
        return bool(self._plan) or self._current is not None

    @property
    def threads(self) -> int:
        return self.decisions[-1].chosen if self.decisions else self.cores[-1]

    def _arm(self, why: str, epoch: int | None = None) -> None:
        self._why, self._since = why, epoch
        self._times = {c: [] for c in self.cores}
        self._plan = []
        for r in range(self.rounds):
            for c in self.cores if r % 2 == 0 else reversed(self.cores):
                self._plan += [c] * self.block

    def epoch_start(self, epoch: int) -> None:
        self._epoch, self._last = epoch, None  # the eval/checkpoint gap is not a step
        if self._since is None:
            self._since = epoch
        if self.probing or not self.decisions:
            return
        before, now = self.decisions[-1].load, self.load()
        if before is not None and now is not None and abs(now - before) > LOAD_CHANGE:
            self._arm(f"load {before:.1f} → {now:.1f}", epoch)

    def tick(self) -> None:
        """Before each training step: time the step that just ended, set up the next one."""
        now = self.clock()
        if self._current is not None and self._timed and self._last is not None:
            self._times[self._current].append(now - self._last)
        self._last = now
        if self.warmup > 0 and not self.decisions:  # only before the first probe
            self.warmup -= 1
            return
        if self._plan:
            nxt = self._plan.pop(0)
            self._timed = nxt == self._current  # the first step of a block is not timed
            if nxt != self._current:
                self.set_threads(nxt)
            self._current = nxt
        elif self._current is not None:
            self._decide()

    def _decide(self) -> None:
        import statistics  # not at module level: the CLI imports this module at start-up

        medians = {c: statistics.median(ts) * 1000 for c, ts in self._times.items() if ts}
        chosen = self.cores[-1] if not medians else max(medians)
        for c in sorted(medians, reverse=True):  # fewer threads only when clearly faster
            if medians[c] * FEWER_THREADS_MARGIN < medians[chosen]:
                chosen = c
        self._current = None
        self.set_threads(chosen)
        timed = {c: len(ts) for c, ts in self._times.items()}
        decision = Decision(chosen, medians, timed, self.load(), self._since or self._epoch, self._why)
        self.decisions.append(decision)
        self.on_decision(decision)


def torch_loaded() -> bool:
    """Whether torch is imported already (then quiet_openmp comes too late for this process)."""
    return "torch" in sys.modules
