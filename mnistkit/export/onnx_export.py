"""``mnistkit export RUN_DIR``: a run's checkpoint as one ONNX file, verified before it is written.

The exported graph is ``input -> (input * scale - mean) / std -> the run's model -> logits,
softmax(logits)``: images go in as the dataset stores them (uint8 ``[N, C, H, W]``, 0-255), so a
consumer needs neither the normalization constants nor any mnistkit code; audio goes in as the
log-mel map (float32 ``[N, 1, n_mels, frames]``) computed with the settings in the metadata.
The normalization uses the same float32 multiply-add as training (:func:`mnistkit.data.sources.affine`).

Order of work, so that a failure leaves nothing behind: check the run and ``--out`` (writable,
not someone else's file), load the checkpoint and the test data, export in memory, verify with
ONNX Runtime against torch on real test samples, and only then write ``model.onnx`` and
``model.json`` atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistkit import __version__
from mnistkit.errors import RunError
from mnistkit.export import metadata
from mnistkit.export.metadata import DEFAULT_TOLERANCE

# The oldest opset torch 2.14's dynamo exporter writes itself; older ones are converted afterwards.
NATIVE_OPSET = 18
VERIFY_SAMPLES = 256  # real test samples run through both torch and ONNX Runtime at export


class ExportModule(torch.nn.Module):
    """The run's model with its input normalization in front and the softmax behind."""

    def __init__(self, model: torch.nn.Module, mul: torch.Tensor, add: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mul", mul)
        self.register_buffer("add", add)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The same float32 multiply-add as mnistkit.data.sources.normalize (uint8 is promoted exactly).
        logits = self.model(x.to(torch.float32) * self.mul + self.add).float()
        return logits, torch.softmax(logits, dim=1)


def default_out(run_dir: Path) -> Path:
    return metadata.default_model_path(run_dir)


def json_path(out: Path) -> Path:
    """model.json beside model.onnx (FILE.json beside FILE.onnx)."""
    return out.with_suffix(".json")


def check_out(out: Path) -> list[Path]:
    """Refuse an --out that cannot or must not be written, before any work is done.

    Creates the missing folders of ``out`` and returns them (deepest first), for
    :func:`remove_empty` to take back if the export fails.
    """
    if out.suffix.lower() != ".onnx":
        raise RunError(f"--out {out}: give a file name ending in .onnx")
    if out.is_dir():
        raise RunError(f"--out {out}: is a folder; give a file name such as {out / 'model.onnx'}")
    for path in (out, json_path(out)):
        if path.exists() and not _is_our_export(out, path):
            raise RunError(
                f"--out {out}: {path} already exists and was not written by mnistkit export; "
                "it is left alone: choose another --out or remove it"
            )
    created = []
    for folder in [out.parent, *out.parent.parents]:
        if folder.exists():
            break
        created.append(folder)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty(created)
        raise RunError(f"--out {out}: cannot create the folder {out.parent} ({exc.strerror})") from None
    probe = out.parent / f".{out.name}.probe-{os.getpid()}"
    try:  # really try: permissions, read-only file systems and quotas all show up here
        probe.open("wb").close()
        probe.unlink()
    except OSError as exc:
        remove_empty(created)
        raise RunError(f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove folders this export created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _is_our_export(out: Path, path: Path) -> bool:
    """Whether an existing file at ``path`` is an earlier export (replaced by a new one)."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and "mnistkit_export_format" in data
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return any(p.key == "mnistkit_export_format" for p in model.metadata_props)
    except Exception:  # unreadable, not JSON, not ONNX: not ours
        return False


def export_run(
    run_dir: Path,
    checkpoint: str = "best",
    out: Path | None = None,
    opset: int | None = None,
    data_dir: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Export, verify, write. Returns model.json's content plus ``"saved": [paths]``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if not (run_dir / "recipe.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no recipe.yaml)")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RunError(f"--tolerance {tolerance}: must be a finite number >= 0")
    out = Path(out) if out is not None else default_out(run_dir)
    created = check_out(out)
    try:
        return _export_run(run_dir, checkpoint, out, opset, data_dir, tolerance)
    except BaseException:
        remove_empty(created)  # nothing left behind, not even the export/ folder
        raise


def _export_run(
    run_dir: Path, checkpoint: str, out: Path, opset: int | None, data_dir: Path | None, tolerance: float
) -> dict[str, Any]:
    from mnistkit.data.batches import affine, raw_test_split
    from mnistkit.data.loading import load_dataset
    from mnistkit.evaluation.evaluate import checkpoint_when, load_run_checkpoint, rebuild_model
    from mnistkit.evaluation.inputs import input_scale
    from mnistkit.evaluation.predict import run_data_info
    from mnistkit.recipe.schema import resolved_dict
    from mnistkit.registry import registries
    from mnistkit.runs.directory import RunDir

    run = RunDir.open(run_dir)
    ckpt, ckpt_file = load_run_checkpoint(run, checkpoint)
    recipe = run.load_recipe()
    info = run_data_info(run, recipe)
    in_shape = tuple(int(n) for n in info["in_shape"])
    kind = info["kind"]
    model = rebuild_model(recipe, in_shape, len(info["classes"]), ckpt, ckpt_file, torch.device("cpu"))
    scale = input_scale(info)
    mul, add = affine(tuple(info["mean"]), tuple(info["std"]), scale, len(in_shape) + 1)
    module = ExportModule(model, mul, add).eval()

    # Real test samples, as the dataset stores them: what the graph's input takes.
    try:
        loaded = load_dataset(recipe, registries(), data_dir or run.recorded_data_dir())
    except RunError as exc:
        raise RunError(
            f"the export is verified on the run's test data, which was not found: {exc}\n"
            "  pass --data-dir with the folder the run was trained from"
        ) from None
    test = raw_test_split(loaded, recipe.data)
    x = test.raw(torch.arange(min(VERIFY_SAMPLES, len(test.y)))).contiguous()
    want = torch.uint8 if kind == "image" else torch.float32
    if x.dtype != want:
        raise RunError(
            f"{recipe.data.dataset}: its {kind} samples are {str(x.dtype).removeprefix('torch.')}; "
            f"export takes {kind} datasets stored as {str(want).removeprefix('torch.')}"
        )
    if tuple(x.shape[1:]) != in_shape:
        raise RunError(f"the test data's shape {tuple(x.shape[1:])} is not the run's input {in_shape}")

    if len(x) == 0:
        raise RunError(f"{recipe.data.dataset}: the test split is empty; nothing to verify the export on")
    # An example batch of 2: with 1, torch.export would specialize the batch axis to size 1.
    proto = _export(module, x[:2] if len(x) >= 2 else x.expand(2, *x.shape[1:]).contiguous(), opset)
    actual_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and actual_opset != opset:
        raise RunError(
            f"--opset {opset}: torch {torch.__version__}'s exporter produced opset {actual_opset} "
            f"instead (it cannot convert this model to {opset}); use --opset {actual_opset} or later"
        )

    # The metrics row of the checkpoint's epoch (none for a mid-epoch Ctrl-C checkpoint).
    rows = [r for r in ckpt["rows"] if r["epoch"] == ckpt["epoch"]] if not ckpt["step"] else []
    test_acc = rows[-1]["test_acc"] if rows else None
    meta: dict[str, Any] = {
        "mnistkit_export_format": metadata.FORMAT,
        "classes": [str(c) for c in info["classes"]],
        "input_name": metadata.INPUT_NAME,
        "input_shape": ["batch", *in_shape],
        "input_dtype": "uint8" if kind == "image" else "float32",
        "input_kind": kind,
        "normalization": {
            "scale": scale,
            "mean": [float(m) for m in info["mean"]],
            "std": [float(s) for s in info["std"]],
            "formula": "(input * scale - mean) / std, per channel",
            "inside_graph": True,
        },
        "features": info["features"],
        "pixel_mean": info.get("pixel_mean"),  # absent in runs from before it was recorded
        "outputs": list(metadata.OUTPUT_NAMES),
        "dataset": info["dataset"],
        "recipe_name": recipe.name or run_dir.name,
        "recipe": resolved_dict(recipe),
        "run_dir": str(run_dir.resolve()),
        "checkpoint": checkpoint,
        "checkpoint_epoch": int(ckpt["epoch"]),
        "checkpoint_when": checkpoint_when(ckpt),
        "checkpoint_test_accuracy": float(test_acc) if test_acc is not None else None,
        "mnistkit_version": __version__,
        "torch_version": torch.__version__,
        "onnx_opset": actual_opset,
        "verification": None,
    }
    _set_metadata(proto, meta)
    meta["verification"] = verify(module, proto.SerializeToString(), x, tolerance)
    _set_metadata(proto, meta)
    data = proto.SerializeToString()

    from mnistkit.fsutil import atomic_write_bytes

    side = json_path(out)
    try:
        atomic_write_bytes(out, data)
        atomic_write_bytes(side, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise RunError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    return {**meta, "model": str(out), "bytes": len(data), "saved": [str(out), str(side)]}


def _export(module: torch.nn.Module, example: torch.Tensor, opset: int | None) -> Any:
    """The ONNX ModelProto of ``module`` (dynamo exporter, dynamic batch axis), quietly."""
    import onnx

    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in noisy]
    log = io.StringIO()
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[metadata.INPUT_NAME],
                output_names=list(metadata.OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
                **kwargs,
            )
            proto = program.model_proto
            onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ""
        if opset is not None and opset < NATIVE_OPSET:
            hint = (
                f"\n  torch's exporter writes opset {NATIVE_OPSET} and later itself; older ones go "
                f"through ONNX's version converter, which failed on this model: try --opset {NATIVE_OPSET}"
            )
        raise RunError(
            f"torch.onnx.export failed: {type(exc).__name__}: {first}{hint}"
            + (f"\n  exporter output:\n  {log.getvalue().strip()[-2000:]}" if log.getvalue().strip() else "")
        ) from None
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)
    proto.doc_string = (
        "mnistkit export: input -> (input * scale - mean) / std -> model -> logits, probabilities. "
        "See the metadata (metadata_props) for classes, input shape and dtype."
    )
    return proto


def _set_metadata(proto: Any, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.encode(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def verify(module: torch.nn.Module, model_bytes: bytes, x: torch.Tensor, tolerance: float) -> dict[str, Any]:
    """ONNX Runtime vs torch on ``x`` (whole batch, and its first samples one at a time).

    Raises RunError when the largest |logit difference| exceeds ``tolerance`` (or is not finite).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = module(x)[0].numpy()
    got = session.run([metadata.OUTPUT_NAMES[0]], {metadata.INPUT_NAME: x.numpy()})[0]
    # Batch size 1 too: the batch axis is dynamic, and some kernels take other paths for N = 1.
    singles = min(8, len(x))
    logits = [metadata.OUTPUT_NAMES[0]]
    one = np.concatenate(
        [session.run(logits, {metadata.INPUT_NAME: x[i : i + 1].numpy()})[0] for i in range(singles)]
    )
    diff = max(float(np.abs(got - ref).max()), float(np.abs(one - ref[:singles]).max()))
    agree = int((got.argmax(1) == ref.argmax(1)).sum())
    result = {
        "samples": len(x),
        "batch_sizes": sorted({len(x), 1}),
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "agreement": agree / len(x),
        "onnxruntime_version": ort.__version__,
    }
    if not (diff <= tolerance):  # also catches NaN
        raise RunError(
            f"verification failed: ONNX Runtime's logits differ from torch's by up to {diff:.3g} "
            f"(tolerance {tolerance:g}; {diff / tolerance if tolerance else math.inf:.3g} times over) "
            f"on {len(x)} test samples, predicted classes agree on {agree}/{len(x)}; nothing was written"
        )
    return result
