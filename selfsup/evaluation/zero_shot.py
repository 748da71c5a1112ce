"""CLIP evaluation: zero-shot classification and image-text retrieval (Radford et al. 2021).

- Zero-shot: each class name is written into every prompt template; the class's text embedding is the mean of
  its prompts' normalised embeddings, normalised again. An image is assigned the class whose embedding is most
  similar to its own: `zero_shot_top1`, `zero_shot_top5`.
- Retrieval on held-out pairs: for each image, the rank of its best true caption among all captions (and the
  reverse): `image_to_text_R@k` and `text_to_image_R@k`, the share of queries with a match among the k most
  similar. Rows repeating an image or a caption count as one candidate (COCO's five captions per image).
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Sequence

import torch

from selfsup.errors import ConfigError, DataError
from selfsup.evaluation.protocol import EvalContext, Protocol
from selfsup.modalities import PAIRED_MODALITIES, without_text

DEFAULT_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "clip art of a {}.", "an illustration of a {}.",
                     "a picture of {}.", "an icon of a {}.", "{}.")
AUDIO_TEMPLATES = ("the spoken word {}.", "a recording of someone saying {}.", "the sound of {}.", "{}.")
RECALL_AT = (1, 5, 10)


def default_templates(model: Any, data: Any) -> tuple[str, ...]:
    """The prompt templates of the labelled data, where it names its own (`prompt_templates`, as open_clip keeps
    templates per dataset), else those of the dual encoder's media: photos and drawings for images, speech for
    audio."""
    own = getattr(data, "prompt_templates", None)
    if own:
        return tuple(own)
    return AUDIO_TEMPLATES if media_of(model) == "audio" else DEFAULT_TEMPLATES


def media_of(model: Any) -> str:
    """What a dual encoder pairs with text (image, audio): the first word of its retrieval metrics."""
    return without_text(getattr(model, "modality", "image-text"))


def class_names_of(data: Any, what: str = "zero-shot") -> list[str]:
    """The class names a zero-shot evaluation prompts with; a one-line DataError for data without them."""
    names = data.class_names() if hasattr(data, "class_names") else None
    if not names:
        raise DataError(f"{what}: {data.source} has no class names, which zero-shot prompts are made of (image "
                        "folders: one sub-folder per class)")
    return names


def readable(name: str) -> str:
    """A class name as a prompt reads it: 'signs_and_symbols' -> 'signs and symbols'."""
    return " ".join(str(name).replace("_", " ").split())


@torch.no_grad()
def class_embeddings(encode_text: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     tokenize: Callable[[str], dict[str, torch.Tensor]], class_names: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES, device: torch.device | str = "cpu",
                     autocast: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """(classes, d) normalised: per class, the mean of its prompts' normalised text embeddings."""
    prompts = [template.format(readable(name)) for name in class_names for template in templates]
    tokens = [tokenize(p) for p in prompts]
    ids = torch.stack([t["input_ids"] for t in tokens]).to(device)
    mask = torch.stack([t["attention_mask"] for t in tokens]).to(device)
    chunks = []
    for start in range(0, len(ids), 256):
        with autocast() if autocast else torch.autocast(torch.device(device).type, enabled=False):
            chunks.append(encode_text(ids[start:start + 256], mask[start:start + 256]).float())
    per_prompt = torch.nn.functional.normalize(torch.cat(chunks), dim=-1).view(len(class_names), len(templates), -1)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


