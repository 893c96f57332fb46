"""Atomic file writes: the one implementation every writer uses (checkpoints, manifests, embeddings, plots, logs).

A file appears complete or not at all: the data goes to a temporary file beside the target, is flushed to disk, and
is renamed over the target; on any error the temporary file is removed and an existing target is untouched. Torch-
free, so that light readers and writers (scoring, manifests) do not import it.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from speakerforge.errors import check_output_path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name; on success it replaces `path`."""
    final = Path(path)
    check_output_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:  # like mkstemp, but created with the user's umask rather than mode 0600
        tmp = final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # data on disk before the rename makes the file visible
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[io.IOBase]:
    """Open a temporary file for writing; it becomes `path` only if the block finishes without an exception."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Run `write(fileobj)` on a temporary file, then put it in place of `path`."""
    with atomic_open(path, mode) as fh:
        write(fh)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def _fsync_dir(folder: Path) -> None:
    """The rename itself on disk (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
