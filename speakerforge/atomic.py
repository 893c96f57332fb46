"""Atomic file writes: the one implementation every writer uses (checkpoints, manifests, embeddings, plots, logs).

A file appears complete or not at all: the data goes to a temporary file beside the target, is flushed to disk, and
is renamed over the target; on any error the temporary file is removed and an existing target is untouched. Torch-
free, so that light readers and writers (scoring, manifests) do not import it.

A process killed by SIGKILL (or a power cut) cannot remove its temporary file; the name says which process wrote it
(`.NAME.PID@HOST.RANDOM.tmp`), and the next write into the same folder removes those of processes of this host that
no longer run (`sweep_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from speakerforge.errors import check_output_path


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name; on success it replaces `path`.

    `durable=False` is for builders writing thousands of files into one folder (corpus audio): still all-or-nothing
    by rename, but without the disk syncs and the per-write sweep (the builder sweeps once)."""
    final = Path(path)
    check_output_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        sweep_stale_temps(final.parent)
    while True:  # like mkstemp, but created with the user's umask rather than mode 0600
        tmp = final.parent / f".{final.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:  # data on disk before the rename makes the file visible
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # A write through a file object (disk full, quota) names no file: name the one being written.
        raise OSError(exc.errno or errno.EIO, exc.strerror or str(exc), str(final)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_dir(final.parent)


_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:16] or "host"
_TEMP = re.compile(r"^\..+\.(\d+)(?:@([A-Za-z0-9-]*))?\.[0-9a-f]{8}\.tmp$")


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files of `atomic_path` in `folder` whose writer (a process of this host) is gone."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m is None or (m.group(2) is not None and m.group(2) != _HOST) or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(Path(folder) / name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it becomes `path` only if the block finishes without an exception."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Run `write(fileobj)` on a temporary file, then put it in place of `path`."""
    with atomic_open(path, mode) as fh:
        write(fh)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


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
