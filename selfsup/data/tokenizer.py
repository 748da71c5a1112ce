"""WordPiece tokenizers (Hugging Face `tokenizers`): load one from a file, or train one on the corpus once and cache it.

Why a cache keyed by the corpus: training takes seconds to minutes and its result must be identical for every
process of a run and for a resumed run. The cached file's name is a hash of the corpus identity (its files' paths,
sizes and modification times, or a dataset fingerprint) and of the settings, so a changed corpus or vocabulary
size trains a new tokenizer, and the corpus itself may live on a read-only disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from selfsup.caches import cache_dir
from selfsup.data_facts import TokenizerInfo
from selfsup.errors import ConfigError, DataError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # a trained tokenizer gives them ids 0..4 in this order
FORMAT_VERSION = 1  # part of the cache key: bump when training changes


def default_cache_dir() -> Path:
    """$SELFSUP_CACHE/tokenizers, else $XDG_CACHE_HOME/selfsup/tokenizers, else ~/.cache/selfsup/tokenizers."""
    return cache_dir("tokenizers")


def token_ids_of(tokenizer: Tokenizer, source: str = "the tokenizer") -> TokenizerInfo:
    """The special-token ids and vocabulary size of a tokenizer; one lacking a BERT special token is refused."""
    ids = {}
    for token in SPECIAL_TOKENS:
        ids[token] = tokenizer.token_to_id(token)
        if ids[token] is None:
            raise ConfigError(f"{source} has no {token} token; BERT-MLM needs {', '.join(SPECIAL_TOKENS)} "
                              "(train one instead: drop data.tokenizer.path)")
    declared = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    return TokenizerInfo(tokenizer.get_vocab_size(), ids[PAD], ids[UNK], ids[CLS], ids[SEP], ids[MASK],
                         tuple(sorted(declared | set(ids.values()))))


def bert_pipeline(model: WordPiece, lowercase: bool) -> Tokenizer:
    """BERT's text handling around a WordPiece model: clean/lowercase/strip accents, split on spaces and punctuation."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def with_bert_template(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` whose encode() adds what training added by hand: `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`
    (segment ids 0 / 1). Training encodes with add_special_tokens=False, so only exported copies carry this, and
    `Tokenizer.from_file(...).encode(text)` then gives the token ids the model was trained on."""
    from tokenizers.processors import TemplateProcessing

    ids = {t: tokenizer.token_to_id(t) for t in (CLS, SEP)}
    tokenizer.post_processor = TemplateProcessing(single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
                                                  special_tokens=list(ids.items()))
    return tokenizer


def alphabet_of(texts: Iterable[str], normalizer: Any, limit: int) -> list[str]:
    """The `limit` most frequent characters after normalisation, ties broken by the character, sorted."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalizer.normalize_str(text))
    for space in " \t\n\r\f\v":
        counts.pop(space, None)
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8192, lowercase: bool = True,
                    min_frequency: int = 2, limit_alphabet: int = 1000, length: int | None = None) -> Tokenizer:
    """A WordPiece vocabulary learned from `texts`, with the special tokens first (ids 0..4). Deterministic.

    The `tokenizers` trainer numbers its alphabet (and the `##` forms of it) in hash-map order, and breaks ties
    between equally frequent merges by those numbers, so the same corpus could give another vocabulary on
    another run or machine. Fixing the alphabet and its `##` forms up front, in sorted order, makes every id
    and every tie-break the same everywhere: any process that trains on the corpus gets the same tokenizer.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"data.tokenizer.vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    tokenizer = bert_pipeline(WordPiece(unk_token=UNK, continuing_subword_prefix="##"), lowercase)
    alphabet = alphabet_of(texts, tokenizer.normalizer, limit_alphabet)
    fixed = [*SPECIAL_TOKENS, *("##" + c for c in alphabet)]  # numbered first, in this order
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=fixed,
                                        initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                        continuing_subword_prefix="##", show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return canonical(tokenizer, lowercase)


def canonical(trained: Tokenizer, lowercase: bool) -> Tokenizer:
    """The trained vocabulary in a fresh BERT pipeline: special tokens 0..4, then every other token sorted
    (WordPiece ids carry no meaning), and only the five special tokens declared special (the trainer also
    declared the fixed `##` alphabet, which must stay ordinary text)."""
    vocab = trained.get_vocab()
    rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    ids = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *rest])}
    tokenizer = bert_pipeline(WordPiece(ids, unk_token=UNK, continuing_subword_prefix="##"), lowercase)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # marks them special, so they are never split
    return tokenizer


def tokenizer_file(path: str | Path) -> Path:
    """The file a data.tokenizer.path names: itself, or a folder's tokenizer.json (else vocab.txt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / n for n in ("tokenizer.json", "vocab.txt") if (path / n).is_file()]
        if not found:
            raise ConfigError(f"data.tokenizer.path {path} holds neither tokenizer.json nor vocab.txt")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"data.tokenizer.path {path} does not exist; give a tokenizer.json or a BERT vocab.txt, "
                          "or drop it to train one on the corpus")
    return path


def load_tokenizer(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """A tokenizer.json (any Hugging Face tokenizer) or a BERT vocab.txt (one token per line), or a folder with one."""
    path = tokenizer_file(path)
    try:
        if path.suffix == ".json":
            return Tokenizer.from_file(str(path))
        tokenizer = bert_pipeline(WordPiece.from_file(str(path), unk_token=UNK), lowercase)
        tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is not None])
        return tokenizer
    except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
        raise DataError(f"cannot read tokenizer {path}: {' '.join(str(e).split())}; replace the file") from e


