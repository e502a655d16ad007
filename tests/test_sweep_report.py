"""How a sweep is reported (issue 19, items 1-6): `sweep status` at 80 and 120 columns and
read-only, the live table, best.yaml, number formats and the plots.

The study is written straight into an SQLite storage with Optuna's own API (trials made with
``optuna.trial.create_trial``), so these tests train nothing: the figures they expect are
computed here from the values they stored, never by the code under test.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.recipe.schema import load_recipe, resolved_dict

REPO = Path(__file__).resolve().parents[1]
STUDY = "tiny-sweep"
FAIL_REASON = "loss became nan at epoch 1, step 2: lower the learning rate (--set optimizer.lr=0.001)"
DISTS = {
    "optimizer.lr": FloatDistribution(1e-4, 3e-2, log=True),
    "model.hidden": CategoricalDistribution(["[128, 64]", "[64]", "[256, 128]"]),
    "data.batch_size": IntDistribution(16, 64, step=16),
}
# (state, final value, params, metric per epoch)
TRIALS: list[tuple[str, float | None, dict[str, Any], list[float]]] = [
    ("COMPLETE", 0.9652777777777778, {"optimizer.lr": 0.0022881136684755237, "model.hidden": "[128, 64]",
                                      "data.batch_size": 32}, [0.85, 0.934, 0.944, 0.9652777777777778]),
    ("COMPLETE", 0.96875, {"optimizer.lr": 0.003980687048299292, "model.hidden": "[256, 128]",
                           "data.batch_size": 32}, [0.958, 0.972, 0.961, 0.96875]),
    ("PRUNED", 0.7152777777777778, {"optimizer.lr": 0.00022081652483494117, "model.hidden": "[256, 128]",
                                    "data.batch_size": 64}, [0.378, 0.7152777777777778]),
    ("COMPLETE", 0.9201388888888888, {"optimizer.lr": 0.009145320282946534, "model.hidden": "[64]",
                                      "data.batch_size": 16}, [0.9375, 0.954, 0.972, 0.9201388888888888]),
    ("PRUNED", 0.9375, {"optimizer.lr": 0.020083152344036723, "model.hidden": "[64]",
                        "data.batch_size": 48}, [0.93, 0.9375]),
    ("FAIL", None, {"optimizer.lr": 0.0004159, "model.hidden": "[64]", "data.batch_size": 16}, []),
]  # fmt: skip


def _recipe(number: int, lr: float) -> dict[str, Any]:
    recipe = resolved_dict(load_recipe(REPO / "recipes" / "quickstart.yaml"))
    recipe["train"]["plots"] = False  # as the shipped sweeps set it
    recipe["optimizer"]["lr"] = lr
    recipe["seed"] = number
    return recipe


def make_study(folder: Path, trials: list[tuple[str, float | None, dict[str, Any], list[float]]]) -> Path:
    """A sweep folder (sweep.json + study.db) holding ``trials``, as a sweep leaves it."""
    from mnistkit.sweeps.storage import open_storage, storage_url

    folder.mkdir(parents=True)
    url = storage_url(None, folder)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=STUDY, storage=open_storage(url), direction="maximize")
    study.set_user_attr("metric", "val_acc")
    for number, (state, value, params, steps) in enumerate(trials):
        reason = {"FAIL": FAIL_REASON, "PRUNED": f"pruned after epoch {len(steps)}: val_acc (median pruner)"}
        attrs = {
            "run_dir": f"trials/{number:04d}",
            "epochs": len(steps),
            "epochs_planned": 4,
            "seconds": 3.25 + number,
            "reason": reason.get(state),
            "recipe": _recipe(number, params["optimizer.lr"]),
        }
        study.add_trial(
            create_trial(
                state=TrialState[state],
                value=value,
                params=params,
                distributions=DISTS,
                intermediate_values={e + 1: v for e, v in enumerate(steps)},
                user_attrs=attrs,
            )
        )
    meta = {"study": STUDY, "storage": url, "budget": len(trials)}
    (folder / "sweep.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def status(*args: Any, columns: int = 80) -> Any:
    res = CliRunner().invoke(app, ["sweep", "status", *map(str, args)], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.output


def expected_cells() -> list[str]:
    """Every figure and word the table must show whole, computed here from the stored values."""
    cells = ["#", "state", "val_acc", "epochs", "time"]
    for number, (state, value, params, steps) in enumerate(TRIALS):
        cells += [str(number), state, f"{len(steps)}/4", f"0:{round(3.25 + number):02d}"]  # as runs show time
        if value is not None:
            cells.append(f"{100 * value:.2f}%")  # as runs show an accuracy
        cells += [
            f"{params['optimizer.lr']:.4g}",
            str(params["data.batch_size"]),
            *params["model.hidden"].split(),
        ]
    return cells + FAIL_REASON.split()


def check_whole(out: str, columns: int) -> None:
    """No line wider than the console, nothing cut, every cell's text printed whole."""
    lines = out.splitlines()
    assert "…" not in out, out
    assert max(len(line) for line in lines) <= columns, out
    words = out.split()
    for cell in expected_cells():
        assert cell in words, f"{cell!r} not printed whole:\n{out}"
    # A parameter's header: whole, or one line per dotted part (`optimizer.` over `lr`).
    for name in DISTS:
        parts = name.replace(".", ". ").split()
        assert name in words or all(p in words for p in parts), f"header {name!r} broken:\n{out}"
    # The pruned note is no paragraph: the pruned trials' reasons stay in trials.csv.
    assert "pruned after" not in out, out


