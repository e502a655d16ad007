"""`mnistkit report RUN_DIR` (issue 21): one self-contained HTML file, checked in a real browser.

One quickstart-sized run (8x8 digits, 3 epochs) is trained once for the module; the values on
the page are checked against independent computations from the files the run left
(predictions.npz with numpy, metrics.csv, plots/worst.csv written by the run's own plots) and
the ECE against a hand-computed example.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.report.calibration import reliability

REPO = Path(__file__).resolve().parents[1]

RECIPE = """name: rep
seed: 0
data: {dataset: digits, batch_size: 32}
model: {hidden: [32], activation: relu}
optimizer: {name: adam, lr: 0.003}
epochs: 3
train: {progress: none, threads: 1}
"""

SECTIONS = ("summary", "recipe", "curves", "per-class", "confusion", "gallery", "calibration")


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (plots on: its worst.csv is the gallery's independent reference)."""
    root = tmp_path_factory.mktemp("report")
    recipe = root / "rep.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    out = root / "run"
    res = invoke("run", recipe, "--out", out, "--set", "optimizer.lr=0.004")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def report(run: Path) -> tuple[Path, str]:
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    return run / "report.html", res.output


def test_command_writes_the_file_and_says_where_and_its_weight(report: tuple[Path, str]) -> None:
    path, output = report
    size = path.stat().st_size
    assert f"report: {path}" in output
    assert f"open:   {path.resolve().as_uri()}" in output
    assert f"({size:,} bytes)" in output
    assert size < 5_000_000
    assert all(len(line) <= 80 for line in output.splitlines() if not line.startswith(("report:", "open:")))
    html = path.read_text(encoding="utf-8")
    # Everything inline: no URL the page could fetch (src/href only data: URIs and anchors).
    assert "http://" not in html and "https://" not in html
    assert 'src="data:image/png;base64,' in html


def test_page_in_a_real_browser(report: tuple[Path, str], run: Path, browser, tmp_path: Path) -> None:
    path, _ = report
    page = browser.open(path.as_uri(), width=1280)
    try:
        assert page.errors == []
        assert page.external_requests() == []
        for sid in SECTIONS:
            assert page.page.locator(f"section#{sid}").count() == 1, sid
        shot = page.screenshot(tmp_path / "report.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Readable at laptop width: nothing wider than the window.
        assert page.page.evaluate("document.documentElement.scrollWidth") <= 1280
        # Every figure decoded (a broken data URI has naturalWidth 0).
        widths = page.page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths and min(widths) > 0

        # Per-class recall and precision as numpy computes them from predictions.npz.
        with np.load(run / "predictions.npz") as f:
            labels, probs = f["labels"].astype(int), f["probabilities"]
        pred = probs.argmax(1)
        rows = page.page.eval_on_selector_all(
            "#per-class-table tbody tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.textContent))"
        )
        assert len(rows) == 10
        for cells in rows:
            c = int(cells[0])
            recall = np.mean(pred[labels == c] == c)
            precision = np.mean(labels[pred == c] == c)
            assert cells[3] == f"{100 * recall:.2f}", (c, cells)
            assert cells[2] == f"{100 * precision:.2f}", (c, cells)
            assert cells[5] == str(int(np.sum(labels == c)))
        # The accuracy shown is metrics.csv's last test_acc (predictions.npz is the final model).
        with open(run / "metrics.csv", newline="") as fh:
            last = list(csv.DictReader(fh))[-1]
        assert page.page.inner_text("#accuracy") == f"{100 * float(last['test_acc']):.2f} %"
        # Selected on the test set (no val_split): said plainly.
        assert "chosen on the test set" in page.page.inner_text("section#summary")
        # The recipe value's origin: the --set that gave it.
        recipe_text = page.page.inner_text("#recipe-table")
        assert "optimizer.lr\t0.004\t--set optimizer.lr=0.004" in recipe_text
        assert "rep.yaml:5:" in recipe_text  # optimizer.name from the file, with its line

        page.page.emulate_media(media="print")
        assert not page.page.is_visible("nav")
    finally:
        page.close()


def _recalls(page: Any) -> list[float]:
    return page.eval_on_selector_all(
        "#per-class-table tbody tr", "rs => rs.map(r => parseFloat(r.cells[3].dataset.value))"
    )


def test_per_class_table_sorts_when_a_header_is_clicked(report: tuple[Path, str], browser) -> None:
    path, _ = report
    page = browser.open(path.as_uri())
    try:
        before = _recalls(page.page)
        header = page.page.locator("#per-class-table th", has_text="recall")
        header.click()
        up = _recalls(page.page)
        assert up == sorted(before)
        header.click()
        assert _recalls(page.page) == sorted(before, reverse=True)
        page.page.locator("#per-class-table th", has_text="class").first.click()  # '#' column
        assert page.errors == []
    finally:
        page.close()


def test_gallery_shows_the_runs_most_confident_mistakes(report: tuple[Path, str], run: Path, browser) -> None:
    """The gallery's mistakes, in order, are plots/worst.csv's (written at the end of the run by
    the plots code, from the same final model); each card has its picture."""
    path, _ = report
    with open(run / "plots" / "worst.csv", newline="") as fh:
        worst = [int(r["test_index"]) for r in csv.DictReader(fh)]
    page = browser.open(path.as_uri())
    try:
        shown = page.page.eval_on_selector_all(
            "#gallery-mistakes figure", "fs => fs.map(f => parseInt(f.dataset.index))"
        )
        assert shown and shown == worst[: len(shown)]
        assert page.page.locator("#gallery-mistakes figure img").count() == len(shown)
        assert page.page.locator("#gallery-unsure figure img").count() > 0
    finally:
        page.close()


def test_run_without_predictions_says_which_command_adds_them(run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("predictions.npz", "gallery.npz", "report.html"))
    res = invoke("report", old)
    assert res.exit_code == 0, res.output
    html = (old / "report.html").read_text(encoding="utf-8")
    assert f"mnistkit eval {old} --checkpoint last" in html
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    # What the message promises: that command writes what the report needs.
    res = invoke("eval", old, "--checkpoint", "last")
    assert res.exit_code == 0, res.output
    assert invoke("report", old).exit_code == 0
    html = (old / "report.html").read_text(encoding="utf-8")
    assert "--checkpoint last" not in html
    assert 'id="gallery-mistakes"' in html and "data:image/png" in html


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere", "no such folder"),
        (lambda tmp: tmp, "not a run directory"),
        (lambda tmp: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "not a folder"),
    ],
    ids=["missing", "plain-folder", "file"],
)
def test_bad_input_is_a_message_not_a_traceback(cli, tmp_path: Path, make: Any, message: str) -> None:
    target = make(tmp_path)
    res = cli("report", target)
    assert res.returncode == 1, res.stdout + res.stderr
    assert message in res.stderr and str(target) in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


