"""Decoding image files into PIL images of a given channel count (Lightning-free: used by every image source)."""
from __future__ import annotations

from typing import Any, BinaryIO


def open_image(path: str, channels: int = 3) -> Any:
    """The image file at `path` as a PIL image with `channels` (see decode_image)."""
    with open(path, "rb") as f:
        return decode_image(f, channels)


def decode_image(file: BinaryIO, channels: int = 3) -> Any:
    """An encoded image (a file object) as a PIL image with `channels` (3: RGB, 1: L). Transparent pixels become
    white, not whatever colour the file stores under them (clip art and logos are mostly transparent)."""
    from PIL import Image

    image = Image.open(file)
    image.load()
    if image.mode == "P" and "transparency" in image.info or image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB" if channels == 3 else "L")
