"""WebDataset image-text shards: reading, corrupt images, shards across ranks, equal validation batches."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.errors import DataError


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


def cut_shard(path: Path, key: str, member: str, into: int) -> None:
    """Cut the shard `path` `into` bytes after the start of member KEY.MEMBER's header ("header") or of its data
    ("data"), as an interrupted copy or download leaves it."""
    import tarfile

    with tarfile.open(path) as tar:
        info = tar.getmember(f"{key}.{member.split(':')[0]}")
    start = info.offset_data if member.endswith(":data") else info.offset
    path.write_bytes(path.read_bytes()[: start + into])


@pytest.mark.parametrize("where, into, read, decoder_skips, stats", [
    ("jpg:data", 100, 6, 0, None),       # in an image: tarfile raises, webdataset's handler hook sees it
    ("jpg:header", 0, 6, 0, None),       # at a member boundary: tarfile ends silently, the missing end shows
    ("jpg:header", 100, 6, 0, None),     # in a header: the same
    ("txt:header", 700, 7, 1, None),     # after key 6's image: key 6 comes without its caption (the decoder's)
    ("jpg:data", 100, 6, 0, 10),         # img2dataset's stats say 10 pairs: the 4 unread ones are counted
])
def test_webdataset_truncated_shard_is_read_to_its_cut_counted_and_named_once(tmp_path, capsys, where, into, read,
                                                                              decoder_skips, stats):
    import json

    captions = write_shard(tmp_path / "val-0.tar", 0, 10)[:6] + write_shard(tmp_path / "val-1.tar", 20, 6)
    write_shard(tmp_path / "train.tar", 0, 10)
    cut_shard(tmp_path / "val-0.tar", "000006", where, into)
    if stats is not None:
        (tmp_path / "val-0_stats.json").write_text(json.dumps({"successes": stats}))
    data = webdataset_module(tmp_path, urls=str(tmp_path / "train.tar"), val_urls=str(tmp_path / "val-{0..1}.tar"))
    data.setup()
    data.val_set.place(0, 1, workers=1, batches_per_worker=4)  # the 12 readable pairs, in shard order
    batches = list(iter(data.val_set))
    ids = torch.cat([b["input_ids"] for b in batches])
    assert [" ".join(data.tokenizer.decode(row.tolist()).split()) for row in ids] == captions
    lost = max(1, stats - read) if stats else 1
    skipped = torch.cat([b["skipped"] for b in batches])
    assert skipped.tolist() == [0] * 6 + [decoder_skips + lost] + [0] * 5  # carried by val-1's first pair
    warnings = [line for line in capsys.readouterr().err.splitlines() if "val-0.tar" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: shard ")
    assert f"val-0.tar is truncated after {read} samples" in warnings[0] and "data/skipped_samples" in warnings[0]
    assert (f"{lost} of the {stats} pairs" in warnings[0]) == bool(stats)
    list(iter(data.val_set))  # the next epoch counts it again, and says nothing more
    assert not [line for line in capsys.readouterr().err.splitlines() if "val-0.tar" in line]


def test_webdataset_keys_without_image_or_caption_are_counted_as_skipped(tmp_path, capsys):
    import webdataset as wds

    write_shard(tmp_path / "train.tar", 0, 10)
    with wds.TarWriter(str(tmp_path / "val.tar")) as sink:
        for i in range(8):
            buffer = io.BytesIO()
            Image.new("RGB", (10, 14), (i * 20, 30, 60)).save(buffer, format="JPEG")
            sample = {"__key__": f"{i:06d}", "jpg": buffer.getvalue(), "txt": f"picture number {i}", "json": {}}
            sample.pop({2: "jpg", 5: "txt"}.get(i, "none"), None)
            sink.write(sample)
    data = webdataset_module(tmp_path, urls=str(tmp_path / "train.tar"), val_urls=str(tmp_path / "val.tar"))
    data.setup()
    data.val_set.place(0, 1, workers=1, batches_per_worker=2)
    batches = list(iter(data.val_set))
    assert torch.cat([b["skipped"] for b in batches]).tolist() == [0, 0, 1, 0, 1, 0]  # before keys 3 and 6
    assert "warning" not in capsys.readouterr().err  # an intact shard: nothing to say about it


def test_webdataset_without_any_readable_shard_fails_in_one_line(tmp_path, capsys):
    for s in range(2):
        (tmp_path / f"shard-{s}.tar").write_bytes(b"this is not a tar file " * 50)
    data = webdataset_module(tmp_path, urls=str(tmp_path / "shard-{0..1}.tar"), num_samples=20)
    with pytest.raises(DataError, match=r"no readable pair at the start of .*shard-0\.tar") as failure:
        data.check_before_training()
    assert "\n" not in str(failure.value)
    data.train_set.place(0, 1, workers=1, batches_per_worker=1)
    with pytest.raises(DataError, match=r"no readable pair in shards .*shard-0\.tar.*shard-1\.tar \(2 skipped\)"):
        next(iter(data.train_set))
    warnings = capsys.readouterr().err.splitlines()
    assert [w.split(" cannot be read")[0] for w in warnings] == [f"warning: shard {tmp_path}/shard-{s}.tar"
                                                                for s in range(2)]
