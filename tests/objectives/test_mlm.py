"""BERT-MLM: the masking statistics, the loss against a brute-force reference, weight tying, learning."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones.text_transformer import TextTransformer
from selfsup.data.text_corpora import TextFiles
from selfsup.data_facts import DataFacts, TokenizerInfo
from selfsup.errors import ConfigError
from selfsup.objectives.mlm import MLM, max_chosen

V = 1000


def tiny(vocab: int = V, **kw) -> TextTransformer:
    kw = {"dim": 32, "depth": 2, "heads": 4, "dropout": 0.0, "attn_dropout": 0.0, **kw}
    return TextTransformer(vocab_size=vocab, **kw)


def token_batch(b: int, length: int, seed: int = 0, vocab: int = V) -> dict[str, torch.Tensor]:
    """[CLS] words [SEP] [PAD]...: random lengths, some special tokens inside the text too."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    lengths = torch.randint(length // 4, length + 1, (b,), generator=g)
    pos = torch.arange(length)
    real = pos < lengths[:, None]
    inner_special = torch.rand(b, length, generator=g) < 0.05
    ids = torch.where(inner_special, torch.randint(1, 5, (b, length), generator=g), ids)  # [UNK] [CLS] [SEP] [MASK]
    ids[:, 0] = 2
    ids[torch.arange(b), lengths - 1] = 3
    ids = ids.masked_fill(~real, 0)
    return {"input_ids": ids, "attention_mask": real.long(), "key": torch.arange(b) + 1000 * seed}


def test_rate_and_80_10_10_split_hold_over_many_tokens():
    obj = MLM(tiny())
    batch = token_batch(4096, 128)
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    m = obj.mask(batch)
    special = ids < 5
    eligible = real & ~special
    chosen = m.labels != -100
    n_eligible = int(eligible.sum())
    assert n_eligible >= 100_000

    # exactly round(15% of the eligible tokens) per sequence, never a special or padding token
    expected = torch.floor(eligible.sum(1).float() * 0.15 + 0.5).long()
    assert torch.equal(chosen.sum(1), expected)
    assert not (chosen & ~eligible).any()
    assert abs(chosen.sum().item() / n_eligible - 0.15) < 0.5 / eligible.sum(1).float().mean().item()
    # chosen uniformly among the eligible positions: their mean position matches (5 sigma)
    pos = torch.arange(128).expand_as(ids).float()
    spread = pos[eligible].std().item() / math.sqrt(chosen.sum().item())
    assert abs(pos[chosen].mean().item() - pos[eligible].mean().item()) < 5 * spread

    # labels: the original ids exactly at the chosen positions; elsewhere the input is untouched
    assert torch.equal(m.labels[chosen], ids[chosen])
    assert torch.equal(m.input_ids[~chosen], ids[~chosen])
    # 80% [MASK], 10% random ordinary token, 10% unchanged: binomial shares within 5 sigma
    new, old = m.input_ids[chosen], ids[chosen]
    n = new.numel()
    ordinary = V - 5
    shares = {
        "mask": ((new == 4).float().mean().item(), 0.8),
        "random": (((new != 4) & (new != old)).float().mean().item(), 0.1 * (1 - 1 / ordinary)),
        "unchanged": ((new == old).float().mean().item(), 0.1 + 0.1 / ordinary),
    }
    for name, (share, p) in shares.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(share - p) < 5 * sigma, (name, share, p, sigma)
    replaced = new[(new != 4) & (new != old)]
    assert (replaced >= 5).all() and (replaced < V).all()  # random replacements are never special tokens


def test_masking_follows_the_sample_key_whatever_the_padding():
    obj = MLM(tiny())
    batch = token_batch(8, 32)
    m = obj.mask(batch)
    padded = {k: v for k, v in batch.items()}
    padded["input_ids"] = F.pad(batch["input_ids"], (0, 16))
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, 16))
    m2 = obj.mask(padded)
    assert torch.equal(m2.input_ids[:, :32], m.input_ids) and torch.equal(m2.labels[:, :32], m.labels)
    assert (m2.labels[:, 32:] == -100).all()
    shuffled = {k: v.flip(0) for k, v in batch.items()}  # another batch composition: each row keeps its mask
    assert torch.equal(obj.mask(shuffled).input_ids.flip(0), m.input_ids)
    other = dict(batch, key=batch["key"] + 1)
    assert not torch.equal(obj.mask(other).labels, m.labels)


def test_special_ids_come_from_the_bound_tokenizer():
    obj = MLM(tiny(vocab=120))
    info = TokenizerInfo(vocab_size=110, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103,
                         special_ids=(0, 100, 101, 102, 103))
    obj.bind_tokenizer(info)
    ids = torch.randint(1, 100, (256, 64))
    ids[:, 0], ids[:, -1], ids[:, 10] = 101, 102, 103
    m = obj.mask({"input_ids": ids, "attention_mask": torch.ones_like(ids), "key": torch.arange(256)})
    chosen = m.labels != -100
    assert not chosen[:, [0, 10, 63]].any()
    new = m.input_ids[chosen]
    assert (new == 103).any() and ((new >= 104) & (new < 110)).any()  # [MASK]s, and ordinary ids above it
    assert not ((new >= 100) & (new <= 102)).any() and not (new >= 110).any()  # no special, no row past 110
    with pytest.raises(ConfigError, match=r"has 30522 tokens but the backbone embeds 120 .*vocab_size=30522"):
        obj.bind_tokenizer(TokenizerInfo.default(30522))


