"""The tokenizer: training, caching and loading (tokenizer.json and BERT's vocab.txt), and bad files."""
from __future__ import annotations

import pytest
from helpers import STORY

from selfsup.data import tokenizer as tok
from selfsup.data.text_corpora import TextFiles
from selfsup.data_facts import TokenizerInfo
from selfsup.errors import ConfigError, DataError


def test_tokenizer_trains_once_caches_atomically_and_round_trips(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    trained, path = tok.cached_tokenizer({"corpus": 1}, lambda: iter(STORY), vocab_size=100, min_frequency=1,
                                         cache_dir=cache)
    assert path.parent == cache and path.suffix == ".json" and [p.name for p in cache.iterdir()] == [path.name]
    info = tok.token_ids_of(trained)
    assert info == TokenizerInfo.default(trained.get_vocab_size())  # [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4
    loaded = tok.load_tokenizer(path)
    for text in STORY:
        assert loaded.encode(text).ids == trained.encode(text).ids
    assert loaded.decode(loaded.encode(STORY[0]).ids) == STORY[0]

    monkeypatch.setattr(tok, "train_wordpiece", lambda *a, **k: pytest.fail("trained again despite the cache"))
    again, same = tok.cached_tokenizer({"corpus": 1}, lambda: iter(STORY), vocab_size=100, min_frequency=1,
                                       cache_dir=cache)
    assert same == path and again.to_str() == trained.to_str()
    # another corpus or other settings: another file
    assert tok.cache_key({"corpus": 2}, {"v": 100}) != tok.cache_key({"corpus": 1}, {"v": 100})
    assert tok.cache_key({"corpus": 1}, {"v": 101}) != tok.cache_key({"corpus": 1}, {"v": 100})


def test_same_tokenization_sees_vocabulary_and_lowercasing():
    trained = tok.train_wordpiece(STORY, vocab_size=80, min_frequency=1)
    cased = tok.bert_pipeline(tok.WordPiece(trained.get_vocab(), unk_token=tok.UNK), lowercase=False)
    assert tok.same_tokenization(trained, tok.train_wordpiece(STORY, vocab_size=80, min_frequency=1))
    assert not tok.same_tokenization(trained, tok.train_wordpiece(STORY, vocab_size=70, min_frequency=1))
    assert not tok.same_tokenization(trained, cased)


def test_training_is_deterministic():
    a, b = tok.train_wordpiece(STORY * 5, 150, min_frequency=1), tok.train_wordpiece(STORY * 5, 150, min_frequency=1)
    assert a.to_str() == b.to_str()


def test_bert_vocab_txt_loads_with_its_own_special_ids(tmp_path):
    words = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jump",
             "##s", "over", "lazy", "dog", "."]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    loaded = tok.load_tokenizer(vocab)
    info = tok.token_ids_of(loaded)
    assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id) == (0, 2, 3, 4, 5)
    assert info.vocab_size == len(words) and info.special_ids == (0, 2, 3, 4, 5)
    enc = loaded.encode("The quick fox JUMPS over the cat.", add_special_tokens=False)
    assert enc.tokens == ["the", "quick", "fox", "jump", "##s", "over", "the", "[UNK]", "."]
    assert tok.load_tokenizer(tmp_path).get_vocab() == loaded.get_vocab()  # a folder holding vocab.txt

    (tmp_path / "corpus.txt").write_text("the quick brown fox\nover the lazy dog.\n", encoding="utf-8")
    dm = TextFiles(root=str(tmp_path / "corpus.txt"), tokenizer={"path": str(tmp_path)}, mode="lines",
                   val_fraction=0.0, num_workers=0)
    dm.setup()
    assert dm.tokenizer_path == vocab and dm.tokenizer_info == info
    assert dm.train_set[(0, 1)]["input_ids"].tolist() == [3, 12, 6, 13, 14, 15, 4]  # [CLS] over the lazy dog . [SEP]


def test_bad_tokenizer_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        tok.load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=f"cannot read tokenizer {bad}"):
        tok.load_tokenizer(bad)
    no_mask = tmp_path / "vocab.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nword\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"has no \[MASK\] token"):
        tok.token_ids_of(tok.load_tokenizer(no_mask))
