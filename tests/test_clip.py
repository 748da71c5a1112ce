"""CLIP: the loss, the logit scale, zero-shot and retrieval metrics, and image-text data (manifests, WebDataset,
Open Clip Art)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, assert_same_last_checkpoint, train_whole_and_resumed
from selfsup.backbones.text import TextTransformer
from selfsup.data import openclipart, openclipart_prepare
from selfsup.data.image_text import ImageTextManifest
from selfsup.data.image_text_datasets import read_manifest
from selfsup.data.openclipart import OpenClipart
from selfsup.data.openclipart_prepare import caption, prepare, svg_metadata
from selfsup.errors import ConfigError, DataError
from selfsup.evaluation.zero_shot import retrieval_recall, zero_shot_accuracy
from selfsup.objectives.clip import CLIP, clip_loss


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def brute_force_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    """Mean over the 2n rows of -log softmax of the matching pair, written out with exp and log."""
    n, total = len(images), 0.0
    for i in range(n):
        to_texts = [math.exp(scale * float(images[i] @ texts[k])) for k in range(n)]
        to_images = [math.exp(scale * float(texts[i] @ images[k])) for k in range(n)]
        total -= math.log(to_texts[i] / sum(to_texts)) + math.log(to_images[i] / sum(to_images))
    return total / (2 * n)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_equals_the_brute_force_reference(scale):
    images, texts = unit(9, 12, 0), unit(9, 12, 1)
    loss, _, _ = clip_loss(images, texts, torch.tensor(scale))
    assert float(loss) == pytest.approx(brute_force_clip_loss(images, texts, scale), rel=1e-5)


def test_clip_loss_stays_float32_under_bf16_autocast():
    images, texts = unit(32, 16, 7), unit(32, 16, 8)
    reference, _, _ = clip_loss(images, texts, torch.tensor(100.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # logits near 100 in bf16 would move in steps of 0.5
        loss, _, _ = clip_loss(images, texts, torch.tensor(100.0))
    assert loss.dtype == torch.float32 and torch.equal(loss, reference)


def test_clip_loss_is_symmetric_in_images_and_texts():
    images, texts = unit(10, 8, 2), unit(10, 8, 3)
    loss, image_acc, text_acc = clip_loss(images, texts, torch.tensor(20.0))
    swapped, image_acc_swapped, text_acc_swapped = clip_loss(texts, images, torch.tensor(20.0))
    torch.testing.assert_close(loss, swapped)
    assert (image_acc, text_acc) == (text_acc_swapped, image_acc_swapped)
    matched, image_acc, text_acc = clip_loss(images, images.clone(), torch.tensor(20.0))
    assert image_acc == text_acc == 1.0 and matched < loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gathered_clip_worker(rank: int, world: int, port: int, images: torch.Tensor, texts: torch.Tensor,
                          out: dict, compiled: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    a = images[rank::world].clone().requires_grad_(True)  # every world-th pair, as the EpochSampler shards
    b = texts[rank::world].clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss_fn = torch.compile(clip_loss, backend="eager", fullgraph=True) if compiled else clip_loss  # compile=true
    loss, _, _ = loss_fn(a, b, log_scale.exp())
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    scale_grad = log_scale.grad.clone()
    dist.all_reduce(scale_grad)
    out[rank] = (mean_loss / world, a.grad / world, b.grad / world, scale_grad / world)  # DDP's averaging
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gathered_negatives_give_the_single_process_loss_and_gradients(compiled):
    world = 2
    images, texts = unit(12, 6, 5), unit(12, 6, 6)
    out = mp.Manager().dict()
    mp.spawn(_gathered_clip_worker, args=(world, _free_port(), images, texts, out, compiled), nprocs=world)
    a, b = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss, _, _ = clip_loss(a, b, log_scale.exp())
    loss.backward()
    for rank in range(world):
        rank_loss, grad_a, grad_b, grad_scale = out[rank]
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad_a, a.grad[rank::world], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_b, b.grad[rank::world], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_scale, log_scale.grad, rtol=1e-5, atol=1e-7)


class TinyImageBackbone(torch.nn.Module):
    num_features = 8
    modality = "image"

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_clip(**kwargs) -> tuple[TinyImageBackbone, CLIP]:
    torch.manual_seed(0)
    backbone = TinyImageBackbone()
    text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2, max_positions=12, dropout=0.0, attn_dropout=0.0)
    return backbone, CLIP(backbone, text, embed_dim=6, **kwargs)


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    backbone, clip = tiny_clip()
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert clip.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)  # exp(10) = 22026
    assert clip.scale().item() == pytest.approx(100.0)
    batch = {"image": torch.randn(4, 3, 4, 4), "input_ids": torch.randint(5, 50, (4, 12))}
    out = clip(backbone, batch)
    assert float(out.metrics["logit_scale"]) == pytest.approx(100.0)
    clip.after_optimizer_step(backbone, 1, 10)  # the parameter itself is brought back into [0, log 100]
    assert clip.logit_scale.item() == pytest.approx(math.log(100.0))


def test_clip_step_trains_both_towers_and_the_temperature():
    backbone, clip = tiny_clip(text_pool="eot")
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 7:] = 0
    batch = {"image": torch.randn(4, 3, 4, 4), "input_ids": torch.randint(5, 50, (4, 12)), "attention_mask": mask}
    out = clip(backbone, batch)
    out.loss.backward()
    assert out.features.shape == (4, 8) and not out.features.requires_grad
    for name, p in [*backbone.named_parameters(), *clip.named_parameters()]:
        if name.endswith("type_embed.weight") or "pos_embed" in name:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    batch["input_ids"][:, 8:] = 7  # padding after the [SEP] at position 6 changes nothing
    torch.testing.assert_close(clip(backbone, batch).loss, out.loss)


def test_bad_clip_settings_are_one_line_errors():
    backbone = TinyImageBackbone()
    with pytest.raises(ConfigError, match="text backbone"):
        CLIP(backbone, TinyImageBackbone())
    text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2)
    with pytest.raises(ConfigError, match="text_pool"):
        CLIP(backbone, text, text_pool="mean")
    with pytest.raises(ConfigError, match="init_temperature"):
        CLIP(backbone, text, init_temperature=0.001)


# -- zero-shot and retrieval -------------------------------------------------------------------------------
def test_zero_shot_accuracy_is_perfect_when_images_equal_their_class_embeddings():
    classes = unit(6, 16, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 3, 0])
    result = zero_shot_accuracy(classes[labels], labels, classes)
    assert result == {"zero_shot_top1": 1.0, "zero_shot_top5": 1.0}
    shifted = zero_shot_accuracy(classes[(labels + 1) % 6], labels, classes)
    assert shifted["zero_shot_top1"] == 0.0


def test_retrieval_recall_counts_the_rank_of_each_true_match():
    images = torch.eye(4)
    swap = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 lean towards each other's image ...
    texts = F.normalize(swap + 0.5 * torch.eye(4), dim=1)  # ... so each ranks second for its own
    result = retrieval_recall(images, texts, ks=(1, 2))
    assert result == {"image_to_text_R@1": 0.5, "image_to_text_R@2": 1.0,
                      "text_to_image_R@1": 0.5, "text_to_image_R@2": 1.0}
    collapsed = retrieval_recall(images, torch.ones(4, 4) / 2, ks=(1,))  # ties count against the query
    assert collapsed["image_to_text_R@1"] == 0.0


def test_retrieval_counts_repeated_images_and_captions_once():
    """A perfect model scores 1 even when rows repeat a caption (two drawings titled alike) or an image (COCO's
    several captions per image); without the ids the repeats would count as misses."""
    e = torch.eye(4)
    images = torch.stack([e[0], e[1], e[2], e[2]])  # rows 2 and 3: one image with two captions
    texts = F.normalize(torch.stack([e[0] + e[1], e[0] + e[1], e[2] + 0.1 * e[3], e[2] - 0.1 * e[3]]), dim=1)
    image_ids, text_ids = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 2])  # rows 0 and 1: one caption
    grouped = retrieval_recall(images, texts, ks=(1,), image_ids=image_ids, text_ids=text_ids)
    assert grouped == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}
    assert retrieval_recall(images, texts, ks=(1,))["text_to_image_R@1"] < 1.0


# -- manifests ---------------------------------------------------------------------------------------------
def write_images(folder: Path, n: int, size: int = 12) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGBA", (size + i, size), (10 * i, 0, 0, 255 if i % 2 else 0)).save(path)
        paths.append(path)
    return paths


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
    text = "\ufeffimage\tcaption\n" + "".join(f'images/img{i}.png\t"quoted {i}" and an open " quote\n' for i in range(12))
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


# -- WebDataset --------------------------------------------------------------------------------------------
def write_shard(path: Path, start: int, n: int, corrupt: int | None = None) -> list[str]:
    import webdataset as wds

    captions = []
    with wds.TarWriter(str(path)) as sink:
        for i in range(start, start + n):
            buffer = io.BytesIO()
            Image.new("RGB", (10, 14), (i * 20 % 255, 30, 60)).save(buffer, format="JPEG")
            image = b"\xff\xd8 not really a jpeg" if i == corrupt else buffer.getvalue()
            captions.append(f"picture number {i}")
            sink.write({"__key__": f"{i:06d}", "jpg": image, "txt": captions[-1], "json": {"i": i}})
    return captions


def webdataset_module(tmp_path: Path, **kwargs):
    from selfsup.data.webdataset_pairs import WebDatasetPairs

    return WebDatasetPairs(image_size=8, batch_size=3, num_workers=0, context_length=24, augment_on="cpu",
                           tokenizer={"cache_dir": str(tmp_path / "tok"), "vocab_size": 40, "min_frequency": 1},
                           views=[{"key": "image", "crop_scale": [0.9, 1.0]}], **kwargs)


def test_webdataset_reader_round_trips_a_shard_skipping_and_counting_a_corrupt_image(tmp_path):
    captions = write_shard(tmp_path / "val.tar", 0, 10, corrupt=4)
    write_shard(tmp_path / "train.tar", 0, 10)  # the tokenizer learns from these captions
    data = webdataset_module(tmp_path, urls=str(tmp_path / "train.tar"), val_urls=str(tmp_path / "val.tar"))
    data.setup()
    batches = list(data.val_dataloader())
    assert [len(b["index"]) for b in batches] == [3, 3, 3]  # 9 readable pairs, in shard order
    assert int(sum(b["skipped"].sum() for b in batches)) == 1
    ids = torch.cat([b["input_ids"] for b in batches])
    decoded = [" ".join(data.tokenizer.decode(row.tolist()).split()) for row in ids]
    assert decoded == [c for i, c in enumerate(captions) if i != 4]
    assert batches[0]["image"].shape == (3, 3, 8, 8)


def test_webdataset_shards_are_split_across_ranks_and_epochs_have_equal_length(tmp_path):
    for s in range(4):
        write_shard(tmp_path / f"shard-{s}.tar", 10 * s, 6)
    data = webdataset_module(tmp_path, urls=str(tmp_path / "shard-{0..3}.tar"))
    data.check_before_training(devices=2)
    assert data.num_samples == 24 and data.num_train_samples() == 24  # 4 batches of 3 per rank
    shards = []
    for rank in range(2):
        data.train_set.place(rank, 2, workers=1, batches_per_worker=data.layout(data.train_set, 24, 2)[1])
        mine = data.train_set.my_shards(0, 0)
        epoch = list(iter(data.train_set))
        assert len(epoch) == len(data.train_set) == 4
        numbers = [int(data.tokenizer.decode(row.tolist()).split()[-1]) for b in epoch for row in b["input_ids"]]
        assert {n // 10 for n in numbers} == {int(Path(s).stem[-1]) for s in mine}  # its own shards only
        shards.append(set(mine))
    assert shards[0].isdisjoint(shards[1]) and len(shards[0] | shards[1]) == 4


def test_webdataset_validation_gives_every_rank_the_same_full_batches(tmp_path):
    """CLIP's loss gathers across ranks: uneven validation batches would hang DDP."""
    for s, n in enumerate([7, 5, 4]):
        write_shard(tmp_path / f"val-{s}.tar", 10 * s, n)
    write_shard(tmp_path / "train-0.tar", 0, 10)
    write_shard(tmp_path / "train-1.tar", 20, 10)
    data = webdataset_module(tmp_path, urls=[str(tmp_path / "train-0.tar"), str(tmp_path / "train-1.tar")],
                             val_urls=str(tmp_path / "val-{0..2}.tar"))
    data.check_before_training(devices=2)
    sizes = []
    for rank in range(2):
        loader = data._stream_loader(data.val_set, data.val_samples, world=2, rank=rank)
        sizes.append([len(b["index"]) for b in loader])
        assert [len(b["index"]) for b in loader] == sizes[-1]  # and again next epoch
    assert sizes == [[3, 3], [3, 3]]  # 16 pairs / (3 x 2 ranks); rank 1 has 4 pairs and reads two of them twice
    with pytest.raises(DataError, match="cannot feed 4 processes"):
        data.check_before_training(devices=4)


