"""Curves of a metric and of the training loss, against step and against training wall time: one line per
method, the mean over its seeds (each seed interpolated onto the union of their steps)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from selfsup.evaluation.comparison import HEALTH, LOSS, WALL, Method, Run


def wall_at(run: Run, steps: np.ndarray) -> np.ndarray | None:
    """A run's training wall time at the given steps (interpolated from train/wall_s, 0 s at step 0)."""
    wall_steps, walls = run.series(WALL)
    if not walls:
        return None
    xs, ys = np.array([0.0, *wall_steps]), np.array([0.0, *walls])
    order = np.argsort(xs, kind="stable")
    return np.interp(steps, xs[order], ys[order])


def mean_curve(method: Method, column: str, against_time: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, mean y) over the method's seeds; steps outside a seed's logged range do not count for it."""
    series = [(np.array(s), np.array(v)) for s, v in (run.series(column) for run in method.runs) if v]
    if not series:
        return None
    grid = np.unique(np.concatenate([s for s, _ in series]))
    ys = np.full((len(series), len(grid)), np.nan)
    for i, (steps, values) in enumerate(series):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        ys[i, inside] = np.interp(grid[inside], steps, values)
    y = np.nanmean(ys, axis=0)
    if not against_time:
        return grid, y
    walls = [w for w in (wall_at(run, grid) for run in method.runs) if w is not None]
    if not walls:
        return None
    return np.mean(walls, axis=0), y


def plot(methods: list[Method], column: str, against_time: bool, path: Path) -> bool:
    """One PNG; False (nothing written) when no method has the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for method in methods:
        curve = mean_curve(method, column, against_time)
        if curve is None:
            continue
        x, y = curve
        seeds = len(method.runs)
        ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3,
                label=f"{method.label} ({seeds} seed{'s' if seeds > 1 else ''})")
        drawn += 1
    if drawn:
        ax.set_xlabel("training wall time (s)" if against_time else "step")
        ax.set_ylabel(column)
        ax.set_title(f"{column} (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return bool(drawn)


def slug(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", column).strip("_")


def plot_all(methods: list[Method], column: str, out: Path) -> list[Path]:
    """The metric, the loss and the health monitor's curves (where logged), against step and wall time; returns the
    files written."""
    written = []
    curves = [(slug(column), column), ("loss", LOSS), *((slug(c), c) for c in HEALTH if c != column)]
    for name, col in curves:
        for axis, against_time in (("step", False), ("time", True)):
            path = out / f"{name}_vs_{axis}.png"
            if plot(methods, col, against_time, path):
                written.append(path)
    return written
