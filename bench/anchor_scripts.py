"""The reference implementations' benchmark scripts (../shared/anchors by default), loaded as modules so that
selfsup's benchmarks time their routes in the same process, on the same inputs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def load(folder: Path, name: str = "bench_aug") -> ModuleType:
    """`folder/name.py` as a module, without running its command line (its own imports resolve from `folder`)."""
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
