"""Config node -> object: the one call to Hydra's instantiate, and the check that makes a run folder's config data.

`build` turns a config node into objects (a user error raised by a constructor comes out as itself, not wrapped
in Hydra's InstantiationException). Nothing else in selfsup calls Hydra's instantiate.

A config read from a run folder (eval, embed, export) or an export folder is data that may come from anyone: a
`_target_` in it names a callable that Hydra would import and call, so a shared config.yaml could run any code
(`torch.load(weights_only=False)` of a base64 payload, `os.system`, ...). `trusted_node` checks such a config
before anything is built from it:

- No interpolation at all (`${...}`, also escaped as `\\${...}`, which resolves to a string that would become an
  interpolation again): the configs selfsup writes are fully resolved, and an interpolation is the one way a
  value could turn into a target (or read an environment variable) after the check.
- No key that makes a trusted class load a file by itself (`LOADER_KEYS`: timm's `checkpoint_path`, ...).
- Every `_target_`, at any depth and inside lists, names one of
  - a class defined in selfsup that is a module, callback, data module or evaluation protocol (`ALLOWED_BASES`),
    or one of selfsup's few factory methods (`OWN_CALLABLES`), under its canonical name (so
    `selfsup.runs.os.system`, something a selfsup module imported, is refused, and no selfsup function that
    writes or runs things is reachable);
  - the exact outside callables selfsup's configs use (`EXTERNAL_TARGETS`);
  - what the user trusts in `SELFSUP_TRUSTED_TARGETS` (comma-separated dotted names, or package prefixes ending in
    `.`, e.g. `mylab.objectives.`): their own objectives and backbones.
  Targets refused by name are refused before any module is imported to check the others.

Anything else is a ConfigError naming the key path and the value. Targets renamed since a run was written
(`RENAMED`) are read under their new names.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup.errors import ConfigError, SelfsupError

OWN_PACKAGE = "selfsup"
# What a selfsup class must be to be built from a shared config: the pieces of a run, nothing that writes.
ALLOWED_BASES = frozenset({
    "torch.nn.modules.module.Module",
    "pytorch_lightning.callbacks.callback.Callback",
    "lightning.pytorch.callbacks.callback.Callback",
    "pytorch_lightning.core.datamodule.LightningDataModule",
    "lightning.pytorch.core.datamodule.LightningDataModule",
    "selfsup.evaluation.protocol.Protocol",
})
# selfsup callables other than such classes that its configs name (configs/optim/), each exactly.
OWN_CALLABLES = frozenset({"selfsup.optim.OptimConfig.from_recipe"})
# Outside callables that selfsup's own configs name (configs/callbacks/), each exactly.
EXTERNAL_TARGETS = frozenset({"pytorch_lightning.callbacks.LearningRateMonitor"})
# Keys with which a trusted class would load a file of its own (timm.create_model's, Hugging Face's).
LOADER_KEYS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                         "trust_remote_code"})
# Module paths renamed since runs were written: old prefix -> new prefix.
RENAMED = {
    "selfsup.backbones.text.": "selfsup.backbones.text_transformer.",
    "selfsup.data.text.": "selfsup.data.text_corpora.",
    "selfsup.callbacks.throughput.": "selfsup.callbacks.throughput_logger.",
    "selfsup.callbacks.checkpoint.": "selfsup.callbacks.run_checkpoint.",
}
TRUST_VARIABLE = "SELFSUP_TRUSTED_TARGETS"


def build(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate with `_convert_="all"` (plain lists and dicts reach the constructors), re-raising a
    user error from a constructor as itself (Hydra wraps it), and a wrong keyword as a one-line ConfigError."""
    kwargs.setdefault("_convert_", "all")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, SelfsupError):
            if isinstance(cause, TypeError) and "keyword argument" in str(cause):
                raise ConfigError(f"{' '.join(str(e).split())[:300]}; check the key names") from None
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def user_trusted() -> tuple[str, ...]:
    """The names and prefixes the user trusts, from SELFSUP_TRUSTED_TARGETS."""
    return tuple(name.strip() for name in os.environ.get(TRUST_VARIABLE, "").split(",") if name.strip())