def reference_loss(obj: MLM, backbone: TextTransformer, batch: dict, labels: torch.Tensor, inputs: torch.Tensor):
    """Logits at every position, then cross-entropy with ignore_index=-100: the usual MLM formulation."""
    hidden = backbone.forward_tokens(inputs, batch["attention_mask"])
    logits = obj.head(hidden, backbone.token_embed.weight)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def test_loss_equals_the_full_sequence_reference_and_decoder_is_tied():
    torch.manual_seed(0)
    backbone = tiny().eval()
    obj = MLM(backbone).eval()
    batch = token_batch(6, 40, seed=3)
    out = obj(backbone, batch)
    m = obj.mask(batch)
    torch.testing.assert_close(out.loss, reference_loss(obj, backbone, batch, m.labels, m.input_ids))
    hidden = backbone.forward_tokens(m.input_ids, batch["attention_mask"])
    preds = obj.head(hidden, backbone.token_embed.weight).argmax(-1)
    chosen = m.labels != -100
    torch.testing.assert_close(out.metrics["masked_accuracy"],
                               (preds[chosen] == m.labels[chosen]).float().mean())

    # tied: the decoder is the input embedding itself, and the objective owns no copy of it
    assert obj.decoder_weight(backbone).data_ptr() == backbone.token_embed.weight.data_ptr()
    ours = {p.data_ptr() for p in obj.parameters()}
    assert not ours & {p.data_ptr() for p in backbone.parameters()}
    assert obj.head.bias.shape == (V,)
    out.loss.backward()
    absent = sorted(set(range(5, V)) - set(m.input_ids.flatten().tolist()))[0]
    assert backbone.token_embed.weight.grad[absent].abs().sum() > 0  # reached only through the decoder


def test_next_sentence_prediction_adds_its_loss():
    backbone = tiny()
    obj = MLM(backbone, next_sentence=True)
    batch = token_batch(4, 16)
    batch["token_type_ids"] = (torch.arange(16) >= 8).long().expand(4, -1)
    batch["next_sentence_label"] = torch.tensor([0, 1, 1, 0])
    out = obj(backbone, batch)
    assert set(out.metrics) == {"masked_accuracy", "mlm_loss", "nsp_loss", "nsp_accuracy"}
    torch.testing.assert_close(out.loss, out.metrics["mlm_loss"] + out.metrics["nsp_loss"])

    no_pairs = DataFacts(modality="text", source="lines", tokenizer=TokenizerInfo.default(V), max_length=16)
    with pytest.raises(ConfigError, match="data.next_sentence=true and data.mode=packed"):
        obj.bind_data(no_pairs)


def test_max_chosen_bounds_every_count():
    for length in range(1, 600):
        for rate in (0.15, 0.5, 0.9, 0.01):
            k = max_chosen(length, rate)
            counts = torch.floor(torch.arange(length + 1).float() * rate + 0.5)
            assert counts.max() <= k <= length


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_memorises_a_tiny_corpus(tmp_path, one_thread):
    torch.manual_seed(0)
    lines = ["the old cat sat quietly on the warm mat by the door",
             "a young dog ran quickly through the green park at noon",
             "small birds sing loudly in the tall trees every morning",
             "silver fish swim slowly in the deep blue sea all day",
             "the bright sun is very hot over the desert today",
             "my new car is red and fast on the open road",
             "she reads a long book about kings in the library",
             "we eat fresh bread and soft cheese for lunch"]
    (tmp_path / "tiny.txt").write_text("\n".join(lines), encoding="utf-8")
    dm = TextFiles(root=str(tmp_path / "tiny.txt"), mode="lines", val_fraction=0.0, num_workers=0,
                   tokenizer={"vocab_size": 200, "min_frequency": 1, "cache_dir": str(tmp_path / "cache")})
    dm.setup()
    backbone = TextTransformer(vocab_size=dm.tokenizer_info.vocab_size, dim=64, depth=2, heads=4, mlp_dim=128,
                               dropout=0.0, attn_dropout=0.0)
    obj = MLM(backbone)
    obj.bind_data(dm.facts())

    def batch_of(step: int) -> dict:  # each sentence 4 times, each time with the masks of another epoch
        return dm.collate([dm.train_set[(4 * step + r, i)] for r in range(4) for i in range(len(lines))])

    opt = torch.optim.AdamW(list(backbone.parameters()) + list(obj.parameters()), lr=3e-3)
    for step in range(120):
        loss = obj(backbone, batch_of(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.eval()
    with torch.no_grad():  # masks never seen in training
        accuracy = torch.stack([obj(backbone, batch_of(1000 + s)).metrics["masked_accuracy"] for s in range(10)])
    assert accuracy.mean() > 0.9, accuracy
