"""Evaluate a trained model: loss, accuracy, per-class scores, confusion matrix, and run plots.

* :func:`write_run_plots` -- the PNGs written at the end of every run (``train.plots``):
  ``plots/curves.png``, ``plots/confusion.png`` (test set, final model) and ``plots/worst.png``
  (the most confidently wrong test samples).
* :func:`evaluate_run` -- ``mnistkit eval RUN_DIR``: the model is rebuilt from the run's
  ``recipe.yaml`` and the weights of one of its checkpoints (loaded with ``weights_only``: a
  checkpoint cannot run code), evaluated on the test split, and the report is written next to
  the checkpoints as ``eval-<checkpoint>.json`` and ``eval-<checkpoint>-confusion.png``;
  ``--checkpoint last`` also (re)writes ``predictions.npz`` (the final model's predictions) and
  ``gallery.npz`` (the inputs ``mnistkit report`` shows).
* :func:`write_predictions` -- ``predictions.npz``, written at the end of every finished run.

Evaluation is the training loop's own (:func:`mnistkit.training.evaluation.evaluate`: large
batches, the run's precision), so ``mnistkit eval --checkpoint last`` of a finished run
reproduces the last row of metrics.csv (accuracy exactly; the loss to float rounding, as BLAS
kernels may round differently), for ``train.precision: bf16`` too.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_write_text
from mnistkit.runs.directory import RunDir

if TYPE_CHECKING:
    import torch

    from mnistkit.data.batches import Prepared
    from mnistkit.recipe.schema import Recipe

WORST_SHOWN = 15  # examples in plots/worst.png


# ------------------------------------------------------------------------------ predictions
def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalized inputs ``[N, C, ...]`` back to the [0, 1] range they had before normalizing."""
    arr = x.detach().float().cpu().numpy()
    shape = (1, -1) + (1,) * (arr.ndim - 2)
    out = arr * np.asarray(std, dtype=np.float32).reshape(shape)
    out += np.asarray(mean, dtype=np.float32).reshape(shape)
    return out


def worst_indices(probs: np.ndarray, y: np.ndarray, k: int = WORST_SHOWN) -> np.ndarray:
    """Indices of the (at most k) wrong predictions made with the highest confidence."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    # Stable sort on -confidence: ties keep dataset order, so the plot is reproducible.
    return wrong[np.argsort(-conf, kind="stable")[:k]]


# ------------------------------------------------------------------------------ predictions.npz
def test_probabilities(model: torch.nn.Module, data: Prepared, recipe: Recipe) -> np.ndarray:
    """The model's class probabilities on the test split (the loop's own evaluation pass)."""
    from mnistkit.training.evaluation import evaluate

    probs = evaluate(
        model, data.test, recipe.data.eval_batch_size, precision=recipe.train.precision, keep_probs=True
    ).probs
    assert probs is not None
    return probs


def write_predictions(
    run: RunDir, probs: np.ndarray, data: Prepared, recipe: Recipe, model: dict[str, Any]
) -> Path:
    """``predictions.npz`` (:mod:`mnistkit.runs.predictions`) from the test probabilities, and
    beside it ``gallery.npz`` (the inputs a report shows: :mod:`mnistkit.runs.gallery`);
    ``model`` says which weights made them (checkpoint, epoch, step, written_by)."""
    from mnistkit.runs.predictions import save_predictions, test_set_identity

    labels = data.test.y.cpu().numpy()
    identity = test_set_identity(recipe.data.dataset, labels, data.test_inputs_sha256)
    path = save_predictions(run.predictions_path, labels, probs, identity, model)
    write_gallery(run, probs, data, recipe)
    return path


def write_gallery(run: RunDir, probs: np.ndarray, data: Prepared, recipe: Recipe) -> Path:
    """``gallery.npz``: the test inputs of the most confident mistakes and the least confident
    correct answers, before normalization, with their file names where the dataset has files."""
    from mnistkit.runs.gallery import pick, save_gallery

    labels = data.test.y.cpu().numpy()
    mistakes, unsure = pick(probs, labels)
    idx = np.concatenate([mistakes, unsure])
    inputs = denormalize(data.test.inputs(idx), data.mean, data.std)
    files = data.test_files
    names = [_short_name(files[i]) for i in idx] if files is not None else None
    spectrogram = recipe.data.features is not None
    return save_gallery(run.gallery_path, mistakes, unsure, inputs, spectrogram, names)


# ------------------------------------------------------------------------------ run plots
def write_run_plots(
    run_dir: Path,
    model: torch.nn.Module,
    data: Prepared,
    rows: list[dict[str, Any]],
    recipe: Recipe,
    probs: np.ndarray | None = None,
) -> list[Path]:
    """curves.png, confusion.png and worst.png of a finished run, under ``run_dir/plots``.

    ``probs``: the final model's test probabilities where the caller has them already."""
    from mnistkit.evaluation.metrics import confusion_matrix
    from mnistkit.evaluation.plots import plot_confusion, plot_curves, plot_worst

    out = RunDir(run_dir).plots_dir
    name = recipe.name or Path(run_dir).name
    epochs = rows[-1]["epoch"] if rows else 0
    paths = [plot_curves(rows, out / "curves.png", title=f"{name}: learning curves")]

    if probs is None:
        probs = test_probabilities(model, data, recipe)
    y = data.test.y.cpu().numpy()
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, data.num_classes)
    paths.append(
        plot_confusion(
            cm,
            data.classes,
            out / "confusion.png",
            title=f"{name}: test set, final model (epoch {epochs})",
        )
    )
    idx = worst_indices(probs, y)
    images = denormalize(data.test.inputs(idx), data.mean, data.std)
    n_wrong = int((pred != y).sum())
    files = [data.test_files[i] for i in idx] if data.test_files is not None else None
    paths.append(
        plot_worst(
            images,
            y[idx],
            pred[idx],
            probs[idx, pred[idx]],
            data.classes,
            out / "worst.png",
            title=f"{name}: most confidently wrong test samples "
            f"({len(idx)} of {n_wrong:,} mistakes in {len(y):,})",
            # Audio features are spectrograms even when square (FSDD: 64x64): draw them as such.
            spectrogram=recipe.data.features is not None,
            names=[_short_name(f) for f in files] if files is not None else None,
        )
    )
    paths.append(write_worst_csv(out / "worst.csv", idx, y, pred, probs, data.classes, files))
    return paths