def canonical_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _is_run_piece(obj: Any) -> bool:
    """A class whose ancestry includes one of ALLOWED_BASES (read by name: nothing is imported for the check)."""
    return inspect.isclass(obj) and any(canonical_name(base) in ALLOWED_BASES for base in obj.__mro__)


def _named_trusted(target: Any) -> str | None:
    """How a target may be trusted, from its name alone: "exact" (trusted as named), a package whose class it
    must resolve to, or None (refused without importing anything)."""
    if not isinstance(target, str) or not target:
        return None
    if target in EXTERNAL_TARGETS or target in OWN_CALLABLES:
        return "exact"
    for trusted in user_trusted():
        if trusted.endswith(".") and target.startswith(trusted):
            return trusted.rstrip(".")
        if target == trusted:
            return "exact"
    return OWN_PACKAGE if target.startswith(OWN_PACKAGE + ".") else None


def _resolves_trusted(target: str, package: str) -> bool:
    """The target imports, under its canonical name, as a class of `package`; selfsup's must be run pieces."""
    try:
        obj = _locate(target)
    except Exception:  # an unimportable target is refused like an untrusted one
        return False
    if not inspect.isclass(obj) or canonical_name(obj) != target:
        return False
    return _is_run_piece(obj) if package == OWN_PACKAGE else True


def is_trusted(target: Any) -> bool:
    """Whether a `_target_` value may be imported and called (see the module docstring)."""
    package = _named_trusted(target)
    if package is None:
        return False
    return package == "exact" or _resolves_trusted(target, package)


def upgrade_targets(node: Any) -> Any:
    """The container with `_target_`s written under since renamed module paths (RENAMED) given their new names."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                for old, new in RENAMED.items():
                    if value.startswith(old):
                        value = new + value[len(old):]
            out[key] = upgrade_targets(value)
        return out
    if isinstance(node, list):
        return [upgrade_targets(value) for value in node]
    return node


def _walk(node: Any, path: str = ""):
    """(key path, key, value) of every entry of a plain container, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, key, value
            yield from _walk(value, where)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            where = f"{path}[{i}]"
            yield where, None, value
            yield from _walk(value, where)


def refusals(node: Any) -> list[tuple[str, Any, str]]:
    """(key path, value, why) of everything in a plain container that makes it unsafe to build from; refusals by
    name come first, so that a hostile config is refused before any module is imported to check the rest."""
    by_name, targets = [], []
    for where, key, value in _walk(node):
        if isinstance(value, str) and "${" in value:
            by_name.append((where, value, "an interpolation (configs selfsup writes are resolved)"))
        elif key in LOADER_KEYS:
            by_name.append((where, value, "a key with which a class loads a file of its own"))
        elif key == "_target_":
            if _named_trusted(value) is None:
                by_name.append((where, value, "a target outside the allow-list"))
            else:
                targets.append((where, value))
    if by_name:
        return by_name
    return [(where, target, "not a class selfsup builds runs from (renamed or removed?)")
            for where, target in targets if not is_trusted(target)]


def trusted_node(node: Any, source: str) -> dict:
    """A plain mapping read from a run or export folder, checked (module docstring) and with renamed targets
    upgraded; a one-line ConfigError naming the first refused key path otherwise."""
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: not a config mapping; is it a run folder's config.yaml?")
    node = upgrade_targets(node)
    bad = refusals(node)
    if bad:
        where, value, why = bad[0]
        raise ConfigError(f"{source}: refused {where}={str(value)[:120]!r}: {why}; a shared config may only name "
                          f"selfsup's own classes and {', '.join(sorted(EXTERNAL_TARGETS))}; to trust your own "
                          f"code, name it in {TRUST_VARIABLE} (e.g. {TRUST_VARIABLE}=mylab.objectives.)")
    return node


def load_trusted_config(path: Path, drop: tuple[str, ...] = ()) -> DictConfig:
    """A config file from a run folder, checked by trusted_node before anything is built from it. `drop`: top-level
    keys the reader never builds from, left out (and so not checked)."""
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # YAML syntax, unreadable bytes
        raise ConfigError(f"{path}: not a readable config ({' '.join(str(e).split())[:200]})") from None
    container = OmegaConf.to_container(raw, resolve=False)  # resolving would run resolvers before the check
    for key in drop if isinstance(container, dict) else ():
        container.pop(key, None)
    return OmegaConf.create(trusted_node(container, str(path)))
