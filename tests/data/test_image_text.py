"""Image-text manifests (JSON lines, CSV, TSV): missing images, captions, the hold-out, batches."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_images

from selfsup.data.image_text import ImageTextManifest
from selfsup.data.image_text_datasets import read_manifest
from selfsup.errors import DataError


def manifest_module(tmp_path: Path, manifest: Path, **kwargs) -> ImageTextManifest:
    return ImageTextManifest(manifest=str(manifest), image_size=8, batch_size=2, num_workers=0, context_length=10,
                             tokenizer={"cache_dir": str(tmp_path / "tok"), "vocab_size": 60, "min_frequency": 1},
                             **kwargs)


def test_manifest_reader_names_a_missing_image(tmp_path):
    write_images(tmp_path, 2)
    rows = [{"image": "img0.png", "caption": "a red square"}, {"image": "img9.png", "caption": "gone"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"image .*img9\.png does not exist \(1 of 2 missing\)"):
        read_manifest(tmp_path / "pairs.jsonl")
    (tmp_path / "pairs.csv").write_text("image,text\nimg0.png,a square\n")
    with pytest.raises(DataError, match=r"pairs\.csv line 2 has no 'caption' field \(fields: image, text\)"):
        read_manifest(tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "absent.jsonl")


def test_tsv_captions_keep_their_quotes_and_the_hold_out_ignores_where_the_data_lives(tmp_path):
    write_images(tmp_path / "a" / "images", 12)
    rows = "".join(f'images/img{i}.png\t"quoted {i}" and an open " quote\n' for i in range(12))
    text = "\ufeffimage\tcaption\n" + rows
    (tmp_path / "a" / "pairs.tsv").write_text(text, encoding="utf-8")
    pairs = read_manifest(tmp_path / "a" / "pairs.tsv")  # a spreadsheet's byte-order mark is not in the header
    assert pairs.captions == [f'"quoted {i}" and an open " quote' for i in range(12)]
    (tmp_path / "a").rename(tmp_path / "b")
    split = lambda folder: manifest_module(tmp_path, tmp_path / folder / "pairs.tsv", val_fraction=0.5).splits()  # noqa: E731
    moved = split("b")
    (tmp_path / "b").rename(tmp_path / "a")
    here = split("a")
    assert [Path(p).name for p in moved[1].paths] == [Path(p).name for p in here[1].paths]


def test_manifest_batches_hold_views_fixed_length_captions_and_labels(tmp_path):
    write_images(tmp_path / "images", 6)
    lines = ["file,caption,kind"] + [f"images/img{i}.png,a {'red' if i % 2 else 'clear'} square number {i}"
                                     f" {'word ' * (8 if i == 0 else 0)},{'odd' if i % 2 else 'even'}"
                                     for i in range(6)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    data = manifest_module(tmp_path, tmp_path / "pairs.csv", image_key="file", label_key="kind", val_fraction=0.0,
                           augment_on="cpu", views=[{"key": "image", "crop_scale": [0.9, 1.0]}])
    data.setup()
    assert data.class_names() == ["even", "odd"] and data.has_labels()
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 10)
    info = data.tokenizer_info
    for i in range(6):
        sample = data.train_set[(0, i)]
        ids, mask = sample["input_ids"], sample["attention_mask"]
        n = int(mask.sum())
        assert ids[0] == info.cls_id and ids[n - 1] == info.sep_id and (ids[n:] == info.pad_id).all()
        assert bool(mask[:n].all()) and sample["label"] == (1 if i % 2 else 0)
        expected = " ".join(data.tokenizer.decode(ids[1 : n - 1].tolist()).split())
        assert expected.startswith(f"a {'red' if i % 2 else 'clear'} square number {i}")
    assert int(data.train_set[(0, 0)]["attention_mask"].sum()) == 10  # truncated to the context length
    first = data.train_set[(0, 1)]["image"].float()
    clear = data.train_set[(0, 0)]["image"].float()
    assert clear.min() == 255  # transparent pixels are white
    assert first[0].mean() > first[1].mean()  # the opaque red image stays red


def test_a_manifest_too_small_for_its_hold_out_says_it_has_no_validation(tmp_path, capsys):
    write_images(tmp_path, 4)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": f"img{i}.png", "caption": f"square {i}"})
                                                  + "\n" for i in range(4)))
    train, val = manifest_module(tmp_path, tmp_path / "pairs.jsonl", val_fraction=0.02).splits()
    assert len(train) == 4 and len(val) == 0
    err = capsys.readouterr().err
    assert "data.val_fraction=0.02 holds out none of its 4 pairs, so the run has no validation" in err
    manifest_module(tmp_path, tmp_path / "pairs.jsonl", val_fraction=0.0).splits()  # asked for none: no note
    assert capsys.readouterr().err == ""
