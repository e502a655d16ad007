"""One run, start to finish: recipe → data → built components → train_loop → run directory.

This is the glue the CLI (and the benchmark) call; each step is a call into the module that owns
it, in the order the data flows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistkit import rundir
from mnistkit.build import build_loss, build_model, build_optimizer, build_schedule
from mnistkit.data import DataContext, Prepared, data_roots, num_batches, prepare, user_cache_dir
from mnistkit.datatypes import DataError
from mnistkit.errors import RunError
from mnistkit.layers import ShapeError
from mnistkit.recipe import Recipe, resolved_dict
from mnistkit.registry import Registries, registries
from mnistkit.report import Reporter, duration, make_reporter
from mnistkit.train import Hooks, LoopState, NonFiniteLoss, train_loop

CHECKPOINT_FORMAT = 1


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError(
            "train.device is 'cuda' but no CUDA device is available; use device: auto or cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise RunError("train.device is 'mps' but MPS is not available; use device: auto or cpu")
    return torch.device(name)


def default_threads() -> int:
    # One thread per core we may run on: more threads than cores only adds contention, and
    # torch's own default can count hyperthreads or the whole host inside a container.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def configure_device(recipe: Recipe, device: torch.device) -> int:
    threads = recipe.train.threads or default_threads()
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = (
            True  # TF32 tensor cores: ~free speed for fp32 matmuls
        )
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = (
            True  # fixed input shapes: pick the fastest conv kernels once
        )
    return threads


def load_data(
    recipe: Recipe,
    reg: Registries,
    data_dir: Path | None,
    device: torch.device,
    reporter: Reporter | None = None,
) -> Prepared:
    entry = reg.datasets.get(recipe.data.dataset)
    roots = data_roots(recipe.data, data_dir)
    may_download = recipe.data.download and entry.meta.get("download", False)
    last = [0.0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if reporter is not None and (now - last[0] > 2 or done == total):
            last[0] = now
            reporter.message(f"  {what}: {done}/{total}")

    ctx = DataContext(
        section=recipe.data,
        roots=roots,
        download_root=roots[0] if may_download else None,
        cache_dir=user_cache_dir(),
        seed=recipe.seed,
        progress=progress,
    )
    try:
        loaded = entry.load()(ctx)
    except DataError as exc:
        raise RunError(str(exc)) from None
    return prepare(loaded, recipe.data, recipe.seed, device)


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
    from mnistkit.checkpoint import plain_scheduler_state

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
    from mnistkit.checkpoint import load_checkpoint, save_checkpoint

    reg = registries()
    device = resolve_device(recipe.train.device)
    threads = configure_device(recipe, device)
    reporter = make_reporter(opts.progress or recipe.train.progress)

    resume_ckpt: dict[str, Any] | None = None
    if opts.resume is not None:
        resume_ckpt = load_checkpoint(opts.resume / "last.pt")
    if resume_ckpt is None:
        run_dir = rundir.create_run_dir(opts.runs_root, recipe.name or "run", opts.out)
    else:
        run_dir = opts.resume  # type: ignore[assignment]

    reporter.header(
        [
            ("recipe", recipe.name or ""),
            ("run dir", str(run_dir)),
            ("device", f"{device} ({threads} threads)" if device.type == "cpu" else str(device)),
        ]
    )
    t_data = time.perf_counter()
    data = load_data(recipe, reg, opts.data_dir, device, reporter)
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
            reporter.message(
                f"nothing to do: the run already has {state.epoch} of {recipe.epochs} epochs"
            )

    if recipe.train.compile:
        t0 = time.perf_counter()
        model = torch.compile(model)  # type: ignore[assignment]
        _warm_up(model, data, recipe)
        reporter.message(
            f"compiled the model in {time.perf_counter() - t0:.1f} s (not counted as training)"
        )

    rundir.write_recipe(run_dir, resolved_dict(recipe))
    rundir.write_env(
        run_dir,
        device=str(device),
        seed=recipe.seed,
        threads=threads,
        data_source=data.source,
        files=data.files,
    )
    started = time.time()
    rundir.write_status(
        run_dir,
        status="running",
        started=started,
        name=recipe.name,
        epochs=recipe.epochs,
        pid=os.getpid(),
    )
    has_val = data.val is not None

    def save(st: LoopState, is_best: bool) -> None:
        rundir.write_metrics(run_dir, st.rows, has_val)
        if not recipe.train.checkpoint:
            return
        ckpt = checkpoint_state(st, model, optimizer, schedule.scheduler, generator, recipe)
        save_checkpoint(run_dir / "last.pt", ckpt)
        if is_best:
            save_checkpoint(run_dir / "best.pt", ckpt)

    hooks = Hooks(
        on_epoch_start=reporter.epoch_start,
        on_progress=reporter.progress,
        on_epoch_end=reporter.epoch_end,
        save_checkpoint=save,
        message=reporter.message,
    )
    reporter.start(recipe.epochs, has_val)
    status = "failed"
    try:
        state = train_loop(
            recipe, data, model, loss_fn, optimizer, schedule, state, generator, hooks, device
        )
        status = "interrupted" if state.stop_reason == "interrupted" else "finished"
    except NonFiniteLoss as exc:
        reporter.stop()
        rundir.write_status(run_dir, status="failed", ended=time.time(), error=str(exc))
        raise RunError(str(exc)) from None
    finally:
        reporter.stop()
        if status == "failed":
            rundir.write_status(run_dir, status="failed", ended=time.time())
    train_seconds = sum(r["seconds"] for r in state.rows)
    rundir.write_status(
        run_dir,
        status=status,
        ended=time.time(),
        epochs_done=len(state.rows),
        stop_reason=state.stop_reason,
        best=state.best,
        best_epoch=state.best_epoch,
        train_seconds=train_seconds,
    )
    if status == "finished" and recipe.train.plots and state.rows:
        _write_plots(run_dir, recipe, model, data, state, reporter)
    last = state.rows[-1] if state.rows else {}
    reason = state.stop_reason if state.stop_reason not in (None, status) else f"{len(state.rows)} epochs"
    lines = [("status", f"{status} ({reason})")]
    if last:
        lines.append(
            (
                "final",
                f"test acc {last['test_acc']:.2%}, test loss {last['test_loss']:.4f} "
                f"after {last['epoch']} epochs",
            )
        )
        lines.append(
            (
                "time",
                f"{duration(train_seconds)} training, {duration(time.time() - started)} in all",
            )
        )
    if state.best is not None:
        metric = recipe.train.best_metric
        metric = metric if metric != "auto" else ("val_acc" if has_val else "test_acc")
        shown = f"{state.best:.2%}" if metric.endswith("_acc") else f"{state.best:.4f}"
        lines.append(("best", f"{metric} {shown} at epoch {state.best_epoch} (best.pt)"))
    lines.append(("saved", str(run_dir)))
    if status == "interrupted":
        lines.append(("resume", f"mnistkit run --resume {run_dir}"))
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


def _warm_up(model: torch.nn.Module, data: Prepared, recipe: Recipe) -> None:
    """Trigger compilation on one batch without changing weights or RNG streams."""
    rng = torch.get_rng_state()
    xb = data.train.x[: recipe.data.batch_size]
    model.train()
    out = model(xb)
    out.float().sum().backward()
    for p in model.parameters():
        p.grad = None
    model.eval()
    with torch.inference_mode():
        model(data.test.x[: recipe.data.eval_batch_size])
    torch.set_rng_state(rng)


def _write_plots(
    run_dir: Path,
    recipe: Recipe,
    model: torch.nn.Module,
    data: Prepared,
    state: LoopState,
    reporter: Reporter,
) -> None:
    try:
        from mnistkit.evaluate import write_run_plots
    except ImportError:
        return
    try:
        paths = write_run_plots(run_dir, model, data, state.rows, recipe)
        reporter.message("plots:    " + ", ".join(str(p.relative_to(run_dir)) for p in paths))
    except Exception as exc:  # a plot must never cost the user their finished run
        reporter.message(f"[yellow]could not write plots: {type(exc).__name__}: {exc}[/yellow]")
