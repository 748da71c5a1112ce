"""Data modules: keyed views, normalisation on the device, and parts that import without Lightning."""
from __future__ import annotations

import subprocess
import sys

import torch

from selfsup.data.synthetic import Synthetic


def test_views_depend_on_the_sample_key_only():
    views = [{"key": "image", "crop_scale": [0.2, 1.0], "hflip": 0.5}]
    dm = Synthetic(num_samples=64, num_workers=0, batch_size=8, views=views, augment_on="cpu")
    dm.setup()
    view = lambda epoch, index: dm.train_collate([dm.train_set[(epoch, index)]])["image"][0]  # noqa: E731
    a, b = view(0, 5), view(0, 5)
    torch.manual_seed(123)  # the global random state does not matter
    c = view(0, 5)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, view(1, 5))  # another epoch, another crop
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    in_a_batch = dm.train_collate([dm.train_set[(0, i)] for i in range(8)])["image"]
    assert torch.equal(in_a_batch[5], a)  # the batch it is made in does not matter either


def test_batches_are_normalized_on_the_device():
    dm = Synthetic(num_samples=64, num_workers=0, batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and set(batch) == {"image", "label", "index", "key", "skipped"}
    out = dm.normalize(dict(batch))
    expected = (batch["image"].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out["image"], expected)


def test_the_parts_of_data_modules_import_without_lightning():
    """Samplers, datasets, decoding, augmentation, tokenizers, manifests and shard streams are plain torch."""
    parts = ["sampling", "text_datasets", "image_text_datasets", "shards", "decode", "augment", "views", "tokenizer",
             "openclipart_prepare"]
    code = ("import sys\n" + "".join(f"import selfsup.data.{m}\n" for m in parts)
            + "print(sorted(k for k in sys.modules if k.split('.')[0] in ('pytorch_lightning', 'lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_capped_subset_covers_every_class_of_cycling_labels():
    """The online kNN bank on a CPU (512 of a split): every other sample of labels i % 10 would be the even classes
    only, and kNN top-1 would stick at 0.5 (synthetic data)."""
    from selfsup.data.datamodule import spread_indices

    chosen = spread_indices(256, 128)
    assert len(chosen) == 128 == len(set(chosen)) and chosen == sorted(chosen)
    assert {i % 10 for i in chosen} == set(range(10))
    assert {i % 2 for i in chosen} == {0, 1}
    assert spread_indices(256, 128) == chosen  # the same subset for every process and call
    assert spread_indices(10, None) == spread_indices(10, 20) == list(range(10))
