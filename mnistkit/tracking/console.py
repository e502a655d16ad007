"""What the user sees while a run trains: Rich live display on a terminal, plain lines elsewhere.

The loop calls ``progress`` at most every PROGRESS_INTERVAL_S seconds and the Rich display is
refreshed only then (``auto_refresh=False``: no background thread competing for the 2 cores).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

COLUMNS = [
    ("epoch", "epoch", "{:d}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_acc", "train acc", "{:.2%}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("val_acc", "val acc", "{:.2%}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("test_acc", "test acc", "{:.2%}"),
    ("seconds", "s", "{:.2f}"),
    ("samples_per_s", "samples/s", "{:,.0f}"),
]


def _fmt(key: str, value: Any) -> str:
    for k, _, fmt in COLUMNS:
        if k == key and value is not None:
            return fmt.format(value)
    return "" if value is None else str(value)


class Reporter:
    """Base reporter: plain text lines (CI logs, pipes). RichReporter overrides the display."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.epochs = 0
        self.has_val = False

    # -- lifecycle -------------------------------------------------------------------------
    def header(self, lines: list[tuple[str, str]]) -> None:
        if self.quiet:
            return
        for key, value in lines:
            self.console.print(f"{key + ':':<10} {value}")

    def model_summary(self, rows: list[tuple[str, str, str, int]], total: int) -> None:
        """rows: (index, type, output shape, parameters)."""
        if self.quiet:
            return
        table = Table(title="model", title_justify="left", show_edge=False, pad_edge=False)
        for col, justify in (
            ("#", "right"),
            ("layer", "left"),
            ("output", "left"),
            ("params", "right"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for idx, kind, shape, n in rows:
            table.add_row(idx, kind, shape, f"{n:,}")
        table.add_row("", "total", "", f"{total:,}", style="bold")
        self.console.print(table)

    def start(self, epochs: int, has_val: bool) -> None:
        self.epochs, self.has_val = epochs, has_val

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def progress(self, step: int, steps: int, loss: float, acc: float, rate: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        if self.quiet:
            return
        parts = [f"epoch {row['epoch']}/{self.epochs}"]
        for key, label, _ in COLUMNS[1:]:
            if key in row and row[key] is not None:
                parts.append(f"{label} {_fmt(key, row[key])}")
        self.console.print("  ".join(parts) + ("  *" if improved else ""))

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def stop(self) -> None:
        pass

    def summary(self, lines: list[tuple[str, str]]) -> None:
        if self.quiet:
            return
        for key, value in lines:
            self.console.print(f"{key + ':':<10} {value}")


class RichReporter(Reporter):
    """A progress bar for the current epoch; each finished epoch is printed as a table row above it.

    Finished rows are printed once (they scroll like normal output, so 100 epochs never overflow
    the screen); only the one-line bar is redrawn, and only when the loop reports progress.
    """

    WIDTHS = {"epoch": 5, "samples_per_s": 10}

    def __init__(self, console: Console | None = None) -> None:
        super().__init__(console)
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}"),
            TextColumn("{task.fields[rate]:,.0f}/s"),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=False,
            transient=True,
        )
        self.task: Any = None
        self.keys: list[tuple[str, str, str]] = []

    def _row_table(self, header: bool) -> Table:
        # box=None on every table so the header and each row line up column by column.
        table = Table(
            show_header=header, show_edge=False, pad_edge=False, box=None, header_style="bold underline"
        )
        for key, label, _ in self.keys:
            table.add_column(label, justify="right", min_width=max(len(label), self.WIDTHS.get(key, 9)))
        return table

    def start(self, epochs: int, has_val: bool) -> None:
        super().start(epochs, has_val)
        self.keys = [c for c in COLUMNS if has_val or not c[0].startswith("val_")]
        self.console.print(self._row_table(header=True))
        self.bar.start()

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(
            "", total=steps, epoch=epoch, epochs=self.epochs, loss=0.0, acc=0.0, rate=0.0
        )
        self.bar.refresh()

    def progress(self, step: int, steps: int, loss: float, acc: float, rate: float) -> None:
        self.bar.update(self.task, completed=step, loss=loss, acc=acc, rate=rate)
        self.bar.refresh()

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        table = self._row_table(header=False)
        table.add_row(*[_fmt(k, row.get(k)) for k, _, _ in self.keys], style="green" if improved else None)
        self.console.print(table)
        self.bar.refresh()

    def message(self, text: str) -> None:
        self.console.print(text)

    def stop(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.bar.stop()


def make_reporter(mode: str, console: Console | None = None) -> Reporter:
    """'auto' → Rich on a terminal, plain lines when stdout is a pipe or file."""
    console = console or Console(highlight=False, soft_wrap=True)
    if mode == "none":
        return Reporter(console, quiet=True)
    if mode == "rich" or (mode == "auto" and console.is_terminal and sys.stdout.isatty()):
        return RichReporter(console)
    return Reporter(console)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else time.strftime("%H:%M:%S", time.gmtime(seconds))
