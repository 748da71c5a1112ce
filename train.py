"""Pretrain a backbone with a self-supervised objective: `python train.py objective=mae [key=value ...]`."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from selfsup.checks import GROUPS, check_command_line, check_launcher, check_modalities
from selfsup.config_check import check_config
from selfsup.errors import SelfsupError, report

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def fail(error: SelfsupError) -> None:
    sys.exit(report(error))


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from selfsup.commands.pretrain import run

    hc = HydraConfig.get()
    names = {group: hc.runtime.choices.get(group) for group in ("objective", "backbone", "data")}
    if hc.mode == RunMode.MULTIRUN:
        names["sweep"] = Path(hc.sweep.dir).name
    try:
        run(cfg, Path(hc.runtime.output_dir), names)
    except SelfsupError as e:
        fail(e)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:], CONFIG_DIR)
        check_launcher(sys.argv[1:], CONFIG_DIR)
        if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in sys.argv[1:]):  # not --help, --cfg
            check_config(CONFIG_DIR, "train", sys.argv[1:], GROUPS, check_modalities)  # before Hydra makes run_dir
    except SelfsupError as e:
        fail(e)
    main()
