"""One run, start to finish: recipe → data → built components → train_loop → run directory.

This is the glue the CLI (and the benchmark) call. :func:`run` is the sequence of steps; each
step is a method of :class:`Session` that calls into the module owning the work, in the order
the data flows: set up (device, display, run directory), load the data, build the components,
restore a checkpoint (``--resume``), record the run's start, train, record its end, summarize.

Test hooks (``MNISTKIT_KILL_AT``, ``MNISTKIT_NAN_AT``, ``MNISTKIT_CRASH_DURING_CHECKPOINT``):
see :mod:`mnistkit.training.faults` and docs/runs.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistkit.build.components import build_loss, build_model, build_optimizer, build_schedule
from mnistkit.data.batches import Prepared, num_batches
from mnistkit.data.loading import data_info, load_data
from mnistkit.errors import RunError
from mnistkit.layers.shapes import ShapeError
from mnistkit.recipe.metrics import format_metric, run_metrics
from mnistkit.recipe.model_check import model_size
from mnistkit.recipe.schema import Recipe, resolved_dict
from mnistkit.registry import registries
from mnistkit.runs.directory import RunDir, run_process_alive
from mnistkit.tracking.console import Reporter, duration, make_reporter
from mnistkit.tracking.tensorboard import TensorBoard, summary_writer_class
from mnistkit.training.checkpoint import load_checkpoint, save_checkpoint
from mnistkit.training.device import (
    _busy_note,
    check_weights_fit,
    configure_device,
    resolve_device,
    uses_channels_last,
    warm_up,
)
from mnistkit.training.faults import with_test_hooks
from mnistkit.training.loop import Hooks, NonFiniteLoss, train_loop
from mnistkit.training.state import CHECKPOINT_FORMAT, LoopState, checkpoint_state, restore

__all__ = ["CHECKPOINT_FORMAT", "RunOptions", "RunResult", "Session", "run"]


@dataclass
class RunOptions:
    data_dir: Path | None = None
    out: Path | None = None
    runs_root: Path = Path("runs")
    resume: Path | None = None
    progress: str | None = None  # overrides train.progress
    # Called after every epoch with its metrics row (before the checkpoint is written); a returned
    # string stops the run after that epoch with it as the stop reason (a sweep's pruner).
    on_epoch: Callable[[dict[str, Any]], str | None] | None = None


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    status: str  # finished | interrupted | failed
    stop_reason: str
    train_seconds: float
    best: float | None
    best_epoch: int | None


def run(recipe: Recipe, opts: RunOptions) -> RunResult:
    """Train ``recipe``; write everything to a new run directory (or continue ``opts.resume``)."""
    session = Session(recipe, opts)
    session.set_up()
    session.load()
    session.build()
    session.restore()
    session.record_start()
    session.train()
    session.record_end()
    return session.summarize()


@dataclass
class Session:
    """What the steps of one run share; each step fills in what the next ones need."""

    recipe: Recipe
    opts: RunOptions
    reg: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int = 0
    reporter: Reporter = field(default=None)  # type: ignore[assignment]
    run: RunDir = field(default=None)  # type: ignore[assignment]
    resume_ckpt: dict[str, Any] | None = None
    previous: dict[str, Any] = field(default_factory=dict)  # status.json of the resumed run
    data_dir: Path | None = None
    data: Prepared = field(default=None)  # type: ignore[assignment]
    model: torch.nn.Module = field(default=None)  # type: ignore[assignment]
    loss_fn: torch.nn.Module = field(default=None)  # type: ignore[assignment]
    optimizer: torch.optim.Optimizer = field(default=None)  # type: ignore[assignment]
    schedule: Any = None
    steps: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    state: LoopState = field(default_factory=LoopState)
    compile_seconds: float | None = None
    started: float = 0.0
    status: str = "failed"

    # ------------------------------------------------------------------ set-up
    def set_up(self) -> None:
        """Device and threads, the display, and the run directory (new, or the resumed one)."""
        recipe, opts = self.recipe, self.opts
        self.reg = registries()
        self.device = resolve_device(recipe.train.device)
        self.threads = configure_device(recipe, self.device)
        check_weights_fit(model_size(recipe, self.reg), self.device)  # before any data or run dir
        self.reporter = make_reporter(opts.progress or recipe.train.progress)
        if recipe.train.tensorboard:
            summary_writer_class()  # a missing package fails now, not after loading the data
        if opts.resume is not None:
            self.previous = RunDir(opts.resume).read_status()
            pid = self.previous.get("pid")
            if self.previous.get("status") == "running" and pid != os.getpid() and run_process_alive(pid):
                raise RunError(
                    f"--resume {opts.resume}: that run is still running (process {pid}); "
                    "stop it first (Ctrl-C saves a checkpoint), then resume"
                )
            self.resume_ckpt = load_checkpoint(RunDir(opts.resume).checkpoint_path("last"))
        if self.resume_ckpt is None:
            self.run = RunDir.create(opts.runs_root, recipe.name or "run", opts.out)
        else:
            self.run = RunDir(opts.resume)  # type: ignore[arg-type]
        device = self.device
        shown = (
            f"{device} ({self.threads} threads){_busy_note(self.threads)}"
            if device.type == "cpu"
            else str(device)
        )
        self.reporter.header(
            [("recipe", recipe.name or ""), ("run dir", str(self.run.path)), ("device", shown)]
        )

    # ------------------------------------------------------------------ data
    def load(self) -> None:
        recipe = self.recipe
        t_data = time.perf_counter()
        self.data_dir = self.opts.data_dir
        if self.data_dir is None and self.resume_ckpt is not None:
            self.data_dir = self.run.recorded_data_dir()  # the --data-dir the run was started with
        try:
            data = load_data(recipe, self.reg, self.data_dir, self.device, self.reporter)
        except BaseException:
            if self.resume_ckpt is None and self.run.is_empty():
                self.run.path.rmdir()  # no data, no run: leave no empty run directory behind
            raise
        self.data = data
        n_val = len(data.val.y) if data.val is not None else 0
        split_sizes = (
            f"{len(data.train.y):,} train"
            + (f" / {n_val:,} val" if n_val else "")
            + f" / {len(data.test.y):,} test"
        )
        self.reporter.header(
            [
                (
                    "data",
                    f"{recipe.data.dataset}: {split_sizes}, {data.num_classes} classes, "
                    f"input {tuple(data.in_shape)} ({time.perf_counter() - t_data:.1f} s)",
                ),
                ("source", data.source),
            ]
        )

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Model, loss, optimizer, schedule and the shuffling generator, from the registries."""
        recipe, data, device = self.recipe, self.data, self.device
        # Seed right before building so the initial weights do not depend on how data was loaded.
        torch.manual_seed(recipe.seed)
        try:
            model, infos = build_model(recipe, data.in_shape, data.num_classes, self.reg)
        except ShapeError as exc:
            raise RunError(f"model does not fit the data: {exc}") from None
        model.to(device)
        if uses_channels_last(model, device):
            model.to(memory_format=torch.channels_last)  # the loop converts batches to match
        self.reporter.model_summary(
            [(str(i.index), i.type, "x".join(map(str, i.out_shape)), i.params) for i in infos],
            sum(p.numel() for p in model.parameters()),
        )
        self.model = model
        self.loss_fn = build_loss(recipe, self.reg)
        self.optimizer = build_optimizer(recipe, model, self.reg)
        self.steps = num_batches(len(data.train.y), recipe.data.batch_size, recipe.data.drop_last)
        self.schedule = build_schedule(recipe, self.optimizer, self.steps, self.reg)
        self.generator = torch.Generator().manual_seed(recipe.seed)

    # ------------------------------------------------------------------ restore
    def restore(self) -> None:
        """Continue from last.pt (``--resume``); then compile (``train.compile``), off the clock."""
        recipe, ckpt = self.recipe, self.resume_ckpt
        if ckpt is not None:
            self.state = restore(ckpt, self.model, self.optimizer, self.schedule.scheduler, self.generator)
            state = self.state
            where = f"epoch {state.epoch + 1}" + (f", step {state.step + 1}" if state.step else "")
            self.reporter.message(f"resuming {self.run.path} at {where}")
            old_epochs = ckpt["recipe"].get("epochs")
            if old_epochs != recipe.epochs:
                self.reporter.message(_schedule_note(recipe, old_epochs, self.steps))
            if state.epoch >= recipe.epochs:
                self.reporter.message(
                    f"nothing to do: the run already has {state.epoch} of {recipe.epochs} epochs"
                )
        if recipe.train.compile:
            t0 = time.perf_counter()
            self.model = torch.compile(self.model)  # type: ignore[assignment]
            warm_up(self.model, self.data, recipe, self.device)
            self.compile_seconds = time.perf_counter() - t0
            self.reporter.message(
                f"compiled the model in {self.compile_seconds:.1f} s (not counted as training time)"
            )

    # ------------------------------------------------------------------ record
    def record_start(self) -> None:
        """recipe.yaml, data.json, env.json, and status.json saying 'running'."""
        recipe, run, data = self.recipe, self.run, self.data
        run.write_recipe(resolved_dict(recipe, self.reg))
        run.keep_plugins(list(recipe.plugins))  # the run directory stays self-contained
        run.write_data_info(data_info(recipe, data, self.data_dir))
        run.write_env(
            device=str(self.device),
            seed=recipe.seed,
            threads=self.threads,
            data_source=data.source,
            files=data.files,
        )
        self.started = time.time()
        resumed = self.resume_ckpt is not None
        run.write_status(
            status="running",
            # A resumed run keeps its first start time and lists when it was resumed.
            started=self.previous.get("started", self.started),
            name=recipe.name,
            epochs=recipe.epochs,
            best_metric=run_metrics(recipe).best,
            pid=os.getpid(),
            ended=None,
            error=None,
            stop_reason=None,
            **({"resumed": [*self.previous.get("resumed", []), self.started]} if resumed else {}),
        )

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        """The training loop, with its hooks wired to the display, TensorBoard and the run directory."""
        recipe, run, reporter = self.recipe, self.run, self.reporter
        done = self.state.epoch * self.steps + self.state.step
        loss_fn = with_test_hooks(self.loss_fn, self.steps, done)
        tb = TensorBoard(run.tensorboard_dir, self.state.epoch) if recipe.train.tensorboard else None
        consumers = [reporter.epoch_end] + ([tb.on_epoch_end] if tb is not None else [])

        state, on_epoch = self.state, self.opts.on_epoch

        def epoch_end(row: dict[str, Any], improved: bool) -> None:
            for consume in consumers:
                consume(row, improved)
            if on_epoch is not None and (reason := on_epoch(row)):
                state.stop_reason = reason  # the loop's own state object: it stops after this epoch

        hooks = Hooks(
            on_epoch_start=reporter.epoch_start,
            on_progress=reporter.progress,
            on_epoch_end=epoch_end,
            save_checkpoint=self._save,
            message=reporter.message,
        )
        reporter.start(recipe.epochs, self.data.val is not None)
        try:
            self.state = train_loop(
                recipe, self.data, self.model, loss_fn, self.optimizer, self.schedule, self.state,
                self.generator, hooks, self.device,
            )  # fmt: skip
            self.status = "interrupted" if self.state.stop_reason == "interrupted" else "finished"
        except NonFiniteLoss as exc:
            reporter.stop()
            run.write_status(status="failed", ended=time.time(), error=str(exc))
            raise RunError(str(exc)) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep the last saved checkpoint
            self.status = "interrupted"
            run.write_status(
                status="interrupted", ended=time.time(), stop_reason="interrupted (second Ctrl-C)"
            )
            raise
        except BaseException as exc:
            run.write_status(status="failed", ended=time.time(), error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            reporter.stop()
            if tb is not None:
                tb.close()

    def _save(self, st: LoopState, is_best: bool) -> None:
        """The loop's checkpoint hook: best.pt, last.pt, then metrics.csv."""
        if self.recipe.train.checkpoint:
            ckpt = checkpoint_state(
                st, self.model, self.optimizer, self.schedule.scheduler, self.generator, self.recipe
            )
            # best before last: a crash between the two leaves last.pt one epoch behind, so the
            # resumed run redoes that epoch and writes best.pt again. The other order could
            # leave a last.pt recording a best epoch whose weights best.pt never received.
            if is_best:
                save_checkpoint(self.run.checkpoint_path("best"), ckpt)
            save_checkpoint(self.run.checkpoint_path("last"), ckpt)
        # After the checkpoints: metrics.csv never lists an epoch that --resume would redo.
        self.run.write_metrics(st.rows, self.data.val is not None)

    # ------------------------------------------------------------------ record the end
    def record_end(self) -> None:
        """status.json's final fields, and the plots of a finished run."""
        state = self.state
        self.run.write_status(
            status=self.status,
            ended=time.time(),
            epochs_done=len(state.rows),
            stop_reason=state.stop_reason,
            best=state.best,
            best_epoch=state.best_epoch,
            train_seconds=self.train_seconds,
            compile_seconds=self.compile_seconds,
        )
        if self.status == "finished" and self.recipe.train.plots and state.rows:
            _write_plots(self.run.path, self.recipe, self.model, self.data, state, self.reporter)

    @property
    def train_seconds(self) -> float:
        return sum(r["seconds"] for r in self.state.rows)

    # ------------------------------------------------------------------ summarize
    def summarize(self) -> RunResult:
        """The closing lines on the display, and the result for the caller."""
        state, status, run_dir = self.state, self.status, self.run.path
        n = len(state.rows)
        reason = (
            state.stop_reason if state.stop_reason not in (None, status) else f"{n} epoch{'s' * (n != 1)}"
        )
        lines = [("status", f"{status} ({reason})")]
        if state.rows:
            last = state.rows[-1]
            final = f"test acc {last['test_acc']:.2%}, test loss {last['test_loss']:.4f}"
            lines.append(("final", f"{final} after epoch {last['epoch']}"))
            this_session = " (this session)" if self.resume_ckpt is not None else ""
            total = duration(time.time() - self.started)
            lines.append(("time", f"{duration(self.train_seconds)} training, {total} in all{this_session}"))
        if state.best is not None:
            best_metric = run_metrics(self.recipe).best
            shown = format_metric(best_metric, state.best)
            lines.append(("best", f"{best_metric} {shown} at epoch {state.best_epoch} (best.pt)"))
        lines.append(("saved", str(run_dir)))
        if status == "interrupted":
            if self.recipe.train.checkpoint:
                lines.append(("resume", f"mnistkit run --resume {run_dir}"))
            else:
                lines.append(("resume", "not possible: this run has train.checkpoint: false"))
        self.reporter.summary(lines)
        return RunResult(
            run_dir,
            state.rows,
            status,
            state.stop_reason or "",
            self.train_seconds,
            state.best,
            state.best_epoch,
        )


def _schedule_note(recipe: Recipe, old_epochs: int | None, steps: int) -> str:
    name = recipe.scheduler.name if recipe.scheduler is not None else None
    head = f"epochs changed from {old_epochs} to {recipe.epochs}: "
    if name in ("onecycle", "cosine"):
        return head + (
            f"the {name} schedule is re-planned for {recipe.epochs} epochs and continues "
            "from the current step (the learning rate jumps to where the new plan is)"
        )
    if name is None:
        return head + "constant learning rate, nothing to re-plan"
    return head + f"the {name} schedule continues unchanged (it does not depend on the run length)"


def _write_plots(
    run_dir: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    data: Prepared,
    state: LoopState,
    reporter: Reporter,
) -> None:
    # Any failure here, a missing matplotlib included, is said and costs nothing else: the run
    # itself is finished and saved.
    try:
        from mnistkit.evaluation.evaluate import write_run_plots

        paths = write_run_plots(run_dir, model, data, state.rows, recipe)
        reporter.message("plots:    " + ", ".join(str(p.relative_to(run_dir)) for p in paths))
    except Exception as exc:  # a plot must never cost the user their finished run
        reporter.message(f"[yellow]could not write plots: {type(exc).__name__}: {exc}[/yellow]")
