"""The Open Clip Art prepare step, Lightning-free: each PNG paired with the caption built from its SVG's metadata,
written as train.jsonl and val.jsonl (see data/openclipart.py for the data module and the command line)."""
from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from selfsup.data.text_datasets import holdout
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


