"""The one place where files holding tensors are written and read.

Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder), so a crash or a full disk never
leaves a half-written file under the final name. Reads never unpickle arbitrary objects: safetensors, or
`torch.load(weights_only=True)` behind a SHA-256 check, so a planted pickle is refused and a truncated or bit-flipped
file is detected before it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from speakerforge.atomic import atomic_write_bytes
from speakerforge.errors import CheckpointError

MAGIC = b"SPKFORGE-CKPT-1\n"
_DIGEST_LEN = 64  # hex sha256


# --------------------------------------------------------------------------------------------------------------
# Training state: torch.save payload (tensors, numbers, strings, lists, dicts) behind a magic line and a checksum.
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically with an embedded SHA-256 of the payload."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by `save_state`: checksum verified, then `torch.load(weights_only=True)`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = p.read_bytes()
    header_len = len(MAGIC) + _DIGEST_LEN + 1
    if not data.startswith(MAGIC) or len(data) < header_len:
        raise CheckpointError(f"{path}: not a speakerforge checkpoint (bad header)")
    digest = data[len(MAGIC) : len(MAGIC) + _DIGEST_LEN].decode("ascii", "replace")
    payload = data[header_len:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted file)")
    return safe_torch_load(io.BytesIO(payload), map_location=map_location, name=str(path))


def safe_torch_load(src: Any, map_location: str | torch.device = "cpu", name: str | None = None) -> Any:
    """`torch.load` that refuses anything but tensors and plain containers (no code runs on load)."""
    label = name or str(src)
    if isinstance(src, (str, Path)):
        if Path(src).is_dir():
            raise CheckpointError(f"{label}: is a directory; expected a checkpoint file")
        if not Path(src).exists():
            raise CheckpointError(f"{label}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning would be noise before the refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(src, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{label}: refused to load: the file holds Python objects other than tensors and plain containers "
            f"(loading it could run code{_blocked_object(exc)}). Re-save it as a state_dict or safetensors."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{label}: cannot read checkpoint ({_first_line(exc)})") from None


def _blocked_object(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused (e.g. `posix.system`), without its advice to turn the check off."""
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"; it names {m.group(1)}" if m else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------------
# Model files: safetensors weights + JSON description in the safetensors metadata (one self-describing file).
META_KEY = "speakerforge"


def save_model_file(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write weights as safetensors with `meta` (model name, args, features, ...) as JSON in the header."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    data = save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model file written by `save_model_file`: (state_dict, meta)."""
    from safetensors import safe_open
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: model file not found")
    data = p.read_bytes()
    try:
        tensors = load(data)
        with safe_open(str(p), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises SafetensorError / ValueError on corrupt headers
        raise CheckpointError(f"{path}: not a valid safetensors model file ({_first_line(exc)})") from None
    if meta_raw is None:
        raise CheckpointError(
            f"{path}: safetensors file without speakerforge metadata; convert it first with `speakerforge convert`"
        )
    try:
        meta = json.loads(meta_raw)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt speakerforge metadata") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt speakerforge metadata (a {type(meta).__name__}, not a mapping)")
    return tensors, meta
