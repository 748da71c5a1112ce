"""Audio decoding and clips (data/audio_signal.py), log-mel spectrograms and their keyed views (data/spectrogram.py):
files written by soundfile, librosa as the reference, brute-force masks, and torch.compile without graph breaks."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile
import torch

from selfsup.data.audio_signal import clip_offset, fit_length, read_audio
from selfsup.data.spectrogram import LogMel, mel_filterbank, random_gain, spec_augment
from selfsup.errors import ConfigError, DataError
from selfsup.keyed_random import VIEW_STREAM, per_sample_uniform
from selfsup.modalities import clip_samples, spectrogram_frames

SR = 16000


def peak_hz(wave: np.ndarray, rate: int) -> float:
    """The frequency of the largest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def signals(batch: int, length: int, rate: int, seed: int = 0) -> torch.Tensor:
    """Chirps (100 Hz rising to 0.4 of Nyquist, each with its own amplitude) plus a little noise: (batch, length)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / rate
    sweep = 0.4 * rate / 2 - 100
    rows = [(0.2 + 0.3 * b) * np.sin(2 * np.pi * (100 * t + sweep * t ** 2 / (2 * t[-1]))) +
            0.01 * rng.standard_normal(length) for b in range(batch)]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def librosa_logmel(wave: np.ndarray, sr: int, n_fft: int, hop: int, win: int | None, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                                         center=True, pad_mode="constant", power=2.0, n_mels=n_mels, fmin=fmin,
                                         fmax=fmax)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)[:, :len(wave) // hop]


# -- decoding -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, subtype, rate, channels", [(".wav", "PCM_16", 8000, 2), (".flac", "PCM_16", 22050, 2),
                                                             (".ogg", "VORBIS", SR, 1)])
def test_read_audio_mono_resampled(tmp_path, suffix, subtype, rate, channels):
    seconds, hz = 0.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    tone = np.sin(2 * np.pi * hz * t)
    data = np.stack([0.6 * tone, 0.2 * tone], 1)[:, :channels]  # stereo mixes down to 0.4 x tone
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, data, rate, subtype=subtype)
    wave = read_audio(path, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - seconds * SR) <= 1
    assert abs(peak_hz(wave, SR) - hz) <= 2.0
    middle = wave[len(wave) // 4:3 * len(wave) // 4]  # away from the resampler's edges
    amplitude = np.sqrt(2) * np.sqrt(np.mean(middle.astype(np.float64) ** 2))
    assert amplitude == pytest.approx(data.mean(1).max(), abs=0.02)
    np.testing.assert_array_equal(read_audio(path.read_bytes(), SR, name=path.name), wave)


def test_read_audio_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"cannot decode audio .*broken\.wav: "):
        read_audio(broken, SR)
    with pytest.raises(DataError, match=r"cannot decode audio member\.wav: "):
        read_audio(broken.read_bytes(), SR, name="member.wav")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1), np.float32), 8000, subtype="PCM_16")
    with pytest.raises(DataError, match=r"audio .*empty\.wav is empty \(0 samples\)"):
        read_audio(empty, SR)
    with pytest.raises(DataError, match=r"audio file .*missing\.flac does not exist"):
        read_audio(tmp_path / "missing.flac", SR)


# -- clips ----------------------------------------------------------------------------------------------------
def test_fit_length_crops_and_pads():
    wave = np.arange(100, dtype=np.float32)
    centre = fit_length(wave, 40)
    assert centre.dtype == torch.float32 and centre.shape == (40,)
    assert torch.equal(centre, torch.arange(30, 70, dtype=torch.float32))
    short = fit_length(wave[:10] + 1, 16, key=5)
    assert short.shape == (16,)
    assert torch.equal(short[:10], torch.arange(1, 11, dtype=torch.float32)) and not short[10:].any()
    assert torch.equal(fit_length(wave, 100, key=7), torch.from_numpy(wave))
    assert clip_offset(10, 20, 3) == 0 and clip_offset(20, 20, None) == 0 and clip_offset(101, 40, None) == 30


def test_keyed_crops_are_deterministic_and_spread():
    wave = np.arange(100, dtype=np.float32)
    assert torch.equal(fit_length(wave, 40, key=12345), fit_length(wave, 40, key=12345))
    offsets = [clip_offset(100, 40, key) for key in range(2000)]
    assert all(0 <= o <= 60 for o in offsets)
    assert set(offsets) == set(range(61))  # every start can be drawn
    assert np.mean(offsets) == pytest.approx(30, abs=1.5)
    for key in (1, 2, 999):
        assert fit_length(wave, 40, key=key)[0].item() == clip_offset(100, 40, key)
    assert len({clip_offset(10 ** 6, 16000, key) for key in range(20)}) == 20


# -- log-mel --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [(16000, 400, 64, 0.0, None),
                                                         (22050, 1024, 128, 50.0, 8000.0)])
def test_mel_filterbank_is_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    assert ours.dtype == torch.float32 and ours.shape == (n_mels, n_fft // 2 + 1)
    reference = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sr, n_fft, hop, win, n_mels, fmin, fmax, length",
                         [(16000, 400, 160, None, 64, 0.0, None, 16000), (16000, 512, 160, 400, 32, 0.0, None, 8050),
                          (22050, 1024, 256, None, 128, 50.0, 8000.0, 11025)])
def test_logmel_is_librosa(sr, n_fft, hop, win, n_mels, fmin, fmax, length):
    logmel = LogMel(sample_rate=sr, n_fft=n_fft, hop_length=hop, win_length=win, n_mels=n_mels, f_min=fmin, f_max=fmax)
    wave = signals(2, length, sr)
    out = logmel(wave)
    assert out.dtype == torch.float32 and out.shape == (2, 1, n_mels, length // hop)
    for b in range(2):
        reference = librosa_logmel(wave[b].numpy(), sr, n_fft, hop, win, n_mels, fmin, fmax)
        loud = reference > -80
        assert loud.mean() > 0.5
        assert np.abs(out[b, 0].numpy() - reference)[loud].max() < 1e-2


def test_logmel_in_float32_under_autocast():
    logmel = LogMel(sample_rate=8000, n_fft=128, hop_length=32, n_mels=16)
    wave = signals(2, 1024, 8000)
    eager = logmel(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = logmel(wave)
        half_input = logmel(wave.bfloat16())
    assert autocast.dtype == torch.float32 and half_input.dtype == torch.float32
    torch.testing.assert_close(autocast, eager, rtol=0, atol=0)
    torch.testing.assert_close(half_input, logmel(wave.bfloat16().float()), rtol=0, atol=0)


def test_frame_counts_and_config_errors():
    assert clip_samples(1.28, 16000) == 20480 and spectrogram_frames(1.28, 16000, 160) == 128
    assert LogMel(n_mels=8)(torch.zeros(1, 20480)).shape[-1] == spectrogram_frames(1.28, 16000, 160)
    for kwargs, key in [(dict(n_mels=0), "data.n_mels"), (dict(hop_length=0), "data.hop_length"),
                        (dict(n_fft=256.0), "data.n_fft"), (dict(win_length=512), "data.win_length"),
                        (dict(f_max=9000.0), "data.f_max"), (dict(f_min=9000.0), "data.f_min")]:
        with pytest.raises(ConfigError, match=key):
            LogMel(**kwargs)


# -- views ----------------------------------------------------------------------------------------------------
def test_random_gain_is_a_keyed_amplitude_gain():
    logmel = LogMel(sample_rate=8000, n_fft=128, hop_length=32, n_mels=16)
    wave = signals(3, 2048, 8000)
    keys = torch.tensor([3, 17, 99])
    mel = logmel(wave)
    out = random_gain(mel, keys, 0, 6.0)
    gain = (out - mel).flatten(1).mean(1)
    torch.testing.assert_close(out - mel, gain.view(-1, 1, 1, 1).expand_as(mel), rtol=0, atol=1e-4)
    assert (gain.abs() <= 6).all() and len(set(gain.tolist())) == 3
    scaled = logmel(wave * 10 ** (gain.view(-1, 1) / 20))
    loud = mel > -80
    assert (scaled - out).abs()[loud].max() < 1e-2
    assert torch.equal(random_gain(mel, keys, 0, 6.0), out)
    assert not torch.equal(random_gain(mel, keys, 1, 6.0), out)
    assert random_gain(mel, keys, 0, 0.0) is mel
    many = random_gain(torch.zeros(4000, 1, 1, 1), torch.arange(4000), 0, 6.0).flatten()
    assert many.min() >= -6 and many.max() <= 6 and many.min() < -5.9 and many.max() > 5.9
    assert many.mean().abs() < 0.2


def brute_force_masks(mel: torch.Tensor, keys: torch.Tensor, view: int, freq_masks: int, freq_width: int,
                      time_masks: int, time_width: int, fill: float) -> torch.Tensor:
    """SpecAugment one sample and one band at a time, from the documented columns of the view's draw (products in
    float32, as the tensors compute them, so that the floors agree)."""
    b, _, m, t = mel.shape
    u = per_sample_uniform(keys, b, 1 + 2 * (freq_masks + time_masks), VIEW_STREAM + view, mel.device).numpy()
    out = mel.clone()
    for i in range(b):
        column = 1  # column 0 is the gain
        for axis, count, max_width, size in ((2, freq_masks, freq_width, m), (3, time_masks, time_width, t)):
            limit = min(max_width, size)
            for _ in range(count):
                width = min(int(np.float32(u[i, column]) * np.float32(limit + 1)), limit)
                start = min(int(np.float32(u[i, column + 1]) * np.float32(size - width + 1)), size - width)
                column += 2
                if axis == 2:
                    out[i, :, start:start + width, :] = fill
                else:
                    out[i, :, :, start:start + width] = fill
    return out


@pytest.mark.parametrize("masks", [(2, 5, 2, 7), (1, 16, 3, 2), (0, 3, 1, 30)])
def test_spec_augment_matches_brute_force(masks):
    mel = torch.randn(64, 1, 12, 20)
    keys = torch.arange(64) * 7919
    out = spec_augment(mel, keys, 1, *masks, fill=-3.5)
    torch.testing.assert_close(out, brute_force_masks(mel, keys, 1, *masks, fill=-3.5), rtol=0, atol=0)
    assert torch.equal(spec_augment(mel, keys, 1, *masks, fill=-3.5), out)
    assert not torch.equal(spec_augment(mel, keys, 2, *masks, fill=-3.5), out)


def test_spec_augment_band_widths():
    mel = torch.ones(500, 1, 16, 24)
    keys = torch.arange(500)
    freq = spec_augment(mel, keys, 0, 1, 5, 0, 0, fill=0.0)
    rows = (freq[:, 0, :, 0] == 0).sum(1)
    assert torch.equal((freq == 0).all(3), (freq == 0).any(3))  # whole rows masked
    assert set(rows.tolist()) == set(range(6))  # every width in 0..5, none above
    time = spec_augment(mel, keys, 0, 0, 0, 1, 4, fill=0.0)
    columns = (time[:, 0, 0, :] == 0).sum(1)
    assert set(columns.tolist()) == set(range(5))
    starts = (time[:, 0, 0, :] == 0).float().argmax(1)[columns > 0]
    assert starts.min() == 0 and (starts + columns[columns > 0]).max() == 24  # bands reach both ends
    assert spec_augment(mel, keys, 0, 0, 5, 0, 5) is mel
    assert torch.equal(spec_augment(mel, keys, 0, 3, 0, 3, 0), mel)  # zero-width bands mask nothing
    assert spec_augment(mel, None, 0, 2, 4, 2, 4).shape == mel.shape  # no keys: the global generator


# -- torch.compile --------------------------------------------------------------------------------------------
def views(mel: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return spec_augment(random_gain(mel, keys, 1, 6.0), keys, 1, 2, 3, 2, 4, fill=0.0)


def test_compiles_without_graph_breaks():
    """One graph each, through AOTAutograd (no C++ build: Inductor's costs a 2-core machine ~20 s cold). LogMel's
    STFT is complex, which Inductor leaves to eager kernels anyway; the views' keyed draws are
    keyed_random.per_sample_uniform, whose Inductor code test_augment's compiled views check."""
    logmel = LogMel(sample_rate=8000, n_fft=64, hop_length=16, n_mels=8)
    wave = signals(2, 256, 8000)
    mel = torch.compile(logmel, fullgraph=True, backend="aot_eager")(wave)
    torch.testing.assert_close(mel, logmel(wave), rtol=0, atol=1e-4)
    keys = torch.tensor([5, 6])
    compiled = torch.compile(views, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(mel, keys), views(mel, keys), rtol=0, atol=1e-5)
