"""Paraformer's glancing sampler: how many CIF embeddings it swaps for target embeddings, and when it is off."""

from __future__ import annotations

import torch

from speakerforge.asr.model import ModelArgs, SeacoParaformer
from tests.asr.helpers import TINY_MODEL


def _inputs(model: SeacoParaformer):
    torch.manual_seed(0)
    b, k, t = 3, 6, 12
    emb = torch.randn(b, k, model.args.d_model)
    mask = torch.arange(k)[None, :] < torch.tensor([6, 4, 1])[:, None]
    enc = torch.randn(b, t, model.args.d_model)
    enc_pad = torch.zeros(b, t, dtype=torch.bool)
    targets = torch.randint(2, model.vocab_size, (b, k)).masked_fill(~mask, -1)
    return emb, mask, enc, enc_pad, targets


def _swapped(model: SeacoParaformer, emb, out) -> torch.Tensor:
    return (out != emb).any(-1)


def test_glancing_swaps_ratio_times_the_wrong_tokens_and_only_valid_ones():
    for ratio in (1.0, 0.5):
        model = SeacoParaformer(12, ModelArgs(**{**TINY_MODEL, "sampling_ratio": ratio})).train()
        emb, mask, enc, enc_pad, targets = _inputs(model)
        with torch.no_grad():
            pred = model.decoder(emb, mask, enc, enc_pad)[0].argmax(-1)
        wrong = ((pred != targets) & mask).sum(1)
        out = model.glance(emb, mask, enc, enc_pad, targets)
        swapped = _swapped(model, emb, out)
        assert torch.equal(swapped.sum(1), (wrong.float() * ratio).long())
        assert not (swapped & ~mask).any()
        # swapped positions hold the target's embedding, so decoder.embed gets a gradient
        assert torch.equal(out[swapped], model.decoder.embed(targets.clamp_min(0))[swapped])
        out.sum().backward()
        assert model.decoder.embed.weight.grad is not None and model.decoder.embed.weight.grad.abs().sum() > 0


def test_glancing_is_off_in_eval_mode_and_at_ratio_zero():
    model = SeacoParaformer(12, ModelArgs(**TINY_MODEL)).eval()
    emb, mask, enc, enc_pad, targets = _inputs(model)
    assert model.glance(emb, mask, enc, enc_pad, targets) is emb
    model = SeacoParaformer(12, ModelArgs(**{**TINY_MODEL, "sampling_ratio": 0.0})).train()
    assert model.glance(emb, mask, enc, enc_pad, targets) is emb


def test_bias_memory_rows_per_word_or_per_token_do_not_depend_on_padding():
    from speakerforge.asr.model import BiasEncoder

    torch.manual_seed(0)
    emb = torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 2, 1])
    for per_token in (False, True):
        for bi in (False, True):
            enc = BiasEncoder(8, per_token, bi).eval()
            mem, owner = enc(emb, lengths)
            assert mem.shape == (8 if per_token else 3, 8)
            assert owner.tolist() == ([0] * 5 + [1] * 2 + [2] if per_token else [0, 1, 2])
            alone, _ = enc(emb[1:2, :2], lengths[1:2])  # the second hotword without the padding of a batch
            assert torch.allclose(alone, mem[owner == 1], atol=1e-6)
