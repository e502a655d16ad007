"""TensorBoard logging (``train.tensorboard: true``): a consumer of the loop's epoch-end hook.

Each metrics.csv row becomes scalars under run directory / tb, flushed every epoch so a killed
run keeps every finished epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistkit.errors import RunError, set_hint


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or a RunError saying how to install tensorboard (checked before the
    data is loaded, so a missing package fails at once)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError(
            "train.tensorboard is true but the tensorboard package is not installed: "
            "pip install tensorboard (or pip install 'mnistkit[tensorboard]'), or "
            + set_hint("train.tensorboard", "false")
        ) from None
    return SummaryWriter


# metrics.csv column -> TensorBoard tag: losses and accuracies grouped so splits share a chart.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "test_acc": "accuracy/test",
    "lr": "lr",
    "seconds": "time/epoch_seconds",
    "samples_per_s": "time/samples_per_s",
}


class TensorBoard:
    """Logs each epoch's row; ``epochs_done`` > 0 for a resumed run."""

    def __init__(self, log_dir: Path, epochs_done: int) -> None:
        # purge_step: a resumed run drops what a killed process logged after the checkpoint it
        # resumes from, so every epoch appears once.
        self.writer = summary_writer_class()(
            log_dir=str(log_dir), purge_step=epochs_done + 1 if epochs_done else None
        )

    def on_epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # a killed run keeps every finished epoch

    def close(self) -> None:
        self.writer.close()
