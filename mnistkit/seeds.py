"""Several seeds of one recipe: ``mnistkit run RECIPE --seeds N`` (or ``seeds: [...]`` in it).

Each seed is an ordinary run (:func:`mnistkit.session.run`, exactly what ``mnistkit run --set
seed=K`` does) into ``seed-K/`` of one group folder (:mod:`mnistkit.runs.group` has its layout).
They run one after another in this process and share the loaded dataset
(:class:`~mnistkit.data.loading.SharedData`): only the first run reads the files. After every
run, summary.json is rewritten; at the end the mean ± std, min and max table is shown.

Ctrl-C stops the run in progress at its next safe point (its checkpoint is written) and the
group after it; ``mnistkit run --resume GROUP`` continues that run and starts the ones not run
yet. A seed whose run fails (its loss became NaN) is recorded as failed and the group goes on;
a failure before training starts (the data cannot be loaded) stops the group, since every seed
would meet it.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from mnistkit.data.loading import SharedData
from mnistkit.errors import RunError
from mnistkit.recipe.expect import EXIT_MISSED, format_value
from mnistkit.recipe.metrics import format_metric
from mnistkit.recipe.schema import Recipe, load_recipe, load_recipe_text, resolved_dict
from mnistkit.runs import group as groups
from mnistkit.runs.directory import RunDir, run_process_alive
from mnistkit.runs.tables import fit, table
from mnistkit.session import RunOptions, run

__all__ = ["GroupOptions", "resume_group", "run_group"]


@dataclass
class GroupOptions:
    data_dir: Path | None = None
    out: Path | None = None  # the group folder (default: RUNS/<name>-seeds-<time>)
    runs_root: Path = Path("runs")
    progress: str | None = None
    command: str = "mnistkit"  # how the user ran mnistkit (cli/invocation.py)
    origins: dict[str, str] | None = None  # where each recipe value was written (origins.json)


def run_group(recipe: Recipe, recipe_path: Path, seeds: list[int], opts: GroupOptions) -> int:
    """A new group: one run per seed. Returns the exit code (0, 1 if a seed failed, 4 if one
    missed an expectation, 130 on Ctrl-C)."""
    path = RunDir.create(opts.runs_root, f"{recipe.name or 'run'}-seeds", opts.out).path
    base = recipe.model_copy(update={"seeds": None})
    group = {
        "kind": groups.KIND,
        "name": recipe.name,
        "recipe": str(recipe_path),
        "members": [groups.member_name(s) for s in seeds],
        "seeds": list(seeds),
        "started": time.time(),
        # What the seeds that have not run yet are started from on --resume (the recipe file may
        # have changed since): the resolved recipe, and the --data-dir it was given.
        "recipe_resolved": resolved_dict(base),
        "data_dir": str(opts.data_dir.resolve()) if opts.data_dir is not None else None,
        # Where each value was written, for every member's origins.json (report: "Recipe").
        "origins": opts.origins,
        "pid": os.getpid(),
    }
    groups.write_group(path, group)
    return _run_members(path, group, base, [], opts)


def resume_group(path: Path, overrides: list[str], opts: GroupOptions) -> int:
    """``mnistkit run --resume GROUP``: continue the unfinished seed, then start the rest."""
    group = groups.read_group(path, "--resume")
    pid = group.get("pid")
    if pid != os.getpid() and run_process_alive(pid):
        raise RunError(
            f"--resume {path}: that group is still running (process {pid}); stop it first "
            "(Ctrl-C saves a checkpoint), then resume"
        )
    group["pid"] = os.getpid()
    groups.write_group(path, group)
    text = yaml.safe_dump(group["recipe_resolved"], sort_keys=False)
    base = load_recipe_text(text, f"{path / groups.GROUP_FILE} (its recipe)")
    if opts.data_dir is None and group.get("data_dir"):
        opts.data_dir = Path(group["data_dir"])
    return _run_members(path, group, base, overrides, opts)


def _run_members(
    path: Path, group: dict[str, Any], base: Recipe, overrides: list[str], opts: GroupOptions
) -> int:
    con = Console(highlight=False, soft_wrap=True)
    resume_as = f"{opts.command} run --resume {shlex.quote(str(path))}"
    shared = SharedData()
    seeds, members = group["seeds"], group["members"]
    failed: list[str] = []
    for i, (seed, member) in enumerate(zip(seeds, members, strict=True)):
        run_dir = path / member
        info = groups.member_info(path, member)
        if info.status in ("finished", "failed"):
            if i == 0 or info.status == "failed":
                con.print(f"{escape(member)}: {info.status} already", style="dim")
            failed += [member] if info.status == "failed" else []
            continue
        resume = run_dir if (run_dir / "last.pt").is_file() else None
        if resume is None and run_dir.exists() and any(run_dir.iterdir()):
            # Stopped before its first checkpoint: nothing to continue. Kept aside, never deleted.
            run_dir.rename(run_dir.with_name(f"{member}.incomplete-{int(time.time())}"))
        if resume is not None:
            recipe = load_recipe(RunDir(run_dir).recipe_path, overrides)
        else:
            recipe = _member_recipe(base, seed, overrides)
        con.rule(f"seed {seed} ({i + 1} of {len(seeds)}): {escape(str(run_dir))}", align="left")
        run_opts = RunOptions(
            data_dir=opts.data_dir,
            out=None if resume else run_dir,
            resume=resume,
            progress=opts.progress,
            command=opts.command,
            again=resume_as,
            shared_data=shared,
            resume_as=resume_as,
            origins=_member_origins(group, seed, overrides),
        )
        try:
            result = run(recipe, run_opts)
        except KeyboardInterrupt:
            _close(con, path, resume_as, interrupted=True)
            raise
        except RunError as exc:
            if RunDir(run_dir).read_status().get("status") != "failed":
                _close(con, path, resume_as, interrupted=True)
                raise  # not this seed's failure (data, device): every seed would meet it
            con.print(f"[bold red]{escape(member)} failed:[/] {escape(str(exc))}")
            failed.append(member)
            groups.write_summary(path)
            continue
        groups.write_summary(path)
        if result.status == "interrupted":
            _close(con, path, resume_as, interrupted=True)
            return 130
    _close(con, path, resume_as, interrupted=False)
    if failed:
        return 1
    return EXIT_MISSED if _report_missed(con, path, members) else 0


def _report_missed(con: Console, path: Path, members: list[str]) -> int:
    """A line per seed whose run missed an expectation of the recipe's ``expect:`` (its
    status.json says which); the group exits as a single run would (code 4) when any did."""
    n = 0
    for member in members:
        outcomes = RunDir(path / member).read_status().get("expect") or []
        for o in outcomes:
            if not o.get("met"):
                n += 1
                what = f"{o['name']} {o['condition']}: {format_value(o['name'], o['value'])}"
                con.print(f"[bold red]missed:[/] {escape(member)}: {escape(what)}")
    return n


def _member_origins(group: dict[str, Any], seed: int, overrides: list[str]) -> dict[str, str] | None:
    """The group's origins with this member's seed (and --resume's --set), or None where the
    group did not record them (a group started before origins were kept)."""
    origins = group.get("origins")
    if origins is None:
        return None
    # The member itself is one seed of the group, not a group.
    out = {k: v for k, v in origins.items() if k != "seeds" and not k.startswith("seeds[")}
    out["seed"] = f"one of the group's seeds ({', '.join(map(str, group['seeds']))})"
    for item in overrides:
        out[item.split("=", 1)[0].strip()] = f"--set {item}"
    return out


def _member_recipe(base: Recipe, seed: int, overrides: list[str]) -> Recipe:
    """The recipe of seed ``seed``: the base recipe with that seed (and --resume's --set)."""
    recipe = base.model_copy(update={"seed": seed, "seeds": None})
    if not overrides:
        return recipe
    text = yaml.safe_dump(resolved_dict(recipe), sort_keys=False)
    return load_recipe_text(text, f"the recipe of seed {seed}", overrides)


def _close(con: Console, path: Path, resume_as: str, *, interrupted: bool) -> None:
    """summary.json, the table of the finished seeds, and how to continue an unfinished group."""
    summary = groups.write_summary(path)
    con.print()
    for t in summary_tables(con, summary, path):
        con.print(t)
    con.print(escape(groups.STD_NOTE), style="dim")
    for member, status in summary["not_finished"].items():
        con.print(f"{escape(member)}: {escape(status)}")
    con.print(f"saved: {escape(str(path))}")
    if interrupted or any(s != "failed" for s in summary["not_finished"].values()):
        con.print(f"resume: {escape(resume_as)}")


def summary_tables(con: Console, summary: dict[str, Any], path: Path) -> list[Any]:
    """The summary as a table (mean ± std, min, max per metric) that fits the console."""
    n = len(summary["finished"])
    total = n + len(summary["not_finished"])
    title = f"{escape(path.name)}: {n} of {total} seeds finished"
    if not summary["metrics"]:
        return [title]
    return [fit(con, [lambda box=box: _summary_table(summary, title, box) for box in (True, False)])]


def _summary_table(summary: dict[str, Any], title: str, box: bool) -> Any:
    t = table(box, title=title)
    t.add_column("metric", no_wrap=True)
    for col in ("mean ± std", "min", "max"):
        t.add_column(col, justify="right", no_wrap=True, overflow="fold")
    for key, s in summary["metrics"].items():
        label, show = _label(key)
        std = "-" if s["std"] is None else show(s["std"])
        t.add_row(label, f"{show(s['mean'])} ± {std}", show(s["min"]), show(s["max"]))
    return t


def _label(key: str) -> tuple[str, Any]:
    """('final test_acc', formatter) for 'final_test_acc'; accuracies in %, losses to 4 places."""
    if key == groups.EPOCH_SECONDS:
        return "epoch time (s)", lambda v: f"{v:.2f}"
    kind, _, metric = key.partition("_")
    return f"{kind} {metric}", lambda v: format_metric(metric, v)
