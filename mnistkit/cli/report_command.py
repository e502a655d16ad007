"""``mnistkit report PATH [-o out.html]``: one self-contained HTML file explaining a run.

Nothing heavy at start-up: :mod:`mnistkit.report` (Jinja2, matplotlib, numpy) is imported inside
the command; the report never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command("report")
    def report(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="A run directory, a group of seeds (run --seeds N), a sweep folder, or several "
                "runs and groups to set side by side.",
                show_default=False,
                metavar="DIR",
            ),
        ],
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="The HTML file to write (default: report.html in the folder; required for "
                "several folders).",
                metavar="FILE",
            ),
        ] = None,
    ) -> None:
        """Write one HTML file that explains a run: curves, per-class scores, confusion matrix,
        mistakes, calibration. Everything inline: it opens offline, from anywhere.

        A group of seeds: members' curves with mean ± std, the summary, their reports.
        A sweep: history, importances, parallel coordinates, trials, pruning savings.
        Several runs or groups (-o FILE): side by side, with compare's verdict."""

        def body() -> None:
            from mnistkit.report import write_report

            written = write_report(paths, out)
            typer.echo(f"report: {written.path}")
            typer.echo(
                f"size:   {human_bytes(written.bytes)} ({written.bytes:,} bytes), "
                f"written in {written.seconds:.1f} s"
            )
            typer.echo(f"open:   {written.url}")

        guarded(body)


def human_bytes(n: int) -> str:
    """1,234,567 -> '1.2 MB' (powers of 1000, as file managers show them)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"
