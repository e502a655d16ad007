"""Classify files with a trained run: ``mnistkit predict RUN_DIR FILE...``.

The model is rebuilt from the run's ``recipe.yaml`` and a checkpoint (``weights_only``), and
every file is preprocessed exactly as the training data was, from what the run recorded in
``data.json`` (no dataset needed):

* images (PNG, JPG, anything Pillow reads): converted to grey (or RGB for 3-channel datasets;
  transparent pixels become black), resized to the dataset's input size (e.g. 28x28), scaled
  to [0, 1] and normalized with the run's mean/std. The MNIST family is white (light) digits or
  garments on a black background: give images the same way round, or pass ``invert=True``
  (``--invert``) for dark-on-light drawings.
* audio (WAV, FLAC, OGG) for audio runs: decoded at the run's sample rate and turned into the
  same log-mel features (:func:`mnistkit.data.features.log_mel`) with the run's feature settings.

Every file is read before the model runs; files that cannot be read are reported together, by
name, as a :class:`RunError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.errors import RunError
from mnistkit.evaluation.inputs import (
    check_predict_args,
    expand_inputs,
    file_array,
    image_array,
    input_scale,
    prediction_items,
    read_files,
)

if TYPE_CHECKING:
    import torch

    from mnistkit.runs.directory import RunDir


@dataclass
class Predictor:
    model: torch.nn.Module
    info: dict[str, Any]  # data.json
    checkpoint: str
    checkpoint_when: str
    precision: str  # train.precision: the model is run as it was trained


def load_predictor(run_dir: Path, checkpoint: str = "best") -> Predictor:
    import torch

    from mnistkit.evaluation.evaluate import checkpoint_when, load_run_checkpoint, rebuild_model
    from mnistkit.runs.directory import RunDir

    run = RunDir.open(run_dir)
    ckpt, ckpt_file = load_run_checkpoint(run, checkpoint)
    recipe = run.load_recipe()
    info = run_data_info(run, recipe)
    model = rebuild_model(
        recipe, tuple(info["in_shape"]), len(info["classes"]), ckpt, ckpt_file, torch.device("cpu")
    )
    return Predictor(model, info, checkpoint, checkpoint_when(ckpt), recipe.train.precision)


def run_data_info(run: RunDir | Path, recipe: Any) -> dict[str, Any]:
    """data.json, or (runs written before it existed) the same facts from the dataset itself."""
    import torch

    from mnistkit.data.loading import data_info, load_data
    from mnistkit.registry import registries
    from mnistkit.runs.directory import RunDir

    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    info = run.read_data_info()
    if info is not None:
        return info
    try:
        data = load_data(recipe, registries(), None, torch.device("cpu"))
    except RunError as exc:
        raise RunError(
            f"{run.data_path} is missing (the run predates it), and the dataset it would be "
            f"recomputed from was not found: {exc}"
        ) from None
    return data_info(recipe, data)


def file_tensor(path: Path, info: dict[str, Any], invert: bool = False) -> torch.Tensor:
    """One file as the normalized float tensor ``[1, C, ...]`` the model was trained on."""
    return normalized(file_array(path, info, invert)[None], info)


def image_tensor(path: Path, info: dict[str, Any], invert: bool = False) -> torch.Tensor:
    """One image file as the normalized float tensor ``[1, C, H, W]`` the model was trained on."""
    return normalized(image_array(path, info, invert)[None], info)


def normalized(raw: np.ndarray, info: dict[str, Any]) -> torch.Tensor:
    """A raw batch ``[N, C, ...]`` normalized exactly as training batches (:func:`to_float`)."""
    import torch

    from mnistkit.data.batches import to_float

    return to_float(torch.from_numpy(raw), tuple(info["mean"]), tuple(info["std"]), input_scale(info))


# ---------------------------------------------------------------------------------- predict
def predict_files(
    run_dir: Path,
    files: list[Path],
    checkpoint: str = "best",
    top: int = 1,
    invert: bool = False,
) -> dict[str, Any]:
    """Predictions for ``files``: ``{"run_dir", "checkpoint", ..., "predictions": [...]}``.

    Each prediction: ``{"file", "class", "index", "probability", "top": [{"class", "index",
    "probability"}, ...]}`` (``top`` holds the ``top`` most probable classes, best first), and
    ``"note"`` when an image looks inverted compared with the training data.
    """
    from mnistkit.training.evaluation import probabilities

    check_predict_args(files, top)
    pred = load_predictor(run_dir, checkpoint)
    info = pred.info
    files = expand_inputs(files, info)
    notes: list[list[str]] = []
    raw = read_files(files, info, invert, notes)
    x = normalized(raw, info)
    probs = probabilities(pred.model, x, len(x), pred.precision)
    return {
        "run_dir": str(run_dir),
        "checkpoint": pred.checkpoint,
        "checkpoint_when": pred.checkpoint_when,
        "dataset": info["dataset"],
        "predictions": prediction_items(files, probs, raw, info, top, invert, notes),
    }
