"""Image datasets loaded fully into memory as tensors.

* MNIST, Fashion-MNIST and KMNIST from their four IDX files (plain or gzipped), found on disk
  or, when allowed, downloaded with torchvision.
* scikit-learn's bundled 8x8 digits: always available offline.

Images come back as uint8 ``[N, 1, H, W]``, labels as int64 ``[N]``; scaling to [0, 1] and
normalization with ``LoadedData.mean``/``std`` is the training layer's job.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistkit.data.types import LoadedData, Split
from mnistkit.errors import DataError

__all__ = [
    "DataError",
    "LoadedData",
    "Split",
    "find_mnist_family",
    "load_mnist_family",
    "load_sklearn_digits",
]

# The four files of every dataset in the family, by role. Each may also end in ".gz".
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Where Debian's package `dataset-fashion-mnist` installs the files. Module level so tests can
# point it elsewhere.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_SIDE = 28  # every dataset of the family is 28x28
_NUM_CLASSES = 10


@dataclass(frozen=True)
class _Spec:
    title: str  # human name used in messages
    tv_name: str  # torchvision class name, also its folder name: <root>/<tv_name>/raw
    aliases: tuple[str, ...]  # sub-folder names people commonly use
    classes: tuple[str, ...]
    # Published normalization constants; None means "compute from the train images".
    mean_std: tuple[float, float] | None


_SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        title="MNIST",
        tv_name="MNIST",
        aliases=("mnist",),
        classes=tuple(str(i) for i in range(10)),
        # The PyTorch MNIST example's constants, so results match the reference tutorial.
        mean_std=(0.1307, 0.3081),
    ),
    "fashion_mnist": _Spec(
        title="Fashion-MNIST",
        tv_name="FashionMNIST",
        aliases=("fashion-mnist", "fashion_mnist"),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean_std=None,
    ),
    "kmnist": _Spec(
        title="KMNIST",
        tv_name="KMNIST",
        aliases=("kmnist",),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mean_std=None,
    ),
}


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        known = ", ".join(sorted(_SPECS))
        raise ValueError(f"unknown image dataset {name!r}; known: {known}") from None


def _candidate_dirs(name: str, roots: list[Path]) -> list[Path]:
    """Every folder to look in, in order, without duplicates."""
    spec = _spec(name)
    out: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        # Named sub-folders before the root itself: they say which dataset they hold, so a
        # folder holding both MNIST files directly and a fashion-mnist/ sub-folder still
        # yields the right dataset for either name.
        out.append(root / spec.tv_name / "raw")
        out.extend(root / alias for alias in spec.aliases)
        out.append(root)
    if name == "fashion_mnist":
        out.append(DEBIAN_FASHION_DIR)
    return list(dict.fromkeys(out))


def _check_dir(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The four files in ``directory`` (plain preferred over .gz), or None and why not."""
    if not directory.is_dir():
        return None, "no such folder"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, fname in IDX_FILES.items():
        # Plain first: faster to read, and torchvision's raw/ holds both (the .gz it
        # downloaded and the file it extracted).
        for path in (directory / fname, directory / f"{fname}.gz"):
            if path.is_file():
                found[role] = path
                break
        else:
            missing.append(fname)
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, "complete"


def _search(name: str, roots: list[Path]) -> tuple[dict[str, Path] | None, list[tuple[Path, str]]]:
    """Search the candidate folders; return the first complete one and what each one held."""
    searched: list[tuple[Path, str]] = []
    for directory in _candidate_dirs(name, roots):
        files, why = _check_dir(directory)
        searched.append((directory, why))
        if files is not None:
            return files, searched
    return None, searched


def find_mnist_family(name: str, roots: list[Path]) -> dict[str, Path] | None:
    """Find the four IDX files of ``name`` ("mnist", "fashion_mnist" or "kmnist").

    For each root, in order, these folders are tried:

    1. ``root/<TorchvisionName>/raw`` (``MNIST``, ``FashionMNIST``, ``KMNIST``: torchvision's
       layout), then ``root/<alias>`` (e.g. ``fashion-mnist``, ``fashion_mnist``, ``mnist``,
       ``kmnist``);
    2. ``root`` itself.

    For "fashion_mnist", Debian's ``/usr/share/datasets/fashion-mnist`` is tried last.

    A folder counts only if it holds all four files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
    plain or ``.gz``). The file names are the same for all three datasets, so a folder's
    content cannot tell them apart: files lying directly in a root are accepted for any name
    (the caller pointed at them on purpose), while for a parent folder such as
    ``../shared/data`` only the dataset's own named sub-folders are used. Pass a folder
    holding MNIST files directly only when asking for MNIST.

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"} -> path``, or
    None when no folder is complete.
    """
    return _search(name, roots)[0]


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(_corrupt_message(path, f"cannot be read: {e}")) from e


