"""CLIP: the loss against a brute-force reference, gathered negatives, both towers and the logit scale."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, unit

from selfsup.backbones.text_transformer import TextTransformer
from selfsup.errors import ConfigError
from selfsup.objectives.clip import CLIP, clip_loss


def brute_force_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    """Mean over the 2n rows of -log softmax of the matching pair, written out with exp and log."""
    n, total = len(images), 0.0
    for i in range(n):
        to_texts = [math.exp(scale * float(images[i] @ texts[k])) for k in range(n)]
        to_images = [math.exp(scale * float(texts[i] @ images[k])) for k in range(n)]
        total -= math.log(to_texts[i] / sum(to_texts)) + math.log(to_images[i] / sum(to_images))
    return total / (2 * n)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_equals_the_brute_force_reference(scale):
    images, texts = unit(9, 12, 0), unit(9, 12, 1)
    loss, _, _ = clip_loss(images, texts, torch.tensor(scale))
    assert float(loss) == pytest.approx(brute_force_clip_loss(images, texts, scale), rel=1e-5)


def test_clip_loss_stays_float32_under_bf16_autocast():
    images, texts = unit(32, 16, 7), unit(32, 16, 8)
    reference, _, _ = clip_loss(images, texts, torch.tensor(100.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # logits near 100 in bf16 would move in steps of 0.5
        loss, _, _ = clip_loss(images, texts, torch.tensor(100.0))
    assert loss.dtype == torch.float32 and torch.equal(loss, reference)


def test_clip_loss_is_symmetric_in_images_and_texts():
    images, texts = unit(10, 8, 2), unit(10, 8, 3)
    loss, image_acc, text_acc = clip_loss(images, texts, torch.tensor(20.0))
    swapped, image_acc_swapped, text_acc_swapped = clip_loss(texts, images, torch.tensor(20.0))
    torch.testing.assert_close(loss, swapped)
    assert (image_acc, text_acc) == (text_acc_swapped, image_acc_swapped)
    matched, image_acc, text_acc = clip_loss(images, images.clone(), torch.tensor(20.0))
    assert image_acc == text_acc == 1.0 and matched < loss


def _gathered_clip_worker(rank: int, world: int, port: int, images: torch.Tensor, texts: torch.Tensor,
                          out: dict, compiled: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    a = images[rank::world].clone().requires_grad_(True)  # every world-th pair, as the EpochSampler shards
    b = texts[rank::world].clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss_fn = torch.compile(clip_loss, backend="eager", fullgraph=True) if compiled else clip_loss  # compile=true
    loss, _, _ = loss_fn(a, b, log_scale.exp())
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    scale_grad = log_scale.grad.clone()
    dist.all_reduce(scale_grad)
    out[rank] = (mean_loss / world, a.grad / world, b.grad / world, scale_grad / world)  # DDP's averaging
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gathered_negatives_give_the_single_process_loss_and_gradients(compiled):
    world = 2
    images, texts = unit(12, 6, 5), unit(12, 6, 6)
    out = mp.Manager().dict()
    mp.spawn(_gathered_clip_worker, args=(world, free_port(), images, texts, out, compiled), nprocs=world)
    a, b = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss, _, _ = clip_loss(a, b, log_scale.exp())
    loss.backward()
    for rank in range(world):
        rank_loss, grad_a, grad_b, grad_scale = out[rank]
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad_a, a.grad[rank::world], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_b, b.grad[rank::world], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_scale, log_scale.grad, rtol=1e-5, atol=1e-7)


class TinyImageBackbone(torch.nn.Module):
    num_features = 8
    modality = "image"

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_clip(**kwargs) -> tuple[TinyImageBackbone, CLIP]:
    torch.manual_seed(0)
    backbone = TinyImageBackbone()
    text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2, max_positions=12, dropout=0.0, attn_dropout=0.0)
    return backbone, CLIP(backbone, text, embed_dim=6, **kwargs)


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    backbone, clip = tiny_clip()
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert clip.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)  # exp(10) = 22026
    assert clip.scale().item() == pytest.approx(100.0)
    batch = {"image": torch.randn(4, 3, 4, 4), "input_ids": torch.randint(5, 50, (4, 12))}
    out = clip(backbone, batch)
    assert float(out.metrics["logit_scale"]) == pytest.approx(100.0)
    clip.after_optimizer_step(backbone, 1, 10)  # the parameter itself is brought back into [0, log 100]
    assert clip.logit_scale.item() == pytest.approx(math.log(100.0))


def test_clip_step_trains_both_towers_and_the_temperature():
    backbone, clip = tiny_clip(text_pool="eot")
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 7:] = 0
    batch = {"image": torch.randn(4, 3, 4, 4), "input_ids": torch.randint(5, 50, (4, 12)), "attention_mask": mask}
    out = clip(backbone, batch)
    out.loss.backward()
    assert out.features.shape == (4, 8) and not out.features.requires_grad
    for name, p in [*backbone.named_parameters(), *clip.named_parameters()]:
        if name.endswith("type_embed.weight") or "pos_embed" in name:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    batch["input_ids"][:, 8:] = 7  # padding after the [SEP] at position 6 changes nothing
    torch.testing.assert_close(clip(backbone, batch).loss, out.loss)


def test_bad_clip_settings_are_one_line_errors():
    backbone = TinyImageBackbone()
    with pytest.raises(ConfigError, match="text backbone"):
        CLIP(backbone, TinyImageBackbone())
    text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2)
    with pytest.raises(ConfigError, match="text_pool"):
        CLIP(backbone, text, text_pool="mean")
    with pytest.raises(ConfigError, match="init_temperature"):
        CLIP(backbone, text, init_temperature=0.001)


def test_clap_is_clips_objective_with_an_audio_tower_and_the_same_loss():
    """objective=clap: CLIP's class on an audio backbone. Its loss is CLIP's on the same embeddings (the brute-force
    reference), its metrics name audio, and its eval model pairs audio with text."""
    from selfsup.backbones.audio_vit import AudioViT
    from selfsup.data_facts import DataFacts

    torch.manual_seed(0)
    audio = AudioViT(n_mels=16, clip_seconds=0.32, depth=1, patch_size=8)  # 16 x 32 spectrograms, 2 x 4 patches
    text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2, dropout=0.0, attn_dropout=0.0)
    clap = CLIP(audio, text, views=[{"key": "audio"}],
                embed_dim=8)
    batch = {"audio": torch.randn(5, 1, 16, 32), "input_ids": torch.randint(5, 50, (5, 12))}
    out = clap(audio, batch)
    audio_emb, _ = clap.encode_image(audio, batch["audio"])
    text_emb = clap.encode_text(batch["input_ids"])
    assert float(out.loss) == pytest.approx(brute_force_clip_loss(audio_emb, text_emb, 1 / 0.07), rel=1e-5)
    assert {"audio_to_text_accuracy", "text_to_audio_accuracy"} <= set(out.metrics)
    assert clap.eval_model(audio).modality == "audio-text"
    clap.bind_data(DataFacts(modality="audio-text", source="pairs"))
    with pytest.raises(ConfigError, match="the backbone embeds audio but pairs gives image-text data"):
        clap.bind_data(DataFacts(modality="image-text", source="pairs"))
