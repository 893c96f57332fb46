"""Pretrained initialisation for `finetune --init SRC`: find the backbone weights in any source we support.

Sources: a speakerforge experiment folder (its model file, or its newest checkpoint), one of our checkpoints or model
files, a DINO/SDPN run (`--init-part teacher|student`), or a 3D-Speaker / WeSpeaker checkpoint (`--init-format`).
The backbone loads strictly; every missing or unexpected key is listed, and a partial load happens only when asked
for, and is then reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.artifacts import backbone_prefix, list_checkpoints, sniff
from speakerforge.checkpoint_io import load_model_file, load_state, safe_torch_load
from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.modelfile import BACKBONE, check_model_meta, load_strict

log = logging.getLogger(__name__)

FORMATS = ("auto", "speakerforge", "3dspeaker", "wespeaker")


@dataclass
class InitWeights:
    """Backbone weights found in a source, plus what we know of the model and its classifier."""

    backbone: dict[str, torch.Tensor]
    origin: str
    model_spec: dict[str, Any] | None = None  # {"name", "args"} when the source says
    classifier: torch.Tensor | None = None
    speakers: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    layout: str | None = None  # a foreign state dict: "3dspeaker", "wespeaker", or "auto" (told by its keys)


def read_init(
    src: str | Path,
    fmt: str = "auto",
    part: str | None = None,
    model_id: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> InitWeights:
    """Locate and read backbone weights from `src` (see module docstring); with `model_id`, a released checkpoint
    converted into that id's model (`speakerforge.models.zoo`; `model_args` adjust it), whose spec the run uses."""
    if fmt not in FORMATS:
        raise ConfigError(f"--init-format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    p = Path(src)
    if not p.exists():
        raise CheckpointError(f"{src}: --init source not found")
    art = sniff(p)
    if model_id is not None:
        if art.kind not in _FOREIGN_KINDS:
            raise CheckpointError(f"{src}: {art.describe()}; --model-id is for 3D-Speaker / WeSpeaker checkpoints")
        return _read_released(p, model_id, None if fmt == "auto" else fmt, model_args or {})
    if fmt in ("3dspeaker", "wespeaker"):
        if art.kind not in _FOREIGN_KINDS:
            raise CheckpointError(f"{src}: {art.describe()}, not a {fmt} checkpoint; {_FORMAT_HINT[art.kind in _OURS]}")
        return _read_foreign(p, fmt)
    if art.kind == "experiment":
        return _read_experiment(p, part)
    if art.kind == "checkpoint":
        return _from_training_state(load_state(p), str(p), part)
    if art.kind == "model_file":
        return _from_model_file(p)
    if art.kind in _FOREIGN_KINDS and fmt == "auto":
        return _read_foreign(p, "auto")  # 3D-Speaker or WeSpeaker: told by its keys against the model (apply_init)
    hint = _FORMAT_HINT[False] if art.kind in _FOREIGN_KINDS else "pass a speakerforge file"
    raise CheckpointError(f"{src}: {art.describe()}, not a speakerforge checkpoint or model file; {hint}")


_OURS = ("experiment", "checkpoint", "model_file")
_FOREIGN_KINDS = ("torch_zip", "torch_pickle")
_FORMAT_HINT = {
    True: "drop --init-format (speakerforge files are recognised by their content)",
    False: "for 3D-Speaker or WeSpeaker weights pass --init-format 3dspeaker|wespeaker (and the model in the config)",
}


def _read_experiment(folder: Path, part: str | None) -> InitWeights:
    model_file = folder / "model.safetensors"
    # a self-supervised run's model file holds its teacher: the default part (`artifacts.backbone_prefix`)
    if model_file.is_file() and (part is None or (part == "teacher" and _is_pretrain_run(folder))):
        weights = _from_model_file(model_file)
        if _is_pretrain_run(folder):
            log.info("%s: a self-supervised run; using its teacher backbone (%s)", folder, model_file.name)
            weights.origin += " (teacher backbone)"  # every log line about the load says which backbone it took
        return weights
    reasons = []
    for _step, path in list_checkpoints(folder):
        try:
            return _from_training_state(load_state(path), str(path), part, folder)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path, exc)
            reasons.append(str(exc))
    why = f" (newest: {reasons[0]})" if reasons else ""
    raise CheckpointError(f"{folder}: no model.safetensors and no readable checkpoint in {folder / 'checkpoints'}{why}")


def _is_pretrain_run(folder: Path) -> bool:
    import json

    try:
        return json.loads((folder / "run.json").read_text()).get("command") == "pretrain"
    except (OSError, ValueError):
        return False


