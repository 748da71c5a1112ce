"""Fine-tuning and LoRA train on `max_train_samples` of the training split, as the frozen-feature protocols do;
layer-wise learning-rate decay reads the text transformer's layers as a ViT's."""
from __future__ import annotations

import torch
from conftest import needs_text

from selfsup.backbones.vit import ViT
from selfsup.data.synthetic import Synthetic
from selfsup.evaluation.finetune import Classifier, FinetuneProtocol, layer_id, num_blocks, param_groups
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


@needs_text
def test_layer_decay_gives_text_blocks_and_embeddings_their_layers():
    """The text transformer's `blocks.i.` are layers i + 1 and its embeddings (token, position, segment, the
    post-LN embedding norm) layer 0, as a ViT's patch embedding; the final norm and the head train at the full rate."""
    from selfsup.backbones.text_transformer import TextTransformer

    for norm in ("pre", "post"):
        model = Classifier(TextTransformer(vocab_size=50, dim=16, depth=2, heads=2, norm=norm), 3)
        assert num_blocks(model.backbone) == 2

        def expected(name: str) -> int:
            if name.startswith(("backbone.token_embed.", "backbone.pos_embed", "backbone.type_embed.",
                                "backbone.embed_norm.")):
                return 0
            for i in range(2):
                if name.startswith(f"backbone.blocks.{i}."):
                    return i + 1
            assert name.startswith(("backbone.norm.", "head.")), name
            return 3

        names = [name for name, _ in model.named_parameters()]
        assert {"backbone.token_embed.weight", "backbone.pos_embed", "backbone.type_embed.weight"} <= set(names)
        assert ("backbone.embed_norm.weight" in names) == (norm == "post")
        assert ("backbone.norm.weight" in names) == (norm == "pre")
        assert {name: layer_id(name, 2) for name in names} == {name: expected(name) for name in names}
        groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
        scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
        for name, p in model.named_parameters():
            no_decay = p.ndim <= 1 or name == "backbone.pos_embed"
            assert scale[id(p)] == (0.5 ** (3 - expected(name)), 0.0 if no_decay else 0.05), name
