"""``mnistkit track RUN_DIR... [--to URI]``: log finished (or stopped) runs to MLflow after
the fact: runs made without tracking, or while the tracking server was down.

The same code as live tracking (:mod:`mnistkit.tracking.mlflow_record`) reads the run
directory, so the result is the same; running it again sends only what is missing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.errors import RunError


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command()
    def track(
        run_dirs: Annotated[
            list[Path], typer.Argument(help="Run directories.", show_default=False, metavar="RUN_DIR")
        ],
        to: Annotated[
            str | None,
            typer.Option(
                "--to",
                metavar="URI",
                help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then the recipe's "
                "train.mlflow.tracking_uri, then MLflow's default).",
            ),
        ] = None,
    ) -> None:
        """Log runs to MLflow after the fact; running it again duplicates nothing."""
        guarded(lambda: _track(run_dirs, to))


def _track(run_dirs: list[Path], to: str | None) -> None:
    from mnistkit.recipe.tracking import MLFLOW_INSTALL, mlflow_installed

    if not mlflow_installed():
        raise RunError(f"mnistkit track needs the mlflow package: {MLFLOW_INSTALL}")
    from mnistkit.runs.directory import RunDir, run_process_alive
    from mnistkit.tracking.mlflow_record import MlflowRecord, mask

    failed = 0
    for path in run_dirs:
        run = RunDir.open(path, "track")
        status = run.read_status()
        if status.get("status") == "running" and run_process_alive(status.get("pid")):
            raise RunError(f"{path}: still running (process {status['pid']}); track it when it has stopped")
        try:
            record = MlflowRecord(run, to)
            missing = record.sync()
        except RunError:
            raise
        except Exception as exc:  # the server is down, a bad URI: say it, try the next run
            failed += 1
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            typer.echo(mask(f"error: {path}: {type(exc).__name__}: {first}"), err=True)
            continue
        said = (
            f"tracked {path}: MLflow run {record.run_id} at {record.shown_uri} "
            f"({record.expected.status.lower()}, {len(record.expected.rows)} epochs, "
            f"{missing} metric points were missing)"
        )  # 80 columns; a path or URI longer than a line stays whole
        typer.echo(textwrap.fill(said, 80, subsequent_indent="    ", break_long_words=False))
    if failed:
        raise typer.Exit(1)
