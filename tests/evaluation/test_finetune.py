"""Fine-tuning and LoRA train on `max_train_samples` of the training split, as the frozen-feature protocols do."""
from __future__ import annotations

import torch

from selfsup.backbones.vit import ViT
from selfsup.data.synthetic import Synthetic
from selfsup.evaluation.finetune import FinetuneProtocol
from selfsup.evaluation.lora import LoRAProtocol
from selfsup.evaluation.protocol import EvalContext


def test_finetune_and_lora_train_on_the_capped_split():
    data = Synthetic(num_samples=256, num_val_samples=16, image_size=16, channels=1, batch_size=16, num_workers=0,
                     views=FinetuneProtocol().views)
    data.setup()
    seen: list[int] = []
    real = data.train_dataloader

    def counting(max_samples=None):
        loader = real(max_samples=max_samples)
        seen.append(sum(len(b["index"]) for b in loader))
        return loader

    data.train_dataloader = counting
    ctx = EvalContext(data=data, device=torch.device("cpu"), num_classes=10, max_train_samples=64)
    for protocol in (FinetuneProtocol(epochs=1), LoRAProtocol(epochs=1, rank=2)):
        backbone = ViT("vit_tiny_patch16_224", img_size=16, in_chans=1, depth=1)
        protocol.run(backbone, ctx)
    assert seen == [64, 64]  # not the split's 256
    indices = {int(i) for b in real(max_samples=64) for i in b["index"]}
    assert len(indices) == 64 and max(indices) > 64  # a fixed subset spread over the split, with its own indices
