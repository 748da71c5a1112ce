"""BERT's masked language modelling (Devlin et al. 2019), with optional next-sentence prediction.

Of the real, non-special tokens of each sequence, round(mask_rate x count) are chosen; of those, 80% become
[MASK], 10% a random non-special token and 10% stay as they are; the loss is the cross-entropy of predicting the
original tokens at the chosen positions. All of it runs on the device inside the step, with no host sync and
fixed shapes: the choice is a top-k of per-token noise into (B, K) positions plus a validity mask, where K
bounds every row's count. The noise comes from the sample key (keyed_random), so masks are the same whatever
the number of GPUs or workers and after a resume. The MLM head (dense, GELU, LayerNorm, decoder tied to the
input embedding, own bias) runs on the chosen positions only, about 15% of the tokens.

The token ids (mask, padding, special) come from the data module's tokenizer, through `bind_data`.
Unbound, the objective assumes the layout of the tokenizers selfsup trains ([PAD] [UNK] [CLS] [SEP] [MASK]
= 0..4, the rest ordinary), which is what the benchmark's synthetic batches use.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import keyed_random
from selfsup.data_facts import DataFacts, TokenizerInfo
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.indexing import gather_rows

IGNORE = -100


@dataclass
class MaskedTokens:
    """The corrupted input and what to predict where.

    input_ids (B, L): with [MASK] / random / unchanged tokens at the chosen positions.
    labels (B, L): the original ids at the chosen positions, -100 elsewhere (the usual MLM label layout).
    positions (B, K): chosen positions, in increasing noise order; valid (B, K): which of the K are chosen
    (row b has round(rate x eligible_b) valid slots); targets (B, K): the original ids there.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    targets: torch.Tensor


def max_chosen(length: int, rate: float) -> int:
    """An upper bound of round(rate x n) for every n <= length (one spare for float rounding)."""
    return max(1, min(length, math.floor(rate * length + 0.5) + 1))


def mask_tokens(ids: torch.Tensor, attention_mask: torch.Tensor | None, noise: torch.Tensor,
                special: torch.Tensor, ordinary: torch.Tensor, mask_id: int, rate: float = 0.15,
                mask_fraction: float = 0.8, random_fraction: float = 0.1) -> MaskedTokens:
    """BERT's corruption, vectorised. noise (B, L, 3) uniform [0, 1); special (V,) bool lookup table of special
    ids; ordinary (N,) the ids random replacements are drawn from."""
    b, length = ids.shape
    eligible = ~special[ids]
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    count = torch.floor(eligible.sum(dim=1).to(torch.float32) * rate + 0.5).long()  # exact per-row count
    k = max_chosen(length, rate)
    score = noise[..., 0].masked_fill(~eligible, 2.0)  # ineligible positions sort last
    chosen_noise, positions = torch.topk(score, k, dim=1, largest=False, sorted=True)
    valid = (torch.arange(k, device=ids.device) < count.unsqueeze(1)) & (chosen_noise < 2.0)
    targets = torch.gather(ids, 1, positions)
    action = torch.gather(noise[..., 1], 1, positions)
    pick = torch.gather(noise[..., 2], 1, positions)
    random_ids = ordinary[(pick * len(ordinary)).long().clamp_max(len(ordinary) - 1)]
    new = torch.where(action < mask_fraction, torch.full_like(targets, mask_id),
                      torch.where(action < mask_fraction + random_fraction, random_ids, targets))
    new = torch.where(valid, new, targets)  # unchosen slots write their own token back
    corrupted = ids.scatter(1, positions, new)
    labels = torch.full_like(ids, IGNORE).scatter(1, positions, torch.where(valid, targets, IGNORE))
    return MaskedTokens(corrupted, labels, positions, valid, targets)


class MLMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then the decoder, which is the input embedding (tied)."""

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.trunc_normal_(self.dense.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), decoder_weight, self.bias)


class NSPHead(nn.Module):
    """BERT's next-sentence classifier: pooler (dense + tanh on [CLS]) then two logits (is next, is random)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, cls_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(cls_features)))


