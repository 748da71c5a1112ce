"""PANNs' CNN14 (Kong et al. 2020): the standard convolutional audio-tagging network, on log-mel spectrograms.

Six VGG-like blocks halve both axes five times; the embedding pools frequency by its mean and time by max + mean, as
PANNs, so sounds that are short against the clip still show. Input (B, 1, n_mels, frames), mel bins first (PANNs
feeds (B, 1, frames, mels); the axes are swapped here, the computation is the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.audio_vit import audio_input_frames
from selfsup.errors import ConfigError

DOWNSAMPLE = 32  # five 2x2 poolings


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias: BatchNorm follows), each BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class CNN14(nn.Module):
    """CNN14 without its AudioSet classifier: features (B, 32 * width) from fc1 + ReLU (PANNs' embedding).

    `width`: the first block's channels (PANNs: 64; the blocks have 1, 2, 4, 8, 16, 32 times that); a small
    width gives a CPU-sized network of the same shape.
    """

    modality = "audio"
    in_chans = 1

    def __init__(self, n_mels: int = 64, clip_seconds: float = 1.28, sample_rate: int = 16000, hop_length: int = 160,
                 width: int = 64) -> None:
        super().__init__()
        frames = audio_input_frames(n_mels, clip_seconds, sample_rate, hop_length)
        if n_mels < DOWNSAMPLE:
            raise ConfigError(f"CNN14 pools the mel axis {DOWNSAMPLE}x, and data.n_mels is {n_mels}; use at least "
                              f"{DOWNSAMPLE} mel bins (PANNs: 64)")
        if frames < DOWNSAMPLE:
            raise ConfigError(f"CNN14 pools the time axis {DOWNSAMPLE}x, and data.clip_seconds {clip_seconds} s gives "
                              f"{frames} frames; lengthen the clip to at least {DOWNSAMPLE} frames "
                              f"({DOWNSAMPLE * hop_length / sample_rate:g} s)")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"backbone.width must be a positive whole number (PANNs: 64), got {width}")
        self.n_mels = n_mels
        self.clip_seconds = clip_seconds
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.frames = frames
        self.img_size = (n_mels, frames)  # the input's (height, width), as for the ViTs
        self.width = width
        self.bn0 = nn.BatchNorm2d(n_mels)
        channels = [1] + [width * 2**i for i in range(6)]
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.fc1 = nn.Linear(32 * width, 32 * width)
        for m in self.modules():  # PANNs' init_layer / init_bn
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        return 32 * self.width

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrograms (B, 1, n_mels, T) -> embeddings (B, 32 * width); T may differ from `frames`."""
        if mel.shape[2] != self.n_mels:
            raise ConfigError(f"CNN14 was built for {self.n_mels} mel bins and got spectrograms of {mel.shape[2]}; "
                              "give it data with its data.n_mels")
        x = self.bn0(mel.transpose(1, 2)).transpose(1, 2)  # each mel bin normalised on its own, as PANNs
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = F.avg_pool2d(x, kernel_size=2)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=2)  # over frequency: (B, C, T')
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))
