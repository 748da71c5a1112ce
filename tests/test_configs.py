"""Every config file of every group composes, resolves, and names importable classes."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from selfsup.checks import GROUPS, check_modalities, choices

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CASES = [(group, name) for group in GROUPS for name in choices(CONFIG_DIR, group)]


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides + ["run_dir=runs/test"])


def test_every_group_has_options():
    for group in GROUPS:
        assert choices(CONFIG_DIR, group), f"configs/{group}/ is empty"


def modality(group: str, name: str) -> str | None:
    target = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml").get("_target_")
    return getattr(get_class(target), "modality", None) if target else None


# What a backbone or data config of another modality than image is composed with: its objective, and the other
# pieces a run of it needs.
PARTNERS = {("backbone", "text"): ["objective=mlm"], ("data", "text"): ["objective=mlm"],
            ("data", "image-text"): ["objective=clip"], ("backbone", "audio"): ["objective=clap"],
            ("data", "audio"): ["objective=mae", "backbone=audio_vit_tiny"], ("data", "audio-text"): ["objective=clap"]}


def objective_for(group: str, name: str) -> list[str]:
    """A backbone or data config is composed with an objective of its own modality."""
    wanted = modality(group, name) if group in ("backbone", "data") else None
    return PARTNERS.get((group, wanted), [])


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}={n}" for g, n in CASES])
def test_config_composes(group: str, name: str):
    cfg = compose_train([f"{group}={name}", *objective_for(group, name)])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for piece in ("backbone", "objective", "data"):
        assert get_class(container[piece]["_target_"])
    check_modalities(cfg)
    if OmegaConf.is_missing(cfg.data, "root"):
        cfg.data.root = "/some/folder"
    instantiate(cfg.data, num_workers=0)  # the constructor accepts the config's keys (no data is read)


def test_objective_picks_its_defaults_and_command_line_wins():
    cfg = compose_train(["objective=mae"])
    assert cfg.backbone.name == "vit_tiny_patch16_224" and cfg.data._target_.endswith("FashionMNIST")
    cfg = compose_train(["objective=mae", "backbone=vit_small", "data=synthetic"])
    assert cfg.backbone.name == "vit_small_patch16_224" and cfg.data._target_.endswith("Synthetic")


def test_experiment_preset_sets_the_paper_recipe():
    cfg = compose_train(["experiment=mae_vit_base_imagenet", "data.root=/x"])
    assert cfg.backbone.name == "vit_base_patch16_224" and cfg.backbone.patch_size == 16
    assert (cfg.objective.decoder_dim, cfg.objective.decoder_depth) == (512, 8)
    assert cfg.optim.warmup_epochs == 40 and cfg.trainer.max_epochs == 800


def test_no_source_or_config_file_is_git_ignored():
    import shutil
    import subprocess

    root = CONFIG_DIR.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    command = ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "selfsup", "configs", "train.py",
               "bench", "tests"]
    ignored = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout
    ignored = [line for line in ignored.splitlines() if "__pycache__" not in line]
    assert not ignored, f"files a clone would miss: {ignored}"
