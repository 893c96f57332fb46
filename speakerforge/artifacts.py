"""What is at a model path: recognised by content, never by extension.

A user may name a model file `cam.sf` or a checkpoint `best.bin`; every command that reads a model path asks `sniff`
first, so `convert`'s output is accepted whatever it is called, and a file that cannot be used is named for what it
really is ("a PyTorch checkpoint (zip)", "an ONNX model", "a WAV audio file") instead of "not a checkpoint".

Kinds: `experiment` (a folder), `checkpoint` (our training state), `model_file` (safetensors with our metadata),
`safetensors` (without it), `onnx`, `torch_zip` (torch.save since 1.6), `torch_pickle` (legacy torch.save / pickle),
`audio`, `text`, `empty`, `unknown`.

`resolve` then answers "which weights does this path mean?" once for every reader (`load_model`, `finetune --init`,
the ASR loader): an experiment folder means its model file, else its newest readable checkpoint; a self-supervised
run means its teacher unless the student is asked for; a checkpoint's network is described by its run's config.yaml.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speakerforge.checkpoint_io import MAGIC, META_KEY, load_model_file, load_state, safe_torch_load
from speakerforge.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")

_DESCRIPTIONS = {
    "experiment": "a directory",
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
BACKBONE = "backbone."


def backbone_prefix(keys: Any, part: str | None, origin: str) -> str:
    """Where the embedding network's weights are in a training state with these `keys`; the one policy for a
    self-supervised run (DINO/SDPN: `teacher.backbone.*` and `student.backbone.*`): its embedding network is the
    teacher (what 3D-Speaker and WeSpeaker evaluate and release) unless `part` says `student`, and the log says
    which it took. `extract`, `verify`, `embed`, `export`, `load_model` and `finetune --init` all follow it."""
    parts = sorted({k.split(".backbone.")[0] for k in keys if ".backbone." in k and not k.startswith(BACKBONE)})
    if not parts:
        if part is not None:
            raise CheckpointError(f"{origin}: --init-part {part}: not a self-supervised run (one backbone)")
        return BACKBONE
    chosen = part or "teacher"
    if chosen not in parts:
        raise CheckpointError(f"{origin}: no {chosen} backbone (this run has: {', '.join(parts)})")
    _say_part(origin, chosen, part is None)
    return f"{chosen}.backbone."


def _say_part(origin: str, chosen: str, default: bool) -> None:
    log.info("%s: a self-supervised run; using its %s backbone%s", origin, chosen, " (the default)" if default else "")


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


# ---------------------------------------------------------------------------------------------------- resolve
MODEL_KINDS = ("experiment", "checkpoint", "model_file", "onnx")
FOREIGN_KINDS = ("torch_zip", "torch_pickle")


@dataclass
class Resolved:
    """The weights a model path means, wherever they sit (see `resolve`)."""

    path: Path  # as asked
    file: Path  # the file read: a folder's model file or checkpoint, else `path`
    kind: str  # the kind of `file`: model_file, checkpoint, onnx, torch_zip or torch_pickle
    origin: str  # `file`, plus the backbone taken from a self-supervised run: what every message about it names
    weights: dict[str, Any] = field(default_factory=dict)  # the backbone's tensors (unprefixed); an ASR model's all
    meta: dict[str, Any] = field(default_factory=dict)  # a model file's metadata; for a checkpoint its run's config
    classifier: Any = None  # `classifier.weight`, when the source has one for this backbone
    part: str | None = None  # `teacher` or `student` for a self-supervised run
    raw: Any = None  # a foreign checkpoint: what it holds, as loaded
    config: Path | None = None  # a checkpoint: where its run's config.yaml is (or would be)

    @property
    def task(self) -> str:
        """`asr` for an `asr train` model, `speaker` otherwise."""
        return "asr" if self.meta.get("kind") == "asr" else "speaker"


def resolve(
    path: str | Path,
    part: str | None = None,
    kinds: tuple[str, ...] = MODEL_KINDS + FOREIGN_KINDS,
    wanted: str = "a model",
    hint: str = "",
) -> Resolved:
    """What a model path holds, read once for every command. `part` picks a self-supervised run's backbone
    (`teacher`, the default, or `student`); a path whose kind is not in `kinds` is refused naming what it is."""
    art = expect(path, kinds, wanted, hint)
    if art.kind == "experiment":
        return _resolve_experiment(art.path, part)
    if art.kind == "checkpoint":
        return _resolve_checkpoint(art.path, part, art.path.parent.parent / "config.yaml")
    if art.kind == "model_file":
        return _resolve_model_file(art.path, part)
    if part is not None:
        raise CheckpointError(f"{path}: --init-part {part}: {art.describe()} holds no self-supervised run")
    if art.kind == "onnx":
        return Resolved(art.path, art.path, "onnx", str(art.path))
    raw = safe_torch_load(str(art.path))
    return Resolved(art.path, art.path, art.kind, str(art.path), _state_dict_in(raw), raw=raw)


def _state_dict_in(obj: Any) -> dict[str, Any]:
    """The tensors of a foreign checkpoint, found where 3D-Speaker and WeSpeaker put them; empty when not a state
    dict (the reader that needs one says so)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "embedding_model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return dict(obj)
    return {}


