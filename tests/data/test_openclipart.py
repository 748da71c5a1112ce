"""Open Clip Art: captions and labels from the SVG metadata, and Debian's packaged drawings."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from selfsup.data import openclipart, openclipart_prepare
from selfsup.data.openclipart import OpenClipart
from selfsup.data.openclipart_prepare import caption, prepare, svg_metadata

SVG = """<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>
<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag><rdf:li>{k1}</rdf:li><rdf:li>{k2}</rdf:li></rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>Some Artist</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata></svg>"""


def fake_openclipart(root: Path) -> None:
    for relative, title in [("animals/birds/owl_x_01", "Night owl"), ("food/apple_y_01", "Green apple"),
                            ("food/no_title_z_01", "")]:
        png = root / "png" / f"{relative}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (6, 5)).save(png)
        svg = root / "svg" / f"{relative}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(SVG.format(title=title, description="Drawn  by hand." if title else "", k1="bird", k2="bird"))
    huge = root / "png" / "signs" / "poster_01.png"  # only its header is read: 5000 x 4000 pixels
    huge.parent.mkdir(parents=True)
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 5000, 4000, 8, 6, 0, 0, 0)
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)))


def test_openclipart_prepare_builds_captions_labels_and_a_held_out_split(tmp_path, monkeypatch):
    fake_openclipart(tmp_path / "root")
    monkeypatch.setattr(openclipart_prepare, "MAX_PIXELS", 10_000_000)
    assert svg_metadata(tmp_path / "root/svg/animals/birds/owl_x_01.svg") == ("Night owl", "Drawn by hand.", ["bird"])
    assert caption("Night owl", "Drawn by hand.", ["bird", "owl"]) == "Night owl. Drawn by hand. keywords: bird, owl."
    train, val = prepare(tmp_path / "root", tmp_path / "out", val_fraction=0.0)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert val.read_text() == ""
    assert [(Path(r["image"]).name, r["caption"], r["label"]) for r in rows] == [
        ("owl_x_01.png", "Night owl. Drawn by hand. keywords: bird.", "animals"),
        ("apple_y_01.png", "Green apple. Drawn by hand. keywords: bird.", "food"),
        ("no_title_z_01.png", "no title z. keywords: bird.", "food"),  # title from the file name
    ]  # the 20M-pixel poster is left out


@pytest.mark.skipif(not openclipart.DEBIAN_ROOT.is_dir(),
                    reason="Debian's openclipart-png / openclipart-svg are not installed")
def test_debian_openclipart_gives_captioned_pairs_with_22_labels(openclipart_cache):
    data = OpenClipart(cache_dir=str(openclipart_cache), image_size=16, num_workers=0)
    train, val = data.splits()
    assert len(train) + len(val) == 8121 - 19  # all but the 19 posters of over 16M pixels
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.07
    assert len(data.class_names()) == 22 and "transportation" in data.class_names()
    assert sum(c.startswith("keywords") for c in train.captions) < 0.02 * len(train)  # nearly all have a title
    assert set(map(Path, train.paths)).isdisjoint(map(Path, val.paths))
