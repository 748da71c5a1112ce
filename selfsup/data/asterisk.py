"""Asterisk's recorded prompts (Debian's asterisk-core-sounds-en-wav + asterisk-core-sounds-en): 568 English voice
prompts of one speaker, each with its transcript, e.g. `agent-loginok: Agent logged in.`; the -fr, -es, -it and -ru
packages add other languages (`data.languages=[en,fr]`).

What it is good for: an offline audio-text set that needs nothing but `apt-get`, to check that a CLAP or AudioMAE
run trains, evaluates and exports end to end, and zero-shot classification of spoken words. Its limits: one
speaker, 8 kHz telephone audio (resampled), speech only (no environmental sound, music or noise), 568 clips.

`data.subset=all` (default): every prompt, captioned by its transcript, labelled by its folder (digits, letters,
phonetic, ... and `prompts` for the top level); `val_fraction` held out by a hash of the file name.
`data.subset=words`: the spoken digits 0-9 and letters a-z (36 clips), labelled by the word itself ("zero", "a"):
an evaluation set for zero-shot ("the spoken word {}"), where both splits hold every clip.
The manifests (train.jsonl, val.jsonl) are written once into a cache folder keyed by the installed files.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import string
from pathlib import Path
from typing import Any, Sequence

from selfsup.data.audio_text import AudioTextManifest
from selfsup.data.image_text import PreparedManifests
from selfsup.data.openclipart_prepare import write_jsonl_atomic
from selfsup.data.text_datasets import holdout
from selfsup.data.tokenizer import default_cache_dir
from selfsup.errors import ConfigError, DataError

SOUNDS = Path("/usr/share/asterisk/sounds")
TRANSCRIPTS = Path("/usr/share/doc")
SUBSETS = ("all", "words")
WORDS = [f"digits/{d}" for d in range(10)] + [f"letters/{c}" for c in string.ascii_lowercase]
FORMAT_VERSION = 1


def transcript_file(language: str, transcripts: Path = TRANSCRIPTS) -> Path:
    return transcripts / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"


def read_transcripts(path: Path) -> dict[str, str]:
    """{sound name: transcript} of a core-sounds-LANG.txt.gz (`name: text` lines; `;` starts a comment)."""
    if not path.is_file():
        raise DataError(f"no transcripts at {path}; apt-get install -y {path.parent.name}")
    out = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and text.strip():
                out[name.strip()] = text.strip()
    return out


def rows_of(language: str, subset: str, sounds: Path = SOUNDS, transcripts: Path = TRANSCRIPTS) -> list[dict]:
    """{audio, caption, label, name} of every transcribed recording of `language`."""
    folder = sounds / language
    if not folder.is_dir():
        raise DataError(f"no asterisk sounds at {folder}; apt-get install -y asterisk-core-sounds-{language}-wav "
                        f"asterisk-core-sounds-{language}")
    texts = read_transcripts(transcript_file(language, transcripts))
    rows = []
    for name in (WORDS if subset == "words" else sorted(texts)):
        audio = folder / f"{name}.wav"
        if not audio.is_file() or name not in texts:
            continue
        parts = name.split("/")
        label = texts[name] if subset == "words" else (parts[0] if len(parts) > 1 else "prompts")
        rows.append({"audio": str(audio), "caption": texts[name], "label": label, "name": f"{language}/{name}"})
    return rows


def prepare(out: Path, languages: Sequence[str], subset: str, val_fraction: float, sounds: Path = SOUNDS,
            transcripts: Path = TRANSCRIPTS) -> tuple[Path, Path]:
    """Write out/train.jsonl and out/val.jsonl (atomically); returns both paths."""
    rows = [row for language in languages for row in rows_of(language, subset, sounds, transcripts)]
    if not rows:
        raise DataError(f"no transcribed asterisk recordings for {list(languages)} under {sounds}")
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "val.jsonl"
    if subset == "words":  # an evaluation set: every clip in both splits
        for path in paths:
            write_jsonl_atomic(path, rows)
        return paths
    held = holdout([row["name"] for row in rows], val_fraction)
    for path, keep in zip(paths, (False, True)):
        write_jsonl_atomic(path, [row for row, h in zip(rows, held) if h == keep])
    return paths


class Asterisk(PreparedManifests, AudioTextManifest):
    """The asterisk prompts of `languages`, prepared on first use (see the module docstring)."""

    name = "asterisk"
    # Zero-shot prompts are the word alone, as the captions (transcripts: "zero", "Agent logged in.") read it: a CLAP
    # run trained on them does not yet read "the spoken word zero." as "zero" (at chance after 10 epochs; 6% /
    # 31% top-1 / top-5 with the word alone, 36 classes).
    prompt_templates = ("{}",)

    def __init__(self, languages: Sequence[str] = ("en",), subset: str = "all", sounds: str | None = None,
                 cache_dir: str | None = None, val_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(label_key="label", val_fraction=val_fraction, **kwargs)
        if subset not in SUBSETS:
            raise ConfigError(f"data.subset must be one of {SUBSETS}, got '{subset}'")
        if isinstance(languages, str) or not languages:
            raise ConfigError(f"data.languages must be a list of language codes such as [en, fr], got {languages}")
        self.languages = [str(language) for language in languages]
        self.subset = subset
        self.sounds = Path(sounds).expanduser() if sounds else SOUNDS
        self.cache_dir = cache_dir

    @property
    def source(self) -> str:
        return f"{self.name} ({', '.join(self.languages)}, {self.subset})"

    def cache_folder(self) -> Path:
        """Keyed by the installed files (count and newest modification time per language), subset and split."""
        stats = []
        for language in self.languages:
            files = [p.stat() for p in (self.sounds / language).glob("**/*.wav")]
            stats.append([language, len(files), max((s.st_mtime_ns for s in files), default=0)])
        key = json.dumps([str(self.sounds), stats, self.subset, self.val_fraction, FORMAT_VERSION])
        base = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir().parent / "asterisk"
        return base / hashlib.sha256(key.encode()).hexdigest()[:16]

    def prepare(self, folder: Path) -> tuple[Path, Path]:
        return prepare(folder, self.languages, self.subset, self.val_fraction, self.sounds)
