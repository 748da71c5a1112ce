"""Export a pretrained backbone for use without selfsup: `python export.py checkpoint=RUN_DIR out=DIR`."""
from __future__ import annotations

import sys

from selfsup import runs
from selfsup.errors import ConfigError, exit_code


def parse_args(argv: list[str]) -> dict[str, str]:
    """`checkpoint=PATH out=DIR`, both required."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("checkpoint", "out"):
            raise ConfigError(f"unknown argument '{arg}'; usage: python export.py "
                              "checkpoint=RUN_DIR_OR_CKPT out=DIR")
        args[key] = value
    for key in ("checkpoint", "out"):
        if not args.get(key):
            raise ConfigError(f"give {key}=...; usage: python export.py checkpoint=RUN out=DIR")
    return args


def export(argv: list[str]) -> None:
    args = parse_args(argv)
    runs.trusted_config(runs.run_folder(args["checkpoint"]))  # before the heavy imports: refused at once
    from selfsup.commands.export_backbone import export_and_tell

    export_and_tell(args["checkpoint"], args["out"])


def main(argv: list[str]) -> int:
    """0, or 2 after a one-line error."""
    return exit_code(lambda: export(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
