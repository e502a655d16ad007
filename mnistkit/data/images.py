"""A folder of images, one sub-folder per class, as one uint8 tensor, decoded once and cached.

Layouts (the same as ``audio_folder``'s, with the same helpers from :mod:`mnistkit.data.audio`):

* ``root/train/<class>/*`` and ``root/test/<class>/*``: that is the split;
* ``root/<class>/*``: each class split on its own by a seeded shuffle, ``data.test_fraction``
  of it to test (stratified: every class keeps its proportion in both sets).

Every file Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF) is converted once, by
:func:`decode_image`, to ``data.image.channels`` (grey or RGB; transparent pixels become black)
and resized to ``data.image.size`` (bilinear, aspect ratio not kept), and stored as uint8
``[N, C, H, W]`` in an uncompressed ``.npy`` under the cache folder, with a JSON index of every
file's size and mtime (:mod:`mnistkit.data.imagecache`): the next run maps that file instead of
decoding, and decodes only files added or changed since. ``data.cache`` says whether the rows are
read into memory or served from the memory-mapped file. ``predict`` on such
a run converts new images with the same :func:`decode_image`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from mnistkit.data.audio import FolderKind, Progress, split_class_folders
from mnistkit.data.imagecache import available_memory, choose_mode, content_id, decode_into, mean_std
from mnistkit.data.mapped import Rows
from mnistkit.data.pixels import IMAGE_EXTENSIONS, image_pixels, open_image
from mnistkit.data.types import FileList, LoadedData, Split
from mnistkit.errors import DataError, set_hint

if TYPE_CHECKING:
    import torch

log = logging.getLogger("mnistkit.images")

# Bump whenever decode_image() changes its output: it is part of the cache key.
IMAGE_VERSION = 1

IMAGES = FolderKind(IMAGE_EXTENSIONS, "images", "*.png (or .jpg, .bmp, .gif, .webp, .tif)", "Add images")


def decode_image(path: Path | BinaryIO, channels: int, height: int, width: int) -> np.ndarray:
    """One image file as uint8 ``[channels, height, width]``, as training and predict see it.

    Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is enforced from its
    warning threshold on, not only from twice that (where Pillow itself stops): a training folder
    has no business holding a 90-megapixel image, and decoding one to resize it would take
    seconds and gigabytes. Raises on anything that is not a complete image.
    """
    with open_image(path) as img:
        return image_pixels(img, channels, height, width)


@dataclass(frozen=True)
class _Decoder:
    """decode_image with fixed settings; picklable, for the decoding processes."""

    channels: int
    height: int
    width: int

    def __call__(self, path: Path) -> np.ndarray:
        return decode_image(path, self.channels, self.height, self.width)


def load_image_folder(
    root: Path,
    channels: int,
    size: tuple[int, int],
    cache_dir: Path | None,
    skip_bad: bool,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    cache_mode: str = "auto",
    workers: int | None = None,
) -> LoadedData:
    """The folder ``root`` as uint8 tensors; mean/std are the training split's, per channel."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} does not exist: expected {root}/<class name>/*.png (or .jpg, "
            f"...), or {root}/train/<class name>/ and {root}/test/<class name>/. Fix: pass "
            f"--data-dir DIR or {set_hint('data.root', 'DIR')}."
        )
    # Every problem is found in one scan and reported together: the folders first (without
    # stopping), then every file decoded.
    problems: list[str] = []
    classes, train_names, test_names, how = split_class_folders(root, IMAGES, test_fraction, seed, problems)
    test_classes = {c for _, c in test_names}
    if how.startswith("split by"):
        missing = [c for c in classes if c not in test_classes]
        if missing:
            problems.append(
                f"Class folder(s) {', '.join(str(root / 'train' / c) for c in missing)} have no "
                f"counterpart in {root / 'test'}: the test set could not measure them. Add test "
                f"images under {root / 'test'}/<class>/, or remove these classes from train/."
            )
    height, width = size
    names = [name for name, _ in train_names] + [name for name, _ in test_names]
    settings = {"image_version": IMAGE_VERSION, "channels": channels, "size": [height, width]}
    shape = (channels, height, width)
    decoder = _Decoder(*shape)
    with tempfile.TemporaryDirectory() if cache_dir is None else contextlib.nullcontext() as tmp:
        # no cache folder: nothing to keep, decode into a folder that goes away (read first)
        folder = Path(tmp) if cache_dir is None else cache_dir
        feats = decode_into("image_folder", root, names, settings, decoder, shape, folder, progress, workers)
        good = feats.rows >= 0
        n_bytes = int(good.sum()) * feats.file.row_bytes
        if cache_dir is None:
            mode, why = "memory", "no cache folder"
        else:
            mode, why = choose_mode(cache_mode, n_bytes, available_memory())
        n_tr = len(train_names)
        train_rows, test_rows = feats.rows[:n_tr][good[:n_tr]], feats.rows[n_tr:][good[n_tr:]]
        train_x: torch.Tensor | Rows = Rows(feats.file, train_rows)
        test_x: torch.Tensor | Rows = Rows(feats.file, test_rows)
        if mode == "memory":  # read once into memory; the file is not used again
            import torch

            train_x = torch.from_numpy(train_x.read_all())
            test_x = torch.from_numpy(test_x.read_all())
    cache = f"{mode} ({why})"
    if feats.bad:
        listing = "\n".join(f"  {root / name}: {reason}" for name, reason in sorted(feats.bad.items()))
        if not skip_bad:
            bomb = ""
            if any("DecompressionBomb" in r for r in feats.bad.values()):
                from PIL import Image

                bomb = (
                    f"A decompression bomb is an image with more pixels than Pillow's limit "
                    f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}): shrink it.\n"
                )
            problems.append(
                f"{len(feats.bad)} file(s) under {root} cannot be used as images:\n{listing}\n"
                f"{bomb}Fix or remove these files, or {set_hint('data.skip_bad_files', 'true')} "
                "to train without them."
            )
        else:
            log.warning("skipped %d unreadable image(s) under %s:\n%s", len(feats.bad), root, listing)
    if len(problems) > 1:
        raise DataError(
            f"{len(problems)} problems in image folder {root}:\n"
            + "\n".join(f"{i}. {p}" for i, p in enumerate(problems, 1))
        )
    if problems:
        raise DataError(problems[0])

    label = {c: i for i, c in enumerate(classes)}
    n_train, n_test = len(train_rows), len(test_rows)
    if not n_train or not n_test:
        raise DataError(
            f"Image folder {root}: {n_train} usable training and {n_test} test image(s) "
            "after skipping unreadable files; both sets need at least one. Fix the files listed "
            "above."
        )
    import torch

    labels = np.fromiter((label[c] for _, c in [*train_names, *test_names]), np.int64, len(names))
    used = [n for n, ok in zip(names, good.tolist(), strict=True) if ok] if feats.bad else names
    # normalize: auto = the training split's own per-channel mean/std of [0, 1] pixels (the
    # MNIST family's 0.1307/0.3081 are computed the same way), summed from the cache's per-row
    # sums (exact integers), for whichever files this seed puts in the training split.
    mean, std = mean_std(feats.sums[:n_tr][good[:n_tr]], height * width, 1 / 255)
    if feats.decoded == 0:
        origin = f"loaded from cache {feats.path} in {feats.seconds:.2f} s"
    else:
        procs = f" by {feats.processes} processes" if feats.processes > 1 else ""
        origin = f"decoded in {feats.seconds:.1f} s{procs} ({feats.decoded} decoded, {feats.reused} reused)"
    source = (
        f"image folder {root}: {len(classes)} classes, {n_train} train / {n_test} test "
        f"images ({how}), {channels}x{height}x{width}; {origin}"
    )
    if feats.bad:
        source += f"; {len(feats.bad)} unreadable file(s) skipped (data.skip_bad_files)"
    sizes, mtimes = feats.fingerprints
    files = FileList(root, used)
    return LoadedData(
        train=Split(x=train_x, y=torch.from_numpy(labels[:n_tr][good[:n_tr]])),
        test=Split(x=test_x, y=torch.from_numpy(labels[n_tr:][good[n_tr:]])),
        classes=classes,
        mean=mean,
        std=std,
        files=files,
        source=source,
        test_files=files[n_train:],
        bad_files={str(root / name): reason for name, reason in feats.bad.items()},
        cache_note="; ".join([cache, *feats.notes]),
        content_id=content_id(settings, used, sizes[good], mtimes[good]),
    )