def test_webdataset_without_a_readable_pair_fails_instead_of_looping(tmp_path):
    write_shard(tmp_path / "bad.tar", 0, 4, corrupt=None)
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "tif.tar")) as sink:  # images in a format the reader does not take
        for i in range(4):
            sink.write({"__key__": f"{i:04d}", "tif": b"II*\x00", "txt": "a caption"})
    data = webdataset_module(tmp_path, urls=str(tmp_path / "tif.tar"))
    with pytest.raises(DataError, match=r"no readable pair at the start of .*tif\.tar"):
        data.check_before_training()
    data.train_set.place(0, 1, workers=1, batches_per_worker=1)
    with pytest.raises(DataError, match=r"no readable pair in shards .*tif\.tar \(4 skipped\)"):
        next(iter(data.train_set))


# -- Open Clip Art -------------------------------------------------------------------------------------------
SVG = """<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>
<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag><rdf:li>{k1}</rdf:li><rdf:li>{k2}</rdf:li></rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>Some Artist</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata></svg>"""


def fake_openclipart(root: Path) -> None:
    for relative, title in [("animals/birds/owl_x_01", "Night owl"), ("food/apple_y_01", "Green apple"),
                            ("food/no_title_z_01", "")]:
        png = root / "png" / f"{relative}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (6, 5)).save(png)
        svg = root / "svg" / f"{relative}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(SVG.format(title=title, description="Drawn  by hand." if title else "", k1="bird", k2="bird"))
    huge = root / "png" / "signs" / "poster_01.png"  # only its header is read: 5000 x 4000 pixels
    huge.parent.mkdir(parents=True)
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 5000, 4000, 8, 6, 0, 0, 0)
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)))


