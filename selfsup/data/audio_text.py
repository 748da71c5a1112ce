"""Audio-caption pairs for CLAP: the pairs, split, tokenizer and captions of image-text data (CaptionedPairs), with
each pair's sound as the objective's view(s) (AudioDataModule).

`data=audio_manifest`: a CSV, TSV or JSONL manifest of audio path + caption (+ optional label), in the layout of
AudioCaps and Clotho once listed that way; `data=asterisk` (data/asterisk.py) and `data=spoken_wordnet` build one.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from selfsup.data.audio import AudioDataModule, AudioFiles
from selfsup.data.image_text import CaptionedPairs, ManifestPairs
from selfsup.data.image_text_datasets import Captions, Pairs


class PairFields:
    """The caption tokens (and label index) of pair i: the fields an audio sample carries beside its waveform."""

    def __init__(self, pairs: Pairs, captions: Captions, classes: list[str] | None) -> None:
        self.captions = list(pairs.captions)
        self.tokens = captions
        index = {name: i for i, name in enumerate(classes or [])}
        self.targets = [index[name] for name in pairs.labels] if pairs.labels is not None and classes else None

    def __call__(self, i: int) -> dict[str, Any]:
        fields = self.tokens(self.captions[i])
        if self.targets is not None:
            fields["label"] = self.targets[i]
        return fields


class AudioTextDataModule(CaptionedPairs, AudioDataModule):
    """Audio-text pairs: each pair's sound as the objective's view(s), its caption as token ids."""

    modality = "audio-text"
    name = "audio_text"

    def class_names(self) -> list[str] | None:
        return CaptionedPairs.class_names(self)

    def load(self) -> tuple[Dataset, Dataset | None]:
        train, val = self.splits()
        classes, captions = self.class_names(), self.captions()
        make = lambda pairs: AudioFiles(pairs.paths, self.sample_rate,  # noqa: E731
                                        extras=PairFields(pairs, captions, classes))
        return make(train), (make(val) if len(val) else None)


class AudioTextManifest(ManifestPairs, AudioTextDataModule):
    """Audio-text pairs listed in a manifest: data.audio_key, data.caption_key, data.label_key name its columns."""

    name = "audio_manifest"
    what = "audio"

    def __init__(self, audio_key: str = "audio", **kwargs: Any) -> None:
        super().__init__(path_key=audio_key, **kwargs)
