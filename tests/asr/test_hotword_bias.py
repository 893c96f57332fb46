"""On a tiny overfit case, giving the true hotword raises hotword recall.

The names are acoustically identical (all spoken as the same tones), so the ASR part alone cannot tell which one was
said; with the true name in the hotword list the bias branch can. Trained as the two-stage recipe: the ASR part on
CE + CIF length loss, then (ASR part frozen) the hotword branch on the hotword CE.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speakerforge.asr.data import hotword_batch, pad_features
from speakerforge.asr.infer import AsrModel
from speakerforge.asr.metrics import score_corpus
from speakerforge.asr.model import ASR_PART, HOTWORD_PART, ModelArgs, SeacoParaformer
from speakerforge.asr.vocab import CharVocab
from tests.asr.helpers import tone_utterance

NAMES = ["bab", "dad", "gag", "fif"]
TEMPLATES = ["call {} now", "{} is here", "see {}"]


def _train(model, params, steps, batches, losses, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        b = batches(step)
        out = model(*b, losses=losses)
        loss = sum(out[k] for k in losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("memory", ["word", "token"])
def test_true_hotword_raises_recall_on_a_tiny_overfit_case(memory):
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    texts = [t.format(n) for n in NAMES for t in TEMPLATES]
    vocab = CharVocab.from_texts(texts)
    asr = AsrModel(
        SeacoParaformer(
            len(vocab),
            ModelArgs(
                num_mel_bins=20,
                d_model=32,
                heads=2,
                ffn_dim=64,
                encoder_layers=2,
                decoder_layers=1,
                dropout=0.0,
                ctc=False,
                bias_memory=memory,
                bias_bidirectional=memory == "token",
            ),
        ),
        vocab,
        {"num_mel_bins": 20, "frame_length": 25.0, "frame_shift": 10.0, "mean_norm": True},
    )
    model = asr.model.train()
    wavs = [torch.from_numpy(tone_utterance(t.format("kek"))) for n in NAMES for t in TEMPLATES]
    feats, flen = pad_features([asr.feats(w) for w in wavs])
    toks = [vocab.encode(t) for t in texts]
    tlen = torch.tensor([len(t) for t in toks])
    targets = torch.full((len(toks), int(tlen.max())), -1)
    for i, t in enumerate(toks):
        targets[i, : len(t)] = torch.tensor(t)

    def batch(idx, spans):
        hb = hotword_batch([toks[i] for i in idx], spans, model.no_bias_id, vocab.sos_id)
        return (
            feats[idx],
            flen[idx],
            targets[idx, : int(tlen[idx].max())],
            tlen[idx],
            hb["hotwords"],
            hb["hotword_lengths"],
            hb["hotword_labels"],
        )

    every = list(range(len(texts)))
    asr_params = [p for n, p in model.named_parameters() if n.split(".")[0] in ASR_PART]
    _train(model, asr_params, 120, lambda s: batch(every, [[] for _ in every]), ("ce", "cif"))

    # stage 2: the batch is one name's utterances; its hotword list holds that name (when drawn, p = 0.75)
    def name_span(i):
        words = texts[i].split()
        k = next(j for j, w in enumerate(words) if w in NAMES)
        start = sum(len(w) + 1 for w in words[:k])
        return (start, start + len(words[k]))

    def hot_batch(step):
        name = step % len(NAMES)
        idx = [name * len(TEMPLATES) + k for k in range(len(TEMPLATES))]
        rng = np.random.default_rng([0, step])
        return batch(idx, [[name_span(i)] if rng.random() < 0.75 else [] for i in idx])

    hot_params = [p for n, p in model.named_parameters() if n.split(".")[0] in HOTWORD_PART]
    _train(model, hot_params, 400, hot_batch, ("hotword",), lr=5e-3)
    model.eval()
    plain = asr.transcribe(wavs)
    biased = [asr.transcribe([w], [texts[i][slice(*name_span(i))]])[0] for i, w in enumerate(wavs)]
    r_plain = score_corpus(texts, plain, NAMES)["recall"]
    r_biased = score_corpus(texts, biased, NAMES)["recall"]
    print(plain[:3], biased[:3], r_plain, r_biased)
    assert r_plain <= 50.0
    assert r_biased >= r_plain + 40.0
