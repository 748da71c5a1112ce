"""Comparing runs: variants of one method, and the eval column."""
from __future__ import annotations

import json

from helpers import write_run


def test_variants_of_one_method_are_named_by_what_differs(tmp_path):
    from selfsup.evaluation.comparison import group_runs, load_runs

    write_run(tmp_path / "r1", "mae", 0, [0.4], [1.0], mask_ratio=0.75)
    write_run(tmp_path / "r2", "mae", 1, [0.5], [1.0], mask_ratio=0.75)
    write_run(tmp_path / "r3", "mae", 0, [0.6], [1.0], mask_ratio=0.9)
    methods = group_runs(load_runs(tmp_path))
    assert [(m.objective, len(m.runs)) for m in methods] == [("mae (objective.mask_ratio=0.75)", 2),
                                                            ("mae (objective.mask_ratio=0.9)", 1)]


def test_eval_column_takes_the_trained_weights_not_the_random_init_baseline(tmp_path):
    from selfsup.evaluation.comparison import load_runs, run_stats

    folder = write_run(tmp_path / "r", "simclr", 0, [0.4], [1.0])
    results = {"knn@random_init": {"val/knn_top1": 0.2, "weights": "random"},
               "knn": {"val/knn_top1": 0.9, "weights": "trained"}}
    (folder / "results.json").write_text(json.dumps(results))
    (run,) = load_runs(tmp_path)
    assert run_stats(run, "val/knn_top1")["eval"] == 0.9
