"""Every objective's training step traces into one graph under torch.compile.

TorchDynamo breaks the graph wherever the step reads a tensor on the host (`.item()`, `bool(t)`, `.tolist()`) or
makes a shape that depends on tensor values (`nonzero`, boolean-mask indexing). On a GPU each of those is a
host-device sync that stalls the queue, and each break costs `compile=true` its whole-step fusion. So a graph
break here is a speed regression, found on the CPU without compiling anything.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from selfsup.data.augment import resolve_view_sizes

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SMALL_VIT = ["backbone=vit_tiny", "+backbone.depth=2", "data=synthetic", "data.channels=3", "data.image_size=32",
             "backbone.patch_size=8"]
CASES = {
    "mae": ["objective=mae", *SMALL_VIT, "objective.decoder_depth=1"],
    "simclr-resnet": ["objective=simclr", "backbone=resnet18", "data=synthetic", "data.image_size=32"],
    "simclr-vit": ["objective=simclr", *SMALL_VIT],
    "byol-resnet": ["objective=byol", "backbone=resnet18", "data=synthetic", "data.image_size=32"],
    "dino-vit": ["objective=dino", *SMALL_VIT, "backbone.patch_size=4", "objective.out_dim=64",
                 "objective.hidden_dim=32"],  # 32 px global and 12 px local crops
    "dinov2-vit": ["objective=dinov2", *SMALL_VIT, "backbone.patch_size=4", "objective.out_dim=64",
                   "objective.patch_out_dim=64", "objective.hidden_dim=32"],  # block masks of fixed shapes
    "vicreg-resnet": ["objective=vicreg", "backbone=resnet18", "data=synthetic", "data.image_size=32",
                      "objective.expander_dim=64"],
    "barlow-twins-vit": ["objective=barlow_twins", *SMALL_VIT, "objective.projector_dim=64"],
    "mocov3-vit": ["objective=mocov3", *SMALL_VIT, "objective.hidden_dim=64", "objective.dim=32"],
    "ijepa-vit": ["objective=ijepa", "backbone=vit_tiny_mean", *SMALL_VIT[1:], "backbone.patch_size=4",
                  "objective.predictor_depth=1"],
    "mlm": ["objective=mlm", "backbone=text_tiny"],
    "mlm-nsp": ["objective=mlm", "backbone=text_tiny", "objective.next_sentence=true"],
    "clip": ["objective=clip", *SMALL_VIT[:2], "data.image_size=32", "backbone.patch_size=8",
             "backbone@objective.text_tower=text_tiny"],
    # audio: spectrograms (B, 1, 64 mel bins, 128 frames)
    "mae-audio": ["objective=mae", "backbone=audio_vit_tiny", "+backbone.depth=2", "data=asterisk",
                  "objective.mask_ratio=0.8", "objective.decoder_depth=1"],
    "byol-cnn14": ["objective=byol", "backbone=cnn14", "backbone.width=4", "data=asterisk"],
    "clap": ["objective=clap", "+backbone.depth=2"],
}
BATCH, LENGTH = 4, 16


def padded_tokens(vocab_size: int) -> dict[str, torch.Tensor]:
    """Token ids of uneven lengths, padded (id 0) after [SEP] (id 3), with their attention mask."""
    lengths = torch.tensor([LENGTH, 9, 5, 12])
    mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    ids = torch.randint(5, vocab_size, (BATCH, LENGTH))
    ids[:, 0], ids[torch.arange(BATCH), lengths - 1] = 2, 3
    return {"input_ids": ids * mask, "attention_mask": mask}


def batch_for(cfg, objective, backbone) -> dict[str, torch.Tensor]:
    batch = {"key": torch.arange(BATCH)}
    if objective.modality == "text":
        batch.update(padded_tokens(cfg.backbone.vocab_size))
        if objective.nsp is not None:
            batch["token_type_ids"] = (torch.arange(LENGTH) >= LENGTH // 2).long().expand(BATCH, LENGTH)
            batch["next_sentence_label"] = torch.tensor([0, 1, 1, 0])
        return batch
    for view in objective.views or [{"key": "image"}]:
        size = view.get("size") or 32  # multi-crop views have their own size
        shape = (1, *backbone.img_size) if backbone.modality == "audio" else (3, size, size)
        batch[view["key"]] = torch.randn(BATCH, *shape)
    if hasattr(objective, "text_tower"):  # a dual encoder: captions too
        batch.update(padded_tokens(cfg.objective.text_tower.vocab_size))
    return batch


@pytest.mark.parametrize("name", CASES)
def test_training_step_traces_without_graph_breaks(name):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*CASES[name], "run_dir=runs/test"])
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone)
    objective = instantiate(cfg.objective, backbone=backbone, _convert_="all")
    resolve_view_sizes(objective.views, 32, getattr(backbone, "patch_size", 1))  # as the assembly layer does
    batch = batch_for(cfg, objective, backbone)
    eager_loss = objective(backbone, batch).loss

    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: objective(backbone, b).loss)(batch)
    reasons = [f"{r.reason} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, "\n".join(reasons)
    assert torch.isfinite(eager_loss)
