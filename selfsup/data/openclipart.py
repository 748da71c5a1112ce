"""Open Clip Art Library (Debian's openclipart-png + openclipart-svg): 8,121 drawings with artist-written metadata.

The prepare step pairs each PNG with the SVG at the same relative path and builds its caption from the SVG's
Dublin Core metadata: the work's title, its description, and its keywords ("title. description. keywords: a, b").
The top-level folder (animals, food, transportation, ...) is each image's label, for zero-shot evaluation.
It writes train.jsonl and val.jsonl (val: `val_fraction` of the images, held out by a hash of their file name)
into a cache folder keyed by the installed files, once; `python -m selfsup.data.openclipart --out DIR` writes them
anywhere. Install the data with `apt-get install -y openclipart-png openclipart-svg`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from selfsup.data.image_text import ImageTextManifest, PreparedManifests
from selfsup.data.openclipart_prepare import DEBIAN_ROOT, FORMAT_VERSION, prepare
from selfsup.data.tokenizer import default_cache_dir
from selfsup.errors import DataError


def cache_folder(root: Path, val_fraction: float, cache_dir: str | None) -> Path:
    """Keyed by the installed files (count and newest modification time), the split and the format."""
    if not (root / "png").is_dir():
        raise DataError(f"no openclipart images under {root}; apt-get install -y openclipart-png openclipart-svg, "
                        "or set data.root to a folder with png/ and svg/")
    stats = [p.stat() for p in (root / "png").glob("**/*.png")]
    key = json.dumps([str(root.resolve()), len(stats), max((s.st_mtime_ns for s in stats), default=0),
                      val_fraction, FORMAT_VERSION])
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir().parent / "openclipart"
    return base / hashlib.sha256(key.encode()).hexdigest()[:16]


class OpenClipart(PreparedManifests, ImageTextManifest):
    """The Open Clip Art pairs, prepared on first use; `label` is the top-level folder (22 classes)."""

    name = "openclipart"

    def __init__(self, root: str | None = None, cache_dir: str | None = None, val_fraction: float = 0.05,
                 **kwargs: Any) -> None:
        super().__init__(label_key="label", val_fraction=val_fraction, **kwargs)
        self.root = Path(root).expanduser() if root else DEBIAN_ROOT
        self.cache_dir = cache_dir

    @property
    def source(self) -> str:
        return f"{self.name} ({self.root})"

    def media_identity(self, path: str) -> str:
        """Copies of a drawing in several sub-folders share their file name: one image for retrieval."""
        return Path(path).name

    def cache_folder(self) -> Path:
        return cache_folder(self.root, self.val_fraction, self.cache_dir)

    def prepare(self, folder: Path) -> tuple[Path, Path]:
        return prepare(self.root, folder, self.val_fraction)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the openclipart image-caption manifests (train/val .jsonl).")
    parser.add_argument("--root", default=str(DEBIAN_ROOT), help="folder with png/ and svg/")
    parser.add_argument("--out", required=True, help="folder for train.jsonl and val.jsonl")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    args = parser.parse_args(argv)
    for path in prepare(args.root, args.out, args.val_fraction):
        print(f"wrote {path} ({sum(1 for _ in open(path))} pairs)")


if __name__ == "__main__":
    main()