def _resolve_experiment(folder: Path, part: str | None) -> Resolved:
    model_file = folder / "model.safetensors"
    command = _run_command(folder)
    if model_file.is_file() and not (command == "pretrain" and part not in (None, "teacher")):
        return _resolve_model_file(model_file, part)  # a pretrain run's model file holds its teacher
    if command == "asr-train":
        raise CheckpointError(f"{folder}: an `asr train` run without model.safetensors (not finished?)")
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(
            f"{folder}: no model here: expected an experiment folder with model.safetensors or "
            "checkpoints/ckpt-*.pt, a model file or an .onnx file"
        )
    reasons = []
    for _step, ckpt in found:
        try:
            return _resolve_checkpoint(ckpt, part, folder / "config.yaml")
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", ckpt, exc)
            reasons.append(str(exc))
    raise CheckpointError(f"{folder}: none of its {len(found)} checkpoints could be loaded (newest: {reasons[0]})")


def _run_command(folder: Path) -> str | None:
    try:
        return json.loads((folder / "run.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _resolve_checkpoint(file: Path, part: str | None, cfg_path: Path) -> Resolved:
    weights = load_state(file).get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{file}: checkpoint holds no model weights")
    prefix = backbone_prefix(weights, part, str(file))
    chosen = None if prefix == BACKBONE else prefix.split(".")[0]
    backbone = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not backbone:
        raise CheckpointError(f"{file}: no `{prefix}*` weights in this checkpoint")
    origin = f"{file} ({chosen} backbone)" if chosen else str(file)
    classifier = weights.get("classifier.weight") if chosen is None else None
    meta = _run_config(cfg_path)
    return Resolved(file, file, "checkpoint", origin, backbone, meta, classifier, chosen, config=cfg_path)


def _run_config(cfg_path: Path) -> dict[str, Any]:
    """A checkpoint's model and features, from its run's config.yaml; empty when there is none (a reader that must
    build the network says so)."""
    if not cfg_path.is_file():
        return {}
    from speakerforge.config import bounded_yaml

    try:
        cfg = bounded_yaml(cfg_path.read_text(), str(cfg_path)) or {}
    except ConfigError as exc:
        raise CheckpointError(f"unreadable config: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "name" not in cfg["model"]:
        raise CheckpointError(f"{cfg_path}: no `model: {{name, args}}` section")
    return {"model": cfg["model"], "features": cfg.get("features") or {}, "config": str(cfg_path)}


def _resolve_model_file(file: Path, part: str | None) -> Resolved:
    """A model file's backbone. It holds one network: for a self-supervised run the teacher (its meta says so)."""
    state, meta = load_model_file(file)
    ssl = meta.get("ssl") if isinstance(meta.get("ssl"), dict) else None
    if part is not None and not (ssl and part == ssl.get("part", "teacher")):
        if not ssl:
            raise CheckpointError(f"{file}: --init-part {part}: not a self-supervised run (one backbone)")
        raise CheckpointError(f"{file}: --init-part {part}: a model file holds only the teacher; pass the run's folder")
    if meta.get("kind") == "asr":
        return Resolved(file, file, "model_file", str(file), dict(state), meta)
    chosen = ssl.get("part", "teacher") if ssl else None
    if chosen:
        _say_part(str(file), chosen, part is None)
    origin = f"{file} ({chosen} backbone)" if chosen else str(file)
    backbone = {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
    return Resolved(file, file, "model_file", origin, backbone, meta, state.get("classifier.weight"), chosen)
