"""Evaluate a pretrained backbone: `python eval.py checkpoint=RUN_DIR protocol=knn|linear|finetune|lora [data=NAME]`."""
from __future__ import annotations

import sys
from pathlib import Path

from selfsup.errors import exit_code

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def main(argv: list[str]) -> int:
    from selfsup.evaluation.run import compose, evaluate

    return exit_code(lambda: evaluate(compose(CONFIG_DIR, "eval", argv, groups=("protocol",))))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
