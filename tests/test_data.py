"""Data: sharding across ranks, resumable sampling, keyed views, Fashion-MNIST files."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data import fashion_mnist
from selfsup.data.fashion_mnist import FashionMNIST, read_idx
from selfsup.data.sampling import EpochSampler
from selfsup.data.synthetic import Synthetic
from selfsup.errors import DataError


def batches(sampler: EpochSampler) -> list[list[int]]:
    idx = [i for _, i in sampler]
    return [idx[k : k + sampler.batch_size] for k in range(0, len(idx), sampler.batch_size)]


def test_ranks_together_make_the_single_process_batches():
    single = EpochSampler(1000, batch_size=64, seed=3)
    single.set_epoch(2)
    ranks = [EpochSampler(1000, batch_size=32, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    merged = [sorted(a + b) for a, b in zip(*(batches(s) for s in ranks))]
    assert merged == [sorted(b) for b in batches(single)]
    assert len(merged) == 1000 // 64 and len(single) == 1000 // 64 * 64


def test_epochs_differ_and_resume_skips_done_batches():
    s = EpochSampler(100, batch_size=10, seed=0)
    first = batches(s)
    s.set_epoch(1)
    assert batches(s) != first
    s.resume(epoch=1, batches_done=4)
    full = EpochSampler(100, batch_size=10, seed=0)
    full.set_epoch(1)
    assert batches(s) == batches(full)[4:]
    assert len(s) == 100  # the epoch's full length, so Lightning counts on from the restored position
    s.set_epoch(2)
    assert len(batches(s)) == 10  # a new epoch forgets the skip


def test_views_depend_on_the_sample_key_only():
    views = [{"key": "image", "crop_scale": [0.2, 1.0], "hflip": 0.5}]
    dm = Synthetic(num_samples=64, num_workers=0, batch_size=8, views=views)
    dm.setup()
    a, b = dm.train_set[(0, 5)], dm.train_set[(0, 5)]
    torch.manual_seed(123)  # the global random state does not matter
    c = dm.train_set[(0, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])
    assert not torch.equal(a["image"], dm.train_set[(1, 5)]["image"])  # another epoch, another crop
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, 32, 32)


def test_batches_are_normalized_on_the_device():
    dm = Synthetic(num_samples=64, num_workers=0, batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and set(batch) == {"image", "label", "index", "key", "skipped"}
    out = dm.normalize(dict(batch))
    expected = (batch["image"].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out["image"], expected)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_root(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    dm = FashionMNIST(root=str(tmp_path), batch_size=4, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 5
    sample = dm.train_set[(0, 3)]
    assert sample["image"].shape == (1, 28, 28) and sample["label"] == 3


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as e:
        FashionMNIST(root=str(tmp_path / "empty"), num_workers=0).setup()
    message = str(e.value)
    assert str(tmp_path / "empty") in message and "apt-get install -y dataset-fashion-mnist" in message
    assert "data.download=true" in message and "\n" not in message


def test_corrupt_idx_file_is_named(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=str(bad)):
        read_idx(bad)


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found():
    dm = FashionMNIST(num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000


def test_the_parts_of_data_modules_import_without_lightning():
    """Samplers, datasets, decoding, augmentation, tokenizers, manifests and shard streams are plain torch."""
    parts = ["sampling", "text_datasets", "image_text_datasets", "shards", "decode", "augment", "views", "tokenizer",
             "openclipart_prepare"]
    code = ("import sys\n" + "".join(f"import selfsup.data.{m}\n" for m in parts)
            + "print(sorted(k for k in sys.modules if k.split('.')[0] in ('pytorch_lightning', 'lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
