"""``mnistkit sweep SWEEP.yaml`` and ``mnistkit sweep status DIR``: registered by :func:`register`.

Nothing heavy is imported at registration: Optuna and torch load when a sweep runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.errors import Problem, RecipeError, RunError
from mnistkit.recipe.metrics import format_metric
from mnistkit.recipe.tracking import track_sets
from mnistkit.runs.listing import format_seconds

DEFAULT_ROOT = Path("runs") / "sweeps"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_warnings(warnings: list[Problem]) -> None:
    from rich.markup import escape

    con = _console(stderr=True)
    for w in warnings:
        con.print(f"[yellow]warning[/] [cyan]{escape(w.where)}[/]: [bold]{w.field}[/]: {escape(w.message)}")
        if w.hint:
            con.print(f"    {escape(w.hint)}", style="dim")


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command(
        context_settings={"help_option_names": ["--help", "-h"]},
    )
    def sweep(
        target: Annotated[
            str, typer.Argument(help="A sweep file (SWEEP.yaml), or `status`.", show_default=False)
        ],
        folder: Annotated[
            Path | None, typer.Argument(help="With `status`: the sweep folder.", show_default=False)
        ] = None,
        workers: Annotated[
            int, typer.Option("--workers", "-w", help="Worker processes on this machine.")
        ] = 1,
        storage: Annotated[
            str | None,
            typer.Option(
                "--storage",
                help="Database URL shared by workers on several machines, e.g. "
                "postgresql+psycopg://user@host/db (password from $PGPASSWORD or ~/.pgpass); "
                "default $MNISTKIT_SWEEP_STORAGE, else an SQLite file in the sweep folder.",
            ),
        ] = None,
        study: Annotated[
            str | None, typer.Option("--study", help="With `status --storage`: the study name.")
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Sweep folder (default runs/sweeps/<study>).")
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a key of the base recipe."),
        ] = None,
        data_dir: Annotated[
            Path | None, typer.Option("--data-dir", "-d", help="Folder with the dataset files.")
        ] = None,
        progress: Annotated[str, typer.Option("--progress", help="auto | rich | plain | none")] = "auto",
        refresh: Annotated[
            bool,
            typer.Option(
                "--refresh",
                help="With `status`: also rewrite trials.csv, best.yaml, summary.json and plots/ "
                "from the storage (plain `status` only reads).",
            ),
        ] = False,
        worker_index: Annotated[int | None, typer.Option("--worker-index", hidden=True)] = None,
        track: Annotated[
            list[str] | None,
            typer.Option(
                "--track",
                metavar="TRACKER",
                help="Log the sweep to MLflow: a parent run per study, a nested run per trial "
                "(the same as --set 'train.track=[mlflow]'; see docs/tracking.md).",
            ),
        ] = None,
    ) -> None:
        """Search a recipe's hyperparameters with Optuna; `sweep status DIR` summarizes a sweep.

        `sweep status` only reads (it writes nothing); `sweep status --refresh` also rewrites
        the sweep's result files from the storage, as the sweep does when it ends.

        Runs trials until the sweep's budget of finished trials is reached; running the same
        command again continues the study, and the same command on another machine with the same
        --storage joins it. Each trial is an ordinary run directory SWEEP_FOLDER/trials/NNNN/.
        Exit codes: 0 done, 1 runtime failure, 2 invalid sweep file or usage, 130 Ctrl-C.
        """

        def body() -> None:
            if progress not in ("auto", "rich", "plain", "none"):
                raise RecipeError(
                    [Problem("usage", "", f"--progress {progress!r}: use auto, rich, plain or none")]
                )
            if target == "status":
                return _status(folder, storage, study, out, refresh)
            if refresh:
                raise RecipeError(
                    [
                        Problem(
                            "usage",
                            "",
                            "--refresh goes with `sweep status`",
                            "mnistkit sweep status DIR --refresh",
                        )
                    ]
                )
            if folder is not None:
                raise RecipeError(
                    [
                        Problem(
                            "usage",
                            "",
                            f"unexpected argument {str(folder)!r}",
                            "mnistkit sweep SWEEP.yaml [options]",
                        )
                    ]
                )
            if workers < 1:
                raise RecipeError([Problem("usage", "", "--workers must be at least 1")])
            sets = [*(set_ or []), *track_sets(track)]  # --track mlflow: the base recipe's train.track
            _run(Path(target), workers, storage, out, sets, data_dir, progress, worker_index)

        guarded(body)


def _run(
    path: Path,
    workers: int,
    storage: str | None,
    out: Path | None,
    overrides: list[str],
    data_dir: Path | None,
    progress: str,
    worker_index: int | None,
) -> None:
    from mnistkit.sweeps.spec import load_sweep
    from mnistkit.sweeps.storage import redact, storage_url

    sweep = load_sweep(path, overrides)  # every problem, exit 2, before anything is created
    spawned = worker_index is not None
    if not spawned:
        print_warnings(sweep.warnings)
    sweep_dir = out or DEFAULT_ROOT / sweep.study_name
    url = storage_url(storage, sweep_dir)

    from mnistkit.sweeps import outputs
    from mnistkit.sweeps.trials import counted
    from mnistkit.sweeps.worker import budget, open_study, run_processes, run_worker

    need = budget(sweep)
    if spawned:  # a worker process started by --workers N: no display, no summary
        outcome = run_worker(sweep, sweep_dir, url, data_dir, worker_index or 0)
        raise typer.Exit(130 if outcome.status == "interrupted" else 0)

    # The storage first: one that cannot be opened (wrong password, unreachable host) leaves no
    # sweep folder behind.
    study = open_study(sweep, url, create=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_meta(sweep_dir, sweep, redact(url), need)
    con = _console()
    con.print(
        f"sweep:     {sweep.study_name}: {need} trials, {sweep.direction} {sweep.spec.metric}, "
        f"{sweep.spec.sampler.name} sampler, {sweep.spec.pruner.name} pruner"
    )
    con.print(f"storage:   {redact(url)}")
    con.print(f"folder:    {sweep_dir}")
    from rich.markup import escape

    from mnistkit.sweeps.tracked import end_parent, open_parent, tracks

    if tracks(sweep):  # before any trial: every worker nests its trials under this run
        con.print(escape(f"tracking:  {open_parent(sweep, study, sweep_dir)}"))
    already = len(counted(study.get_trials(deepcopy=False)))
    if already:
        con.print(f"continuing: {already} of {need} trials already finished")

    display = _Display(progress, con, need)
    t0 = time.time()
    try:
        if workers == 1:
            outcome = run_worker(sweep, sweep_dir, url, data_dir, 0, refresh=display.refresh)
            interrupted = outcome.status == "interrupted"
        else:
            args = ["sweep", str(path), "--out", str(sweep_dir), "--storage", url]
            args += [a for ov in overrides for a in ("--set", ov)]
            args += ["--data-dir", str(data_dir)] if data_dir is not None else []
            codes, interrupted = run_processes(
                args, workers, sweep_dir / "workers", lambda: display.refresh(study)
            )
            bad = [c for c in codes if c not in (0, 130)]
            if bad and not interrupted:
                display.stop()
                raise RunError(
                    f"{len(bad)} of {workers} worker(s) failed (exit {bad[0]}); "
                    f"see {sweep_dir / 'workers'}/worker-*.log"
                )
        display.refresh(study, force=True)
    finally:
        display.stop()
    from mnistkit.sweeps.table import KEY_WIDTH, print_lines, status_lines

    written = outputs.write_outputs(study, sweep_dir, need)
    if tracks(sweep):
        end_parent(sweep, sweep_dir, study, interrupted)
    print_lines(con, status_lines(study, need, sweep_dir))
    con.print(f"{'time:':<{KEY_WIDTH}}{time.time() - t0:.1f} s")
    _print_saved(con, written, sweep_dir)
    from rich.markup import escape

    again = escape("mnistkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if interrupted:
        con.print(f"[yellow]stopped[/]: every running trial saved a checkpoint. Continue with:\n    {again}")
        raise typer.Exit(130)
    done = len(counted(study.get_trials(deepcopy=False)))
    if done < need:  # the timeout ended it
        con.print(f"[yellow]timeout[/]: {done} of {need} trials finished. Continue with:\n    {again}")
    elif already >= need:  # nothing ran: say how to run more
        more = (
            f"this study already has {already} of {need} trials; nothing was run. To run more: "
            f"raise `trials:` in {path} (this study continues), or start a new search with a new "
            f"`study:` name in {path} or --out DIR"
        )
        print_lines(con, [("finished", [more])])


def _print_saved(con: Any, written: Any, sweep_dir: Path) -> None:
    """What the sweep (or `status --refresh`) wrote, plots not drawn yet, and the rerun command."""
    from mnistkit.sweeps.table import print_lines

    names = [str(p.relative_to(sweep_dir)) for p in written.paths if p.parent == sweep_dir]
    if any(p.parent == sweep_dir / "plots" for p in written.paths):
        names.append("plots/")
    print_lines(con, [("saved", [*names[:-1], f"{names[-1]} in {sweep_dir}"])])
    print_lines(con, [("plots", [note]) for note in written.notes])
    _print_rerun(con, sweep_dir)


def _print_rerun(con: Any, sweep_dir: Path) -> None:
    """The command that reruns the best trial, with the path as the user gave the folder (it works
    from where they are)."""
    from mnistkit.sweeps.table import print_lines

    best = sweep_dir / "best.yaml"
    if best.is_file():
        print_lines(con, [("rerun", [f"the best trial with plots: mnistkit run {shlex.quote(str(best))}"])])


def _write_meta(sweep_dir: Path, sweep: Any, url: str, need: int) -> None:
    from mnistkit.fsutil import atomic_write_text

    meta = {
        "study": sweep.study_name,
        "storage": url,
        "sweep_file": str(sweep.path.resolve()),
        "recipe": str(sweep.recipe_path.resolve()),
        "overrides": sweep.overrides,
        "budget": need,
    }
    atomic_write_text(sweep_dir / "sweep.json", json.dumps(meta, indent=2) + "\n")


def _status(
    folder: Path | None, storage: str | None, study_name: str | None, out: Path | None, refresh: bool
) -> None:
    """The trials and the summary, read from the storage; writes nothing unless ``refresh``."""
    from mnistkit.sweeps import outputs

    if folder is not None:
        opened = outputs.open_sweep(folder, storage, study_name)
        study, budget, sweep_dir = opened.study, opened.budget, out or folder
    else:
        url = storage or os.environ.get("MNISTKIT_SWEEP_STORAGE") or ""
        if not url or not study_name:
            raise RecipeError(
                [
                    Problem(
                        "usage",
                        "",
                        "mnistkit sweep status DIR, or: mnistkit sweep status --storage URL --study NAME",
                    )
                ]
            )
        study = outputs.load_study(url, study_name, storage)
        budget, sweep_dir = None, out or DEFAULT_ROOT / study_name
    from mnistkit.sweeps.table import fitted_table, print_lines, status_lines

    con = _console()
    con.print(fitted_table(con, study, budget, last=50))
    print_lines(con, status_lines(study, budget, sweep_dir))
    if refresh:
        _print_saved(con, outputs.write_outputs(study, sweep_dir, budget), sweep_dir)
    else:
        _print_rerun(con, sweep_dir)


class _Display:
    """The live table of trials (Rich on a terminal), or a line per finished trial (logs)."""

    def __init__(self, progress: str, console: Any, budget: int) -> None:
        mode = progress
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode, self.console, self.budget = mode, console, budget
        self.live: Any = None
        self.seen: set[int] = set()
        self.last = 0.0

    def refresh(self, study: Any, force: bool = False) -> None:
        now = time.monotonic()
        if self.mode == "none" or (now - self.last < 0.5 and not force):
            return
        self.last = now
        from rich.markup import escape

        from mnistkit.sweeps import outputs
        from mnistkit.sweeps.table import NOT_PARAMS, fitted_table, format_params

        if self.mode == "rich":
            table = fitted_table(self.console, study, self.budget)
            if self.live is None:
                from rich.live import Live

                self.live = Live(table, console=self.console, auto_refresh=False, transient=False)
                self.live.start()
            self.live.update(table, refresh=True)
            return
        metric = study.user_attrs.get("metric")
        for r in outputs.trial_rows(study):
            if r["state"] in ("COMPLETE", "PRUNED", "FAIL") and r["number"] not in self.seen:
                self.seen.add(r["number"])
                params = ", ".join(format_params({k: v for k, v in r.items() if k not in NOT_PARAMS}))
                value = f" {format_metric(metric, r['value'])}" if r["value"] is not None else ""
                note = f" ({r['reason']})" if r["reason"] else ""
                line = f"trial {r['number']:>3} {r['state']:<8}{value} {params}"
                self.console.print(
                    escape(f"{line} ({r['epochs']} epochs, {format_seconds(r['seconds'])}){note}")
                )

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            if not self.console.is_terminal:
                self.console.print()  # the table's last line has no newline off a terminal
