"""BERT-style text encoder: token, learned position and segment embeddings, then transformer blocks.

Attention is `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPUs) with a key padding
mask, so padded positions never influence real ones. `norm` picks the block layout:
- `pre` (default): x + f(LN(x)), with a final LayerNorm. Trains stably at higher learning rates and short
  warm-ups without tuning (Xiong et al. 2020), which suits a framework whose recipes are shared across sizes.
- `post`: LN(x + f(x)), with a LayerNorm on the embeddings: the original BERT (Devlin et al. 2019), for
  reproducing it exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.prompts import insert_prompts, prompted_blocks
from selfsup.errors import ConfigError

NORMS = ("pre", "post")
POOLS = ("cls", "mean")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, D); keep (B, 1, 1, L) bool, True at the keys that may be attended to (None: all)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """A transformer layer: self-attention then a GELU MLP, each with a residual and a LayerNorm."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float, norm: str,
                 eps: float) -> None:
        super().__init__()
        self.pre = norm == "pre"
        self.attn = SelfAttention(dim, heads, attn_dropout)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.pre:
            x = x + self.drop(self.attn(self.norm1(x), keep))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, keep)))
        return self.norm2(x + self.drop(self.mlp(x)))


class TextTransformer(nn.Module):
    """A BERT encoder. `forward_tokens` gives every position's features, `forward` one vector per sequence."""

    modality = "text"

    def __init__(self, vocab_size: int = 8192, dim: int = 512, depth: int = 4, heads: int = 8,
                 mlp_dim: int | None = None, max_positions: int = 512, type_vocab_size: int = 2,
                 dropout: float = 0.1, attn_dropout: float = 0.1, norm: str = "pre", pool: str = "cls",
                 layer_norm_eps: float = 1e-12, init_std: float = 0.02) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"backbone.norm must be one of {NORMS}, got '{norm}'")
        if pool not in POOLS:
            raise ConfigError(f"backbone.pool must be one of {POOLS}, got '{pool}'")
        if dim % heads:
            raise ConfigError(f"backbone.dim {dim} is not divisible by backbone.heads {heads}")
        if vocab_size < 6:
            raise ConfigError(f"backbone.vocab_size must be at least 6 (5 special tokens and a word), got {vocab_size}")
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_positions = max_positions
        self.norm_kind = norm
        self.pool = pool
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_positions, dim))
        self.type_embed = nn.Embedding(type_vocab_size, dim) if type_vocab_size > 0 else None
        self.embed_norm = nn.LayerNorm(dim, eps=layer_norm_eps) if norm == "post" else nn.Identity()
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim or 4 * dim, dropout, attn_dropout, norm, layer_norm_eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps) if norm == "pre" else nn.Identity()
        self.init_std = init_std
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_embed, std=init_std, a=-2 * init_std, b=2 * init_std)

    def _init(self, m: nn.Module) -> None:
        """BERT's initialisation: truncated normal(0, 0.02) weights, zero biases, unit LayerNorms."""
        std = self.init_std
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_features(self) -> int:
        return self.dim

    @property
    def input_embedding(self) -> nn.Embedding:
        """The token embedding, which an MLM head's decoder shares (weight tying)."""
        return self.token_embed

    def forward_tokens(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       token_type_ids: torch.Tensor | None = None, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L), attention_mask (B, L) 1 at real tokens, 0 at padding -> features (B, L, D).

        `prompts` (K, P, D): prompt tuning's tokens, right after [CLS] (so [CLS] pooling reads position 0 as
        always), beside the token embeddings with no position or segment embedding (the real tokens keep
        positions 0..L-1, and prompts cost none of max_positions), always attended to; K = 1, or one set per block
        (deep). Their outputs are not returned (backbones/prompts.py)."""
        length = ids.shape[1]
        if length > self.max_positions:
            raise ConfigError(f"sequences of {length} tokens exceed backbone.max_positions {self.max_positions}; "
                              "lower data.max_length")
        x = self.token_embed(ids) + self.pos_embed[:, :length]
        if self.type_embed is not None:
            x = x + (self.type_embed(token_type_ids) if token_type_ids is not None else self.type_embed.weight[0])
        if prompts is not None:
            x = insert_prompts(x, prompts[0], 1)
            if attention_mask is not None:
                ones = attention_mask.new_ones(len(ids), prompts.shape[1])
                attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        x = self.embed_drop(self.embed_norm(x))
        keep = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        if prompts is not None:
            return self.norm(prompted_blocks(self.blocks, x, prompts, 1, lambda block, t: block(t, keep)))
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)

    def pool_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, D): the [CLS] position, or the mean over real (non-padding) tokens."""
        if self.pool == "cls":
            return tokens[:, 0]
        if attention_mask is None:
            return tokens.mean(dim=1)
        weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence features (B, D), pooled as configured: what probes, retrieval and embedding export use.
        `prompts`: see forward_tokens; pooling never reads them ([CLS], or the mean over the real tokens)."""
        tokens = self.forward_tokens(ids, attention_mask, token_type_ids, prompts)
        return self.pool_tokens(tokens, attention_mask)
