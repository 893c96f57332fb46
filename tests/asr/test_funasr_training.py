"""FunASR's training losses in speakerforge against FunASR's own (PyPI `funasr`, test-only), random weights at
small sizes: Paraformer's decoder loss (glancing sampler, label smoothing, length normalisation), the predictor's
MAE loss and SeACo's hotword loss, on the same batch with the same random draws."""

from __future__ import annotations

import pytest
import torch

from speakerforge.asr.data import hotword_batch
from speakerforge.asr.paraformer import SeacoParaformer, load_funasr_state
from tests.asr.funasr_oracle import SEACO_SMALL, oracle_seaco, small_tokens

TOL = 1e-4
V = len(small_tokens())
INPUT = SEACO_SMALL["frontend_conf"]["n_mels"] * SEACO_SMALL["frontend_conf"]["lfr_m"]


@pytest.fixture(scope="module")
def pair():
    oracle = oracle_seaco(SEACO_SMALL, V, seed=0)
    ours = SeacoParaformer(SEACO_SMALL, V, INPUT).eval()
    load_funasr_state(ours, oracle.state_dict(), "oracle")
    return oracle, ours


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, lens = torch.randn(2, 50, INPUT, generator=g), torch.tensor([50, 37])
    toks = [torch.randint(3, V - 1, (n,), generator=g).tolist() for n in (9, 6)]
    targets = torch.full((2, 9), -1)
    for i, t in enumerate(toks):
        targets[i, : len(t)] = torch.tensor(t)
    hw = hotword_batch(toks, [[(2, 5)], [(1, 3)]], no_bias_id=SEACO_SMALL["model_conf"]["NO_BIAS"], sos_id=1)
    return x, lens, targets, torch.tensor([9, 6]), hw


def test_losses_match_funasrs_paraformer_and_seaco_losses(pair, monkeypatch):
    """The glancing positions are FunASR's `torch.randperm` draws; FunASR's layer stacks also draw from torch's
    generator at every call (`MultiSequential`'s layer-drop), so the two streams differ: the test fixes
    `torch.randperm` to a reversal for both, and everything else must then agree."""
    oracle, ours = pair
    x, lens, targets, tlens, hw = _batch()
    monkeypatch.setattr(torch, "randperm", lambda n, **_: torch.arange(int(n) - 1, -1, -1))
    with torch.no_grad():
        enc, enc_len, _ = oracle.encoder(x, lens)
        loss_att, acc_att, _, _, loss_pre = oracle._calc_att_loss(enc, enc_len, targets, tlens)
        from funasr.models.transformer.utils.add_sos_eos import add_sos_eos

        _, ys = add_sos_eos(targets, oracle.sos, oracle.eos, -1)
        loss_seaco = oracle._calc_seaco_loss(
            enc, enc_len, ys, tlens + 1, hw["hotwords"], hw["hotword_lengths"], hw["hotword_labels"]
        )
        out = ours(
            x,
            lens,
            targets,
            tlens,
            hw["hotwords"],
            hw["hotword_lengths"],
            hw["hotword_labels"],
            losses=("ce", "cif", "hotword"),
        )
    assert abs(float(out["ce"]) - float(loss_att)) <= TOL
    assert abs(float(out["cif"]) - float(loss_pre)) <= TOL
    assert abs(float(out["hotword"]) - float(loss_seaco)) <= TOL
    correct, counted = out["ce_acc"].tolist()
    assert counted == 9 + 6 + 2 and abs(correct / counted - acc_att) <= 1e-6


def test_loss_gradients_reach_only_the_parts_each_loss_uses(pair):
    _, ours = pair
    x, lens, targets, tlens, hw = _batch(1)
    ours.zero_grad()
    out = ours(
        x, lens, targets, tlens, hw["hotwords"], hw["hotword_lengths"], hw["hotword_labels"], losses=("hotword",)
    )
    out["hotword"].backward()
    grads = {n.split(".")[0] for n, p in ours.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"bias_encoder", "seaco_decoder", "hotword_output_layer", "decoder"} <= grads
    ours.zero_grad()


