"""Log-mel spectrograms and their per-sample views, on the device, in plain torch.

Hand-written rather than torchaudio's MelSpectrogram: torchaudio's wheels pin one exact torch version, and selfsup
runs on torch 2.11 and 2.14. The numbers are librosa's (`power_to_db(melspectrogram(...), ref=1.0, top_db=None)`
with the Slaney mel scale and area normalisation, a periodic Hann window, centred frames padded with zeros), so
spectrograms match those that published audio models were trained on.

The views' randomness is keyed by sample (keyed_random): one (B, n) draw of `per_sample_uniform` per view, from
stream VIEW_STREAM + view, whose columns are
  0                          the gain (random_gain)
  1 + 2k, 2 + 2k             width and start of frequency mask k, k < freq_masks (spec_augment)
  1 + 2F + 2k, 2 + 2F + 2k   width and start of time mask k, k < time_masks, with F = freq_masks
Counters are hashed one by one, so a draw of fewer columns is a prefix of a draw of more: random_gain draws one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from selfsup import keyed_random
from selfsup.errors import ConfigError

_GAIN, _MASKS = 0, 1  # the columns of a view's draw (see above)

# The Slaney mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0  # log(Hz) per mel in the logarithmic part


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mels of frequencies in Hz."""
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + torch.log(torch.clamp(hz, min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Frequencies in Hz of Slaney mels."""
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return torch.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters on the Slaney mel scale, each scaled to unit area
    (2 / its width in Hz): librosa.filters.mel's defaults (htk=False, norm="slaney"), computed in float64."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64))),
                          float(hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64))), n_mels + 2,
                          dtype=torch.float64)
    edges = mel_to_hz(mels)  # each filter's lower edge, centre and upper edge: edges[i], edges[i + 1], edges[i + 2]
    widths = edges.diff()
    ramps = edges.unsqueeze(1) - fft_hz.unsqueeze(0)
    rising = -ramps[:-2] / widths[:-1].unsqueeze(1)
    falling = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(rising, falling), min=0)
    weights = weights * (2.0 / (edges[2:] - edges[:-2])).unsqueeze(1)
    return weights.to(torch.float32)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class LogMel(nn.Module):
    """Waveforms (B, L) -> log-mel spectrograms (B, 1, n_mels, L // hop_length) in dB, float32.

    librosa's power_to_db(melspectrogram(y, window="hann", center=True, pad_mode="constant", power=2), ref=1,
    top_db=None), without the last centred frame, so that a clip's frame count is samples // hop exactly (as a
    patch grid wants). Always computed in float32 with autocast off: bf16 STFTs lose the quiet bins."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, win_length: int | None = None,
                 n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None, amin: float = 1e-10) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        for key, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length),
                           ("win_length", win_length), ("n_mels", n_mels)):
            if not _positive_int(value):
                raise ConfigError(f"data.{key} must be a positive whole number, got {value!r}")
        if win_length > n_fft:
            raise ConfigError(f"data.win_length={win_length} must not exceed data.n_fft={n_fft}")
        nyquist = sample_rate / 2
        f_max = nyquist if f_max is None else float(f_max)
        if not 0 <= f_min < f_max:
            raise ConfigError(f"data.f_min and data.f_max must satisfy 0 <= f_min < f_max, got {f_min}, {f_max}")
        if f_max > nyquist:
            raise ConfigError(f"data.f_max={f_max:g} Hz is above the Nyquist frequency of data.sample_rate="
                              f"{sample_rate} ({nyquist:g} Hz)")
        if not amin > 0:
            raise ConfigError(f"amin must be positive, got {amin}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.amin = float(amin)
        window = torch.zeros(n_fft)
        left = (n_fft - win_length) // 2  # centred in the frame, as librosa's pad_center
        window[left:left + win_length] = torch.hann_window(win_length, periodic=True, dtype=torch.float64).float()
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filterbank", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                              window=self.window.float(), center=True, pad_mode="constant", return_complex=True,
                              onesided=True)
            power = torch.view_as_real(spec).square().sum(-1)  # |X|^2, (B, n_fft // 2 + 1, frames)
            mel = torch.matmul(self.filterbank.float(), power[..., :-1])
            return (10.0 * torch.log10(torch.clamp(mel, min=self.amin))).unsqueeze(1)


# -- views ----------------------------------------------------------------------------------------------------
def _draws(keys: torch.Tensor | None, size: int, n: int, view: int, device: torch.device) -> torch.Tensor:
    """A view's first `n` numbers per sample (the columns of the module docstring)."""
    return keyed_random.per_sample_uniform(keys, size, n, keyed_random.VIEW_STREAM + view, device)


def random_gain(mel: torch.Tensor, keys: torch.Tensor | None, view: int, gain_db: float) -> torch.Tensor:
    """Log-mel spectrograms (B, 1, M, T) in dB with a gain uniform in [-gain_db, gain_db] dB per sample: an
    amplitude gain of g dB multiplies the power by 10 ** (g / 10), which adds g to every bin."""
    if gain_db == 0:
        return mel
    u = _draws(keys, mel.shape[0], _GAIN + 1, view, mel.device)[:, _GAIN]
    gain = gain_db * (2 * u - 1)
    return mel + gain.to(mel.dtype).view(-1, 1, 1, 1)


def _bands(u: torch.Tensor, count: int, max_width: int, size: int) -> torch.Tensor:
    """(B, size) bool: the union of `count` bands per sample, band k of width floor(u[:, 2k] * (w + 1)) (at most
    min(max_width, size)) starting at floor(u[:, 2k + 1] * (size - width + 1))."""
    pairs = u[:, :2 * count].reshape(-1, count, 2)
    limit = min(max_width, size)
    width = torch.clamp(torch.floor(pairs[..., 0] * float(limit + 1)), max=limit)
    start = torch.minimum(torch.floor(pairs[..., 1] * (size - width + 1)), size - width)
    position = torch.arange(size, device=u.device, dtype=u.dtype).view(1, 1, -1)
    inside = (position >= start.unsqueeze(-1)) & (position < (start + width).unsqueeze(-1))
    return inside.any(1)


def spec_augment(mel: torch.Tensor, keys: torch.Tensor | None, view: int, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: int, fill: float = 0.0) -> torch.Tensor:
    """SpecAugment's frequency and time masking (Park et al. 2019) of log-mel spectrograms (B, 1, M, T), per
    sample: `freq_masks` bands of w ~ U{0..freq_width} mel bins starting at s ~ U{0..M - w}, and `time_masks`
    bands of up to `time_width` frames, set to `fill`. Masks may overlap; a width above the axis is the axis."""
    if freq_masks == 0 and time_masks == 0:
        return mel
    b, _, m, t = mel.shape
    u = _draws(keys, b, _MASKS + 2 * (freq_masks + time_masks), view, mel.device)[:, _MASKS:]
    masked = torch.zeros(b, 1, m, t, dtype=torch.bool, device=mel.device)
    if freq_masks:
        masked = masked | _bands(u, freq_masks, freq_width, m).view(b, 1, m, 1)
    if time_masks:
        masked = masked | _bands(u[:, 2 * freq_masks:], time_masks, time_width, t).view(b, 1, 1, t)
    return mel.masked_fill(masked, fill)
