"""What is at a model path: recognised by content, never by extension.

A user may name a model file `cam.sf` or a checkpoint `best.bin`; every command that reads a model path asks `sniff`
first, so `convert`'s output is accepted whatever it is called, and a file that cannot be used is named for what it
really is ("a PyTorch checkpoint (zip)", "an ONNX model", "a WAV audio file") instead of "not a checkpoint".

Kinds: `experiment` (a folder), `checkpoint` (our training state), `model_file` (safetensors with our metadata),
`safetensors` (without it), `onnx`, `torch_zip` (torch.save since 1.6), `torch_pickle` (legacy torch.save / pickle),
`audio`, `text`, `empty`, `unknown`.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speakerforge.checkpoint_io import MAGIC, META_KEY, load_model_file, load_state
from speakerforge.errors import CheckpointError

log = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")

_DESCRIPTIONS = {
    "experiment": "an experiment folder",
    "checkpoint": "a speakerforge training checkpoint",
    "model_file": "a speakerforge model file (safetensors)",
    "safetensors": "a safetensors file without speakerforge metadata",
    "onnx": "an ONNX model",
    "torch_zip": "a PyTorch checkpoint (torch.save zip archive)",
    "torch_pickle": "a PyTorch checkpoint or pickle (legacy format)",
    "audio": "an audio file",
    "text": "a text file",
    "empty": "an empty file",
    "unknown": "a file of unknown format",
}
_AUDIO_MAGIC = ((b"RIFF", "WAV"), (b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"FORM", "AIFF"))
# What a file's extension promises, to say so when its content does not match.
_NAMED_AS = {
    ".onnx": "an ONNX model",
    ".safetensors": "a safetensors file",
    ".pt": "a PyTorch checkpoint",
    ".pth": "a PyTorch checkpoint",
    ".ckpt": "a PyTorch checkpoint",
    ".bin": "a PyTorch checkpoint",
}
# ONNX ModelProto fields that may follow `ir_version` (field 1): producer_name, producer_version, domain,
# model_version, doc_string, graph, opset_import, metadata_props, training_info, functions.
_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82}


@dataclass(frozen=True)
class Artifact:
    """A path and what it holds."""

    path: Path
    kind: str
    detail: str = ""  # e.g. the audio container, or why a safetensors header is unreadable

    def describe(self) -> str:
        """Human wording, e.g. `a PyTorch checkpoint (torch.save zip archive)`."""
        text = _DESCRIPTIONS[self.kind]
        return f"{text} ({self.detail})" if self.detail else text


def sniff(path: str | Path) -> Artifact:
    """Recognise a model path by its content (see the module docstring); a missing path is a CheckpointError."""
    p = Path(path)
    if p.is_dir():
        return Artifact(p, "experiment")
    if not p.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        with p.open("rb") as fh:
            head = fh.read(64)
            size = p.stat().st_size
            if _is_safetensors(head, size):
                fh.seek(8)
                header = fh.read(struct.unpack("<Q", head[:8])[0])
                return Artifact(p, "model_file" if _has_our_metadata(header) else "safetensors")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = _kind_of_head(head)
    detail = _audio_container(head)
    if kind in ("unknown", "text", "empty") and p.suffix.lower() in _NAMED_AS:
        detail = f"named {p.suffix} like {_NAMED_AS[p.suffix.lower()]}, but not one: truncated or corrupt?"
    return Artifact(p, kind, detail)


def _kind_of_head(head: bytes) -> str:
    if not head:
        return "empty"
    if head.startswith(MAGIC):
        return "checkpoint"
    if head.startswith(b"PK\x03\x04"):
        return "torch_zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch_pickle"
    if _is_onnx(head):
        return "onnx"
    if _audio_container(head):
        return "audio"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


def _is_safetensors(head: bytes, size: int) -> bool:
    """8-byte little-endian header length, then a JSON object that fits in the file."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _has_our_metadata(header: bytes) -> bool:
    try:
        meta = json.loads(header.decode("utf-8")).get("__metadata__") or {}
    except (UnicodeDecodeError, ValueError, AttributeError):
        return False
    return isinstance(meta, dict) and META_KEY in meta


def _is_onnx(head: bytes) -> bool:
    """ONNX is a protobuf whose first field is `ir_version` (tag 0x08, a small varint), then another model field."""
    return len(head) > 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_SECOND_TAGS