def _corrupt_message(path: Path, problem: str) -> str:
    return (
        f"The data file {path} {problem}.\n"
        "It is probably truncated or damaged (e.g. an interrupted download or copy). "
        "Delete it and put an intact copy in its place (with data.download: true a missing "
        "file is downloaded again)."
    )


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes into an array shaped by its header."""
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(_corrupt_message(path, f"is only {len(data)} bytes long"))
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        what = "images" if magic == _IMAGES_MAGIC else "labels"
        raise DataError(
            _corrupt_message(
                path, f"is not an IDX {what} file (magic number {found_magic}, expected {magic})"
            )
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            _corrupt_message(
                path,
                f"has {len(data)} bytes of data but its header (dimensions {dims}) announces {expected}",
            )
        )
    # frombuffer is a zero-copy read-only view; copy once so torch gets a writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_split(images_path: Path, labels_path: Path) -> Split:
    images = _read_idx(images_path, _IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, _LABELS_MAGIC, 1)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise DataError(
            _corrupt_message(
                images_path,
                f"holds {images.shape[1]}x{images.shape[2]} images, expected {_SIDE}x{_SIDE}",
            )
        )
    if len(images) != len(labels):
        raise DataError(
            f"The data files {images_path} ({len(images)} images) and {labels_path} "
            f"({len(labels)} labels) do not belong together: the counts differ.\n"
            "Put the four files of one and the same dataset release in the folder."
        )
    if len(labels) and int(labels.max()) >= _NUM_CLASSES:
        raise DataError(
            _corrupt_message(labels_path, f"holds label {int(labels.max())}, expected 0..{_NUM_CLASSES - 1}")
        )
    return Split(
        x=torch.from_numpy(images).unsqueeze(1),
        y=torch.from_numpy(labels.astype(np.int64)),
    )


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std of uint8 pixels scaled to [0, 1], computed exactly.

    A 256-bin histogram avoids materializing a float copy of the images (376 MB for
    Fashion-MNIST in float64) and is exact; torch.bincount takes uint8 directly and is ~10x
    faster here than numpy's, which first casts to intp.
    """
    counts = torch.bincount(x.reshape(-1), minlength=256).to(torch.float64)
    n = counts.sum()
    if n == 0:
        raise DataError("Cannot compute normalization statistics: the training set is empty.")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = (counts * values).sum() / n
    var = (counts * (values - mean) ** 2).sum() / n
    return float(mean), float(var.sqrt())


def _describe(files: dict[str, Path]) -> str:
    gz = [p.name.endswith(".gz") for p in files.values()]
    kind = "gzipped IDX" if all(gz) else "IDX" if not any(gz) else "IDX, partly gzipped"
    return f"{files['train_images'].parent} ({kind})"  # all four lie in one folder


def _load_files(name: str, files: dict[str, Path], source: str) -> LoadedData:
    spec = _spec(name)
    train = _read_split(files["train_images"], files["train_labels"])
    test = _read_split(files["test_images"], files["test_labels"])
    mean, std = spec.mean_std if spec.mean_std is not None else _mean_std(train.x)
    return LoadedData(
        train=train,
        test=test,
        classes=list(spec.classes),
        mean=(mean,),
        std=(std,),
        files=[files[role] for role in IDX_FILES],
        source=source,
    )


def _short_reason(err: BaseException) -> str:
    # torchvision's messages span several lines (one per mirror tried); fold them into one.
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _not_found_message(
    name: str,
    searched: list[tuple[Path, str]],
    download_root: Path | None,
    download_error: str | None,
) -> str:
    spec = _spec(name)
    names = ", ".join(IDX_FILES.values())
    lines = [
        f"Could not find the {spec.title} data files.",
        f"Looked for {names} (each plain or .gz, all four in the same folder) in:",
        *(f"  - {d}  ({why})" for d, why in searched),
    ]
    if download_error is not None:
        lines.append(
            f"Downloading {spec.title} from the internet into {download_root} failed: {download_error}"
        )
    lines += [
        "How to fix it (any one of):",
        f"  - put the four files ({names}) in one of the folders above;",
        f"  - pass --data-dir DIR, where DIR or DIR/{spec.aliases[0]} holds them;",
        "  - set the environment variable MNISTKIT_DATA=DIR (same layout);",
    ]
    if download_root is None:
        lines.append(
            "  - allow downloading (data.download: true in the recipe): torchvision then "
            "fetches the files from the internet."
        )
    return "\n".join(lines)


