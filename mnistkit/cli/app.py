"""Command line: ``mnistkit run | validate | list | schema | fields | eval | predict | runs | compare``,
``export``, ``serve``.

Start-up stays instant: this module imports neither torch nor anything that does; commands that
train or evaluate import :mod:`mnistkit.session` (and torch) only when they run.
Exit codes: 0 ok, 1 runtime failure (missing data, bad checkpoint), 2 invalid recipe or usage,
4 a recipe's expectation missed (``expect:``), 130 interrupted by Ctrl-C.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mnistkit.cli.options import DataDirOpt, RunsOpt, SetOpt, TrackOpt
from mnistkit.errors import RecipeError, RunError
from mnistkit.recipe.resume import RESUMABLE
from mnistkit.recipe.tracking import track_sets
from mnistkit.training.threads import quiet_openmp

_SETTINGS: dict[str, Any] = dict(
    name="mnistkit",
    help="Declarative PyTorch training: YAML recipes are validated, built from registries, trained.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_app = typer.Typer(**_SETTINGS)

_state: dict[str, bool] = {"debug": False}


def _help_shows_words_not_types() -> None:
    """Recent typer releases print a Python type beside every option in --help (``<bool>`` for
    flags, ``<path>``); users read the metavars set below (DIR, RUN_DIR, MODE) and nothing for
    a flag. Older releases have no such column and are left as they are."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - typer without its own core module
        return
    for cls in (TyperOption, TyperArgument):
        shown = getattr(cls, "display_type_rich", None)
        if shown is None or getattr(shown, "_mnistkit", False):
            continue

        def display(self: Any, ctx: Any, _shown: Any = shown) -> str | None:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            if isinstance(self, TyperArgument):  # its name column already shows the metavar
                return None
            return self.metavar if self.metavar is not None else _shown(self, ctx)

        display._mnistkit = True  # type: ignore[attr-defined]
        cls.display_type_rich = display  # type: ignore[method-assign]


_help_shows_words_not_types()

