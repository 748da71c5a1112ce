"""Features of a batch, by the backbone's modality."""
from __future__ import annotations

import torch
from conftest import HAS_TEXT
from helpers import tiny_vit_16px as tiny_vit

from selfsup.evaluation.features import features


def test_features_dispatch_on_modality():
    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(features(vit, {"view1": images, "label": torch.zeros(2)}), vit(images))
    if HAS_TEXT:
        from selfsup.backbones.text_transformer import TextTransformer

        text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2, dropout=0.0, attn_dropout=0.0).eval()
        ids, mask = torch.randint(5, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
        mask[1, 4:] = 0
        assert torch.equal(features(text, {"input_ids": ids, "attention_mask": mask}), text(ids, mask))
