"""Image folders: one class per folder, train and val splits."""
from __future__ import annotations

import math

import torch
from PIL import Image

from selfsup.data.image_folder import ImageFolder


def test_image_folder_reads_class_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cats", "dogs"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageFolder(root=str(tmp_path), image_size=32, batch_size=2, num_workers=0,
                     views=[{"key": "image", "crop_scale": [0.5, 1.0], "hflip": 0.5}])
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.val_set) == 4
    sample = dm.train_set[(0, 4)]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8 and sample["label"] == 1
    assert math.isclose(float(dm.val_set[(0, 0)]["image"].float().mean()), (0 + 10 + 200) / 3, abs_tol=2)