class MLM(Objective):
    modality = "text"

    def __init__(self, backbone: nn.Module, mask_rate: float = 0.15, mask_token_fraction: float = 0.8,
                 random_token_fraction: float = 0.1, next_sentence: bool = False,
                 views: list[dict[str, Any]] | None = None) -> None:
        super().__init__(views)
        if not 0.0 < mask_rate < 1.0:
            raise ConfigError(f"objective.mask_rate must lie in (0, 1), got {mask_rate}; BERT's is 0.15")
        if min(mask_token_fraction, random_token_fraction) < 0 or mask_token_fraction + random_token_fraction > 1:
            raise ConfigError("objective.mask_token_fraction and random_token_fraction must be >= 0 and sum to at "
                              f"most 1, got {mask_token_fraction} and {random_token_fraction}; BERT's are 0.8 and 0.1")
        if getattr(backbone, "modality", None) != "text" or not hasattr(backbone, "input_embedding"):
            raise ConfigError(f"MLM needs a text backbone with a token embedding, got {type(backbone).__name__}; "
                              "pick backbone=text_tiny, text_small or text_base")
        self.mask_rate = mask_rate
        self.mask_token_fraction = mask_token_fraction
        self.random_token_fraction = random_token_fraction
        self.next_sentence = next_sentence
        self.embedding_rows = backbone.vocab_size
        self.max_positions = backbone.max_positions
        self.head = MLMHead(backbone.num_features, backbone.vocab_size)
        self.nsp = NSPHead(backbone.num_features) if next_sentence else None
        self.register_buffer("special", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.register_buffer("ordinary", torch.zeros(0, dtype=torch.long), persistent=False)
        self.bind_tokenizer(TokenizerInfo.default(backbone.vocab_size))

    def export_heads(self) -> dict[str, nn.Module]:
        return {"masked_lm": self.head}

    # -- the tokenizer's ids -------------------------------------------------------------------------------
    def bind_tokenizer(self, info: TokenizerInfo, source: str = "the tokenizer") -> None:
        """Take the mask id, padding id, special ids and vocabulary size from a tokenizer."""
        if info.vocab_size > self.embedding_rows:
            raise ConfigError(f"{source} has {info.vocab_size} tokens but the backbone embeds {self.embedding_rows} "
                              f"(backbone.vocab_size); set data.tokenizer.vocab_size={info.vocab_size} "
                              "(the text backbones follow it)")
        if self.embedding_rows - info.vocab_size > 64:  # a few spare rows (a multiple of 64, say) are deliberate
            warnings.warn(f"the backbone embeds {self.embedding_rows} tokens but {source} has {info.vocab_size}; the "
                          f"other rows stay unused (set data.tokenizer.vocab_size={info.vocab_size} to drop them)",
                          stacklevel=2)
        special = torch.zeros(self.embedding_rows, dtype=torch.bool)
        special[list(info.special_ids)] = True
        special[info.vocab_size :] = True  # embedding rows the tokenizer never produces
        device = self.special.device
        self.special = special.to(device)
        self.ordinary = torch.nonzero(~special).flatten().to(device)
        if len(self.ordinary) == 0:
            raise ConfigError(f"{source} has no ordinary (non-special) token to mask")
        self.info = info

    def bind_data(self, facts: DataFacts) -> None:
        """The data's tokenizer ids, and checks that the pieces fit."""
        if facts.modality != "text" or facts.tokenizer is None:
            raise ConfigError(f"MLM needs a text data module, got {facts.source}; pick data=wordnet, "
                              "text_files or hf_text")
        if facts.max_length > self.max_positions:
            raise ConfigError(f"data.max_length {facts.max_length} exceeds backbone.max_positions "
                              f"{self.max_positions}; lower data.max_length or raise backbone.max_positions")
        if self.next_sentence and not facts.next_sentence:
            raise ConfigError("objective.next_sentence=true needs sentence pairs from the data: set "
                              "data.next_sentence=true and data.mode=packed")
        self.bind_tokenizer(facts.tokenizer, f"tokenizer {facts.tokenizer_name}".strip())

    # -- validation: perplexity over the whole split ----------------------------------------------------------
    def reset_validation(self) -> None:
        self._val_nll: torch.Tensor | None = None  # (sum of per-batch MLM loss x batch size, samples)

    def update_validation(self, out: StepOutput, batch_size: int) -> None:
        nll = out.metrics.get("mlm_loss", out.loss).detach().float()  # the language-model loss alone
        total = torch.stack([nll * batch_size, nll.new_tensor(float(batch_size))])
        self._val_nll = total if getattr(self, "_val_nll", None) is None else self._val_nll + total

    def compute_validation(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """val/perplexity = exp(mean validation MLM loss over the whole split and all processes)."""
        if getattr(self, "_val_nll", None) is None:
            return {}
        total = reduce_sum(self._val_nll)
        return {"perplexity": torch.exp(total[0] / total[1])}

    # -- the step ------------------------------------------------------------------------------------------
    def mask_noise(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, L, 3) uniforms keyed by the sample (reproducible across resume and DDP), else torch.rand. Position j
        draws three numbers at counters 3j, 3j+1, 3j+2 (chosen?, what it becomes, which random token), so a
        sample's masking does not depend on how long its batch is padded."""
        ids = batch["input_ids"]
        b, length = ids.shape
        noise = keyed_random.per_sample_uniform(batch.get("key"), b, 3 * length, keyed_random.TOKEN_MASK_STREAM,
                                                ids.device)
        return noise.view(b, length, 3)

    def mask(self, batch: dict[str, Any]) -> MaskedTokens:
        return mask_tokens(batch["input_ids"], batch.get("attention_mask"), self.mask_noise(batch), self.special,
                           self.ordinary, self.info.mask_id, self.mask_rate, self.mask_token_fraction,
                           self.random_token_fraction)

    @staticmethod
    def decoder_weight(backbone: nn.Module) -> torch.Tensor:
        """The MLM decoder's weight: the backbone's input embedding itself (tied, so not a parameter of ours)."""
        return backbone.input_embedding.weight

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        m = self.mask(batch)
        attention_mask = batch.get("attention_mask")
        hidden = backbone.forward_tokens(m.input_ids, attention_mask, batch.get("token_type_ids"))
        logits = self.head(gather_rows(hidden, m.positions), self.decoder_weight(backbone)).float()
        n = m.valid.sum().clamp_min(1)
        targets = torch.where(m.valid, m.targets, IGNORE)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum") / n
        accuracy = ((logits.argmax(-1) == m.targets) & m.valid).sum() / n
        metrics = {"masked_accuracy": accuracy.detach()}
        features = backbone.pool_tokens(hidden, attention_mask).detach()  # for online probes (of masked input)
        if self.nsp is None:
            return StepOutput(loss, metrics, features)
        nsp_logits = self.nsp(hidden[:, 0]).float()
        nsp_labels = batch["next_sentence_label"]
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        metrics.update(mlm_loss=loss.detach(), nsp_loss=nsp_loss.detach(),
                       nsp_accuracy=(nsp_logits.argmax(-1) == nsp_labels).float().mean())
        return StepOutput(loss + nsp_loss, metrics, features)
