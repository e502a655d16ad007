"""What `mnistkit run` prints around training (issue 10): the learning rate and the best mark in
the plain log, aligned closing lines, honest times after a resume, where the run was saved even
with --progress none, and no "run dir:" for a run whose data never loaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, CliRunner

from mnistkit.recipe.metrics import run_metrics, selection_on_test_notes
from mnistkit.recipe.schema import load_recipe

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def value_column(line: str) -> int:
    """Where the value starts on a `key:     value` line."""
    match = re.match(r"[a-z ]+:\s+", line)
    assert match, line
    return match.end()


def labelled(stdout: str) -> list[tuple[str, str]]:
    """The `key:     value` lines, each value with its continuation lines (indented to the value
    column) joined back with one space."""
    out: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        if out and line.startswith(" " * 11) and line.strip():
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        elif match := re.match(r"([a-z ]+):\s+(.*)", line):
            out.append((match.group(1), match.group(2)))
    return out


def test_plain_log_lr_best_mark_aligned_lines_and_a_resume_that_adds_up(
    cli: CliRunner, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    res = cli(
        "run", QUICKSTART, "--out", run, "--progress", "plain",
        "--set", "epochs=1", "--set", "scheduler=cosine", "--set", "data.limit=300",
        "--set", "expect=null",  # a cut-down run: the recipe's expect: is not about it
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
    time_line = dict(labelled(res.stdout))["time"]
    # The training time covers both sessions; the wall time is this session's, and says so.
    assert re.fullmatch(
        r"[\d.]+ s training over all sessions; this session: [\d.]+ s training, [\d.]+ s in all",
        time_line,
    ), time_line


def test_progress_none_still_says_where_the_run_was_saved(cli: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = cli(
        "run", QUICKSTART, "--out", run, "--progress", "none",
        "--set", "epochs=1", "--set", "data.limit=200", "--set", "train.plots=false",
        "--set", "expect=null",  # a cut-down run: the recipe's expect: is not about it
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


@pytest.mark.parametrize("columns", [80, 120])
def test_run_header_wraps_between_words_and_says_the_selection_once(
    cli: CliRunner, tmp_path: Path, columns: int
) -> None:
    """The header fits the terminal; a long value (device, selection) goes on under its own
    column, broken only between words; `selection:` once; `augment:` in line with the rest."""
    sets = ["epochs=1", "data.limit=200", "train.plots=false", "train.threads=1", "expect=null"]
    sets.append("data.augment=[{type: random_crop, padding: 1}]")
    res = cli(
        "run", QUICKSTART, "--out", tmp_path / "run", "--progress", "plain",
        *[w for s in sets for w in ("--set", s)], env={"COLUMNS": str(columns)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    head = res.stdout.split("\nmodel")[0].splitlines()
    wrapped = [line for line in head if not line.startswith("run dir:")]  # a path: never wrapped
    assert max(map(len, wrapped)) <= columns, "\n".join(head)
    values = labelled(res.stdout)
    keys = [k for k, _ in values]
    assert keys.count("selection") == 1, res.stdout
    # The note as the recipe gives it (not as printed): a word broken in two would not match.
    want = selection_on_test_notes(run_metrics(load_recipe(QUICKSTART, sets)))
    assert [v for k, v in values if k == "selection"] == want
    assert re.match(r"cpu \(1 thread\)", dict(values)["device"]), values  # not "1 threads"
    labelled_lines = [line for line in res.stdout.splitlines() if re.match(r"[a-z ]+: ", line)]
    augment = next(line for line in labelled_lines if line.startswith("augment:"))
    assert value_column(augment) == value_column(labelled_lines[0]) == 11, augment
    assert dict(values)["augment"] == "random_crop (training batches only)"
