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

from speakerforge.artifacts import FOREIGN_KINDS, Resolved, resolve, sniff
from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.modelfile import check_model_meta, load_strict

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
    features: dict[str, Any] | None = None  # the features the weights were trained on, when the source says


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
    if model_id is not None and art.kind not in FOREIGN_KINDS:
        raise CheckpointError(f"{src}: {art.describe()}; --model-id is for 3D-Speaker / WeSpeaker checkpoints")
    if fmt in ("3dspeaker", "wespeaker") and art.kind not in FOREIGN_KINDS:
        raise CheckpointError(f"{src}: {art.describe()}, not a {fmt} checkpoint; {_FORMAT_HINT[art.kind in _OURS]}")
    if art.kind not in _OURS + FOREIGN_KINDS:
        raise CheckpointError(
            f"{src}: {art.describe()}, not a speakerforge checkpoint or model file; pass a speakerforge file"
        )
    res = resolve(p, part)
    if model_id is not None:
        return _read_released(res, model_id, None if fmt == "auto" else fmt, model_args or {})
    if res.task == "asr":
        raise CheckpointError(f"{res.file}: an ASR model; `finetune --init` takes a speaker model")
    if res.kind in FOREIGN_KINDS:  # 3D-Speaker or WeSpeaker: told by its keys against the model (apply_init)
        if not res.weights:
            raise CheckpointError(f"{src}: expected a state dict of tensors")
        return InitWeights(res.weights, str(p), notes=[f"format {fmt}"], layout=fmt)
    if res.kind == "model_file":
        res.meta = check_model_meta(res.meta, str(res.file))  # typed and in range, as for extract and verify
    spec = res.meta.get("model")
    features = res.meta.get("features") if res.kind == "model_file" else None
    return InitWeights(res.weights, res.origin, spec, res.classifier, res.meta.get("speakers"), features=features)


_OURS = ("experiment", "checkpoint", "model_file")
_FORMAT_HINT = {
    True: "drop --init-format (speakerforge files are recognised by their content)",
    False: "for 3D-Speaker or WeSpeaker weights pass --init-format 3dspeaker|wespeaker (and the model in the config)",
}


def _read_released(res: Resolved, model_id: str, source: str | None, model_args: dict[str, Any]) -> InitWeights:
    """A released checkpoint, checked against and converted into `model_id`'s architecture (our key names)."""
    from speakerforge.models.convert import split_checkpoint
    from speakerforge.models.registry import build_model
    from speakerforge.models.zoo import identify

    entry = identify(res.raw, model_id, source, model_args)
    args = {**entry.args, **model_args}
    converted = split_checkpoint(res.raw, entry.source, entry.arch, build_model(entry.arch, **args), entry.part)
    spec = {"name": entry.arch, "args": args}
    features = {**entry.features, "num_mel_bins": int(args.get("feat_dim", entry.features["num_mel_bins"]))}
    return InitWeights(converted.backbone, res.origin, spec, notes=[f"model id {entry.id}"], features=features)


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
        from speakerforge.models.zoo import identify

        released = identify(weights, None).id
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
