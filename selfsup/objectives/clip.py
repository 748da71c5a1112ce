"""CLIP (Radford et al. 2021): an image tower and a text tower trained to agree on which caption goes with which image;
and CLAP (Elizalde et al. 2023, LAION-CLAP: Wu et al. 2023), the same objective with an audio tower on audio-caption
pairs (`objective=clap` is only a config: what the towers take follows from the run's backbone).

The image (or audio) tower is the run's backbone (any image or audio backbone: what kNN, probes and export
evaluate); the text tower, both projections and the temperature belong to this objective. Text features are the
text tower's [CLS] position (`text_pool: cls`, default: our text transformer attends both ways, so [CLS] sees every
token) or the last real token, the [SEP] that ends the caption (`text_pool: eot`, the position CLIP's causal
transformer reads).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data_facts import DataFacts
from selfsup.distributed import gather_with_grad, rank_and_world
from selfsup.errors import ConfigError
from selfsup.modalities import with_text, without_text
from selfsup.objectives.base import Objective, StepOutput

TEXT_POOLS = ("cls", "eot")


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric cross-entropy of this rank's pairs against every rank's embeddings (open_clip's local loss).

    `image_emb`, `text_emb`: (n, d) L2-normalised; pair i is (image i, text i). Each rank scores its n images
    against all N texts of the global batch and its n texts against all N images; its positives sit at
    rank * n + i. Gradients flow through the gather, so with DDP's gradient averaging this equals one process
    computing the loss of the whole batch. Returns (loss, image->text accuracy, text->image accuracy),
    computed in float32.
    """
    image_emb, text_emb = image_emb.float(), text_emb.float()
    rank, _ = rank_and_world()
    all_images, all_texts = gather_with_grad(image_emb), gather_with_grad(text_emb)
    scale = logit_scale.float()
    with torch.autocast(image_emb.device.type, enabled=False):  # bf16 would round logits of ~100 to steps of 0.5
        logits_per_image = scale * image_emb @ all_texts.T  # (n, N)
        logits_per_text = scale * text_emb @ all_images.T  # (n, N)
    labels = torch.arange(len(image_emb), device=image_emb.device) + rank * len(image_emb)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    image_accuracy = (logits_per_image.argmax(dim=1) == labels).float().mean()
    text_accuracy = (logits_per_text.argmax(dim=1) == labels).float().mean()
    return loss, image_accuracy, text_accuracy