def cache_key(corpus_identity: Any, settings: dict[str, Any]) -> str:
    blob = json.dumps({"corpus": corpus_identity, "settings": settings, "version": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_atomic(tokenizer: Tokenizer, path: Path, replace: bool = False) -> None:
    """Write to a temporary file beside `path`, flush it to disk, and link it into place.

    The first writer wins (os.link refuses to overwrite), so processes training the same tokenizer at the
    same time all end up loading one and the same file, and a reader never sees a partial file. `replace`:
    the new file replaces an existing one instead (atomically, by rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tokenizer.to_str())
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def same_tokenization(a: Tokenizer, b: Tokenizer) -> bool:
    """The same vocabulary, text normalisation (e.g. lowercasing) and pre-tokenisation."""
    def pipeline(t: Tokenizer) -> tuple[Any, Any]:
        spec = json.loads(t.to_str())
        return spec.get("normalizer"), spec.get("pre_tokenizer")

    return a.get_vocab() == b.get_vocab() and pipeline(a) == pipeline(b)


def check_resumed_tokenizer(tokenizer: Tokenizer, kept: Path) -> None:
    """A resumed run must tokenize as the run it continues, whose tokenizer is `kept` (its RUN/tokenizer.json)."""
    if not same_tokenization(load_tokenizer(kept), tokenizer):
        raise ConfigError(f"the run this one resumes was trained with the tokenizer {kept}, and data.tokenizer gives "
                          "another; drop data.tokenizer.path to resume with the run's own, or start a new run_dir")


def cached_tokenizer(corpus_identity: Any, texts: Callable[[], Iterable[str]], vocab_size: int = 8192,
                     lowercase: bool = True, min_frequency: int = 2, cache_dir: str | Path | None = None,
                     num_texts: int | None = None) -> tuple[Tokenizer, Path]:
    """The tokenizer trained on this corpus with these settings: from the cache, else trained now and cached."""
    settings = {"vocab_size": vocab_size, "lowercase": lowercase, "min_frequency": min_frequency}
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = folder / f"{cache_key(corpus_identity, settings)}.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path)), path
        except Exception:  # damaged by hand: train again and replace it
            path.unlink(missing_ok=True)
    tokenizer = train_wordpiece(texts(), vocab_size, lowercase, min_frequency, length=num_texts)
    try:
        save_atomic(tokenizer, path)
    except OSError as e:
        raise ConfigError(f"cannot write the tokenizer cache {folder}: {e.strerror or e}; set "
                          "data.tokenizer.cache_dir to a writable folder") from e
    return Tokenizer.from_file(str(path)), path


def tokenizer_settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """data.tokenizer with defaults: path (a tokenizer.json or vocab.txt; null: train on the corpus), vocab_size,
    lowercase, min_frequency, cache_dir."""
    out = {"path": None, "vocab_size": 8192, "lowercase": True, "min_frequency": 2, "cache_dir": None}
    unknown = set(cfg or {}) - set(out)
    if unknown:
        raise ConfigError(f"unknown data.tokenizer keys {sorted(unknown)}; known: {sorted(out)}")
    out.update(cfg or {})
    return out


def resolve_tokenizer(settings: dict[str, Any], corpus: Callable[[], tuple[Any, Callable[[], Iterable[str]], int]]
                      ) -> tuple[Tokenizer, Path, TokenizerInfo]:
    """(tokenizer, its file, its ids) for data.tokenizer `settings`: the file at `path`, else the one trained on the
    corpus (cached). `corpus()` -> (identity, texts, number of texts) is only called when training is needed."""
    if settings["path"]:
        path = tokenizer_file(settings["path"])
        tokenizer = load_tokenizer(path, settings["lowercase"])
    else:
        identity, texts, n = corpus()
        tokenizer, path = cached_tokenizer(identity, texts, vocab_size=settings["vocab_size"],
                                           lowercase=settings["lowercase"], min_frequency=settings["min_frequency"],
                                           cache_dir=settings["cache_dir"], num_texts=n)
    try:  # "[MASK]" written in a document is text, not the mask token (tokenizers >= 0.15.1)
        tokenizer.encode_special_tokens = True
    except AttributeError:
        pass
    return tokenizer, path, token_ids_of(tokenizer, f"tokenizer {path}")


class Tokenized:
    """For data modules with a tokenizer (text, image-text): `data.tokenizer.path`, else WordPiece trained once on
    `tokenizer_corpus()` and cached. Objectives read its ids from `tokenizer_info`. Mixed into a data module, whose
    `log_info` reports the tokenizer once it is resolved."""

    tokenizer_cfg: dict[str, Any]
    tokenizer_path: Any = None
    _tokenizer: Any = None
    _info: TokenizerInfo | None = None
    log_info: Callable[[str], None]  # the data module's (data/datamodule.py)

    def tokenizer_corpus(self) -> tuple[Any, Callable[[], Iterable[str]], int | None]:  # pragma: no cover
        """(identity for the cache key, the training texts, their number): read only when training is needed."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer`, loaded or trained once."""
        if self._tokenizer is None:
            self._tokenizer, self.tokenizer_path, self._info = resolve_tokenizer(self.tokenizer_cfg,
                                                                                 self.tokenizer_corpus)
            self.log_info(f"tokenizer: {self.tokenizer_path} ({self._info.vocab_size} tokens)")
        return self._tokenizer

    @property
    def tokenizer_info(self) -> TokenizerInfo:
        self.tokenizer
        return self._info
