"""Audio data: fixed-length clips decoded in the data workers, log-mel spectrograms and their views on the device.

Per sample, a worker decodes the file (soundfile), mixes it down to mono, resamples it to `sample_rate` (soxr) and
cuts each of the objective's views as a clip of `clip_seconds`: a random crop keyed by the sample for training
(each view its own, so two views of a sound are two moments of it, as BYOL-A), the centre for evaluation; shorter
sounds are padded with silence (data/audio_signal.py). On the device, each view becomes a log-mel spectrogram
(B, 1, n_mels, frames), normalised by `mel_mean` / `mel_std`, then takes its augmentation (`data.augment`: a random
gain, SpecAugment's frequency and time masks; data/spectrogram.py). Spectrograms are what audio backbones read,
so the same objectives train on audio as on images (MAE on spectrogram patches, SimCLR and BYOL on pairs of views).

Batches are dicts: one field per view of the objective, `label` where the source has labels, `index`, `key` and
`skipped` (an unreadable file is replaced by the next readable one and counted, with data.on_error=skip, as for
images). Evaluation batches hold the centre clip as `audio`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data.audio_signal import fit_length, read_audio
from selfsup.data.datamodule import KeyedDataModule
from selfsup.data.sampling import KeyedViews
from selfsup.data.spectrogram import LogMel, random_gain, spec_augment
from selfsup.data.text_datasets import holdout
from selfsup.errors import ConfigError, DataError
from selfsup.keyed_random import VIEW_STREAM, combine_int
from selfsup.modalities import AUDIO_INPUT_KEYS, clip_samples

AUDIO_KEY = "audio"  # the field of evaluation batches (kNN, probes, embeddings, zero-shot)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


@dataclass(frozen=True)
class AudioAugment:
    """`data.augment`: what each training view of a spectrogram takes. `gain_db`: a random gain in [-g, g] dB;
    `freq_masks` bands of up to `freq_width` mel bins and `time_masks` of up to `time_width` frames set to the mean
    (SpecAugment, Park et al. 2019); `random_crop`: each view's clip starts at a random moment (else the centre)."""

    random_crop: bool = True
    gain_db: float = 0.0
    freq_masks: int = 0
    freq_width: int = 0
    time_masks: int = 0
    time_width: int = 0

    @classmethod
    def parse(cls, spec: dict[str, Any] | None) -> "AudioAugment":
        spec = dict(spec or {})
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)} in data.augment; known: {sorted(known)}")
        augment = cls(**spec)
        counts = {k: getattr(augment, k) for k in ("freq_masks", "freq_width", "time_masks", "time_width")}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.augment.{name} must be a whole number of at least 0, got {value}")
        if not augment.gain_db >= 0:
            raise ConfigError(f"data.augment.gain_db must be at least 0, got {augment.gain_db}")
        return augment

    def describe(self) -> str:
        parts = ["random crops" if self.random_crop else "centre crops"]
        if self.gain_db:
            parts.append(f"gain +-{self.gain_db:g} dB")
        if self.freq_masks:
            parts.append(f"{self.freq_masks} frequency masks of <= {self.freq_width} bins")
        if self.time_masks:
            parts.append(f"{self.time_masks} time masks of <= {self.time_width} frames")
        return ", ".join(parts)


class AudioFiles(Dataset):
    """(waveform, label or fields) of file i, decoded and resampled; an unreadable file raises OSError (so that
    KeyedViews skips or names it, as it does an unreadable image). `extras(i)`: a dict of the sample's other fields
    (a caption's tokens), else `labels`."""

    def __init__(self, paths: Sequence[str], sample_rate: int, labels: Sequence[int] | None = None,
                 extras: Any = None) -> None:
        self.paths = list(paths)
        self.samples = [(path, None) for path in self.paths]  # lets errors name the file
        self.sample_rate = sample_rate
        self.targets = list(labels) if labels is not None else None
        self.extras = extras

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        try:
            wave = read_audio(self.paths[i], self.sample_rate)
        except DataError as e:
            raise OSError(str(e)) from None
        if self.extras is not None:
            return wave, self.extras(i)
        return wave, self.targets[i] if self.targets is not None else None


class Clip:
    """A view's clip of `length` samples: a random crop keyed by the sample and the view, or the centre."""

    def __init__(self, length: int, view: int, random_crop: bool) -> None:
        self.length = length
        self.view = view
        self.random_crop = random_crop

    def __call__(self, wave: np.ndarray, key: int) -> torch.Tensor:
        return fit_length(wave, self.length, combine_int(key, VIEW_STREAM + self.view) if self.random_crop else None)


