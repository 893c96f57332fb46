"""speakerforge: train, fine-tune, self-supervise, evaluate and deploy speaker-embedding models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(path: str, **kwargs: Any) -> Any:
    """Load a speaker model (experiment folder, checkpoint, model file or ONNX file) for inference.

    Imported lazily so that `import speakerforge` stays cheap for the data tools.
    """
    from speakerforge.inference import load_model as _load

    return _load(path, **kwargs)
