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


class TrainingError(SpeakerforgeError):
    """Training cannot go on (the loss stayed non-finite, a trainable tensor does not train); the last good
    checkpoint is kept."""


def check_output_path(path: object) -> None:
    """An output file path must not name a folder: refuse before the work, not at the final rename."""
    import errno
    import os

    if os.path.isdir(str(path)):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    # The folder it goes in (or the nearest part of its path that exists) must take a new file: a read-only folder
    # is found before the work, and named, rather than at the end through a temporary file's name.
    folder = os.path.dirname(os.path.abspath(str(path)))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder)


def where(path: object, line: int | None = None) -> str:
    """Format a `file:line` prefix the way compilers do, so editors can jump to it."""
    return f"{path}:{line}" if line is not None else f"{path}"


# What an OSError means for a path the user gave, in words they can act on (errno -> explanation).
_OS_REASONS = {
    "EEXIST": "exists and is not a folder, so nothing can be written under it",
    "ENOTDIR": "a part of this path is a file, not a folder",
    "EISDIR": "is a folder; give a file path",
    "EACCES": "permission denied",
    "EPERM": "permission denied",
    "EROFS": "read-only file system",
    "ENOSPC": "no space left on the device",
    "EDQUOT": "disk quota exceeded",
    "ENOENT": "not found",
    "ENAMETOOLONG": "file name too long",
}


def describe_os_error(exc: OSError) -> str:
    """`path: reason` for an OSError about a file (the CLI prints it as its one error line)."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    reason = _OS_REASONS.get(name) or exc.strerror or type(exc).__name__
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{target}: {reason}"
