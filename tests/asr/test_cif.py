"""CIF: the vectorised integrate-and-fire equals the sequential loop, and the forced mode fires the target count."""

import torch

from speakerforge.asr.cif import cif, cif_reference, cif_weights, num_fired, scale_to_targets


def test_vectorised_cif_matches_the_sequential_loop():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 17, 5, generator=g, dtype=torch.float64)
    alphas = torch.rand(3, 17, generator=g, dtype=torch.float64) * 0.9
    n = torch.floor(alphas.sum(-1)).long()  # tokens that crossed the threshold
    emb, mask = cif(hidden, alphas, n + 1)  # +1: the last row holds the tail
    for i, (fired, tail, _tail_w) in enumerate(cif_reference(hidden, alphas)):
        assert fired.shape[0] == n[i]
        torch.testing.assert_close(emb[i, : n[i]], fired)
        torch.testing.assert_close(emb[i, n[i]], tail)
        assert mask[i].sum() == n[i] + 1


def test_forced_mode_fires_exactly_the_target_number_of_tokens_each_of_weight_one():
    g = torch.Generator().manual_seed(1)
    alphas = torch.rand(4, 30, generator=g)
    alphas[2, 20:] = 0  # a padded utterance
    targets = torch.tensor([5, 12, 3, 29])
    scaled = scale_to_targets(alphas, targets)
    w = cif_weights(scaled, targets)
    assert w.shape[1] == 29
    for i, t in enumerate(targets.tolist()):
        per_token = w[i].sum(-1)
        torch.testing.assert_close(per_token[:t], torch.ones(t), atol=1e-4, rtol=0)
        assert per_token[t:].abs().sum() == 0
    assert torch.equal(num_fired(scaled), targets)


def test_gradient_reaches_the_alphas():
    alphas = torch.full((1, 6), 0.7, requires_grad=True)
    hidden = torch.randn(1, 6, 4)
    emb, _ = cif(hidden, alphas, torch.tensor([4]))
    emb.sum().backward()
    assert alphas.grad is not None and alphas.grad.abs().sum() > 0


def test_an_utterance_decodes_the_same_alone_and_padded_in_a_batch():
    """The predictor's convolution once read the padding frames of longer batch-mates at an utterance's edge, so
    results (and cached ASR states) depended on the batch."""
    from speakerforge.asr.model import ModelArgs, SeacoParaformer

    torch.manual_seed(0)
    model = SeacoParaformer(
        12, ModelArgs(d_model=16, heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0, num_mel_bins=20)
    ).eval()
    feats, lengths, targets = torch.randn(3, 50, 20), torch.tensor([50, 30, 40]), torch.tensor([5, 3, 4])
    emb, mask, hidden = model.asr_states(feats, lengths, targets)
    alone = model.asr_states(feats[1:2, :30], lengths[1:2], targets[1:2])
    assert torch.allclose(emb[1, :3], alone[0][0], atol=1e-5) and torch.allclose(hidden[1, :3], alone[2][0], atol=1e-5)
    with torch.no_grad():
        a = model.predictor(*model.encode(feats, lengths)[:2])[2]
        b = model.predictor(*model.encode(feats[1:2, :30], lengths[1:2])[:2])[2]
    assert torch.allclose(a[1], b[0], atol=1e-5)  # the alpha sum, which sets the token count at inference
