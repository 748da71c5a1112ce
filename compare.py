"""Compare runs: `python compare.py RUNS_DIR [--metric knn_top1] [--out DIR]`.

Prints a markdown table, one row per (objective, backbone, data) with mean ± std over seeds, and saves PNG plots
of the metric and the training loss against step and wall time (one line per method) in DIR
(default RUNS_DIR/compare/), with the table as DIR/table.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.errors import SelfsupError, report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="a folder holding run folders (searched recursively)")
    parser.add_argument("--metric", default="knn_top1",
                        help="a logged metric: knn_top1 (val/knn_top1), linear_top1, loss, or any CSV column")
    parser.add_argument("--out", default=None, help="where plots and table.md go (default RUNS_DIR/compare)")
    args = parser.parse_args(argv)

    from selfsup.evaluation.comparison import group_runs, load_runs, resolve_metric, table
    from selfsup.evaluation.plots import plot_all

    try:
        runs = load_runs(args.runs_dir)
        column = resolve_metric(args.metric, runs)
        methods = group_runs(runs)
        text = table(methods, column)
        out = Path(args.out) if args.out else Path(args.runs_dir) / "compare"
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        written = plot_all(methods, column, out)
    except SelfsupError as e:
        return report(e)
    print(f"{len(runs)} runs, {len(methods)} methods; metric {column}\n")
    print(text)
    print(f"\nwrote {out / 'table.md'}" + "".join(f"\nwrote {p}" for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
