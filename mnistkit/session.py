"""One run, start to finish: recipe → data → built components → train_loop → run directory.

This is the glue the CLI (and the benchmark) call; each step is a call into the module that owns
it, in the order the data flows.

Test hooks (environment variables, read once per run, no cost when unset; see docs/runs.md):

* ``MNISTKIT_KILL_AT=E:S[:SIG]`` sends signal SIG (default KILL; e.g. INT for a Ctrl-C) to this
  process during training step S of epoch E (both 1-based), after that step's forward pass.
* ``MNISTKIT_NAN_AT=E:S`` makes the loss of step S of epoch E NaN.
* ``MNISTKIT_CRASH_DURING_CHECKPOINT=NAME[:N]`` (mnistkit.training.checkpoint): SIGKILL halfway through
  writing checkpoint NAME (its N-th write).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistkit.build.components import build_loss, build_model, build_optimizer, build_schedule
from mnistkit.data.batches import Prepared, num_batches
from mnistkit.data.loading import data_info, load_data
from mnistkit.errors import RunError
from mnistkit.layers.shapes import ShapeError
from mnistkit.recipe.metrics import format_metric, run_metrics
from mnistkit.recipe.schema import Recipe, resolved_dict
from mnistkit.registry import registries
from mnistkit.runs.directory import RunDir, run_process_alive
from mnistkit.tracking.console import Reporter, duration, make_reporter
from mnistkit.training.device import _busy_note, configure_device, resolve_device
from mnistkit.training.loop import (
    Hooks,
    LoopState,
    NonFiniteLoss,
    autocast_context,
    match_layout,
    train_loop,
    uses_channels_last,
)

CHECKPOINT_FORMAT = 1

KILL_ENV = "MNISTKIT_KILL_AT"
NAN_ENV = "MNISTKIT_NAN_AT"


@dataclass
class RunOptions:
    data_dir: Path | None = None
    out: Path | None = None
    runs_root: Path = Path("runs")
    resume: Path | None = None
    progress: str | None = None  # overrides train.progress


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    status: str  # finished | interrupted | failed
    stop_reason: str
    train_seconds: float
    best: float | None
    best_epoch: int | None


def checkpoint_state(
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    recipe: Recipe,
) -> dict[str, Any]:
    """Everything --resume needs, as tensors and plain data only (loadable with weights_only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "order": state.order if state.step else None,
        "loss_sum": state.loss_sum,
        "correct": state.correct,
        "seen": state.seen,
        "elapsed": state.elapsed,
        "rows": state.rows,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _plain_sched_state(scheduler),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "recipe": resolved_dict(recipe),
    }


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def _plain_sched_state(scheduler: Any) -> dict[str, Any] | None:
    from mnistkit.training.checkpoint import plain_scheduler_state

    return None if scheduler is None else plain_scheduler_state(scheduler)


# Scheduler state that describes the plan rather than the position in it.
PLAN_KEYS = ("total_steps", "_schedule_phases", "lr_lambdas")


