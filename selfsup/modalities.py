"""The modalities selfsup trains on, and which inputs each kind of model reads: one place for the rules that the
config checks, evaluation and the monitors share.

Images and audio reach models as the same kind of input, a (B, C, H, W) float tensor: audio as its log-mel
spectrogram (one channel, mel bins x frames), computed on the device by the audio data module. `X-text` data is
X paired with captions (CLIP, CLAP); a model of X also reads the X of such pairs.
"""
from __future__ import annotations

from typing import Any

MODALITIES = ("image", "text", "image-text", "audio", "audio-text")
GRID_MODALITIES = ("image", "audio")  # inputs are (B, C, H, W) tensors
PAIRED_MODALITIES = ("image-text", "audio-text")


# What makes two audio data configs give a backbone the same input (evaluation copies them onto other audio data;
# exports record them): the clips and their log-mel spectrograms.
AUDIO_INPUT_KEYS = ("sample_rate", "clip_seconds", "n_mels", "n_fft", "hop_length", "f_min", "f_max", "mel_mean",
                    "mel_std")


def clip_samples(clip_seconds: float, sample_rate: int) -> int:
    """The samples of an audio clip."""
    return round(clip_seconds * sample_rate)


def spectrogram_frames(clip_seconds: float, sample_rate: int, hop_length: int) -> int:
    """The frames of a clip's log-mel spectrogram (samples // hop: data/spectrogram.py drops the last centred frame),
    which audio backbones are sized by."""
    return clip_samples(clip_seconds, sample_rate) // hop_length


def accepted(declared: Any) -> tuple[str, ...]:
    """An objective's declared modality as the tuple of those it accepts: objectives that train on several (MAE,
    SimCLR, BYOL on images and audio) declare a tuple, the others one name."""
    if not declared:
        return ()
    return (declared,) if isinstance(declared, str) else tuple(declared)


def with_text(modality: str) -> str:
    """The pairs of `modality` with captions: image -> image-text."""
    return f"{modality}-text"


def without_text(modality: str) -> str:
    """What a model of paired data embeds beside text: image-text -> image."""
    return modality.removesuffix("-text")


def reads(model: str, data: str) -> bool:
    """Whether a model (or objective) of modality `model` trains on data of modality `data`: its own, or the X of
    X-text pairs (an image objective on the images of image-text data)."""
    return data in (model, with_text(model))


def evaluates_on(model: str, data: str) -> bool:
    """Whether evaluation can run a model of modality `model` on data of modality `data`: what it reads, and for a
    dual encoder (image-text, audio-text) also plain labelled X, which it classifies zero-shot."""
    return reads(model, data) or (model in PAIRED_MODALITIES and data == without_text(model))
