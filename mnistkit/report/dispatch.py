"""Which report a path asks for, and writing it: the one place that looks at the kind of folder.

``mnistkit report PATH [PATH ...]``: a run directory (:mod:`~mnistkit.report.run_report`), a
group of seeds (:mod:`~mnistkit.report.group`), a sweep folder (:mod:`~mnistkit.report.sweep`),
or several runs and groups side by side (:mod:`~mnistkit.report.compare`, ``-o`` required). To add
a kind, add a branch to :func:`build_page` that returns a :class:`~mnistkit.report.page.Page`, and,
if its report belongs elsewhere than ``PATH/report.html``, to :func:`default_output`. Everything
else (writing the file, the size, the CLI) is shared.
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


NOT_A_REPORT_FOLDER = (
    "not a run directory, group of seeds or sweep folder (no recipe.yaml or status.json, no "
    "group.json, no sweep.json); give a folder that `mnistkit run`, `run --seeds N` or `mnistkit "
    "sweep` wrote (see `mnistkit runs`)"
)


def check_folders(paths: list[Path]) -> None:
    """Each path an existing folder (a RunError naming the first that is not)."""
    for path in paths:
        if not path.exists():
            raise RunError(
                f"{path}: no such folder (give a run directory, a group of seeds or a sweep folder)"
            )
        if not path.is_dir():
            raise RunError(f"{path}: not a folder (give a run directory, a group of seeds or a sweep folder)")


def build_page(paths: list[Path], out: Path) -> Page:
    """The report for ``paths``, by what they are (a RunError for anything else), to be written
    at ``out`` (the links in it are relative to that place)."""
    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.group import is_group
    from mnistkit.sweeps.outputs import is_sweep

    check_folders(paths)
    if len(paths) == 1:
        path = paths[0]
        if is_sweep(path):
            from mnistkit.report.sweep import sweep_page

            return sweep_page(path, out, run_report)
        if is_group(path):
            from mnistkit.report.group import group_page

            return group_page(path, out, run_report)
        if RunDir.looks_like(path):
            from mnistkit.report.run_report import run_page

            return run_page(RunDir.open(path))
        raise RunError(f"{path}: {NOT_A_REPORT_FOLDER}")
    from mnistkit.report.compare import compare_page

    return compare_page(paths, out)


def run_report(run: Path) -> Path:
    """The run's report.html, written first if it is missing (a sweep links its best trial's, a
    group its members')."""
    target = Path(run) / REPORT_FILE
    if not target.is_file():
        write_report([Path(run)], target)
    return target


def default_output(paths: list[Path]) -> Path:
    """``report.html`` inside the folder given; several folders have no default (the page
    belongs to none of them, and a run's own report.html must not be overwritten)."""
    if len(paths) > 1:
        from mnistkit.errors import Problem, RecipeError

        raise RecipeError(
            [
                Problem(
                    "usage",
                    "",
                    f"{len(paths)} folders given: say where their comparison goes with -o FILE.html",
                    f"mnistkit report {' '.join(str(p) for p in paths)} -o compare.html",
                )
            ]
        )
    return paths[0] / REPORT_FILE


def write_report(paths: list[Path], out: Path | None = None) -> Written:
    """Build the report for ``paths`` and write it (atomically) to ``out`` or the default place."""
    import time

    from mnistkit.fsutil import atomic_write_text

    if not paths:
        raise RunError("give a run directory, a group of seeds or a sweep folder: mnistkit report DIR")
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    check_folders(paths)
    target = Path(out) if out is not None else default_output(paths)
    if target.is_dir():
        target = target / REPORT_FILE
    if not target.parent.is_dir():
        raise RunError(f"-o {target}: the folder {target.parent} does not exist")
    html = render_page(build_page(paths, target))
    try:
        atomic_write_text(target, html)
    except OSError as exc:
        raise RunError(f"cannot write {target}: {exc.strerror}; write elsewhere with -o FILE") from None
    return Written(target, target.stat().st_size, time.perf_counter() - t0)