def test_funasr_hotword_batch_is_funasrs_collator():
    """The list (every span in batch order, repeats kept, then `[sos]`) and the labels (`NO_BIAS`, the token inside
    its own utterance's spans only) of FunASR's `AudioDatasetHotword.collator`."""
    from funasr.datasets.audio_datasets.datasets import AudioDatasetHotword

    toks = [[3, 4, 5, 6, 7], [4, 5, 9], [8, 9, 10, 11, 12, 13]]
    spans = [[(1, 3)], [], [(0, 2), (3, 6)]]  # [start, end)
    no_bias = 30
    collator = object.__new__(AudioDatasetHotword)
    collator.int_pad_value, collator.float_pad_value = -1, 0.0
    samples = [
        {
            "speech": torch.zeros(4, 2),
            "speech_lengths": torch.tensor([4]),
            "text": torch.tensor(t),
            "text_lengths": torch.tensor([len(t)]),
            "hotword_indx": [i for s, e in sp for i in (s, e - 1)] or [-1],
            "seaco_id": no_bias,
        }
        for t, sp in zip(toks, spans)
    ]
    theirs = AudioDatasetHotword.collator(collator, samples)
    ours = hotword_batch(toks, spans, no_bias_id=no_bias, sos_id=1)
    assert torch.equal(ours["hotwords"], theirs["hotword_pad"])
    assert ours["hotword_lengths"].tolist() == theirs["hotword_lengths"].tolist()
    assert torch.equal(ours["hotword_labels"], theirs["seaco_label_pad"])
    assert ours["hotwords"].tolist()[:2] == [[4, 5, 0], [8, 9, 0]]  # "4 5" is not labelled in utterance 2
    assert ours["hotword_labels"][1].tolist() == [no_bias] * 3 + [-1] * 3


@pytest.mark.parametrize("freq_width", [[0, 30], [0, 8]])
def test_specaug_lfr_masks_as_funasrs_for_the_same_seed(freq_width):
    from funasr.models.specaug.specaug import SpecAugLFR as Theirs

    from speakerforge.asr.funasr_frontend import SpecAugLFR

    conf = {**SEACO_SMALL["specaug_conf"], "freq_mask_width_range": freq_width, "num_freq_mask": 2}
    x = torch.randn(3, 30, INPUT, generator=torch.Generator().manual_seed(0)) + 5.0
    torch.manual_seed(4)
    theirs, _ = Theirs(**conf)(x.clone(), torch.tensor([30, 30, 30]))
    torch.manual_seed(4)
    mine = SpecAugLFR(**conf)(x.clone())
    assert torch.equal(theirs, mine)
    assert (mine == 0).any()  # something was masked


def test_contextual_paraformer_losses_match_funasrs(monkeypatch):
    """ContextualParaformer's `_calc_att_clas_loss`: the decoder reads the batch's hotword list in the glancing pass
    and the loss pass; CE and the predictor's MAE equal FunASR's (randperm fixed as above)."""
    from speakerforge.asr.paraformer import ContextualParaformer
    from tests.asr.funasr_oracle import contextual_small, oracle_contextual

    cfg = contextual_small()
    oracle = oracle_contextual(cfg, V, seed=1)
    ours = ContextualParaformer(cfg, V, INPUT).eval()
    load_funasr_state(ours, oracle.state_dict(), "oracle")
    x, lens, targets, tlens, hw = _batch(2)
    monkeypatch.setattr(torch, "randperm", lambda n, **_: torch.arange(int(n) - 1, -1, -1))
    with torch.no_grad():
        enc, enc_len = oracle.encode(x, lens)
        loss_att, acc_att, _, _, loss_pre, _ = oracle._calc_att_clas_loss(
            enc, enc_len, targets, tlens, hw["hotwords"], hw["hotword_lengths"]
        )
        out = ours(x, lens, targets, tlens, hw["hotwords"], hw["hotword_lengths"], losses=("ce", "cif"))
    assert abs(float(out["ce"]) - float(loss_att)) <= TOL
    assert abs(float(out["cif"]) - float(loss_pre)) <= TOL
    correct, counted = out["ce_acc"].tolist()
    assert abs(correct / counted - acc_att) <= 1e-6
