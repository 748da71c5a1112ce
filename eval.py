"""Evaluate a pretrained backbone: `python eval.py checkpoint=RUN_DIR protocol=knn|linear|finetune|lora [data=NAME]`."""
from __future__ import annotations

import sys
from pathlib import Path

from selfsup.commands.compose_config import check_run_folder, compose
from selfsup.errors import exit_code

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def evaluate(argv: list[str]) -> None:
    cfg = compose(CONFIG_DIR, "eval", argv, groups=("protocol",))
    check_run_folder(cfg)  # before the heavy imports: a wrong path or an untrusted config is refused at once
    from selfsup.commands.evaluate import evaluate as run_protocol

    run_protocol(cfg)


def main(argv: list[str]) -> int:
    """0, or 2 after a one-line error."""
    return exit_code(lambda: evaluate(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