T = TypeVar("T")


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_problems(exc: RecipeError) -> None:
    """Every problem of a recipe on stderr: place, field, what is wrong, then the hint."""
    con = _stderr()
    for p in exc.problems:
        con.print(
            f"[bold red]error[/] [cyan]{p.where}[/]: "
            + (f"[bold]{p.field}[/]: " if p.field else "")
            + _esc(p.message)
        )
        if p.hint:
            con.print(f"    {_esc(p.hint)}", style="dim")
    n = len(exc.problems)
    con.print(f"{n} problem{'s' if n != 1 else ''} found", style="red")


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body; turn known failures into a message and an exit code, not a traceback."""
    try:
        return fn()
    except RecipeError as exc:
        print_problems(exc)
        raise typer.Exit(2) from None
    except RunError as exc:
        _stderr().print(f"[bold red]error:[/]{_rank_tag()} {_esc(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except BrokenPipeError:
        # `mnistkit runs | head -1`: the reader has gone. Not an internal error: click stops
        # quietly with exit code 1, as it does for the commands outside this guard.
        raise
    except Exception as exc:
        if _state["debug"]:
            raise
        _stderr().print(
            f"[bold red]internal error:[/]{_rank_tag()} {type(exc).__name__}: {_esc(str(exc))}\n"
            "    run again with --debug for the traceback, and please report it"
        )
        raise typer.Exit(1) from None


def _rank_tag() -> str:
    """' (rank R)' in a process started by torchrun as one of several, so a failure names its
    process; empty otherwise. (Read from the environment: no torch import here.)"""
    import os

    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f" (rank {rank})" if world.isdigit() and int(world) > 1 else ""


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _print_version(value: bool) -> None:
    if value:
        from mnistkit import __version__

        print(f"mnistkit {__version__}")
        raise typer.Exit(0)


@_app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for unexpected errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print mnistkit's version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    _state["debug"] = debug


@_app.command()
def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML file.", show_default=False, metavar="RECIPE")
    ] = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (must not exist or be empty).", metavar="DIR"),
    ] = None,
    runs_root: RunsOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue the run in this run directory.", metavar="RUN_DIR"),
    ] = None,
    progress: Annotated[
        str | None, typer.Option("--progress", help="auto | rich | plain | none", metavar="MODE")
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            metavar="N",
            help="Train with N processes on this machine (data-parallel, through torchrun; "
            "data.batch_size stays the global batch). See docs/distributed.md.",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            min=1,
            metavar="N",
            help="Train the recipe N times, with seeds seed, seed+1, ...: one group folder of runs "
            "and a summary (mean ± std, min, max). See docs/runs.md.",
            show_default=False,
        ),
    ] = None,
    track: TrackOpt = None,
) -> None:
    """Train a recipe: live progress, a row per epoch, everything saved to a run directory."""
    set_ = [*(set_ or []), *track_sets(track)]

    def body() -> None:
        from mnistkit.recipe.schema import load_recipe_located

        _check_run_args(recipe, resume, out, runs_root, progress)
        from mnistkit.cli import seeds_cli
        from mnistkit.runs.group import is_group

        if resume is not None and is_group(resume):  # a group of seeds: continue all of it
            if seeds is not None:
                raise RecipeError([_usage("--seeds cannot be used with --resume: a group keeps its seeds")])
            seeds_cli.refuse_nproc(nproc)
            _exit(seeds_cli.resume(resume, set_ or [], data_dir, progress))
            return
        origins = None
        if resume is not None:
            rec = _resume_recipe(resume, set_ or [])
        else:
            assert recipe is not None
            rec, origins = load_recipe_located(recipe, set_ or [])
            group = seeds_cli.seeds_of(recipe, rec, seeds, set_ or [])
            if group is not None:
                seeds_cli.refuse_nproc(nproc)
                _exit(seeds_cli.start(recipe, rec, group, data_dir, out, runs_root, progress, origins))
                return
        if seeds is not None:
            raise RecipeError([_usage("--seeds cannot be used with --resume RUN_DIR (one run)")])
        if nproc is not None:
            # Checked here, after the recipe: a bad recipe is reported once, not by N processes.
            code = _launch(nproc, recipe, set_ or [], data_dir, out, runs_root, resume, progress)
            if code:
                raise typer.Exit(code)
            return
        from mnistkit.cli.invocation import invoked_as
        from mnistkit.session import RunOptions
        from mnistkit.session import run as run_recipe

        command = invoked_as()
        result = run_recipe(
            rec,
            RunOptions(
                data_dir=data_dir,
                out=out,
                runs_root=runs_root or Path("runs"),
                resume=resume,
                progress=progress,
                command=command,
                again=_again(command, recipe, set_ or [], data_dir, out, runs_root),
                origins=origins,
            ),
        )
        if result.status == "interrupted":
            raise typer.Exit(130)
        from mnistkit.recipe.expect import EXIT_MISSED, missed

        if missed(result.expectations):
            raise typer.Exit(EXIT_MISSED)

    guarded(body)


def _check_run_args(
    recipe: Path | None, resume: Path | None, out: Path | None, runs_root: Path | None, progress: str | None
) -> None:
    """`run`'s options that exclude each other, and --progress's values (RecipeError, exit 2)."""
    if resume is not None and recipe is not None:
        raise RecipeError([_usage("give either a recipe or --resume RUN_DIR, not both")])
    if resume is None and recipe is None:
        raise RecipeError([_usage("missing recipe: mnistkit run RECIPE.yaml (or --resume RUN_DIR)")])
    if resume is not None and (out is not None or runs_root is not None):
        flag = "--out" if out is not None else "--runs"
        raise RecipeError(
            [
                _usage(
                    f"{flag} cannot be used with --resume: a resumed run continues in its own "
                    f"directory ({resume})",
                    "drop the option; to start a new run elsewhere, run the recipe with --out",
                )
            ]
        )
    if progress is not None and progress not in ("auto", "rich", "plain", "none"):
        raise RecipeError([_usage(f"--progress {progress!r}: use auto, rich, plain or none")])


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


def _again(
    command: str,
    recipe: Path | None,
    sets: list[str],
    data_dir: Path | None,
    out: Path | None,
    runs: Path | None,
) -> str | None:
    """The command line that starts this run again, quoted for a shell (None for --resume)."""
    if recipe is None:
        return None
    import shlex

    args = [str(recipe)] + [w for s in sets for w in ("--set", s)]
    for flag, value in (("--data-dir", data_dir), ("--out", out), ("--runs", runs)):
        if value is not None:
            args += [flag, str(value)]
    return f"{command} run {shlex.join(args)}"


def _launch(
    nproc: int,
    recipe: Path | None,
    sets: list[str],
    data_dir: Path | None,
    out: Path | None,
    runs_root: Path | None,
    resume: Path | None,
    progress: str | None,
) -> int:
    """``run --nproc N``: the same ``run`` command, minus --nproc, in N processes via torchrun."""
    if nproc < 1:
        raise RecipeError([_usage(f"--nproc {nproc}: must be at least 1")])
    from mnistkit.training import distributed

    if distributed.under_launcher():
        raise RecipeError(
            [_usage("--nproc inside torchrun: torchrun already started the processes; drop --nproc")]
        )
    args = ["--debug"] if _state["debug"] else []
    args += ["run"] + ([str(recipe)] if recipe is not None else [])
    for ov in sets:
        args += ["--set", ov]
    for flag, value in (
        ("--data-dir", data_dir),
        ("--out", out),
        ("--runs", runs_root),
        ("--resume", resume),
        ("--progress", progress),
    ):
        if value is not None:
            args += [flag, str(value)]
    return distributed.launch(nproc, args)


def _resume_recipe(run_dir: Path, overrides: list[str]) -> Any:
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.runs.directory import RunDir

    run = RunDir.open(run_dir, "--resume")
    if not run.checkpoint_path("last").exists():
        raise RunError(
            f"--resume {run_dir}: no checkpoint (last.pt) yet: the run stopped before its "
            "first epoch ended, or ran with train.checkpoint: false. Start it again instead."
        )
    for ov in overrides:
        key = ov.partition("=")[0].strip()
        if key.split(".")[0] != "expect" and key not in RESUMABLE:  # expect.test_acc=... too
            raise RecipeError([_problem_for_set(ov, key)])
    return load_recipe(run.recipe_path, overrides)


def _problem_for_set(ov: str, key: str) -> Any:
    from mnistkit.errors import Problem

    return Problem(
        f"--set {ov}",
        key,
        "cannot change this when resuming (the run would not be the same run)",
        f"allowed on --resume: {', '.join(RESUMABLE)}; start a new run to change anything else",
    )


@_app.command()
def validate(
    recipes: Annotated[
        list[Path], typer.Argument(help="Recipe files to check.", show_default=False, metavar="RECIPE")
    ],
    set_: SetOpt = None,
    build: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Also build the model (imports torch) and push one "
            "zero batch of the dataset's shape through it.",
        ),
    ] = False,
) -> None:
    """Check recipes without training: every problem of every file, with file:line:column."""

    def body() -> None:
        from mnistkit.recipe.model_check import describe_model_size, static_notes
        from mnistkit.recipe.schema import load_document, validate_document
        from mnistkit.recipe.tracking import tracker_problems
        from mnistkit.registry import registries

        failed = 0
        con = _stderr()
        for path in recipes:
            try:
                from mnistkit.sweeps import is_sweep_file

                if is_sweep_file(path):  # top-level recipe: + params: keys
                    _validate_sweep(path, set_ or [])
                    continue
                doc = load_document(path, set_ or [])
                rec = validate_document(doc, [], default_name=path.stem, base_dir=path.parent)
                missing = tracker_problems(rec, doc)  # importable? (no import: find_spec)
                if missing:
                    raise RecipeError(missing)
                for note in static_notes(rec, registries()):
                    con.print(f"note {path}: {_esc(note)}", style="dim")
                if build:
                    from mnistkit.build.dry_run import dry_run

                    dry_run(rec, doc)
                size = describe_model_size(rec, registries())
                typer.echo(f"ok {path}" + (f" ({size})" if size is not None else ""))
            except RecipeError as exc:
                failed += 1
                print_problems(exc)  # and go on: every file is checked
        if failed:
            con.print(f"{failed} of {len(recipes)} recipe(s) invalid", style="red")
            raise typer.Exit(2)

    guarded(body)


def _validate_sweep(path: Path, overrides: list[str]) -> None:
    from mnistkit.sweeps.cli import print_warnings
    from mnistkit.sweeps.spec import load_sweep

    sweep = load_sweep(path, overrides)
    print_warnings(sweep.warnings)
    typer.echo(f"ok {path} (sweep of {sweep.recipe_path}: {len(sweep.spec.params)} parameters)")


LIST_KINDS = ("activations", "losses", "optimizers", "schedulers", "datasets", "layers")


@_app.command("list")
def list_(
    kind: Annotated[
        str | None,
        typer.Argument(help=f"One of: {', '.join(LIST_KINDS)}.", show_default=False, metavar="KIND"),
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option("--plugin", "-p", help="Also load this plugin module.", metavar="MODULE"),
    ] = None,
) -> None:
    """Names a recipe may use, with what they do and their parameters."""

    def body() -> None:
        from rich.console import Console
        from rich.table import Table

        from mnistkit.recipe.reference import DATASET_FACTS, dataset_facts
        from mnistkit.registry import registries
        from mnistkit.registry.core import did_you_mean

        reg = registries()
        if plugin and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules in the current folder
        problems = [p for mod in plugin or [] if (p := _load_plugin(reg, mod))]
        if problems:
            raise RecipeError(problems)
        kinds = reg.by_kind()
        if kind is not None and kind not in kinds:
            close = did_you_mean(kind, list(kinds))
            raise RecipeError(
                [
                    _usage(
                        f"unknown kind {kind!r}",
                        (f"did you mean {close}? " if close else "") + f"choose from {', '.join(kinds)}",
                    )
                ]
            )
        con = Console(highlight=False)
        for name, registry in kinds.items():
            if kind is not None and name != kind:
                continue
            table = Table(title=f"{name} — {registry.description}", title_justify="left", show_lines=False)
            table.add_column("name", style="bold cyan", no_wrap=True)
            table.add_column("description")
            if name == "datasets":  # no parameters: what each gives, as docs/recipe.md says
                for fact in DATASET_FACTS:
                    table.add_column(fact, style="dim")
            else:
                table.add_column("parameters", style="dim")
            for entry in registry:
                if name == "datasets":
                    table.add_row(entry.name, entry.description, *dataset_facts(entry))
                    continue
                params = "\n".join(f"{p}: {spec.describe()}" for p, spec in entry.params.items())
                table.add_row(entry.name, entry.description, params)
            if name == "layers":
                table.add_row("<activation>", "every activation above is also a layer type", "")
            con.print(table)

    guarded(body)


def _load_plugin(reg: Any, module: str) -> Any:
    """Load one ``--plugin`` module; a Problem naming it if that fails, else None."""
    from mnistkit.errors import Problem
    from mnistkit.registry.core import PluginError

    where = f"--plugin {module}"
    try:
        reg.load_plugin(module)
    except ModuleNotFoundError as exc:
        return Problem(
            where,
            "",
            f"cannot import plugin module {module!r} ({exc})",
            "run from the folder that holds it, put it on PYTHONPATH, or install it",
        )
    except PluginError as exc:
        return Problem(where, "", str(exc))
    except Exception as exc:  # the plugin's own bug, reported with its type
        return Problem(where, "", f"plugin {module!r} failed while registering: {type(exc).__name__}: {exc}")
    return None


def _usage(msg: str, hint: str = "") -> Any:
    from mnistkit.errors import Problem

    return Problem("usage", "", msg, hint)


@_app.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editor autocompletion: yaml-language-server)."""

    def body() -> None:
        from mnistkit.recipe.schema import recipe_model

        typer.echo(json.dumps(recipe_model().model_json_schema(), indent=2))

    guarded(body)