def test_openclipart_prepare_builds_captions_labels_and_a_held_out_split(tmp_path, monkeypatch):
    fake_openclipart(tmp_path / "root")
    monkeypatch.setattr(openclipart_prepare, "MAX_PIXELS", 10_000_000)
    assert svg_metadata(tmp_path / "root/svg/animals/birds/owl_x_01.svg") == ("Night owl", "Drawn by hand.", ["bird"])
    assert caption("Night owl", "Drawn by hand.", ["bird", "owl"]) == "Night owl. Drawn by hand. keywords: bird, owl."
    train, val = prepare(tmp_path / "root", tmp_path / "out", val_fraction=0.0)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert val.read_text() == ""
    assert [(Path(r["image"]).name, r["caption"], r["label"]) for r in rows] == [
        ("owl_x_01.png", "Night owl. Drawn by hand. keywords: bird.", "animals"),
        ("apple_y_01.png", "Green apple. Drawn by hand. keywords: bird.", "food"),
        ("no_title_z_01.png", "no title z. keywords: bird.", "food"),  # title from the file name
    ]  # the 20M-pixel poster is left out


@pytest.fixture(scope="module")
def openclipart_cache(tmp_path_factory):
    """One prepared manifest and tokenizer for the module's runs (preparing reads 8,121 SVGs)."""
    return tmp_path_factory.mktemp("openclipart")


