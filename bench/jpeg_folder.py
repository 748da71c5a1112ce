"""Write an image folder of JPEGs for `PIPELINE=1 bench/throughput.py data=image_folder`: the data path's worst
case, where every image is decoded, and cropped per image (sizes differ), before the views.

    python bench/jpeg_folder.py OUT_DIR [--images 2048] [--classes 8] [--seed 0]

Images of 200-500 px a side (as ImageNet's, before any resize), smooth colour fields with fine noise, so that they
compress and decode like photographs rather than like pure noise; quality 90. Laid out as ImageFolder expects
(OUT_DIR/train/<class>/<n>.jpg). Not a test.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def image(generator: torch.Generator) -> Image.Image:
    height, width = (int(v) for v in torch.randint(200, 501, (2,), generator=generator))
    coarse = torch.rand(1, 3, 6, 6, generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    field = field + 0.05 * torch.randn(3, height, width, generator=generator)
    pixels = (field.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    for n in range(args.images):
        folder = args.out / "train" / f"class{n % args.classes}"
        folder.mkdir(parents=True, exist_ok=True)
        image(generator).save(folder / f"{n}.jpg", quality=90)
    print(f"{args.images} JPEGs in {args.out / 'train'}")


if __name__ == "__main__":
    main()