@_app.command()
def fields() -> None:
    """Every recipe key with its type, default and documentation (what --set accepts)."""

    def body() -> None:
        from mnistkit.recipe.reference import fields_text

        typer.echo(fields_text())

    guarded(body)


@_app.command()
def show(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False, metavar="RECIPE")],
    set_: SetOpt = None,
) -> None:
    """Print the fully resolved recipe, every default spelled out, without training."""

    def body() -> None:
        import yaml

        from mnistkit.recipe.schema import load_recipe, resolved_dict

        rec = load_recipe(recipe, set_ or [])
        header = f"# {recipe}, resolved" + ("".join(f" --set {s}" for s in set_ or [])) + "\n"
        typer.echo(header + yaml.safe_dump(resolved_dict(rec), sort_keys=False), nl=False)

    guarded(body)


cache_app = typer.Typer(
    help="See and clear the per-user cache (downloads, decoded features and images).",
    no_args_is_help=False,
)
_app.add_typer(cache_app, name="cache")


@cache_app.callback(invoke_without_command=True)
def cache(ctx: typer.Context) -> None:
    """List the cache folders ($MNISTKIT_CACHE) with their size; `mnistkit cache clear` empties them."""
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        from mnistkit.data.cache import KINDS, cache_entries, human_size, image_caches, user_cache_dir

        typer.echo(f"cache: {user_cache_dir()}")
        for e in cache_entries():
            typer.echo(f"  {e.kind:<9} {e.files:>6} files {human_size(e.bytes):>9}  {KINDS[e.kind][0]}")
            if e.kind in ("images", "features"):
                unit = "images" if e.kind == "images" else "clips"
                for c in image_caches(kind=e.kind):
                    facts = f"{c.images:,} {unit} {'x'.join(map(str, c.shape))} {human_size(c.bytes)}"
                    width = 80 - 6 - len(facts) - 2
                    where = c.root if len(c.root) <= width else "..." + c.root[-(width - 3) :]
                    typer.echo(f"      {where}  {facts}")

    guarded(body)


