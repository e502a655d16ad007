"""`mnistkit report` for a sweep, a group of seeds and several runs side by side (issue 21, 22).

Each page is opened in the real browser (tests/browser.py): it loads with no console error and
no request off the file, every section is there, its pictures decode, a screenshot is taken. The
figures on the page are checked against values computed here from what is on disk: the trials
stored with Optuna's own API (as tests/test_sweep_report.py builds them; no trial trains), each
member's metrics.csv and recipe.yaml read with the csv and yaml modules, and what `mnistkit
compare` prints. One group of 2 seeds (8x8 digits, 2 epochs, one thread) is trained for the
module: its members are the runs compared and the sweep's best trial's run folder.
"""

from __future__ import annotations

import csv
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_sweep_report import TRIALS, make_study
from typer.testing import CliRunner

from mnistkit.cli.app import app

RECIPE = """\
name: tiny
seed: 0
data: {dataset: digits, batch_size: 64}
model: {hidden: [32]}
optimizer: {name: adam, lr: 0.003}
epochs: 2
train: {plots: false, progress: none, threads: 1}
"""
SWEEP_TRIALS = TRIALS * 2  # 12 trials: 6 complete (enough for importances), 4 pruned, 2 failed
BEST = 1  # the run folder of this trial is a real run (the group's seed-0)
SWEEP_SECTIONS = (
    "summary",
    "history",
    "importances",
    "parallel",
    "intermediate",
    "trials",
    "best",
    "savings",
)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def final_row(run: Path) -> dict[str, str]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))[-1]


def open_page(browser: Any, html: Path, shot: Path) -> Any:
    """The page in the browser, checked as every report must be: no console errors, no request
    off the file, every picture decoded; a screenshot taken."""
    page = browser.open(html.resolve().as_uri())
    assert page.errors == []
    assert page.external_requests() == []
    images = page.page.eval_on_selector_all(
        "img", "els => els.map(e => [e.src.slice(0, 22), e.complete && e.naturalWidth > 0])"
    )
    assert images and all(src == "data:image/png;base64," and ok for src, ok in images), images
    assert page.screenshot(shot).read_bytes()[:4] == b"\x89PNG"
    return page


def sections(page: Any) -> list[str]:
    return page.page.eval_on_selector_all("main > section", "els => els.map(e => e.id)")


def text(page: Any, selector: str) -> str:
    return page.page.inner_text(selector).strip()


