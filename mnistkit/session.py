"""One run, start to finish: recipe → data → built components → train_loop → run directory.

This is the glue the CLI (and the benchmark) call. :func:`run` is the sequence of steps; each
step is a method of :class:`Session` that calls into the module owning the work, in the order
the data flows: set up (device, display, run directory), load the data, build the components,
restore a checkpoint (``--resume``), record the run's start, train, record its end, summarize.

Test hooks (``MNISTKIT_KILL_AT``, ``MNISTKIT_NAN_AT``, ``MNISTKIT_CRASH_DURING_CHECKPOINT``):
see :mod:`mnistkit.training.faults` and docs/runs.md.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.markup import escape

from mnistkit.build.components import (
    build_augment,
    build_loss,
    build_model,
    build_optimizer,
    build_schedule,
    class_counts,
)
from mnistkit.data.augment import Augment
from mnistkit.data.batches import Prepared, num_batches, prepare
from mnistkit.data.check import leak_warning, short_form, write_json
from mnistkit.data.loading import SharedData, check_dataset, data_info, load_dataset
from mnistkit.data.types import LoadedData
from mnistkit.errors import RecipeError, RunError, set_hint
from mnistkit.fsutil import atomic_write_text
from mnistkit.layers.shapes import ShapeError
from mnistkit.recipe.expect import Outcome, evaluate, summary_lines
from mnistkit.recipe.metrics import format_metric, run_metrics, selection_on_test_notes
from mnistkit.recipe.model_check import model_size
from mnistkit.recipe.resume import RESUMABLE, edited_keys, with_resumable
from mnistkit.recipe.schema import Recipe, load_recipe_text, resolved_dict
from mnistkit.registry import registries
from mnistkit.runs.directory import EDITED_RECIPE, RunDir, run_process_alive
from mnistkit.tracking.console import Reporter, duration, make_reporter
from mnistkit.tracking.trackers import Tracker, check_installed, open_trackers
from mnistkit.training import distributed
from mnistkit.training.checkpoint import load_checkpoint, save_checkpoint
from mnistkit.training.device import (
    check_weights_fit,
    configure_device,
    probe_candidates,
    resolve_device,
    threads_note,
    uses_channels_last,
)
from mnistkit.training.faults import signal_before_training, with_test_hooks
from mnistkit.training.loop import Hooks, NonFiniteLoss, train_loop
from mnistkit.training.state import CHECKPOINT_FORMAT, LoopState, check_format, checkpoint_state, restore
from mnistkit.training.step import TrainStep, decide_compile, train_batch_sizes
from mnistkit.training.threads import Decision, ThreadProbe, openmp_record

__all__ = ["CHECKPOINT_FORMAT", "RunOptions", "RunResult", "Session", "run"]


@dataclass
class RunOptions:
    data_dir: Path | None = None
    out: Path | None = None
    runs_root: Path = Path("runs")
    resume: Path | None = None
    progress: str | None = None  # overrides train.progress
    command: str = "mnistkit"  # how the user ran mnistkit, for the resume hint (cli/invocation.py)
    again: str | None = None  # the command that starts this run again (said after an early Ctrl-C)
    # Called after every epoch with its metrics row (before the checkpoint is written); a returned
    # string stops the run after that epoch with it as the stop reason (a sweep's pruner).
    on_epoch: Callable[[dict[str, Any]], str | None] | None = None
    # Datasets loaded by earlier runs of this process, shared (the seeds of a group, seeds.py).
    shared_data: SharedData | None = None
    # The command that continues this run, where it is not its own --resume (a group's member:
    # the group's --resume, which also runs the seeds after it).
    resume_as: str | None = None
    # Where each recipe value was written (Located.origins): origins.json, for `mnistkit report`.
    origins: dict[str, str] | None = None
    # A sweep's trial: the MLflow run of its study, under which the trial's run is nested.
    mlflow_parent: str | None = None
    # A sweep's retry: the storage's heartbeat says the run's process is dead, and its pid in
    # status.json may be another machine's (a shared sweep folder), so it is not checked.
    owner_dead: bool = False


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    status: str  # finished | interrupted | failed
    stop_reason: str
    train_seconds: float
    best: float | None
    best_epoch: int | None
    expectations: list[Outcome] = field(default_factory=list)  # recipe.expect, checked (finished runs)


def run(recipe: Recipe, opts: RunOptions) -> RunResult:
    """Train ``recipe``; write everything to a new run directory (or continue ``opts.resume``).

    Under torchrun this process is one of several (distributed.setup joins the process group);
    alone it runs with the trivial context and no collectives.
    """
    ctx, device = distributed.setup(resolve_device(recipe.train.device))
    session = Session(recipe, opts, ctx=ctx, device=device)
    finished = False
    try:
        session.set_up()
        session.load()
        session.build()
        session.restore()
        session.record_start()
        session.train()
        if ctx.is_main:  # the rest writes files and prints: rank 0's part
            session.record_end()
            session.close_trackers()
            result = session.summarize()
        else:
            result = session.result()
        finished = True
        return result
    except KeyboardInterrupt:  # outside the loop's safe points: say what is kept, how to go on
        if ctx.is_main:
            session.interrupted()
        raise
    except RuntimeError as exc:  # gloo/nccl report a dead peer as a RuntimeError subclass
        stopped = ctx.peer_stopped(exc)
        if stopped is None:
            raise
        raise stopped from None
    finally:
        session.close_trackers()  # failed or interrupted: status.json says which
        ctx.close(finished)


@dataclass
class Session:
    """What the steps of one run share; each step fills in what the next ones need."""

    recipe: Recipe
    opts: RunOptions
    ctx: distributed.Context = field(default_factory=lambda: distributed.SINGLE)
    reg: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int = 0
    probing: list[int] = field(default_factory=list)  # train.threads: auto's candidates
    thread_decisions: list[Decision] = field(default_factory=list)
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
    augment: Augment | None = None  # data.augment, drawing from generator
    state: LoopState = field(default_factory=LoopState)
    compile_seconds: float | None = None
    started: float = 0.0
    rows_before: int = 0
    status: str = "failed"
    batchnorm: str = "none"  # distributed: sync | per-rank | none
    outcomes: list[Outcome] = field(default_factory=list)  # recipe.expect checked at the end
    trackers: list[Tracker] = field(default_factory=list)  # train.track (rank 0 only)

    # ------------------------------------------------------------------ set-up
    def set_up(self) -> None:
        """The resumed checkpoint, threads, the display, and the run directory (new, or resumed).

        The device comes from ``distributed.setup`` (one process: ``train.device``)."""
        opts = self.opts
        ctx = self.ctx
        self.reg = registries()
        notes = self._load_resume_checkpoint() if opts.resume is not None else []
        recipe = self.recipe  # the checkpoint's recipe where recipe.yaml was edited since
        self.threads = configure_device(recipe, self.device)
        self.probing = probe_candidates(recipe, self.device, ctx.distributed)
        check_weights_fit(model_size(recipe, self.reg), self.device)  # before any data or run dir
        # Only rank 0 prints (and writes the run directory); the others train silently.
        self.reporter = make_reporter(opts.progress or recipe.train.progress if ctx.is_main else "silent")
        check_installed(recipe.train)  # a missing tracker package fails now, not after the data
        if self.resume_ckpt is None:  # rank 0 chooses the name (it contains the time), all learn it
            made = RunDir.create(opts.runs_root, recipe.name or "run", opts.out) if ctx.is_main else None
            self.run = RunDir(Path(ctx.broadcast_object(str(made.path) if made is not None else None)))
        else:
            self.run = RunDir(opts.resume)  # type: ignore[arg-type]
        if ctx.heartbeat is not None and ctx.is_main:  # a lost node ends the job: say so there

            def lost(why: str, run: RunDir = self.run) -> None:
                run.write_status(status="failed", ended=time.time(), error=why)

            ctx.heartbeat.on_lost = lost
        device = self.device
        shown = (
            f"{device} ({threads_note(recipe, self.threads, self.probing)})"
            if device.type == "cpu"
            else str(device)
        ) + (_world_note(ctx) if ctx.distributed else "")
        # "run dir" comes with the data (load): a run whose data fails to load leaves no directory.
        self.reporter.header(
            [("recipe", recipe.name or ""), ("device", shown)]
            + [("selection", note) for note in selection_on_test_notes(run_metrics(recipe))]
        )
        for note in notes:
            self.reporter.message(note)

    def _load_resume_checkpoint(self) -> list[str]:
        """``--resume``: refuse a live run, load last.pt, check its format and its recipe.

        A recipe.yaml edited by hand since the checkpoint is not what the weights were trained
        with: the run continues with the checkpoint's recipe (only the RESUMABLE keys may change)
        and the returned notes say which keys were set back and how to change a setting instead.
        """
        opts = self.opts
        resumed = RunDir(opts.resume)  # type: ignore[arg-type]
        self.previous = resumed.read_status()
        pid = self.previous.get("pid")
        if (
            self.ctx.is_main  # the pid is rank 0's, on rank 0's machine
            and not opts.owner_dead
            and self.previous.get("status") == "running"
            and pid != os.getpid()
            and run_process_alive(pid)
        ):
            raise RunError(
                f"--resume {opts.resume}: that run is still running (process {pid}); "
                "stop it first (Ctrl-C saves a checkpoint), then resume"
            )
        path = resumed.checkpoint_path("last")
        self.resume_ckpt = load_checkpoint(path)
        check_format(self.resume_ckpt, path)
        world = distributed.resume_world_note(opts.resume, self.resume_ckpt, self.ctx)  # type: ignore[arg-type]
        saved = self.resume_ckpt.get("recipe")
        if not isinstance(saved, dict):
            return world
        current = resolved_dict(self.recipe, self.reg)
        try:  # both resolved the same way, so keys this version writes differently are no edit
            saved = resolved_dict(load_recipe_text(yaml.safe_dump(saved), str(path), reg=self.reg), self.reg)
        except RecipeError:
            pass  # a recipe an older mnistkit accepted: compare what it wrote
        edits = edited_keys(saved, current)
        if not edits:
            return world
        self.recipe = load_recipe_text(
            yaml.safe_dump(with_resumable(saved, current), sort_keys=False),
            f"{path} (its recipe)",
            reg=self.reg,
        )
        # The user's edit is kept beside the run, never lost when recipe.yaml is rewritten.
        kept = resumed.path / EDITED_RECIPE
        atomic_write_text(kept, resumed.recipe_path.read_text(encoding="utf-8"))
        shown = "; ".join(f"{k}: {_yaml_value(a)} (recipe.yaml: {_yaml_value(b)})" for k, a, b in edits)
        return world + [
            escape(
                f"recipe.yaml was edited since the checkpoint: the run continues as it was trained, "
                f"with the checkpoint's {shown}. Your edited file is kept as {kept}."
            ),
            escape(
                f"On --resume only {', '.join(RESUMABLE)} can change, with --set KEY=VALUE; to train "
                f"with the edited recipe, start a new run: {opts.command} run {shlex.quote(str(kept))}"
            ),
        ]

    # ------------------------------------------------------------------ data
    def load(self) -> None:
        recipe = self.recipe
        t_data = time.perf_counter()
        self.data_dir = self.opts.data_dir
        if self.data_dir is None and self.resume_ckpt is not None:
            self.data_dir = self.run.recorded_data_dir()  # the --data-dir the run was started with
        ctx = self.ctx
        shared = self.opts.shared_data
        loads = shared.loads if shared is not None else 0
        try:
            with ctx.main_first():  # downloads and feature caches: made once, by rank 0
                loaded = load_dataset(recipe, self.reg, self.data_dir, self.reporter, shared)
        except BaseException:
            if ctx.is_main and self.resume_ckpt is None and self.run.is_empty():
                self.run.path.rmdir()  # no data, no run: leave no empty run directory behind
            raise
        checked = self._check_data(loaded) if ctx.is_main else []
        data = prepare(loaded, recipe.data, recipe.seed, self.device)
        if ctx.distributed:
            if recipe.data.loader != "memory":
                raise RunError(
                    "data.loader: dataloader is not supported with several processes yet; "
                    "use data.loader: memory (the default)"
                )
            ctx.check_shards(len(data.train.y), recipe.data.batch_size, recipe.data.drop_last)
        self.data = data
        n_val = len(data.val.y) if data.val is not None else 0
        split_sizes = (
            f"{len(data.train.y):,} train"
            + (f" / {n_val:,} val" if n_val else "")
            + f" / {len(data.test.y):,} test"
        )
        self.reporter.header(
            [
                ("run dir", str(self.run.path)),
                (
                    "data",
                    f"{recipe.data.dataset}: {split_sizes}, {data.num_classes} classes, "
                    f"input {'x'.join(map(str, data.in_shape))} ({time.perf_counter() - t_data:.1f} s"
                    + (
                        ", loaded by an earlier run of this group)"
                        if shared and shared.loads == loads
                        else ")"
                    ),
                ),
                ("source", data.source),
            ]
            + ([("cache", data.cache_note)] if data.cache_note else [])
            + checked
        )

    def _check_data(self, loaded: LoadedData) -> list[tuple[str, str]]:
        """The data check's header lines (cached per data content: ~0.05 s on a hit for
        Fashion-MNIST), its report written to the run directory as data_check.json."""
        report, cached = check_dataset(self.recipe, self.reg, loaded)
        write_json(self.run.path / "data_check.json", report)
        lines = [("check", short_form(report, cached))]
        leak = leak_warning(report)
        return lines + ([("warning", leak)] if leak else [])

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Model, loss, optimizer, schedule, augmentations and the shuffling generator."""
        recipe, data, device = self.recipe, self.data, self.device
        # Seed right before building so the initial weights do not depend on how data was loaded.
        torch.manual_seed(recipe.seed)
        try:
            model, infos = build_model(recipe, data.in_shape, data.num_classes, self.reg)
        except ShapeError as exc:
            raise RunError(f"model does not fit the data: {exc}") from None
        model.to(device)
        model, self.batchnorm = distributed.maybe_sync_batchnorm(model, self.ctx, device)
        self.ctx.broadcast_module(model)  # every rank starts from rank 0's weights
        if self.ctx.distributed:
            # Distinct dropout streams per rank (the same stream would give every rank's shard
            # the same masks); saved per rank in checkpoints.
            torch.manual_seed(recipe.seed * 1_000_003 + 1 + self.ctx.rank)
        if uses_channels_last(model, device):
            model.to(memory_format=torch.channels_last)  # the loop converts batches to match
        self.reporter.model_summary(
            [(str(i.index), i.type, "x".join(map(str, i.out_shape)), i.params) for i in infos],
            sum(p.numel() for p in model.parameters()),
        )
        self.model = model
        self.loss_fn = self._loss(class_counts(data.train.y, data.num_classes))
        self.optimizer = build_optimizer(recipe, model, self.reg)
        self.steps = num_batches(len(data.train.y), recipe.data.batch_size, recipe.data.drop_last)
        self.schedule = build_schedule(recipe, self.optimizer, self.steps, self.reg)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.augment = build_augment(recipe, self.reg)
        if self.augment is not None:
            if len(data.in_shape) != 3:
                raise RunError(
                    f"data.augment needs image-like samples (channels, height, width); "
                    f"{recipe.data.dataset!r} gives {list(data.in_shape)}. Remove data.augment."
                )
            if not self.reporter.quiet:
                self.reporter.labelled("augment", f"{', '.join(self.augment.names)} (training batches only)")

    def _loss(self, counts: list[int]) -> torch.nn.Module:
        """The loss on the device; the header shows auto class weights and a balanced sampler."""
        recipe = self.recipe
        given = getattr(recipe.loss, "class_weights", None)
        if given is not None and self.ctx.distributed:
            # GradSync sums (mean loss x shard size): exact for per-sample means only, and a
            # weighted loss is a mean over the batch's weights instead.
            raise RunError(
                "loss.class_weights is not supported with several processes yet (the gradient "
                "average assumes a per-sample mean loss); train with one process, or use "
                + set_hint("data.sampler", "balanced")
                + " instead"
            )
        loss = build_loss(recipe, self.reg, counts).to(self.device)
        if given == "auto" and not self.reporter.quiet:
            shown = ", ".join(f"{w:.3g}" for w in loss.weight.tolist())
            self.reporter.labelled("weights", f"class weights auto (n / (classes x count)): {shown}")
        if recipe.data.sampler == "balanced" and not self.reporter.quiet:
            self.reporter.labelled(
                "sampler",
                f"balanced: each epoch draws {sum(counts):,} samples with replacement, every class "
                f"equally likely (1/{len(counts)}); smallest class {min(counts):,}, largest {max(counts):,}",
            )
        return loss

    # ------------------------------------------------------------------ restore
    def restore(self) -> None:
        """Continue from last.pt (``--resume``)."""
        recipe, ckpt = self.recipe, self.resume_ckpt
        if ckpt is not None:
            self.state = restore(
                ckpt, self.model, self.optimizer, self.schedule.scheduler, self.generator, self.ctx
            )
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

    # ------------------------------------------------------------------ record
    def record_start(self) -> None:
        """recipe.yaml, data.json, env.json, and status.json saying 'running'."""
        recipe, run, data = self.recipe, self.run, self.data
        self.started = time.time()
        if not self.ctx.is_main:
            return
        resolved = resolved_dict(recipe, self.reg)
        root = self.data_dir if self.data_dir is not None else recipe.data.root
        if root is not None:
            # The folder the data came from, absolute: `run RUN/recipe.yaml` finds the same files
            # from any folder and offline, instead of trying to download them.
            resolved["data"]["root"] = str(Path(root).expanduser().resolve())
        run.write_recipe(resolved, self.opts.command)
        if self.opts.origins is not None and self.opts.resume is None:
            run.write_origins(self.opts.origins)
        run.keep_plugins(list(recipe.plugins))  # the run directory stays self-contained
        run.write_data_info(data_info(recipe, data, self.data_dir))
        run.write_env(
            device=str(self.device),
            seed=recipe.seed,
            threads=self.threads,
            threads_setting=recipe.train.threads or "auto",
            openmp=openmp_record(),
            data_source=data.source,
            files=data.files,
            torch_version=torch.__version__,
            cuda=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            distributed={
                "world_size": self.ctx.world_size,
                "backend": self.ctx.backend,
                "hosts": self.ctx.hosts or [platform.node()],
                "nodes": self.ctx.nodes,  # per rank: host name and address
                "interface": self.ctx.interface,  # gloo's network interface, who chose it
                "batchnorm": self.batchnorm,
            },
        )
        resumed = self.resume_ckpt is not None
        run.write_status(
            status="running",
            # A resumed run keeps its first start time and lists when it was resumed.
            started=self.previous.get("started", self.started),
            name=recipe.name,
            epochs=recipe.epochs,
            best_metric=run_metrics(recipe).best,
            # What is chosen on the test set (best.pt, early stopping, plateau), said, not hidden.
            selected_on_test=selection_on_test_notes(run_metrics(recipe)),
            pid=os.getpid(),
            command_line=shlex.join(sys.argv),  # a tracker's tag (passwords masked there)
            ended=None,
            error=None,
            stop_reason=None,
            **(
                {"resumed": [*self.previous.get("resumed", []), self.started], "expect": None}
                if resumed
                else {}
            ),
        )

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        """The training loop, with its hooks wired to the display, TensorBoard and the run directory."""
        recipe, run, reporter = self.recipe, self.run, self.reporter
        done = self.state.epoch * self.steps + self.state.step
        ctx = self.ctx
        loss_fn = with_test_hooks(self.loss_fn, self.steps, done, ctx.rank)
        step = self._train_step(loss_fn, done)
        if ctx.is_main:  # one tracked run per job, logged by rank 0

            def say(text: str) -> None:
                if not reporter.quiet:
                    reporter.labelled("tracking", escape(text))

            opts = self.opts
            self.trackers = open_trackers(
                recipe.train, run, self.state.epoch, say, opts.command, opts.mlflow_parent
            )
        state, on_epoch = self.state, self.opts.on_epoch

        def epoch_end(row: dict[str, Any], improved: bool) -> None:
            reporter.epoch_end(row, improved)
            if on_epoch is not None and (reason := on_epoch(row)):
                state.stop_reason = reason  # the loop's own state object: it stops after this epoch

        hooks = Hooks(
            on_epoch_start=reporter.epoch_start,
            on_progress=reporter.progress,
            on_epoch_end=epoch_end,
            save_checkpoint=self._save,
            message=reporter.message,
        )
        if len(self.probing) > 1:  # train.threads: auto (see training/threads.py)
            probe = ThreadProbe(self.probing, torch.set_num_threads, self._threads_decided)

            def epoch_start(epoch: int, steps: int) -> None:
                probe.epoch_start(epoch)
                reporter.epoch_start(epoch, steps)

            hooks.on_epoch_start, hooks.before_step = epoch_start, probe.tick
        self.rows_before = len(self.state.rows)  # epochs a resumed run had done before this session
        signal_before_training(ctx.rank)
        reporter.start(recipe.epochs, self.data.val is not None, show_lr=recipe.scheduler is not None)
        try:
            self.state = train_loop(
                recipe, self.data, self.model, loss_fn, self.optimizer, self.schedule, self.state,
                self.generator, hooks, self.device, self.augment, ctx, step,
            )  # fmt: skip
            self.status = "interrupted" if self.state.stop_reason == "interrupted" else "finished"
        except NonFiniteLoss as exc:
            reporter.stop()
            if ctx.is_main:
                run.write_status(status="failed", ended=time.time(), error=str(exc))
            raise RunError(str(exc)) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep the last saved checkpoint
            self.status = "interrupted"
            if ctx.is_main:
                run.write_status(
                    status="interrupted", ended=time.time(), stop_reason="interrupted (second Ctrl-C)"
                )
            raise  # run() says what was saved (interrupted)
        except BaseException as exc:
            stopped = ctx.peer_stopped(exc)  # another process died: say which, if it can be told
            if ctx.is_main:
                error = str(stopped) if stopped else f"{type(exc).__name__}: {exc}"
                run.write_status(status="failed", ended=time.time(), error=error)
            if stopped is not None:
                raise stopped from None
            raise
        finally:
            reporter.stop()

    def _threads_decided(self, decision: Decision) -> None:
        """train.threads: auto chose: say so, and keep every decision in env.json."""
        self.threads = decision.chosen
        self.thread_decisions.append(decision)
        self.reporter.message(decision.describe())
        if self.ctx.is_main:
            self.run.update_env(
                threads=decision.chosen, threads_auto=[d.record() for d in self.thread_decisions]
            )

    def _train_step(self, loss_fn: torch.nn.Module, done: int) -> TrainStep:
        """The loop's forward/backward step; compiled (``train.compile``) and warmed up here,
        off the clock: the compile time is reported apart from training time."""
        recipe, device, t = self.recipe, self.device, self.recipe.train
        choice = decide_compile(t.compile, recipe.epochs * self.steps - done, device, self.ctx.distributed)
        self.reporter.header([("compile", choice.reason)])
        channels_last = uses_channels_last(self.model, device)
        step = TrainStep(
            self.model,
            loss_fn,
            self.optimizer,
            self.data,
            t.precision,
            device,
            channels_last,
            choice.compiled,
        )
        if choice.compiled:
            t0 = time.perf_counter()
            d = recipe.data
            step.warm_up(train_batch_sizes(len(self.data.train.y), d.batch_size, d.drop_last))
            self.compile_seconds = time.perf_counter() - t0
            self.reporter.message(
                f"compiled the training step in {self.compile_seconds:.1f} s (not counted as training time)"
            )
        return step

    def _save(self, st: LoopState, is_best: bool) -> None:
        """The loop's checkpoint hook: best.pt, last.pt, then metrics.csv."""
        ctx = self.ctx
        if self.recipe.train.checkpoint:
            # Every rank's RNG streams (a collective: every rank calls save at the same point).
            rank_rng = ctx.gather_objects(distributed.rng_state()) if ctx.distributed else None
            if ctx.is_main:
                ckpt = checkpoint_state(
                    st, self.model, self.optimizer, self.schedule.scheduler, self.generator, self.recipe,
                    rank_rng,
                )  # fmt: skip
                # best before last: a crash between the two leaves last.pt one epoch behind, so
                # the resumed run redoes that epoch and writes best.pt again. The other order
                # could leave a last.pt recording a best epoch whose weights best.pt never got.
                if is_best:
                    save_checkpoint(self.run.checkpoint_path("best"), ckpt)
                save_checkpoint(self.run.checkpoint_path("last"), ckpt)
        # After the checkpoints: metrics.csv never lists an epoch that --resume would redo.
        if ctx.is_main:
            self.run.write_metrics(st.rows, self.data.val is not None)
            for tracker in self.trackers:  # after metrics.csv: an epoch is never logged twice
                tracker.log_epochs(st.rows)

    # ------------------------------------------------------------------ record the end
    def close_trackers(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    def record_end(self) -> None:
        """status.json's final fields; a finished run's predictions.npz and plots."""
        state = self.state
        if self.status == "finished" and self.recipe.expect:  # an interrupted run is not judged
            self.outcomes = evaluate(self.recipe.expect, state.rows, state.best_epoch)
        self.run.write_status(
            **({"expect": [o.record() for o in self.outcomes]} if self.outcomes else {}),
            status=self.status,
            ended=time.time(),
            epochs_done=len(state.rows),
            stop_reason=state.stop_reason,
            best=state.best,
            best_epoch=state.best_epoch,
            train_seconds=self.train_seconds,
            compile_seconds=self.compile_seconds,
        )
        if self.status == "finished" and state.rows:
            # The final model's test predictions: what `mnistkit compare` tests differences on.
            probs = _write_predictions(self.run, self.recipe, self.model, self.data, state, self.reporter)
            if self.recipe.train.plots:
                _write_plots(self.run.path, self.recipe, self.model, self.data, state, self.reporter, probs)

    def interrupted(self) -> None:
        """Ctrl-C outside the training loop's safe points (loading, building, a second Ctrl-C):
        say what is saved and how to go on.

        A new run with no checkpoint and no finished epoch has nothing to continue: its folder
        (made empty by this run, see RunDir.create) is removed, so no half-made run is left
        that ``runs`` ignores and ``--resume`` refuses; the user is told to start again.
        """
        run = self.run
        if run is None or self.reporter is None:  # before the run folder was made
            return
        if run.checkpoint_path("last").is_file():
            lines = [("saved", str(run.path)), ("resume", self.resume_command)]
        elif self.resume_ckpt is None and not self.state.rows:
            if run.path.is_dir():
                shutil.rmtree(run.path)
            again = self.opts.again or f"{self.opts.command} run RECIPE"
            lines = [
                ("saved", f"nothing: interrupted before the first checkpoint ({run.path} removed)"),
                ("resume", f"nothing to resume; start again: {again}"),
            ]
        else:  # epochs done, but train.checkpoint: false
            why = "not possible: this run has train.checkpoint: false"
            lines = [("saved", str(run.path)), ("resume", why)]
        self.reporter.stop()
        self.reporter.summary([(key, escape(value)) for key, value in lines])

    @property
    def resume_command(self) -> str:
        """The command that continues this run, as the user ran mnistkit (cli/invocation.py)."""
        if self.opts.resume_as is not None:
            return self.opts.resume_as
        nproc = f" --nproc {self.ctx.world_size}" if self.ctx.distributed else ""
        return f"{self.opts.command} run --resume {shlex.quote(str(self.run.path))}{nproc}"

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
        if status == "interrupted" and state.step:  # stopped inside an epoch: say where
            reason = f"epoch {state.epoch + 1}, step {state.step} of {self.steps}"
        lines = [("status", f"{status} ({reason})")]
        if state.rows:
            last = state.rows[-1]
            final = f"test acc {last['test_acc']:.2%}, test loss {last['test_loss']:.4f}"
            lines.append(("final", f"{final} after epoch {last['epoch']}"))
            total = duration(time.time() - self.started)
            if self.resume_ckpt is None:
                lines.append(("time", f"{duration(self.train_seconds)} training, {total} in all"))
            else:  # the training time covers every session; the wall time only this one
                now = sum(r["seconds"] for r in state.rows[self.rows_before :])
                lines.append(
                    (
                        "time",
                        f"{duration(self.train_seconds)} training over all sessions; "
                        f"this session: {duration(now)} training, {total} in all",
                    )
                )
        if state.best is not None:
            best_metric = run_metrics(self.recipe).best
            shown = format_metric(best_metric, state.best)
            lines.append(("best", f"{best_metric} {shown} at epoch {state.best_epoch} (best.pt)"))
        # (What was selected on the test set is said once, in the run header, and in status.json.)
        # --progress none shows only a missed expectation (it explains the exit code).
        lines += summary_lines([o for o in self.outcomes if not (o.met and self.reporter.quiet)])
        lines.append(("saved", str(run_dir)))
        if status == "interrupted":
            if self.recipe.train.checkpoint:
                lines.append(("resume", self.resume_command))
            else:
                lines.append(("resume", "not possible: this run has train.checkpoint: false"))
        self.reporter.summary(lines)
        return self.result()

    def result(self) -> RunResult:
        state, run_dir = self.state, self.run.path
        return RunResult(
            run_dir,
            state.rows,
            self.status,
            state.stop_reason or "",
            self.train_seconds,
            state.best,
            state.best_epoch,
            self.outcomes,
        )


def _yaml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _world_note(ctx: distributed.Context) -> str:
    return f"; {ctx.world_size} processes ({ctx.backend}) on {len(ctx.hosts)} machine(s)"


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


def _write_predictions(
    run: RunDir, recipe: Recipe, model: torch.nn.Module, data: Prepared, state: LoopState, reporter: Reporter
) -> Any:
    """predictions.npz of the model as it is at the end (the weights of last.pt); returns the
    test probabilities for the plots, or None where this failed (said; the run is kept)."""
    try:
        from mnistkit.evaluation.evaluate import test_probabilities, write_predictions

        probs = test_probabilities(model, data, recipe)
        weights = "last.pt" if recipe.train.checkpoint else "final weights (no checkpoint)"
        info = {"checkpoint": weights, "epoch": state.rows[-1]["epoch"], "step": 0, "written_by": "run"}
        write_predictions(run, probs, data, recipe, info)
        return probs
    except Exception as exc:  # like a plot, never worth the user's finished run
        why = escape(f"could not write {run.PREDICTIONS}: {type(exc).__name__}: {exc}")
        reporter.message(f"[yellow]{why}[/yellow]")
        return None


def _write_plots(
    run_dir: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    data: Prepared,
    state: LoopState,
    reporter: Reporter,
    probs: Any = None,
) -> None:
    # Any failure here, a missing matplotlib included, is said and costs nothing else: the run
    # itself is finished and saved.
    try:
        from mnistkit.evaluation.evaluate import write_run_plots

        paths = write_run_plots(run_dir, model, data, state.rows, recipe, probs)
        if not reporter.quiet:
            reporter.labelled("plots", ", ".join(str(p.relative_to(run_dir)) for p in paths))
    except Exception as exc:  # a plot must never cost the user their finished run
        reporter.message(f"[yellow]could not write plots: {type(exc).__name__}: {exc}[/yellow]")
