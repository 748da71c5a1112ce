"""Config node -> object: the one call to Hydra's instantiate, and the check that makes a run folder's config data.

`build` turns a config node into objects (a user error raised by a constructor comes out as itself, not wrapped
in Hydra's InstantiationException). Nothing else in selfsup calls Hydra's instantiate.

A config read from a run folder (eval, embed, export, monitors reading another run) is data that may come from
anyone: a `_target_` in it names a callable that Hydra would import and call, so a shared config.yaml could run
any code (`torch.load(weights_only=False)` of a base64 payload, `os.system`, ...). `load_trusted_config` resolves
such a config (no interpolation is left to produce a target later) and checks every `_target_`, at any depth and
inside lists, before anything is imported or built:

- selfsup's own classes and functions: a dotted path under `selfsup.` that resolves to a class, function or
  method defined in a selfsup module (so `selfsup.runs.os.system`, a module re-exported by selfsup, is refused);
- the exact outside callables selfsup's configs use, named one by one (`EXTERNAL_TARGETS`);
- what the user trusts by name in `SELFSUP_TRUSTED_TARGETS` (comma-separated dotted names, or package prefixes
  ending in `.`, e.g. `mylab.objectives.`): their own objectives and backbones.

Anything else is a ConfigError naming the key path and the target.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import ConfigError, SelfsupError

OWN_PACKAGE = "selfsup"
# Outside callables that selfsup's own configs name (configs/callbacks/), each exactly.
EXTERNAL_TARGETS = frozenset({
    "pytorch_lightning.callbacks.LearningRateMonitor",
})
TRUST_VARIABLE = "SELFSUP_TRUSTED_TARGETS"


def build(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate with `_convert_="all"` (plain lists and dicts reach the constructors), re-raising a
    user error from a constructor as itself (Hydra wraps it)."""
    kwargs.setdefault("_convert_", "all")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, SelfsupError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def user_trusted() -> tuple[str, ...]:
    """The names and prefixes the user trusts, from SELFSUP_TRUSTED_TARGETS."""
    return tuple(name.strip() for name in os.environ.get(TRUST_VARIABLE, "").split(",") if name.strip())


def _defined_under(obj: Any, package: str) -> bool:
    """Whether `obj` is a class, function or method whose code lives in `package` (not something it imported)."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
        return False
    module = getattr(obj, "__module__", None) or ""
    return module == package or module.startswith(package + ".")


def _locate(target: str) -> Any:
    from hydra._internal.utils import _locate as hydra_locate

    try:
        return hydra_locate(target)
    except Exception:  # an unimportable target is refused like an untrusted one
        return None


def _named_trusted(target: Any) -> str | None:
    """The package a target must be defined in to be trusted, from its name alone: "" for an exact trusted name,
    None for a name nothing trusts (refused without importing anything)."""
    if not isinstance(target, str) or not target:
        return None
    if target in EXTERNAL_TARGETS:
        return ""
    for trusted in user_trusted():
        if trusted.endswith(".") and target.startswith(trusted):
            return trusted.rstrip(".")
        if target == trusted:
            return ""
    return OWN_PACKAGE if target.startswith(OWN_PACKAGE + ".") else None


def is_trusted(target: Any) -> bool:
    """Whether a `_target_` value may be imported and called (see the module docstring)."""
    package = _named_trusted(target)
    if package is None:
        return False
    return package == "" or _defined_under(_locate(target), package)


def all_targets(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(key path, value) of every `_target_` in a plain container, depth first."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((where, value))
            else:
                found.extend(all_targets(value, where))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.extend(all_targets(value, f"{path}[{i}]"))
    return found


def untrusted_targets(node: Any) -> list[tuple[str, Any]]:
    """(key path, target) of every `_target_` that is_trusted refuses: those refused by name first, so that a
    hostile config is refused before any module (selfsup's included) is imported to check the others."""
    targets = all_targets(node)
    by_name = [(where, target) for where, target in targets if _named_trusted(target) is None]
    return by_name or [(where, target) for where, target in targets if not is_trusted(target)]


def check_trusted(node: Any, source: str) -> Any:
    """The node as a resolved plain container, after every `_target_` in it passed is_trusted; a one-line
    ConfigError naming the first refused key path and target otherwise."""
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{source}: cannot resolve it ({' '.join(str(e).split())[:200]})") from None
    bad = untrusted_targets(node)
    if bad:
        where, target = bad[0]
        raise ConfigError(f"{source}: refused {where}={target!r}: a run folder's config may only name selfsup's "
                          f"own classes and {', '.join(sorted(EXTERNAL_TARGETS))}; to trust your own code, name it "
                          f"in {TRUST_VARIABLE} (e.g. {TRUST_VARIABLE}=mylab.objectives.)")
    return node


def load_trusted_config(path: Path) -> DictConfig:
    """A config file from a run folder, resolved and checked by check_trusted, before anything is built from it."""
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # YAML syntax, unreadable bytes
        raise ConfigError(f"{path}: not a readable config ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: not a config mapping; is it a run folder's config.yaml?")
    return OmegaConf.create(check_trusted(raw, str(path)))
