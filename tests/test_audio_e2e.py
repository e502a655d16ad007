"""End to end on real audio: a small FSDD subset → log-mel features → CNN + BiLSTM + attention
→ a finished run directory, through the CLI as a user runs it (about 10 s), and a model that
really recognizes the held-out clips."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from conftest import real_dataset

RECIPE = """\
name: fsdd-e2e
seed: 0
data:
  dataset: fsdd
  batch_size: 16
  # Small features keep the test fast; the code path is the one of the full recipe.
  features: {sample_rate: 8000, n_fft: 256, hop_length: 128, n_mels: 32, frames: 32}
model:
  layers:
    - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: to_sequence}
    - {type: lstm, hidden_size: 16, bidirectional: true}
    - {type: attention_pool, hidden_size: 8}
optimizer: {name: adam, lr: 0.01}
epochs: 6
train: {plots: false}
"""


def _subset(recordings: Path, dest: Path) -> int:
    """2 speakers x 10 digits x (take 0 = test, takes 5-8 = train): 100 real clips."""
    dest.mkdir()
    n = 0
    for speaker in ("jackson", "theo"):
        for digit in range(10):
            for take in (0, 5, 6, 7, 8):
                src = recordings / f"{digit}_{speaker}_{take}.wav"
                if src.is_file():
                    shutil.copy2(src, dest / src.name)
                    n += 1
    return n


def test_small_fsdd_run_end_to_end(shared_data: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    recordings = real_dataset(shared_data, "fsdd/recordings")
    n = _subset(recordings, tmp_path / "fsdd")
    assert n == 100
    recipe = tmp_path / "fsdd-e2e.yaml"
    recipe.write_text(RECIPE)
    cache = tmp_path / "cache"

    r = cli(
        "run",
        recipe,
        "--data-dir",
        tmp_path / "fsdd",
        "--runs",
        tmp_path / "runs",
        "--progress",
        "plain",
        env={"MNISTKIT_CACHE": str(cache)},
        # ~10 s on a quiet 2-core machine, 40 s at load 10; below pytest-timeout's 300 s.
        timeout=280,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "80 train / 20 test" in out
    # The summary shows the sequence part of the model with its real shapes.
    for row in ("to_sequence", "16x128", "lstm", "16x32", "attention_pool"):
        assert row in out, row

    (run_dir,) = (tmp_path / "runs").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["epochs_done"] == 6
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    # It recognizes spoken digits it never heard: the 20 test clips are other takes than the
    # 80 it trained on. Chance is 10 %; this run reaches 90 % (80 % from epoch 3 on, measured
    # on a 2-core CPU), so 60 % leaves room for other machines' arithmetic, none for features
    # or labels that do not match the clips.
    assert float(rows[-1]["test_acc"]) >= 0.6, rows
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / "last.pt").is_file()
    # Features were computed once and cached for the next run.
    assert len(list((cache / "features").glob("fsdd-*.npz"))) == 1
