"""Data-loader throughput of two-view SimCLR augmentation on CPU workers: selfsup's loader beside torchvision's.

    python bench/loader.py [--res 32 224] [--workers 2] [--rounds 3] [--anchors ../shared/anchors]

Both sides run the anchors' recipe (bench_aug.py: crop 0.08-1, flip, jitter 0.8/0.8/0.8/0.2 p 0.8, grayscale 0.2,
blur p 0.5 with a kernel of 10% of the side) from uint8 images in memory (256 px for 224 px views, else the view's
size) to two uint8 views per image, in a DataLoader with the same workers and batch (64):
- selfsup: the Synthetic data module with `data.augment_on=cpu` (workers decode per sample, then make the views
  of the whole batch as they collate it);
- torchvision: bench_aug.py's PIL pipeline (torchvision.transforms v1, image by image), `--out uint8`.
Each round times one epoch per side after an untimed one that starts the persistent workers; the sides alternate
so that a noisy machine affects both alike. One JSON line per side and size (median images/s, min, max) and the
ratio selfsup / torchvision. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import anchor_scripts  # noqa: E402

from selfsup.data.synthetic import Synthetic  # noqa: E402

BATCH = 64


def selfsup_loader(res: int, n: int, workers: int) -> DataLoader:
    view = dict(crop_scale=[0.08, 1.0], hflip=0.5, color_jitter=[0.8, 0.8, 0.8, 0.2], color_jitter_p=0.8,
                grayscale_p=0.2, blur_p=0.5, blur_min_size=0, size=res)
    source = 256 if res >= 96 else res
    data = Synthetic(num_samples=n, num_val_samples=1, image_size=source, channels=3, batch_size=BATCH,
                     num_workers=workers, augment_on="cpu", views=[{"key": "view1", **view}, {"key": "view2", **view}])
    data.setup()
    return data.train_dataloader()


def torchvision_loader(anchor, res: int, n: int, workers: int) -> DataLoader:
    pairs = anchor.Pairs(anchor.pil_pool(res), anchor.cpu_transform(res, "uint8"), n)
    return DataLoader(pairs, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)


def epoch_rate(loader: DataLoader) -> float:
    start = time.perf_counter()
    count = sum(len(batch[0] if isinstance(batch, (list, tuple)) else batch["view1"]) for batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--res", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--anchors", type=Path, default=anchor_scripts.DEFAULT_FOLDER)
    args = parser.parse_args()
    anchor = anchor_scripts.load(args.anchors)
    for res in args.res:
        n = 8192 if res < 96 else 512
        loaders = {"selfsup": selfsup_loader(res, n, args.workers),
                   "torchvision": torchvision_loader(anchor, res, n, args.workers)}
        for loader in loaders.values():  # starts the workers
            epoch_rate(loader)
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                rates[name].append(epoch_rate(loader))
        for name, values in rates.items():
            print(json.dumps({"side": name, "res": res, "workers": args.workers, "batch": BATCH, "images": n,
                              "images_per_s": round(statistics.median(values), 1), "min": round(min(values), 1),
                              "max": round(max(values), 1)}), flush=True)
        ratios = [a / b for a, b in zip(rates["selfsup"], rates["torchvision"])]
        print(json.dumps({"res": res, "ratio_selfsup_over_torchvision": round(statistics.median(ratios), 2),
                          "min": round(min(ratios), 2), "max": round(max(ratios), 2),
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
