"""Compare the runs under a folder: one row per (objective, backbone, data), mean ± std over seeds.

A run is a folder with `config.yaml` and `metrics.csv` (or, without the CSV, an offline wandb run in `wandb/`).
Names come from the run's record of its config groups (RUN/run_info.jsonl, or `.hydra/hydra.yaml` of older runs),
else from the config. Runs of one (objective, backbone, data) whose configs differ otherwise (say two mask
ratios) get their differing keys appended to the objective's name, so that only seeds are averaged.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf

from selfsup.errors import ConfigError, DataError
from selfsup.evaluation import wandb_offline
from selfsup.evaluation.results import RANDOM_INIT_SUFFIX, RESULTS, read_results
from selfsup.runs import CONFIG, METRICS, RUN_INFO, flatten

MAX_SHOWN = 3  # differing config keys named in a variant's label
# The health monitor's collapse signs (callbacks/health.py): their final values are columns of the table when logged.
HEALTH = ("val/rankme", "val/feature_std", "train/alignment", "train/uniformity")
LOSS, WALL, RATE, MEMORY, EPOCH = "train/loss", "train/wall_s", "train/samples_per_s", "train/peak_mem_gib", "epoch"
# Config keys that do not change what is trained: runs differing only in these are seeds of one method.
IGNORED = ("seed", "run_dir", "resume", "min_free_gb", "pictures_every_n_epochs", "compile", "checkpoint.",
           "callbacks.", "optim._target_", "optim._partial_",
           "preemption.", "logger.", "monitors.", "hydra.", "data.root", "data.download", "data.num_workers",
           "data.on_error", "data.augment_on", "data.pin_memory", "data.val_batch_size", "data.tokenizer.cache_dir",
           "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.precision",
           "trainer.log_every_n_steps", "trainer.limit_val_batches", "trainer.check_val_every_n_epoch",
           "trainer.num_sanity_val_steps", "trainer.deterministic", "trainer.benchmark",
           "trainer.enable_model_summary", "trainer.sync_batchnorm")


@dataclass
class Run:
    """One run folder: its names, seed, identity config, logged rows (numbers only, with `step`) and results."""

    path: Path
    objective: str
    backbone: str
    data: str
    seed: int
    identity: dict[str, Any]
    rows: list[dict[str, float]]
    results: dict[str, Any] = field(default_factory=dict)
    source: str = "csv"

    def series(self, column: str) -> tuple[list[float], list[float]]:
        """(steps, values) of a column, by step; for a step logged twice (a resumed run) the last value."""
        by_step: dict[float, float] = {}
        for row in self.rows:
            if column in row and "step" in row and math.isfinite(row[column]):
                by_step[row["step"]] = row[column]
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def columns(self) -> set[str]:
        return {k for row in self.rows for k in row}


def _ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in IGNORED)


def _class_name(target: Any) -> str:
    return str(target or "?").rsplit(".", 1)[-1].lower()


def recorded_choices(run_dir: Path) -> dict[str, Any]:
    """The config groups a run was started with: the last start's in RUN/run_info.jsonl, else (runs from before
    that record) Hydra's RUN/.hydra/hydra.yaml."""
    info = run_dir / RUN_INFO
    if info.is_file():
        for line in reversed(info.read_text(errors="replace").splitlines()):
            try:
                choices = json.loads(line).get("choices")
            except (ValueError, AttributeError):
                continue
            if choices:
                return dict(choices)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            return dict(OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices") or {})
        except Exception:  # an unreadable Hydra record: fall back to the config
            return {}
    return {}


def names_of(run_dir: Path, cfg: dict[str, Any]) -> tuple[str, str, str]:
    """(objective, backbone, data): the run's recorded choices, else names derived from its config."""
    choices = recorded_choices(run_dir)
    objective = choices.get("objective") or _class_name(cfg.get("objective", {}).get("_target_"))
    backbone = choices.get("backbone") or str(cfg.get("backbone", {}).get("name") or
                                              _class_name(cfg.get("backbone", {}).get("_target_")))
    data = choices.get("data") or _class_name(cfg.get("data", {}).get("_target_"))
    return str(objective), str(backbone), str(data)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value


def read_csv_rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = []
        for raw in csv.DictReader(f):
            numbers = ((k, _number(v)) for k, v in raw.items() if k and v not in (None, ""))
            row = {k: v for k, v in numbers if v is not None}
            if row:
                rows.append(row)
        return rows


def read_wandb_rows(run_dir: Path) -> list[dict[str, float]]:
    """The offline wandb history of a run folder, one row per logged step: each start of the run (a resume) logs
    again from its checkpoint's step, so its rows replace the earlier starts' rows from its first step on, as
    metrics.csv is trimmed (runs.trim_metrics)."""
    rows: list[dict[str, float]] = []
    for path in wandb_offline.offline_runs(run_dir):
        segment = wandb_offline.history(path)
        steps = [r["step"] for r in segment if "step" in r]
        if steps:
            rows = [r for r in rows if r.get("step", -1) < min(steps)]
        rows.extend(segment)
    if rows and not any(WALL in r for r in rows):  # wandb's own clock when the run did not log train/wall_s
        for row in rows:
            if "wandb/runtime_s" in row:
                row[WALL] = row["wandb/runtime_s"]
    return rows


def read_run(run_dir: Path) -> Run:
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG), resolve=False)
    except Exception as e:  # YAML syntax, encoding: a one-line error naming the file
        raise DataError(f"cannot read {run_dir / CONFIG} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                        "fix it or move that run folder out of the compared folder") from None
    if (run_dir / METRICS).is_file():
        try:
            rows, source = read_csv_rows(run_dir / METRICS), "csv"
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read {run_dir / METRICS} ({type(e).__name__}: {str(e)[:120]}); fix it or move "
                            "that run folder out of the compared folder") from None
    else:
        rows, source = read_wandb_rows(run_dir), "wandb"
    results = read_results(run_dir / RESULTS)
    identity = {k: json.dumps(v, sort_keys=True) if isinstance(v, list) else v
                for k, v in flatten(cfg).items() if not _ignored(k)}
    objective, backbone, data = names_of(run_dir, cfg)
    return Run(run_dir, objective, backbone, data, int(cfg.get("seed", 0) or 0), identity, rows, results, source)


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (itself included): config.yaml plus metrics.csv or an offline wandb run."""
    found = []
    for config in sorted(root.rglob(CONFIG)):
        run_dir = config.parent
        if run_dir.name == ".hydra":
            continue
        if (run_dir / METRICS).is_file() or wandb_offline.offline_runs(run_dir):
            found.append(run_dir)
    return found


def load_runs(root: str | Path) -> list[Run]:
    """Every run under `root`; a one-line ConfigError when the folder is missing or holds none."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"no folder {folder}; give the folder that holds the runs (e.g. runs/ or a sweep folder)")
    runs = [read_run(p) for p in find_runs(folder)]
    if not runs:
        raise ConfigError(f"no runs under {folder} (a run is a folder with config.yaml and metrics.csv); "
                          "train some with train.py, or point at the folder that holds them")
    return runs


