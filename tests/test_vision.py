"""Tests for mnistkit.data.vision: IDX discovery/reading, download handling, sklearn digits."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_dataset

from mnistkit.data import vision
from mnistkit.errors import DataError

FILES = vision.IDX_FILES
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_dataset(
    directory: Path, n_train: int = 7, n_test: int = 3, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four synthetic IDX files; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for role, arr in arrays.items():
        magic = 2051 if role.endswith("images") else 2049
        _write(directory / FILES[role], _idx_bytes(arr, magic), gz)
    return arrays


@pytest.fixture(autouse=True)
def _no_debian_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep tests hermetic on machines where Debian's fashion-mnist package is installed.
    monkeypatch.setattr(vision, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --------------------------------------------------------------------------- discovery + reading


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_root_itself(tmp_path: Path, gz: bool) -> None:
    arrays = make_dataset(tmp_path / "d", gz=gz)
    data = vision.load_mnist_family("kmnist", [tmp_path / "d"], None)

    assert data.train.x.shape == (7, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.test.x.shape == (3, 1, 28, 28)
    assert data.train.y.dtype == torch.int64 and data.train.y.shape == (7,)
    assert np.array_equal(data.train.x[:, 0].numpy(), arrays["train_images"])
    assert np.array_equal(data.test.y.numpy(), arrays["test_labels"])
    assert data.classes == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    # Computed from the train images (not published constants) for KMNIST.
    pixels = arrays["train_images"].astype(np.float64) / 255
    assert data.mean == pytest.approx((pixels.mean(),), abs=1e-12)
    assert data.std == pytest.approx((pixels.std(),), abs=1e-12)
    suffix = ".gz" if gz else ""
    assert data.files == [tmp_path / "d" / (f + suffix) for f in FILES.values()]
    assert data.source == f"{tmp_path / 'd'} ({'gzipped IDX' if gz else 'IDX'})"


@pytest.mark.parametrize(
    ("name", "sub"),
    [
        ("mnist", "MNIST/raw"),
        ("mnist", "mnist"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("fashion_mnist", "fashion-mnist"),
        ("fashion_mnist", "fashion_mnist"),
        ("kmnist", "KMNIST/raw"),
        ("kmnist", "kmnist"),
    ],
)
def test_named_subfolders_of_a_parent_root(tmp_path: Path, name: str, sub: str) -> None:
    make_dataset(tmp_path / sub, gz=True)
    found = vision.find_mnist_family(name, [tmp_path / "elsewhere", tmp_path])
    assert found is not None
    assert set(found) == set(FILES)
    assert all(p.parent == tmp_path / sub for p in found.values())


def test_mnist_constants_and_classes(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    data = vision.load_mnist_family("mnist", [tmp_path], None)
    assert data.mean == (0.1307,) and data.std == (0.3081,)
    assert data.classes == [str(i) for i in range(10)]


def test_fashion_classes(tmp_path: Path) -> None:
    make_dataset(tmp_path / "fashion-mnist")
    data = vision.load_mnist_family("fashion_mnist", [tmp_path], None)
    assert data.classes[0] == "T-shirt/top" and data.classes[-1] == "Ankle boot"
    assert len(data.classes) == 10


def test_parent_folder_other_dataset_not_accepted(tmp_path: Path) -> None:
    make_dataset(tmp_path / "mnist")
    make_dataset(tmp_path / "MNIST" / "raw")
    assert vision.find_mnist_family("fashion_mnist", [tmp_path]) is None
    assert vision.find_mnist_family("kmnist", [tmp_path]) is None
    assert vision.find_mnist_family("mnist", [tmp_path]) is not None


def test_named_subfolder_wins_over_files_in_root(tmp_path: Path) -> None:
    make_dataset(tmp_path)  # say: MNIST files lying directly in the root
    make_dataset(tmp_path / "fashion-mnist")
    found = vision.find_mnist_family("fashion_mnist", [tmp_path])
    assert found is not None and found["train_images"].parent == tmp_path / "fashion-mnist"


def test_roots_searched_in_order(tmp_path: Path) -> None:
    make_dataset(tmp_path / "a")
    make_dataset(tmp_path / "b")
    found = vision.find_mnist_family("mnist", [tmp_path / "b", tmp_path / "a"])
    assert found is not None and found["train_images"].parent == tmp_path / "b"


def test_debian_location_checked_last_for_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "debian"
    make_dataset(debian, gz=True)
    monkeypatch.setattr(vision, "DEBIAN_FASHION_DIR", debian)
    found = vision.find_mnist_family("fashion_mnist", [tmp_path / "nothing"])
    assert found is not None and found["train_images"].parent == debian
    assert vision.find_mnist_family("mnist", [tmp_path / "nothing"]) is None


def test_incomplete_folder_does_not_count(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / FILES["test_labels"]).unlink()
    assert vision.find_mnist_family("mnist", [tmp_path]) is None
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        vision.load_mnist_family("mnist", [tmp_path], None)


def test_plain_preferred_over_gz(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    for name in FILES.values():  # broken .gz next to each good plain file (torchvision raw/)
        (tmp_path / f"{name}.gz").write_bytes(b"junk")
    data = vision.load_mnist_family("mnist", [tmp_path], None)
    assert all(not p.name.endswith(".gz") for p in data.files)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown image dataset 'cifar'"):
        vision.find_mnist_family("cifar", [tmp_path])


# --------------------------------------------------------------------------- error messages


def test_missing_files_message_without_download(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError) as exc:
        vision.load_mnist_family("fashion_mnist", [root], None)
    msg = str(exc.value)
    assert "Fashion-MNIST" in msg
    for d in (
        root / "FashionMNIST" / "raw",
        root / "fashion-mnist",
        root / "fashion_mnist",
        root,
        vision.DEBIAN_FASHION_DIR,
    ):
        assert f"  - {d}  (" in msg
    for name in FILES.values():
        assert name in msg
    assert "--data-dir DIR" in msg and "MNISTKIT_DATA" in msg
    assert "data.download: true" in msg
    assert "failed" not in msg


def test_download_not_allowed_never_touches_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setattr(vision, "_download", boom)
    with pytest.raises(DataError):
        vision.load_mnist_family("mnist", [tmp_path], None)


def test_download_failure_becomes_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")

    class FailingKMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried http://example/, got:\n"
                "<urlopen error [Errno -2] Name or service not known>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "KMNIST", FailingKMNIST)
    with pytest.raises(DataError) as exc:
        vision.load_mnist_family("kmnist", [tmp_path / "data"], tmp_path / "cache")
    msg = str(exc.value)
    assert "KMNIST" in msg
    assert f"  - {tmp_path / 'data'}  (" in msg
    assert f"  - {tmp_path / 'cache' / 'KMNIST' / 'raw'}  (" in msg
    assert "from the internet" in msg and "failed" in msg
    assert "Name or service not known" in msg
    assert "\nTried" not in msg  # multi-line reason folded into one line
    assert "--data-dir DIR" in msg and "MNISTKIT_DATA" in msg
    assert "data.download: true" not in msg  # download was allowed; it just failed


def test_download_success_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    calls: list[bool] = []

    class FakeFashion:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(train)
            raw = Path(root) / "FashionMNIST" / "raw"
            if not raw.is_dir():
                make_dataset(raw, n_train=4, n_test=2)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashion)
    cache = tmp_path / "cache"
    data = vision.load_mnist_family("fashion_mnist", [tmp_path / "data"], cache)
    assert calls and len(data.train.y) == 4 and len(data.test.y) == 2
    assert "downloaded by torchvision" in data.source
    assert all(p.parent == cache / "FashionMNIST" / "raw" for p in data.files)

    calls.clear()  # second time: the earlier download is used, torchvision not called
    data = vision.load_mnist_family("fashion_mnist", [tmp_path / "data"], cache)
    assert calls == [] and "downloaded earlier" in data.source


def _corrupt(tmp_path: Path, role: str, gz: bool, mutate: Callable[[bytes], bytes]) -> Path:
    make_dataset(tmp_path, gz=gz)
    path = tmp_path / (FILES[role] + (".gz" if gz else ""))
    path.write_bytes(mutate(path.read_bytes()))
    return path


@pytest.mark.parametrize(
    ("role", "gz", "mutate", "expect"),
    [
        ("train_images", True, lambda b: b[: len(b) // 2], "cannot be read"),
        ("train_images", False, lambda b: b[:-100], "announces"),
        ("test_labels", False, lambda b: b[:5], "only 5 bytes"),
        ("test_images", False, lambda b: (2049).to_bytes(4, "big") + b[4:], "magic number"),
        ("train_labels", True, lambda b: b"not gzip at all", "cannot be read"),
        ("test_labels", False, lambda b: b[:-1] + bytes([42]), "label 42"),
    ],
)
def test_corrupt_file_named(
    tmp_path: Path, role: str, gz: bool, mutate: Callable[[bytes], bytes], expect: str
) -> None:
    path = _corrupt(tmp_path, role, gz, mutate)
    with pytest.raises(DataError) as exc:
        vision.load_mnist_family("mnist", [tmp_path], None)
    msg = str(exc.value)
    assert str(path) in msg and expect in msg


def test_count_mismatch(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    _write(tmp_path / FILES["train_labels"], _idx_bytes(np.zeros(5, np.uint8), 2049), False)
    with pytest.raises(DataError, match="counts differ"):
        vision.load_mnist_family("mnist", [tmp_path], None)


def test_wrong_image_size(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    _write(tmp_path / FILES["train_images"], _idx_bytes(np.zeros((7, 8, 8)), 2051), False)
    with pytest.raises(DataError, match="8x8 images, expected 28x28"):
        vision.load_mnist_family("mnist", [tmp_path], None)


# --------------------------------------------------------------------------- real data


def test_real_fashion_mnist(shared_data: Path) -> None:
    if vision.find_mnist_family("fashion_mnist", [shared_data]) is None:
        pytest.skip(f"no fashion-mnist/ under {shared_data}")
    data = vision.load_mnist_family("fashion_mnist", [shared_data], None)
    assert data.train.x.shape == (60000, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.y.dtype == torch.int64
    assert int(data.train.y.min()) == 0 and int(data.train.y.max()) == 9
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=5e-4)
    assert data.std[0] == pytest.approx(0.3530, abs=5e-4)
    assert len(data.files) == 4 and all(p.is_file() for p in data.files)
    assert "gzipped IDX" in data.source


def test_real_parent_folder_does_not_mix_datasets(shared_data: Path) -> None:
    # ../shared/data holds a complete fashion-mnist/ and an incomplete mnist-test10k/:
    # asking for MNIST must not pick up Fashion-MNIST's identically named files.
    if (shared_data / "mnist").exists() or (shared_data / "MNIST").exists():
        pytest.skip(f"{shared_data} now holds a full MNIST folder")
    assert vision.find_mnist_family("mnist", [shared_data]) is None


def test_real_mnist_test_idx_reads(shared_data: Path) -> None:
    folder = real_dataset(shared_data, "mnist-test10k")
    split = vision._read_split(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    assert split.x.shape == (10000, 1, 28, 28)
    assert split.y[:3].tolist() == [7, 2, 1]  # the well-known first MNIST test digits


# --------------------------------------------------------------------------- sklearn digits


# sha256 of the split's tensors (train x, train y, test x, test y) as first released: the split
# is documented as "identical on every run and machine", so results stay comparable between
# versions. If it must change on purpose, say so in the changelog and update this value.
DIGITS_SPLIT_SHA256 = "570bd9e85d7ef7b3e9b72c68a47d0fe61217272d25b96caa60ca85ee75cf613c"
DIGITS_FINGERPRINT = """
import hashlib
from mnistkit.data import vision
d = vision.load_sklearn_digits()
h = hashlib.sha256()
for t in (d.train.x, d.train.y, d.test.x, d.test.y):
    h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


