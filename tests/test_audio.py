"""Tests for mnistkit.data.audio: log-mel features, FSDD/audio-folder loading, cache, bad files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import real_dataset

from mnistkit.data import audio, features
from mnistkit.data.audio import LogMelSpec, load_audio_folder, load_fsdd, log_mel
from mnistkit.errors import DataError

# Small settings keep the tests fast; the feature code path is the same as for the defaults.
SPEC = LogMelSpec(sample_rate=8000, n_fft=512, hop_length=128, n_mels=32, frames=16)


@pytest.fixture
def fsdd_recordings(shared_data: Path) -> Path:
    """The real FSDD recordings (the data folder comes from tests/conftest.py)."""
    return real_dataset(shared_data, "fsdd/recordings")


def _sine(path: Path, freq: float, sr: int = 8000, seconds: float = 0.5) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if path.suffix == ".wav" else None  # soundfile's default for flac/ogg
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), sr, subtype=subtype)
    return path


def _fake_fsdd(folder: Path, digits: range = range(4), takes: range = range(10)) -> Path:
    """Synthetic FSDD-named clips (one tone per digit) for tests that need no real audio."""
    for d in digits:
        for k in takes:
            _sine(folder / f"{d}_synth_{k}.wav", 300 + 100 * d + k, seconds=0.3)
    return folder


class _Counter:
    """Wraps audio._features_of to count how many files really get decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = audio._features_of

        def counted(path: Path, spec: LogMelSpec) -> np.ndarray:
            self.calls += 1
            return real(path, spec)

        monkeypatch.setattr(audio, "_features_of", counted)


# --- features ---------------------------------------------------------------------------------


# librosa.load imports audioread, which imports modules deprecated in Python 3.13
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_log_mel_matches_the_tutorial_calls_on_a_real_clip(fsdd_recordings: Path) -> None:
    import librosa

    path = fsdd_recordings / "0_george_10.wav"  # 5958 samples: longer than n_fft, no padding involved
    spec = LogMelSpec(n_fft=2048, hop_length=512, n_mels=128, frames=8)
    y, sr = librosa.load(path, sr=spec.sample_rate)
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128)
    S = librosa.power_to_db(S, ref=np.max)
    S = (S - S.mean()) / (S.std() + 1e-6)
    assert S.shape[1] > spec.frames  # so this also checks the crop keeps the first frames

    ours_y = audio.read_audio(path, spec.sample_rate)
    np.testing.assert_allclose(ours_y, y, rtol=0, atol=1e-7)
    feats = log_mel(ours_y, spec)
    assert feats.dtype == np.float32 and feats.shape == (128, spec.frames)
    np.testing.assert_allclose(feats, S[:, : spec.frames], rtol=1e-5, atol=1e-5)


def test_pad_and_crop_to_frames() -> None:
    s = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(features.fix_frames(s, 4), s[:, :4])
    padded = features.fix_frames(s, 9)
    assert padded.shape == (2, 9)
    np.testing.assert_array_equal(padded[:, :6], s)
    assert np.all(padded[:, 6:] == 0.0)  # 0.0 = the clip mean after standardization

    short = log_mel(np.sin(np.arange(2000, dtype=np.float32) / 5), SPEC)  # ~16 -> 16 frames
    long = log_mel(np.sin(np.arange(20000, dtype=np.float32) / 5), SPEC)  # 157 frames, cropped
    assert short.shape == long.shape == (SPEC.n_mels, SPEC.frames)


