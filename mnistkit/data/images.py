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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnistkit.data.audio import FolderKind, Progress, split_class_folders
from mnistkit.data.cached import load_cached
from mnistkit.data.pixels import IMAGE_EXTENSIONS, image_pixels, open_image
from mnistkit.data.types import LoadedData
from mnistkit.errors import DataError, set_hint

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
    settings = {"image_version": IMAGE_VERSION, "channels": channels, "size": [height, width]}
    shape = (channels, height, width)
    got = load_cached(
        "image_folder", root, train_names, test_names, classes, settings, _Decoder(*shape), shape,
        np.uint8, cache_dir, cache_mode, progress, workers,
    )  # fmt: skip
    feats = got.feats
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

    n_train, n_test = got.n_train, got.n_test
    if not n_train or not n_test:
        raise DataError(
            f"Image folder {root}: {n_train} usable training and {n_test} test image(s) "
            "after skipping unreadable files; both sets need at least one. Fix the files listed "
            "above."
        )
    # normalize: auto = the training split's own per-channel mean/std of [0, 1] pixels (the
    # MNIST family's 0.1307/0.3081 are computed the same way), summed from the cache's per-row
    # sums (exact integers), for whichever files this seed puts in the training split.
    mean, std = got.train_stats(height * width, 1 / 255)
    source = (
        f"image folder {root}: {len(classes)} classes, {n_train} train / {n_test} test "
        f"images ({how}), {channels}x{height}x{width}; {got.origin('', 'decoded')}"
    )
    if feats.bad:
        source += f"; {len(feats.bad)} unreadable file(s) skipped (data.skip_bad_files)"
    return got.loaded(classes, mean, std, source)
