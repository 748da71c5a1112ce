"""Embed a dataset with a pretrained backbone:
`python embed.py checkpoint=RUN_DIR out=FILE.npz [data=NAME] [split=val]`."""
from __future__ import annotations

import sys
from pathlib import Path

from selfsup.commands.compose_config import check_run_folder, compose
from selfsup.errors import exit_code

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def embed(argv: list[str]) -> None:
    cfg = compose(CONFIG_DIR, "embed", argv)
    check_run_folder(cfg)  # before the heavy imports: a wrong path or an untrusted config is refused at once
    from selfsup.commands.embed_features import embed as embed_split

    embed_split(cfg)


def main(argv: list[str]) -> int:
    """0, or 2 after a one-line error."""
    return exit_code(lambda: embed(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
