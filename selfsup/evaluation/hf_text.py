"""selfsup's text encoder as a Hugging Face transformers model, weight for weight.

The two layouts of TextTransformer (selfsup/backbones/text_transformer.py) are each an architecture transformers
already has, so nothing of selfsup is needed to load an export:
- `norm=post` is BERT itself: `BertModel` / `BertForMaskedLM`.
- `norm=pre` (x + f(LN(x)), a final LayerNorm, no LayerNorm on the embeddings) is XLM-RoBERTa-XL's layout:
  `XLMRobertaXLModel` / `XLMRobertaXLForMaskedLM`. `RobertaPreLayerNorm` is not: it normalises the embeddings
  too, which would change every feature. RoBERTa-family models number positions from pad_id + 1, so the
  position table is written shifted by pad_id + 1 rows; padding tokens (masked out of attention) then take the
  padding row, which changes nothing at the real tokens.
The fused qkv projection is split into query, key and value; a model without segment embeddings gets one zero
segment row (transformers always adds one). GELU is the exact (erf) one in both, as in selfsup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.backbones.text_transformer import TextTransformer
from selfsup.data.tokenizer import CLS, MASK, PAD, SEP, UNK, load_tokenizer, token_ids_of, with_bert_template
from selfsup.data_facts import TokenizerInfo
from selfsup.errors import ConfigError

ARCHITECTURES = {"post": ("bert", "BertModel", "BertForMaskedLM"),
                 "pre": ("xlm-roberta-xl", "XLMRobertaXLModel", "XLMRobertaXLForMaskedLM")}


def hf_config(encoder: TextTransformer, info: TokenizerInfo, masked_lm: bool) -> Any:
    """The transformers config of the architecture that computes what `encoder` computes."""
    from transformers import AutoConfig

    model_type, base, head = ARCHITECTURES[encoder.norm_kind]
    block = encoder.blocks[0]
    offset = info.pad_id + 1 if encoder.norm_kind == "pre" else 0
    return AutoConfig.for_model(
        model_type, vocab_size=encoder.vocab_size, hidden_size=encoder.dim, num_hidden_layers=len(encoder.blocks),
        num_attention_heads=block.attn.heads, intermediate_size=block.mlp[0].out_features, hidden_act="gelu",
        max_position_embeddings=encoder.max_positions + offset,
        type_vocab_size=encoder.type_embed.num_embeddings if encoder.type_embed is not None else 1,
        layer_norm_eps=block.norm1.eps, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=info.pad_id, bos_token_id=info.cls_id, eos_token_id=info.sep_id, tie_word_embeddings=True,
        architectures=[head if masked_lm else base], selfsup_pool=encoder.pool)


def _split_qkv(prefix: str, qkv: nn.Linear) -> dict[str, torch.Tensor]:
    out = {}
    for name, weight, bias in zip(("query", "key", "value"), qkv.weight.chunk(3), qkv.bias.chunk(3)):
        out[f"{prefix}.{name}.weight"] = weight
        out[f"{prefix}.{name}.bias"] = bias
    return out


def _linear(prefix: str, layer: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": layer.weight, f"{prefix}.bias": layer.bias}


def encoder_state(encoder: TextTransformer, pad_id: int) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers' names (without the `bert.` / `roberta.` prefix)."""
    pre = encoder.norm_kind == "pre"
    positions = encoder.pos_embed[0]
    if pre:
        positions = torch.cat([positions.new_zeros(pad_id + 1, encoder.dim), positions])
    types = encoder.type_embed.weight if encoder.type_embed is not None else positions.new_zeros(1, encoder.dim)
    state = {"embeddings.word_embeddings.weight": encoder.token_embed.weight,
             "embeddings.position_embeddings.weight": positions,
             "embeddings.token_type_embeddings.weight": types}
    if not pre:
        state.update(_linear("embeddings.LayerNorm", encoder.embed_norm))
    for i, block in enumerate(encoder.blocks):
        layer = f"encoder.layer.{i}"
        state.update(_split_qkv(f"{layer}.attention.self", block.attn.qkv))
        state.update(_linear(f"{layer}.attention.output.dense", block.attn.proj))
        state.update(_linear(f"{layer}.intermediate.dense", block.mlp[0]))
        state.update(_linear(f"{layer}.output.dense", block.mlp[2]))
        if pre:
            state.update(_linear(f"{layer}.attention.self_attn_layer_norm", block.norm1))
            state.update(_linear(f"{layer}.LayerNorm", block.norm2))
        else:
            state.update(_linear(f"{layer}.attention.output.LayerNorm", block.norm1))
            state.update(_linear(f"{layer}.output.LayerNorm", block.norm2))
    if pre:
        state.update(_linear("encoder.LayerNorm", encoder.norm))
    return state


