"""Test-only oracle: 3D-Speaker's `speakerlab` reference models, imported on demand.

speakerlab is not a dependency of speakerforge. Parity tests call `import_speakerlab("models.campplus.DTDNN")`; when
the package (or a dependency of that module) is missing, the test is skipped with a reason that says how to get it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import torch
import torch.nn as nn

INSTALL_HINT = "pip install speakerlab==0.0.6 --no-deps"


def import_speakerlab(modpath: str) -> ModuleType:
    """Import `speakerlab.<modpath>` (a leading `speakerlab.` is optional), or skip the calling test."""
    full = modpath if modpath.split(".")[0] == "speakerlab" else f"speakerlab.{modpath}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if missing == "speakerlab" or missing.startswith("speakerlab."):
            pytest.skip(f"reference oracle {full} unavailable: speakerlab is not installed ({INSTALL_HINT})")
        pytest.skip(f"reference oracle {full} unavailable: it needs {missing!r}, which is not installed")


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics (and affine parameters), so that parity and BN-folding
    tests exercise them: fresh BNs (mean 0, var 1, weight 1, bias 0) are almost the identity in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def n_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
