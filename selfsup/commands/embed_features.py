"""What `python embed.py` runs: embed a whole split of a pretrained run's data (or other data) and save it."""
from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from selfsup.assemble import build_eval_data, load_pretrained
from selfsup.commands.compose_config import required
from selfsup.errors import ConfigError
from selfsup.evaluation.data import pick_device
from selfsup.evaluation.embeddings import check_output, save_embeddings
from selfsup.evaluation.features import FeatureSet, autocast_for, extract
from selfsup.evaluation.pretrained import resolve_checkpoint
from selfsup.evaluation.protocol import EVAL_VIEWS


def embed(cfg: DictConfig) -> FeatureSet:
    """Embed `cfg.split` and write `cfg.out`; returns the features it saved."""
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
    batches = tqdm(loader, desc="embedding", unit="batch", total=len(loader), file=sys.stderr)
    feats = extract(pre.backbone.to(device), batches, device, data.normalize,
                    lambda: autocast_for(device, cfg.precision))
    meta: dict[str, Any] = {"checkpoint": str(pre.checkpoint.resolve()), "step": str(pre.step), "split": cfg.split,
                            "data": data.source}
    save_embeddings(feats, out, meta)
    labels = "with labels" if feats.labels is not None else "without labels"
    print(f"wrote {out}: features {tuple(feats.features.shape)} {labels}", flush=True)
    return feats
