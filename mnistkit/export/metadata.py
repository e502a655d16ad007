"""The metadata an exported model carries, written once here and read back by predict and eval.

Every entry of the ONNX model's ``metadata_props`` is a string. Text values are stored as they
are; lists, numbers, objects and null are stored as JSON (``classes`` is a JSON list). model.json
beside the model holds the same entries decoded, for humans. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError

FORMAT = "1"  # bumped when an entry changes meaning; predict refuses formats it does not know
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
# Verification at export: largest |logit difference| ONNX Runtime vs torch that passes. Measured
# differences of the shipped models are 1e-7 to 1e-5 (float32 kernels summing in other orders).
DEFAULT_TOLERANCE = 1e-4


def default_model_path(run_dir: Path) -> Path:
    """Where ``mnistkit export RUN_DIR`` writes the model by default (``serve RUN_DIR`` looks there)."""
    return Path(run_dir) / "export" / "model.onnx"


# key -> what it holds. Kept in this order in model.json.
ENTRIES: dict[str, str] = {
    "mnistkit_export_format": "format of this metadata (predict refuses unknown formats)",
    "classes": "class names, JSON list, in the order of the outputs' columns",
    "input_name": "the graph's input",
    "input_shape": "JSON list; 'batch' is the dynamic batch axis",
    "input_dtype": "uint8 (images, 0-255 as the dataset stores them) or float32 (audio log-mel)",
    "input_kind": "image or audio",
    "normalization": "applied INSIDE the graph: x = (input * scale - mean) / std per channel",
    "features": "audio: the log-mel settings the input must be computed with (JSON); else null",
    "pixel_mean": "the training images' mean per channel in [0, 1] (dark or light background), or null",
    "outputs": "logits [batch, classes] (raw model outputs) and probabilities (their softmax)",
    "dataset": "the dataset the run was trained on",
    "recipe_name": "the recipe's name",
    "recipe": "the run's fully resolved recipe (JSON)",
    "run_dir": "the run directory exported from",
    "checkpoint": "best or last",
    "checkpoint_epoch": "the epoch the checkpoint was saved after",
    "checkpoint_when": "when in the run the checkpoint was saved",
    "checkpoint_test_accuracy": "test accuracy of that epoch as training measured it (null if unknown)",
    "mnistkit_version": "mnistkit that exported the model",
    "torch_version": "torch that exported the model",
    "onnx_opset": "the ONNX operator set (default domain)",
    "verification": "ONNX Runtime vs torch at export: samples, max |logit difference|, agreement",
}
_TEXT = {
    "mnistkit_export_format",
    "input_name",
    "input_dtype",
    "input_kind",
    "dataset",
    "recipe_name",
    "run_dir",
    "checkpoint",
    "checkpoint_when",
    "mnistkit_version",
    "torch_version",
}


def encode(values: dict[str, Any]) -> dict[str, str]:
    """``metadata_props`` strings from values (every key of :data:`ENTRIES`, nothing else)."""
    missing = [k for k in ENTRIES if k not in values]
    extra = [k for k in values if k not in ENTRIES]
    if missing or extra:  # a programming error: the contract is this module's ENTRIES
        raise ValueError(f"metadata: missing {missing}, unknown {extra}")
    return {k: str(values[k]) if k in _TEXT else json.dumps(values[k]) for k in ENTRIES}


def decode(props: dict[str, str], source: str) -> dict[str, Any]:
    """Values from ``metadata_props``; a model that is not a (known) mnistkit export is refused."""
    fmt = props.get("mnistkit_export_format")
    if fmt is None:
        raise RunError(
            f"{source}: not exported by mnistkit (its metadata has no 'mnistkit_export_format'); "
            "export a run with `mnistkit export RUN_DIR`"
        )
    if fmt != FORMAT:
        raise RunError(
            f"{source}: exported in metadata format {fmt!r}, this mnistkit reads format {FORMAT!r}; "
            "export the run again with this version"
        )
    out: dict[str, Any] = {}
    for key in ENTRIES:
        if key not in props:
            raise RunError(f"{source}: metadata entry {key!r} is missing (the file was altered?)")
        try:
            out[key] = props[key] if key in _TEXT else json.loads(props[key])
        except json.JSONDecodeError:
            raise RunError(f"{source}: metadata entry {key!r} is not valid JSON") from None
    return out


def data_info(meta: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing facts in the shape of a run's data.json (what mnistkit.evaluation.predict reads)."""
    norm = meta["normalization"]
    return {
        "dataset": meta["dataset"],
        "kind": meta["input_kind"],
        "classes": list(meta["classes"]),
        "in_shape": [int(n) for n in meta["input_shape"][1:]],
        "scale": float(norm["scale"]),
        "mean": [float(m) for m in norm["mean"]],
        "std": [float(s) for s in norm["std"]],
        "features": meta["features"],
        "pixel_mean": meta["pixel_mean"],
    }
