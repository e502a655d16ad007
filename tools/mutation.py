#!/usr/bin/env python
"""`make mutation`: mutation testing (mutmut) of the code where a wrong answer is silent.

A run that keeps the wrong checkpoint, stops at the wrong epoch, applies `--set` in the wrong
order or resumes with a reset early-stopping counter still finishes with exit code 0; only tests
can notice. This script plants mutmut's small bugs (mutants) in exactly those functions, one at a
time, runs the tests that cover each one, and lists the mutants no test noticed (survivors).
docs/testing.md explains the figures and every survivor we accept.

    python tools/mutation.py            # all targets (a few minutes on 2 cores)
    python tools/mutation.py --show     # ... and print the diff of every survivor
    python tools/mutation.py improves judge_epoch mnistkit/recipe/yamlio.py   # only these

It works in a scratch copy (build/mutation/, deleted and rebuilt each run), so the repository's
own files are never mutated. Why mutmut and not cosmic-ray: see docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"

# ----------------------------------------------------------------------------------------------
# THE TARGETS: module file -> the functions in it to mutate. When modules move (issue 9, the
# package layout), update the paths here; nothing else names them.
TARGETS: dict[str, list[str]] = {
    # the metric vocabulary: which way is better, what "auto" resolves to
    "mnistkit/recipe/metrics.py": [
        "higher_is_better",
        "metric_mode",
        "improves",
        "auto_metric",
        "best_metric_name",
        "run_metrics",
    ],
    # the rules after each epoch: best checkpoint, early stopping, target accuracy
    "mnistkit/training/rules.py": ["judge_epoch", "_best_so_far"],
    # --set application
    "mnistkit/recipe/yamlio.py": ["apply_overrides"],
    # checkpoint choice for eval/predict/--resume (--checkpoint best|last); methods as Class.method
    "mnistkit/runs/directory.py": ["RunDir.checkpoint_path", "RunDir.existing_checkpoint"],
    # resume state: what a checkpoint records and what --resume restores from it
    "mnistkit/training/state.py": ["checkpoint_state", "restore"],
    # which metric `mnistkit runs` reports as a run's best
    "mnistkit/runs/listing.py": ["best_metric_of"],
    # sweep sampling: a search space -> Optuna's distributions -> a trial's values -> its recipe
    "mnistkit/sweeps/objective.py": ["encoded_choices", "suggest"],
    "mnistkit/sweeps/spec.py": ["Sweep.trial_recipe", "_set_arg"],
    "mnistkit/sweeps/worker.py": ["make_sampler"],
    # component builders: a recipe section -> the torch object, its parameters passed on
    "mnistkit/build/components.py": [
        "spec_params",
        "build_loss",
        "build_optimizer",
        "Schedule.after_step",
        "Schedule.after_epoch",
        "build_schedule",
        "build_augment",
    ],
    "mnistkit/build/schedules.py": ["constant", "step", "cosine", "onecycle", "plateau"],
    "mnistkit/layers/modules.py": ["_torch", "lstm", "gru", "attention_pool", "build_layer"],
    "mnistkit/registry/core.py": ["Entry.renamed", "Entry.arguments", "Entry.create"],
}

# The tests that cover them: the tests written about these rules, not every test that happens to
# call them (every training run calls record_epoch; running all of those for each of ~200
# mutants does not fit 2 cores). mutmut runs these once to learn which test calls which
# function, then, for each mutant, only the tests that called its function (fastest first,
# stopping at the first failure). A test that reaches a target only in a subprocess (the `cli`
# fixture) is not traced that way: it counts only if it also calls the function in-process.
TESTS: list[str] = [
    # best checkpoint, early stopping, target accuracy, validation split
    "tests/test_training.py::test_target_accuracy_stops_at_the_first_epoch_reaching_it",
    "tests/test_training.py::test_early_stopping_stops_after_patience_epochs_without_improvement",
    "tests/test_training.py::test_val_split_adds_validation_columns",
    "tests/test_resume.py::test_validation_split_adds_val_columns_and_picks_best_by_val_acc",
    "tests/test_resume.py::test_early_stopping_stops_after_patience",
    "tests/test_fast_path.py::test_target_accuracy_stops_the_run_early",
    # resume state (not the Ctrl-C / kill -9 tests: their fixture starts 3 training processes,
    # over a minute per mutant on a busy machine)
    "tests/test_resume.py::test_resume_with_more_epochs_states_what_happens_to_the_schedule",
    "tests/test_resume.py::test_resume_of_a_finished_run_has_nothing_to_do",
    "tests/test_checkpoint.py::test_loaded_state_restores_model_optimizer_scheduler_and_rng",
    # --set
    "tests/test_shapes.py::test_set_override_is_named_as_the_location",
    "tests/test_cli.py::test_documented_defaults_are_the_real_defaults",
    # checkpoint choice, runs
    "tests/test_eval_predict.py::test_eval_and_predict_errors",
    "tests/test_eval_predict.py::test_eval_digits_report_and_table",
    "tests/test_runs_cmd.py",
    # issue 8: best epoch not the last (scripted metrics), resume state, --checkpoint, --set order
    "tests/test_best_and_stopping.py",
    "tests/test_overrides.py",
    # issue 9: the rules and the metric vocabulary on scripted rows, no training
    "tests/test_rules.py",
    "tests/test_metric_vocabulary.py",
    # issue 17: every declared parameter reaches torch; sweep distributions (in-process tests
    # only: the file's real sweep runs in a subprocess, which mutmut cannot trace)
    "tests/test_params_reach_torch.py",
    "tests/test_schedules.py",
    "tests/test_layers.py::test_declared_defaults_reach_builder_and_shape_function",
    "tests/test_sweep_params.py::test_each_range_is_handed_to_optuna_as_the_distribution_the_file_declares",
    "tests/test_sweep_params.py::test_a_log_range_is_sampled_on_a_log_scale",
    "tests/test_sweep_params.py::test_steps_give_only_values_on_the_grid_and_reach_both_bounds",
    "tests/test_sweep_params.py::test_tpe_keeps_every_value_inside_its_range_and_on_its_step",
    "tests/test_sweep_params.py::test_a_trial_recipe_holds_exactly_the_trial_s_values",
    "tests/test_sweep_params.py::test_a_seeded_sampler_repeats_its_values_and_each_worker_draws_its_own",
    "tests/test_sweep_params.py::test_tpe_draws_its_first_startup_trials_at_random_then_from_its_model",
    "tests/test_sweep_params.py::test_the_grid_sampler_tries_every_combination_once_in_a_seeded_order",
]
# ----------------------------------------------------------------------------------------------


# What the tests read besides the package (recipes/*.yaml, docs/recipe.md, the benchmark script).
COPIED = ("mnistkit", "tests", "recipes", "bench", "docs")


# mutmut's name for a method: xǁClassǁmethod (a function: x_function).
SEP = "\u01c1"


def mangled(fn: str) -> str:
    cls, _, name = fn.rpartition(".")
    return f"x{SEP}{cls}{SEP}{name}" if cls else f"x_{name}"


def selected_targets(only: list[str]) -> dict[str, list[str]]:
    """TARGETS, or the part of it whose function (or module path) is named in ``only``."""
    if not only:
        return TARGETS

    def named(path: str, fn: str) -> bool:
        return path in only or fn in only or fn.rpartition(".")[2] in only

    picked = {path: [fn for fn in fns if named(path, fn)] for path, fns in TARGETS.items()}
    for o in only:
        if not any(
            named(path, fn) and o in (path, fn, fn.rpartition(".")[2])
            for path, fns in TARGETS.items()
            for fn in fns
        ):
            sys.exit(f"{o}: not a function or module in TARGETS (the top of tools/mutation.py)")
    return {path: fns for path, fns in picked.items() if fns}


def mutant_globs(targets: dict[str, list[str]]) -> list[str]:
    """mutmut's names for the mutants of targets: mnistkit.recipe.metrics.x_improves__mutmut_7,
    mnistkit.runs.directory.xǁRunDirǁcheckpoint_path__mutmut_2, ..."""
    globs = []
    for path, functions in targets.items():
        module = path.removesuffix(".py").replace("/", ".")
        globs += [f"{module}.{mangled(fn)}__mutmut_*" for fn in functions]
    return globs


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def prepare() -> None:
    """A fresh scratch copy of the project with a [tool.mutmut] section for TARGETS/TESTS."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        shutil.copytree(REPO / name, WORK / name, ignore=ignore)
    config = f"""
[tool.mutmut]
source_paths = ["mnistkit/"]
only_mutate = {toml_list(list(TARGETS))}
also_copy = {toml_list([f"{name}/" for name in COPIED if name != "mnistkit"])}
pytest_add_cli_args_test_selection = {toml_list(TESTS)}
pytest_add_cli_args = ["-p", "no:cacheprovider"]
"""
    text = (REPO / "pyproject.toml").read_text()
    (WORK / "pyproject.toml").write_text(text + config)


