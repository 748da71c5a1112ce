"""Spoken WordNet: WordNet glosses (the text modality's corpus, data/wordnet.py) read aloud by espeak-ng, captioned
by their text and labelled by their topic (45 lexicographer files: noun.animal, verb.motion, ...).

Made once and cached: `num_glosses` definitions spread over the corpus, each spoken by one of `voices` at one of
`speeds` (words per minute), cycling deterministically, so the same settings always give the same files. espeak-ng
is a formant synthesiser: robotic speech, a few voices, no noise, no overlap. What it is good for: a larger
audio-text set than the asterisk prompts (thousands of captions, a label per clip for kNN and probes, several
voices) made offline in a minute; its limits: synthetic speech only, nothing like environmental sound or music,
and a model can learn the synthesiser's artefacts. Install with `apt-get install -y espeak-ng wordnet-base`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from selfsup.data.audio_text import AudioTextManifest
from selfsup.data.image_text import PreparedManifests
from selfsup.data.openclipart_prepare import write_jsonl_atomic
from selfsup.data.text_datasets import file_identity, holdout
from selfsup.data.tokenizer import default_cache_dir
from selfsup.data.wordnet import LEXNAMES, locate, read_data_file, split_gloss
from selfsup.errors import ConfigError, DataError

FORMAT_VERSION = 1


def espeak() -> str:
    """The espeak-ng executable, or a DataError saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError("data=spoken_wordnet needs espeak-ng; apt-get install -y espeak-ng")
    return path


def chosen_glosses(root: str | None, count: int) -> list[tuple[str, str]]:
    """(definition, topic) of `count` glosses spread evenly over the corpus (its order: part of speech, topic)."""
    glosses = [g for path in locate(root) for g in read_data_file(path)]
    step = max(1, len(glosses) // count)
    picked = glosses[::step][:count]
    return [(split_gloss(g.text)[0], LEXNAMES[g.lexfile]) for g in picked]


def synthesize(binary: str, text: str, voice: str, speed: int, out: Path) -> None:
    """One WAV file, written under a temporary name and renamed: a killed run leaves no half-written file."""
    tmp = out.with_name(f".{out.name}.tmp")
    result = subprocess.run([binary, "-v", voice, "-s", str(speed), "-w", str(tmp), "--", text],
                            capture_output=True, text=True, timeout=60)
    if result.returncode or not tmp.is_file():
        raise DataError(f"espeak-ng failed on voice {voice}: {result.stderr.strip() or result.returncode}; check "
                        "data.voices (espeak-ng --voices lists them)")
    os.replace(tmp, out)


def prepare(folder: Path, glosses: list[tuple[str, str]], voices: Sequence[str], speeds: Sequence[int],
            val_fraction: float) -> tuple[Path, Path]:
    """Speak every gloss into folder/wav/ (in parallel: espeak-ng is one process per clip), then write the
    manifests, last: their presence marks a complete cache."""
    binary = espeak()
    wav = folder / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = []
    for i, (text, topic) in enumerate(glosses):
        voice, speed = voices[i % len(voices)], speeds[(i // len(voices)) % len(speeds)]
        path = wav / f"{i:05d}.wav"
        rows.append({"audio": str(path), "caption": text, "label": topic, "voice": voice, "speed": speed})
        if not path.is_file():
            jobs.append((text, voice, speed, path))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: synthesize(binary, *job), jobs))
    held = holdout([row["caption"] for row in rows], val_fraction)
    paths = folder / "train.jsonl", folder / "val.jsonl"
    for path, keep in zip(paths, (False, True)):
        write_jsonl_atomic(path, [row for row, h in zip(rows, held) if h == keep])
    return paths


class SpokenWordNet(PreparedManifests, AudioTextManifest):
    """WordNet glosses spoken by espeak-ng (see the module docstring), prepared on first use."""

    name = "spoken_wordnet"

    def __init__(self, num_glosses: int = 2000, voices: Sequence[str] = ("en-us", "en-gb", "en-gb-scotland"),
                 speeds: Sequence[int] = (140, 175), wordnet_root: str | None = None, cache_dir: str | None = None,
                 val_fraction: float = 0.05, **kwargs: Any) -> None:
        super().__init__(label_key="label", val_fraction=val_fraction, **kwargs)
        if isinstance(num_glosses, bool) or not isinstance(num_glosses, int) or num_glosses < 2:
            raise ConfigError(f"data.num_glosses must be a whole number of at least 2, got {num_glosses}")
        if isinstance(voices, str) or not voices or isinstance(speeds, (str, int)) or not speeds:
            raise ConfigError(f"data.voices and data.speeds must be non-empty lists, got {voices}, {speeds}")
        if any(not 80 <= int(s) <= 450 for s in speeds):
            raise ConfigError(f"data.speeds are words per minute in [80, 450], got {list(speeds)}")
        self.num_glosses = num_glosses
        self.voices = [str(v) for v in voices]
        self.speeds = [int(s) for s in speeds]
        self.wordnet_root = wordnet_root
        self.cache_dir = cache_dir

    @property
    def source(self) -> str:
        return f"{self.name} ({self.num_glosses} glosses, voices {', '.join(self.voices)})"

    def cache_folder(self) -> Path:
        """Keyed by the WordNet files, the settings and the espeak-ng version."""
        version = subprocess.run([espeak(), "--version"], capture_output=True, text=True).stdout.strip()
        key = json.dumps([file_identity(locate(self.wordnet_root)), self.num_glosses, self.voices, self.speeds,
                          self.val_fraction, version, FORMAT_VERSION])
        base = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir().parent / "spoken_wordnet"
        return base / hashlib.sha256(key.encode()).hexdigest()[:16]

    def prepare(self, folder: Path) -> tuple[Path, Path]:
        self.log_info(f"spoken_wordnet: speaking {self.num_glosses} glosses into {folder} (once)")
        return prepare(folder, chosen_glosses(self.wordnet_root, self.num_glosses), self.voices, self.speeds,
                       self.val_fraction)
