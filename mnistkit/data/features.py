"""Audio files as the features a run trains on: decode, resample, log-mel (librosa, soundfile, numpy).

The torch-free part of audio reading, shared by ``audio_folder``/``fsdd``
(:mod:`mnistkit.data.audio`) and by predict's and the server's readers
(:mod:`mnistkit.evaluation.inputs`), so that a served clip gets exactly the training features and
the server never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np


@dataclass(frozen=True)
class LogMelSpec:
    """Log-mel feature settings. Defaults are the tutorial's (n_fft 2048, hop 512, 128 mels).

    At 8 kHz those defaults give only ~7 frames for a median FSDD clip (0.42 s), so almost all
    of ``frames=32`` is padding; the suggested FSDD settings are
    ``LogMelSpec(n_fft=512, hop_length=128, n_mels=64, frames=64)``: 16 ms hop, 64 frames =
    1.02 s, which covers > 99 % of FSDD clips uncropped; features are [1, 64, 64].

    librosa warns "Empty filters detected in mel frequency basis" when ``n_mels`` is too large
    for ``n_fft`` (at 8 kHz with 128 mels: n_fft 128 warns, 256 and up do not); the warning is
    deliberately left visible -- lower ``n_mels`` or raise ``n_fft``.
    """

    sample_rate: int = 8000  # every file is resampled to this rate when decoded
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    # Width of every feature map: longer clips keep their first ``frames`` frames, shorter ones
    # are right-padded with 0.0 = the clip's mean after standardization.
    frames: int = 32
    fmax: float | None = None  # None = sample_rate / 2 (librosa's default)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LogMelSpec.{name} must be a positive integer, got {value!r}")
        if self.fmax is not None and not 0 < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"LogMelSpec.fmax must be in (0, sample_rate/2 = {self.sample_rate / 2:g}], got {self.fmax!r}"
            )

    def key(self) -> str:
        """Stable, canonical text of the settings (hash material for the cache key)."""
        fields = asdict(self)
        if fields["fmax"] is not None:
            fields["fmax"] = float(fields["fmax"])  # 4000 and 4000.0 are the same setting
        return json.dumps(fields, sort_keys=True)

    def describe(self) -> str:
        fmax = "sr/2" if self.fmax is None else f"{self.fmax:g}"
        return (
            f"log-mel sr={self.sample_rate} n_fft={self.n_fft} hop={self.hop_length} "
            f"n_mels={self.n_mels} frames={self.frames} fmax={fmax}"
        )


def log_mel(y: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    """Log-mel features of one mono clip sampled at ``spec.sample_rate``: float32 [n_mels, frames].

    A clip shorter than ``n_fft`` is first right-padded with silence to ``n_fft`` samples: for
    such a clip librosa would warn and pad anyway (reflect-padding); zero-padding is explicit and
    quiet. Longer clips go through the tutorial's calls unchanged.
    """
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"log_mel expects a 1-D mono signal, got shape {y.shape}")
    if y.size < spec.n_fft:
        y = np.pad(y, (0, spec.n_fft - y.size))
    s = librosa.feature.melspectrogram(
        y=y,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        fmax=spec.fmax,
    )
    s = librosa.power_to_db(s, ref=np.max)
    # Per-clip standardization (the tutorial's): loudness and recording level differences between
    # clips are removed, so the dataset-level mean/std reported in LoadedData are (0,) and (1,).
    s = (s - s.mean()) / (s.std() + 1e-6)
    return fix_frames(s, spec.frames)


def fix_frames(s: np.ndarray, frames: int) -> np.ndarray:
    """Crop (keep the first ``frames``) or right-pad with 0.0 the time axis of [n_mels, T]."""
    if s.shape[1] >= frames:
        out = s[:, :frames]
    else:
        # 0.0 is the clip mean after standardization: deterministic and neutral for the model.
        out = np.pad(s, ((0, 0), (0, frames - s.shape[1])))
    return np.ascontiguousarray(out, dtype=np.float32)


def read_audio(path: Path | BinaryIO, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate`` (same result as ``librosa.load``).

    soundfile is called directly instead of ``librosa.load`` because on an undecodable file the
    latter falls back to audioread (deprecated, warns, may need ffmpeg); here a bad file simply
    raises, and the caller records it as bad.
    """
    import librosa
    import soundfile as sf

    source = path if hasattr(path, "read") else str(path)  # a file, or bytes (mnistkit serve)
    data, sr = sf.read(source, dtype="float32", always_2d=True)
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # mono = channel mean, as librosa
    if y.size == 0:
        raise ValueError("no audio samples")
    if not np.all(np.isfinite(y)):
        raise ValueError("non-finite samples (NaN/inf)")
    if sr != sample_rate:
        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)
