"""Training-step throughput of any objective/backbone config on synthetic data already on the device.

    python bench/throughput.py objective=mae backbone=vit_base data.image_size=224 data.batch_size=256 \
        objective.decoder_dim=512 objective.decoder_depth=8 objective.decoder_heads=16 [compile=true]

Prints one JSON line: samples/s, step time (median of timed steps, each between device syncs), model
FLOPs per step (torch.utils.flop_counter: matmuls, convolutions, attention; forward and backward), MFU
against the device's peak dense bf16 rate (env PEAK_TFLOPS overrides), and peak memory. The step is the
one training uses: the objective on the backbone, bf16 autocast on GPUs, the configured optimizer (fused
AdamW on CUDA). It is not a test. Environment: WARMUP (default 10), ITERS (30), OUT (append JSON there).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfsup.module import OptimConfig, PretrainModule  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989, "H200": 989, "GH200": 989, "B200": 2250, "A100": 312, "L40S": 362, "L4": 121,
                    "A10": 125, "4090": 165, "3090": 71}


def device_peak(device: torch.device) -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def synthetic_batch(cfg, batch_size: int, device: torch.device, views: list[dict]) -> dict:
    """Normalised random images for every view the objective declares, plus sample keys."""
    size, channels = cfg.data.image_size, cfg.data.channels
    batch = {"key": torch.arange(batch_size, device=device), "index": torch.arange(batch_size, device=device)}
    for spec in views or [{"key": "image"}]:
        batch[spec["key"]] = torch.randn(batch_size, channels, size, size, device=device)
    return batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(overrides: list[str]) -> dict:
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + ["run_dir=bench"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    backbone = instantiate(cfg.backbone)
    objective = instantiate(cfg.objective, backbone=backbone, _convert_="all")
    batch_size = cfg.data.batch_size
    optim = OptimConfig.from_cfg(OmegaConf.to_container(cfg.optim, resolve=True), batch_size, 1000, 10_000)
    module = PretrainModule(backbone, objective, optim, compile=cfg.compile).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    batches = [synthetic_batch(cfg, batch_size, device, objective.views) for _ in range(2)]
    use_bf16 = device.type == "cuda"
    counter = {"i": 0}

    def step() -> None:
        counter["i"] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = module.objective(module.backbone, batches[counter["i"] % 2]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = int(os.environ.get("WARMUP", 10 if device.type == "cuda" else 2))
    iters = int(os.environ.get("ITERS", 30 if device.type == "cuda" else 3))
    for _ in range(warmup):
        step()
    sync(device)
    if cfg.compile:  # FlopCounterMode cannot see inside compiled graphs: count an eager step of the same model
        eager_backbone = instantiate(cfg.backbone)
        eager_objective = instantiate(cfg.objective, backbone=eager_backbone, _convert_="all")
        eager = PretrainModule(eager_backbone, eager_objective, optim).to(device)
        with FlopCounterMode(display=False) as fc, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            eager.objective(eager.backbone, batches[0]).loss.backward()
        del eager
    else:
        with FlopCounterMode(display=False) as fc:
            step()
    flops = fc.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    peak = device_peak(device)
    row = {
        "config": " ".join(overrides), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": batch_size, "samples_per_s": round(batch_size / dt, 1),
        "step_ms": round(dt * 1e3, 2), "gflop_per_step": round(flops / 1e9, 1),
        "tflops": round(flops / dt / 1e12, 2), "mfu": round(flops / dt / peak, 4) if peak else None,
        "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2),
    }
    if device.type == "cuda":
        row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print("RESULT " + json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
