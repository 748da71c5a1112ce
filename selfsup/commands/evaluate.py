"""What `python eval.py` runs: check the inputs, load the backbone, run the protocol, write results.json (and,
for LoRA, the adapter in RUN/adapters/lora/)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from selfsup.assemble import build_eval_data, build_protocol, load_pretrained, run_captions
from selfsup.commands.compose_config import required
from selfsup.errors import ConfigError
from selfsup.evaluation.data import check_labelled, pick_device
from selfsup.evaluation.features import num_classes_of
from selfsup.evaluation.pretrained import resolve_checkpoint
from selfsup.evaluation.protocol import EvalContext
from selfsup.evaluation.results import (
    ADAPTERS,
    RANDOM_INIT_SUFFIX,
    RESULTS,
    EvalLogger,
    read_results,
    update_results,
)

WEIGHTS = ("trained", "random")


def wandb_settings(cfg: DictConfig, run_cfg: DictConfig) -> dict[str, Any] | None:
    """The eval's wandb run goes to the training run's project and group, in this command's mode."""
    wb = cfg.logger.get("wandb") if cfg.get("logger") else None
    if wb is None or wb.get("mode", "disabled") == "disabled":
        return None
    trained = OmegaConf.select(run_cfg, "logger.wandb") or {}
    objective = str(OmegaConf.select(run_cfg, "objective._target_") or "run").rsplit(".", 1)[-1].lower()
    return {"mode": wb.mode, "project": trained.get("project") or wb.get("project"),
            "group": trained.get("group") or wb.get("group") or objective, "tags": list(wb.get("tags") or [])}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol on one checkpoint; returns the results.json entry it wrote."""
    checkpoint = required(cfg, "checkpoint", "a run folder or a .ckpt file in one")
    resolve_checkpoint(checkpoint)  # a missing checkpoint fails here, before anything is built
    weights = cfg.get("weights", "trained")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights} is not one of {', '.join(WEIGHTS)} (trained: the checkpoint's; "
                          "random: the run's backbone at its random initialisation, the baseline)")
    protocol = build_protocol(cfg.protocol)
    device = pick_device(cfg.device)
    random_init = weights == "random"
    pre = load_pretrained(checkpoint, eval_model_modality=protocol.eval_model_modality, random_init=random_init,
                          seed=cfg.seed)
    key = f"{protocol.name}{RANDOM_INIT_SUFFIX}" if random_init else protocol.name
    data = build_eval_data(cfg.get("data"), pre, protocol.views, cfg.seed, cfg.batch_size)
    if protocol.needs_labels:
        check_labelled(data, f"protocol={protocol.name}")
    if protocol.trains:
        data.check_before_training(1)

    out_dir = Path(cfg.out).expanduser() if cfg.get("out") else pre.run_dir
    read_results(out_dir / RESULTS)  # an unreadable results.json stops here, not after the protocol ran
    logger = EvalLogger(out_dir / "eval" / key, csv_enabled=bool(cfg.logger.get("csv", True)),
                        wandb=wandb_settings(cfg, pre.run_cfg), name=f"{pre.run_dir.name}-{key}",
                        config={"eval": OmegaConf.to_container(cfg, resolve=True), "checkpoint": str(pre.checkpoint)})
    torch.manual_seed(cfg.seed)
    ctx = EvalContext(data=data, device=device, num_classes=num_classes_of(data) if protocol.needs_labels else 0,
                      precision=cfg.precision, seed=cfg.seed, batch_size=cfg.get("batch_size"),
                      max_train_samples=cfg.get("max_train_samples"), max_val_samples=cfg.get("max_val_samples"),
                      log=logger, captions=(lambda: run_captions(pre.run_cfg, pre.run_dir)),
                      adapter_dir=out_dir / ADAPTERS / key)
    classes = f", {ctx.num_classes} classes" if protocol.needs_labels else ""
    source = f"{pre.run_dir} at random initialisation (seed {cfg.seed})" if random_init else \
        f"{pre.checkpoint} (step {pre.step})"
    print(f"{key}: {source} on {data.source}{classes}, device {device}", flush=True)
    start = time.perf_counter()
    metrics = protocol.run(pre.backbone.to(device), ctx)
    entry = {**metrics, **pre.source(), "weights": weights,
             "data": data.source, "seconds": round(time.perf_counter() - start, 2),
             "protocol": OmegaConf.to_container(cfg.protocol, resolve=True)}
    out_dir.mkdir(parents=True, exist_ok=True)
    update_results(out_dir / RESULTS, key, entry)
    logger.finish(metrics)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val/") and isinstance(v, float))
    print(f"{key}: {shown}\nwrote {out_dir / RESULTS}", flush=True)
    return entry
