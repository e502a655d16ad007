"""What the user sees while a run trains: Rich live display on a terminal, plain lines elsewhere.

The loop calls ``progress`` at most every PROGRESS_INTERVAL_S seconds and the Rich display is
refreshed only then (``auto_refresh=False``: no background thread competing for the 2 cores).
"""

from __future__ import annotations

import re
import sys
import textwrap
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
    ("lr", "lr", "{:.3g}"),  # shown only when a scheduler changes it
    ("seconds", "s", "{:.2f}"),
    ("samples_per_s", "samples/s", "{:,.0f}"),
]

#: The widest value each live-display column holds ("100.00%", "12.3456", "0.000123", "1,234,567").
VALUE_WIDTHS = {"epoch": 5, "lr": 8, "seconds": 6, "samples_per_s": 9}
DEFAULT_VALUE_WIDTH = 7
#: Dropped first when the live display is too narrow for every column (a number is never cut).
DROP_ORDER = ("samples_per_s", "seconds", "train_loss", "val_loss", "lr")
BEST_MARK = "*"  # after the row of an epoch that improved the best metric (best.pt)
#: "selection: " — the header and summary labels, values starting in the column after.
LABEL_WIDTH = 11
#: Lines never wrapped: what they hold is copied whole (the run folder, the resume command).
UNWRAPPED = ("run dir", "saved", "resume")


def _fmt(key: str, value: Any) -> str:
    for k, _, fmt in COLUMNS:
        if k == key and value is not None:
            return fmt.format(value)
    return "" if value is None else str(value)