def href_target(page: Any, selector: str, html: Path) -> Path:
    """Where a link on the page points, resolved as the browser does from the page's folder."""
    href = page.page.get_attribute(selector, "href")
    assert href and not href.startswith(("/", "file:")), f"not a relative link: {href}"
    return (html.parent / href).resolve()


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    path = tmp_path_factory.mktemp("groups") / "g"
    res = invoke("run", recipe, "--seeds", "2", "--out", path)
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def sweep(group: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_study(tmp_path_factory.mktemp("sweeps") / "s", SWEEP_TRIALS)
    shutil.copytree(
        group / "seed-0", folder / f"trials/{BEST:04d}", ignore=shutil.ignore_patterns("report.*")
    )
    return folder


def test_sweep_report_shows_the_trials_the_best_and_what_pruning_saved(
    browser: Any, sweep: Path, tmp_path: Path
) -> None:
    best_report = sweep / f"trials/{BEST:04d}/report.html"
    assert not best_report.exists()
    out = tmp_path / "elsewhere" / "sweep.html"  # -o away from the sweep: links stay right
    out.parent.mkdir()
    res = invoke("report", sweep, "-o", out)
    assert res.exit_code == 0, res.output
    assert f"report: {out}" in res.output and out.resolve().as_uri() in res.output
    page = open_page(browser, out, tmp_path / "sweep.png")
    assert sections(page) == list(SWEEP_SECTIONS)

    # Trials by state, the best value and the savings: computed here from the stored trials.
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
        expected = sum(t[0] == state for t in SWEEP_TRIALS)
        assert text(page, f"#state-counts td[data-state={state}]") == str(expected), state
    values = [t[1] for t in SWEEP_TRIALS if t[0] == "COMPLETE"]
    best = values.index(max(values))
    best_number = [i for i, t in enumerate(SWEEP_TRIALS) if t[0] == "COMPLETE"][best]
    assert best_number == BEST
    assert text(page, "#best-number") == str(BEST)
    assert float(page.page.get_attribute("#best-value", "data-value")) == max(values)
    assert text(page, "#best-value") == f"{100 * max(values):.2f}%"
    saved = sum(4 - len(t[3]) for t in SWEEP_TRIALS if t[0] == "PRUNED")
    run = sum(len(t[3]) for t in SWEEP_TRIALS)
    assert text(page, "#pruned-trials") == str(sum(t[0] == "PRUNED" for t in SWEEP_TRIALS))
    assert text(page, "#epochs-saved") == str(saved)
    assert text(page, "#epochs-run") == str(run)
    assert text(page, "#epochs-unpruned") == str(run + saved)
    assert text(page, "#epochs-saved-share") == f"{100 * saved / (run + saved):.0f} %"

    # The best trial's run report: written because it was missing, linked relative to the page.
    assert best_report.is_file()
    assert href_target(page, "#best-report", out) == best_report.resolve()

    # The trials table: one row per trial, pruned-after filled for pruned trials only, sortable.
    rows = page.page.eval_on_selector_all(
        "#trials-table tbody tr",
        "rs => rs.map(r => [r.dataset.trial, r.querySelector('td.pruned-after').innerText])",
    )
    assert [int(n) for n, _ in rows] == list(range(len(SWEEP_TRIALS)))
    assert [p for _, p in rows] == [str(len(t[3])) if t[0] == "PRUNED" else "" for t in SWEEP_TRIALS]
    page.page.click("#trials-table thead th:nth-child(3)")  # the metric: ascending
    order = page.page.eval_on_selector_all("#trials-table tbody tr", "rs => rs.map(r => +r.dataset.trial)")
    with_value = sorted((t[1], i) for i, t in enumerate(SWEEP_TRIALS) if t[1] is not None)
    assert order[: len(with_value)] == [i for _, i in with_value]
    page.page.click("#trials-table thead th:nth-child(3)")  # descending: the best first
    assert page.page.eval_on_selector("#trials-table tbody tr", "r => +r.dataset.trial") == BEST
    page.close()


def test_group_report_shows_mean_and_spread_and_links_each_member(
    browser: Any, group: Path, tmp_path: Path
) -> None:
    members = sorted(p.name for p in group.iterdir() if p.is_dir())
    assert members == ["seed-0", "seed-1"]
    for m in members:
        (group / m / "report.html").unlink(missing_ok=True)
    res = invoke("report", group)
    assert res.exit_code == 0, res.output
    html = group / "report.html"
    page = open_page(browser, html, tmp_path / "group.png")
    assert sections(page) == ["summary", "curves", "members"]
    for key in ("test_acc", "test_loss", "train_acc"):
        finals = [float(final_row(group / m)[key]) for m in members]
        cell = f"#group-summary-table tr[data-metric=final_{key}] td:nth-child(3)"
        assert float(page.page.get_attribute(cell, "data-value")) == pytest.approx(sum(finals) / 2, abs=1e-12)
        assert float(page.page.get_attribute(cell, "data-std")) == pytest.approx(
            statistics.stdev(finals), abs=1e-12
        )
    for m in members:
        assert (group / m / "report.html").is_file()  # written because it was missing
        target = href_target(page, f"#members-table tr[data-member={m}] a", html)
        assert target == (group / m / "report.html").resolve()
    page.close()


def compare_verdict(a: Path, b: Path) -> str:
    """The verdict `mnistkit compare` prints (its line may wrap: joined again)."""
    res = CliRunner().invoke(app, ["compare", str(a), str(b)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("verdict:"))
    return line.strip().removeprefix("verdict: ")


def test_two_runs_side_by_side_with_compares_verdict(browser: Any, group: Path, tmp_path: Path) -> None:
    a, b = group / "seed-0", group / "seed-1"
    out = tmp_path / "two.html"
    res = invoke("report", a, b, "-o", out)
    assert res.exit_code == 0, res.output
    page = open_page(browser, out, tmp_path / "two.png")
    assert sections(page) == ["sides", "curves", "metrics", "recipe", "significance"]
    assert text(page, "#verdict") == compare_verdict(a, b)
    for col, run in ((2, a), (3, b)):
        cell = f"#compare-metrics-table tr[data-metric=final_test_acc] td:nth-child({col})"
        assert float(page.page.get_attribute(cell, "data-value")) == float(final_row(run)["test_acc"])
    seeds = [yaml.safe_load((r / "recipe.yaml").read_text())["seed"] for r in (a, b)]
    cells = page.page.eval_on_selector_all("#compare-recipe-table tbody tr", "rs => rs.map(r => r.innerText)")
    assert cells == ["\t".join(["seed", *map(str, seeds)])]
    page.close()


def test_a_group_beside_its_runs(browser: Any, group: Path, tmp_path: Path) -> None:
    out = tmp_path / "three.html"
    res = invoke("report", group, group / "seed-0", group / "seed-1", "-o", out)
    assert res.exit_code == 0, res.output
    page = open_page(browser, out, tmp_path / "three.png")
    finals = [float(final_row(group / m)["test_acc"]) for m in ("seed-0", "seed-1")]
    cell = "#compare-metrics-table tr[data-metric=final_test_acc] td:nth-child(2)"
    assert float(page.page.get_attribute(cell, "data-value")) == pytest.approx(statistics.fmean(finals))
    assert "±" in text(page, cell)
    assert page.page.query_selector("#verdict") is None  # three sides: no pairwise test
    assert "two at a time" in text(page, "#significance-none")
    page.close()

    # A group and a run: compare's words on why that is not tested, as it prints them.
    res = invoke("report", group, group / "seed-0", "-o", tmp_path / "pair.html")
    assert res.exit_code == 0, res.output
    page = browser.open((tmp_path / "pair.html").resolve().as_uri())
    printed = CliRunner().invoke(app, ["compare", str(group), str(group / "seed-0")], env={"COLUMNS": "400"})
    said = next(ln.strip() for ln in printed.output.splitlines() if ln.strip().startswith("not tested:"))
    assert said in text(page, "#significance-lines").splitlines()[-1]
    assert page.page.query_selector("#verdict") is None
    page.close()


def test_a_sweep_with_few_complete_trials_says_what_it_cannot_show(browser: Any, tmp_path: Path) -> None:
    folder = make_study(tmp_path / "few", TRIALS)  # 3 complete trials; no trial's run folder here
    res = invoke("report", folder)
    assert res.exit_code == 0, res.output
    page = open_page(browser, folder / "report.html", tmp_path / "few.png")
    complete = sum(t[0] == "COMPLETE" for t in TRIALS)
    assert page.page.query_selector("#importances img") is None
    assert f"{complete} complete trials, parameter importances need at least 5" in text(page, "#importances")
    assert "is not here" in text(page, "#best") and page.page.query_selector("#best-report") is None
    page.close()


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("empty", 1, "not a run directory, group of seeds or sweep folder"),
        ("no finished trial", 1, "has no finished trial yet"),
        ("sweep among runs", 2, "is a sweep: its report is a page of its own"),
        ("several without -o", 2, "say where their comparison goes with -o"),
    ],
)
def test_bad_input_is_a_clear_message(
    case: str, code: int, words: str, group: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if case == "empty":
        Path("empty").mkdir()
        args = ["empty"]
    elif case == "no finished trial":
        make_study(Path("fresh"), [])
        args = ["fresh"]
    elif case == "sweep among runs":
        make_study(Path("fresh"), TRIALS)
        args = ["fresh", str(group / "seed-0"), "-o", "x.html"]
    else:
        args = [str(group / "seed-0"), str(group / "seed-1")]
    before = {p: p.stat().st_mtime_ns for p in group.glob("**/*.html")}
    res = invoke("report", *args)
    assert res.exit_code == code, res.output
    assert words in re.sub(r"\s+", " ", res.output), res.output
    assert "Traceback" not in res.output
    assert list(Path().glob("**/*.html")) == []  # nothing written here
    assert {p: p.stat().st_mtime_ns for p in group.glob("**/*.html")} == before  # nor there
