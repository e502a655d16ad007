"""Files as a model's inputs, and its outputs as predictions: numpy, Pillow and librosa, no torch.

The readers return the raw arrays a run stores (uint8 pixels, float32 log-mel features) and
write the notes ``predict`` prints (resized a lot, colour against grey, inverted, long audio).
``mnistkit predict RUN_DIR`` (:mod:`mnistkit.evaluation.predict`), ``mnistkit predict
model.onnx`` (:mod:`mnistkit.export.runtime`) and ``mnistkit serve`` read files with exactly
this code; the last two never import torch, which import-linter checks through this module.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.errors import RunError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
DARK_BACKGROUND_MEAN = 0.5  # a training set darker than this on average has dark backgrounds
# An input resized by more than this factor (either way, either side) gets a note: a 28x28 image
# shrunk to the digits model's 8x8 keeps little of what the model learned to read (0 of 4 right,
# at 97-100 % confidence, in the report of issue 10). 2x covers ordinary crops and scans.
RESIZE_NOTE_FACTOR = 2.0
# A clip more than this many times the training frames is mostly cut off (the model sees only
# its first ``frames``), so it gets a note.
AUDIO_LENGTH_NOTE_FACTOR = 2.0
# Pillow modes with one grey value per pixel (and maybe alpha): never colour, no need to look.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "F"})


@dataclass(frozen=True)
class InMemoryFile:
    """An input that is bytes, not a file on disk (``mnistkit serve``'s uploads), read by the same
    functions as files: ``name`` is what messages and predictions call it, ``suffix`` (from the
    name, or given: the upload's content type) tells audio from images as a file's suffix does."""

    name: str
    data: bytes
    suffix: str = ""

    def __str__(self) -> str:
        return self.name

    def source(self) -> io.BytesIO:
        """A fresh readable copy for Pillow or soundfile (each reader consumes its own)."""
        return io.BytesIO(self.data)


InputFile = Path | InMemoryFile


def _source(path: InputFile) -> Any:
    return path.source() if isinstance(path, InMemoryFile) else path


# ---------------------------------------------------------------------------------- inputs
# The readers below return the raw arrays a run stores (uint8 pixels, float32 log-mel features):
# numpy only, no torch, so ``mnistkit predict model.onnx`` (mnistkit.export.runtime) reads files
# with exactly this code and never imports torch. Normalization is applied by to_float for a run
# directory, and inside the graph for an exported model.
def input_scale(info: dict[str, Any]) -> float:
    """The raw-value factor of ``(raw * scale - mean) / std`` for files given to predict.

    uint8 datasets were scaled by 1/255 in training; other image data are taken to be [0, 1]
    (their files are still 8-bit images, so 1/255 here too). Audio features: the run's scale.
    """
    if info.get("kind") == "audio":
        return float(info["scale"])
    return float(info["scale"]) if float(info["scale"]) != 1.0 else 1 / 255


def image_array(
    path: InputFile, info: dict[str, Any], invert: bool = False, notes: list[str] | None = None
) -> np.ndarray:
    """One image file as the uint8 array ``[C, H, W]`` (0-255) the run's dataset stores.

    ``notes`` receives what makes the file far from the training images (resized a lot, colour
    given to a grey model or the other way round)."""
    from mnistkit.data.pixels import image_pixels, open_image

    channels, height, width = (int(n) for n in info["in_shape"])
    if channels not in (1, 3):
        raise RunError(f"{path}: the run's inputs have {channels} channels; images need 1 or 3")
    try:
        # The conversion image_folder training data went through (grey/RGB, transparent pixels
        # black, bilinear resize), so a run on one's own images sees new ones the same way.
        # Opened and decoded once for both the pixels and the notes (open_image has already
        # refused a decompression bomb or a truncated file).
        with open_image(_source(path)) as img:
            if notes is not None:
                notes += _image_notes(img, channels, height, width)
            arr = image_pixels(img, channels, height, width)
    except Exception as exc:  # not found, not an image, truncated, decompression bomb...
        raise RunError(f"{path}: cannot read it as an image ({_reason(exc)})") from None
    if invert:
        arr = 255 - arr
    return np.array(arr, dtype=np.uint8)  # a writable copy (Pillow's buffer is read-only)


def _image_notes(img: Any, channels: int, height: int, width: int) -> list[str]:
    out = []
    w0, h0 = img.size
    factor = max(w0 / width, h0 / height, width / w0, height / h0)
    if factor > RESIZE_NOTE_FACTOR:
        out.append(
            f"{w0}x{h0} image resized to the model's {width}x{height} "
            f"({'shrunk' if w0 * h0 > width * height else 'enlarged'} {factor:.1f}x): "
            "far from the training images, the prediction may be meaningless"
        )
    if img.mode in _GREY_MODES:  # one value per pixel: as RGB, every pixel has R = G = B
        colour = False
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        colour = bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))
    if channels == 1 and colour:
        out.append("colour image (3 channels) converted to grey: the model was trained on 1-channel images")
    elif channels == 3 and not colour:
        out.append("grey image (1 channel) given to a model trained on colour (3-channel) images")
    return out


def audio_array(path: InputFile, info: dict[str, Any], notes: list[str] | None = None) -> np.ndarray:
    """One audio file as its log-mel features ``float32 [1, n_mels, frames]`` (not normalized).

    ``notes`` receives a note when the clip is much longer than the training frames."""
    from mnistkit.data.features import LogMelSpec, log_mel, read_audio

    feats = dict(info.get("features") or {})
    feats.pop("type", None)
    spec = LogMelSpec(**feats)
    try:
        y = read_audio(_source(path), spec.sample_rate)
        s = log_mel(y, spec)
    except Exception as exc:  # soundfile/librosa errors, empty or non-finite audio
        raise RunError(f"{path}: cannot read it as audio ({_reason(exc)})") from None
    clip_frames = 1 + len(y) // spec.hop_length  # librosa's centred frames
    if notes is not None and clip_frames > AUDIO_LENGTH_NOTE_FACTOR * spec.frames:
        seen = spec.frames * spec.hop_length / spec.sample_rate
        notes.append(
            f"{len(y) / spec.sample_rate:.2f} s clip, {clip_frames} frames: the model was trained on "
            f"{spec.frames} frames and sees only the first {seen:.2f} s"
        )
    return np.array(s[None], dtype=np.float32)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def file_array(
    path: InputFile, info: dict[str, Any], invert: bool = False, notes: list[str] | None = None
) -> np.ndarray:
    """One file as the run's raw input ``[C, ...]``: an image for image runs, audio for audio runs."""
    if not isinstance(path, InMemoryFile):
        path = Path(path)
        if not path.exists():
            raise RunError(f"{path}: no such file")
        if path.is_dir():
            raise RunError(f"{path}: is a folder, not a file")
    is_audio_file = (path.suffix or Path(str(path)).suffix).lower() in AUDIO_SUFFIXES
    if info.get("kind") == "audio":
        if not is_audio_file:
            raise RunError(
                f"{path}: this run was trained on audio ({info['dataset']}); give "
                f"{'/'.join(AUDIO_SUFFIXES)} files"
            )
        return audio_array(path, info, notes)
    if is_audio_file:
        raise RunError(
            f"{path}: this run was trained on images ({info['dataset']}); give image files (PNG, JPG, ...)"
        )
    return image_array(path, info, invert, notes)


def expand_inputs(paths: list[Path], info: dict[str, Any]) -> list[Path]:
    """The files to classify: each file as given, each folder replaced by the files inside it
    (recursively, sorted, hidden ones skipped) that the run reads: images, or audio for audio runs."""
    from mnistkit.data.pixels import IMAGE_EXTENSIONS  # what image_folder reads, too

    suffixes = AUDIO_SUFFIXES if info.get("kind") == "audio" else IMAGE_EXTENSIONS
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.is_file()
            and f.suffix.lower() in suffixes
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not found:
            kind = "audio" if info.get("kind") == "audio" else "image"
            raise RunError(
                f"{p}: no {kind} files in this folder ({', '.join(suffixes)}), searched recursively"
            )
        out += found
    return out


def read_files(
    files: list[InputFile],
    info: dict[str, Any],
    invert: bool = False,
    notes: list[list[str]] | None = None,
) -> np.ndarray:
    """Every file as one raw batch ``[N, C, ...]``; unreadable files are reported together.

    ``notes`` receives, per file, what makes it far from the training data (see image_array)."""
    arrays, problems = [], []
    for f in files:
        file_notes: list[str] = []
        try:
            arrays.append(file_array(f, info, invert, file_notes))
        except RunError as exc:
            problems.append(str(exc))
        if notes is not None:
            notes.append(file_notes)
    if problems:
        head = "cannot read " + ("this file" if len(problems) == 1 else f"{len(problems)} files")
        raise RunError(head + ":\n  " + "\n  ".join(problems))
    return np.stack(arrays)


def check_predict_args(files: list[Path], top: int) -> None:
    if top < 1:
        raise RunError(f"--top {top}: must be at least 1")
    if not files:
        raise RunError("no files given: mnistkit predict RUN_DIR FILE...")


def prediction_items(
    files: list[InputFile],
    probs: np.ndarray,
    raw: np.ndarray,
    info: dict[str, Any],
    top: int,
    invert: bool,
    notes: list[list[str]] | None = None,
    note_list: bool = False,
) -> list[dict[str, Any]]:
    """One entry per file from the class probabilities ``[N, classes]`` and the raw inputs.

    ``"note"``: what makes the input doubtful (``notes`` from read_files, a light background),
    joined with "; "; with ``note_list`` (``mnistkit serve``), also ``"notes"``: the same as a
    list, empty when there are none."""
    classes = list(info["classes"])
    k = min(top, len(classes))
    light_background = info.get("kind") == "image" and _trained_dark(info)
    out = []
    for i, (f, p, xi) in enumerate(zip(files, probs, raw, strict=True)):
        file_notes = list(notes[i]) if notes else []
        order = np.argsort(-p, kind="stable")[:k]
        item: dict[str, Any] = {
            "file": str(f),
            "class": classes[int(order[0])],
            "index": int(order[0]),
            "probability": float(p[order[0]]),
            "top": [{"class": classes[int(i)], "index": int(i), "probability": float(p[i])} for i in order],
        }
        if light_background and _light_border(xi, info):
            file_notes.append(
                "light background, but the training images are light on a dark background: "
                + ("is --invert wrong here?" if invert else "try --invert")
            )
        if file_notes:
            item["note"] = "; ".join(file_notes)
        if note_list:
            item["notes"] = file_notes
        out.append(item)
    return out


def _trained_dark(info: dict[str, Any]) -> bool:
    """Whether the training images were mostly dark (light strokes on a dark background).

    Judged on the training pixels' own mean (``pixel_mean`` in data.json), never on the
    normalization constants: with ``normalize: none`` those are 0/1 whatever the images look like.
    Run directories from before ``pixel_mean`` was recorded fall back to the normalization mean
    unless it is the identity.
    """
    means = info.get("pixel_mean")
    if not means:
        if list(info.get("mean", [])) == [0.0] and list(info.get("std", [])) == [1.0]:
            return False  # normalize: none, and no record of the pixels: say nothing rather than guess
        means = info["mean"]
    return float(np.mean(means)) < DARK_BACKGROUND_MEAN


def _light_border(raw: np.ndarray, info: dict[str, Any]) -> bool:
    """Whether a raw image's outermost pixels (its background) are light on average."""
    x = raw.astype(np.float64) * input_scale(info)  # [0, 1]
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    return float(border.mean()) > 0.5


def print_predictions(result: dict[str, Any], console: Any, err_console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    preds = result["predictions"]
    k = max((len(p["top"]) for p in preds), default=1)
    title = (
        f"{result['model']} (exported from {result['checkpoint']}.pt, {result['checkpoint_when']})"
        if "model" in result  # predict model.onnx (mnistkit.export.runtime)
        else f"{result['run_dir']} {result['checkpoint']}.pt ({result['checkpoint_when']})"
    )
    # File names are never broken: shown relative to the folder they share (named once above),
    # and where even those do not fit beside the figures, one file per line with its figures under.
    folder, names = _common_folder([p["file"] for p in preds])
    console.print(escape(_wrap(title, console.width, keep=str(result.get("run_dir", "")))))
    if folder:
        console.print(escape(_wrap(f"files in {folder}/", console.width, keep=folder)))
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("file", no_wrap=True)
    table.add_column("class", style="bold cyan", no_wrap=True)
    table.add_column("probability", justify="right", no_wrap=True)
    if k > 1:
        table.add_column(f"next {k - 1}")
    rows = []
    for p, name in zip(preds, names, strict=True):
        cells = [escape(p["class"]), f"{p['probability']:.2%}"]
        if k > 1:
            cells.append(", ".join(f"{escape(t['class'])} {t['probability']:.1%}" for t in p["top"][1:]))
        rows.append((name, cells))
        table.add_row(escape(name), *cells)
    if _table_width(console, table) <= console.width:
        console.print(table)
    else:
        for name, cells in rows:
            console.print(escape(name))
            console.print(f"    class {cells[0]}  {cells[1]}" + (f"  next: {cells[2]}" if k > 1 else ""))
    for p in preds:
        if "note" in p:
            note = _wrap(f"{p['file']}: {p['note']}", err_console.width - 5, keep=p["file"])
            err_console.print("[yellow]note[/] " + escape(note))


def _common_folder(files: list[str]) -> tuple[str, list[str]]:
    """The folder every file is in ('' if none) and each file's name relative to it."""
    import os

    parents = {os.path.dirname(f) for f in files}
    folder = os.path.commonpath(list(parents)) if len(files) > 1 and all(parents) else ""
    try:
        if folder and not all(os.path.commonpath([folder, p]) == folder for p in parents):
            folder = ""
    except ValueError:  # absolute and relative paths mixed
        folder = ""
    return folder, [os.path.relpath(f, folder) if folder else f for f in files]


def _wrap(text: str, width: int, keep: str = "") -> str:
    """``text`` wrapped between words (a path or a number is never broken; nor ``keep``, a file
    name that may hold spaces)."""
    import textwrap

    if keep:
        text = text.replace(keep, keep.replace(" ", "\0"))
    return textwrap.fill(
        text, width=max(width, 20), subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
    ).replace("\0", " ")


def _table_width(console: Any, table: Any) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), table).maximum