class Reporter:
    """Base reporter: plain text lines (CI logs, pipes). RichReporter overrides the display."""

    def __init__(self, console: Console | None = None, quiet: bool = False, silent: bool = False) -> None:
        """``quiet`` (--progress none): only where the run was saved; ``silent``: nothing at all
        (the other ranks of a distributed run, whose lines rank 0 prints)."""
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.quiet = quiet or silent
        self.silent = silent
        self.epochs = 0
        self.has_val = False
        self.show_lr = False
        self._work_start = 0.0
        self._work_shown = 0.0

    def labelled(self, key: str, value: str) -> None:
        """``key:`` then ``value`` in the value column, wrapped between words at the console's
        width (80 in a pipe) with continuation lines indented to that column: a word, a number
        or a path is never broken (one longer than the line stays whole)."""
        label = f"{key + ':':<{LABEL_WIDTH}}"
        if key in UNWRAPPED:  # a command or a path to copy: a line break would cut the paste
            self.console.print(label + value)
            return
        # `code` (a recipe line to copy) is kept on one line, like a word.
        value = re.sub(r"`[^`\n]*`", lambda m: m.group().replace(" ", "\0"), value)
        self.console.print(
            textwrap.fill(
                value,
                width=max(self.console.width, len(label) + 20),
                initial_indent=label,
                subsequent_indent=" " * len(label),
                break_long_words=False,
                break_on_hyphens=False,
            ).replace("\0", " ")
        )

    # -- lifecycle -------------------------------------------------------------------------
    def header(self, lines: list[tuple[str, str]]) -> None:
        if self.quiet:
            return
        for key, value in lines:
            self.labelled(key, value)

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

    def start(self, epochs: int, has_val: bool, show_lr: bool = False) -> None:
        """``show_lr``: a scheduler changes the learning rate, so each epoch shows it."""
        self.epochs, self.has_val, self.show_lr = epochs, has_val, show_lr

    def shown(self, key: str) -> bool:
        return (self.has_val or not key.startswith("val_")) and (self.show_lr or key != "lr")

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def progress(self, step: int, steps: int, loss: float, acc: float, rate: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        if self.quiet:
            return
        parts = [f"epoch {row['epoch']}/{self.epochs}"]
        for key, label, _ in COLUMNS[1:]:
            if self.shown(key) and row.get(key) is not None:
                parts.append(f"{label} {_fmt(key, row[key])}")
        self.console.print("  ".join(parts) + (f"  {BEST_MARK} best" if improved else ""))

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def work(self, what: str, done: int, total: int) -> None:
        """Progress of work before training (decoding files): a line every 2 s and at the end,
        with files per second and the estimated time left. ``done == 0`` starts the clock."""
        now = time.perf_counter()
        if done == 0:
            self._work_start = now
        if self.quiet or not (done == total or now - self._work_shown >= 2):
            return
        self._work_shown = now
        self.console.print(f"  {what}: {done:,}/{total:,}{_rate_eta(done, total, now - self._work_start)}")

    def stop(self) -> None:
        pass

    def summary(self, lines: list[tuple[str, str]]) -> None:
        # --progress none still says where the run is (and how to resume it), and the recipe's
        # expectations (a missed one is a non-zero exit code, never unexplained).
        if self.silent:
            return
        for key, value in lines:
            if not self.quiet or key in ("saved", "resume", "expect"):
                self.labelled(key, value)


class RichReporter(Reporter):
    """A progress bar for the current epoch; each finished epoch is printed as a table row above it.

    Finished rows are printed once (they scroll like normal output, so 100 epochs never overflow
    the screen); only the one-line bar is redrawn, and only when the loop reports progress.
    """

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
        self.work_bar = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:,.0f} files/s"),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=False,
            transient=True,
        )
        self.work_task: Any = None

    def _row_table(self, header: bool) -> Table:
        # box=None on every table so the header and each row line up column by column. Headers on
        # two lines ("train" over "loss") so a column is no wider than its figures; no_wrap: a
        # value is never broken across lines (columns that do not fit were dropped in start()).
        table = Table(
            show_header=header, show_edge=False, pad_edge=False, box=None, header_style="bold underline"
        )
        for key, label, _ in self.keys:
            width = VALUE_WIDTHS.get(key, DEFAULT_VALUE_WIDTH)
            table.add_column(label.replace(" ", "\n"), justify="right", min_width=width, no_wrap=True)
        table.add_column("", min_width=len(BEST_MARK), no_wrap=True)  # the best-epoch mark
        return table

    def _fits(self, keys: list[tuple[str, str, str]]) -> bool:
        widths = [
            max(VALUE_WIDTHS.get(k, DEFAULT_VALUE_WIDTH), *map(len, label.split())) for k, label, _ in keys
        ]
        return sum(widths) + len(BEST_MARK) + 2 * len(keys) <= self.console.width  # 2: column gap

    def start(self, epochs: int, has_val: bool, show_lr: bool = False) -> None:
        super().start(epochs, has_val, show_lr)
        self.keys = [c for c in COLUMNS if self.shown(c[0])]
        for drop in DROP_ORDER:  # narrow terminal: fewer columns rather than numbers broken in two
            if self._fits(self.keys):
                break
            self.keys = [c for c in self.keys if c[0] != drop]
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
        cells = [_fmt(k, row.get(k)) for k, _, _ in self.keys]
        table.add_row(*cells, BEST_MARK if improved else "", style="green" if improved else None)
        self.console.print(table)
        self.bar.refresh()

    def message(self, text: str) -> None:
        self.console.print(text)

    def work(self, what: str, done: int, total: int) -> None:
        """A bar with files per second and the time left (Rich's estimate), gone when done."""
        if done == 0 or self.work_task is None:
            if self.work_task is not None:
                self.work_bar.remove_task(self.work_task)
            self.work_task = self.work_bar.add_task(what, total=total, rate=0.0)
            self.work_bar.start()
            self._work_start = time.perf_counter()
        seconds = time.perf_counter() - self._work_start
        rate = done / seconds if seconds > 0 else 0.0
        self.work_bar.update(self.work_task, completed=done, rate=rate)
        self.work_bar.refresh()
        if done >= total:
            self.work_bar.stop()
            self.work_bar.remove_task(self.work_task)
            self.work_task = None
            self._work_shown = 0.0
            super().work(what, done, total)  # the final line stays: how long it took

    def stop(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.bar.stop()


def _rate_eta(done: int, total: int, seconds: float) -> str:
    if done <= 0 or seconds <= 0:
        return ""
    rate = done / seconds
    if done >= total:
        return f" in {seconds:.1f} s, {rate:,.0f} files/s"
    return f", {rate:,.0f} files/s, about {(total - done) / rate:.0f} s left"


def make_reporter(mode: str, console: Console | None = None) -> Reporter:
    """'auto' → Rich on a terminal, plain lines when stdout is a pipe or file; 'none' → only the
    saved: (and resume:) lines; 'silent' → nothing (a sweep's trials, a distributed run's other ranks)."""
    console = console or Console(highlight=False, soft_wrap=True)
    if mode == "silent":  # not a user's --progress: runs inside a sweep, other ranks
        return Reporter(console, silent=True)
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
