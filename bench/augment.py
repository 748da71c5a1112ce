"""Two-view SimCLR augmentation with per-image parameters: selfsup's batched views beside the reference routes.

    python bench/augment.py --res 32 224 [--batch 256] [--rounds 3] [--seconds 1] [--anchors ../shared/anchors]

The recipe is bench_aug.py's (the anchors'): random resized crop 0.08-1, flip, colour jitter 0.8/0.8/0.8/0.2 with
p 0.8, grayscale p 0.2, Gaussian blur (kernel 10% of the side: 3 px at 32, 23 at 224; sigma 0.1-2) with p 0.5,
from uint8 images (256 px for 224 px views, else the view's size) to normalised float views. Routes, alternated
over `--rounds` rounds of at least `--seconds` each, so that a noisy machine affects all alike (median images/s,
with min and max):
- selfsup: views.device_views on the batch, eager and torch.compile'd (what `data.augment_on=gpu` runs; eager on
  the CPU, that is cpu_views.c, compiled the tensor route under Inductor);
- selfsup_tensors: augment.augment_with_tensors, the batched tensor route a GPU runs, here on the CPU;
- selfsup_workers: views.worker_batch_views in one process (what `data.augment_on=cpu` runs in each worker);
- kornia: `AugmentationSequential` with per-image parameters (the anchors' gpu_kornia);
- v2_per_image: torchvision.transforms.v2 applied image by image (the anchors' gpu_v2 per-sample route).
Runs on the current device (CUDA when there is one). One JSON line per route and size. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import anchor_scripts  # noqa: E402

from selfsup.data.augment import ViewSpec, augment_with_tensors, draws  # noqa: E402
from selfsup.data.views import SOURCE, device_views, worker_batch_views  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def simclr_views() -> list[ViewSpec]:
    """The anchors' recipe as selfsup views (blur at every size, as bench_aug.py)."""
    spec = dict(crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=(0.8, 0.8, 0.8, 0.2), color_jitter_p=0.8,
                grayscale_p=0.2, blur_p=0.5, blur_min_size=0)
    return [ViewSpec(key="view1", **spec), ViewSpec(key="view2", **spec)]


def routes(res: int, anchor, device: torch.device) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    views = simclr_views()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def normalise(view: torch.Tensor) -> torch.Tensor:
        """In place where the view is float (kornia's Normalize is part of its pipeline, so it is timed here)."""
        x = view.float().div_(255.0) if view.dtype == torch.uint8 else view
        return x.sub_(mean).div_(std)

    def selfsup(images: torch.Tensor, keys: torch.Tensor, make=device_views) -> list[torch.Tensor]:
        batch = make({SOURCE: images, "key": keys}, views, res)
        return [normalise(batch[v.key]) for v in views]

    def tensors(images: torch.Tensor, keys: torch.Tensor) -> list[torch.Tensor]:
        """The batched tensor route, what a GPU runs (on the CPU, device_views runs cpu_views.c instead)."""
        return [normalise(augment_with_tensors(images, v, draws(keys, n), res)) for n, v in enumerate(views)]

    compiled = torch.compile(device_views, dynamic=False)
    out = {"selfsup_eager": selfsup, "selfsup_compiled": lambda x, k: selfsup(x, k, compiled),
           "selfsup_tensors": tensors}
    if device.type == "cpu":
        out["selfsup_workers"] = lambda x, k: selfsup(x, k, worker_batch_views)
    if anchor is not None:
        kornia = anchor.gpu_kornia(res).to(device)
        v2 = anchor.gpu_v2(res)
        out["kornia"] = lambda x, k: [kornia(x.float() / 255) for _ in range(2)]
        out["v2_per_image"] = lambda x, k: [torch.stack([v2(im) for im in x]) for _ in range(2)]
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(fn: Callable, images: torch.Tensor, keys: torch.Tensor, device: torch.device,
               seconds: float) -> float:
    """Seconds per call of `fn` on the batch, over as many calls as fill `seconds` (at least one): a single call
    of a few milliseconds would measure the machine's noise."""
    calls, start = 0, time.perf_counter()
    while True:
        fn(images, keys)
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--res", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time each route for at least this long a round")
    parser.add_argument("--anchors", type=Path, default=anchor_scripts.DEFAULT_FOLDER)
    parser.add_argument("--only", nargs="+", default=None, help="route names to run (default: all)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    anchor = anchor_scripts.load(args.anchors) if (args.anchors / "bench_aug.py").exists() else None
    if anchor is None:
        print(f"no bench_aug.py in {args.anchors}: timing selfsup alone", file=sys.stderr)
    for res in args.res:
        side = 256 if res >= 96 else res
        images = torch.randint(0, 256, (args.batch, 3, side, side), dtype=torch.uint8, device=device,
                               generator=torch.Generator(device=device).manual_seed(0))
        keys = torch.arange(args.batch, device=device)
        chosen = {k: v for k, v in routes(res, anchor, device).items() if not args.only or k in args.only}
        for fn in chosen.values():  # warm-up (and compilation)
            fn(images, keys)
        times: dict[str, list[float]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, fn in chosen.items():
                times[name].append(time_batch(fn, images, keys, device, args.seconds))
        for name, ts in times.items():
            rates = [args.batch / t for t in ts]
            print(json.dumps({"route": name, "res": res, "batch": args.batch, "device": str(device),
                              "threads": torch.get_num_threads(), "images_per_s": round(statistics.median(rates), 1),
                              "min": round(min(rates), 1), "max": round(max(rates), 1)}), flush=True)


if __name__ == "__main__":
    main()