def test_clip_shorter_than_n_fft_is_zero_padded_without_warnings() -> None:
    spec = LogMelSpec(n_fft=2048, hop_length=512, n_mels=64, frames=10)
    y = np.sin(np.arange(1000, dtype=np.float32) / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # librosa would warn "n_fft=2048 is too large"
        feats = log_mel(y, spec)
    expected = log_mel(np.pad(y, (0, 2048 - 1000)), spec)
    np.testing.assert_array_equal(feats, expected)
    # 1 + 2048 // 512 = 5 real frames, then zero padding up to 10
    assert np.all(feats[:, 5:] == 0.0) and np.any(feats[:, :5] != 0.0)
    assert np.all(np.isfinite(log_mel(np.zeros(3000, np.float32), spec)))  # pure silence


def _cache_key(spec: LogMelSpec) -> str:
    return audio._cache_key("fsdd", audio.cache_settings(spec), Path("/data"), ["0_a_0.wav", "1_a_0.wav"])


# One changed value per field; test_every_feature_setting_changes_the_cache_key checks that this
# covers every field of LogMelSpec, so a new setting cannot be forgotten in the cache key.
CHANGED = {
    "sample_rate": 16000,
    "n_fft": 1024,
    "hop_length": 256,
    "n_mels": 64,
    "frames": 48,
    "fmax": 3000.0,
}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_every_feature_setting_changes_the_cache_key(name: str) -> None:
    assert set(CHANGED) == {f.name for f in fields(LogMelSpec)}
    base = LogMelSpec()
    changed = replace(base, **{name: CHANGED[name]})
    assert changed != base
    assert changed.key() != base.key()
    assert _cache_key(changed) != _cache_key(base)  # a stale cache would be served otherwise


def test_equal_settings_built_separately_share_the_cache_key() -> None:
    # The recipe gives YAML ints (fmax: 4000), a run's data.json gives JSON back, a test writes
    # keywords: the same settings must find the same cache entry, whatever built them.
    a = LogMelSpec(sample_rate=8000, n_fft=512, hop_length=128, n_mels=64, frames=64, fmax=4000)
    b = LogMelSpec(8000, 512, 128, 64, 64, 4000.0)
    c = LogMelSpec(**json.loads(json.dumps(asdict(b))))
    d = replace(LogMelSpec(n_mels=32, fmax=2000), n_mels=64, n_fft=512, hop_length=128, frames=64, fmax=4000)
    assert a is not b and a.key() == b.key() == c.key() == d.key()
    assert _cache_key(a) == _cache_key(b) == _cache_key(c) == _cache_key(d)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="n_fft"):
        LogMelSpec(n_fft=0)
    with pytest.raises(ValueError, match="fmax"):
        LogMelSpec(sample_rate=8000, fmax=6000)


def test_resamples_to_the_spec_rate(tmp_path: Path) -> None:
    path = _sine(tmp_path / "a.wav", 440, sr=16000, seconds=0.5)
    y = audio.read_audio(path, 8000)
    assert y.dtype == np.float32 and abs(y.size - 4000) <= 1


# --- FSDD ---------------------------------------------------------------------------------------


def test_fsdd_official_split_on_a_real_subset(tmp_path: Path, fsdd_recordings: Path) -> None:
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for d in range(4):
        for k in range(10):  # takes 0-4 -> test, 5-9 -> train
            shutil.copy(fsdd_recordings / f"{d}_jackson_{k}.wav", rec)
    (rec / "README.txt").write_text("not audio")
    data = load_fsdd(tmp_path / "fsdd", SPEC, cache_dir=None, skip_bad=False)  # finds recordings/
    assert data.classes == [str(d) for d in range(10)]
    assert data.train.x.shape == (20, 1, SPEC.n_mels, SPEC.frames)
    assert data.test.x.shape == (20, 1, SPEC.n_mels, SPEC.frames)
    assert str(data.train.x.dtype) == "torch.float32" and str(data.train.y.dtype) == "torch.int64"
    assert data.train.y.bincount().tolist() == [5, 5, 5, 5]
    assert data.test.y.bincount().tolist() == [5, 5, 5, 5]
    assert data.mean == (0.0,) and data.std == (1.0,)
    n = len(data.train.y)
    assert all(int(p.name.split("_")[2][:-4]) >= 5 for p in data.files[:n])
    assert all(int(p.name.split("_")[2][:-4]) < 5 for p in data.files[n:])
    assert [int(p.name[0]) for p in data.files] == [*data.train.y.tolist(), *data.test.y.tolist()]
    assert "1 file(s) not named" in data.source


def test_fsdd_missing_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No FSDD recordings found"):
        load_fsdd(tmp_path / "nowhere", SPEC, cache_dir=None, skip_bad=False)


# --- cache --------------------------------------------------------------------------------------


def test_cache_miss_then_hit_then_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_fsdd(tmp_path / "rec", digits=range(2), takes=range(6))  # 12 files
    cache = tmp_path / "cache"
    counter = _Counter(monkeypatch)
    progress: list[tuple[int, int]] = []

    first = load_fsdd(root, SPEC, cache, skip_bad=False, progress=lambda *a: progress.append(a))
    assert counter.calls == 12 and progress[0] == (0, 12) and progress[-1] == (12, 12)
    assert "computed" in first.source
    assert len(list(cache.glob("fsdd-*.npz"))) == 1 and not list(cache.glob(".*"))  # no tmp left

    progress.clear()
    second = load_fsdd(root, SPEC, cache, skip_bad=False, progress=lambda *a: progress.append(a))
    assert counter.calls == 12 and progress == []  # hit: nothing decoded
    assert "from cache" in second.source
    assert (second.train.x == first.train.x).all() and (second.test.x == first.test.x).all()
    assert (second.train.y == first.train.y).all()

    load_fsdd(root, LogMelSpec(**{**SPEC.__dict__, "n_mels": 16}), cache, skip_bad=False)
    assert counter.calls == 24  # feature parameter changed -> miss

    f = root / "1_synth_3.wav"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    load_fsdd(root, SPEC, cache, skip_bad=False)
    assert counter.calls == 36

    _sine(f, 1234, seconds=0.4)  # content (and size) changed
    changed = load_fsdd(root, SPEC, cache, skip_bad=False)
    assert counter.calls == 48
    assert not (changed.test.x == first.test.x).all()  # take 3 is a test clip

    (root / "1_synth_9.wav").write_bytes((root / "1_synth_0.wav").read_bytes())  # file added
    load_fsdd(root, SPEC, cache, skip_bad=False)
    assert counter.calls == 48 + 13


