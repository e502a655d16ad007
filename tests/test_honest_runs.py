"""What a run claims and hints must be true (issue 10): selection on the test set is said, the
recorded recipe reruns the same data offline, resume names a missing folder, repeats the command
the user ran, reports a hand-edited recipe.yaml, and checks the checkpoint format.

On CPU with ``digits`` (bundled, offline) except the --data-dir test, which needs the real
Fashion-MNIST files (skipped without them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import real_dataset
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.cli.invocation import invoked_as
from mnistkit.recipe.metrics import run_metrics, selection_on_test_notes
from mnistkit.recipe.schema import load_recipe, load_recipe_text
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import run_info
from mnistkit.training.checkpoint import load_checkpoint, save_checkpoint
from mnistkit.training.state import CHECKPOINT_FORMAT

REPO = Path(__file__).resolve().parents[1]

PLAIN = """\
name: honest
seed: 0
data: {dataset: digits, batch_size: 64}
model: {hidden: [32]}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
epochs: 2
train: {plots: false, progress: plain, threads: 1}
"""


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run without a validation split."""
    base = tmp_path_factory.mktemp("honest")
    recipe = base / "honest.yaml"
    recipe.write_text(PLAIN, encoding="utf-8")
    run = base / "run"
    res = invoke("run", recipe, "--out", run)
    assert res.exit_code == 0, res.output
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