# -- grouping ------------------------------------------------------------------------------------------------
@dataclass
class Method:
    """The seeds of one (objective, backbone, data) and configuration."""

    objective: str
    backbone: str
    data: str
    runs: list[Run]

    @property
    def label(self) -> str:
        return f"{self.objective} / {self.backbone} / {self.data}"


def group_runs(runs: Iterable[Run]) -> list[Method]:
    """One Method per distinct (objective, backbone, data, identity config), in a stable order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (run.objective, run.backbone, run.data, tuple(sorted(run.identity.items(), key=lambda kv: kv[0])))
        groups.setdefault(key, []).append(run)
    methods = []
    by_triple: dict[tuple[str, str, str], list[tuple]] = {}
    for key in groups:
        by_triple.setdefault(key[:3], []).append(key)
    for triple, keys in sorted(by_triple.items()):
        differing: set[str] = set()
        if len(keys) > 1:  # variants of one triple: name them by the keys where their configs differ
            dicts = [dict(k[3]) for k in keys]
            every = set().union(*dicts)
            differing = {k for k in every if len({json.dumps(d.get(k), default=str) for d in dicts}) > 1}
        for key in sorted(keys, key=lambda k: json.dumps(k[3], default=str)):
            identity = dict(key[3])
            shown = sorted(differing)
            suffix = ", ".join(f"{k}={identity.get(k)}" for k in shown[:MAX_SHOWN])
            suffix += ", …" if shown[MAX_SHOWN:] else ""
            objective = f"{triple[0]} ({suffix})" if suffix else triple[0]
            runs_ = sorted(groups[key], key=lambda r: (r.seed, str(r.path)))
            methods.append(Method(objective, triple[1], triple[2], runs_))
    return methods


# -- statistics ----------------------------------------------------------------------------------------------
def resolve_metric(name: str, runs: list[Run]) -> str:
    """The column a `--metric` names: as given, or under val/ or train/ (knn_top1 -> val/knn_top1)."""
    present = set().union(*(r.columns() for r in runs))
    for candidate in (name, f"val/{name}", f"train/{name}"):
        if candidate in present:
            return candidate
    shown = sorted(c for c in present if c.startswith(("val/", "train/")))
    raise ConfigError(f"no run logged metric '{name}'; logged metrics: {', '.join(shown) or 'none'}")


def lower_is_better(column: str) -> bool:
    """Losses, and the health monitor's alignment (0: invariant) and uniformity (more negative: more uniform)."""
    name = column.rsplit("/", 1)[-1]
    return "loss" in name or name in ("alignment", "uniformity")


