"""The text backbone: padding never changes real positions, the presets, the interface."""
from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from selfsup.backbones.text_transformer import TextTransformer
from selfsup.errors import ConfigError

CONFIG_DIR = ROOT / "configs"


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_never_changes_real_positions(norm):
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=50, dim=32, depth=2, heads=4, norm=norm, pool="mean").eval()
    ids = torch.randint(5, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:], mask[2, 3:] = 0, 0
    out = model.forward_tokens(ids, mask)
    other = ids.clone()
    other[0, 6:], other[2, 3:] = torch.randint(5, 50, (4,)), 0
    changed = model.forward_tokens(other, mask)
    real = mask.bool()
    torch.testing.assert_close(changed[real], out[real])
    assert not torch.allclose(changed[~real], out[~real])  # the padded positions themselves did change
    pooled = model(ids, mask)
    torch.testing.assert_close(pooled[0], out[0, :6].mean(0))
    torch.testing.assert_close(model(other, mask), pooled)
    # without padding, the mask is the same as none
    torch.testing.assert_close(model.forward_tokens(ids[1:2], mask[1:2]), model.forward_tokens(ids[1:2]))


def test_backbone_presets_and_interface():
    cfg_dir = str(CONFIG_DIR)
    with initialize_config_dir(cfg_dir, version_base="1.3"):
        cfg = compose("train", overrides=["objective=mlm", "run_dir=runs/test", "data.tokenizer.vocab_size=30522"])
    assert cfg.data._target_.endswith("WordNet") and cfg.backbone.dim == 512 and cfg.backbone.vocab_size == 30522
    with initialize_config_dir(cfg_dir, version_base="1.3"):
        base = compose("train", overrides=["objective=mlm", "backbone=text_base", "backbone.norm=post",
                                           "data.tokenizer.vocab_size=30522", "objective.next_sentence=true",
                                           "run_dir=runs/test"])
    assert base.data.next_sentence is True  # the data follows the objective's switch
    kwargs = {k: v for k, v in base.backbone.items() if k != "_target_"}
    with torch.device("meta"):
        bert = TextTransformer(**kwargs)
    assert sum(p.numel() for p in bert.parameters()) == 108_891_648  # BERT-base without its NSP pooler
    model = TextTransformer(vocab_size=40, dim=16, depth=1, heads=2)
    assert model.num_features == 16 and model.modality == "text" and model.input_embedding is model.token_embed
    ids = torch.randint(5, 40, (2, 7))
    assert model.forward_tokens(ids, torch.ones_like(ids)).shape == (2, 7, 16) and model(ids).shape == (2, 16)
    with pytest.raises(ConfigError, match="exceed backbone.max_positions 8"):
        TextTransformer(vocab_size=40, dim=16, depth=1, heads=2, max_positions=8).forward_tokens(ids.repeat(1, 2))
    with pytest.raises(ConfigError, match="backbone.norm"):
        TextTransformer(norm="sandwich")