@pytest.mark.skipif(not openclipart.DEBIAN_ROOT.is_dir(),
                    reason="Debian's openclipart-png / openclipart-svg are not installed")
def test_debian_openclipart_gives_captioned_pairs_with_22_labels(openclipart_cache):
    data = OpenClipart(cache_dir=str(openclipart_cache), image_size=16, num_workers=0)
    train, val = data.splits()
    assert len(train) + len(val) == 8121 - 19  # all but the 19 posters of over 16M pixels
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.07
    assert len(data.class_names()) == 22 and "transportation" in data.class_names()
    assert sum(c.startswith("keywords") for c in train.captions) < 0.02 * len(train)  # nearly all have a title
    assert set(map(Path, train.paths)).isdisjoint(map(Path, val.paths))


# -- end to end ----------------------------------------------------------------------------------------------
TINY_CLIP = ["objective=clip", "logger=csv", "trainer=cpu", "data.num_workers=0", "backbone=vit_tiny",
             "+backbone.depth=1", "backbone@objective.text_tower=text_tiny", "data.image_size=32",
             "data.batch_size=16", "trainer.log_every_n_steps=1"]


@pytest.mark.skipif(not openclipart.DEBIAN_ROOT.is_dir(), reason="Debian's openclipart-png/-svg are not installed")
def test_train_clip_with_its_defaults_then_zero_shot_and_retrieval_offline(train, tmp_path, openclipart_cache):
    run = tmp_path / "run"
    cache = [f"data.cache_dir={openclipart_cache}", f"data.tokenizer.cache_dir={openclipart_cache / 'tok'}"]
    r = train([*TINY_CLIP, *cache, "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
               "trainer.limit_val_batches=1", "monitors.max_train_samples=64", "monitors.max_val_samples=64",
               f"run_dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/loss", "train/logit_scale", "train/image_to_text_accuracy", "val/loss", "val/zero_shot_top1",
            "val/zero_shot_top5", "val/image_to_text_R@1", "val/text_to_image_R@10", "val/knn_top1"} <= logged
    scales = [float(row["train/logit_scale"]) for row in rows if row.get("train/logit_scale")]
    assert scales[0] == pytest.approx(1 / 0.07, rel=1e-3) and all(s <= 100 for s in scales)

    env_args = {"cwd": tmp_path}
    for protocol, extra in [("zero_shot", ["data=fashion_mnist", "data.channels=3", "max_val_samples=100"]),
                            ("retrieval", [])]:
        r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"checkpoint={run}", f"protocol={protocol}",
                            "logger=csv", *extra], capture_output=True, text=True, timeout=600, **env_args)
        assert r.returncode == 0, r.stderr[-3000:]
    own = json.loads((run / "results.json").read_text())["retrieval"]
    # The same pairs through another data module; copies of a drawing in two folders point to one file, as
    # openclipart counts them as one image (by file name) and a manifest by path.
    first_copy: dict[str, str] = {}
    rows = [json.loads(line) for line in next(openclipart_cache.glob("*/val.jsonl")).read_text().splitlines()]
    for row in rows:
        row["image"] = first_copy.setdefault(Path(row["image"]).name, row["image"])
    val_manifest = tmp_path / "val.jsonl"
    val_manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"checkpoint={run}", "protocol=retrieval",
                        "logger=csv", "data=image_text_manifest", f"data.manifest={val_manifest}",
                        f"data.val_manifest={val_manifest}", "batch_size=16", f"out={tmp_path / 'other'}"],
                       capture_output=True, text=True, timeout=600, **env_args)
    assert r.returncode == 0, r.stderr[-3000:]
    other = json.loads((tmp_path / "other" / "results.json").read_text())["retrieval"]
    assert {k: v for k, v in other.items() if k.startswith("val/")} == {k: v for k, v in own.items()
                                                                         if k.startswith("val/")}
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["zero_shot"]["val/zero_shot_top1"] <= results["zero_shot"]["val/zero_shot_top5"] <= 1.0
    assert results["zero_shot"]["classes"] == 10 and results["zero_shot"]["val_samples"] == 100
    assert results["retrieval"]["val_samples"] > 300  # the held-out openclipart pairs
    assert 0.0 <= results["retrieval"]["val/image_to_text_R@1"] <= results["retrieval"]["val/image_to_text_R@10"]


