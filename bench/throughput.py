"""Training-step throughput of any objective/backbone config on synthetic data already on the device.

    python bench/throughput.py objective=mae backbone=vit_base data.image_size=224 data.batch_size=256 \
        objective.decoder_dim=512 objective.decoder_depth=8 objective.decoder_heads=16 [compile=true]
    python bench/throughput.py objective=simclr backbone=resnet50 data=synthetic data.image_size=224 \
        data.batch_size=256 data.augment_on=cpu     # the GPU step alone (views made in advance)
    python bench/throughput.py objective=clip backbone=vit_base backbone.name=vit_base_patch32_224 \
        backbone.patch_size=32 backbone@objective.text_tower=text_clip objective.embed_dim=512 \
        data.image_size=224 data.batch_size=1024   # CLIP ViT-B/32 (random captions of 8-77 tokens)

With `data.augment_on=gpu` (`auto` on a GPU) the timed step starts from uint8 images and makes the objective's
views on the device (what training does); with `cpu` the views are made in advance (the GPU step alone).
PIPELINE=1 times
whole training iterations fed by the configured data module's loader (CPU decoding, transfer, augmentation), and
reports the share of their time spent waiting for the batch (`data_wait_share`: 0 when the loader keeps up).

Prints one JSON line: samples/s, step time (median of timed steps, each between device syncs), model
FLOPs per step (torch.utils.flop_counter: matmuls, convolutions, attention; forward and backward), MFU
against the device's peak dense bf16 rate (env PEAK_TFLOPS overrides), and peak memory. The step is the
one training uses: the objective on the backbone, bf16 autocast on GPUs, the configured optimizer (fused
AdamW on CUDA). It is not a test. Environment: WARMUP (default 10), ITERS (30), OUT (append JSON there).
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import ContextManager

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfsup.assemble import build_optim, build_pieces  # noqa: E402
from selfsup.module import PretrainModule  # noqa: E402

# Dense bf16 peaks by device name, the first match wins (so the PCIe and NVL cards before the SXM "H100").
PEAK_BF16_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "GH200": 989, "B200": 2250,
                    "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "4090": 165, "3090": 71}


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


def synthetic_batch(cfg, data, batch_size: int, device: torch.device, views: list[dict]) -> dict:
    """Normalised random images for every view the objective declares, plus sample keys; for text data,
    full-length token sequences [CLS] random ordinary tokens [SEP] (the layout of selfsup's own tokenizers)."""
    batch = {"key": torch.arange(batch_size, device=device), "index": torch.arange(batch_size, device=device)}
    if data.modality == "text":
        from selfsup.data_facts import TokenizerInfo

        info, length = TokenizerInfo.default(int(cfg.backbone.vocab_size)), int(cfg.data.max_length)
        ids = torch.randint(max(info.special_ids) + 1, info.vocab_size, (batch_size, length), device=device)
        ids[:, 0], ids[:, -1] = info.cls_id, info.sep_id
        batch.update(input_ids=ids)  # packed blocks: no padding, so no attention mask (as the data module)
        if cfg.objective.get("next_sentence"):
            batch.update(token_type_ids=(torch.arange(length, device=device) >= length // 2).long().expand_as(ids),
                         next_sentence_label=torch.randint(0, 2, (batch_size,), device=device))
        return batch
    size, channels = cfg.data.image_size, cfg.data.channels
    for spec in views or [{"key": "image"}]:
        side = spec.get("size") or size  # multi-crop views have their own size (resolved to pixels by assembly)
        batch[spec["key"]] = torch.randn(batch_size, channels, side, side, device=device)
    return {**batch, **caption_fields(cfg, data, batch_size, device)}


def waveform_batch(cfg, data, batch_size: int, device: torch.device, views: list[dict], i: int) -> dict:
    """Audio data: random clips for every view, as the workers hand them over (the step makes their spectrograms
    and views on the device, as in training), plus captions for audio-text data."""
    keys = torch.arange(batch_size, device=device) + i * batch_size
    views = views or [{"key": "audio"}]
    clips = {spec["key"]: 0.1 * torch.randn(batch_size, data.length, device=device) for spec in views}
    return {**clips, "key": keys, "index": keys, **caption_fields(cfg, data, batch_size, device)}


def caption_fields(cfg, data, batch_size: int, device: torch.device) -> dict:
    """Paired data for an objective with a text tower (CLIP, CLAP): captions of 8 to context_length tokens,
    padded to context_length as the data modules pad them; nothing otherwise (MAE on the sounds of pairs)."""
    from selfsup.data_facts import TokenizerInfo
    from selfsup.modalities import PAIRED_MODALITIES

    if data.modality not in PAIRED_MODALITIES or cfg.objective.get("text_tower") is None:
        return {}
    info = TokenizerInfo.default(int(cfg.objective.text_tower.vocab_size))
    length = int(cfg.data.context_length)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(max(info.special_ids) + 1, info.vocab_size, (batch_size, length), generator=g)
    lengths = torch.randint(8, length + 1, (batch_size,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids[:, 0] = info.cls_id
    ids[torch.arange(batch_size), lengths - 1] = info.sep_id
    ids = ids.masked_fill(mask == 0, info.pad_id)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def countable_attention(device: torch.device) -> ContextManager:
    """FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU's fused one, whose FLOPs it
    would count as zero: off CUDA, count attention through the math kernel, whose matmuls give the same FLOPs."""
    if device.type == "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(overrides: list[str]) -> dict:
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + ["run_dir=bench"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training (train.py: trainer.benchmark, unless deterministic)
    torch.manual_seed(cfg.seed)
    pipeline = os.environ.get("PIPELINE") == "1"
    pieces = build_pieces(cfg, bind=pipeline)  # PIPELINE: real batches, with the data's token ids
    objective, data = pieces.objective, pieces.data
    batch_size = cfg.data.batch_size
    optim = build_optim(cfg, batch_size, 1000, 10_000)
    module = PretrainModule(pieces.backbone, objective, optim, compile=cfg.compile).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    audio = data.modality in ("audio", "audio-text")
    on_device = audio or getattr(data, "augment_on", "cpu") == "gpu" or pipeline
    if pipeline:
        loader = iter(data.train_dataloader())
        next_batch = lambda: {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v  # noqa: E731
                              for k, v in next(loader).items()}
    elif audio:
        batches = [waveform_batch(cfg, data, batch_size, device, objective.views, i) for i in range(2)]
        next_batch = lambda: dict(batches[counter["i"] % 2])  # noqa: E731
    elif on_device:  # uint8 images as the workers hand them over
        size, channels = cfg.data.image_size, cfg.data.channels
        shape = (batch_size, channels, size, size)
        batches = [{"source": torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
                    "key": torch.arange(batch_size, device=device) + i * batch_size,
                    **caption_fields(cfg, data, batch_size, device)} for i in range(2)]
        next_batch = lambda: dict(batches[counter["i"] % 2])  # noqa: E731
    else:
        batches = [synthetic_batch(cfg, data, batch_size, device, objective.views) for _ in range(2)]
        next_batch = lambda: batches[counter["i"] % 2]  # noqa: E731
    use_bf16 = device.type == "cuda"
    counter = {"i": 0}

    waits: list[float] = []  # PIPELINE: the time of each iteration spent getting its batch (loader, transfer, views)

    def step() -> None:
        counter["i"] += 1
        start = time.perf_counter()
        batch = data.on_device(next_batch()) if on_device else next_batch()
        if pipeline:
            sync(device)
            waits.append(time.perf_counter() - start)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = module.objective(module.backbone, batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = int(os.environ.get("WARMUP", 10 if device.type == "cuda" else 2))
    iters = int(os.environ.get("ITERS", 30 if device.type == "cuda" else 3))
    for _ in range(warmup):
        step()
    sync(device)
    if cfg.compile:  # FlopCounterMode cannot see inside compiled graphs: count an eager step of the same model
        eager_pieces = build_pieces(cfg, bind=False)
        eager = PretrainModule(eager_pieces.backbone, eager_pieces.objective, optim).to(device)
        with FlopCounterMode(display=False) as fc, countable_attention(device), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            batch = data.on_device(next_batch()) if on_device else next_batch()
            eager.objective(eager.backbone, batch).loss.backward()
        del eager
    else:
        with FlopCounterMode(display=False) as fc, countable_attention(device):
            step()
    flops = fc.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    waits.clear()
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    peak = device_peak(device)
    row = {
        "config": " ".join(overrides), "pipeline": pipeline,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": batch_size, "samples_per_s": round(batch_size / dt, 1),
        "step_ms": round(dt * 1e3, 2), "gflop_per_step": round(flops / 1e9, 1),
        "tflops": round(flops / dt / 1e12, 2), "mfu": round(flops / dt / peak, 4) if peak else None,
        "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2),
    }
    if pipeline:  # the share of the iteration spent waiting for data: 0 when the loader keeps up
        row["data_wait_share"] = round(sum(waits) / sum(times), 3)
    if device.type == "cuda":
        row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print("RESULT " + json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
