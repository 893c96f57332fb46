"""Exceptions that carry a message a user can act on; the CLI prints them as one line."""

from __future__ import annotations


class SpeakerforgeError(Exception):
    """Base class: an error caused by the user's input, not by a bug."""


class DataError(SpeakerforgeError):
    """Unreadable, malformed or unsupported audio or manifest."""


class ConfigError(SpeakerforgeError):
    """Unknown key, wrong type, or inconsistent configuration."""


class CheckpointError(SpeakerforgeError):
    """A checkpoint or model file that is missing, corrupt, unsafe or does not fit the model."""


def where(path: object, line: int | None = None) -> str:
    """Format a `file:line` prefix the way compilers do, so editors can jump to it."""
    return f"{path}:{line}" if line is not None else f"{path}"