def restore(
    ckpt: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> LoopState:
    _unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        # The plan (length, phases, lr multipliers) comes from the recipe as it is now, so a run
        # resumed with more epochs follows the re-planned schedule; the position comes from the
        # checkpoint.
        fresh = scheduler.state_dict()
        plan = {k: fresh[k] for k in PLAN_KEYS if k in fresh}
        scheduler.load_state_dict({**fresh, **ckpt["scheduler"], **plan})
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    generator.set_state(ckpt["generator"])
    return LoopState(
        epoch=ckpt["epoch"],
        step=ckpt["step"],
        order=ckpt.get("order"),
        loss_sum=ckpt["loss_sum"],
        correct=ckpt["correct"],
        seen=ckpt["seen"],
        elapsed=ckpt["elapsed"],
        rows=list(ckpt["rows"]),
        best=ckpt["best"],
        best_epoch=ckpt["best_epoch"],
        bad_epochs=ckpt["bad_epochs"],
    )


def run(recipe: Recipe, opts: RunOptions) -> RunResult:
    """Train ``recipe``; write everything to a new run directory (or continue ``opts.resume``)."""
    from mnistkit.training.checkpoint import load_checkpoint, save_checkpoint

    reg = registries()
    device = resolve_device(recipe.train.device)
    threads = configure_device(recipe, device)
    reporter = make_reporter(opts.progress or recipe.train.progress)

    if recipe.train.tensorboard:
        _summary_writer_class()  # a missing package fails now, not after loading the data

    resume_ckpt: dict[str, Any] | None = None
    previous: dict[str, Any] = {}
    if opts.resume is not None:
        previous = RunDir(opts.resume).read_status()
        pid = previous.get("pid")
        if previous.get("status") == "running" and pid != os.getpid() and run_process_alive(pid):
            raise RunError(
                f"--resume {opts.resume}: that run is still running (process {pid}); "
                "stop it first (Ctrl-C saves a checkpoint), then resume"
            )
        resume_ckpt = load_checkpoint(RunDir(opts.resume).checkpoint_path("last"))
    if resume_ckpt is None:
        run = RunDir.create(opts.runs_root, recipe.name or "run", opts.out)
    else:
        run = RunDir(opts.resume)  # type: ignore[arg-type]
    run_dir = run.path

    reporter.header(
        [
            ("recipe", recipe.name or ""),
            ("run dir", str(run_dir)),
            (
                "device",
                f"{device} ({threads} threads){_busy_note(threads)}" if device.type == "cpu" else str(device),
            ),
        ]
    )
    t_data = time.perf_counter()
    data_dir = opts.data_dir
    if data_dir is None and resume_ckpt is not None:
        data_dir = run.recorded_data_dir()  # the --data-dir the run was started with
    try:
        data = load_data(recipe, reg, data_dir, device, reporter)
    except BaseException:
        if resume_ckpt is None and run.is_empty():
            run_dir.rmdir()  # no data, no run: leave no empty run directory behind
        raise
    n_val = len(data.val.y) if data.val is not None else 0
    reporter.header(
        [
            (
                "data",
                f"{recipe.data.dataset}: {len(data.train.y):,} train"
                + (f" / {n_val:,} val" if n_val else "")
                + f" / {len(data.test.y):,} test, "
                f"{data.num_classes} classes, input {tuple(data.in_shape)} "
                f"({time.perf_counter() - t_data:.1f} s)",
            ),
            ("source", data.source),
        ]
    )

    # Seed right before building so the initial weights do not depend on how data was loaded.
    torch.manual_seed(recipe.seed)
    try:
        model, infos = build_model(recipe, data.in_shape, data.num_classes, reg)
    except ShapeError as exc:
        raise RunError(f"model does not fit the data: {exc}") from None
    model.to(device)
    if uses_channels_last(model, device):
        model.to(memory_format=torch.channels_last)  # the loop converts batches to match
    total_params = sum(p.numel() for p in model.parameters())
    reporter.model_summary(
        [(str(i.index), i.type, "x".join(map(str, i.out_shape)), i.params) for i in infos],
        total_params,
    )
    loss_fn = build_loss(recipe, reg)
    optimizer = build_optimizer(recipe, model, reg, device)
    steps = num_batches(len(data.train.y), recipe.data.batch_size, recipe.data.drop_last)
    schedule = build_schedule(recipe, optimizer, steps, reg)
    generator = torch.Generator().manual_seed(recipe.seed)

    state = LoopState()
    if resume_ckpt is not None:
        state = restore(resume_ckpt, model, optimizer, schedule.scheduler, generator)
        old_epochs = resume_ckpt["recipe"].get("epochs")
        where = f"epoch {state.epoch + 1}" + (f", step {state.step + 1}" if state.step else "")
        reporter.message(f"resuming {run_dir} at {where}")
        if old_epochs != recipe.epochs:
            reporter.message(_schedule_note(recipe, old_epochs, steps))
        if state.epoch >= recipe.epochs:
            reporter.message(f"nothing to do: the run already has {state.epoch} of {recipe.epochs} epochs")

    compile_seconds = None
    if recipe.train.compile:
        t0 = time.perf_counter()
        model = torch.compile(model)  # type: ignore[assignment]
        _warm_up(model, data, recipe, device)
        compile_seconds = time.perf_counter() - t0
        reporter.message(f"compiled the model in {compile_seconds:.1f} s (not counted as training time)")

    run.write_recipe(resolved_dict(recipe, reg))
    run.write_data_info(data_info(recipe, data, data_dir))
    run.write_env(
        device=str(device),
        seed=recipe.seed,
        threads=threads,
        data_source=data.source,
        files=data.files,
    )
    started = time.time()
    has_val = data.val is not None
    best_metric = run_metrics(recipe).best
    run.write_status(
        status="running",
        # A resumed run keeps its first start time and lists when it was resumed.
        started=previous.get("started", started),
        name=recipe.name,
        epochs=recipe.epochs,
        best_metric=best_metric,
        pid=os.getpid(),
        ended=None,
        error=None,
        stop_reason=None,
        **({"resumed": [*previous.get("resumed", []), started]} if resume_ckpt else {}),
    )
    loss_fn = _with_test_hooks(loss_fn, steps, state)

    def save(st: LoopState, is_best: bool) -> None:
        if recipe.train.checkpoint:
            ckpt = checkpoint_state(st, model, optimizer, schedule.scheduler, generator, recipe)
            # best before last: a crash between the two leaves last.pt one epoch behind, so the
            # resumed run redoes that epoch and writes best.pt again. The other order could
            # leave a last.pt recording a best epoch whose weights best.pt never received.
            if is_best:
                save_checkpoint(run.checkpoint_path("best"), ckpt)
            save_checkpoint(run.checkpoint_path("last"), ckpt)
        # After the checkpoints: metrics.csv never lists an epoch that --resume would redo.
        run.write_metrics(st.rows, has_val)

    tb = _tensorboard(run_dir, state) if recipe.train.tensorboard else None

    def epoch_end(row: dict[str, Any], improved: bool) -> None:
        reporter.epoch_end(row, improved)
        if tb is not None:
            _log_scalars(tb, row)

    hooks = Hooks(
        on_epoch_start=reporter.epoch_start,
        on_progress=reporter.progress,
        on_epoch_end=epoch_end,
        save_checkpoint=save,
        message=reporter.message,
    )
    reporter.start(recipe.epochs, has_val)
    status = "failed"
    try:
        state = train_loop(recipe, data, model, loss_fn, optimizer, schedule, state, generator, hooks, device)
        status = "interrupted" if state.stop_reason == "interrupted" else "finished"
    except NonFiniteLoss as exc:
        reporter.stop()
        run.write_status(status="failed", ended=time.time(), error=str(exc))
        raise RunError(str(exc)) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep the last saved checkpoint
        status = "interrupted"
        run.write_status(status=status, ended=time.time(), stop_reason="interrupted (second Ctrl-C)")
        raise
    except BaseException as exc:
        run.write_status(status="failed", ended=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        reporter.stop()
        if tb is not None:
            tb.close()
    train_seconds = sum(r["seconds"] for r in state.rows)
    run.write_status(
        status=status,
        ended=time.time(),
        epochs_done=len(state.rows),
        stop_reason=state.stop_reason,
        best=state.best,
        best_epoch=state.best_epoch,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
    )
    if status == "finished" and recipe.train.plots and state.rows:
        _write_plots(run_dir, recipe, model, data, state, reporter)
    last = state.rows[-1] if state.rows else {}
    n = len(state.rows)
    reason = state.stop_reason if state.stop_reason not in (None, status) else f"{n} epoch{'s' * (n != 1)}"
    lines = [("status", f"{status} ({reason})")]
    if last:
        lines.append(
            (
                "final",
                f"test acc {last['test_acc']:.2%}, test loss {last['test_loss']:.4f} "
                f"after epoch {last['epoch']}",
            )
        )
        lines.append(
            (
                "time",
                f"{duration(train_seconds)} training, {duration(time.time() - started)} in all"
                + (" (this session)" if resume_ckpt is not None else ""),
            )
        )
    if state.best is not None:
        shown = format_metric(best_metric, state.best)
        lines.append(("best", f"{best_metric} {shown} at epoch {state.best_epoch} (best.pt)"))
    lines.append(("saved", str(run_dir)))
    if status == "interrupted":
        if recipe.train.checkpoint:
            lines.append(("resume", f"mnistkit run --resume {run_dir}"))
        else:
            lines.append(("resume", "not possible: this run has train.checkpoint: false"))
    reporter.summary(lines)
    return RunResult(
        run_dir,
        state.rows,
        status,
        state.stop_reason or "",
        train_seconds,
        state.best,
        state.best_epoch,
    )


class _TestHookLoss(torch.nn.Module):
    """The loss, plus the MNISTKIT_KILL_AT / MNISTKIT_NAN_AT test hooks (see the module doc).

    Training steps are counted in the loss call (evaluation runs without autograd and is not
    counted), so the hooks need nothing in the training loop itself.
    """

    def __init__(
        self, inner: torch.nn.Module, done: int, kill: tuple[int, int] | None, nan: int | None
    ) -> None:
        super().__init__()
        self.inner, self.done, self.kill, self.nan = inner, done, kill, nan

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.inner(out, target)
        if not torch.is_grad_enabled():
            return loss
        self.done += 1
        if self.kill is not None and self.done == self.kill[0]:
            os.kill(os.getpid(), self.kill[1])
        if self.done == self.nan:
            loss = loss * float("nan")
        return loss


def _with_test_hooks(loss_fn: torch.nn.Module, steps: int, state: LoopState) -> torch.nn.Module:
    kill_spec, nan_spec = os.environ.get(KILL_ENV), os.environ.get(NAN_ENV)
    if not kill_spec and not nan_spec:
        return loss_fn

    def global_step(env: str, spec: str) -> tuple[int, str]:
        parts = spec.split(":")
        try:
            epoch, step = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise RunError(f"{env}={spec!r}: expected EPOCH:STEP, e.g. 2:5") from None
        return (epoch - 1) * steps + step, (parts[2] if len(parts) > 2 else "KILL")

    kill = None
    if kill_spec:
        at, sig_name = global_step(KILL_ENV, kill_spec)
        try:
            sig = signal.Signals[sig_name if sig_name.startswith("SIG") else "SIG" + sig_name]
        except KeyError:
            raise RunError(f"{KILL_ENV}={kill_spec!r}: unknown signal {sig_name!r}") from None
        kill = (at, int(sig))
    nan = global_step(NAN_ENV, nan_spec)[0] if nan_spec else None
    return _TestHookLoss(loss_fn, state.epoch * steps + state.step, kill, nan)


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError(
            "train.tensorboard is true but the tensorboard package is not installed: "
            "pip install tensorboard (or pip install 'mnistkit[tensorboard]'), "
            "or set train.tensorboard: false"
        ) from None
    return SummaryWriter


def _tensorboard(run_dir: Path, state: LoopState) -> Any:
    # purge_step: a resumed run drops what a killed process logged after the checkpoint it
    # resumes from, so every epoch appears once.
    return _summary_writer_class()(
        log_dir=str(RunDir(run_dir).tensorboard_dir), purge_step=state.epoch + 1 if state.epoch else None
    )


# metrics.csv column -> TensorBoard tag: losses and accuracies grouped so splits share a chart.
_TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "test_acc": "accuracy/test",
    "lr": "lr",
    "seconds": "time/epoch_seconds",
    "samples_per_s": "time/samples_per_s",
}


def _log_scalars(writer: Any, row: dict[str, Any]) -> None:
    for key, tag in _TB_TAGS.items():
        if row.get(key) is not None:
            writer.add_scalar(tag, row[key], row["epoch"])
    writer.flush()  # a killed run keeps every finished epoch


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


def _warm_up(model: torch.nn.Module, data: Prepared, recipe: Recipe, device: torch.device) -> None:
    """Compile every graph training will need, before the clock starts, changing nothing.

    One training step (forward + backward) and one evaluation pass per batch size the run will
    see: the full batch and the last partial one, under the run's autocast and memory layout,
    so no recompilation lands inside a timed epoch. Gradients are dropped, and buffers
    (BatchNorm running statistics) and RNG streams (dropout) are restored afterwards.
    """
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    buffers = [b.detach().clone() for b in model.buffers()]
    channels_last = uses_channels_last(model, device)
    bs, ebs = recipe.data.batch_size, recipe.data.eval_batch_size
    n_train, n_test = len(data.train.y), len(data.test.y)
    train_sizes = {min(bs, n_train)}
    if n_train % bs and not recipe.data.drop_last:
        train_sizes.add(n_train % bs)
    eval_sizes = {min(ebs, n_test)} | ({n_test % ebs} if n_test % ebs else set())
    with autocast_context(recipe.train.precision, device):
        model.train()
        for size in sorted(train_sizes):
            xb = data.inputs(data.train.x[:size].to(device))
            model(match_layout(xb, channels_last)).float().sum().backward()
        for p in model.parameters():
            p.grad = None
        model.eval()
        with torch.inference_mode():
            for size in sorted(eval_sizes):
                model(match_layout(data.test.x[:size], channels_last))
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


def _write_plots(
    run_dir: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    data: Prepared,
    state: LoopState,
    reporter: Reporter,
) -> None:
    try:
        from mnistkit.evaluation.evaluate import write_run_plots
    except ImportError:
        return
    try:
        paths = write_run_plots(run_dir, model, data, state.rows, recipe)
        reporter.message("plots:    " + ", ".join(str(p.relative_to(run_dir)) for p in paths))
    except Exception as exc:  # a plot must never cost the user their finished run
        reporter.message(f"[yellow]could not write plots: {type(exc).__name__}: {exc}[/yellow]")
