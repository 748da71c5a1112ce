"""Evaluation of pretrained backbones: features, kNN, linear probes, fine-tuning (full, LoRA and prompt tuning),
embeddings, export to timm, and the comparison of runs. Entry points: eval.py, embed.py, compare.py and
`python -m selfsup.evaluation.export_formats`."""