@pytest.mark.parametrize("columns", [80, 120])
def test_status_fits_the_terminal_and_prints_every_figure_whole(
    tmp_path: Path, columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(tmp_path / "s", TRIALS)
    monkeypatch.chdir(tmp_path)  # a short folder name, as a user types it (a tmp path is a long word)
    folder = Path("s")
    out = status(folder, columns=columns)
    check_whole(out, columns)
    # Parameters at 4 significant digits on screen, never at full float precision.
    assert "0.0022881136684755237" not in out and "0.002288" in out.split()
    best = f"best:      trial 1: val_acc {100 * 0.96875:.2f}% in {folder / 'trials/0001'}"
    assert best in out, out
    # At 120 columns the trials and their parameters fit in one table; at 80 in two.
    headers = [line for line in out.splitlines() if line.startswith("#")]
    assert len(headers) == (1 if columns == 120 else 2), out


@pytest.mark.parametrize("columns", [80, 120])
def test_the_live_table_fits_the_console(tmp_path: Path, columns: int) -> None:
    from rich.console import Console

    from mnistkit.sweeps.table import fitted_table

    folder = make_study(tmp_path / "s", TRIALS)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")
    con = Console(width=columns, file=io.StringIO(), highlight=False)
    con.print(fitted_table(con, study, len(TRIALS)))
    check_whole(con.file.getvalue(), columns)


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_status_writes_nothing_and_refresh_rewrites_the_results(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "s", TRIALS)
    status(folder, "--refresh")  # the files a finished sweep leaves
    for name in ("trials.csv", "best.yaml", "summary.json", "plots/optimization_history.png"):
        assert (folder / name).is_file(), name
    before = _snapshot(folder)
    out = status(folder)
    assert _snapshot(folder) == before  # not one file written, touched or added (study.db included)
    assert "saved:" not in out
    (folder / "summary.json").unlink()
    status(folder, "--refresh")
    assert json.loads((folder / "summary.json").read_text())["best"]["number"] == 1


def test_best_yaml_reruns_the_winner_with_plots_from_a_path_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(tmp_path / "s", TRIALS)
    monkeypatch.chdir(tmp_path)
    out = status("s", "--refresh")
    best = tmp_path / "s" / "best.yaml"
    # The printed command names the folder as the user gave it: it works from here.
    [printed] = re.findall(r"mnistkit run (\S+)", out)
    assert (tmp_path / printed).resolve() == best.resolve(), out
    text = best.read_text()
    [header] = re.findall(r"^# Rerun it: mnistkit run (\S+)$", text, re.M)
    monkeypatch.chdir("/")
    assert Path(header).resolve() == best.resolve()  # and from anywhere else
    assert f"val_acc {100 * 0.96875:.2f}%" in text.splitlines()[0]
    recipe = resolved_dict(load_recipe(best))
    assert recipe["train"]["plots"] is True
    expected = copy.deepcopy(_recipe(1, TRIALS[1][2]["optimizer.lr"]))
    expected["train"]["plots"] = True
    assert recipe == expected  # exact: the stored lr, not the 4 digits on screen


def test_plots_label_their_axes_include_pruned_trials_and_name_the_study(tmp_path: Path) -> None:
    from mnistkit.sweeps import plots

    folder = make_study(tmp_path / "s", TRIALS)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")
    for draw in (plots.history, plots.intermediate, plots.parallel):
        fig = draw(study)
        ax = fig.axes[0]
        assert STUDY in ax.get_title(), draw
    fig = plots.intermediate(study)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val_acc (%)"
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1, 2, 3, 4]
    # One line per trial with a value, the pruned ones (2 epochs) among them, in percent.
    lines = sorted((list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines())
    pruned = [[1, 2], [100 * v for v in TRIALS[2][3]]], [[1, 2], [100 * v for v in TRIALS[4][3]]]
    for p in pruned:
        assert any(x == p[0] and y == pytest.approx(p[1]) for x, y in lines), lines
    assert len(lines) == 5
    ax = plots.history(study).axes[0]
    assert ax.get_xlabel() == "trial" and ax.get_ylabel() == "val_acc (%)"
    drawn = {(round(x), round(y, 4)) for c in ax.collections for x, y in c.get_offsets()}
    assert (2, round(100 * TRIALS[2][1], 4)) in drawn and (4, round(100 * TRIALS[4][1], 4)) in drawn
    # Parameter names on the parallel plot do not overlap.
    fig = plots.parallel(study)
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 4
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_importances_are_refused_with_few_complete_trials_and_say_how_many(tmp_path: Path) -> None:
    from mnistkit.sweeps import plots

    folder = make_study(tmp_path / "s", TRIALS)  # 3 complete trials
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")
    with pytest.raises(plots.TooFewTrials, match="3 complete trials"):
        plots.importances(study)
    out = status(folder, "--refresh", columns=80)
    assert "param_importances.png not drawn: 3 complete trials" in " ".join(out.split()), out
    assert not (folder / "plots" / "param_importances.png").exists()
    more = [("COMPLETE", 0.9 + i / 100, dict(TRIALS[i % 3][2], **{"data.batch_size": 16 * (1 + i % 4)}),
             [0.9]) for i in range(4)]  # fmt: skip
    folder = make_study(tmp_path / "more", TRIALS + more)  # 7 complete: drawn, with a warning
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")
    title = plots.importances(study).axes[0].get_title()
    assert STUDY in title and "7 complete trials" in title and "rough guide" in title
    folder = make_study(tmp_path / "enough", TRIALS + more + more)  # 11 complete: no warning
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'study.db'}")
    fig = plots.importances(study)
    title = fig.axes[0].get_title()
    assert "11 complete trials" in title and "rough guide" not in title

    # The same trials give the same bars (fANOVA's forest is seeded): a refresh or a report
    # never shows different importances for an unchanged study.
    def bars(ax: Any) -> list[tuple[str, float]]:
        return [(t.get_text(), p.get_width()) for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)]

    assert bars(fig.axes[0]) == bars(plots.importances(study).axes[0])
