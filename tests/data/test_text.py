"""Text corpora: text files (lines, packed blocks, sentence pairs; CSV and JSON lines with labels), the held-out
split, Hugging Face datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import STORY

from selfsup.data.text_corpora import HFText, TextFiles
from selfsup.data.text_datasets import holdout, truncate_pair
from selfsup.errors import ConfigError, DataError


def small_module(tmp_path: Path, **kw) -> TextFiles:
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text("\n".join(STORY * 3) + "\n", encoding="utf-8")
    kw.setdefault("tokenizer", {"vocab_size": 120, "min_frequency": 1, "cache_dir": str(tmp_path / "cache")})
    kw.setdefault("val_fraction", 0.0)
    return TextFiles(root=str(path), num_workers=0, batch_size=4, **kw)


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


def test_a_corpus_too_small_for_its_hold_out_says_it_has_no_validation(tmp_path, capsys):
    small_module(tmp_path, val_fraction=0.01).splits()
    assert "data.val_fraction=0.01 holds out none of its 18 documents, so the run has no validation" in \
        capsys.readouterr().err


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


def test_csv_and_json_lines_files_keep_a_label_per_document(tmp_path):
    """format=csv / jsonl: a document per row with its label; class names are numbered in sorted order over the
    whole corpus (both splits), integer labels kept; problems are one line naming the file and the fix."""
    import csv
    import json

    topics = ["fable", "proverb", "proverb", "fable", "proverb", "proverb"]
    with (tmp_path / "corpus.csv").open("w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark
        writer = csv.writer(f)
        writer.writerow(["id", "sentence", "topic"])
        writer.writerows([i, t, y] for i, (t, y) in enumerate(zip(STORY * 4, topics * 4)))
        writer.writerow([99, "  ", "riddle"])  # an empty document goes, with its label
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps({"text": t, "label": i % 3})
                                                     for i, t in enumerate(STORY * 4)) + "\n\n", encoding="utf-8")
    common = dict(num_workers=0, mode="lines", val_fraction=0.3,
                  tokenizer={"vocab_size": 100, "min_frequency": 1, "cache_dir": str(tmp_path / "tok")})
    dm = TextFiles(root=str(tmp_path / "corpus.csv"), format="csv", text_field="sentence", label_field="topic",
                   **common)
    dm.setup()
    assert dm.corpus.classes == ["fable", "proverb"] and dm.num_classes == 2
    samples = [*(dm.train_set[(0, i)] for i in range(len(dm.train_set))),
               *(dm.val_set[(0, i)] for i in range(len(dm.val_set)))]
    assert len(samples) == 24 and len(dm.val_set) > 0
    by_text = {dm.tokenizer.decode(s["input_ids"].tolist()): s["label"] for s in samples}
    assert by_text[dm.tokenizer.decode(dm.tokenizer.encode(STORY[0]).ids)] == 0  # fable
    assert sorted(by_text.values()) == [0, 0, 1, 1, 1, 1]  # 6 distinct texts, the labels of both splits alike
    assert dm.collate(samples[:4])["label"].tolist() == [s["label"] for s in samples[:4]]

    dm = TextFiles(root=str(tmp_path), format="jsonl", label_field="label", **common)  # the folder: *.jsonl
    assert dm.files() == [tmp_path / "corpus.jsonl"] and dm.corpus.labels[:4] == [0, 1, 2, 0]
    assert dm.corpus.classes is None and dm.num_classes == 3

    with pytest.raises(ConfigError, match="data.label_field needs a document per row with its label"):
        TextFiles(root=str(tmp_path / "corpus.csv"), label_field="topic")
    with pytest.raises(ConfigError, match="has no field 'text' in every row \\(fields: id, sentence, topic\\)"):
        TextFiles(root=str(tmp_path / "corpus.csv"), format="csv", label_field="topic", **common).corpus
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl line 2 is not JSON"):
        TextFiles(root=str(tmp_path / "bad.jsonl"), format="jsonl", label_field="label", **common).corpus
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "no label", "label": null}\n')
    with pytest.raises(DataError, match="a document has no label"):
        TextFiles(root=str(tmp_path / "bad.jsonl"), format="jsonl", label_field="label", **common).corpus


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

    named = tmp_path / "named"  # class names, and a validation split holding a class first: numbered over both
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": STORY[:4], "topic": ["fox", "time", "gold", "bird"]}),
        "test": datasets.Dataset.from_dict({"text": STORY[4:], "topic": ["words", "fox"]}),
    }).save_to_disk(str(named))
    dm = HFText(path=str(named), label_field="topic", val_split="test", **common)
    assert dm.corpus.classes == ["bird", "fox", "gold", "time", "words"] and dm.num_classes == 5
    assert (dm.corpus.labels, dm.corpus.val_labels) == ([1, 3, 2, 0], [4, 1])
