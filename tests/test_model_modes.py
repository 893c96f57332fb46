"""Inference shortcuts must not leak into training in the same process (caches built under inference_mode)."""

from __future__ import annotations

import pytest
import torch

from speakerforge.models import build_model

TINY = {
    "campplus": dict(embedding_dim=32, growth_rate=8, init_channels=16, block_layers=(2, 2, 2), m_channels=8),
    "ecapa_tdnn": dict(channels=16, embedding_dim=16),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_after_inference_mode_in_the_same_process(name):
    m = build_model(name, **TINY[name]).eval()
    with torch.inference_mode():
        m(torch.randn(1, 150, 80))
    m.train()
    m(torch.randn(2, 150, 80)).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
