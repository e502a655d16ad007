"""``mnistkit eval model.onnx``: an exported model's accuracy on its dataset's test split.

The test split is loaded as the run loaded it (the recipe is in the model's metadata), raw, the
way the graph takes it, and run through ONNX Runtime in batches. The result has the shape of
:func:`mnistkit.evaluation.evaluate.evaluate_run`'s report, so it prints the same way; it also carries the
checkpoint's test accuracy as training measured it, which the exported model must reproduce.
Loading the dataset uses torch (the dataset loaders do); the model itself runs in ONNX Runtime.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.errors import RunError


def evaluate_onnx(model_path: Path, data_dir: Path | None = None) -> dict[str, Any]:
    from mnistkit.data.batches import raw_test_split
    from mnistkit.data.loading import load_dataset
    from mnistkit.evaluation.metrics import confusion_matrix, per_class_report
    from mnistkit.export.runtime import load_model
    from mnistkit.recipe.schema import load_recipe_text
    from mnistkit.registry import registries
    from mnistkit.runs.directory import RunDir

    model = load_model(model_path)
    meta = model.meta
    recipe = load_recipe_text(json.dumps(meta["recipe"]), source=f"{model_path} (metadata 'recipe')")
    run_dir = Path(meta["run_dir"])
    if data_dir is None and run_dir.is_dir():
        data_dir = RunDir(run_dir).recorded_data_dir()  # the --data-dir the run was trained with, if here
    loaded = load_dataset(recipe, registries(), data_dir)
    test = raw_test_split(loaded, recipe.data)
    y = test.y.numpy().astype(np.int64)
    shape = list(test.x.shape[1:])
    if shape != list(meta["input_shape"][1:]):
        raise RunError(
            f"{recipe.data.dataset} test samples have shape {shape}, "
            f"the model takes {meta['input_shape'][1:]}"
        )
    batch = recipe.data.eval_batch_size
    # batch by batch: rows of a cache's file (data.cache: mmap) are read as they are needed
    probs = np.concatenate(
        [
            model.probabilities(test.raw(np.arange(i, min(i + batch, len(y)))).numpy())
            for i in range(0, len(y), batch)
        ]
    )
    classes = list(meta["classes"])
    cm = confusion_matrix(y, probs.argmax(1), len(classes))
    report = per_class_report(cm, classes)
    return {
        "run_dir": meta["run_dir"],
        "model": str(model_path),
        "checkpoint": meta["checkpoint"],
        "checkpoint_file": f"{Path(model_path).name}, exported from {meta['checkpoint']}.pt",
        "checkpoint_epoch": meta["checkpoint_epoch"],
        "checkpoint_when": meta["checkpoint_when"],
        "checkpoint_test_accuracy": meta["checkpoint_test_accuracy"],
        "dataset": recipe.data.dataset,
        "split": "test",
        "samples": len(y),
        "loss": None,  # the graph has no loss; accuracy is what the export must reproduce
        "accuracy": report["accuracy"],
        "macro": report["macro"],
        "classes": report["classes"],
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class (order of 'classes')",
        "runtime": "onnxruntime",
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def print_onnx_eval(result: dict[str, Any], console: Any) -> None:
    from mnistkit.evaluation.evaluate import print_eval

    print_eval(result, console)
    ref = result["checkpoint_test_accuracy"]
    if ref is None:
        console.print("checkpoint: its test accuracy was not recorded (a mid-epoch checkpoint)")
        return
    same = round(ref * result["samples"]) == round(result["accuracy"] * result["samples"])
    console.print(
        f"{'checkpoint:':<10} test accuracy {ref:.2%} in training: "
        + ("[green]the same[/]" if same else "[bold red]DIFFERENT[/]")
    )
