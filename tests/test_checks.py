"""Checks before training: an objective refuses a backbone of another modality."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from selfsup.checks import check_modalities
from selfsup.errors import ConfigError


def test_objective_with_a_backbone_of_another_modality_is_refused():
    cfg = OmegaConf.create({
        "objective": {"_target_": "selfsup.objectives.mae.MAE"},
        "backbone": {"_target_": "targets.TextBackbone"},
        "data": {"_target_": "selfsup.data.synthetic.Synthetic"},
    })
    with pytest.raises(ConfigError, match="objective MAE needs image or audio backbone, but the chosen backbone is"):
        check_modalities(cfg)
