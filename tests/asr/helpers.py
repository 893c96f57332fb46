"""Tiny ASR data and configs for the tests (no TTS: tones whose pitch follows the characters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from speakerforge.asr.data import write_asr_jsonl
from speakerforge.config import Config, check_values, from_dict
from speakerforge.data.audio import save_audio

REPO = Path(__file__).resolve().parents[2]
SMALL = {  # CI sizes of the shipped small configs' structure
    "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 24, "num_blocks": 2},
    "decoder_conf": {"attention_heads": 2, "linear_units": 24},
    "seaco_decoder_conf": {"attention_heads": 2, "linear_units": 24},
    "predictor_conf": {"idim": 16},
    "frontend_conf": {"n_mels": 20},
    "model_conf": {"inner_dim": 16},
}


def tiny_funasr_args(name: str = "seaco") -> dict:
    """`model.args` of `configs/asr-funasr-small-{name}.yaml` at CI sizes (16 wide, 2 encoder blocks, 20 mels)."""
    raw = yaml.safe_load((REPO / "configs" / f"asr-funasr-small-{name}.yaml").read_text(encoding="utf-8"))
    args = raw["model"]["args"]
    for section, values in SMALL.items():
        if section in args:
            args[section].update(values)
    return args


def tone_utterance(text: str, sr: int = 16000, char_seconds: float = 0.08) -> np.ndarray:
    """One tone per character (pitch from the character), so the audio does carry the text."""
    parts = []
    for c in text:
        f = 0.0 if c == " " else 200.0 + 40.0 * (ord(c) - ord("a"))
        t = np.arange(int(sr * char_seconds)) / sr
        parts.append(0.3 * np.sin(2 * np.pi * f * t))
    return np.concatenate(parts).astype(np.float32)


def write_tone_corpus(folder: Path, texts: list[str], name: str = "train.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(texts):
        path = folder / f"u{i}.wav"
        save_audio(path, tone_utterance(text))
        rows.append({"key": f"u{i}", "source": str(path), "target": text})
    write_asr_jsonl(rows, folder / name)
    return folder / name


def tiny_config(
    data: Path, stages: list[dict] | None = None, asr: dict | None = None, model: str = "seaco", **train
) -> Config:
    """A new tiny FunASR model (`tiny_funasr_args`) on `data`, 12 BPE pieces, 1 epoch unless `train` says."""
    raw = {
        "model": {"name": "funasr", "args": tiny_funasr_args(model)},
        "data": {"sources": [{"path": str(data)}], "batch_size": 2},
        "optim": {"optimizer": "adamw", "lr": 3e-3, "min_lr": 3e-3, "weight_decay": 0.0},
        "train": {"epochs": 1, "device": "cpu", "threads": 1, "log_every": 1, **train},
        "stages": stages or [],
        "asr": {"bpe_size": 12, **(asr or {})},
    }
    cfg = from_dict(Config, raw)
    check_values(cfg)
    return cfg
