"""Text: tokenizer training, caching and loading; WordNet, text-file and Hugging Face corpora; the text backbone."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import ROOT, assert_same_last_checkpoint, run_train, train_whole_and_resumed
from selfsup.backbones.text import TextTransformer
from selfsup.data import tokenizer as tok
from selfsup.data import wordnet
from selfsup.data.text import HFText, TextFiles
from selfsup.data.text_datasets import holdout, truncate_pair
from selfsup.data.wordnet import LEXNAMES, WordNet, split_gloss
from selfsup.errors import ConfigError, DataError
from selfsup.token_ids import TokenizerInfo

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STORY = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine.",
    "all that glitters is not gold.",
    "the early bird catches the worm. the second mouse gets the cheese.",
    "actions speak louder than words.",
    "better late than never. never say never.",
]


def small_module(tmp_path: Path, **kw) -> TextFiles:
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text("\n".join(STORY * 3) + "\n", encoding="utf-8")
    kw.setdefault("tokenizer", {"vocab_size": 120, "min_frequency": 1, "cache_dir": str(tmp_path / "cache")})
    kw.setdefault("val_fraction", 0.0)
    return TextFiles(root=str(path), num_workers=0, batch_size=4, **kw)


# -- tokenizer -------------------------------------------------------------------------------------------------
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


# -- WordNet ---------------------------------------------------------------------------------------------------
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University.  \n"
NOUNS = [
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is perceived "
    "or known or inferred to have its own distinct existence (living or nonliving)  ",
    "01322604 05 n 01 young_mammal 0 002 @ 01321579 n 0000 ~ 01323068 n 0000 | any immature mammal  ",
    "00003993 03 n 01 congener 0 001 @ 00003553 n 0000 | a whole (a thing or person) of the same kind; \"lard was "
    "also used, though its congener; butter, was more frequently employed\"; \"a second example\"  ",
]
VERB = ("01835496 38 v 01 travel 0 001 @ 01831531 v 0000 01 + 01 00 | change location; move, travel, or proceed; "
        "\"How fast does your new car go?\"  ")


def write_wordnet(folder: Path, nouns: list[str] = NOUNS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.noun").write_text(HEADER + "\n".join(nouns) + "\n", encoding="utf-8")
    (folder / "data.verb").write_text(HEADER + VERB + "\n", encoding="utf-8")
    for part in ("adj", "adv"):
        (folder / f"data.{part}").write_text(HEADER, encoding="utf-8")
    return folder


def test_wordnet_lines_give_glosses_and_lexicographer_labels(tmp_path):
    root = write_wordnet(tmp_path / "wn")
    glosses = wordnet.read_data_file(root / "data.noun")
    assert [g.lexfile for g in glosses] == [3, 5, 3] and LEXNAMES[5] == "noun.animal"
    assert glosses[1].text == "any immature mammal" and glosses[0].offset == "00001740"
    assert split_gloss(glosses[2].text) == [
        "a whole (a thing or person) of the same kind",
        '"lard was also used, though its congener; butter, was more frequently employed"', '"a second example"']
    dm = WordNet(root=str(root), parts=["noun", "verb"], num_workers=0, val_fraction=0.0,
                 tokenizer={"vocab_size": 200, "min_frequency": 1, "cache_dir": str(tmp_path / "cache")})
    corpus = dm.corpus
    assert corpus.labels == [3, 5, 3, 38] and LEXNAMES[38] == "verb.motion" and len(LEXNAMES) == 45
    dm.setup()
    sample = dm.train_set[(0, 3)]
    assert sample["label"] == 38 and sample["input_ids"][0] == 2 and sample["input_ids"][-1] == 3


def test_wordnet_problems_are_one_line_with_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"lacks data.noun, data.verb.*apt-get install -y wordnet-base"):
        WordNet(root=str(tmp_path / "absent"), num_workers=0).corpus
    root = write_wordnet(tmp_path / "bad", nouns=[NOUNS[0], "00001930 03 n 01 physical_entity 0 000 no gloss here"])
    with pytest.raises(DataError, match=r"data.noun is corrupt at line 4 .*--reinstall -y wordnet-base") as e:
        WordNet(root=str(root), num_workers=0).corpus
    assert "\n" not in str(e.value)
    empty = write_wordnet(tmp_path / "empty")
    (empty / "data.noun").write_text(HEADER, encoding="utf-8")
    with pytest.raises(DataError, match="holds no synset line"):
        WordNet(root=str(empty), num_workers=0).corpus


@pytest.mark.skipif(not (wordnet.DEBIAN_DIR / "data.noun").is_file(), reason="apt-get install -y wordnet-base")
def test_real_wordnet_has_117659_glosses_in_45_classes():
    corpus = WordNet(num_workers=0).corpus
    assert len(corpus.texts) == 117_659 and sorted(set(corpus.labels)) == list(range(45))
    assert all(t and "|" not in t for t in corpus.texts[:1000])
    val = holdout(corpus.texts, 0.01)
    assert 0.008 < val.mean() < 0.012  # about 1% held out, the same on every run


# -- text files, datasets and samples ----------------------------------------------------------------------------
def test_lines_mode_pads_per_batch_and_truncates(tmp_path):
    dm = small_module(tmp_path, mode="lines", max_length=16)
    dm.setup()
    by_length = {len(dm.train_set[(0, i)]["input_ids"]): i for i in range(len(dm.train_set))}
    assert len(by_length) >= 2, "the test corpus needs lines of different lengths"
    samples = [dm.train_set[(0, i)] for i in sorted(by_length.values())[:4]]
    assert all(s["input_ids"][0] == 2 and s["input_ids"][-1] == 3 and len(s["input_ids"]) <= 16 for s in samples)
    assert max(by_length) == 16  # long lines are truncated
    batch = dm.collate(samples)
    longest = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape[1] == min(16, -(-longest // 8) * 8)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [len(s["input_ids"]) for s in samples]
    pad = batch["input_ids"].masked_select(batch["attention_mask"] == 0)
    assert (pad == dm.tokenizer_info.pad_id).all()
    assert set(batch) == {"input_ids", "attention_mask", "index", "key"}


def test_packed_blocks_hold_the_whole_stream(tmp_path):
    dm = small_module(tmp_path, mode="packed", max_length=16)
    dm.setup()
    blocks = [dm.train_set[(0, i)]["input_ids"] for i in range(len(dm.train_set))]
    assert all(len(b) == 16 for b in blocks[:-1]) and 3 <= len(blocks[-1]) <= 16
    stream = torch.cat([b[1:-1] for b in blocks]).tolist()
    docs = [dm.tokenizer.encode(t, add_special_tokens=False).ids for t in dm.corpus.texts]
    assert stream == [t for d in docs for t in [*d, 3]]  # every document in order, each followed by [SEP]
    full = dm.collate([dm.train_set[(0, i)] for i in range(2)])
    assert full["input_ids"].shape == (2, 16) and "attention_mask" not in full  # no padding, no mask: flash attention


def test_next_sentence_pairs(tmp_path):
    with pytest.raises(ConfigError, match="data.mode=packed"):
        small_module(tmp_path, next_sentence=True, mode="lines")
    path = tmp_path / "docs.txt"
    docs = [[f"doc {d} sentence {s} says {w}." for s, w in enumerate(["hello", "world", "again", "more"])]
            for d in range(6)]
    path.write_text("\n\n".join("\n".join(doc) for doc in docs), encoding="utf-8")
    dm = TextFiles(root=str(path), format="blank_lines", mode="packed", next_sentence=True, max_length=40,
                   val_fraction=0.0, num_workers=0, tokenizer={"vocab_size": 80, "min_frequency": 1,
                                                               "cache_dir": str(tmp_path / "cache")})
    dm.setup()
    labels = []
    for epoch in range(20):
        for i in range(len(dm.train_set)):
            s = dm.train_set[(epoch, i)]
            ids, types = s["input_ids"].tolist(), s["token_type_ids"]
            seps = [j for j, t in enumerate(ids) if t == 3]
            assert ids[0] == 2 and len(seps) == 2 and seps[1] == len(ids) - 1 and len(ids) <= 40
            assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 :] == 1).all()
            text_a = dm.tokenizer.decode(ids[1 : seps[0]])
            text_b = dm.tokenizer.decode(ids[seps[0] + 1 : seps[1]])
            same_doc = text_a.split()[1] == text_b.split()[1]  # "doc N ..."
            if s["next_sentence_label"] == 0:
                assert same_doc
            else:
                assert not same_doc
            labels.append(s["next_sentence_label"])
    assert 0.35 < np.mean(labels) < 0.65
    again = dm.train_set[(3, 1)]
    assert torch.equal(again["input_ids"], dm.train_set[(3, 1)]["input_ids"])  # keyed by (seed, epoch, index)
    batch = dm.collate([dm.train_set[(0, i)] for i in range(len(dm.train_set))])
    assert {"token_type_ids", "next_sentence_label"} <= set(batch)


def test_truncate_pair_takes_from_the_longer():
    assert truncate_pair(10, 3, 8) == (5, 3) and truncate_pair(4, 4, 6) == (3, 3) and truncate_pair(2, 3, 9) == (2, 3)


def test_validation_split_is_by_document_hash(tmp_path):
    texts = [f"document number {i}" for i in range(2000)]
    a, b = holdout(texts, 0.1), holdout(list(reversed(texts)), 0.1)
    assert np.array_equal(a, b[::-1]) and 0.07 < a.mean() < 0.13
    path = tmp_path / "many.txt"
    path.write_text("\n".join(texts), encoding="utf-8")
    dm = TextFiles(root=str(path), mode="lines", val_fraction=0.1, num_workers=0,
                   tokenizer={"vocab_size": 60, "cache_dir": str(tmp_path / "cache")})
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 2000 and len(dm.val_set) == a.sum()


def test_text_file_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TextFiles(root=str(tmp_path / "absent"), num_workers=0).corpus
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"no file matches \*\*/\*.txt"):
        TextFiles(root=str(tmp_path / "folder"), num_workers=0).corpus
    bad = tmp_path / "folder" / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{bad} is not utf-8 text"):
        TextFiles(root=str(tmp_path / "folder"), num_workers=0).corpus
    bad.write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        TextFiles(root=str(tmp_path / "folder"), num_workers=0).corpus


def test_hugging_face_datasets_from_local_files_and_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(STORY * 2), encoding="utf-8")
    common = dict(num_workers=0, mode="lines", tokenizer={"vocab_size": 100, "min_frequency": 1,
                                                          "cache_dir": str(tmp_path / "tok")})
    dm = HFText(path="text", data_files=str(path), cache_dir=str(tmp_path / "hf"), val_fraction=0.0, **common)
    dm.setup()
    assert len(dm.train_set) == 2 * len(STORY) and dm.corpus.identity["fingerprint"]

    saved = tmp_path / "saved"
    dataset = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": STORY, "topic": list(range(len(STORY)))}),
        "test": datasets.Dataset.from_dict({"sentence": STORY[:2], "topic": [0, 1]}),
    })
    dataset.save_to_disk(str(saved))
    dm = HFText(path=str(saved), text_field="sentence", label_field="topic", val_split="test", **common)
    dm.setup()
    assert len(dm.train_set) == len(STORY) and len(dm.val_set) == 2 and dm.train_set[(0, 4)]["label"] == 4
    with pytest.raises(ConfigError, match="has no column 'text'"):
        HFText(path=str(saved), **common).corpus
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        HFText(path="text", data_files=str(tmp_path / "absent.txt"), cache_dir=str(tmp_path / "hf"), **common).corpus
    with pytest.raises(ConfigError, match="needs data.path"):
        HFText(**common).corpus


# -- backbone ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_never_changes_real_positions(norm):
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=50, dim=32, depth=2, heads=4, norm=norm, pool="mean").eval()
    ids = torch.randint(5, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:], mask[2, 3:] = 0, 0
    out = model.forward_tokens(ids, mask)
    other = ids.clone()
    other[0, 6:], other[2, 3:] = torch.randint(5, 50, (4,)), 0
    changed = model.forward_tokens(other, mask)
    real = mask.bool()
    torch.testing.assert_close(changed[real], out[real])
    assert not torch.allclose(changed[~real], out[~real])  # the padded positions themselves did change
    pooled = model(ids, mask)
    torch.testing.assert_close(pooled[0], out[0, :6].mean(0))
    torch.testing.assert_close(model(other, mask), pooled)
    # without padding, the mask is the same as none
    torch.testing.assert_close(model.forward_tokens(ids[1:2], mask[1:2]), model.forward_tokens(ids[1:2]))


def test_backbone_presets_and_interface():
    cfg_dir = str(CONFIG_DIR)
    with initialize_config_dir(cfg_dir, version_base="1.3"):
        cfg = compose("train", overrides=["objective=mlm", "run_dir=runs/test", "data.tokenizer.vocab_size=30522"])
    assert cfg.data._target_.endswith("WordNet") and cfg.backbone.dim == 512 and cfg.backbone.vocab_size == 30522
    with initialize_config_dir(cfg_dir, version_base="1.3"):
        base = compose("train", overrides=["objective=mlm", "backbone=text_base", "backbone.norm=post",
                                           "data.tokenizer.vocab_size=30522", "objective.next_sentence=true",
                                           "run_dir=runs/test"])
    assert base.data.next_sentence is True  # the data follows the objective's switch
    kwargs = {k: v for k, v in base.backbone.items() if k != "_target_"}
    with torch.device("meta"):
        bert = TextTransformer(**kwargs)
    assert sum(p.numel() for p in bert.parameters()) == 108_891_648  # BERT-base without its NSP pooler
    model = TextTransformer(vocab_size=40, dim=16, depth=1, heads=2)
    assert model.num_features == 16 and model.modality == "text" and model.input_embedding is model.token_embed
    ids = torch.randint(5, 40, (2, 7))
    assert model.forward_tokens(ids, torch.ones_like(ids)).shape == (2, 7, 16) and model(ids).shape == (2, 16)
    with pytest.raises(ConfigError, match="exceed backbone.max_positions 8"):
        TextTransformer(vocab_size=40, dim=16, depth=1, heads=2, max_positions=8).forward_tokens(ids.repeat(1, 2))
    with pytest.raises(ConfigError, match="backbone.norm"):
        TextTransformer(norm="sandwich")


# -- train.py: a text run resumes exactly --------------------------------------------------------------------------
def test_resumed_text_run_matches_an_uninterrupted_one(tmp_path):
    if not (wordnet.DEBIAN_DIR / "data.adv").is_file():
        pytest.skip("apt-get install -y wordnet-base")
    args = ["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
            "data.parts=[adv]", "data.batch_size=32", "data.tokenizer.vocab_size=1000", "trainer.max_steps=6",
            "checkpoint.every_n_steps=3", "trainer.log_every_n_steps=1", "trainer.deterministic=true",
            f"data.tokenizer.cache_dir={tmp_path / 'tokenizers'}"]
    full, resumed = train_whole_and_resumed(run_train, args, tmp_path, step=3)
    assert_same_last_checkpoint(full, resumed, global_step=6)

    def losses(run_dir: Path) -> dict[int, str]:
        with (run_dir / "metrics.csv").open(newline="") as f:
            return {int(row["step"]): row["train/loss"] for row in csv.DictReader(f) if row.get("train/loss")}

    after = {step: loss for step, loss in losses(full).items() if step >= 3}
    assert sorted(losses(full)) == list(range(6)) and losses(resumed) == after


def test_a_text_run_keeps_its_tokenizer_for_resume_and_embedding(tmp_path):
    """RUN/tokenizer.json: with the tokenizer cache gone (another machine, a cleaned home folder), resume and
    embed.py read the run's own tokenizer instead of training one again; a different one on resume is refused."""
    if not (wordnet.DEBIAN_DIR / "data.adv").is_file():
        pytest.skip("apt-get install -y wordnet-base")
    cache, run = tmp_path / "tokenizers", tmp_path / "run"
    args = ["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
            "data.parts=[adv]", "data.batch_size=32", "data.tokenizer.vocab_size=1000", "monitors.enabled=false",
            "checkpoint.every_n_steps=2", f"data.tokenizer.cache_dir={cache}", f"run_dir={run}"]
    r = run_train([*args, "trainer.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    (cached,) = cache.glob("*.json")
    assert tok.same_tokenization(tok.load_tokenizer(run / "tokenizer.json"), tok.load_tokenizer(cached))

    shutil.rmtree(cache)
    r = run_train([*args, "trainer.max_steps=4", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "embed.py"), f"checkpoint={run}", f"out={tmp_path / 'e.npz'}",
                        "max_samples=64"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.load(tmp_path / "e.npz")["features"].shape == (64, 128)
    continued = tmp_path / "continued"  # resuming another run's checkpoint takes that run's tokenizer too
    r = run_train([*args[:-1], f"run_dir={continued}", "trainer.max_steps=6", f"resume={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    kept, continued_kept = (tok.load_tokenizer(d / "tokenizer.json") for d in (run, continued))
    assert tok.same_tokenization(kept, continued_kept)
    assert not cache.exists(), "a tokenizer was trained again instead of reading the run's"

    other = tok.train_wordpiece(STORY, vocab_size=100, min_frequency=1)
    other.save(str(tmp_path / "other.json"))
    r = run_train([*args, "trainer.max_steps=6", "resume=auto", f"data.tokenizer.path={tmp_path / 'other.json'}"])
    assert r.returncode == 2 and "the run this one resumes was trained with the tokenizer" in r.stderr
