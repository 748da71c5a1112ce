"""WordNet 3.0 glosses (Debian's `wordnet-base`) as a small text corpus with 45 labels.

Each synset line of data.noun, data.verb, data.adj and data.adv ends in ` | gloss`: a definition and example
sentences separated by `;`. The gloss is one document; its lexicographer file (the line's second field, 0..44,
e.g. noun.animal, verb.motion) is its label, a topic classification task for probing text features. The data
files hold each lexicographer file's synsets in one run, so next-sentence pairs take a lexicographer file's
glosses as one long document: B is the next gloss (or gloss part) of the same topic, or one of another topic.
117,659 glosses, about 1.46M words: big enough to pretrain a small BERT, small enough for a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from selfsup.data.text_corpora import TextDataModule
from selfsup.data.text_datasets import Corpus, file_identity
from selfsup.errors import DataError

DEBIAN_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")
INSTALL = "apt-get install -y wordnet-base"

# The lexicographer files, in number order (WordNet's lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


@dataclass(frozen=True)
class Gloss:
    offset: str  # the synset's byte offset in its file: with the part of speech, the synset's identity
    lexfile: int  # index into LEXNAMES
    text: str


def parse_line(line: str) -> Gloss:
    """One data-file line: `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`. ValueError if malformed."""
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 4:
        raise ValueError("no ' | gloss' after the synset fields")
    if not (fields[0].isdigit() and len(fields[1]) == 2 and fields[1].isdigit()):
        raise ValueError(f"bad offset or lexicographer file number {fields[:2]}")
    lexfile = int(fields[1])
    if lexfile >= len(LEXNAMES):
        raise ValueError(f"lexicographer file number {lexfile} is not in 0..{len(LEXNAMES) - 1}")
    return Gloss(fields[0], lexfile, gloss.strip())


def read_data_file(path: Path) -> list[Gloss]:
    """All glosses of one data.<pos> file; the license header (lines starting with two spaces) is skipped."""
    glosses = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue
                try:
                    glosses.append(parse_line(line))
                except ValueError as e:
                    raise DataError(f"{path} is corrupt at line {number} ({e}); reinstall it with "
                                    f"`apt-get install --reinstall -y wordnet-base`") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); reinstall it with "
                        f"`apt-get install --reinstall -y wordnet-base`") from None
    if not glosses:
        raise DataError(f"{path} holds no synset line; reinstall it with `apt-get install --reinstall -y wordnet-base`")
    return glosses


def locate(root: str | Path | None = None, parts: tuple[str, ...] = PARTS) -> list[Path]:
    """The data files, from `root` or Debian's location; DataError naming what is missing and how to get it."""
    folder = Path(root).expanduser() if root else DEBIAN_DIR
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise DataError(f"data.parts must be a non-empty subset of {list(PARTS)}, got {list(parts)}")
    files = [folder / f"data.{p}" for p in parts]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"WordNet not found: {folder} lacks {', '.join(missing)}; run `{INSTALL}`, "
                        f"or set data.root=DIR holding WordNet's data.noun, data.verb, data.adj and data.adv")
    return files


def split_gloss(text: str) -> list[str]:
    """A gloss's definition and examples: split at `;` outside double quotes (the sentences NSP pairs)."""
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


class WordNet(TextDataModule):
    """WordNet glosses: one document per gloss with its lexicographer file as `label` (45 classes)."""

    name = "wordnet"
    classes = LEXNAMES

    def __init__(self, root: str | None = None, parts: Sequence[str] = PARTS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.parts = tuple(parts)

    @property
    def source(self) -> str:
        return f"wordnet ({self.root or DEBIAN_DIR})"

    def read_corpus(self) -> Corpus:
        files = locate(self.root, self.parts)
        glosses = [g for path in files for g in read_data_file(path)]
        return Corpus([g.text for g in glosses], [g.lexfile for g in glosses], {"wordnet": file_identity(files)},
                      segments=split_gloss, passages=True, classes=LEXNAMES)
