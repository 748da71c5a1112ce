"""The composed config, checked before anything heavy: the command line Hydra cannot read, misspelt keys (with the
closest valid key), values of the wrong type or out of range, explicit paths that do not exist, and objective,
backbone and data of different modalities. About half a second on 2 cores: Hydra, OmegaConf and the standard
library only; torch, Lightning and timm are not imported, and no `_target_` is imported or run (the modalities
are read from the classes' source, see declared()).

The pieces still check themselves when built (a mask ratio, a patch size against the image size, a timm model
name); this pass catches what can be caught from the config alone, in the second it takes to compose it.
"""
from __future__ import annotations

import ast
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.checks import check_run_dir
from selfsup.errors import ConfigError
from selfsup.runs import flatten

MULTIRUN_FLAGS = ("-m", "--multirun")
MAX_SWEEP_CHECKS = 64  # sweep values checked one by one (each with the other keys at their first value)


Range = tuple[str, Callable[[Any], bool], bool]  # (words, test, whole numbers only)


def count(low: int, *special: int) -> Range:
    """A whole number of at least `low` (or one of `special`, e.g. -1 for no limit)."""
    words = " or ".join([*(repr(s) for s in special), f"at least {low}"])
    return words, lambda v: v in special or v >= low, True


def at_least(low: float) -> Range:
    return f"at least {low}", lambda v: v >= low, False


def above(low: float) -> Range:
    return f"above {low}", lambda v: v > low, False


# Ranges of the keys every run has (a piece's own keys are checked by the piece: mask ratio, temperature, ...).
# null always passes: it means "the default behaviour" wherever a key allows it.
RANGES: dict[str, Range] = {
    "seed": count(0),
    "trainer.max_steps": count(1, -1),
    "trainer.max_epochs": count(1, -1),
    "trainer.accumulate_grad_batches": count(1),
    "trainer.log_every_n_steps": count(1),
    "trainer.check_val_every_n_epoch": count(1),
    "trainer.num_nodes": count(1),
    "trainer.gradient_clip_val": at_least(0),
    "trainer.limit_val_batches": at_least(0),
    "trainer.nonfinite_max_consecutive_skips": count(1),
    "data.batch_size": count(1),
    "data.val_batch_size": count(1),
    "data.num_workers": count(0),
    "data.image_size": count(1),
    "data.num_samples": count(1),
    "data.num_val_samples": count(0),
    "data.max_samples": count(1),
    "data.val_fraction": at_least(0),
    "checkpoint.every_n_steps": count(0),
    "checkpoint.every_n_epochs": count(0),
    "preemption.check_every_n_steps": count(1),
    "min_free_gb": at_least(0),
    "pictures_every_n_epochs": count(0),
    "optim.lr": above(0),
    "optim.base_lr": above(0),
    "optim.weight_decay": at_least(0),
    "optim.warmup_epochs": at_least(0),
    "optim.warmup_steps": count(0),
    "monitors.batch_size": count(1),
    "monitors.knn.every_n_epochs": count(0),
    "monitors.knn.temperature": above(0),
    "monitors.linear.lr": above(0),
    "monitors.zero_shot.every_n_epochs": count(0),
    "batch_size": count(1),
    "max_samples": count(1),
    "max_train_samples": count(1),
    "max_val_samples": count(1),
}
NUMERIC = set(RANGES)  # numeric even where the default is null


# -- reading the command line ------------------------------------------------------------------------------------
def parse(argv: Sequence[str]) -> list[Any]:
    """Hydra's overrides, one by one, so that the one it cannot read is named (e.g. an unquoted non-ASCII path)."""
    parser = OverridesParser.create()
    parsed = []
    for arg in argv:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except HydraException:
            key, _, value = arg.partition("=")
            hint = f"; quote the value: '{key}=\"{value}\"'" if value else ""
            raise ConfigError(f"cannot read the argument '{arg}': Hydra's override grammar takes letters, digits "
                              f"and some symbols unquoted, not spaces, commas or non-ASCII characters{hint}") from None
    return parsed


