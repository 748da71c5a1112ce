"""Embeddings of a whole split: features (N, D) float32, labels (N,) where present and each sample's index (N,),
in index order, saved by the output file's extension: .npz (numpy), .safetensors, or .pt (a dict of tensors)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import ConfigError
from selfsup.evaluation.features import FeatureSet

FORMATS = (".npz", ".safetensors", ".pt")


def check_output(path: str | Path) -> Path:
    """The output path, refused before any work when its format is unknown or its folder not writable."""
    out = Path(str(path)).expanduser()
    if out.suffix not in FORMATS:
        raise ConfigError(f"out={path}: unknown format '{out.suffix}'; end the file name with one of "
                          f"{', '.join(FORMATS)}")
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
