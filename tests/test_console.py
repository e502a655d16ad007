"""What a run prints while it trains (issue 10): the live display fits the terminal without
breaking a number, the learning rate shows when a scheduler sets it, and the best-epoch mark is in
both the live display and the plain log."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from mnistkit.tracking.console import Reporter, RichReporter

ROW: dict[str, Any] = {
    "epoch": 12,
    "train_loss": 0.123456,
    "train_acc": 0.9876,
    "val_loss": 0.2345,
    "val_acc": 0.9512,
    "test_loss": 0.3456,
    "test_acc": 0.9401,
    "lr": 0.000123,
    "seconds": 123.456,
    "samples_per_s": 1234567.0,
}


def console(width: int, terminal: bool) -> Console:
    return Console(
        file=io.StringIO(),
        width=width,
        force_terminal=terminal,
        color_system=None,
        highlight=False,
        soft_wrap=True,
    )


def text(con: Console) -> str:
    out = con.file.getvalue()  # type: ignore[attr-defined]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n")


def live_rows(width: int, show_lr: bool) -> list[str]:
    con = console(width, terminal=True)
    rep = RichReporter(con)
    rep.start(20, has_val=True, show_lr=show_lr)
    rep.epoch_end(ROW, improved=True)
    rep.epoch_end(dict(ROW, epoch=13), improved=False)
    rep.stop()
    return [line for line in text(con).splitlines() if line.strip()]


@pytest.mark.parametrize("width", [80, 120])
def test_live_display_fits_and_never_breaks_a_number(width: int) -> None:
    lines = live_rows(width, show_lr=True)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    row12 = next(line for line in lines if re.match(r"\s*12\s", line))
    row13 = next(line for line in lines if re.match(r"\s*13\s", line))
    # Whole numbers on one line: the learning rate, the accuracies and the losses kept.
    for figure in ("0.000123", "98.76%", "95.12%", "94.01%", "0.2345", "0.3456"):
        assert figure in row12, (figure, lines)
    assert row12.rstrip().endswith("*") and not row13.rstrip().endswith("*")
    if width >= 120:  # room for everything
        assert "1,234,567" in row12 and "123.46" in row12 and "0.1235" in row12
    for line in lines:  # a column that does not fit is dropped, not cut into pieces
        assert "…" not in line


def test_live_display_shows_lr_only_with_a_scheduler() -> None:
    with_lr = "\n".join(live_rows(120, show_lr=True))
    without = "\n".join(live_rows(120, show_lr=False))
    assert "0.000123" in with_lr and "lr" in with_lr
    assert "0.000123" not in without and not re.search(r"\blr\b", without)


def test_plain_log_shows_lr_with_a_scheduler_and_the_best_mark() -> None:
    con = console(80, terminal=False)
    rep = Reporter(con)
    rep.start(20, has_val=True, show_lr=True)
    rep.epoch_end(ROW, improved=True)
    rep.epoch_end(dict(ROW, epoch=13), improved=False)
    first, second = text(con).splitlines()
    assert "lr 0.000123" in first and first.endswith("* best")
    assert "lr 0.000123" in second and "*" not in second

    con = console(80, terminal=False)
    rep = Reporter(con)
    rep.start(20, has_val=False, show_lr=False)
    rep.epoch_end({k: v for k, v in ROW.items() if not k.startswith("val_")}, improved=False)
    assert "lr" not in text(con) and "test acc 94.01%" in text(con)


def test_progress_none_still_says_where_the_run_was_saved() -> None:
    con = console(80, terminal=False)
    rep = Reporter(con, quiet=True)
    rep.header([("recipe", "x"), ("run dir", "runs/x-1")])
    rep.epoch_end(ROW, improved=True)
    rep.summary([("status", "finished (3 epochs)"), ("saved", "runs/x-1")])
    assert text(con) == "saved:     runs/x-1\n"


def test_silent_prints_nothing_at_all() -> None:
    """A sweep's trials and a distributed run's other ranks: not even the saved: line."""
    from mnistkit.tracking.console import make_reporter

    con = console(80, terminal=False)
    rep = make_reporter("silent", con)
    rep.header([("recipe", "x")])
    rep.start(3, has_val=False)
    rep.epoch_end(ROW, improved=True)
    rep.message("hello")
    rep.summary([("saved", "runs/x-1"), ("resume", "mnistkit run --resume runs/x-1")])
    assert text(con) == ""
