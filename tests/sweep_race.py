"""A process that takes budget slots as fast as it can, for the exact-budget tests (issue 24).

``python tests/sweep_race.py URL STUDY BUDGET READY GO``: opens the study through mnistkit's own
storage, touches READY, waits for GO to exist (so every racer starts at once), then claims trials
with :func:`mnistkit.sweeps.slots.claim` (the decision the sweep workers make) and finishes each at
once, until the budget is taken; prints how many it finished. ``study.ask`` is slowed down by
0.3 s, which widens the window between counting the trials and creating one: without the lock that
serializes the decision, racers that count at the same time all take the last slots.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna

from mnistkit.sweeps.slots import claim
from mnistkit.sweeps.storage import open_storage
from mnistkit.sweeps.trials import quiet_optuna

SLOW_ASK_S = 0.3


def main(url: str, study_name: str, need: int, ready: Path, go: Path) -> None:
    quiet_optuna()
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    ask = optuna.Study.ask

    def slow_ask(self: optuna.Study, *args: object, **kwargs: object) -> optuna.Trial:
        time.sleep(SLOW_ASK_S)
        return ask(self, *args, **kwargs)

    optuna.Study.ask = slow_ask  # type: ignore[method-assign]
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    mine = 0
    while True:
        got = claim(study, need, url, storage)
        if got == "done":
            break
        if got == "wait":
            time.sleep(0.05)
            continue
        study.tell(got, 1.0)
        mine += 1
    print(mine, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