def _short_name(path: Path, limit: int = 26) -> str:
    """``class/file.png`` for a plot cell; the middle cut out (``…``) when longer than ``limit``."""
    name = f"{path.parent.name}/{path.name}"
    return name if len(name) <= limit else name[: limit // 2 - 1] + "…" + name[-(limit // 2) :]


def write_worst_csv(
    path: Path,
    idx: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    files: list[Path] | None,
) -> Path:
    """worst.csv beside worst.png: the samples it shows, in its order, with the file of each
    (folder datasets; empty otherwise) so a mislabelled one can be found and fixed."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "test_index", "file", "true", "predicted", "confidence"])
    for rank, i in enumerate(idx, 1):
        writer.writerow(
            [
                rank,
                int(i),
                str(files[rank - 1]) if files is not None else "",
                classes[int(y[i])],
                classes[int(pred[i])],
                f"{float(probs[i, pred[i]]):.4f}",
            ]
        )
    atomic_write_text(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------ mnistkit eval
def checkpoint_when(ckpt: dict[str, Any]) -> str:
    """'after epoch 3', or 'epoch 2, step 40 (mid-epoch)' for a Ctrl-C checkpoint."""
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0) or 0)
    return f"after epoch {epoch}" if not step else f"epoch {epoch + 1}, step {step} (mid-epoch)"


def load_run_checkpoint(run: RunDir, checkpoint: str) -> tuple[dict[str, Any], Path]:
    """The checkpoint's state (weights_only: refuses files that could run code)."""
    from mnistkit.training.checkpoint import load_checkpoint
    from mnistkit.training.state import check_format

    path = run.existing_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    check_format(ckpt, path)
    if not isinstance(ckpt.get("model"), dict):
        raise RunError(f"{path} has no model weights: it was not written by mnistkit")
    return ckpt, path


def rebuild_model(
    recipe: Recipe,
    in_shape: tuple[int, ...],
    num_classes: int,
    ckpt: dict[str, Any],
    ckpt_file: Path,
    device: torch.device,
) -> torch.nn.Module:
    """The recipe's model with the checkpoint's weights, in eval mode on ``device``."""
    from mnistkit.build.components import build_model
    from mnistkit.layers.shapes import ShapeError
    from mnistkit.registry import registries

    try:
        model, _ = build_model(recipe, tuple(in_shape), num_classes, registries())
    except ShapeError as exc:
        raise RunError(f"the run's model does not fit its data: {exc}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"{ckpt_file}: the weights do not fit the model built from "
            f"{ckpt_file.parent / 'recipe.yaml'} ({first})"
        ) from None
    return model.to(device).eval()


def evaluate_run(run_dir: Path, checkpoint: str = "best", data_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test split; write eval-<checkpoint>.json and .png.

    Returns the report (what the JSON holds). The checkpoint is loaded first, so a refused or
    corrupt file fails before any data is read.
    """
    from mnistkit.build.components import build_loss, class_counts
    from mnistkit.data.loading import load_data
    from mnistkit.evaluation.metrics import confusion_matrix, per_class_report
    from mnistkit.evaluation.plots import plot_confusion
    from mnistkit.registry import registries
    from mnistkit.training.device import configure_device, resolve_device
    from mnistkit.training.evaluation import evaluate

    run = RunDir.open(run_dir)
    ckpt, ckpt_file = load_run_checkpoint(run, checkpoint)
    recipe = run.load_recipe()
    reg = registries()
    device = resolve_device(recipe.train.device)
    configure_device(recipe, device)
    if data_dir is None:
        data_dir = run.recorded_data_dir()  # the --data-dir the run was trained with
    data = load_data(recipe, reg, data_dir, device)
    model = rebuild_model(recipe, data.in_shape, data.num_classes, ckpt, ckpt_file, device)
    ev = evaluate(
        model,
        data.test,
        recipe.data.eval_batch_size,
        precision=recipe.train.precision,
        loss_fn=build_loss(recipe, reg, class_counts(data.train.y, data.num_classes)).to(device),
        keep_probs=True,
    )
    probs, loss = ev.probs, ev.loss
    assert probs is not None
    y = data.test.y.cpu().numpy()
    cm = confusion_matrix(y, probs.argmax(1), data.num_classes)
    report = per_class_report(cm, data.classes)
    result: dict[str, Any] = {
        "run_dir": str(run.path),
        "checkpoint": checkpoint,
        "checkpoint_file": ckpt_file.name,
        "checkpoint_epoch": int(ckpt.get("epoch", 0)),
        "checkpoint_step": int(ckpt.get("step", 0) or 0),
        "checkpoint_when": checkpoint_when(ckpt),
        "dataset": recipe.data.dataset,
        "split": "test",
        "samples": len(y),
        "loss": loss,
        "accuracy": report["accuracy"],
        "macro": report["macro"],
        "classes": report["classes"],
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class (order of 'classes')",
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    # Inside this run's directory only, under names that say which checkpoint they describe:
    # re-running eval replaces its own outputs and never touches anything else.
    json_path = run.eval_json_path(checkpoint)
    png_path = run.eval_confusion_path(checkpoint)
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    plot_confusion(
        cm,
        data.classes,
        png_path,
        title=f"{recipe.name or run.name} {checkpoint}.pt ({checkpoint_when(ckpt)})",
    )
    result["saved"] = [str(json_path), str(png_path)]
    if checkpoint == "last":  # the final model's: what `compare` tests (runs/predictions.py)
        model_info = {"checkpoint": ckpt_file.name, "epoch": result["checkpoint_epoch"]}
        model_info |= {"step": result["checkpoint_step"], "written_by": "mnistkit eval"}
        result["saved"].append(str(write_predictions(run, probs, data, recipe, model_info)))
    return result


def print_eval(result: dict[str, Any], console: Any) -> None:
    """The report as Rich tables: summary, per-class scores, confusion matrix."""
    from rich.markup import escape as _esc
    from rich.table import Table

    loss = result["loss"]
    macro = result["macro"]
    lines = [
        ("run", result["run_dir"]),
        ("model", f"{result['checkpoint_file']} ({result['checkpoint_when']})"),
        ("data", f"{result['dataset']} {result['split']} split, {result['samples']:,} samples"),
        ("loss", f"{loss:.4f}" if loss is not None else "-"),
        ("accuracy", f"{result['accuracy']:.2%}"),
        (
            "macro",
            f"precision {macro['precision']:.2%}  recall {macro['recall']:.2%}  F1 {macro['f1']:.2%}",
        ),
    ]
    for key, value in lines:
        console.print(f"{key + ':':<10} {_esc(value)}")

    table = Table(title="per class", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    for i, c in enumerate(result["classes"]):
        table.add_row(
            str(i),
            _esc(c["name"]),
            f"{c['precision']:.2%}",
            f"{c['recall']:.2%}",
            f"{c['f1']:.2%}",
            f"{c['support']:,}",
        )
    console.print(table)

    cm = result["confusion_matrix"]
    names = [c["name"] for c in result["classes"]]
    cmt = Table(
        title="confusion matrix (rows: true class, columns: predicted #)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    cmt.add_column("true", no_wrap=True)
    for j in range(len(names)):
        cmt.add_column(str(j), justify="right")
    for i, row in enumerate(cm):
        cells = []
        for j, count in enumerate(row):
            if i == j:
                cells.append(f"[bold green]{count}[/]")
            elif count == 0:
                cells.append("[dim]0[/]")
            else:
                cells.append(f"[red]{count}[/]")
        label = names[i] if names[i] == str(i) else f"{i} {names[i]}"
        cmt.add_row(_esc(label), *cells)
    console.print(cmt)
    for path in result.get("saved", []):
        console.print(f"{'saved:':<10} {_esc(path)}")
