"""Builders that test files in several folders share. Import them as `from helpers import ...`: tests/ is on sys.path
(pytest's default import mode puts the folder of the rootdir conftest.py there)."""
from __future__ import annotations

import base64
import csv
import io
import json
import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from selfsup.backbones.vit import ViT
from selfsup.objectives.mae import MAE


class FlatBackbone(nn.Module):
    """A backbone of one linear layer on flattened (B, 12) inputs: objectives' unit tests need no real network."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def free_port() -> int:
    """A free TCP port on localhost, for a test's torch.distributed group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- tensors and files ---------------------------------------------------------------------------------------------
def unit(n: int, d: int, seed: int) -> torch.Tensor:
    """n random unit vectors of dimension d (CLIP's and zero-shot's embeddings)."""
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def write_images(folder: Path, n: int, size: int = 12) -> list[Path]:
    """n PNGs img0.png ... of growing width, alternately transparent and opaque red (image-text and zero-shot tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGBA", (size + i, size), (10 * i, 0, 0, 255 if i % 2 else 0)).save(path)
        paths.append(path)
    return paths


def write_run(folder: Path, objective: str, seed: int, knn: list[float], wall: list[float],
              mask_ratio: float = 0.75) -> Path:
    """A run folder as train.py writes it: config.yaml, run_info.jsonl with the choices, metrics.csv."""
    folder.mkdir(parents=True)
    cfg = {"seed": seed, "run_dir": str(folder),
           "backbone": {"_target_": "selfsup.backbones.vit.ViT", "name": "vit_tiny_patch16_224", "depth": 2},
           "data": {"_target_": "selfsup.data.synthetic.Synthetic", "num_samples": 256},
           "objective": {"_target_": f"selfsup.objectives.{objective}.X", "mask_ratio": mask_ratio},
           "trainer": {"max_steps": 30, "devices": 1}, "logger": {"csv": True}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml")
    choices = {"objective": objective, "backbone": "vit_tiny", "data": "synthetic"}
    (folder / "run_info.jsonl").write_text(json.dumps({"choices": choices}) + "\n")
    rows = []
    for epoch, (acc, w) in enumerate(zip(knn, wall)):
        step = 10 * epoch + 9
        rows.append({"step": step, "epoch": epoch, "train/loss": 2.0 - 0.1 * epoch - 0.01 * seed,
                     "train/wall_s": w, "train/samples_per_s": 100.0 + seed})
        rows.append({"step": step, "epoch": epoch, "val/knn_top1": acc})
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", "train/samples_per_s",
                                               "train/wall_s", "val/knn_top1"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


# -- models --------------------------------------------------------------------------------------------------------
def tiny_vit(img_size=28, in_chans=1, **kw):
    """A two-block ViT-Tiny, by default on 28 x 28 one-channel images (MAE and ViT tests)."""
    return ViT("vit_tiny_patch16_224", img_size=img_size, in_chans=in_chans, depth=2, **kw)


def tiny_vit_16px(**kwargs) -> ViT:
    """A one-block ViT-Tiny on 16 x 16 RGB images (the evaluation tests' `tiny_vit`)."""
    return ViT("vit_tiny_patch16_224", img_size=16, in_chans=3, depth=1, **kwargs)


def tiny_vit_and_mae():
    """A two-block ViT with learned positions and its MAE (the optimizer, module and ViT tests' `tiny`)."""
    vit = ViT("vit_tiny_patch16_224", img_size=28, in_chans=1, depth=2, pos_embed="learned")
    return vit, MAE(vit, decoder_dim=32, decoder_depth=1, decoder_heads=2)


# -- text ----------------------------------------------------------------------------------------------------------
STORY = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine.",
    "all that glitters is not gold.",
    "the early bird catches the worm. the second mouse gets the cheese.",
    "actions speak louder than words.",
    "better late than never. never say never.",
]


# -- a pickle payload, as a shared run folder could carry ----------------------------------------------------------
class WritesMarker:
    """Pickles to a call that creates `path` when unpickled: the payload a shared checkpoint or config could carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').close()",)


def torch_load_payload(marker: Path) -> dict:
    """`torch.load(BytesIO(b64decode(...)), weights_only=False)` as nested `_target_`s: runs the pickle."""
    buffer = io.BytesIO()
    torch.save(WritesMarker(marker), buffer)
    data = base64.b64encode(buffer.getvalue()).decode()
    return {"_target_": "torch.load", "weights_only": False,
            "f": {"_target_": "io.BytesIO", "_args_": [{"_target_": "base64.b64decode", "_args_": [data]}]}}
