"""Decoding and fixed-length clips of audio, on the CPU in the data workers.

A file becomes one mono float32 waveform at the run's sample rate (soundfile decodes, soxr resamples), and a view
of it a clip of a fixed number of samples: a crop that starts where the sample's key says (the same clip of a
sample whatever the worker count or resume point), the centre for evaluation, and silence after the end of
sounds shorter than the clip (as AudioMAE and AST pad).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from selfsup.errors import DataError
from selfsup.keyed_random import hash32_int

# What decoding a bad file raises: libsndfile's errors are RuntimeErrors; odd headers can give the others.
_DECODE_ERRORS = (RuntimeError, TypeError, ValueError, OSError, EOFError)


def read_audio(source: str | Path | bytes, sample_rate: int, name: str | None = None) -> np.ndarray:
    """A file's (or a WebDataset member's bytes') samples as a mono float32 waveform at `sample_rate`.

    Raises DataError, one line naming the file (`name`, else the path), for a missing, undecodable or empty file:
    the data module then skips or reports it like an unreadable image."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "(bytes)"
        stream = io.BytesIO(source)
    else:
        label = name or str(source)
        if not Path(source).is_file():
            raise DataError(f"audio file {label} does not exist")
        stream = source
    try:
        data, rate = soundfile.read(stream, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as e:
        reason = getattr(e, "error_string", None) or str(e)  # libsndfile's own words, without the stream's repr
        reason = " ".join(reason.split()) or type(e).__name__
        raise DataError(f"cannot decode audio {label}: {reason}") from None
    if data.shape[0] == 0:
        raise DataError(f"audio {label} is empty (0 samples)")
    wave = data.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def clip_offset(num_samples: int, length: int, key: int | None) -> int:
    """Where a clip of `length` samples starts in a sound of `num_samples`: the centre when `key` is None, else
    a whole number uniform in [0, num_samples - length], a pure function of the key; 0 when the sound is no
    longer than the clip."""
    span = num_samples - length
    if span <= 0:
        return 0
    if key is None:
        return span // 2
    return (hash32_int(key) * (span + 1)) >> 32  # a 32-bit hash scaled to span + 1 values, in exact integers


def fit_length(wave: np.ndarray, length: int, key: int | None = None) -> torch.Tensor:
    """Exactly `length` samples of a 1-D waveform as a float32 tensor: the crop at clip_offset of a longer
    sound, a shorter one followed by zeros."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    out = np.zeros(length, dtype=np.float32)
    start = clip_offset(len(wave), length, key)
    piece = wave[start:start + length]
    out[:len(piece)] = piece
    return torch.from_numpy(out)
