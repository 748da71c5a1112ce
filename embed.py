"""Embed a dataset with a pretrained backbone: `python embed.py checkpoint=RUN_DIR out=FILE.npz [data=NAME] [split=val]`."""
from __future__ import annotations

import sys
from pathlib import Path

from selfsup.errors import exit_code

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def main(argv: list[str]) -> int:
    from selfsup.evaluation.embed import embed
    from selfsup.evaluation.run import compose

    return exit_code(lambda: embed(compose(CONFIG_DIR, "embed", argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
