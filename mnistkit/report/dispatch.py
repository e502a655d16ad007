"""Which report a path asks for, and writing it: the one place that looks at the kind of folder.

``mnistkit report PATH [PATH ...]``: one run directory today. To add a kind (a sweep folder, a
group of seeds, several runs side by side), add a branch to :func:`build_page` that returns a
:class:`~mnistkit.report.page.Page`, and, if its report belongs elsewhere than ``PATH/report.html``,
to :func:`default_output`. Everything else (writing the file, the size, the CLI) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnistkit.errors import RunError
from mnistkit.report.page import Page, render_page

REPORT_FILE = "report.html"


@dataclass
class Written:
    """What ``write_report`` wrote: the file, its size in bytes, and the seconds it took."""

    path: Path
    bytes: int
    seconds: float

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()


def build_page(paths: list[Path]) -> Page:
    """The report for ``paths``, by what they are (a RunError for anything else)."""
    from mnistkit.runs.directory import RunDir

    if len(paths) == 1:
        path = paths[0]
        if not path.exists():
            raise RunError(f"{path}: no such folder (give a run directory)")
        if not path.is_dir():
            raise RunError(f"{path}: not a folder (give a run directory)")
        if RunDir.looks_like(path):
            from mnistkit.report.run_report import run_page

            return run_page(RunDir.open(path))
        raise RunError(
            f"{path}: not a run directory (no recipe.yaml or status.json); "
            "give a folder that `mnistkit run` wrote (see `mnistkit runs`)"
        )
    raise RunError(f"{len(paths)} folders given: a report of several runs is not supported yet; give one")


def default_output(paths: list[Path]) -> Path:
    """``report.html`` inside the (first) folder given."""
    return paths[0] / REPORT_FILE


def write_report(paths: list[Path], out: Path | None = None) -> Written:
    """Build the report for ``paths`` and write it (atomically) to ``out`` or the default place."""
    import time

    from mnistkit.fsutil import atomic_write_text

    if not paths:
        raise RunError("give a run directory: mnistkit report RUN_DIR")
    t0 = time.perf_counter()
    page = build_page([Path(p) for p in paths])
    html = render_page(page)
    target = Path(out) if out is not None else default_output([Path(p) for p in paths])
    if target.is_dir():
        target = target / REPORT_FILE
    if not target.parent.is_dir():
        raise RunError(f"-o {target}: the folder {target.parent} does not exist")
    atomic_write_text(target, html)
    return Written(target, target.stat().st_size, time.perf_counter() - t0)
