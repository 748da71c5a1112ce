"""Other evaluation data is fitted to the pretrained backbone."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError


def test_other_eval_data_is_fitted_to_the_backbone_and_its_pretraining_normalisation(tmp_path):
    """Images from another source reach the backbone as it was pretrained: its image size, its channel count and
    its data's mean and std (not the new source's own statistics)."""
    from selfsup.evaluation.data import eval_data_node
    from selfsup.evaluation.pretrained import Pretrained

    backbone = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, depth=2)
    run_cfg = OmegaConf.create({"data": {"_target_": "selfsup.data.synthetic.Synthetic", "channels": 3,
                                         "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}})
    pre = Pretrained(backbone, run_cfg, tmp_path / "last.ckpt", tmp_path, 0)
    other = OmegaConf.create({"_target_": "selfsup.data.fashion_mnist.FashionMNIST", "image_size": 28, "channels": 3})
    node = eval_data_node(other, pre, tokenizer=lambda: None, normalization=lambda: ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]))
    assert node.image_size == 32
    assert list(node.mean) == pytest.approx([0.1, 0.2, 0.3]) and list(node.std) == pytest.approx([0.4, 0.5, 0.6])
    with pytest.raises(ConfigError, match="the backbone takes 3-channel images but the data gives 1"):
        eval_data_node(OmegaConf.create({**other, "channels": 1}), pre, tokenizer=lambda: None,
                       normalization=lambda: None)
