"""Decoding with an optional hotword list, and the evaluation table of `speakerforge asr eval`.

The hotword list is a text file, one hotword per line. Two decodings (`Decoding.mode`):
- `seaco` (FunASR's): the no-bias entry is appended to the list, the bias branch is merged as FunASR does (its
  distribution replaces the ASR's at tokens where its argmax is not `<no_bias>`), and a list longer than 50 entries
  is first cut by attention score (`SeacoParaformer.recognize`);
- `ctc`: prefix beam search over the CTC head with the list as a context graph (`speakerforge.asr.context`), as
  WeNet and sherpa bias; it needs no trained bias branch, so it also reaches words no training sentence held.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from speakerforge.asr.data import pad_features, read_asr_jsonl
from speakerforge.asr.decoding import Decoding
from speakerforge.asr.metrics import AsrScores, format_table
from speakerforge.asr.model import ModelArgs, SeacoParaformer, read_asr_model_file
from speakerforge.asr.vocab import Vocab, vocab_from_meta
from speakerforge.data.audio import load_audio
from speakerforge.data.features import fbank, mean_normalize
from speakerforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class AsrModel:
    """A trained model file (`EXP/model.safetensors`) ready to decode."""

    def __init__(self, model: SeacoParaformer, vocab: Vocab, features: dict):
        self.model = model.eval()
        self.vocab = vocab
        self.features = features

    @classmethod
    def load(cls, path: str | Path) -> AsrModel:
        state, meta, _ = read_asr_model_file(path)
        vocab = vocab_from_meta(meta)
        model = SeacoParaformer(len(vocab), ModelArgs(**meta["args"]), sos_id=vocab.sos_id, blank_id=vocab.blank_id)
        model.load_state_dict(state)
        return cls(model, vocab, meta["features"])

    def feats(self, wav: torch.Tensor) -> torch.Tensor:
        f = self.features
        x = fbank(wav, num_mel_bins=f["num_mel_bins"], frame_length=f["frame_length"], frame_shift=f["frame_shift"])
        return mean_normalize(x) if f["mean_norm"] else x

    def hotword_ids(self, hotwords: Sequence[str]) -> list[list[int]]:
        """Token ids of each hotword (entries that encode to nothing dropped)."""
        return [ids for ids in (self.vocab.encode(w) for w in hotwords) if ids]

    def hotword_tensors(self, hotwords: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Token ids `[H + 1, L]` and lengths of the list plus the no-bias entry; None for an empty list."""
        entries = self.hotword_ids(hotwords)
        if not entries:
            return None
        entries.append([self.vocab.sos_id])
        lengths = torch.tensor([len(e) for e in entries])
        hot = torch.zeros(len(entries), int(lengths.max()), dtype=torch.long)
        for i, e in enumerate(entries):
            hot[i, : len(e)] = torch.tensor(e)
        return hot, lengths

    def transcribe(
        self,
        wavs: Sequence[torch.Tensor],
        hotwords: Sequence[str] = (),
        batch_size: int = 8,
        decoding: Decoding | None = None,
    ) -> list[str]:
        """Texts of 16 kHz waveforms, biased towards `hotwords`."""
        from speakerforge.asr.context import ContextGraph, ctc_beam_search

        dec = decoding or Decoding()
        hw = self.hotword_tensors(hotwords) if dec.mode == "seaco" else None
        graph = None
        if dec.mode == "ctc" and hotwords:
            graph = ContextGraph(self.hotword_ids(hotwords), dec.context_score, self.vocab.ends_word)
        out: list[str] = []
        for i in range(0, len(wavs), batch_size):
            feats, lengths = pad_features([self.feats(w) for w in wavs[i : i + batch_size]])
            if dec.mode == "ctc":
                logp, frames = self.model.ctc_log_probs(feats, lengths)
                ids = [
                    ctc_beam_search(logp[j, : int(frames[j])], self.vocab.blank_id, dec.beam, dec.top_k, graph)
                    for j in range(len(frames))
                ]
            else:
                ids = self.model.recognize(feats, lengths, *(hw if hw is not None else (None, None)))
            out.extend(self.vocab.decode(x) for x in ids)
        return out