def test_sklearn_digits_split_is_the_same_in_every_process() -> None:
    # A fresh interpreter (other hash seed, other global RNG state) must draw the same split,
    # and it must be the split the project has always used.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", DIGITS_FINGERPRINT], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == DIGITS_SPLIT_SHA256


def test_sklearn_digits_split() -> None:
    a = vision.load_sklearn_digits()
    assert a.train.x.dtype == torch.uint8 and a.train.x.shape[1:] == (1, 8, 8)
    assert a.train.y.dtype == torch.int64
    assert len(a.train.y) + len(a.test.y) == 1797
    assert int(a.train.x.max()) == 255 and int(a.train.x.min()) == 0
    assert a.classes == [str(i) for i in range(10)]
    assert a.source == "scikit-learn load_digits (bundled, no files needed)"

    train_counts = torch.bincount(a.train.y, minlength=10)
    test_counts = torch.bincount(a.test.y, minlength=10)
    for tr, te in zip(train_counts.tolist(), test_counts.tolist(), strict=True):
        assert abs(te - 0.2 * (tr + te)) <= 0.5  # stratified: 20 % of every class

    pixels = a.train.x.double() / 255
    assert a.mean[0] == pytest.approx(float(pixels.mean()), abs=1e-9)
    assert a.std[0] == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-9)