_MODULES = """
import sys
sys.argv = ["mnistkit", *sys.argv[1:]]
from mnistkit.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "matplotlib", "jinja2") if m in sys.modules]
print("exit", code or 0, "loaded", ",".join(heavy) or "-", file=sys.stderr)
"""


def test_report_needs_no_torch_and_help_loads_nothing_heavy(run: Path, tmp_path: Path) -> None:
    def loaded(*args: Any) -> str:
        res = subprocess.run(
            [sys.executable, "-c", _MODULES, *map(str, args)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return res.stderr.splitlines()[-1]

    assert loaded("report", "--help") == "exit 0 loaded -"
    assert loaded("report", run, "-o", tmp_path / "r.html") == "exit 0 loaded matplotlib,jinja2"


def test_ece_against_a_hand_computed_example() -> None:
    # 5 predictions, 2 bins: (0, 0.5] and (0.5, 1].
    probs = np.array(
        [
            [0.9, 0.1],  # conf 0.9, predicted 0, true 0: right   -> bin 2
            [0.2, 0.8],  # conf 0.8, predicted 1, true 0: wrong   -> bin 2
            [0.7, 0.3],  # conf 0.7, predicted 0, true 0: right   -> bin 2
            [0.5, 0.5],  # conf 0.5, predicted 0 (first), true 1: wrong -> bin 1 (0.5 closes it)
            [0.4, 0.6],  # conf 0.6, predicted 1, true 1: right   -> bin 2
        ]
    )
    labels = np.array([0, 0, 0, 1, 1])
    rel = reliability(probs, labels, bins=2)
    # bin 1: 1 sample, accuracy 0, confidence 0.5 -> gap 0.5
    # bin 2: 4 samples, accuracy 3/4, confidence (0.9 + 0.8 + 0.7 + 0.6) / 4 = 0.75 -> gap 0
    # ECE = (1 * 0.5 + 4 * 0) / 5 = 0.1
    assert rel.counts.tolist() == [1, 4]
    assert rel.ece == pytest.approx(0.1, abs=1e-12)
    assert rel.accuracy.tolist() == [0.0, 0.75]
    # 10 bins: every sample alone in its bin except none; gaps |0-0.5|, |1-0.6|, |1-0.7|, |0-0.8|, |1-0.9|
    rel10 = reliability(probs, labels, bins=10)
    assert rel10.ece == pytest.approx((0.5 + 0.4 + 0.3 + 0.8 + 0.1) / 5, abs=1e-12)


def test_origins_name_the_file_line_the_base_recipe_and_the_set(tmp_path: Path) -> None:
    from mnistkit.recipe.schema import load_recipe_located

    (tmp_path / "base.yaml").write_text(RECIPE, encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\noptimizer:\n  lr: 0.01\n", encoding="utf-8")
    _, origins = load_recipe_located(child, ["epochs=2"])
    assert origins["optimizer.lr"] == f"{child}:3:7"  # the child's own line 3, column 7
    column = RECIPE.splitlines()[2].index("digits") + 1
    assert origins["data.dataset"] == f"base: {tmp_path / 'base.yaml'}:3:{column}"
    assert origins["epochs"] == "--set epochs=2"
    assert "data.val_split" not in origins  # a default
