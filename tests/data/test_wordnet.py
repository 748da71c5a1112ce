"""WordNet: glosses and lexicographer labels, one-line problems, the real Debian files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfsup.data import wordnet
from selfsup.data.text_datasets import holdout
from selfsup.data.wordnet import LEXNAMES, WordNet, split_gloss
from selfsup.errors import DataError

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


@pytest.mark.skipif(not (wordnet.DEBIAN_DIR / "data.noun").is_file(), reason="apt-get install -y wordnet-base")
def test_next_sentence_pairs_on_real_wordnet_are_half_random_and_fill_their_blocks():
    """A gloss is one or two sentences, so pairs within a gloss were mostly random (80.8%) and ~29 tokens long;
    a lexicographer file's glosses form one document for pairs (the default tokenizer, shared with MLM runs)."""
    dm = WordNet(num_workers=0, next_sentence=True, mode="packed", max_length=128)
    dm.setup()
    samples = [dm.train_set[(0, i)] for i in range(0, len(dm.train_set), 7)]
    random_fraction = np.mean([s["next_sentence_label"] for s in samples])
    lengths = np.array([len(s["input_ids"]) for s in samples])
    assert 0.47 < random_fraction < 0.53, random_fraction
    assert lengths.mean() > 120 and lengths.max() == 128, lengths.mean()