def zero_shot_accuracy(image_emb: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor,
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of assigning each image its most similar class embedding (ks beyond the class count
    are left out)."""
    scores = image_emb.float() @ class_emb.float().T
    out = {}
    for k in ks:
        if k <= class_emb.shape[0]:
            top = scores.topk(k, dim=1).indices
            out[f"zero_shot_top{k}"] = (top == labels.view(-1, 1)).any(dim=1).float().mean().item()
    return out


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = RECALL_AT,
                     image_ids: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                     media: str = "image") -> dict[str, float]:
    """Recall@k both ways over pairs (image i, text i): the share of queries with a true match in the top k.

    Rows naming the same image (`image_ids`) or the same caption (`text_ids`) are one candidate, and any of a
    query's true matches counts (COCO's protocol: an image with five captions is found by each of them). A
    query's rank is the number of wrong candidates scoring at least its best true match: ties count against
    it, so a collapsed tower (all embeddings equal) scores 0, not 1. Without ids every row is its own. `media`:
    what the first embeddings are (image, audio), which names the metrics (`audio_to_text_R@1`).
    """
    rows = torch.arange(len(image_emb), device=image_emb.device)
    image_ids = rows if image_ids is None else image_ids.to(rows.device)
    text_ids = rows if text_ids is None else text_ids.to(rows.device)
    _, image_of, image_first = unique_rows(image_ids)
    _, text_of, text_first = unique_rows(text_ids)
    positive = torch.zeros(len(image_first), len(text_first), dtype=torch.bool, device=rows.device)
    positive[image_of, text_of] = True
    scores = image_emb[image_first].float() @ text_emb[text_first].float().T  # unique images x unique texts
    out = {}
    for name, s, p in ((f"{media}_to_text", scores, positive), (f"text_to_{media}", scores.T, positive.T)):
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((s >= best) & ~p).sum(dim=1)
        for k in ks:
            out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    return out


def unique_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique ids, each row's position among them, the first row of each)."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(unique),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return unique, inverse, first


def pair_ids(data: Any, split: str, index: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which rows of `split` (by dataset index) share an image or a caption, where the data module knows."""
    if not hasattr(data, "pair_ids"):
        return None, None
    return data.pair_ids(split, index)


def dual_encoder_metrics(features: Any, class_emb: torch.Tensor | None,
                         ids: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
                         media: str = "image") -> dict[str, float]:
    """Zero-shot accuracy (where there are labels and class embeddings) and retrieval (where there are captions;
    `ids`: image and caption ids of the rows) of a FeatureSet extracted with an image-text model."""
    image_emb, text_emb = features.features, features.text
    metrics: dict[str, float] = {}
    if class_emb is not None and features.labels is not None:
        keep = features.labels >= 0
        metrics.update(zero_shot_accuracy(image_emb[keep], features.labels[keep], class_emb))
    if text_emb is not None:
        metrics.update(retrieval_recall(image_emb, text_emb, image_ids=ids[0], text_ids=ids[1], media=media))
    return metrics


class ZeroShotProtocol(Protocol):
    """eval.py protocol=zero_shot: a CLIP run classifies the validation images of any labelled image data by
    their labels' names (`data=` any labelled source; default the run's own)."""

    name = "zero_shot"
    eval_model_modality = PAIRED_MODALITIES

    def __init__(self, templates: Sequence[str] | None = None) -> None:
        self.templates = list(templates) if templates else None  # None: default_templates
        if any("{}" not in t for t in self.templates or ()):
            raise ConfigError("every protocol.templates entry needs a {} where the class name goes")

    def run(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        names = class_names_of(ctx.data)
        if ctx.captions is None:
            raise ConfigError("zero-shot needs the run's caption tokenizer; evaluate an image-text run")
        templates = self.templates or default_templates(model, ctx.data)
        class_emb = class_embeddings(model.encode_text, ctx.captions(), names, templates,
                                     ctx.device, ctx.autocast)
        val = ctx.features(model, "val").labelled()
        results = {f"val/{k}": v for k, v in zero_shot_accuracy(val.features, val.labels, class_emb).items()}
        ctx.log(results, 0)
        return {**results, "val_samples": len(val), "classes": len(names), "templates": len(templates)}


class RetrievalProtocol(Protocol):
    """eval.py protocol=retrieval: image -> text and text -> image Recall@1/5/10 of a CLIP run on held-out pairs
    (the validation split of image-text data; default the run's own)."""

    name = "retrieval"
    eval_model_modality = PAIRED_MODALITIES
    needs_labels = False

    def run(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        if getattr(ctx.data, "modality", None) not in PAIRED_MODALITIES:
            raise DataError(f"retrieval needs image-text or audio-text pairs, and {ctx.data.source} has none; "
                            "use the run's data or another image-text source")
        if ctx.data.eval_dataset("val") is None:
            raise DataError(f"retrieval runs on held-out pairs, and {ctx.data.source} has none; give a validation "
                            "split (data.val_manifest, data.val_fraction) or data=image_text_manifest with them")
        val = ctx.features(model, "val")
        image_ids, text_ids = pair_ids(ctx.data, "val", val.index)
        recall = retrieval_recall(val.features, val.text, image_ids=image_ids, text_ids=text_ids, media=media_of(model))
        results = {f"val/{k}": v for k, v in recall.items()}
        ctx.log(results, 0)
        return {**results, "val_samples": len(val)}