def run_stats(run: Run, column: str) -> dict[str, float | None]:
    _, values = run.series(column)
    best = (min(values) if lower_is_better(column) else max(values)) if values else None
    _, epochs = run.series(EPOCH)
    _, walls = run.series(WALL)
    _, rates = run.series(RATE)
    _, memory = run.series(MEMORY)
    eval_value = next((entry[column] for key, entry in run.results.items()
                       if not key.endswith(RANDOM_INIT_SUFFIX) and isinstance(entry, dict)
                       and isinstance(entry.get(column), (int, float))), None)
    finals = {name: run.series(name)[1] for name in HEALTH}
    return {**{name: v[-1] if v else None for name, v in finals.items()},
            "final": values[-1] if values else None, "best": best,
            "epochs": max(epochs) + 1 if epochs else None, "wall": max(walls) if walls else None,
            "rate": statistics.median(rates) if rates else None, "memory": max(memory) if memory else None,
            "eval": eval_value}


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std, len(present)


def _duration(seconds: float) -> tuple[float, str]:
    if seconds < 120:
        return 1.0, "s"
    if seconds < 7200:
        return 60.0, "min"
    return 3600.0, "h"


def fmt(stat: tuple[float, float, int] | None, digits: int = 3, duration: bool = False) -> str:
    """`mean ± std` (`mean` alone for one run); `–` when no run has the value."""
    if stat is None:
        return "–"
    mean, std, n = stat
    unit = ""
    if duration:
        scale, unit = _duration(mean)
        mean, std, unit = mean / scale, std / scale, f" {unit}"
    text = f"{mean:.{digits}f}"
    return (f"{text} ± {std:.{digits}f}" if n > 1 else text) + unit


def table(methods: list[Method], column: str) -> str:
    """The markdown comparison table."""
    stats = [[run_stats(r, column) for r in m.runs] for m in methods]
    with_eval = any(s["eval"] is not None for group in stats for s in group)
    health = [name for name in HEALTH if name != column and any(s[name] is not None for g in stats for s in g)]
    short = column.split("/", 1)[-1] if column.startswith(("val/", "train/")) else column
    header = ["objective", "backbone", "data", "seeds", f"final {short}", f"best {short}",
              *([f"eval {short}"] if with_eval else []), *(name.split("/")[-1] for name in health), "epochs",
              "wall time", "samples/s", "peak mem (GiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method, group in zip(methods, stats):
        col = lambda key: mean_std([s[key] for s in group])  # noqa: E731
        cells = [method.objective, method.backbone, method.data, str(len(method.runs)), fmt(col("final")),
                 fmt(col("best")), *([fmt(col("eval"))] if with_eval else []), *(fmt(col(n)) for n in health),
                 fmt(col("epochs"), 1),
                 fmt(col("wall"), 1, duration=True), fmt(col("rate"), 1), fmt(col("memory"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