def test_sklearn_digits_split_is_a_partition() -> None:
    from sklearn.datasets import load_digits

    data = vision.load_sklearn_digits()
    raw = np.rint(load_digits().data * 255 / 16).astype(np.uint8).reshape(-1, 64)
    both = torch.cat([data.train.x, data.test.x]).reshape(-1, 64).numpy()
    # Every sample lands in exactly one split (multiset equality, robust to duplicate images).
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw))


def test_datatypes_does_not_import_torch() -> None:
    code = "import sys, mnistkit.data.types; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_mistyped_data_dir_is_never_created_as_a_download_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--data-dir ../shared/data/fashion-mnist` on a user's clone made the download create that
    folder (and the tests then found a data folder without data). Downloads go to an existing
    folder of the user's, else the per-user cache."""
    torchvision = pytest.importorskip("torchvision")
    import torch

    from mnistkit.data.loading import load_data
    from mnistkit.recipe.schema import load_recipe_text
    from mnistkit.registry import registries

    targets: list[Path] = []

    class FakeFashion:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            targets.append(Path(root))
            raw = Path(root) / "FashionMNIST" / "raw"
            if not raw.is_dir():
                make_dataset(raw, n_train=4, n_test=2)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashion)
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTKIT_DATA", raising=False)
    recipe = load_recipe_text("data: {dataset: fashion_mnist}\nmodel: {hidden: [4]}\n", "f.yaml")
    typo = tmp_path / "shared" / "data" / "fashion-mnist"
    load_data(recipe, registries(), typo, torch.device("cpu"))
    assert not typo.exists() and not (tmp_path / "shared").exists()
    assert targets and all(t == tmp_path / "cache" / "data" for t in targets)

    mine = tmp_path / "mine"  # an existing folder of the user's is a fine download target
    mine.mkdir()
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache2"))  # no earlier download to reuse
    targets.clear()
    load_data(recipe, registries(), mine, torch.device("cpu"))
    assert targets and all(t == mine for t in targets)


def test_a_failed_download_leaves_no_empty_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """Offline, MNIST's download fails; it used to leave an empty <cache>/data/MNIST/raw/ behind.

    The real torchvision download runs (it creates MNIST/raw/ first); every connection is refused
    in this process by ``no_network``, so nothing reaches the network."""
    pytest.importorskip("torchvision")
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNISTKIT_CACHE", str(cache))
    data = cache / "data"
    with pytest.raises(DataError, match="failed"):
        vision.load_mnist_family("mnist", [data], data)
    assert not data.exists(), sorted(cache.rglob("*"))
    # A download folder the user already had is kept, and only what the download made goes.
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="failed"):
        vision.load_mnist_family("mnist", [mine], mine)
    assert sorted(p.name for p in mine.rglob("*")) == ["notes"]
