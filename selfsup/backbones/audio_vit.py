"""Audio Spectrogram Transformer (Gong et al. 2021): a ViT on log-mel spectrograms (B, 1, n_mels, frames).

The spectrogram is a one-channel picture of mel bins x frames, so the ViT needs only a rectangular patch grid;
patchify, MAE's visible-patch encoder and the sin-cos positions then work unchanged (AudioMAE trains it so).
"""
from __future__ import annotations

from selfsup.backbones.vit import ViT, auto_patch_size
from selfsup.errors import ConfigError
from selfsup.modalities import spectrogram_frames


def audio_input_frames(n_mels: int, clip_seconds: float, sample_rate: int, hop_length: int) -> int:
    """The checked spectrogram shape's frame count: audio backbones are sized from the data keys, so bad keys must
    fail here, naming them, rather than as a shape error inside the network."""
    for key, value in (("n_mels", n_mels), ("sample_rate", sample_rate), ("hop_length", hop_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key} must be a positive whole number, got {value}")
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or not clip_seconds > 0:
        raise ConfigError(f"data.clip_seconds must be a positive number of seconds, got {clip_seconds}")
    frames = spectrogram_frames(clip_seconds, sample_rate, hop_length)
    if frames < 1:
        raise ConfigError(f"data.clip_seconds {clip_seconds} s is shorter than one hop ({hop_length} samples at "
                          f"{sample_rate} Hz); lengthen it")
    return frames


class AudioViT(ViT):
    """A timm ViT on log-mel spectrograms: img_size = (n_mels, frames), one input channel.

    `forward(mel)` gives pooled features (B, D); forward_tokens, encode_patches, patchify and unpatchify are the
    ViT's on the (n_mels / p) x (frames / p) grid. Clips of another length still run (their own sin-cos grid).
    The data keys are kept as attributes, so that evaluation can fit other audio data to the pretraining input.
    """

    modality = "audio"

    def __init__(self, name: str = "vit_tiny_patch16_224", n_mels: int = 64, clip_seconds: float = 1.28,
                 sample_rate: int = 16000, hop_length: int = 160, patch_size: int | str = "auto", in_chans: int = 1,
                 **vit_kwargs) -> None:
        """`vit_kwargs`: the ViT's options (pos_embed, pool, registers, ...) and timm's (depth, embed_dim)."""
        frames = audio_input_frames(n_mels, clip_seconds, sample_rate, hop_length)
        shape = f"{n_mels} mel bins x {frames} frames ({clip_seconds} s at {sample_rate} Hz, hop {hop_length})"
        if patch_size == "auto":
            try:
                patch_size = auto_patch_size((n_mels, frames))
            except ConfigError as e:
                raise ConfigError(f"no patch size in (16, 8, 4, 2) divides spectrograms of {shape}; make data.n_mels "
                                  "and the frame count multiples of 8 (data.clip_seconds), or set backbone.patch_size"
                                  ) from e
        if n_mels % int(patch_size) or frames % int(patch_size):
            raise ConfigError(f"backbone.patch_size {patch_size} does not divide spectrograms of {shape}; set "
                              "backbone.patch_size to 'auto' or a common divisor, or change data.n_mels or "
                              "data.clip_seconds")
        super().__init__(name, img_size=(n_mels, frames), patch_size=patch_size, in_chans=in_chans, **vit_kwargs)
        self.n_mels = n_mels
        self.clip_seconds = clip_seconds
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.frames = frames
