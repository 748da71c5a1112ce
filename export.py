"""Export a pretrained backbone for use without selfsup: `python export.py checkpoint=RUN_DIR out=DIR`, and
`push_to_hub=USER/REPO` to publish the folder on the Hugging Face Hub (as the logged-in user)."""
from __future__ import annotations

import re
import sys

from selfsup import runs
from selfsup.errors import ConfigError, exit_code

USAGE = "usage: python export.py checkpoint=RUN_DIR_OR_CKPT out=DIR [push_to_hub=USER/REPO]"
HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_args(argv: list[str]) -> dict[str, str]:
    """`checkpoint=PATH out=DIR`, both required; `push_to_hub=USER/REPO` optional."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("checkpoint", "out", "push_to_hub"):
            raise ConfigError(f"unknown argument '{arg}'; {USAGE}")
        args[key] = value
    for key in ("checkpoint", "out"):
        if not args.get(key):
            raise ConfigError(f"give {key}=...; {USAGE}")
    if "push_to_hub" in args and not HUB_REPO.fullmatch(args["push_to_hub"]):
        raise ConfigError(f"push_to_hub={args['push_to_hub']} is not a Hub repo id; give USER/REPO (or ORG/REPO)")
    return args


def export(argv: list[str]) -> None:
    args = parse_args(argv)
    runs.trusted_config(runs.run_folder(args["checkpoint"]))  # before the heavy imports: refused at once
    from selfsup.commands.export_backbone import export_and_tell

    export_and_tell(args["checkpoint"], args["out"], args.get("push_to_hub"))


def main(argv: list[str]) -> int:
    """0, or 2 after a one-line error."""
    return exit_code(lambda: export(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
