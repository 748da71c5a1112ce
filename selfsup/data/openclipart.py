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
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from selfsup.data.image_text import ImageTextManifest
from selfsup.data.text_datasets import holdout
from selfsup.data.tokenizer import default_cache_dir
from selfsup.errors import DataError

DEBIAN_ROOT = Path("/usr/share/openclipart")
FORMAT_VERSION = 1  # part of the cache key: bump when captions change
MAX_PIXELS = 16_000_000  # 19 posters of up to 623M pixels are left out
DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_TAG = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)


def clean(text: str | None) -> str:
    return " ".join((text or "").split())


def svg_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(title, description, keywords) of the work an SVG describes; empty where absent or unreadable.

    The work's own dc:title is the one directly under its cc:Work element (creator and publisher agents
    have titles too). A file that is not well-formed XML falls back to its first dc:title.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, ValueError):
        try:
            match = _TAG.search(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return "", "", []
        return (clean(match.group(1)) if match else ""), "", []
    work = next((e for e in root.iter() if e.tag.endswith("}Work")), None)
    if work is None:
        return "", "", []
    title, description = clean(work.findtext(f"{DC}title")), clean(work.findtext(f"{DC}description"))
    keywords = [clean(li.text) for li in work.iter(f"{RDF}li") if clean(li.text)]
    return title, description, list(dict.fromkeys(keywords))


def pixels(png: Path) -> int:
    """Width x height from the PNG header, without decoding."""
    with open(png, "rb") as f:
        header = f.read(24)
    return int.from_bytes(header[16:20], "big") * int.from_bytes(header[20:24], "big")


def fallback_title(png: Path) -> str:
    """A title from the file name where the SVG has none: 'az-lizard_benji_park_01' -> 'az lizard benji park'."""
    return clean(re.sub(r"[_\-]+|\d+$", " ", png.stem))


def caption(title: str, description: str, keywords: list[str]) -> str:
    parts = [title, description, f"keywords: {', '.join(keywords)}" if keywords else ""]
    return ". ".join(p.rstrip(".") for p in parts if p) + "."


def prepare(root: str | Path = DEBIAN_ROOT, out: str | Path = ".", val_fraction: float = 0.05) -> tuple[Path, Path]:
    """Write out/train.jsonl and out/val.jsonl: {"image", "caption", "label"} per PNG. Returns both paths."""
    root, out = Path(root).expanduser(), Path(out).expanduser()
    pngs = sorted((root / "png").glob("**/*.png"))
    if not pngs:
        raise DataError(f"no PNG under {root / 'png'}; apt-get install -y openclipart-png openclipart-svg, or set "
                        "data.root to a folder with png/ and svg/")
    rows, too_large = [], []
    for png in pngs:
        if pixels(png) > MAX_PIXELS:
            too_large.append(png)
            continue
        relative = png.relative_to(root / "png")
        svg = (root / "svg" / relative).with_suffix(".svg")
        title, description, keywords = svg_metadata(svg) if svg.is_file() else ("", "", [])
        rows.append({"image": str(png), "caption": caption(title or fallback_title(png), description, keywords),
                     "label": relative.parts[0] if len(relative.parts) > 1 else "unsorted"})
    val = holdout([Path(r["image"]).name for r in rows], val_fraction)  # copies in sub-folders stay together
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "val.jsonl"
    for path, keep in zip(paths, (False, True)):
        write_jsonl_atomic(path, [r for r, v in zip(rows, val) if v == keep])
    if too_large:
        print(f"openclipart: left out {len(too_large)} images of over {MAX_PIXELS // 10**6}M pixels "
              f"(e.g. {too_large[0].name}): decoding one takes seconds")
    return paths


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """All or nothing: a killed prepare never leaves a half-written manifest behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


class OpenClipart(ImageTextManifest):
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

    def image_identity(self, path: str) -> str:
        """Copies of a drawing in several sub-folders share their file name: one image for retrieval."""
        return Path(path).name

    def manifests(self) -> tuple[str, str | None]:
        if self.manifest is None:
            folder = cache_folder(self.root, self.val_fraction, self.cache_dir)
            train, val = folder / "train.jsonl", folder / "val.jsonl"
            if not (train.is_file() and val.is_file()):
                try:
                    train, val = prepare(self.root, folder, self.val_fraction)
                except OSError as e:
                    raise DataError(f"cannot write the openclipart manifests to {folder}: {e.strerror or e}; set "
                                    "data.cache_dir to a writable folder") from None
            self.manifest, self.val_manifest = str(train), str(val)
        return self.manifest, self.val_manifest


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