@cache_app.command("clear")
def cache_clear(
    downloads: Annotated[
        bool, typer.Option("--downloads", help="Also remove downloaded datasets (data/).")
    ] = False,
) -> None:
    """Remove decoded features and images (rebuilt when needed); with --downloads also
    the downloads."""

    def body() -> None:
        from mnistkit.data.cache import KINDS, clear_cache, human_size

        kinds = [k for k, (_, default) in KINDS.items() if default or downloads]
        removed = clear_cache(kinds)
        if not removed:
            typer.echo("nothing to clear")
        for e in removed:
            typer.echo(f"removed {e.path} ({e.files} files, {human_size(e.bytes)})")

    guarded(body)


def _register_more() -> str | None:
    """Commands that live in their own module; the reason when they cannot be loaded.

    A broken install must not make ``eval``, ``predict``, ``runs``, ``compare`` and ``export`` vanish from
    the CLI without a word: :func:`main` reports it and exits 1.
    """
    global _REGISTERED, _BROKEN
    if _REGISTERED:
        return _BROKEN
    _REGISTERED = True
    try:
        from mnistkit.cli import (
            check_command,
            data_command,
            export_command,
            report_command,
            run_commands,
            serve_command,
            track_command,
        )
        from mnistkit.sweeps import cli as sweep_commands
    except ImportError as exc:
        _BROKEN = f"{type(exc).__name__}: {exc}"
        return _BROKEN
    run_commands.register(_app, guarded)
    export_command.register(_app, guarded)
    serve_command.register(_app, guarded)
    data_command.register(_app, guarded)
    check_command.register(_app, guarded)
    track_command.register(_app, guarded)
    sweep_commands.register(_app, guarded)
    report_command.register(_app, guarded)
    return None


