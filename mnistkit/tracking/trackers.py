"""One tracker interface, two implementations: TensorBoard and MLflow (``train.track``).

The session calls a tracker at three points: :meth:`Tracker.log_epochs` after each checkpoint
(metrics.csv then lists every finished epoch; a tracker logs the ones it has not logged yet, so
an epoch that ``--resume`` redoes is never logged twice), and :meth:`Tracker.close` once at the
end, after status.json, the plots and the predictions are written (also on Ctrl-C and failures).
Only rank 0 of a distributed run has trackers: one tracked run per job.

A tracker never fails a training run: MLflow problems are said once and the run goes on;
what was not sent stays in the run directory for ``mnistkit track RUN_DIR``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from mnistkit.errors import RunError
from mnistkit.recipe.sections import TrainSection
from mnistkit.recipe.tracking import missing_mlflow
from mnistkit.runs.directory import RunDir


def wanted(train: TrainSection) -> list[str]:
    """The trackers a recipe asks for ('tensorboard' also for tensorboard: true)."""
    names = list(dict.fromkeys(train.track))
    if train.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


class Tracker(ABC):
    """What the session logs a run to, besides the run directory."""

    @abstractmethod
    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv's rows as they are now: log those not logged yet."""

    @abstractmethod
    def close(self) -> None:
        """The run has ended (status.json says how): log what is left, release resources."""


class TensorBoardTracker(Tracker):
    """Scalars under run directory / tb (see :mod:`mnistkit.tracking.tensorboard`)."""

    def __init__(self, run: RunDir, epochs_done: int) -> None:
        from mnistkit.tracking.tensorboard import TensorBoard

        self.board = TensorBoard(run.tensorboard_dir, epochs_done)
        self.done = epochs_done

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["epoch"] > self.done:
                self.board.on_epoch_end(row, False)
                self.done = row["epoch"]

    def close(self) -> None:
        self.board.close()


class MlflowTracker(Tracker):
    """Live MLflow logging; on the first failure it says what failed, once, and stops trying
    (each try could wait for a timeout): everything stays in the run directory."""

    def __init__(
        self, run: RunDir, say: Callable[[str], None], command: str, parent: str | None = None
    ) -> None:
        self.run, self.say, self.command, self.parent = run, say, command, parent
        self.record: Any = None
        self.failed = False
        self._try(self._open)

    def _open(self) -> None:
        from mnistkit.tracking.mlflow_record import MlflowRecord

        self.record = MlflowRecord(self.run, parent_run_id=self.parent)
        run_id = self.record.open()
        self.say(
            f"MLflow run {run_id} (experiment {self.record.expected.settings.experiment!r}) "
            f"at {self.record.shown_uri}"
        )

    def _try(self, action: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as exc:
            from mnistkit.tracking.mlflow_record import mask

            self.failed = True
            where = self.record.shown_uri if self.record is not None else "the tracking URI"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            why = mask(f"{type(exc).__name__}: {first}")
            if self.record is not None:
                try:
                    self.record.note_pending(why)
                except OSError:
                    pass
            self.say(
                f"MLflow: could not log to {where} ({why}); training goes on and nothing is lost: "
                f"send it later with `{self.command} track {self.run.path}`"
            )

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        self._try(lambda: self.record.log_rows(rows))

    def close(self) -> None:
        self._try(self.record.close if self.record is not None else lambda: None)


def open_trackers(
    train: TrainSection,
    run: RunDir,
    epochs_done: int,
    say: Callable[[str], None],
    command: str,
    mlflow_parent: str | None = None,
) -> list[Tracker]:
    """The recipe's trackers, started (rank 0 only: the session does not call this elsewhere);
    ``mlflow_parent``: a sweep's parent run, under which this run is nested."""
    out: list[Tracker] = []
    for name in wanted(train):
        if name == "tensorboard":
            out.append(TensorBoardTracker(run, epochs_done))
        else:
            out.append(MlflowTracker(run, say, command, mlflow_parent))
    return out


def check_installed(train: TrainSection) -> None:
    """Before any data is loaded: a missing package fails the run at once."""
    if "tensorboard" in wanted(train):
        from mnistkit.tracking.tensorboard import summary_writer_class

        summary_writer_class()
    why = missing_mlflow(train)
    if why is not None:
        raise RunError(why)
