"""Speaker models: one registry, one file per family. Never imports `speakerforge.train`."""

from speakerforge.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