def _audio_container(head: bytes) -> str:
    for magic, name in _AUDIO_MAGIC:
        if head.startswith(magic):
            return name
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3"
    return ""


def expect(path: str | Path, kinds: tuple[str, ...], wanted: str, hint: str = "") -> Artifact:
    """`sniff`, then refuse (naming what the file really is) unless its kind is one of `kinds`."""
    art = sniff(path)
    if art.kind not in kinds:
        raise CheckpointError(f"{path}: {art.describe()}, not {wanted}" + (f"; {hint}" if hint else ""))
    return art


SSL_PARTS = ("teacher", "student")


def backbone_prefix(keys: Any, part: str | None, origin: str) -> str:
    """Where the embedding network's weights are in a training state with these `keys`; the one policy for a
    self-supervised run (DINO/SDPN: `teacher.backbone.*` and `student.backbone.*`): its embedding network is the
    teacher (what 3D-Speaker and WeSpeaker evaluate and release) unless `part` says `student`, and the log says
    which it took. `extract`, `verify`, `embed`, `export`, `load_model` and `finetune --init` all follow it."""
    parts = sorted({k.split(".backbone.")[0] for k in keys if ".backbone." in k and not k.startswith("backbone.")})
    if not parts:
        if part is not None:
            raise CheckpointError(f"{origin}: --init-part {part}: not a self-supervised run (one backbone)")
        return "backbone."
    chosen = part or "teacher"
    if chosen not in parts:
        raise CheckpointError(f"{origin}: no {chosen} backbone (this run has: {', '.join(parts)})")
    log.info("%s: a self-supervised run; using its %s backbone%s", origin, chosen, "" if part else " (the default)")
    return f"{chosen}.backbone."


def list_checkpoints(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoints/ckpt-<step>.pt` of an experiment folder, newest first."""
    folder = Path(exp_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found, reverse=True)


def describe(path: str | Path) -> dict[str, Any]:
    """What `speakerforge inspect` prints: a JSON-friendly summary of an experiment folder, checkpoint, model file or
    ONNX model; anything else is a CheckpointError naming what the file is."""
    art = expect(
        path, ("experiment", "onnx", "checkpoint", "model_file"), "a model", "inspect reads speakerforge files"
    )
    p = art.path
    if art.kind == "experiment":
        return _describe_experiment(p)
    if art.kind == "onnx":
        return _describe_onnx(p)
    if art.kind == "checkpoint":
        st = load_state(p)
        weights = st.get("model", {})
        return {
            "checkpoint": str(p),
            "meta": st.get("meta"),
            "progress": st.get("progress"),
            "optimizer_stage": st.get("optimizer_stage"),
            "model_values": sum(v.numel() for v in weights.values()),
            "shapes": _shapes(weights),
        }
    state, meta = load_model_file(p)
    meta = dict(meta)
    if "speakers" in meta:
        meta["speakers"] = f"{len(meta['speakers'])} names"
    meta.pop("config", None)
    meta["tensors"] = len(state)
    meta["values"] = sum(v.numel() for v in state.values())
    meta["shapes"] = _shapes(state)
    return meta


def _shapes(tensors: dict[str, Any]) -> dict[str, list[int]]:
    """Every tensor's name and shape, so that a freeze pattern or a key map can be written from what is there."""
    return {k: list(v.shape) for k, v in tensors.items() if hasattr(v, "shape")}


def _describe_experiment(p: Path) -> dict[str, Any]:
    if not any((p / name).exists() for name in ("run.json", "config.yaml", "checkpoints", "model.safetensors")):
        raise CheckpointError(
            f"{p}: not an experiment folder (no run.json, config.yaml, checkpoints/ or model.safetensors)"
        )
    info: dict[str, Any] = {"experiment": str(p)}
    for name in ("run.json", "checkpoints/index.json"):
        if (p / name).is_file():
            info[name] = json.loads((p / name).read_text())
    info["checkpoints"] = [c.name for _step, c in reversed(list_checkpoints(p))]
    info["model_file"] = (p / "model.safetensors").is_file()
    return info


def _describe_onnx(p: Path) -> dict[str, Any]:
    import onnx

    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: not a readable ONNX model ({first})") from None
    return {
        "onnx": str(p),
        "inputs": [i.name for i in m.graph.input],
        "metadata": {x.key: x.value for x in m.metadata_props},
    }
