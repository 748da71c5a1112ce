"""The README.md of an export folder, in the Hub's model-card format, so that `huggingface_hub.upload_folder`
publishes the folder as it is.

The YAML header carries what the Hub indexes (library, pipeline tag, tags, datasets) and a `license` for the
user to set (`unknown` until then: selfsup cannot know the data's terms). The body says what trained the model
(objective, backbone, data, budget), the run's last logged validation metrics and its evaluation results
(results.json), and a usage snippet: the same code the export tests run on the exported folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.evaluation.comparison import EPOCH, WALL, read_run
from selfsup.evaluation.results import RANDOM_INIT_SUFFIX

CARD = "README.md"


def _yaml_list(values: list[str]) -> str:
    return "".join(f"\n- {json.dumps(v)}" for v in values)


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of each validation metric of a run."""
    run = read_run(run_dir)
    names = sorted(c for c in run.columns() if c.startswith("val/"))
    finals = {name: run.series(name)[1] for name in names}
    return {name: values[-1] for name, values in finals.items() if values}


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [f"| `{k}` | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) if rows else "none logged"


def model_card(run_dir: Path, step: int, library: str, pipeline_tag: str, usage: str) -> str:
    """The model card of a run's export; `usage`: a tested Python snippet that loads the folder `DIR`."""
    run = read_run(run_dir)
    batch = run.identity.get("data.batch_size", "?")
    _, epochs = run.series(EPOCH)
    _, walls = run.series(WALL)
    count = int(max(epochs)) + 1 if epochs else None
    budget = f"{step} steps" + (f", {count} epoch{'s' if count != 1 else ''}" if count else "") + f", batch {batch}"
    if walls:
        budget += f", {max(walls) / 60:.1f} min of training"
    tags = ["selfsup", "self-supervised-learning", run.objective, run.backbone]
    evaluations = "\n\n".join(f"**{name}**\n\n{_metrics_table(entry)}" for name, entry in sorted(run.results.items())
                              if isinstance(entry, dict) and not name.endswith(RANDOM_INIT_SUFFIX))
    return f"""---
library_name: {library}
license: unknown  # set your license: https://huggingface.co/docs/hub/repositories-licenses
pipeline_tag: {pipeline_tag}
tags:{_yaml_list(tags)}
datasets:{_yaml_list([run.data])}
---

# {run.backbone} pretrained with {run.objective}

Self-supervised pretraining with selfsup, objective `{run.objective}`, from the run folder `{run_dir.name}`.

- **Objective:** `{run.objective}`
- **Backbone:** `{run.backbone}`
- **Data:** `{run.data}`
- **Budget:** {budget}, seed {run.seed}

## Validation metrics at the end of pretraining

{_metrics_table(final_metrics(run_dir))}

## Evaluation

{evaluations or "Not evaluated yet: `python eval.py checkpoint=RUN protocol=knn`, then export again."}

## Usage

```python
{usage.strip()}
```
"""


def write_card(out: Path, run_dir: Path, step: int, library: str, pipeline_tag: str, usage: str) -> Path:
    """Write `out/README.md` (replacing an earlier export's card)."""
    path = out / CARD
    tmp = path.with_name(f".{CARD}.tmp")
    tmp.write_text(model_card(run_dir, step, library, pipeline_tag, usage), encoding="utf-8")
    tmp.replace(path)
    return path