class CLIP(Objective):
    """Image backbone -> linear projection; text tower -> linear projection; both L2-normalised into a shared
    space of `embed_dim`; logits = exp(logit_scale) x cosine, with logit_scale learned from log(1/0.07) and
    clamped so that exp(logit_scale) never exceeds `max_logit_scale` (100)."""

    # literal tuples, which the config checks read from the source before anything is imported
    modality = ("image-text", "audio-text")  # what the data must give: image-text (CLIP) or audio-text (CLAP) pairs
    backbone_modality = ("image", "audio")  # the run's backbone is the image (or audio) tower

    def __init__(self, backbone: nn.Module, text_tower: nn.Module, views: list[dict[str, Any]] | None = None,
                 embed_dim: int = 512, text_pool: str = "cls", init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0) -> None:
        super().__init__(views or [{"key": "image", "crop_scale": [0.9, 1.0]}])
        if len(self.views) != 1:
            raise ConfigError(f"CLIP takes one image view in objective.views, got {len(self.views)}")
        if getattr(text_tower, "modality", None) != "text":
            raise ConfigError(f"objective.text_tower must be a text backbone (e.g. text_small), got "
                              f"{type(text_tower).__name__}")
        if text_pool not in TEXT_POOLS:
            raise ConfigError(f"objective.text_pool must be one of {TEXT_POOLS}, got '{text_pool}'")
        if init_temperature <= 0 or 1 / init_temperature > max_logit_scale:
            raise ConfigError(f"objective.init_temperature must be positive with 1/T <= max_logit_scale "
                              f"({max_logit_scale}), got {init_temperature}")
        self.image_key = self.views[0]["key"]
        self.media = getattr(backbone, "modality", "image")  # what the backbone embeds: image or audio
        self.text_tower = text_tower
        self.text_pool = text_pool
        self.image_projection = nn.Linear(backbone.num_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_tower.num_features, embed_dim, bias=False)
        for projection in (self.image_projection, self.text_projection):  # CLIP: std = width ** -0.5
            nn.init.normal_(projection.weight, std=projection.in_features ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    def bind_data(self, facts: DataFacts) -> None:
        """Refuse data that does not pair the backbone's modality with text, a tokenizer larger than the text
        tower's vocabulary, or captions longer than its positions."""
        if facts.modality != with_text(self.media):
            raise ConfigError(f"the backbone embeds {self.media} but {facts.source} gives {facts.modality} data; "
                              f"pick {with_text(self.media)} pairs (or a backbone for {without_text(facts.modality)})")
        info = facts.tokenizer
        if info is not None and info.vocab_size > self.text_tower.vocab_size:
            raise ConfigError(f"the tokenizer has {info.vocab_size} tokens but the text tower embeds "
                              f"{self.text_tower.vocab_size}; set objective.text_tower.vocab_size={info.vocab_size}")
        length = facts.context_length
        if length > self.text_tower.max_positions:
            raise ConfigError(f"data.context_length {length} exceeds the text tower's max_positions "
                              f"{self.text_tower.max_positions}; lower data.context_length")

    def eval_model(self, backbone: nn.Module) -> "DualEncoder":
        """Zero-shot and retrieval embed with both towers and their projections."""
        return DualEncoder(backbone, self)

    # -- the two towers ----------------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at max_logit_scale."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def encode_image(self, backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised embeddings, backbone features) of normalised images."""
        features = backbone(images)
        return F.normalize(self.image_projection(features), dim=-1), features

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings of token ids ([CLS] caption [SEP] padding)."""
        tokens = self.text_tower.forward_tokens(input_ids, attention_mask)
        if self.text_pool == "cls":
            pooled = tokens[:, 0]
        else:  # the last real token: the [SEP] that ends the caption
            last = (attention_mask.sum(dim=1) - 1 if attention_mask is not None
                    else torch.full((len(tokens),), tokens.shape[1] - 1, device=tokens.device))
            pooled = tokens[torch.arange(len(tokens), device=tokens.device), last]
        return F.normalize(self.text_projection(pooled), dim=-1)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        image_emb, features = self.encode_image(backbone, batch[self.image_key])
        text_emb = self.encode_text(batch["input_ids"], batch.get("attention_mask"))
        scale = self.scale()
        loss, image_accuracy, text_accuracy = clip_loss(image_emb, text_emb, scale)
        metrics = {f"{self.media}_to_text_accuracy": image_accuracy, f"text_to_{self.media}_accuracy": text_accuracy,
                   "logit_scale": scale.detach()}
        return StepOutput(loss, metrics, features=features.detach())

    @torch.no_grad()
    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """Keep the parameter itself in [0, log max] (as open_clip does), so the clamp never hides a runaway value."""
        self.logit_scale.clamp_(0, self.max_log_scale)


class DualEncoder(nn.Module):
    """A CLIP run's image (or CLAP run's audio) backbone and its objective as one module, for zero-shot and
    retrieval evaluation; its `modality` is what it pairs with text (image-text, audio-text).

    `forward(images, input_ids, attention_mask)` gives (image embeddings (B, d), text embeddings (B, d) or None
    without token ids), so one pass over image-text batches embeds both (evaluation/features.py).
    """

    def __init__(self, backbone: nn.Module, clip: CLIP) -> None:
        super().__init__()
        self.modality = with_text(clip.media)
        self.backbone = backbone
        self.clip = clip
        self.img_size = getattr(backbone, "img_size", None)  # what evaluation data is fitted to
        self.in_chans = getattr(backbone, "in_chans", None)

    @property
    def embed_dim(self) -> int:
        return self.clip.image_projection.out_features

    # what an export of the dual encoder reads (evaluation/dual_export.py)
    @property
    def text_tower(self) -> nn.Module:
        return self.clip.text_tower

    @property
    def text_pool(self) -> str:
        return self.clip.text_pool

    @property
    def image_projection(self) -> nn.Linear:
        return self.clip.image_projection

    @property
    def text_projection(self) -> nn.Linear:
        return self.clip.text_projection

    def logit_scale(self) -> torch.Tensor:
        """The log of the (clamped) inverse temperature."""
        return self.clip.scale().log()

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.clip.encode_text(input_ids, attention_mask)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        image_emb, _ = self.clip.encode_image(self.backbone, images)
        if input_ids is None:
            return image_emb, None
        return image_emb, self.encode_text(input_ids, attention_mask)
