"""Sweeps end to end on the default storage (SQLite in the sweep folder), in real processes.

Each trial is a real run of the quick start's MLP on a slice of the bundled digits (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

from sweep_helpers import REPO, finished, read_trials, write_sweep

from mnistkit.recipe.schema import load_recipe, load_recipe_located, resolved_dict


def test_a_sweep_runs_trials_as_ordinary_runs_and_leaves_its_results(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 3)
    out = tmp_path / "s"
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert "trials:    3 of 3 finished: 3 COMPLETE" in res.stdout
    _, base_origins = load_recipe_located(REPO / "recipes" / "quickstart.yaml")
    for r in rows:  # each trial: a run directory with its exact recipe, seed = base seed + number
        run_dir = out / r["run_dir"]
        recipe = load_recipe(run_dir / "recipe.yaml")
        assert recipe.seed == 0 + int(r["number"])
        assert recipe.optimizer.lr == float(r["optimizer.lr"])
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 2
        # Where each value came from (the trial's report): the base recipe's own lines, as a plain
        # run of it records them, and the sweep for the trial's parameters and seed.
        origins = json.loads((run_dir / "origins.json").read_text())
        assert origins["optimizer.lr"] == f"sweep sweep.yaml: trial {r['number']}'s params.optimizer.lr"
        assert origins["seed"].startswith("sweep sweep.yaml: the recipe's seed 0 + trial number")
        assert origins["data.dataset"] == base_origins["data.dataset"]
        assert origins["epochs"] == f"{sweep}:5:11"  # the sweep file's set: (line 5, column 11)

    summary = json.loads((out / "summary.json").read_text())
    best = max(rows, key=lambda r: float(r["value"]))
    assert summary["best"]["number"] == int(best["number"])
    assert summary["states"]["COMPLETE"] == 3 and summary["epochs_run"] == 6
    best_yaml = (out / "best.yaml").read_text()
    assert f"trial {best['number']} " in best_yaml.splitlines()[0]
    trial_recipe = resolved_dict(load_recipe(out / best["run_dir"] / "recipe.yaml"))
    assert trial_recipe["train"]["plots"] is False
    trial_recipe["train"]["plots"] = True  # best.yaml reruns the winner with plots
    assert resolved_dict(load_recipe(out / "best.yaml")) == trial_recipe
    assert (out / "plots" / "optimization_history.png").stat().st_size > 0

    # `mnistkit run` of a trial's recipe.yaml reproduces the trial.
    rerun = tmp_path / "rerun"
    res = cli("run", out / "trials/0001/recipe.yaml", "--out", rerun, "--progress", "none", timeout=120)
    assert res.returncode == 0, res.stderr
    again = (rerun / "metrics.csv").read_text().splitlines()[-1].split(",")
    first = (out / "trials/0001/metrics.csv").read_text().splitlines()[-1].split(",")
    assert again[:6] == first[:6]  # epoch, losses and accuracies (not the timings)

    # The same command again: the budget is reached, nothing runs.
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "continuing: 3 of 3 trials already finished" in res.stdout
    assert len(read_trials(out)) == 3 and not (out / "trials/0003").exists()
    # ... and says how to run more.
    hint = " ".join(res.stdout.split())
    assert "nothing was run. To run more:" in hint, res.stdout
    assert f"raise `trials:` in {sweep}" in hint and "a new `study:` name" in hint and "--out DIR" in hint

    # status --refresh regenerates everything from the storage.
    for name in ("trials.csv", "best.yaml", "summary.json"):
        (out / name).unlink()
    res = cli("sweep", "status", out, "--refresh", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "3 of 3 finished: 3 COMPLETE" in res.stdout
    assert "epochs:    6 run of 6 unpruned" in res.stdout
    assert read_trials(out) == rows and (out / "best.yaml").read_text() == best_yaml


def test_the_same_seed_gives_the_same_parameters_in_the_same_order(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 3, extra="")
    params = []
    for name in ("a", "b"):
        res = cli(
            "sweep",
            sweep,
            "--out",
            tmp_path / name,
            "--set",
            "data.limit=200",
            "--progress",
            "none",
            timeout=300,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        params.append([(r["optimizer.lr"], r["model.hidden"]) for r in read_trials(tmp_path / name)])
    assert params[0] == params[1] and len(set(params[0])) == 3


def test_kill_9_mid_trial_is_retried_from_its_checkpoint(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 2)
    out = tmp_path / "s"
    # The worker kills itself (SIGKILL) during step 3 of epoch 2 of its first trial.
    res = cli(
        "sweep", sweep, "--out", out, "--progress", "none", env={"MNISTKIT_KILL_AT": "2:3"}, timeout=300
    )
    assert res.returncode == -9, res.stdout + res.stderr
    assert (out / "trials/0000/last.pt").exists()
    # Started again: trial 0 goes stale (heartbeat grace 3 s), is failed and retried, resumed.
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    assert rows[0]["state"] == "FAIL" and "heartbeat stale" in rows[0]["reason"], rows
    [retry] = [r for r in rows if r["retry_of"] == "0"]
    assert retry["state"] == "COMPLETE" and retry["run_dir"] == "trials/0000"
    status = json.loads((out / "trials/0000/status.json").read_text())
    assert status["status"] == "finished" and len(status["resumed"]) == 1  # resumed, not restarted
    metrics = (out / "trials/0000/metrics.csv").read_text().splitlines()
    assert [m.split(",")[0] for m in metrics[1:]] == ["1", "2"]
    assert len(finished(rows)) == 2 and not [r for r in rows if r["state"] == "RUNNING"]


def test_ctrl_c_stops_at_a_safe_point_and_the_same_command_continues(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 2)
    out = tmp_path / "s"
    res = cli(
        "sweep", sweep, "--out", out, "--progress", "plain", env={"MNISTKIT_KILL_AT": "2:2:INT"}, timeout=300
    )
    assert res.returncode == 130, res.stdout + res.stderr
    assert "Continue with:" in res.stdout and f"sweep {sweep} --out {out}" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    assert rows[0]["state"] == "FAIL" and rows[0]["reason"].startswith("interrupted (Ctrl-C)")
    [retry] = [r for r in rows if r["retry_of"] == "0"]
    assert retry["state"] == "COMPLETE"
    status = json.loads((out / "trials/0000/status.json").read_text())
    assert len(status["resumed"]) == 1
    assert len(finished(rows)) == 2


def test_a_trial_that_fails_at_run_time_is_fail_with_its_reason(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 2)
    out = tmp_path / "s"
    res = cli(
        "sweep", sweep, "--out", out, "--progress", "plain", env={"MNISTKIT_NAN_AT": "1:2"}, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr  # the sweep goes on
    rows = read_trials(out)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    assert all(r["reason"].startswith("loss became nan at epoch 1, step 2") for r in rows), rows
    assert not (out / "best.yaml").exists()


def test_pruned_trials_are_pruned_and_report_every_epoch(cli, tmp_path: Path) -> None:
    # Grid over a learning rate that trains and one that cannot: with the grid's seeded order the
    # useless one runs second and is pruned after its warm-up epoch.
    sweep = tmp_path / "sweep.yaml"
    text = write_sweep(tmp_path, 2).read_text()
    text = text.replace("pruner: none", "pruner: {name: median, warmup_epochs: 1, startup_trials: 1}")
    text = text.replace("sampler: {name: tpe, seed: 0, startup_trials: 2}", "sampler: {name: grid, seed: 1}")
    text = text.replace("{float: [1.0e-3, 3.0e-2], log: true}", "{choice: [0.01, 1.0e-7]}")
    text = text.replace("  model.hidden: {choice: [[64], [32, 16]]}\n", "").replace("epochs: 2", "epochs: 3")
    sweep.write_text(text)
    out = tmp_path / "s"
    res = cli("sweep", sweep, "--out", out, "--progress", "plain", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_trials(out)
    assert [(r["optimizer.lr"], r["state"]) for r in rows] == [("0.01", "COMPLETE"), ("1e-07", "PRUNED")]
    assert rows[1]["epochs"] == "2" and rows[1]["reason"].startswith("pruned after epoch 2: val_acc")
    status = json.loads((out / rows[1]["run_dir"] / "status.json").read_text())
    assert status["stop_reason"].startswith("pruned after epoch 2") and status["epochs_done"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["epochs_run"], summary["epochs_unpruned"]) == (5, 6)


def test_a_password_in_the_storage_url_is_refused(cli, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, 2)
    res = cli("sweep", sweep, "--out", tmp_path / "s", "--storage", "postgresql+psycopg://me:hunter2@db/x")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "the storage URL contains a password" in res.stderr and "PGPASSWORD" in res.stderr
    assert "hunter2" not in res.stdout + res.stderr
    assert not (tmp_path / "s").exists()
