"""Fashion-MNIST: reading IDX files, and naming what is missing or corrupt."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from selfsup.data import fashion_mnist
from selfsup.data.fashion_mnist import FashionMNIST, read_idx
from selfsup.errors import DataError


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
    batch = dm.train_collate([dm.train_set[(0, i)] for i in range(4)])
    assert batch["image"].shape == (4, 1, 28, 28) and batch["label"].tolist() == [0, 1, 2, 3]


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as e:
        FashionMNIST(root=str(tmp_path / "empty"), num_workers=0).setup()
    message = str(e.value)
    assert str(tmp_path / "empty") in message and "apt-get install -y dataset-fashion-mnist" in message
    assert "data.download=true" in message and "\n" not in message


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_a_given_root_without_the_data_is_an_error_not_the_debian_copy(tmp_path, train):
    """data.root=DIR without the data used to train on the Debian copy without a word (a DIR that does not exist
    at all is refused earlier, by the config check: tests/e2e/test_bad_input.py)."""
    (tmp_path / "empty").mkdir()
    r = train(["objective=mae", f"data.root={tmp_path / 'empty'}", "trainer.max_steps=1",
               f"run_dir={tmp_path / 'run'}"])
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert f"data.root={tmp_path / 'empty'} holds no Fashion-MNIST idx files" in line and "drop data.root" in line
    assert not (tmp_path / "run").exists()  # the folder this start made is gone again


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
