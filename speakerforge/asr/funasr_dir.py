"""A FunASR model directory (`config.yaml`, `model.pt`, `tokens.json`, `am.mvn`, optional `seg_dict`): read it into
`speakerforge.asr.paraformer` modules, decode with it, and write one.

- `model.pt` is read weights-only by `checkpoint_io.safe_torch_load` (a state dict, or one under `state_dict` /
  `model`) and loaded strictly: every missing, unexpected or mis-shaped key is listed;
- hotwords are tokenised as FunASR's `generate_hotwords_list`: each entry split on spaces; with a `seg_dict` each word
  is looked up lower-cased (English words give their BPE pieces), else a word of Chinese characters or digits is
  looked up character by character, anything else is `<unk>`; without a `seg_dict` each word is one token. The list
  is a file (one hotword per line, FunASR's hotword file) or a string of space-separated hotwords;
- decoded ids become text as FunASR's tokenizer does for these releases: CJK characters joined, other tokens spaced,
  BPE pieces ending in `@@` joined to the next one.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from speakerforge.asr.decoding import Decoding
from speakerforge.asr.funasr_frontend import WavFrontend, read_am_mvn, write_am_mvn
from speakerforge.asr.paraformer import ContextualParaformer, SeacoParaformer, load_funasr_state
from speakerforge.asr.vocab import PieceSplitter
from speakerforge.checkpoint_io import safe_torch_load
from speakerforge.errors import CheckpointError, ConfigError, DataError

FILES = ("config.yaml", "model.pt", "tokens.json", "am.mvn")
MODELS: dict[str, type[SeacoParaformer] | type[ContextualParaformer]] = {
    "SeacoParaformer": SeacoParaformer,
    "ContextualParaformer": ContextualParaformer,
}
_CJK_OR_DIGITS = re.compile(r"^[\u4E00-\u9FA50-9]+$")


def is_funasr_dir(path: str | Path) -> bool:
    """A folder holding FunASR's `config.yaml` and `model.pt`."""
    p = Path(path)
    return p.is_dir() and (p / "config.yaml").is_file() and (p / "model.pt").is_file()


def read_seg_dict(path: str | Path) -> dict[str, str]:
    """FunASR's `seg_dict`: `word piece piece ...` per line -> {word: "piece piece ..."}."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            out[parts[0]] = " ".join(parts[1:])
    return out


class FunasrTokens:
    """`tokens.json` (+ `seg_dict`): ids <-> tokens, hotword tokenisation and text as FunASR's CharTokenizer."""

    def __init__(
        self,
        tokens: list[str],
        seg_dict: dict[str, str] | None = None,
        unk: str = "<unk>",
        splitter: PieceSplitter | None = None,
    ):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise DataError("tokens.json lists a token twice")
        if unk not in self.index:
            raise DataError(f"tokens.json has no {unk!r} token")
        self.unk_id = self.index[unk]
        self.seg_dict = seg_dict
        self.splitter = splitter  # words outside seg_dict (`funasr_new.PieceSplitter`; FunASR: <unk>)

    def __len__(self) -> int:
        return len(self.tokens)

    def split_word(self, word: str) -> list[str]:
        """Token strings of one word (see the module docstring)."""
        if self.seg_dict is None:
            return [word]
        w = word.lower()
        if w in self.seg_dict:
            return self.seg_dict[w].split()
        if _CJK_OR_DIGITS.match(w):
            return [p for c in w for p in (self.seg_dict[c].split() if c in self.seg_dict else ["<unk>"])]
        return self.splitter(w) if self.splitter is not None else ["<unk>"]

    def encode(self, text: str) -> list[int]:
        """A transcript's ids as FunASR's CharTokenizer makes them: with a `seg_dict` each space-separated word
        through it (`split_word`), else every character but spaces."""
        if self.seg_dict is None:
            return [self.index.get(c, self.unk_id) for c in text if not c.isspace()]
        return [self.index.get(t, self.unk_id) for w in text.split() for t in self.split_word(w)]

    def word_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """`[start, end)` of each word: a token ending in `@@` joins the next one; any other token ends a word."""
        spans, start = [], 0
        for i, t in enumerate(ids):
            if not self.tokens[t].endswith("@@"):
                spans.append((start, i + 1))
                start = i + 1
        if start < len(ids):
            spans.append((start, len(ids)))
        return spans

    def encode_hotword(self, hotword: str) -> list[int]:
        return [self.index.get(t, self.unk_id) for w in hotword.split() for t in self.split_word(w)]

    def to_text(self, ids: Sequence[int]) -> str:
        out = ""
        prev_joins = True
        for i in ids:
            t = self.tokens[i]
            joins_next = t.endswith("@@")
            t = t[:-2] if joins_next else t
            cjk = bool(re.match(r"^[\u3400-\u9FFF]+$", t))
            if out and not prev_joins and not cjk and not out[-1:].isspace():
                out += " "
            elif out and cjk and not prev_joins and re.match(r"[A-Za-z0-9']$", out[-1:]):
                out += " "
            out += t
            prev_joins = joins_next or cjk
        return out.strip()