class AudioDataModule(KeyedDataModule):
    """Subclasses implement `load()` -> (train dataset, validation dataset or None) of (waveform, label) pairs,
    e.g. AudioFiles."""

    modality = "audio"
    name = "audio"

    def __init__(self, batch_size: int = 64, sample_rate: int = 16000, clip_seconds: float = 1.28, n_mels: int = 64,
                 n_fft: int = 400, hop_length: int = 160, f_min: float = 0.0, f_max: float | None = None,
                 mel_mean: float = -30.0, mel_std: float = 20.0, augment: dict[str, Any] | None = None,
                 views: list[dict[str, Any]] | None = None, augment_on: str = "auto", **kwargs: Any) -> None:
        """`augment_on` is accepted for the config's sake: audio views are always made on the device, where a
        spectrogram costs a few batched passes."""
        super().__init__(batch_size=batch_size, **kwargs)
        if not sample_rate > 0 or not clip_seconds > 0:
            raise ConfigError(f"data.sample_rate and data.clip_seconds must be positive, got {sample_rate}, "
                              f"{clip_seconds}")
        if not mel_std > 0:
            raise ConfigError(f"data.mel_std must be positive, got {mel_std}")
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.mel_mean = float(mel_mean)
        self.mel_std = float(mel_std)
        self.logmel = LogMel(sample_rate=self.sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                             f_min=f_min, f_max=f_max)
        self.length = clip_samples(self.clip_seconds, self.sample_rate)
        if self.length < n_fft:
            raise ConfigError(f"data.clip_seconds={clip_seconds} is shorter than one STFT window (data.n_fft={n_fft} "
                              "samples); give longer clips")
        self.augment = AudioAugment.parse(augment)
        self.view_keys = [v["key"] for v in (views or [{"key": AUDIO_KEY}])]
        self._logmel_on: dict[torch.device, LogMel] = {}

    def load(self) -> tuple[Dataset, Dataset | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        train, val = self.load()
        self.base_sets = (train, val)
        views = {key: Clip(self.length, n, self.augment.random_crop) for n, key in enumerate(self.view_keys)}
        centre = {key: Clip(self.length, n, False) for n, key in enumerate(self.view_keys)}
        self.log_info(f"audio views ({', '.join(self.view_keys)}): {self.clip_seconds:g} s at {self.sample_rate} Hz, "
                      f"{self.n_mels} mel bins x {self.length // self.hop_length} frames; {self.augment.describe()}")
        has_val = val is not None and len(val) > 0
        val_set = KeyedViews(val, centre, self.seed, self.on_error, self.source) if has_val else None
        return KeyedViews(train, views, self.seed, self.on_error, self.source), val_set

    def eval_dataset(self, split: str) -> Dataset | None:
        """The centre clip of each sound as one `audio` field, with labels (and captions) where the source has them."""
        return self.keyed_base(split, {AUDIO_KEY: Clip(self.length, 0, False)})

    def class_names(self) -> list[str] | None:
        """The label names in label order, where the source has them (what zero-shot prompts are made of)."""
        self.setup()
        names = getattr(self, "classes", None)
        return [str(n) for n in names] if names else None

    # -- the device side ---------------------------------------------------------------------------------
    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, L) -> normalised log-mel spectrograms (B, 1, n_mels, frames)."""
        if wave.device not in self._logmel_on:
            self._logmel_on[wave.device] = self.logmel.to(wave.device)
        return (self._logmel_on[wave.device](wave) - self.mel_mean) / self.mel_std

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training batches: each view's spectrogram with its gain and masks (keyed by sample and view)."""
        a = self.augment
        for n, key in enumerate(self.view_keys):
            mel = self.spectrogram(batch[key])
            mel = random_gain(mel, batch.get("key"), n, a.gain_db / self.mel_std)
            batch[key] = spec_augment(mel, batch.get("key"), n, a.freq_masks, a.freq_width, a.time_masks,
                                      a.time_width, fill=0.0)
        return batch

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Evaluation and validation batches: spectrograms of every waveform field, no augmentation."""
        for key in dict.fromkeys([*self.view_keys, AUDIO_KEY]):
            if key in batch and batch[key].ndim == 2:
                batch[key] = self.spectrogram(batch[key])
        return batch

    def input_settings(self) -> dict[str, Any]:
        """What another audio data module needs to give a backbone trained on this one the same input."""
        return {key: getattr(self, key) for key in AUDIO_INPUT_KEYS}


def audio_files(folder: Path) -> list[Path]:
    """The audio files under a folder, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


class AudioFolder(AudioDataModule):
    """`root/train/<class>/*.wav` (or .flac, .ogg, .mp3) and optionally `root/val/<class>/...`, or `root/<class>/...`
    alone, whose `val_fraction` of the files are held out by a hash of their path below the root."""

    name = "audio_folder"

    def __init__(self, root: str | None = None, train_dir: str = "train", val_dir: str = "val",
                 val_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not root:
            raise ConfigError("data=audio_folder needs data.root=DIR, a folder with one sub-folder of sounds per class")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.val_fraction = val_fraction
        self.classes: list[str] = []

    def _files(self, folder: Path) -> tuple[list[Path], list[str]]:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        files = [(f, c) for c in classes for f in audio_files(folder / c)]
        if not files:
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}/<class>/; put them in one "
                            "sub-folder per class")
        return [f for f, _ in files], [c for _, c in files]

    def load(self) -> tuple[Dataset, Dataset | None]:
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder; point it at your sounds")
        train_path, val_path = self.root / self.train_dir, self.root / self.val_dir
        if train_path.is_dir():
            train, train_labels = self._files(train_path)
            val, val_labels = self._files(val_path) if val_path.is_dir() else ([], [])
        else:
            files, labels = self._files(self.root)
            held = holdout([str(f.relative_to(self.root)) for f in files], self.val_fraction)
            train = [f for f, h in zip(files, held) if not h]
            train_labels = [c for c, h in zip(labels, held) if not h]
            val = [f for f, h in zip(files, held) if h]
            val_labels = [c for c, h in zip(labels, held) if h]
        self.classes = sorted(set(train_labels) | set(val_labels))
        index = {c: i for i, c in enumerate(self.classes)}
        make = lambda files, labels: AudioFiles([str(f) for f in files], self.sample_rate,  # noqa: E731
                                                [index[c] for c in labels])
        return make(train, train_labels), (make(val, val_labels) if val else None)