def head_state(encoder: TextTransformer, head: nn.Module) -> dict[str, torch.Tensor]:
    """An MLMHead's weights (dense, GELU, LayerNorm, tied decoder + bias) under transformers' names."""
    if encoder.norm_kind == "post":
        prefix, norm = "cls.predictions", "cls.predictions.transform.LayerNorm"
        dense = "cls.predictions.transform.dense"
    else:
        prefix, norm, dense = "lm_head", "lm_head.layer_norm", "lm_head.dense"
    return {**_linear(dense, head.dense), **_linear(norm, head.norm), f"{prefix}.bias": head.bias,
            f"{prefix}.decoder.weight": encoder.token_embed.weight, f"{prefix}.decoder.bias": head.bias}


@torch.no_grad()
def to_transformers(encoder: TextTransformer, info: TokenizerInfo, head: nn.Module | None = None) -> nn.Module:
    """A transformers model with `encoder`'s weights (and the MLM head's, given one), loaded strictly."""
    from transformers import AutoModel, AutoModelForMaskedLM

    config = hf_config(encoder, info, masked_lm=head is not None)
    auto = AutoModelForMaskedLM if head is not None else AutoModel
    model = auto.from_config(config, **({} if head is not None else {"add_pooling_layer": False}))
    state = encoder_state(encoder, info.pad_id)
    if head is not None:
        prefix = model.base_model_prefix
        state = {**{f"{prefix}.{k}": v for k, v in state.items()}, **head_state(encoder, head)}
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return model.eval()


def hf_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """The run's `tokenizers.Tokenizer` as a PreTrainedTokenizerFast that adds [CLS] and [SEP] as training did."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=with_bert_template(tokenizer), unk_token=UNK, pad_token=PAD,
                                   cls_token=CLS, sep_token=SEP, mask_token=MASK, model_max_length=max_length)


def pooled(tokens: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """Sequence features from transformers' last_hidden_state, pooled as the selfsup encoder pools."""
    if pool == "cls":
        return tokens[:, 0]
    weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def check_loads_back(folder: Path, encoder: TextTransformer) -> None:
    """transformers' AutoModel, loaded from `folder`, gives the encoder's pooled features (padding included)."""
    from transformers import AutoModel
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # an MLM export has no pooler: AutoModel says so at length
    try:
        model = AutoModel.from_pretrained(folder).eval()
    finally:
        logging.set_verbosity(verbosity)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, encoder.vocab_size, (2, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    got = pooled(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, encoder.pool)
    if not torch.allclose(got, encoder.eval()(ids, mask), rtol=1e-4, atol=1e-5):
        raise ConfigError("the exported transformers model's features differ from the backbone's; please report this")


def export_text(encoder: TextTransformer, out: Path, tokenizer_path: str | None, lowercase: bool,
                head: nn.Module | None, source: dict[str, Any], max_length: int | None = None) -> dict[str, Any]:
    """A transformers model folder: config.json, model.safetensors and the tokenizer files. `head`: the run's MLM
    head, exported as the *ForMaskedLM model (fill-mask pipelines) when given; `source`: the checkpoint and step;
    `max_length`: the longest input the tokenizer announces (default: the encoder's positions)."""
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        raise ConfigError(f"cannot find the tokenizer of {source['checkpoint']}; set data.tokenizer.path in its "
                          "run's config")
    tokenizer = load_tokenizer(tokenizer_path, lowercase)
    info = token_ids_of(tokenizer, f"the tokenizer {tokenizer_path}")
    model = to_transformers(encoder, info, head)
    model.config.selfsup_source = source
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hf_tokenizer(tokenizer, max_length or encoder.max_positions).save_pretrained(out)
    check_loads_back(out, encoder)
    return {"format": "transformers", "architecture": model.config.architectures[0], "pool": encoder.pool,
            "masked_lm": head is not None, "num_features": encoder.num_features}


def transformers_usage(config: dict[str, Any], where: str, hub: bool = False) -> str:
    """Python that loads a text export from `where` (a folder or a Hub repo id) and embeds a sentence."""
    pool = ("features = tokens[:, 0]  # the [CLS] position, as pretraining pooled\n" if config["pool"] == "cls" else
            "mask = batch[\"attention_mask\"].unsqueeze(-1).to(tokens.dtype)\n"
            "features = (tokens * mask).sum(1) / mask.sum(1)  # the mean of real tokens, as pretraining pooled\n")
    usage = ("import torch\nfrom transformers import AutoModel, AutoTokenizer\n\n"
             f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
             f"model = AutoModel.from_pretrained({where!r}).eval()  # no pooler was trained: pool as below\n"
             "batch = tokenizer([\"a sentence to embed\", \"and another one\"], padding=True, return_tensors=\"pt\")\n"
             "with torch.no_grad():\n    tokens = model(**batch).last_hidden_state\n" + pool)
    if config["masked_lm"]:
        usage += ("\nfrom transformers import pipeline\n\n"
                  f"fill = pipeline(\"fill-mask\", model={where!r})\n"
                  "predictions = fill(\"the cat sat on the [MASK]\")  # the five likeliest tokens, with scores\n")
    return usage
