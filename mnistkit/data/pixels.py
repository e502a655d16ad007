"""Image files as the pixels a run trains on: open, decode, convert, resize (Pillow and numpy only).

The torch-free part of image reading, shared by ``image_folder`` (:mod:`mnistkit.data.images`)
and by predict's and the server's readers (:mod:`mnistkit.evaluation.inputs`), so that a served
file is decoded exactly as a training file was and the server never imports torch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@contextlib.contextmanager
def open_image(path: Path | BinaryIO) -> Iterator[Any]:
    """The image, decoded (``load()``): a decompression bomb or a truncated file raises here.

    For a caller that also looks at the image itself (predict's notes) before
    :func:`image_pixels`: one open and one decode instead of two."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()  # decodes everything now: a truncated file fails here, not later
            yield img


def image_pixels(img: Any, channels: int, height: int, width: int) -> np.ndarray:
    """An opened image (:func:`open_image`) as :func:`decode_image` returns it."""
    from PIL import Image

    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become the background, black as in MNIST-like data.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