def run_mutmut(env: dict[str, str], targets: dict[str, list[str]]) -> None:
    exe = Path(sys.executable).with_name("mutmut")
    cmd = [str(exe) if exe.exists() else "mutmut", "run", *mutant_globs(targets)]
    print("$", " ".join(cmd), flush=True)
    # mutmut redraws a progress line with \r; keep the log readable.
    proc = subprocess.run(cmd, cwd=WORK, env=env, capture_output=True, text=True)
    (WORK / "mutmut-run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(
            f"mutmut run failed ({proc.returncode}); see {WORK / 'mutmut-run.log'}:\n{proc.stderr[-3000:]}"
        )


def results(env: dict[str, str], targets: dict[str, list[str]]) -> dict[str, str]:
    """mutant name -> status (killed, survived, no tests, timeout, ...) for TARGETS' mutants."""
    exe = Path(sys.executable).with_name("mutmut")
    out = subprocess.run(
        [str(exe) if exe.exists() else "mutmut", "results", "--all", "true"],
        cwd=WORK,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wanted = [re.compile(g.replace(".", r"\.").replace("*", r"\d+") + "$") for g in mutant_globs(targets)]
    status = {}
    for line in out.splitlines():
        name, _, state = line.strip().partition(": ")
        if any(w.match(name) for w in wanted):
            status[name] = state.strip()
    return status


def function_of(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0].replace(".x_", ".").replace(f".x{SEP}", ".").replace(SEP, ".")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    p.add_argument(
        "only",
        nargs="*",
        help="mutate only these TARGETS functions (improves, RunDir.existing_checkpoint) or module paths",
    )
    args = p.parse_args(argv)
    targets = selected_targets(args.only)

    env = dict(os.environ)
    # The tests run from build/mutation/mutants/, where <repo>/../shared/data is not the real
    # data folder: point them at the one this checkout would use.
    sys.path.insert(0, str(REPO))
    from tests.conftest import ENV_TEST_DATA, shared_data_candidate

    env[ENV_TEST_DATA] = str(shared_data_candidate())
    prepare()
    run_mutmut(env, targets)
    status = results(env, targets)

    per_fn: dict[str, Counter[str]] = defaultdict(Counter)
    for name, state in status.items():
        per_fn[function_of(name)][state] += 1
    total = Counter(status.values())
    print(f"\n{'function':45} {'mutants':>7} {'killed':>7} {'survived':>8} {'other':>6}")
    for fn in sorted(per_fn):
        c = per_fn[fn]
        other = sum(c.values()) - c["killed"] - c["survived"]
        print(f"{fn:45} {sum(c.values()):7} {c['killed']:7} {c['survived']:8} {other:6}")
    other = sum(total.values()) - total["killed"] - total["survived"]
    print(f"{'total':45} {sum(total.values()):7} {total['killed']:7} {total['survived']:8} {other:6}")
    if other:
        print("other:", dict(total - Counter(killed=total["killed"], survived=total["survived"])))
    survivors = sorted(n for n, s in status.items() if s != "killed")
    print(f"\n{len(survivors)} not killed:" if survivors else "\nevery mutant was killed")
    exe = Path(sys.executable).with_name("mutmut")
    for name in survivors:
        print(f"  {name} ({status[name]})")
        if args.show:
            show = subprocess.run(
                [str(exe) if exe.exists() else "mutmut", "show", name],
                cwd=WORK,
                env=env,
                capture_output=True,
                text=True,
            )
            print("\n".join("      " + line for line in show.stdout.splitlines()))


if __name__ == "__main__":
    main()