def decode(
    model_path: str | Path,
    data: Sequence[str | Path],
    hotwords: str | None = None,
    decoding: Decoding | None = None,
) -> list[tuple[str, str]]:
    """(key, text) of every utterance of `data` (`read_decode_inputs`), decoded by `model_path`: an `asr train`
    experiment or model file, or a FunASR model directory (`config.yaml` + `model.pt`; SeACo- or
    Contextual-Paraformer, decoded as FunASR, one utterance at a time). `hotwords`: a file (one per line) or, for a
    FunASR directory, also a string of space-separated hotwords, as FunASR takes them."""
    from speakerforge.asr.data import read_decode_inputs
    from speakerforge.asr.funasr_dir import load_funasr, read_hotword_list

    utts = read_decode_inputs(list(data))
    wavs = [torch.from_numpy(load_audio(u.path, u.start, u.end)) for u in utts]
    fm = load_funasr(model_path)
    if fm is not None:
        texts = fm.transcribe(wavs, read_hotword_list(hotwords) if hotwords else [], decoding)
    else:
        asr = AsrModel.load(model_path)
        texts = asr.transcribe(wavs, read_hotwords(hotwords) if hotwords else [], decoding=decoding)
    return [(u.key, t) for u, t in zip(utts, texts)]


def read_hotwords(path: str | Path) -> list[str]:
    """One hotword per line; blank lines and duplicates dropped (order kept)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: hotword list not found")
    return list(dict.fromkeys(line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()))


def evaluate(
    model_path: str | Path,
    data: str | Path,
    hotwords: str | Path,
    distractors: Sequence[str | Path] = (),
    decoding: Decoding | None = None,
) -> tuple[dict[str, dict[str, float]], str]:
    """Scores with no list, the true hotwords, and the true hotwords plus each distractor list; (rows, table).
    Every row uses the same decoding, so the list is the only difference."""
    from speakerforge.asr.funasr_dir import load_funasr

    fm = load_funasr(model_path)
    asr = AsrModel.load(model_path) if fm is None else None
    utts = read_asr_jsonl(data)
    true = read_hotwords(hotwords)
    wavs = [torch.from_numpy(load_audio(u.path, u.start, u.end)) for u in utts]
    conditions: dict[str, list[str]] = {"no hotwords": [], "true hotwords": true}
    for d in distractors:
        extra = [w for w in read_hotwords(d) if w not in true]
        conditions[f"true + {len(extra)} distractors"] = true + extra
    rows = {}
    for name, biasing in conditions.items():
        if fm is not None:
            hyps = fm.transcribe(wavs, biasing, decoding)
        else:
            assert asr is not None
            hyps = asr.transcribe(wavs, biasing, decoding=decoding)
        s = AsrScores()
        for u, h in zip(utts, hyps):
            s.add(u.text, h, true)  # recall/precision and B-WER always against the true hotwords
        rows[name] = s.result()
        log.info("%s: %s", name, rows[name])
    return rows, format_table(rows) + "\n" + biasing_summary(rows) + "\n" + (decoding or Decoding()).describe()


def biasing_summary(rows: dict[str, dict[str, float]]) -> str:
    """Each biased condition against the unbiased one: recall ratio and U-WER change (the issue's goal is
    ratio >= 2 and U-WER within +1 point)."""
    base = rows["no hotwords"]
    lines = []
    for name, r in rows.items():
        if name == "no hotwords":
            continue
        if base["recall"] > 0:
            ratio = f"{r['recall'] / base['recall']:.2f}x"
        else:  # no ratio to a zero recall; say whether the list found any hotword at all
            ratio = "no ratio: none found without a list" + ("" if r["recall"] > 0 else " or with it")
        lines.append(
            f"{name}: hotword recall {r['recall']:.1f}% vs {base['recall']:.1f}% without a list "
            f"({ratio}); U-WER {r['u_wer'] - base['u_wer']:+.2f} points"
        )
    return "\n".join(lines)