# ------------------------------------------------------------------ selection on the test set
def test_selection_on_the_test_set_is_said_in_header_summary_and_status(
    finished: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PLAIN.replace("epochs: 2", "epochs: 1"), encoding="utf-8")
    res = invoke("run", recipe, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    line = (
        "best.pt is selected on test_acc: the test set (the recipe has no data.val_split); "
        "to select on a validation set, set `data.val_split: 0.1` in the recipe "
        "(or --set data.val_split=0.1)"
    )
    head, _, tail = res.output.partition("status:")
    # Said once, in the run header (wrapped between words at 80 columns), not again at the end.
    assert line in " ".join(head.split()) and "selection:" not in tail
    assert RunDir(tmp_path / "run").read_status()["selected_on_test"] == [line]


def _metrics_of(text: str) -> Any:
    return run_metrics(load_recipe_text(text))


def test_every_kind_of_selection_on_the_test_set_is_named_and_explicit_choices_say_so() -> None:
    auto = _metrics_of(
        PLAIN.replace("train: {", "train: {early_stopping: {patience: 2}, ") + "scheduler: {name: plateau}\n"
    )
    notes = selection_on_test_notes(auto)
    assert [n.split(":")[0] for n in notes] == [
        "best.pt is selected on test_acc",
        "early stopping watches test_loss",
        "the plateau scheduler watches test_loss",
    ]
    assert all("the recipe has no data.val_split" in n for n in notes)
    explicit = selection_on_test_notes(
        _metrics_of(PLAIN.replace("train: {", "train: {best_metric: test_acc, "))
    )
    assert explicit == [
        "best.pt is selected on test_acc: the test set (as the recipe says); "
        "to select on a validation set, set `data.val_split: 0.1` in the recipe "
        "(or --set data.val_split=0.1)"
    ]
    with_val = PLAIN.replace("batch_size: 64}", "batch_size: 64, val_split: 0.1}")
    assert selection_on_test_notes(_metrics_of(with_val)) == []
    no_best = PLAIN.replace("train: {", "train: {checkpoint: false, ")
    assert selection_on_test_notes(_metrics_of(no_best)) == []  # no best.pt, nothing selected


def test_the_tutorial_recipe_selects_on_the_test_set_explicitly() -> None:
    rec = load_recipe(REPO / "recipes" / "mlp5.yaml")
    assert rec.train.best_metric == "test_acc" and rec.data.val_split == 0
    assert "as the recipe says" in selection_on_test_notes(run_metrics(rec))[0]


# ------------------------------------------------------------------ the recorded recipe reruns offline
def test_recorded_recipe_of_a_data_dir_run_reruns_the_same_data_offline(
    shared_data: Path, tmp_path: Path
) -> None:
    data_dir = real_dataset(shared_data, "fashion-mnist")
    recipe = tmp_path / "f.yaml"
    recipe.write_text(
        "name: offline\ndata: {dataset: fashion_mnist, limit: 256, test_limit: 256, download: false}\n"
        "model: {hidden: [16]}\nepochs: 1\ntrain: {plots: false, progress: plain, threads: 1}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "MNISTKIT_DATA"}
    env["MNISTKIT_CACHE"] = str(tmp_path / "empty-cache")  # nothing to find there
    env["PYTHONPATH"] = str(REPO)
    first = subprocess.run(
        [sys.executable, "-m", "mnistkit", "run", str(recipe), "--data-dir", str(data_dir), "--out", "r1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    recorded = tmp_path / "r1" / "recipe.yaml"
    assert yaml.safe_load(recorded.read_text())["data"]["root"] == str(data_dir.resolve())
    # From another folder, with no --data-dir: the recorded recipe finds the same files.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = subprocess.run(
        [sys.executable, "-m", "mnistkit", "run", str(recorded), "--out", "r2"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    same = ("train_loss", "train_acc", "test_loss", "test_acc")
    rows = [[row[k] for k in same] for row in RunDir(tmp_path / "r1").read_metrics()]
    assert rows == [[row[k] for k in same] for row in RunDir(elsewhere / "r2").read_metrics()]


# ------------------------------------------------------------------ --resume of a missing folder
def test_resume_of_a_missing_folder_says_it_does_not_exist(tmp_path: Path) -> None:
    res = invoke("run", "--resume", tmp_path / "nope")
    assert res.exit_code == 1
    assert f"--resume {tmp_path / 'nope'}: no such folder" in res.output


# ------------------------------------------------------------------ the resume hint
@pytest.mark.parametrize(
    ("argv", "orig", "expected"),
    [
        (["/x/.venv/bin/mnistkit", "run"], None, "/x/.venv/bin/mnistkit"),
        ([".venv/bin/mnistkit", "run"], None, ".venv/bin/mnistkit"),
        (
            ["/x/mnistkit/__main__.py", "run"],
            [".venv/bin/python", "-m", "mnistkit", "run"],
            ".venv/bin/python -m mnistkit",
        ),
        (
            ["/x/mnistkit/__main__.py"],
            ["/my dir/python3", "-X", "dev", "-m", "mnistkit"],
            "'/my dir/python3' -X dev -m mnistkit",
        ),
    ],
)
def test_invoked_as_repeats_the_command_the_user_ran(argv: list[str], orig: Any, expected: str) -> None:
    assert invoked_as(argv, orig or argv) == expected


def test_invoked_as_shortens_a_command_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "mnistkit"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert invoked_as([str(exe)], [str(exe)]) == "mnistkit"


def test_ctrl_c_hint_and_recipe_header_repeat_the_command_the_user_ran(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PLAIN.replace("epochs: 2", "epochs: 3"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTKIT_")}
    env.update(PYTHONPATH=str(REPO), MNISTKIT_KILL_AT="2:3:INT", MNISTKIT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    command = f"{sys.executable} -m mnistkit"
    assert proc.returncode == 130, output
    assert f"resume: {command} run --resume {tmp_path / 'run'}" in " ".join(output.split())
    assert (
        f"re-run with `{command} run {tmp_path / 'run' / 'recipe.yaml'}`"
        in (tmp_path / "run" / "recipe.yaml").read_text()
    )


# ------------------------------------------------------------------ a hand-edited recipe.yaml
def test_resume_of_a_hand_edited_recipe_says_which_keys_and_keeps_the_checkpoints(
    finished: Path, tmp_path: Path
) -> None:
    run = copy_run(finished, tmp_path)
    original = (run / "recipe.yaml").read_text()
    edited = original.replace("lr: 0.05", "lr: 0.5").replace("batch_size: 64", "batch_size: 32")
    assert edited != original
    (run / "recipe.yaml").write_text(edited)
    res = invoke("run", "--resume", run, "--set", "epochs=3")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "recipe.yaml was edited since the checkpoint" in out
    assert "data.batch_size: 64 (recipe.yaml: 32)" in out and "optimizer.lr: 0.05 (recipe.yaml: 0.5)" in out
    assert "only epochs, train.progress" in out and "--set KEY=VALUE" in out
    assert f"run {run / 'recipe.edited.yaml'}" in out
    assert (run / "recipe.edited.yaml").read_text() == edited  # the edit is not lost
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())
    # What the run really continued with: the checkpoint's values, the resumable epochs=3.
    assert recorded["optimizer"]["lr"] == 0.05 and recorded["data"]["batch_size"] == 64
    assert recorded["epochs"] == 3
    assert len(RunDir(run).read_metrics()) == 3


def test_resume_with_an_unedited_recipe_says_nothing_about_edits(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path)
    res = invoke("run", "--resume", run, "--set", "epochs=3")
    assert res.exit_code == 0, res.output
    assert "was edited since" not in res.output and not (run / "recipe.edited.yaml").exists()


# ------------------------------------------------------------------ checkpoint format
@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (CHECKPOINT_FORMAT + 1, f"checkpoint format {CHECKPOINT_FORMAT + 1} was written by a newer mnistkit"),
        ("one", "has an unknown checkpoint format 'one': it was not written by mnistkit"),
        (None, "has no checkpoint format: it was not written by mnistkit"),
    ],
)
def test_checkpoint_format_is_checked_by_resume_eval_and_predict(
    finished: Path, tmp_path: Path, fmt: Any, message: str
) -> None:
    run = copy_run(finished, tmp_path)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / name)
        if fmt is None:
            del ckpt["format"]
        else:
            ckpt["format"] = fmt
        save_checkpoint(run / name, ckpt)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    for args in (("run", "--resume", run, "--set", "epochs=3"), ("eval", run), ("predict", run, image)):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert message in " ".join(res.output.split()), (args, res.output)
        if fmt == CHECKPOINT_FORMAT + 1:
            assert "upgrade mnistkit" in res.output
    assert len(RunDir(run).read_metrics()) == 2  # nothing was trained
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def _run_with_signal(tmp_path: Path, at: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PLAIN, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTKIT_")}
    env.update(PYTHONPATH=str(REPO), MNISTKIT_KILL_AT=at, MNISTKIT_CACHE=str(tmp_path / "cache"))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(run), "--set", "epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        # As at a terminal: Ctrl-C raises KeyboardInterrupt (a background job inherits SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    return proc, recipe, run


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing_and_says_how_to_start_again(
    tmp_path: Path,
) -> None:
    """A Ctrl-C in a run's first seconds (here: the run folder and its files are made, training
    has not started) used to leave a folder `runs` ignores and `--resume` refuses."""
    proc, recipe, run = _run_with_signal(tmp_path, "0:0:INT")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 130, output
    assert not run.exists(), sorted(run.rglob("*"))
    out = " ".join(proc.stdout.split())  # the summary wraps at 80 columns
    assert f"saved: nothing: interrupted before the first checkpoint ({run} removed)" in out
    command = f"{sys.executable} -m mnistkit"
    assert f"start again: {command} run {recipe} --set epochs=1 --out {run}" in out
    assert "Traceback" not in output


def test_ctrl_c_mid_epoch_says_the_step_and_leaves_a_resumable_run(tmp_path: Path) -> None:
    proc, _, run = _run_with_signal(tmp_path, "1:3:INT")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 130, output
    # digits: 1,797 samples, 20 % test → 1,438 to train, 23 batches of 64.
    assert "status:    interrupted (epoch 1, step 3 of 23)" in proc.stdout, output
    assert run_info(run).resumable and run_info(run).status == "interrupted"
    assert f"--resume {run}" in " ".join(proc.stdout.split())