def read_hotword_list(spec: str | Path, file_only: bool = False) -> list[str]:
    """FunASR's hotword input: a file path (one hotword per line, blank lines dropped) or, unless `file_only`, a
    string of space-separated hotwords. Duplicates are kept, as FunASR keeps them (each is a row of the bias list)."""
    p = Path(spec)
    if p.is_file():
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if file_only or str(spec).endswith(".txt"):
        raise DataError(f"{spec}: hotword list not found")
    return str(spec).split()


def read_tokens(folder: str | Path) -> list[str]:
    """A FunASR directory's token list: `tokens.json` (a JSON list), or `tokens.txt` (one token per line, as older
    releases ship it)."""
    p = Path(folder)
    if (p / "tokens.json").is_file():
        tokens = json.loads((p / "tokens.json").read_text(encoding="utf-8"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{p / 'tokens.json'}: not a JSON list of token strings")
        return tokens
    return [line.strip() for line in (p / "tokens.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def read_model_pt(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a FunASR `model.pt` (weights only; a dict under `state_dict` or `model` is unwrapped)."""
    obj = safe_torch_load(path, name=str(path))  # refuses a pickle with code, names what it is otherwise
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


@dataclass
class FunasrModel:
    """A FunASR model directory in memory."""

    config: dict[str, Any]
    model: SeacoParaformer | ContextualParaformer
    frontend: WavFrontend
    tokens: FunasrTokens
    cmvn: Tensor | None

    @classmethod
    def load(cls, path: str | Path) -> FunasrModel:
        p = Path(path)
        missing = [f for f in ("config.yaml", "model.pt") if not (p / f).is_file()]
        if not (p / "tokens.json").is_file() and not (p / "tokens.txt").is_file():
            missing.append("tokens.json")
        if missing:
            raise CheckpointError(f"{p}: not a FunASR model directory (missing {', '.join(missing)})")
        config = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8")) or {}
        tokens = read_tokens(p)
        seg = read_seg_dict(p / "seg_dict") if (p / "seg_dict").is_file() else None
        bpe = (p / "bpe.model").read_bytes() if (p / "bpe.model").is_file() and seg is not None else None
        cmvn = read_am_mvn(p / "am.mvn") if (p / "am.mvn").is_file() else None
        return cls.build(config, tokens, cmvn, seg, read_model_pt(p / "model.pt"), str(p / "model.pt"), bpe)

    @classmethod
    def build(
        cls,
        config: dict[str, Any],
        tokens: list[str],
        cmvn: Tensor | None,
        seg_dict: dict[str, str] | None = None,
        state: dict[str, Tensor] | None = None,
        origin: str = "state",
        bpe_model: bytes | None = None,
    ) -> FunasrModel:
        """The network of `config` (FunASR's `config.yaml` dict) over `tokens`; `state` loaded strictly when given.
        `bpe_model`: a sentencepiece model that splits words outside `seg_dict` (`speakerforge.asr.funasr_new`)."""
        if config.get("frontend", "WavFrontend") != "WavFrontend":
            raise ConfigError(f"config.yaml frontend: {config.get('frontend')!r}; supported: WavFrontend")
        fconf = {k: v for k, v in (config.get("frontend_conf") or {}).items() if k != "cmvn_file"}
        frontend = WavFrontend(cmvn, **fconf).eval()
        name = config.get("model")
        if name not in MODELS:
            raise ConfigError(f"config.yaml model: {name!r}; supported: {', '.join(MODELS)}")
        model = MODELS[name](config, len(tokens), frontend.output_size()).eval()
        if state is not None:
            load_funasr_state(model, state, origin)
        unk = (config.get("tokenizer_conf") or {}).get("unk_symbol", "<unk>")
        splitter = PieceSplitter(bpe_model) if bpe_model is not None else None
        return cls(config, model, frontend, FunasrTokens(tokens, seg_dict, unk, splitter), cmvn)

    def to_meta(self) -> dict[str, Any]:
        """What a model file needs besides the weights to rebuild this model (`from_meta`)."""
        return {
            "config": self.config,
            "tokens": self.tokens.tokens,
            "seg_dict": self.tokens.seg_dict,
            "cmvn": None if self.cmvn is None else self.cmvn.tolist(),
            **({"bpe_model": base64.b64encode(self.bpe_model).decode("ascii")} if self.bpe_model else {}),
        }

    @property
    def bpe_model(self) -> bytes | None:
        return self.tokens.splitter.model_proto if self.tokens.splitter is not None else None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], state: dict[str, Tensor], origin: str) -> FunasrModel:
        cmvn = None if meta.get("cmvn") is None else torch.tensor(meta["cmvn"], dtype=torch.float32)
        bpe = base64.b64decode(meta["bpe_model"]) if meta.get("bpe_model") else None
        return cls.build(meta["config"], meta["tokens"], cmvn, meta.get("seg_dict"), state, origin, bpe)

    def hotword_ids(self, hotwords: Sequence[str]) -> list[list[int]] | None:
        """FunASR's list: each hotword's ids, then `[sos]`; None for no hotwords."""
        if not hotwords:
            return None
        return [*(self.tokens.encode_hotword(h) for h in hotwords), [self.model.sos]]

    @torch.no_grad()
    def decode_ids(
        self, wavs: Sequence[Tensor], hotwords: Sequence[str] = (), decoding: Decoding | None = None
    ) -> list[list[int]]:
        """Token ids of 16 kHz waveforms (one at a time, as FunASR decodes), biased towards `hotwords`: FunASR's
        decoding (`seaco`, also for a ContextualParaformer), or CTC prefix beam search with the list as a context
        graph (`ctc`, a model with a `ctc` head)."""
        dec = decoding or Decoding()
        if dec.mode == "ctc":
            return self._ctc_decode_ids(wavs, hotwords, dec)
        hw = self.hotword_ids(hotwords)
        out = []
        for w in wavs:
            feats, lengths = self.frontend([w])
            out.extend(self.model.recognize(feats, lengths, hw))
        return out

    def _ctc_decode_ids(self, wavs: Sequence[Tensor], hotwords: Sequence[str], dec: Decoding) -> list[list[int]]:
        from speakerforge.asr.context import ContextGraph, ctc_beam_search

        if self.model.ctc is None:
            raise ConfigError(
                f"--decoding ctc: this {self.config.get('model')} has no ctc head (model_conf.ctc_weight: 0)"
            )
        graph = None
        if hotwords:
            # a hotword's last piece is word-final (no `@@`), so whatever follows a completed hotword starts a word
            ids = [self.tokens.encode_hotword(h) for h in hotwords]
            graph = ContextGraph([i for i in ids if i], dec.context_score, lambda _token: True)
        out = []
        for w in wavs:
            feats, lengths = self.frontend([w])
            enc, enc_len = self.model.encode(feats, lengths)
            logp = self.model.ctc(enc).log_softmax(-1)
            out.append(ctc_beam_search(logp[0, : int(enc_len[0])], self.model.blank_id, dec.beam, dec.top_k, graph))
        return out

    def transcribe(
        self, wavs: Sequence[Tensor], hotwords: Sequence[str] = (), decoding: Decoding | None = None
    ) -> list[str]:
        return [self.tokens.to_text(ids) for ids in self.decode_ids(wavs, hotwords, decoding)]

    def save(self, out: str | Path, extra_words: Sequence[str] = ()) -> Path:
        """Write this model as a FunASR directory (`config.yaml`, `model.pt`, `tokens.json`, `am.mvn`, `seg_dict`,
        and `bpe.model` for a model with learnt pieces). `extra_words` (e.g. the hotwords you will give FunASR) are
        added to `seg_dict` with their pieces, since FunASR maps a word outside it to `<unk>`."""
        seg = self.tokens.seg_dict
        if extra_words and seg is not None and self.tokens.splitter is not None:
            words = [w.lower() for h in extra_words for w in h.split()]
            seg = {**seg, **{w: " ".join(self.tokens.split_word(w)) for w in words if w not in seg}}
        return write_funasr_dir(
            out, self.config, self.model.state_dict(), self.tokens.tokens, self.cmvn, seg, self.bpe_model
        )


def read_asr_model_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """(weights, meta, file) of an `asr train` model file or of the experiment folder holding one."""
    from speakerforge.artifacts import resolve

    hint = "pass the model.safetensors of `speakerforge asr train`"
    res = resolve(path, kinds=("experiment", "model_file"), wanted="an ASR model file", hint=hint)
    p, meta = res.file, res.meta
    if res.task != "asr":
        raise CheckpointError(f"{p}: not an ASR model file (written by `speakerforge asr train`)")
    if meta.get("model") != "funasr":
        raise CheckpointError(
            f"{p}: a model of the small ASR architecture of earlier speakerforge releases, now retired; retrain it "
            "as FunASR's network (configs/asr-funasr-small-seaco.yaml)"
        )
    return res.weights, meta, p


def load_funasr(path: str | Path) -> FunasrModel:
    """The FunASR model at `path`: a FunASR directory, or an `asr train` experiment or model file."""
    if is_funasr_dir(path):
        return FunasrModel.load(path)
    state, meta, file = read_asr_model_file(path)
    return FunasrModel.from_meta(meta["funasr"], state, str(file))


def write_funasr_dir(
    out: str | Path,
    config: dict[str, Any],
    state: dict[str, Tensor],
    tokens: list[str],
    cmvn: Tensor | None,
    seg_dict: dict[str, str] | None = None,
    bpe_model: bytes | None = None,
) -> Path:
    """A FunASR model directory that FunASR's `AutoModel` and `FunasrModel.load` read."""
    from speakerforge.atomic import atomic_write_bytes, atomic_write_text

    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    # FunASR's WavFrontend dithers (1.0) whenever the key is absent, at decoding too; written as 0.0 here, so the
    # directory decodes deterministically in FunASR as in speakerforge (which dithers only in training)
    cfg["frontend_conf"] = {"dither": 0.0, **(cfg.get("frontend_conf") or {})}
    if cmvn is not None:
        write_am_mvn(o / "am.mvn", cmvn)
        cfg["frontend_conf"] = {**(cfg.get("frontend_conf") or {}), "cmvn_file": "am.mvn"}
    atomic_write_text(o / "config.yaml", yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    atomic_write_text(o / "tokens.json", json.dumps(tokens, ensure_ascii=False, indent=0) + "\n")
    if seg_dict is not None:
        atomic_write_text(o / "seg_dict", "".join(f"{k} {v}\n" for k, v in seg_dict.items()))
    if bpe_model is not None:  # read by speakerforge only (words outside seg_dict); FunASR ignores the file
        atomic_write_bytes(o / "bpe.model", bpe_model)
    import io

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    atomic_write_bytes(o / "model.pt", buf.getvalue())
    return o
