"""Command-line options that several commands share, declared once (typer ``Annotated`` types).

A module of its own so that the command modules registered by :mod:`mnistkit.cli.app` can
import them without importing ``app`` half-initialized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a recipe value, e.g. --set optimizer.lr=0.1 (repeatable; see `mnistkit fields`).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        help="Folder with the dataset files (beats data.root and $MNISTKIT_DATA).",
        metavar="DIR",
    ),
]
RunsOpt = Annotated[
    Path | None,
    typer.Option("--runs", help="Parent folder of run directories (default: runs).", metavar="DIR"),
]
TrackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--track",
        metavar="TRACKER",
        help="Log the run to an experiment tracker: mlflow or tensorboard (repeatable; the same as "
        "--set train.track=[...]; see docs/tracking.md).",
    ),
]