def test_unusable_cache_file_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = _fake_fsdd(tmp_path / "rec", digits=range(1), takes=range(3))
    cache = tmp_path / "cache"
    load_fsdd(root, SPEC, cache, skip_bad=False)
    (cached,) = cache.glob("fsdd-*.npz")
    cached.write_bytes(b"garbage, not a zip")
    counter = _Counter(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mnistkit.data.audio"):
        data = load_fsdd(root, SPEC, cache, skip_bad=False)
    assert counter.calls == 3 and len(data.train.y) + len(data.test.y) == 3
    assert "ignoring unusable feature cache" in caplog.text
    load_fsdd(root, SPEC, cache, skip_bad=False)  # rewritten: a hit again
    assert counter.calls == 3


# --- bad files ----------------------------------------------------------------------------------


def test_corrupt_files_raise_naming_all_or_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = _fake_fsdd(tmp_path / "rec", digits=range(2), takes=range(6))  # 12 good files
    (root / "3_bad_7.wav").write_bytes(b"RIFF\x00\x00garbage bytes, not audio" * 10)
    (root / "4_bad_1.wav").write_bytes(b"")
    cache = tmp_path / "cache"

    with pytest.raises(DataError) as err:
        load_fsdd(root, SPEC, cache, skip_bad=False)
    msg = str(err.value)
    assert "3_bad_7.wav" in msg and "4_bad_1.wav" in msg and "2 audio file(s)" in msg
    assert "data.skip_bad_files: true" in msg

    counter = _Counter(monkeypatch)  # the failed run still cached the good files' features
    with caplog.at_level(logging.WARNING, logger="mnistkit.data.audio"):
        data = load_fsdd(root, SPEC, cache, skip_bad=True)
    assert counter.calls == 0
    assert len(data.train.y) + len(data.test.y) == 12 and len(data.files) == 12
    assert not any("bad" in p.name for p in data.files)
    assert "2 unreadable file(s) skipped" in data.source
    assert "3_bad_7.wav" in caplog.text and "4_bad_1.wav" in caplog.text

    no_cache = load_fsdd(root, SPEC, None, skip_bad=True)  # same result without a cache
    assert (no_cache.train.x == data.train.x).all()


# --- audio folder -------------------------------------------------------------------------------


def _two_class_folder(root: Path, n: int = 10) -> Path:
    for i in range(n):
        _sine(root / "low" / f"l{i:02d}.wav", 200 + 5 * i, sr=16000)  # resampled to 8 kHz
        _sine(root / "high" / f"h{i:02d}.wav", 2500 + 5 * i)
    return root


def test_audio_folder_seeded_split(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "ds")
    (root / ".hidden").mkdir()
    (root / "low" / "notes.txt").write_text("ignored")
    data = load_audio_folder(root, SPEC, tmp_path / "cache", skip_bad=False, test_fraction=0.2)
    assert data.classes == ["high", "low"]
    assert data.train.x.shape == (16, 1, SPEC.n_mels, SPEC.frames)
    assert data.test.x.shape == (4, 1, SPEC.n_mels, SPEC.frames)
    assert data.train.y.bincount().tolist() == [8, 8] and data.test.y.bincount().tolist() == [2, 2]
    labels = [*data.train.y.tolist(), *data.test.y.tolist()]
    for path, label in zip(data.files, labels, strict=True):
        assert path.parent.name == data.classes[label]
    n = len(data.train.y)
    test_names = {p.name for p in data.files[n:]}

    again = load_audio_folder(root, SPEC, None, skip_bad=False, test_fraction=0.2)
    assert {p.name for p in again.files[n:]} == test_names  # deterministic
    assert (again.test.x == data.test.x).all()
    other = load_audio_folder(root, SPEC, None, skip_bad=False, test_fraction=0.2, seed=1)
    assert {p.name for p in other.files[n:]} != test_names  # the seed matters

    # high and low tones must be separable: class means differ clearly
    x = data.train.x.flatten(1)
    assert (x[data.train.y == 0].mean(0) - x[data.train.y == 1].mean(0)).abs().max() > 1.0


def test_audio_folder_train_test_folders_are_the_split(tmp_path: Path) -> None:
    _two_class_folder(tmp_path / "ds" / "train", n=4)
    _sine(tmp_path / "ds" / "test" / "low" / "t0.flac", 210)
    _sine(tmp_path / "ds" / "test" / "high" / "t1.ogg", 2600)
    data = load_audio_folder(tmp_path / "ds", SPEC, None, skip_bad=False, test_fraction=0.5)
    assert data.classes == ["high", "low"]
    assert len(data.train.y) == 8 and data.test.y.tolist() == [0, 1]
    assert [p.name for p in data.files[8:]] == ["t1.ogg", "t0.flac"]


def test_audio_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_audio_folder(tmp_path / "missing", SPEC, None, skip_bad=False)
    root = _two_class_folder(tmp_path / "ds", n=2)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_audio_folder(root, SPEC, None, skip_bad=False)
    (root / "empty").rmdir()
    (root / "low" / "broken.wav").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="broken.wav"):
        load_audio_folder(root, SPEC, None, skip_bad=False)
    data = load_audio_folder(root, SPEC, None, skip_bad=True)
    assert len(data.train.y) + len(data.test.y) == 4


