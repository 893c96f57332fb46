"""Inference backends: a batch of equal-length 16 kHz waveforms `[B, T]` -> embeddings `[B, D]`, over a torch
network or an ONNX Runtime session, with the model's fbank computed as in training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from speakerforge.data.features import FeatureSpec

FEATURE_DEFAULTS: dict[str, Any] = FeatureSpec().to_meta()


def feature_settings(features: dict[str, Any] | None) -> dict[str, Any]:
    """The four feature settings inference needs, defaults filled in (training-only keys such as dither dropped)."""
    return FeatureSpec.from_meta(features).to_meta()


class TorchBackend:
    def __init__(self, model: nn.Module, features: dict[str, Any], device: torch.device):
        self.model = model
        self.features = features
        self.spec = FeatureSpec.from_meta(features)  # once, not per batch
        self.device = device

    @torch.inference_mode()
    def __call__(self, waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        return self.model(self.spec(x)).float().cpu().numpy()


class OnnxBackend:
    def __init__(self, session: Any, features: dict[str, Any], with_fbank: bool):
        self.session = session
        self.features = features
        self.spec = FeatureSpec.from_meta(features)  # once, not per batch
        self.with_fbank = with_fbank
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, waves: np.ndarray, quiet: bool = False) -> np.ndarray:
        """`quiet`: an expected failure (probing input lengths) raises without ONNX Runtime's own error log."""
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        inp = waves if self.with_fbank else self.spec(torch.from_numpy(waves)).numpy()
        run_options = None
        if quiet:
            import onnxruntime as ort

            run_options = ort.RunOptions()
            run_options.log_severity_level = 4  # fatal only
        return self.session.run([self.output_name], {self.input_name: inp}, run_options)[0].astype(
            np.float32, copy=False
        )