@pytest.mark.parametrize("override, message", [
    ("backbone=text_tiny", "objective CLIP needs image backbone, but the chosen backbone is text"),
    ("data=fashion_mnist", "objective CLIP needs image-text data, but the chosen data is image"),
])
def test_clip_with_the_wrong_modality_fails_in_one_line(train, tmp_path, override, message):
    r = train(["objective=clip", "logger=csv", "trainer=cpu", override, f"run_dir={tmp_path / 'run'}"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and message in r.stderr


def test_clip_resumed_mid_run_matches_the_uninterrupted_run(train, tmp_path):
    """Manifest pairs resume exactly: same batches, same augmentation, same text tower and temperature."""
    write_images(tmp_path / "images", 12)
    rows = [{"image": f"images/img{i}.png", "caption": f"square number {i % 5} of {'red' if i % 2 else 'clear'}"}
            for i in range(12)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*TINY_CLIP, "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}",
            "data.val_fraction=0.0", "data.batch_size=4", "data.context_length=16", "data.tokenizer.vocab_size=64",
            "data.tokenizer.min_frequency=1", f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "monitors.enabled=false",
            "trainer.max_steps=5", "checkpoint.every_n_steps=2"]
    whole, resumed = train_whole_and_resumed(train, args, tmp_path, step=2)
    assert_same_last_checkpoint(whole, resumed, global_step=5)


def test_two_processes_with_half_batches_match_one_process(train, tmp_path):
    """Lightning DDP on CPU (gloo): CLIP's gathered negatives make 2 x B/2 the same run as 1 x B."""
    write_images(tmp_path / "images", 16)
    rows = [{"image": f"images/img{i}.png", "caption": f"square number {i % 7} of {'red' if i % 2 else 'clear'}"}
            for i in range(16)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [a for a in TINY_CLIP if a != "trainer=cpu"] + [
        "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}", "data.val_fraction=0.0",
        "data.context_length=16", "data.tokenizer.vocab_size=64", "data.tokenizer.min_frequency=1",
        f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "monitors.enabled=false", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "trainer.max_steps=3", "trainer.limit_val_batches=0",
        "optim.name=sgd", "optim.lr=0.5"]  # SGD: Adam would blow rounding noise of near-zero gradients up to lr
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = train([*args, "data.batch_size=8", "trainer.devices=1", f"run_dir={single}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = train([*args, "data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp", f"run_dir={ddp}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 8" in r.stdout
    losses = [[float(row["train/loss"]) for row in csv.DictReader((d / "metrics.csv").open()) if row.get("train/loss")]
              for d in (single, ddp)]
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
            for d in (single, ddp))
    assert not torch.equal(a["objective.logit_scale"], torch.tensor(math.log(1 / 0.07)))  # it trained
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=5e-6, msg=name)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_zero_shot_monitor_on_other_labelled_images_matches_offline_eval(train, tmp_path):
    """data@monitors.zero_shot.data=...: zero-shot on other labelled images during training (as open_clip does on
    ImageNet), fitted to the run's images; the end-of-training figure equals eval.py's on the final checkpoint."""
    write_images(tmp_path / "images", 12)
    rows = [{"image": f"images/img{i}.png", "caption": f"a shirt or a shoe number {i}"} for i in range(12)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    r = train([*TINY_CLIP, "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}",
               "data.val_fraction=0.0", "data.batch_size=4", "data.context_length=16", "data.tokenizer.min_frequency=1",
               "data.tokenizer.vocab_size=64", f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "trainer.max_epochs=1",
               "data@monitors.zero_shot.data=fashion_mnist", "monitors.max_val_samples=64", f"run_dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    with (run / "metrics.csv").open() as f:
        online = [row for row in csv.DictReader(f) if row.get("val/zero_shot_top1")]
    assert len(online) == 1 and not online[0].get("val/image_to_text_R@1")  # no held-out pairs: no retrieval

    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"checkpoint={run}", "protocol=zero_shot",
                        "data=fashion_mnist", "data.channels=3", "max_val_samples=64", "logger=csv"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    offline = json.loads((run / "results.json").read_text())["zero_shot"]
    for k in ("val/zero_shot_top1", "val/zero_shot_top5"):
        assert float(online[0][k]) == pytest.approx(offline[k]), k


def test_zero_shot_monitor_data_is_fitted_to_the_run_and_checked(tmp_path):
    from omegaconf import OmegaConf

    from selfsup.callbacks.online_monitors import zero_shot_data
    from selfsup.data.image_folder import ImageFolder

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            write_images(tmp_path / "folder" / split / name, 2)
    run_data = ImageTextManifest(manifest=str(tmp_path / "pairs.jsonl"), image_size=24, num_workers=0,
                                 mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    node = OmegaConf.create({"_target_": "selfsup.data.image_folder.ImageFolder", "root": str(tmp_path / "folder"),
                             "image_size": 64, "channels": 1, "num_workers": 0})
    data = zero_shot_data(node, run_data, seed=0)
    assert isinstance(data, ImageFolder) and data.class_names() == ["cat", "dog"]
    assert data.image_size == 24 and data.channels == 3  # the run's images, whatever the config said
    assert data.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert data.std.flatten().tolist() == pytest.approx([0.2] * 3)

    unnamed = OmegaConf.create({"_target_": "selfsup.data.synthetic.Synthetic", "num_samples": 8,
                                "num_val_samples": 8, "num_workers": 0})
    with pytest.raises(DataError, match="has no class names"):
        zero_shot_data(unnamed, run_data, seed=0)
    text = OmegaConf.create({"_target_": "selfsup.data.text.TextFiles", "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="monitors.zero_shot.data must be labelled image data"):
        zero_shot_data(text, run_data, seed=0)