def _first_missing(path: Path, top: Path) -> Path | None:
    """The outermost of ``path`` and its parents up to ``top`` that does not exist yet (None:
    ``path`` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
        if p == top:
            break
    return missing


def _remove_made(made: Path | None) -> None:
    """Remove ``made``, a folder that did not exist before the download, with what it holds."""
    if made is not None and made.is_dir():
        shutil.rmtree(made, ignore_errors=True)


def _download(name: str, download_root: Path) -> None:
    """Let torchvision fetch the raw files into ``download_root/<Name>/raw``."""
    import torchvision  # only when a download is needed: importing it is slow

    dataset_cls = getattr(torchvision.datasets, _spec(name).tv_name)
    # torchvision downloads all four files on the first call; the second finds them present.
    for train in (True, False):
        dataset_cls(root=str(download_root), train=train, download=True)


def load_mnist_family(name: str, roots: list[Path], download_root: Path | None) -> LoadedData:
    """Load MNIST, Fashion-MNIST or KMNIST into memory.

    Searches ``roots`` as :func:`find_mnist_family` does; if nothing is found and
    ``download_root`` is given, uses a previous download in ``download_root/<Name>/raw`` or
    downloads there with torchvision. ``download_root=None`` means no network access at all.

    Raises DataError (complete user-facing message) when the files are missing, cannot be
    downloaded, or are damaged.
    """
    spec = _spec(name)
    files, searched = _search(name, roots)
    if files is not None:
        return _load_files(name, files, _describe(files))
    if download_root is None:
        raise DataError(_not_found_message(name, searched, None, None))

    download_root = Path(download_root).expanduser()
    # Only torchvision's own sub-folder: download_root itself may hold other datasets' files.
    raw_dir = download_root / spec.tv_name / "raw"
    files, _ = _check_dir(raw_dir)
    if files is None:
        made = _first_missing(raw_dir, download_root)  # what the download creates
        try:
            _download(name, download_root)
        except BaseException as e:  # network, DNS, HTTP, checksum, disk, Ctrl-C: all end the same way
            _remove_made(made)  # a failed download leaves nothing behind (no empty MNIST/raw/)
            if not isinstance(e, Exception):
                raise
            searched.append((raw_dir, "download target"))
            raise DataError(_not_found_message(name, searched, download_root, _short_reason(e))) from e
        files, why = _check_dir(raw_dir)
        if files is None:
            _remove_made(made)
            searched.append((raw_dir, f"after download: {why}"))
            raise DataError(
                _not_found_message(
                    name, searched, download_root, f"the files are not in {raw_dir} afterwards"
                )
            )
        return _load_files(name, files, f"{_describe(files)}, downloaded by torchvision")
    return _load_files(name, files, f"{_describe(files)}, downloaded earlier by torchvision")


def _sklearn_digits_files() -> list[Path]:
    try:
        from importlib.resources import files

        path = Path(str(files("sklearn.datasets.data") / "digits.csv.gz"))
    except (ImportError, TypeError, OSError):
        return []
    return [path] if path.is_file() else []


def load_sklearn_digits() -> LoadedData:
    """scikit-learn's bundled 8x8 digits (1797 images), as uint8 0..255 ``[N, 1, 8, 8]``.

    Split: stratified, 20 % of each class to test, drawn with ``numpy.random.default_rng(0)``
    so it is identical on every run and machine. Both splits keep the original sample order.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the 0..255 range of the other image datasets.
    x = np.rint(np.asarray(digits.data, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    x = x.reshape(-1, 1, 8, 8)
    y = np.asarray(digits.target, dtype=np.int64)

    rng = np.random.default_rng(0)
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(_NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        n_test = int(round(0.2 * len(idx)))
        is_test[rng.permutation(idx)[:n_test]] = True

    train = Split(x=torch.from_numpy(x[~is_test]), y=torch.from_numpy(y[~is_test]))
    test = Split(x=torch.from_numpy(x[is_test]), y=torch.from_numpy(y[is_test]))
    mean, std = _mean_std(train.x)
    return LoadedData(
        train=train,
        test=test,
        classes=[str(i) for i in range(_NUM_CLASSES)],
        mean=(mean,),
        std=(std,),
        files=_sklearn_digits_files(),
        source="scikit-learn load_digits (bundled, no files needed)",
    )