def _name(info: Any) -> str:
    return info.name or (info.callback.__name__ if info.callback else "").replace("_", "-")


_REGISTERED = False
_BROKEN: str | None = None
#: The commands defined in this module (run, validate, list, schema, fields, cache, ...).
_OWN_COMMANDS = frozenset(
    [_name(c) for c in _app.registered_commands] + [g.name or "" for g in _app.registered_groups]
)


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole CLI, every command registered (what tests and tools import).

    The console script (:func:`main`) imports the modules of the other commands (runs, sweep,
    serve, export, ...) only when the command line may need them: ``mnistkit validate`` and
    ``mnistkit run`` start without them (issue 18: start-up time, docs/performance.md).
    """
    if name == "app":
        _register_more()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _only(command: str) -> typer.Typer:
    """The CLI with only ``command`` (one of this module's): typer then builds the parser of the
    command that runs, not of all of them (it reads every command's signature to do so)."""
    one = typer.Typer(**_SETTINGS)
    one.registered_callback = _app.registered_callback
    one.registered_commands = [c for c in _app.registered_commands if _name(c) == command]
    one.registered_groups = [g for g in _app.registered_groups if g.name == command]
    return one


def _command_named(argv: list[str]) -> str | None:
    """The command the command line names after the global options; None for none, or when
    anything else comes first (--help, --version, an unknown option): then all are registered."""
    for arg in argv:
        if arg == "--debug":
            continue
        return None if arg.startswith("-") else arg
    return None


def main() -> None:
    # Before any command imports torch: its OpenMP threads sleep instead of spinning when idle.
    quiet_openmp()
    command = _command_named(sys.argv[1:])
    own = command in _OWN_COMMANDS
    broken = None if own else _register_more()
    if broken is not None:
        _stderr().print(
            f"[bold red]error:[/] mnistkit is not installed completely: the commands eval, predict, runs, "
            f"compare, export, serve, sweep, check, track and report could not be loaded ({_esc(broken)})\n"
            "    reinstall: pip install -e . (or rerun make setup)"
        )
        raise SystemExit(1)
    NoArgsIsHelpError, _, UsageError = _parser_errors()
    try:
        code = (_only(command) if own and command else _app)(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `mnistkit` or a command without its arguments: the help
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        raise SystemExit(exc.exit_code) from None
    except UsageError as exc:
        # The command-line parser's own errors, in the same style as every other mnistkit error
        # (not a box), with the fix where we can guess it.
        _stderr().print(f"[bold red]error:[/] {_esc(exc.format_message())}")
        hint = _usage_hint(exc)
        if hint:
            _stderr().print(f"    {_esc(hint)}")
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        _stderr().print("interrupted")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def _usage_hint(exc: Exception) -> str:
    """A suggestion for a usage error: recipe keys given as options, --debug after the command."""
    _, NoSuchOption, _ = _parser_errors()
    ctx = getattr(exc, "ctx", None)
    sub = ctx.info_name if ctx is not None and ctx.parent is not None else ""
    cmd = f"mnistkit {sub}".strip()
    if isinstance(exc, NoSuchOption):
        name = exc.option_name
        if name == "--debug":
            return f"--debug is a global option: put it before the command: mnistkit --debug {sub} ..."
        key = _recipe_key_for_option(name)
        if key is not None:
            value = _value_after(name) or "VALUE"
            return f"recipe values are changed with --set: --set {key}={value} (see mnistkit fields)"
        if exc.possibilities:
            return ""  # the parser's message already lists them
    return f"see {cmd} --help"


def _value_after(option: str) -> str | None:
    """The value the user wrote after ``option`` on the command line (``--epochs 3`` -> ``3``)."""
    import sys

    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args) and not args[i + 1].startswith("-"):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
    return None


def _parser_errors() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """(NoArgsIsHelpError, NoSuchOption, UsageError) of the click that typer runs on: recent
    typer releases vendor it as ``typer._click``, older ones use the click package."""
    try:
        from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
    except ImportError:  # typer < 0.20: the click package
        from click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError  # type: ignore[no-redef]
    return NoArgsIsHelpError, NoSuchOption, UsageError


def _recipe_key_for_option(option: str) -> str | None:
    """``--epochs`` -> ``epochs``, ``--batch-size`` -> ``data.batch_size``, ``--lr`` -> ``optimizer.lr``."""
    from pydantic import BaseModel

    from mnistkit.recipe.sections import RecipeBase

    word = option.lstrip("-").replace("-", "_")
    if word in ("lr", "momentum", "weight_decay"):
        return f"optimizer.{word}"
    if word in RecipeBase.model_fields:
        return word
    for section, info in RecipeBase.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and word in ann.model_fields:
            return f"{section}.{word}"
    return None


if __name__ == "__main__":
    main()
