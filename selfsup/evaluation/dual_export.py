"""An image-text run (CLIP) as one folder that timm and transformers load without selfsup.

- `image/`: the image tower, timm's layout (export_formats.export_image);
- `text/`: the text tower and its caption tokenizer, a transformers model (hf_text.export_text);
- `projections.safetensors`: `image_projection` and `text_projection` (embed_dim x width, no bias) and
  `log_scale` (the log of the inverse temperature, as trained);
- `config.json`: how the pieces fit (the text tower's pooling, the caption length, the embedding size).
The model card's snippet rebuilds the dual encoder from these pieces with timm, transformers and safetensors
alone; the export tests run that snippet against selfsup's DualEncoder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.evaluation.export_formats import CONFIG, export_image
from selfsup.evaluation.hf_text import export_text
from selfsup.evaluation.pretrained import Pretrained

PROJECTIONS = "projections.safetensors"


def export_dual(pre: Pretrained, dual: Any, out: Path, tokenizer_path: str | None, lowercase: bool,
                normalization: tuple[list[float], list[float]] | None) -> dict[str, Any]:
    """`pre`: the run with its image backbone; `dual`: its evaluation model of modality image-text, weights
    loaded, which gives its `text_tower`, `text_pool` (cls | eot), `image_projection`, `text_projection` and
    `logit_scale()`."""
    from safetensors.torch import save_file

    source = pre.source()
    context = int(dual.text_tower.max_positions)
    image = export_image(pre, out / "image", normalization)
    text = export_text(dual.text_tower, out / "text", tokenizer_path, lowercase, None, source, context)
    save_file({"image_projection": dual.image_projection.weight.detach().contiguous().clone(),
               "text_projection": dual.text_projection.weight.detach().contiguous().clone(),
               "log_scale": dual.logit_scale().detach().clone()},
              str(out / PROJECTIONS))
    config = {"format": "dual-encoder", "image": "image", "text": "text", "projections": PROJECTIONS,
              "text_pool": dual.text_pool, "context_length": context, "embed_dim": dual.embed_dim,
              "input_size": image["pretrained_cfg"]["input_size"], "cifar_stem": image["cifar_stem"],
              "text_architecture": text["architecture"],
              "source": source}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def dual_usage(config: dict[str, Any], where: str, hub: bool) -> str:
    """Python that rebuilds the dual encoder from `where` (a folder, or a Hub repo) and scores images and texts."""
    chans, size = config["input_size"][0], config["input_size"][1]
    folder = (f"folder = Path(snapshot_download({where!r}))\n" if hub else f"folder = Path({where!r})\n")
    pool = ("pooled = tokens[:, 0]  # the [CLS] position, as trained\n" if config["text_pool"] == "cls" else
            "last = batch[\"attention_mask\"].sum(1) - 1  # the [SEP] that ends each caption, as trained\n"
            "pooled = tokens[torch.arange(len(tokens)), last]\n")
    return ("from pathlib import Path\n\nimport timm\nimport torch\nimport torch.nn.functional as F\n"
            + ("from huggingface_hub import snapshot_download\n" if hub else "")
            + ("from selfsup.evaluation.export_formats import load_timm\n" if config["cifar_stem"] else "")
            + "from safetensors.torch import load_file\nfrom transformers import AutoModel, AutoTokenizer\n\n"
            + folder
            + ("image_tower = load_timm(folder / \"image\")  # the CIFAR stem needs selfsup's loader\n"
               if config["cifar_stem"] else
               "image_tower = timm.create_model(f\"local-dir:{folder / 'image'}\", pretrained=True).eval()\n")
            + "text_tower = AutoModel.from_pretrained(folder / \"text\").eval()\n"
              "tokenizer = AutoTokenizer.from_pretrained(folder / \"text\")\n"
              "heads = load_file(folder / \"projections.safetensors\")\n"
            + f"images = torch.rand(2, {chans}, {size}, {size})  # normalise with image_tower.pretrained_cfg\n"
            + "batch = tokenizer([\"a photo of a cat\", \"a drawing of a dog\"], padding=\"max_length\", "
              f"truncation=True, max_length={config['context_length']}, return_tensors=\"pt\")\n"
              "with torch.no_grad():\n"
              "    image_emb = F.normalize(image_tower(images) @ heads[\"image_projection\"].T, dim=-1)\n"
              "    tokens = text_tower(**batch).last_hidden_state\n"
            + "".join(f"    {line}\n" for line in pool.splitlines())
            + "    text_emb = F.normalize(pooled @ heads[\"text_projection\"].T, dim=-1)\n"
              "    logits = heads[\"log_scale\"].exp() * image_emb @ text_emb.T  # images x texts\n")

