"""`mnistkit runs`, `mnistkit compare`, env.json, and a torch-free CLI start-up (issue 5).

The run listings are built from hand-written run directories (status.json, metrics.csv,
recipe.yaml), so every status can be set up exactly, including a 'running' run whose process
is gone; env.json comes from one real (digits) run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import effective_status, recipe_diff, run_info

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: Any, columns: int = 200) -> Any:
    # Wide console by default: the Rich tables are not wrapped, so cells can be matched whole.
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process any more (pids are not reused this fast)


def make_run(
    root: Path,
    name: str,
    status: dict[str, Any],
    rows: list[dict[str, Any]],
    recipe: dict[str, Any] | None = None,
    last_pt: bool = False,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    recipe = recipe or {"name": name, "epochs": 3, "data": {"dataset": "digits"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (run / "status.json").write_text(json.dumps(status), encoding="utf-8")
    RunDir(run).write_metrics(rows, has_val=False)
    if last_pt:
        (run / "last.pt").write_bytes(b"")
    return run


def row(epoch: int, acc: float, loss: float = 0.5) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": loss + 0.1,
        "train_acc": acc - 0.01,
        "test_loss": loss,
        "test_acc": acc,
        "lr": 0.01,
        "seconds": 2.0,
        "samples_per_s": 1000.0,
    }


@pytest.fixture
def runs_root(tmp_path: Path, live_pid: int) -> Path:
    now = time.time()
    root = tmp_path / "runs"
    make_run(
        root,
        "a-finished",
        {"status": "finished", "started": now - 500, "epochs": 3, "stop_reason": "finished"},
        [row(1, 0.80), row(2, 0.90), row(3, 0.85)],
    )
    make_run(
        root,
        "b-interrupted",
        {"status": "interrupted", "started": now - 400, "epochs": 3, "stop_reason": "interrupted"},
        [row(1, 0.70)],
        last_pt=True,
    )
    make_run(
        root,
        "c-failed",
        {"status": "failed", "started": now - 300, "epochs": 3, "error": "loss became nan"},
        [],
    )
    make_run(
        root,
        "d-killed",
        {"status": "running", "started": now - 200, "epochs": 5, "pid": dead_pid()},
        [row(1, 0.60), row(2, 0.65)],
        last_pt=True,
    )
    make_run(
        root,
        "e-running",
        {"status": "running", "started": now - 100, "epochs": 4, "pid": live_pid},
        [row(1, 0.5, loss=0.9)],
        recipe={"name": "e", "epochs": 4, "train": {"best_metric": "test_loss"}},
    )
    (root / "not-a-run").mkdir()
    return root


def test_statuses_including_a_killed_running_run(runs_root: Path) -> None:
    got = {p.name: run_info(p) for p in runs_root.iterdir() if p.name != "not-a-run"}
    assert {k: v.status for k, v in got.items()} == {
        "a-finished": "finished",
        "b-interrupted": "interrupted",
        "c-failed": "failed",
        "d-killed": "failed (killed)",
        "e-running": "running",
    }
    a = got["a-finished"]
    assert (a.epochs_done, a.epochs_planned, a.best_metric, a.best, a.best_epoch) == (
        3,
        3,
        "test_acc",
        0.90,
        2,
    )
    assert a.seconds == pytest.approx(6.0)
    assert got["e-running"].best_metric == "test_loss" and got["e-running"].best == 0.9
    assert got["d-killed"].resumable and got["b-interrupted"].resumable
    assert not got["a-finished"].resumable and not got["c-failed"].resumable


def test_runs_table(runs_root: Path) -> None:
    res = invoke("runs", runs_root)
    assert res.exit_code == 0, res.output
    out = res.output
    for name in ("a-finished", "b-interrupted", "c-failed", "d-killed", "e-running"):
        assert name in out
    assert "not-a-run" not in out
    assert "failed (killed)" in out
    assert "test_acc 90.00% (ep 2)" in out
    assert re.search(r"d-killed .*2/5", out)
    assert "3/3" in out and "0:06" in out
    # Oldest first.
    assert out.index("a-finished") < out.index("b-interrupted") < out.index("e-running")


def test_runs_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    res = invoke("runs", tmp_path / "nope")  # no run made yet: not an error
    assert res.exit_code == 0 and res.output.strip() == f"no runs in {tmp_path / 'nope'} (no such folder yet)"
    res = invoke("runs", tmp_path)
    assert res.exit_code == 0 and "no runs" in res.output


def test_effective_status(live_pid: int) -> None:
    assert effective_status({"status": "running", "pid": live_pid}) == "running"
    assert effective_status({"status": "running", "pid": dead_pid()}) == "failed (killed)"
    assert effective_status({"status": "running"}) == "failed (killed)"
    assert effective_status({}) == "unknown"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or not shutil.which("sleep"), reason="Linux")
def test_a_reused_pid_of_another_program_is_not_the_run() -> None:
    other = subprocess.Popen(["sleep", "30"])  # alive, but not Python or mnistkit
    try:
        deadline = time.monotonic() + 10
        while b"sleep" not in Path(f"/proc/{other.pid}/cmdline").read_bytes():  # until exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert effective_status({"status": "running", "pid": other.pid}) == "failed (killed)"
    finally:
        other.kill()
        other.wait()


def test_recipe_diff_lists_only_what_differs() -> None:
    a = {
        "name": "a",
        "optimizer": {"name": "sgd", "lr": 0.01},
        "model": {"hidden": [512, 256], "layers": None},
        "train": {"early_stopping": None},
        "scheduler": None,
    }
    b = {
        "name": "b",
        "optimizer": {"name": "sgd", "lr": 0.1},
        "model": {"hidden": None, "layers": [{"type": "conv2d", "out_channels": 8}, {"type": "relu"}]},
        "train": {"early_stopping": {"patience": 2, "metric": "auto"}},
        "scheduler": {"name": "cosine", "warmup_epochs": 0.0},
    }
    # A section on one side only is one row, in short: not a null against "(not set)" plus one
    # row per default-valued key inside it.
    assert recipe_diff(a, b) == [
        ("optimizer.lr", 0.01, 0.1),
        ("model.hidden", [512, 256], None),
        ("model.layers", None, "2 layers: conv2d, relu"),
        ("train.early_stopping", None, "patience 2, metric auto"),
        ("scheduler", None, "cosine (warmup_epochs 0.0)"),
    ]
    # Layer lists of the same length: only the layer keys that differ.
    c = dict(b, model={"hidden": None, "layers": [{"type": "conv2d", "out_channels": 16}, {"type": "relu"}]})
    assert recipe_diff(b, c) == [("model.layers[0].out_channels", 8, 16)]
    assert recipe_diff({"seed": 1}, {"seed": 1, "plugins": []}) == [("plugins", "(not set)", [])]
    assert recipe_diff(a, dict(a, name="other")) == []


def test_compare_shows_differing_keys_and_metrics_side_by_side(tmp_path: Path) -> None:
    base = {"epochs": 3, "seed": 0, "optimizer": {"name": "sgd", "lr": 0.01}, "data": {"dataset": "digits"}}
    a = make_run(tmp_path, "run-a", {"status": "finished"}, [row(1, 0.8), row(2, 0.9)], dict(base, name="a"))
    b = make_run(
        tmp_path,
        "run-b",
        {"status": "finished"},
        [row(1, 0.7), row(2, 0.95), row(3, 0.96)],
        dict(base, name="b", optimizer={"name": "sgd", "lr": 0.1}),
    )
    res = invoke("compare", a, b)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "optimizer.lr" in out and "0.01" in out and "0.1" in out
    assert "seed" not in out.split("metrics per epoch")[0]  # equal keys are not listed
    assert re.search(r"test_acc\W+test_acc", out) and re.search(r"train_acc\W+train_acc", out)
    assert "90.00%" in out and "95.00%" in out
    assert re.search(r"3 .*- .*96\.00%", out)  # epoch 3 only in B

    same = invoke("compare", a, a)
    assert same.exit_code == 0 and "identical" in same.output
    missing = invoke("compare", a, tmp_path / "nope")
    assert missing.exit_code == 1 and f"{tmp_path / 'nope'}: no such folder" in missing.output


def test_env_json_is_written_and_sane(tmp_path: Path) -> None:
    import platform

    import torch

    import mnistkit

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: env\nseed: 7\ndata: {dataset: digits}\nmodel: {hidden: [8]}\nepochs: 1\n"
        "train: {plots: false, progress: none, threads: 1}\n"
    )
    run = tmp_path / "run"
    res = invoke("run", recipe, "--out", run)
    assert res.exit_code == 0, res.output
    env = json.loads((run / "env.json").read_text())
    assert env["python"] == platform.python_version()
    assert env["torch"] == torch.__version__
    assert env["mnistkit"] == mnistkit.__version__
    assert env["seed"] == 7 and env["device"] == "cpu" and env["threads"] >= 1
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["git_commit"])
    (path, digest), *_ = env["data_files"].items()
    assert path.endswith("digits.csv.gz") and re.fullmatch(r"[0-9a-f]{64}", digest)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["pid"] == os.getpid()
    assert {"started", "ended", "epochs_done", "best", "best_metric"} <= set(status)
    listed = invoke("runs", tmp_path)
    assert listed.exit_code == 0 and "run" in listed.output and "1/1" in listed.output


def test_cli_start_up_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import mnistkit.cli.app, mnistkit.cli.run_commands, mnistkit.runs.listing\n"
        "heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'PIL') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_git_commit_is_dirty_only_for_changes_to_tracked_files(tmp_path: Path) -> None:
    """`env.json` said +dirty when the repo only had untracked files (git describe --dirty does not)."""
    import subprocess

    from mnistkit.runs.directory import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert re.fullmatch(r"[0-9a-f]{40}", git_commit(tmp_path) or "")
    (tmp_path / "recipe.schema.json").write_text("{}")  # untracked: still clean
    assert not (git_commit(tmp_path) or "").endswith("+dirty")
    (tmp_path / "a.txt").write_text("changed")  # a tracked change: dirty
    assert (git_commit(tmp_path) or "").endswith("+dirty")


def test_every_command_names_a_folder_that_is_not_a_run_directory_the_same_way(tmp_path: Path) -> None:
    """eval, predict, compare and run --resume share RunDir.open: one check, one message."""
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "status.json").write_text("{}")  # listed by `runs`, yet no recipe to rebuild from
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    expected = f"{folder}: not a run directory (no recipe.yaml)"
    for args in (
        ("eval", folder),
        ("predict", folder, image),
        ("compare", folder, folder),
        ("run", "--resume", folder),
    ):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert expected in " ".join(res.output.split()), (args, res.output)
    assert "--resume " + expected in " ".join(invoke("run", "--resume", folder).output.split())


def _no_cut_cells(out: str, columns: int) -> None:
    assert "…" not in out, out
    # Every table line fits (the A:/B: path lines and titles name tmp paths: long, not wrapped).
    # (A single word longer than the line, a tmp path under the table, stays whole on its own line.)
    table_lines = [
        line
        for line in out.splitlines()
        if not line.startswith(("A: ", "B: ", "runs in ")) and " " in line.strip()
    ]
    assert max(len(line) for line in table_lines) <= columns, out


@pytest.mark.parametrize("columns", [80, 120])
def test_runs_and_compare_fit_the_terminal_without_cutting_figures(tmp_path: Path, columns: int) -> None:
    """At 80 columns (the width of a pipe) every figure is still there, whole."""
    recipe = {"name": "x", "epochs": 3, "data": {"dataset": "digits"}, "scheduler": None}
    names = [f"quickstart-20261125-23075{i}" for i in range(2)]
    rows = [dict(row(e, 0.8 + e / 100), train_acc=0.9 + e / 1000, lr=0.003) for e in (1, 2, 3)]
    a = make_run(tmp_path, names[0], {"status": "finished", "started": 1.7e9}, rows, recipe)
    b = make_run(
        tmp_path,
        names[1],
        {"status": "interrupted", "started": 1.7e9 + 60},
        rows[:2],
        dict(recipe, scheduler={"name": "cosine", "warmup_epochs": 0.0}),
        last_pt=True,
    )
    res = invoke("runs", tmp_path, columns=columns)
    assert res.exit_code == 0, res.output
    _no_cut_cells(res.output, columns)
    for name in names:
        assert re.search(rf"{name}\W.*\b[23]/3\W.*8[23]\.00% \(ep [23]\)\W.*\d:\d\d\W", res.output), (
            res.output
        )
    assert "finished" in res.output and "interrupted" in res.output

    res = invoke("compare", a, b, columns=columns)
    assert res.exit_code == 0, res.output
    _no_cut_cells(res.output, columns)
    out = res.output
    assert re.search(r"scheduler\W+null\W+cosine \(warmup_epochs 0\.0\)", out), out
    for figure in ("81.00%", "83.00%", "90.10%", "90.30%", "0.003"):
        assert figure in out
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert metric in out


@pytest.mark.parametrize("columns", [80, 120])
def test_runs_with_a_sweep_trial_fit_and_break_no_word_or_number(tmp_path: Path, columns: int) -> None:
    """A sweep's trial (its best metric val_acc, a long stop reason) beside ordinary runs: the
    table still fits, each cell whole on one line, the reason and the resume hint under it."""
    root = tmp_path / "runs"
    recipe = {"name": "q", "epochs": 3, "data": {"dataset": "digits"}}
    make_run(root, "quickstart-20261125-230750", {"status": "finished", "started": 1.7e9},
             [row(1, 0.80), dict(row(2, 0.86), seconds=218.0)], recipe)  # fmt: skip
    make_run(root, "mlp5-20261125-231500", {"status": "running", "started": 1.7e9 + 60, "pid": dead_pid()},
             [row(1, 0.75)], recipe, last_pt=True)  # fmt: skip
    reason = "pruned after epoch 2: val_acc 0.8800 (median pruner)"
    val_rows = [dict(row(e, 0.8), val_loss=0.4, val_acc=0.87 + e / 200) for e in (1, 2)]
    status = {"status": "finished", "started": 1.7e9 + 120, "epochs": 5, "stop_reason": reason}
    trial = make_run(
        root, "0003", dict(status, best_metric="val_acc"), val_rows,
        {"name": "t", "epochs": 5, "data": {"dataset": "digits", "val_split": 0.1}},
    )  # fmt: skip
    RunDir(trial).write_metrics(val_rows, has_val=True)
    res = invoke("runs", root, columns=columns)
    assert res.exit_code == 0, res.output
    out = res.output
    _no_cut_cells(out, columns)
    rows = {
        line.strip("│ ").split()[0]: line
        for line in out.splitlines()
        if re.match(r"[│ ]*[\w-]+ .*\d/\d", line)
    }
    assert set(rows) >= {"quickstart-20261125-230750", "mlp5-20261125-231500", "0003"}, out
    time = r"\W(\d+:\d\d)\W"  # one format for every time: m:ss, never "4.0 s" beside "3:40"
    for name, epochs, best, seconds, status in (
        ("quickstart-20261125-230750", "2/3", "86.00%", "3:40", "finished"),
        ("mlp5-20261125-231500", "1/3", "75.00%", "0:02", "failed (killed)"),
        ("0003", "2/5", "88.00%", "0:04", "finished"),
    ):
        line = rows[name]
        cells = rf"\W{epochs}\W.*\W{re.escape(best)}\W.*{time}.*\W{re.escape(status)}\W?"
        assert re.search(cells, line), line
        assert re.search(rf"\W{seconds}\W+{re.escape(status)}", line), line
    assert not re.search(r"\d s\b", out), out
    # One line per run: no cell wrapped onto a line of its own (the name column empty there).
    assert not [line for line in out.splitlines() if re.match(r"│?\s{20}", line)], out
    flat = " ".join(out.split())  # notes wrap between words: joined back, they read whole
    assert f"0003: {reason}" in flat, out
    assert "mlp5-20261125-231500: continue with" in flat
    assert f"run --resume {root / 'mlp5-20261125-231500'}" in flat
