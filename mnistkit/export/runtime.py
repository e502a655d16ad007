"""``mnistkit predict model.onnx FILE...``: an exported model in ONNX Runtime, without torch.

Files are read by the same functions ``predict RUN_DIR`` uses (:func:`mnistkit.evaluation.inputs.read_files`:
numpy and Pillow, or librosa for audio) into the raw input the graph takes; the graph normalizes
and applies the softmax itself. Nothing here, nor anything it imports, imports torch
(tests/test_export.py runs it with torch made unimportable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.errors import RunError
from mnistkit.export import metadata

_DTYPES = {"uint8": (np.uint8, "tensor(uint8)"), "float32": (np.float32, "tensor(float)")}


@dataclass
class OnnxModel:
    path: Path
    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]  # decoded metadata (mnistkit.export.metadata)
    info: dict[str, Any]  # the preprocessing facts, shaped like a run's data.json

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, classes]`` for a raw batch (uint8 images / float32 log-mel)."""
        return self.session.run([metadata.OUTPUT_NAMES[1]], {metadata.INPUT_NAME: raw})[0]


def is_onnx_path(path: Path) -> bool:
    """Whether a predict/eval argument names an exported model rather than a run directory."""
    return Path(path).suffix.lower() == ".onnx" and not Path(path).is_dir()


def load_model(path: Path, intra_op_threads: int = 0) -> OnnxModel:
    """An ONNX Runtime session for an exported model, with its metadata checked and decoded.

    ``intra_op_threads``: ONNX Runtime's threads per model call (0: its default, one per core)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such file")
    if not path.is_file():
        raise RunError(f"{path}: not a file")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT's warnings are for model authors, not users
    opts.intra_op_num_threads = intra_op_threads
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path}: cannot load it as an ONNX model ({first})") from None
    meta = metadata.decode(session.get_modelmeta().custom_metadata_map, str(path))
    inputs = session.get_inputs()
    dtype = _DTYPES.get(meta["input_dtype"])
    if (
        dtype is None
        or len(inputs) != 1
        or inputs[0].name != metadata.INPUT_NAME
        or inputs[0].type != dtype[1]
        or [o.name for o in session.get_outputs()] != list(metadata.OUTPUT_NAMES)
    ):
        raise RunError(
            f"{path}: its inputs/outputs are not those its metadata describes "
            f"(input {metadata.INPUT_NAME!r} {meta['input_dtype']}, outputs {list(metadata.OUTPUT_NAMES)})"
        )
    return OnnxModel(path, session, meta, metadata.data_info(meta))


def predict_onnx(model_path: Path, files: list[Path], top: int = 1, invert: bool = False) -> dict[str, Any]:
    """Predictions for ``files``, shaped as ``predict_files``' (mnistkit.evaluation.predict) + ``"model"``."""
    from mnistkit.evaluation.inputs import check_predict_args, expand_inputs, prediction_items, read_files

    check_predict_args(files, top)
    model = load_model(model_path)
    files = expand_inputs(files, model.info)
    notes: list[list[str]] = []
    raw = read_files(files, model.info, invert, notes)
    probs = model.probabilities(raw)
    meta = model.meta
    return {
        "model": str(model_path),
        "run_dir": meta["run_dir"],
        "checkpoint": meta["checkpoint"],
        "checkpoint_when": meta["checkpoint_when"],
        "dataset": meta["dataset"],
        "predictions": prediction_items(files, probs, raw, model.info, top, invert, notes),
    }
