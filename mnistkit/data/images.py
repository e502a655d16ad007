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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnistkit.data.audio import FolderKind, Progress, split_class_folders
from mnistkit.data.imagecache import Item, available_memory, choose_mode, decode_into
from mnistkit.data.mapped import Pages
from mnistkit.data.pixels import IMAGE_EXTENSIONS, image_pixels, open_image
from mnistkit.data.types import LoadedData, Split
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
    items = [Item(name, c, "train") for name, c in train_names]
    items += [Item(name, c, "test") for name, c in test_names]
    settings = {"image_version": IMAGE_VERSION, "channels": channels, "size": [height, width]}
    shape = (channels, height, width)
    decoder = _Decoder(*shape)
    if cache_dir is None:  # nothing to keep: decode into a folder that goes away
        with tempfile.TemporaryDirectory() as tmp:
            feats = decode_into(
                "image_folder", root, items, settings, decoder, shape, Path(tmp), progress, workers
            )
            feats.x = np.array(feats.x)
        cache = "memory (no cache folder)"
    else:
        feats = decode_into(
            "image_folder", root, items, settings, decoder, shape, cache_dir, progress, workers
        )
        mode, why = choose_mode(cache_mode, feats.x.nbytes, available_memory())
        if mode == "memory":
            feats.x = np.array(feats.x)  # read once into memory; the file is no longer used
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
    train = [(f, label[c]) for f, c in train_names if f not in feats.bad]
    test = [(f, label[c]) for f, c in test_names if f not in feats.bad]
    if not train or not test:
        raise DataError(
            f"Image folder {root}: {len(train)} usable training and {len(test)} test image(s) "
            "after skipping unreadable files; both sets need at least one. Fix the files listed "
            "above."
        )
    import torch

    # The rows are in the order asked for (train, then test), unreadable files left out: each
    # split is one slice of the (possibly memory-mapped) array, never a copy.
    assert feats.good == [name for name, _ in [*train, *test]]
    n_train = len(train)

    def split(x: np.ndarray, items: list[tuple[str, int]]) -> Split:
        return Split(x=torch.from_numpy(x), y=torch.tensor([lab for _, lab in items], dtype=torch.int64))

    # normalize: auto = the training split's own per-channel mean/std of [0, 1] pixels (the
    # MNIST family's 0.1307/0.3081 are computed the same way), kept in the cache's index.
    mean, std = feats.mean, feats.std
    if feats.decoded == 0:
        origin = f"loaded from cache {feats.path} in {feats.seconds:.2f} s"
    else:
        procs = f" by {feats.processes} processes" if feats.processes > 1 else ""
        origin = f"decoded in {feats.seconds:.1f} s{procs} ({feats.decoded} decoded, {feats.reused} reused)"
    source = (
        f"image folder {root}: {len(classes)} classes, {len(train)} train / {len(test)} test "
        f"images ({how}), {channels}x{height}x{width}; {origin}"
    )
    if feats.bad:
        source += f"; {len(feats.bad)} unreadable file(s) skipped (data.skip_bad_files)"
    return LoadedData(
        train=split(feats.x[:n_train], train),
        test=split(feats.x[n_train:], test),
        classes=classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        files=[root / name for name, _ in [*train, *test]],
        source=source,
        test_files=[root / name for name, _ in test],
        bad_files={str(root / name): reason for name, reason in feats.bad.items()},
        cache_note="; ".join([cache, *feats.notes]),
        mapped=isinstance(feats.x, np.memmap),
        pages=Pages(feats.x) if isinstance(feats.x, np.memmap) else None,
        content_id=feats.content,
    )