@pytest.mark.parametrize("layout", ["train_test", "flac_only"])
def test_audio_folder_root_is_found_for_every_documented_layout(tmp_path: Path, layout: str) -> None:
    """`data.root`/--data-dir pointing at a train/+test/ folder, or at FLAC/OGG-only class folders,
    is the dataset root (it was rejected: the search looked for *.wav one level deep only)."""
    from mnistkit.data.sources import DataContext, audio_folder
    from mnistkit.recipe.schema import load_recipe_text

    root = tmp_path / "ds"
    if layout == "train_test":
        _two_class_folder(root / "train", n=3)
        _sine(root / "test" / "low" / "t0.wav", 210)
        _sine(root / "test" / "high" / "t1.wav", 2600)
    else:
        for i in range(3):
            _sine(root / "low" / f"l{i}.flac", 200 + 5 * i)
            _sine(root / "high" / f"h{i}.ogg", 2500 + 5 * i)
    recipe = load_recipe_text(
        "data: {dataset: audio_folder, test_fraction: 0.34}\nmodel: {hidden: [8]}\n", "af.yaml"
    )
    ctx = DataContext(section=recipe.data, roots=[root], download_root=None, cache_dir=tmp_path / "c", seed=0)
    data = audio_folder(ctx)
    assert data.classes == ["high", "low"]
    assert len(data.train.y) + len(data.test.y) == (6 if layout == "flac_only" else 8)


def test_audio_folder_served_from_the_file_gives_the_features_of_each_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.cache: mmap on an audio folder: the features stay in the cache's data file (float32
    rows) and each batch is read from it; they are each clip's own log-mel features, the same as
    the in-memory path, and a clip added later is the only one computed again."""
    import torch

    from mnistkit.data.batches import eval_batches, memory_batches, prepare
    from mnistkit.data.features import read_audio
    from mnistkit.data.mapped import Rows
    from mnistkit.recipe.sections import DataSection

    root = _two_class_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    counter = _Counter(monkeypatch)
    mapped = load_audio_folder(root, SPEC, cache, skip_bad=False, cache_mode="mmap")
    assert counter.calls == 20 and "mmap (data.cache: mmap)" in mapped.cache_note
    assert isinstance(mapped.train.x, Rows) and mapped.train.x.dtype == np.float32
    mem = load_audio_folder(root, SPEC, cache, skip_bad=False, cache_mode="memory")
    assert counter.calls == 20 and "features loaded from cache" in mem.source
    n = len(mapped.train.y)
    for i, f in enumerate(mapped.files):
        split, j = (mapped.train, i) if i < n else (mapped.test, i - n)
        want = log_mel(read_audio(f, SPEC.sample_rate), SPEC)  # the clip's features, computed here
        assert np.array_equal(split.raw(np.array([j]))[0, 0].numpy(), want), f
    section = DataSection(dataset="audio_folder", batch_size=3)
    cpu = torch.device("cpu")
    a, b = prepare(mem, section, 0, cpu), prepare(mapped, section, 0, cpu)
    order = torch.randperm(n)
    for (xa, ya), (xb, yb) in zip(
        memory_batches(a.train, 3, order, False), memory_batches(b.train, 3, order, False), strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(eval_batches(a.test, 3), eval_batches(b.test, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    _sine(root / "low" / "late.wav", 260)
    grown = load_audio_folder(root, SPEC, cache, skip_bad=False, cache_mode="mmap")
    assert counter.calls == 21 and "(1 decoded, 20 reused)" in grown.source