def value_text(override: Any) -> list[str]:
    """The values an override gives, as command-line text: one, or each value of a sweep."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def single_runs(argv: Sequence[str]) -> list[list[str]]:
    """The overrides of the runs to check: the command line itself, or for a sweep (-m) each sweep value with
    the other keys at their first value (not every combination: a misspelt value fails in any of them)."""
    overrides = parse([a for a in argv if a not in MULTIRUN_FLAGS])
    if not any(a in MULTIRUN_FLAGS for a in argv):
        return [[o.input_line for o in overrides]]
    choices = [(o, value_text(o)) for o in overrides]

    def line(o: Any, value: str) -> str:
        prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(o.type.name, "")
        return f"{prefix}{o.get_key_element()}={value}"

    first = [line(o, values[0]) for o, values in choices]
    runs = [first]
    for i, (o, values) in enumerate(choices):
        for value in values[1:]:
            runs.append([*first[:i], line(o, value), *first[i + 1:]])
    return runs[:MAX_SWEEP_CHECKS]


def is_group_choice(override: Any, groups: Sequence[str]) -> bool:
    """A choice of config (`objective=mae`, `data@x=y`, `hydra/launcher=slurm`) or a setting of Hydra's own
    (`hydra.searchpath=...`, where a user's own configs are), rather than a key=value of the config."""
    key = override.key_or_group
    return "/" in key or "@" in key or key.split("@")[0] in groups or key.split(".")[0] == "hydra"


# -- composing -----------------------------------------------------------------------------------------------------
def composed(config_dir: Path, name: str, overrides: Sequence[str], known: dict[str, Any] | None = None) -> Any:
    """The config `name` with `overrides`, Hydra's errors as one line; a misspelt key gets the closest valid key
    of `known` (the flattened config without the user's key=value overrides)."""
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        text = " ".join(str(e).split())
        missing = re.search(r"Could not override '([^']+)'\. To append", text)
        if missing and known is not None:
            key = missing.group(1)
            keys = {".".join(k.split(".")[:i]) for k in known for i in range(1, k.count(".") + 2)}  # and their parents
            close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown key '{key}'{hint} (a new key is added with +{key}=VALUE)") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2])) from None


def leaves(cfg: Any) -> dict[str, Any]:
    return flatten(OmegaConf.to_container(cfg, resolve=False))


# -- values --------------------------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(values: dict[str, Any], defaults: dict[str, Any], given: set[str]) -> None:
    """Each given key has its default's type (whole number, number, true/false) and lies in its range (RANGES)."""
    for key in sorted(given):
        if key not in values:
            continue
        value, default = values[key], defaults.get(key)
        if value is None or value == "auto" or (isinstance(value, str) and "${" in value):  # auto: chosen for you
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        if is_number(default) or key in NUMERIC:
            whole = (isinstance(default, int) and not isinstance(default, bool)) or (key in RANGES and RANGES[key][2])
            if not is_number(value) or (whole and not isinstance(value, int)):
                kind = "a whole number" if whole else "a number"
                raise ConfigError(f"{key} must be {kind}, got {value!r}")
        if key in RANGES:
            words, ok, _ = RANGES[key]
            if not ok(value):
                raise ConfigError(f"{key} must be {words}, got {value!r}")


def check_paths(values: dict[str, Any], given: set[str]) -> None:
    """An explicit data folder or manifest that does not exist is an error, never a fallback."""
    for key in sorted(given):
        value = values.get(key)
        if not isinstance(value, str) or "${" in value or "://" in value or "{" in value:
            continue
        leaf = key.rsplit(".", 1)[-1]
        download = values.get(key.rsplit(".", 1)[0] + ".download") if "." in key else None
        if leaf == "root" and not download and not Path(value).expanduser().exists():  # text_files: also a file
            raise ConfigError(f"{key}={value}: no such folder or file; give the folder (or file) that holds the data")
        if leaf in ("manifest", "val_manifest") and not Path(value).expanduser().is_file():
            raise ConfigError(f"{key}={value}: no such file; give the manifest (JSON lines or CSV of image, caption)")
    resume = values.get("resume")
    if "resume" in given and isinstance(resume, str) and resume != "auto" and not Path(resume).expanduser().exists():
        raise ConfigError(f"resume={resume}: no checkpoint at {Path(resume).expanduser()}; give a .ckpt file, a run "
                          "folder, or 'auto'")


# -- modalities, read from source ----------------------------------------------------------------------------------
def module_file(module: str) -> Path | None:
    parts = module.split(".")
    for base in map(Path, sys.path or ["."]):
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def declared(target: str | None, attr: str, depth: int = 0) -> Any:
    """A class attribute assigned a constant in the class body (`modality = "image"`), in the class or its bases,
    read from the source without importing it; None when it cannot be read so (then the check after import
    decides)."""
    if not target or "." not in target or depth > 6:
        return None
    module, name = target.rsplit(".", 1)
    path = module_file(module)
    if path is None:
        return None
    tree = ast.parse(path.read_text())
    imported = {alias.asname or alias.name: f"{node.module}.{alias.name}"
                for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
                for alias in node.names}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else \
                    [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value else []
                if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                    try:  # a constant or a tuple of them (`modality = ("image", "audio")`)
                        return ast.literal_eval(statement.value)
                    except (ValueError, TypeError, SyntaxError):
                        return None
            for base in node.bases:
                if isinstance(base, ast.Name):
                    found = declared(imported.get(base.id, f"{module}.{base.id}"), attr, depth + 1)
                    if found is not None:
                        return found
    return None


# -- the entry points ----------------------------------------------------------------------------------------------
def check_config(config_dir: Path, name: str, argv: Sequence[str], groups: Sequence[str],
                 modalities: Callable[[Any, Callable[[Any, str], Any]], None] | None = None) -> None:
    """Compose `name` as each run of the command line would, and check it (see the module docstring)."""
    run_dirs: set[Path] = set()
    for run in single_runs(argv):
        overrides = parse(run)
        choices = [o.input_line for o in overrides if is_group_choice(o, groups)]
        defaults = leaves(composed(config_dir, name, choices))
        cfg = composed(config_dir, name, run, known=defaults)
        values = leaves(cfg)
        given = {o.key_or_group.lstrip("+~") for o in overrides if not is_group_choice(o, groups)}
        check_values(values, defaults, given)
        check_paths(values, given)
        if modalities is not None:
            modalities(cfg, lambda node, attr: declared(node.get("_target_") if node is not None else None, attr))
        if "run_dir" in given and isinstance(values.get("run_dir"), str):
            run_dirs.add(Path(values["run_dir"]).expanduser())
    for run_dir in sorted(run_dirs):  # last, once every run passed: trying it creates the folder
        check_run_dir(run_dir)
