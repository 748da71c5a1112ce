"""Embeddings of a whole split: features (N, D) float32, labels (N,) where present and each sample's index (N,),
in index order, saved by the output file's extension: .npz (numpy), .safetensors, or .pt (a dict of tensors)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from selfsup.errors import ConfigError
from selfsup.evaluation.checkpoint import load_pretrained, resolve_checkpoint
from selfsup.evaluation.data import build_eval_data, pick_device
from selfsup.evaluation.features import FeatureSet, autocast_for, extract
from selfsup.evaluation.protocol import EVAL_VIEWS

FORMATS = (".npz", ".safetensors", ".pt")


def check_output(path: str | Path) -> Path:
    """The output path, refused before any work when its format is unknown or its folder not writable."""
    out = Path(str(path)).expanduser()
    if out.suffix not in FORMATS:
        raise ConfigError(f"out={path}: unknown format '{out.suffix}'; end the file name with one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"out={path}: folder {out.parent} is not writable; choose another out=")
    return out


def save_embeddings(feats: FeatureSet, out: Path, metadata: dict[str, str] | None = None) -> None:
    """Write features, labels (when present) and index to `out` in the format its extension names, atomically."""
    tensors = {"features": feats.features.float().cpu().contiguous(), "index": feats.index.long().cpu().contiguous()}
    if feats.labels is not None:
        tensors["labels"] = feats.labels.long().cpu().contiguous()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if out.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in tensors.items()})
    elif out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata=metadata)
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, out)


def embed(cfg: DictConfig) -> FeatureSet:
    """What `python embed.py` runs; returns the features it saved."""
    from selfsup.evaluation.run import required

    checkpoint = required(cfg, "checkpoint", "a run folder or a .ckpt file in one")
    out = check_output(required(cfg, "out", "the output file: .npz, .safetensors or .pt"))
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split={cfg.split}: choose train or val")
    resolve_checkpoint(checkpoint)
    device = pick_device(cfg.device)
    pre = load_pretrained(checkpoint)
    data = build_eval_data(cfg.get("data"), pre, EVAL_VIEWS, cfg.seed, cfg.batch_size)
    loader = data.eval_dataloader(cfg.split, max_samples=cfg.get("max_samples"))
    if loader is None:
        raise ConfigError(f"{data.source} has no {cfg.split} split; use split=train")
    print(f"embedding the {cfg.split} split of {data.source} ({len(loader.sampler)} samples) with {pre.checkpoint} "
          f"on {device}", flush=True)
    feats = extract(pre.backbone.to(device), loader, device, data.normalize,
                    lambda: autocast_for(device, cfg.precision))
    meta: dict[str, Any] = {"checkpoint": str(pre.checkpoint.resolve()), "step": str(pre.step), "split": cfg.split,
                            "data": data.source}
    save_embeddings(feats, out, meta)
    labels = "with labels" if feats.labels is not None else "without labels"
    print(f"wrote {out}: features {tuple(feats.features.shape)} {labels}", flush=True)
    return feats
