"""What `mnistkit run` prints around training (issue 10): the learning rate and the best mark in
the plain log, aligned closing lines, honest times after a resume, where the run was saved even
with --progress none, and no "run dir:" for a run whose data never loaded."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, CliRunner

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def value_column(line: str) -> int:
    """Where the value starts on a `key:     value` line."""
    match = re.match(r"[a-z ]+:\s+", line)
    assert match, line
    return match.end()


def test_plain_log_lr_best_mark_aligned_lines_and_a_resume_that_adds_up(
    cli: CliRunner, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    res = cli(
        "run", QUICKSTART, "--out", run, "--progress", "plain",
        "--set", "epochs=1", "--set", "scheduler=cosine", "--set", "data.limit=300",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert re.search(r"\blr \d", epoch) and epoch.endswith("* best"), epoch
    closing = [line for line in lines if re.match(r"(plots|status|final|time|best|saved):", line)]
    assert {line.split(":")[0] for line in closing} >= {"plots", "status", "time", "saved"}
    assert len({value_column(line) for line in closing}) == 1, closing

    res = cli("run", "--resume", run, "--set", "epochs=2", "--progress", "plain")
    assert res.returncode == 0, res.stderr
    time_line = next(line for line in res.stdout.splitlines() if line.startswith("time:"))
    # The training time covers both sessions; the wall time is this session's, and says so.
    assert re.fullmatch(
        r"time: +[\d.]+ s training over all sessions; this session: [\d.]+ s training, [\d.]+ s in all",
        time_line,
    ), time_line


def test_progress_none_still_says_where_the_run_was_saved(cli: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = cli(
        "run", QUICKSTART, "--out", run, "--progress", "none",
        "--set", "epochs=1", "--set", "data.limit=200", "--set", "train.plots=false",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"saved:     {run}\n"


def test_no_run_dir_line_when_the_data_fails_to_load(cli: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    res = cli(
        "run", REPO / "recipes" / "mlp5.yaml", "--data-dir", empty, "--runs", runs,
        "--set", "data.download=false", "--progress", "plain",
    )  # fmt: skip
    assert res.returncode == 1
    assert "Could not find" in res.stderr
    assert "run dir" not in res.stdout, res.stdout
    assert not runs.exists() or not any(runs.iterdir())
