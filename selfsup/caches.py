"""Where selfsup keeps what it makes once per machine (trained tokenizers, built kernels)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """$SELFSUP_CACHE/name, else $XDG_CACHE_HOME/selfsup/name, else ~/.cache/selfsup/name."""
    if os.environ.get("SELFSUP_CACHE"):
        return Path(os.environ["SELFSUP_CACHE"]).expanduser() / name
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "selfsup" / name