def _from_model_file(path: Path) -> InitWeights:
    state, meta = load_model_file(path)
    meta = check_model_meta(meta, str(path))  # typed and in range, as for extract and verify
    backbone = {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
    return InitWeights(backbone, str(path), meta.get("model"), state.get("classifier.weight"), meta.get("speakers"))


def _from_training_state(
    state: dict[str, Any], origin: str, part: str | None, folder: Path | None = None
) -> InitWeights:
    weights = state.get("model", {})
    prefix = backbone_prefix(weights, part, origin)
    part = None if prefix == BACKBONE else prefix.split(".")[0]
    backbone = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not backbone:
        raise CheckpointError(f"{origin}: no weights under {prefix!r}")
    spec = None
    cfg_path = (folder or Path(origin).parent.parent) / "config.yaml"
    if cfg_path.is_file():
        import yaml

        spec = (yaml.safe_load(cfg_path.read_text()) or {}).get("model")
    classifier = weights.get("classifier.weight") if part is None else None
    # the part is in the origin, so every log line about the load says which backbone it took
    return InitWeights(backbone, f"{origin} ({part} backbone)" if part else origin, spec, classifier)


def _read_foreign(path: Path, fmt: str) -> InitWeights:
    obj = safe_torch_load(str(path))
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "embedding_model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return InitWeights(dict(obj), str(path), None, None, None, notes=[f"format {fmt}"], layout=fmt)


def _read_released(path: Path, model_id: str, source: str | None, model_args: dict[str, Any]) -> InitWeights:
    """A released checkpoint, checked against and converted into `model_id`'s architecture (our key names)."""
    from speakerforge.models.convert import split_checkpoint
    from speakerforge.models.registry import build_model
    from speakerforge.models.zoo import resolve

    obj = safe_torch_load(str(path))
    entry = resolve(obj, model_id, source, model_args)
    args = {**entry.args, **model_args}
    converted = split_checkpoint(obj, entry.source, entry.arch, build_model(entry.arch, **args), entry.part)
    spec = {"name": entry.arch, "args": args}
    return InitWeights(converted.backbone, str(path), spec, notes=[f"model id {entry.id}"])


_LAYOUT_NAMES = {"3dspeaker": "3D-Speaker", "wespeaker": "WeSpeaker"}


def detect_layout(weights: dict[str, torch.Tensor], arch: str, backbone: nn.Module, origin: str) -> str:
    """Which toolkit's layout a foreign state dict has, told by its keys and shapes against `backbone` (the run's
    `arch`): the one that converts to exactly the model's tensors. Says which it chose; refuses when none fits,
    naming the released model id the file does fit, if any."""
    from speakerforge.models.convert import convert_state_dict
    from speakerforge.models.modelfile import fit_problems

    own = backbone.state_dict()
    problems: dict[str, str] = {}
    for layout in ("3dspeaker", "wespeaker"):
        try:
            converted = convert_state_dict(weights, layout, arch, backbone)
        except (CheckpointError, ConfigError) as exc:
            problems[layout] = str(exc).split(": ", 1)[-1][:160]
            continue
        found = fit_problems(own, converted)
        if not found:
            log.info("--init-format auto: %s holds a %s %s state dict (its keys and shapes fit)", origin,
                     _LAYOUT_NAMES[layout], arch)  # fmt: skip
            return layout
        problems[layout] = found[0][:160]
    hint = ""
    try:
        from speakerforge.models.zoo import resolve

        released = resolve(weights, None).id
        hint = f"; it is the architecture of released model {released}: pass --model-id {released}"
    except (CheckpointError, ConfigError):
        pass
    raise CheckpointError(
        f"{origin}: a PyTorch state dict that fits neither the 3D-Speaker nor the WeSpeaker layout of model {arch} "
        f"(3D-Speaker: {problems['3dspeaker']}; WeSpeaker: {problems['wespeaker']}); set the model in the config "
        f"(model.name, model.args){hint}"
    )


def apply_init(
    module: nn.Module,
    init: InitWeights,
    fmt: str,
    arch: str,
    allow_partial: bool,
    keep_head: bool,
    speakers: list[str] | None,
) -> None:
    """Load the backbone into `module.backbone` (strict unless `allow_partial`) and the classifier if asked."""
    weights = init.backbone
    if init.layout == "auto":
        fmt = detect_layout(weights, arch, module.backbone, init.origin)
    if fmt in ("3dspeaker", "wespeaker"):
        from speakerforge.models.convert import convert_state_dict

        converted = convert_state_dict(weights, fmt, arch, module.backbone)
        weights = converted[0] if isinstance(converted, tuple) else converted
    if allow_partial:
        own = module.backbone.state_dict()
        usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(usable))
        unexpected = sorted(set(weights) - set(usable))
        module.backbone.load_state_dict(usable, strict=False)
        log.warning(
            "partial load from %s (--allow-partial): %d tensors loaded, %d left at their initial values%s, "
            "%d ignored%s",
            init.origin,
            len(usable),
            len(missing),
            _few(missing),
            len(unexpected),
            _few(unexpected),
        )
    else:
        load_strict(module.backbone, weights, init.origin)
        log.info("backbone loaded strictly from %s (%d tensors)", init.origin, len(weights))
    if keep_head:
        if init.classifier is None:
            raise CheckpointError(f"{init.origin}: --keep-head, but the source holds no classifier")
        if init.classifier.shape != module.classifier.weight.shape or (init.speakers and init.speakers != speakers):
            raise CheckpointError(
                f"{init.origin}: --keep-head needs the same speakers; the source has "
                f"{tuple(init.classifier.shape)} classifier rows for {len(init.speakers or [])} "
                f"speakers, this run {tuple(module.classifier.weight.shape)}"
            )
        with torch.no_grad():
            module.classifier.weight.copy_(init.classifier)
        log.info("classifier kept from %s", init.origin)
    else:
        log.info("classifier rebuilt for %d classes", module.classifier.weight.shape[0])


def _few(keys: list[str], n: int = 8) -> str:
    if not keys:
        return ""
    return " (" + ", ".join(keys[:n]) + (" ..." if len(keys) > n else "") + ")"
