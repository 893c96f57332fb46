"""Tiny ASR data and configs for the tests (no TTS: tones whose pitch follows the characters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speakerforge.asr.data import write_asr_jsonl
from speakerforge.config import Config, check_values, from_dict
from speakerforge.data.audio import save_audio

TINY_MODEL = {
    "d_model": 16,
    "heads": 2,
    "ffn_dim": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "seaco_layers": 1,
    "dropout": 0.0,
    "num_mel_bins": 20,
}


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


def tiny_config(data: Path, stages: list[dict] | None = None, asr: dict | None = None, **train) -> Config:
    raw = {
        "model": {"name": "seaco_paraformer", "args": dict(TINY_MODEL)},
        "features": {"num_mel_bins": 20},
        "data": {"sources": [{"path": str(data)}], "batch_size": 2},
        "optim": {"optimizer": "adamw", "lr": 3e-3, "min_lr": 3e-3, "weight_decay": 0.0},
        "train": {"epochs": 1, "device": "cpu", "threads": 1, "log_every": 1, **train},
        "stages": stages or [],
        "asr": asr or {},
    }
    cfg = from_dict(Config, raw)
    check_values(cfg)
    return cfg
